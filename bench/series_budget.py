#!/usr/bin/env python3
"""Series budget per host: how many series a real Prometheus holds for one host, with each shipped config.

For each scenario a fresh network namespace (a fresh mount namespace too, with its own
/run/netns) holds one conn-exporter (the release binary, default flags, on :9100) and three
of Debian's Prometheus servers, each with one shipped configuration scraping that exporter:

  single      deploy/prometheus/prometheus-scrape-config.yml as shipped: every family,
              per-connection series included;
  fleet       deploy/prometheus/prometheus-multi-host-config.yml with the host in targets/:
              the bounded families (collect[]: states, peers, listeners, lifecycle,
              quality; the RTT histogram's classic buckets dropped);
  fleet+drill the same with the host also in targets-connections/: the opt-in drill-down
              job adds the per-connection series (collect[]=connections, every 60 s).

Each loads the shipped alerts.yml and recording-rules.yml, as shipped. Scenarios:

  idle    nothing but the exporter and the three servers' scrapes;
  held    1,000 connections held to 20 peers (20 addresses of a second namespace behind a
          veth pair, 50 connections each, to one port), opened after the first scrape;
  churn   bench/churn.py's load: a local client making 50 short connections a second to a
          local server (the client closes first: TIME_WAIT on the client side), for
          --churn-seconds.

At the end of a scenario (one more scrape of every job after the load), each server is
asked for prometheus_tsdb_head_series (its own /metrics: every series its head holds,
the ones gone stale during the run included) and, through /api/v1/series over the whole
run, the distinct series per metric name, grouped as the exporter's families, the series
Prometheus makes itself (up, scrape_*), and the rules' output (recording rules, ALERTS).

Full mode (default): the shipped intervals (15 s, drill-down 60 s), 120 s per scenario,
--runs 3; figures for the README and docs/performance.md. --quick (CI, about 1.5 min): every
interval 5 s, shorter phases, one run, the three scenarios at once. Checks (exit 1 when one
fails; --no-check reports only): the fleet configuration holds at most --max-idle (500)
series for the idle host and at most --max-churn (1,500) under the churn.

Run as root (namespaces, veth); needs `prometheus`, `ip`, `unshare`. Standard library only.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from benchlib import Processes, wait_port  # noqa: E402
from churn import Load  # noqa: E402  the churn benchmark's 50 connections a second

PROM_DIR = os.path.join(REPO, "deploy", "prometheus")
CONFIGS = ("single", "fleet", "fleet+drill")
SCENARIOS = ("idle", "held", "churn")
EXPORTER_PORT = 9100
PROM_PORTS = {"single": 19090, "fleet": 19091, "fleet+drill": 19092}
PEERS_NS = "budget-peers"
PEER_NET = "10.201.0"
PEER_PORT = 8080
N_PEERS = 20
N_HELD = 1000
# Series Prometheus makes for a target itself.
PROMETHEUS_OWN = re.compile(r"^(up|scrape_\w+)$")
RULE_OUTPUT = re.compile(r"^(ALERTS|ALERTS_FOR_STATE|\w+:\w+:\w+)$")


def log(msg: str) -> None:
    print(f"series_budget: {msg}", file=sys.stderr, flush=True)


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True)


# --------------------------------------------------------------------------- Prometheus

def write_config(kind: str, out: str, interval: str | None) -> str:
    """A shipped configuration, copied with its rule files, pointed at the local exporter."""
    src = "prometheus-scrape-config.yml" if kind == "single" else "prometheus-multi-host-config.yml"
    os.makedirs(out)
    for f in ("alerts.yml", "recording-rules.yml"):
        shutil.copy(os.path.join(PROM_DIR, f), out)
    text = open(os.path.join(PROM_DIR, src)).read()
    if interval:
        # Every interval and timeout of the file, global and per job (quick mode only).
        text = re.sub(r"^(\s*(?:scrape|evaluation)_interval:)\s*\S+", rf"\1 {interval}", text, flags=re.M)
        text = re.sub(r"^(\s*scrape_timeout:)\s*\S+", rf"\1 {interval}", text, flags=re.M)
    if kind == "single":
        assert f"'localhost:{EXPORTER_PORT}'" in text, "the single-host config no longer scrapes localhost:9100"
    else:
        os.makedirs(os.path.join(out, "targets"))
        with open(os.path.join(out, "targets", "hosts.yml"), "w") as f:
            f.write(f"- targets: ['localhost:{EXPORTER_PORT}']\n")
        os.makedirs(os.path.join(out, "targets-connections"))
        if kind == "fleet+drill":
            with open(os.path.join(out, "targets-connections", "hosts.yml"), "w") as f:
                f.write(f"- targets: ['localhost:{EXPORTER_PORT}']\n")
    path = os.path.join(out, "prometheus.yml")
    with open(path, "w") as f:
        f.write(text)
    return path


class Prometheus:
    def __init__(self, kind: str, tmp: str, interval: str | None) -> None:
        self.kind = kind
        self.port = PROM_PORTS[kind]
        self.dir = os.path.join(tmp, kind.replace("+", "-"))
        self.config = write_config(kind, self.dir, interval)
        # One kept-alive connection for every request of the runner: a new connection per
        # request would be churn of its own (an ephemeral port, TIME_WAIT), counted by the
        # exporter like the load's.
        self.conn: http.client.HTTPConnection | None = None

    def start(self, procs: Processes) -> None:
        self.log = open(os.path.join(self.dir, "prometheus.log"), "w")
        self.proc = procs.start(["prometheus", f"--config.file={self.config}",
                                 f"--storage.tsdb.path={self.dir}/data",
                                 f"--web.listen-address=127.0.0.1:{self.port}"],
                                stdout=self.log, stderr=subprocess.STDOUT)

    def get(self, path: str) -> tuple[int, bytes]:
        for attempt in (1, 2):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                self.conn.request("GET", path)
                r = self.conn.getresponse()
                return r.status, r.read()
            except (OSError, http.client.HTTPException):
                if self.conn is not None:
                    self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def wait_ready(self, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                if self.get("/-/ready")[0] == 200:
                    return
            except OSError:  # refused before it listens
                pass
            time.sleep(0.5)  # 503 while the TSDB opens
        raise RuntimeError(f"{self.kind}: Prometheus not ready after {timeout:.0f} s")

    def api(self, path: str, params: list[tuple[str, str]]) -> dict:
        status, body = self.get(f"/api/v1/{path}?" + urllib.parse.urlencode(params))
        if status != 200:
            raise RuntimeError(f"{self.kind}: {path}: HTTP {status}: {body[:200]!r}")
        return json.loads(body)["data"]

    def jobs_up(self) -> dict[str, int]:
        res = self.api("query", [("query", "up")])["result"]
        return {r["metric"]["job"]: int(float(r["value"][1])) for r in res}

    def head_series(self) -> int:
        for line in self.get("/metrics")[1].decode().splitlines():
            if line.startswith("prometheus_tsdb_head_series "):
                return int(float(line.split()[1]))
        raise RuntimeError(f"{self.kind}: no prometheus_tsdb_head_series")

    def series_by_name(self, start: float) -> dict[str, int]:
        data = self.api("series", [("match[]", '{__name__=~".+"}'), ("start", f"{start:.3f}"),
                                   ("end", f"{time.time():.3f}")])
        counts: dict[str, int] = {}
        for s in data:
            counts[s["__name__"]] = counts.get(s["__name__"], 0) + 1
        return counts


def expected_jobs(kind: str) -> set[str]:
    return {"single": {"conn-exporter"}, "fleet": {"conn-exporter"},
            "fleet+drill": {"conn-exporter", "conn-exporter-connections"}}[kind]


def wait_scrapes(proms: list[Prometheus], after: float, interval_s: float, what: str) -> None:
    """Waits until every job of every server has scraped once more after `after`."""
    deadline = time.time() + 3 * interval_s + 30
    while time.time() < deadline:
        done = True
        for p in proms:
            res = p.api("query", [("query", "timestamp(up)")])["result"]
            stamps = {r["metric"]["job"]: float(r["value"][1]) for r in res}
            if set(stamps) != expected_jobs(p.kind) or min(stamps.values()) <= after:
                done = False
        if done:
            return
        time.sleep(2)
    raise RuntimeError(f"timed out waiting for a scrape of every job {what}")


# --------------------------------------------------------------------------- load

def raise_nofile(n: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, min(hard, n))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def serve_peers() -> int:
    """In the peers' namespace: accept on every address and hold each connection."""
    raise_nofile(4096)
    lst = socket.socket()
    lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lst.bind(("0.0.0.0", PEER_PORT))
    lst.listen(4096)
    held = []
    while True:
        conn, _ = lst.accept()
        held.append(conn)


def make_peers(procs: Processes) -> subprocess.Popen:
    """A second namespace with N_PEERS addresses behind a veth pair; this one is eth0."""
    sh("ip", "netns", "add", PEERS_NS)
    sh("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", PEERS_NS)
    sh("ip", "addr", "add", f"{PEER_NET}.1/24", "dev", "eth0")
    sh("ip", "link", "set", "eth0", "up")
    sh("ip", "-n", PEERS_NS, "link", "set", "lo", "up")
    for i in range(N_PEERS):
        sh("ip", "-n", PEERS_NS, "addr", "add", f"{PEER_NET}.{i + 2}/24", "dev", "eth0")
    sh("ip", "-n", PEERS_NS, "link", "set", "eth0", "up")
    server = procs.start(["ip", "netns", "exec", PEERS_NS, sys.executable, os.path.abspath(__file__),
                          "--serve-peers"])
    deadline = time.time() + 15
    while time.time() < deadline:
        try:
            socket.create_connection((f"{PEER_NET}.2", PEER_PORT), timeout=1).close()
            return server
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("the peers' server did not start")


def hold_connections() -> list[socket.socket]:
    raise_nofile(N_HELD + 512)
    held = []
    for i in range(N_HELD):
        peer = f"{PEER_NET}.{i % N_PEERS + 2}"
        held.append(socket.create_connection((peer, PEER_PORT), timeout=5))
    return held


# --------------------------------------------------------------------------- one scenario

def run_scenario(args, scenario: str, tmp: str) -> dict:
    """In a fresh network namespace: the exporter, three servers, the scenario's load."""
    sh("ip", "link", "set", "lo", "up")
    procs = Processes("series_budget")
    interval = "5s" if args.quick else None
    interval_s = 5.0 if args.quick else 60.0  # the longest interval of any job
    phase = args.phase_seconds
    try:
        if scenario == "held":
            make_peers(procs)
        exp_log = open(os.path.join(tmp, "exporter.log"), "w")
        exporter = procs.start([args.exporter, f"--web.listen-address=:{EXPORTER_PORT}"],
                               stdout=exp_log, stderr=subprocess.STDOUT)
        if not wait_port(EXPORTER_PORT, exporter, 30):
            raise RuntimeError("the exporter did not start: " + open(exp_log.name).read()[-2000:])
        proms = [Prometheus(k, tmp, interval) for k in CONFIGS]
        start = time.time()
        for p in proms:
            p.start(procs)
        for p in proms:
            if not wait_port(p.port, p.proc, 60):
                raise RuntimeError(f"{p.kind}: Prometheus did not start")
            p.wait_ready(60)
        wait_scrapes(proms, start, interval_s, "(first scrape)")
        log(f"{scenario}: every job scraped once")
        load_end = time.time()
        held = None
        if scenario == "held":
            held = hold_connections()
            log(f"held: {len(held)} connections to {N_PEERS} peers")
            time.sleep(phase)
            load_end = time.time()
        elif scenario == "churn":
            load = Load(args.rate)
            load.start()
            time.sleep(args.churn_seconds)
            load.finish()
            load_end = time.time()
            log(f"churn: {len(load.made)} connections made in {args.churn_seconds:.0f} s, {load.failed} failed")
        else:
            time.sleep(phase)
            load_end = time.time()
        wait_scrapes(proms, load_end, interval_s, f"after the {scenario} phase")
        out = {}
        for p in proms:
            up = p.jobs_up()
            if set(up) != expected_jobs(p.kind) or not all(up.values()):
                raise RuntimeError(f"{p.kind}: up {up}, want every one of {sorted(expected_jobs(p.kind))} up")
            names = p.series_by_name(start - 60)
            out[p.kind] = {"head_series": p.head_series(), "by_name": names}
        if held is not None:
            for s in held:
                s.close()
        return out
    finally:
        procs.stop_all()


# --------------------------------------------------------------------------- report

def families(by_name: dict[str, int]) -> dict[str, int]:
    """The per-name counts folded into what the README reports."""
    out: dict[str, int] = {}
    for name, n in by_name.items():
        if PROMETHEUS_OWN.match(name):
            key = "up, scrape_* (Prometheus's own per target)"
        elif RULE_OUTPUT.match(name):
            key = "recording rules, ALERTS"
        elif name.startswith(("network_connections_closed_total", "network_connections_failed_total",
                              "network_connection_sent_bytes_total", "network_connection_received_bytes_total",
                              "network_connection_retransmits_total")):
            key = "lifecycle counters (network_connection{s_closed,s_failed,_sent_bytes,_received_bytes,_retransmits}_total)"
        elif name.startswith(("conn_exporter_", "process_")):
            key = "exporter's own (conn_exporter_*, process_*)"
        else:
            key = name
        out[key] = out.get(key, 0) + n
    return out


def spread(values: list[int]) -> str:
    if len(values) == 1:
        return f"{values[0]:,}"
    return f"{int(statistics.median(values)):,} ({min(values):,}–{max(values):,})"


def report(results: list[dict], args) -> str:
    lines = [f"runs: {len(results)}; mode: {'quick' if args.quick else 'full'}; "
             f"figures: median (min–max) over the runs"]
    lines.append("")
    lines.append("| config | " + " | ".join(SCENARIOS) + " |")
    lines.append("|---|" + "---|" * len(SCENARIOS))
    for kind in CONFIGS:
        cells = [spread([r[s][kind]["head_series"] for r in results]) for s in SCENARIOS]
        lines.append(f"| {kind}: prometheus_tsdb_head_series | " + " | ".join(cells) + " |")
    for kind in CONFIGS:
        lines.append("")
        lines.append(f"{kind}, distinct series per family over the run:")
        lines.append("")
        lines.append("| family | " + " | ".join(SCENARIOS) + " |")
        lines.append("|---|" + "---|" * len(SCENARIOS))
        keys = sorted({k for r in results for s in SCENARIOS for k in families(r[s][kind]["by_name"])})
        for k in keys:
            cells = [spread([families(r[s][kind]["by_name"]).get(k, 0) for r in results]) for s in SCENARIOS]
            lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def checks(results: list[dict], args) -> list[str]:
    failures = []
    for i, r in enumerate(results):
        idle = r["idle"]["fleet"]["head_series"]
        churn = r["churn"]["fleet"]["head_series"]
        if idle > args.max_idle:
            failures.append(f"run {i + 1}: the fleet config holds {idle} series for the idle host, goal <= {args.max_idle}")
        if churn > args.max_churn:
            failures.append(f"run {i + 1}: the fleet config holds {churn} series under churn, goal <= {args.max_churn}")
        for s in SCENARIOS:
            if r[s]["fleet"]["by_name"].get("network_connections_info"):
                failures.append(f"run {i + 1} {s}: the fleet config scraped per-connection series")
            if not r[s]["fleet+drill"]["by_name"].get("network_connections_info"):
                failures.append(f"run {i + 1} {s}: the drill-down job scraped no per-connection series")
        held = r["held"]["single"]["by_name"].get("network_connections_info", 0)
        if held < N_HELD:
            failures.append(f"run {i + 1} held: the single-host config saw {held} per-connection series, "
                            f"fewer than the {N_HELD} held connections")
    return failures


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--exporter", default=os.environ.get("CONN_EXPORTER_BIN",
                                                         os.path.join(REPO, "target/release/conn-exporter")))
    ap.add_argument("--quick", action="store_true", help="CI: 5 s intervals, short phases, one run")
    ap.add_argument("--runs", type=int, default=None, help="runs of the three scenarios (full: 3, quick: 1)")
    ap.add_argument("--rate", type=float, default=50.0, help="churn: connections a second")
    ap.add_argument("--churn-seconds", type=float, default=None, help="churn phase (full: 120, quick: 40)")
    ap.add_argument("--phase-seconds", type=float, default=None, help="idle and held phases (full: 120, quick: 20)")
    ap.add_argument("--max-idle", type=int, default=500)
    ap.add_argument("--max-churn", type=int, default=1500)
    ap.add_argument("--json", help="write the raw figures here")
    ap.add_argument("--no-check", action="store_true", help="report only; exit 0")
    ap.add_argument("--scenario", choices=SCENARIOS, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--serve-peers", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_peers:
        return serve_peers()
    args.exporter = os.path.abspath(args.exporter)
    args.runs = args.runs or (1 if args.quick else 3)
    args.churn_seconds = args.churn_seconds or (40.0 if args.quick else 120.0)
    args.phase_seconds = args.phase_seconds or (20.0 if args.quick else 120.0)

    if args.scenario:  # a child, already in its own namespaces
        os.makedirs("/run/netns", exist_ok=True)
        sh("mount", "-t", "tmpfs", "budget-netns", "/run/netns")
        with tempfile.TemporaryDirectory(prefix=f"series-budget-{args.scenario}-") as tmp:
            out = run_scenario(args, args.scenario, tmp)
        with open(args.out, "w") as f:
            json.dump(out, f)
        return 0

    for tool in ("prometheus", "ip", "unshare"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is needed")
    if not os.access(args.exporter, os.X_OK):
        raise SystemExit(f"no exporter binary at {args.exporter}: cargo build --release")
    results = []
    with tempfile.TemporaryDirectory(prefix="series-budget-") as tmp:
        for run in range(args.runs):
            children = {}
            for s in SCENARIOS:
                out = os.path.join(tmp, f"{run}-{s}.json")
                argv = ["unshare", "--net", "--mount", "--propagation", "private", sys.executable,
                        os.path.abspath(__file__), "--scenario", s, "--out", out, "--exporter", args.exporter,
                        "--rate", str(args.rate), "--churn-seconds", str(args.churn_seconds),
                        "--phase-seconds", str(args.phase_seconds)] + (["--quick"] if args.quick else [])
                children[s] = (subprocess.Popen(argv), out)
            log(f"run {run + 1}/{args.runs}: scenarios {', '.join(SCENARIOS)} started, each in its own namespace")
            failed = [s for s, (p, _) in children.items() if p.wait() != 0]
            if failed:
                raise SystemExit(f"series_budget: scenario(s) {failed} failed")
            results.append({s: json.load(open(out)) for s, (_, out) in children.items()})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    print(report(results, args))
    failures = checks(results, args)
    for f in failures:
        print("FAIL: " + f)
    if failures and not args.no_check:
        return 1
    print(f"series budget: fleet config idle <= {args.max_idle} and churn <= {args.max_churn}: "
          + ("ok" if not failures else "not met (--no-check)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
