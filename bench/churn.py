#!/usr/bin/env python3
"""Series churn in a real Prometheus: how many series each family creates under short connections.

The runner starts conn-exporter (the release binary) and two of Debian's Prometheus servers,
each on loopback with its own temporary data directory, scraping every --scrape-interval
(default 5 s):

  full     the whole /metrics (every collector, as a default scrape job would);
  bounded  /metrics?collect[]=states&collect[]=peers&collect[]=listeners (no per-connection
           series), so its head's series-created counter belongs to those families alone.

After a few scrapes of an idle host, a local client makes --rate (default 50) short connections
per second to a local server for --duration seconds (default 120; --quick: 30): connect, send
one byte, read one byte back, close (the client closes first, so its socket lingers in
TIME_WAIT for 60 s as on a real client).

Then the exit phase, what every restart or deploy of a service does: a second server,
listening on 127.0.0.1:0 (a port inside the ephemeral range), answers --rate connections a
second for --exit-duration seconds (default 60; --quick: 20) and closes first, so its side of
each connection sits in TIME_WAIT for 60 s; then it exits, and the scrapes go on for
--after-exit seconds (default 90; --quick: 65), until its leftover sockets are gone. One
more scrape after that, the runner asks each Prometheus

  - per family, the distinct series seen over the whole run:
        count(count_over_time(FAMILY{job="conn-exporter"}[RUN]))
  - prometheus_tsdb_head_series_created_total (the head's own counter, every series the
    server created, `up` and the scrape_* series included).

Checks (exit 1 when one fails):
  - network_connection_peers created at most --max-peers-series distinct series over the
    whole run, the minutes after the exit included (default 30: one service and one client
    address per phase);
  - the exited server's leftover sockets, in the scrapes after its exit, are inbound peers
    of its port (a service that exits keeps its direction);
  - network_connections_info shows, among its client-side series, exactly the client ports
    the client's own sockets used (getsockname): all those used two scrape intervals before
    the end, none it never used. A client port stays in TIME_WAIT for 60 s, far longer than
    a scrape interval; on loopback the kernel reuses a TIME_WAIT port for a new connection
    (net.ipv4.tcp_tw_reuse = 2, the default), which gives the same label set again, so the
    per-connection series grow with the distinct ports, not the connections;
  - in every scrape, the sum of network_connection_peers equals the non-listening sockets of
    network_connection_states (the peers family's promise).

Run as root, the runner re-executes itself in a new network namespace (`unshare --net`,
loopback only): other programs' sockets would be counted too, and so would the TIME_WAIT
sockets an earlier run leaves behind.
--no-unshare runs in the current namespace. Python standard library only; needs
`prometheus` on PATH (Debian's package) and `unshare` and `ip` for the namespace.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

from benchlib import Processes, free_port, loadavg, wait_port

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

BOUNDED = ["states", "peers", "listeners"]
FAMILIES_RE = "network_.*|conn_exporter_.*"


def log(msg: str) -> None:
    print(f"churn: {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- load

class Load:
    """A local server and a client making short connections at a fixed rate. The client
    closes first, or with `server_closes_first` the server does (its side then lingers in
    TIME_WAIT); `finish` closes the listener, as a service that exits."""

    def __init__(self, rate: float, server_closes_first: bool = False) -> None:
        self.rate = rate
        self.server_closes_first = server_closes_first
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(256)
        self.port = self.listener.getsockname()[1]
        self.stop = threading.Event()
        self.made: list[tuple[float, int]] = []   # (time.time(), client port) of each connection
        self.failed = 0
        self.threads = [threading.Thread(target=self._serve, daemon=True),
                        threading.Thread(target=self._client, daemon=True)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def _serve(self) -> None:
        self.listener.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except socket.timeout:
                continue
            with conn:
                conn.settimeout(5)
                try:
                    if conn.recv(1):
                        conn.sendall(b"y")
                    if not self.server_closes_first:
                        conn.recv(1)  # the client's FIN: close after it, so TIME_WAIT is the client's
                except OSError:
                    pass

    def _client(self) -> None:
        period = 1.0 / self.rate
        next_at = time.monotonic()
        while not self.stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
                    s.sendall(b"x")
                    if s.recv(1) == b"y":
                        self.made.append((time.time(), s.getsockname()[1]))
                        if self.server_closes_first:
                            s.recv(1)  # the server's FIN: TIME_WAIT is the server's
                    else:
                        self.failed += 1
            except OSError:
                self.failed += 1
            next_at += period
            delay = next_at - time.monotonic()
            if delay > 0:
                self.stop.wait(delay)
            elif delay < -1.0:
                next_at = time.monotonic()  # fell behind by a second: do not burst to catch up

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(10)
        self.listener.close()


# --------------------------------------------------------------------------- Prometheus

class Prometheus:
    def __init__(self, name: str, binary: str, tmp: str, port: int, target: str,
                 params: dict[str, list[str]], interval: float) -> None:
        self.name = name
        self.port = port
        self.dir = os.path.join(tmp, f"prometheus-{name}")
        os.makedirs(os.path.join(self.dir, "data"))
        params_yaml = "".join(
            f"    params:\n      {k}: [{', '.join(v)}]\n" for k, v in params.items()) if params else ""
        # JSON is YAML: no YAML library needed.
        with open(os.path.join(self.dir, "prometheus.yml"), "w") as f:
            f.write(f"global:\n  scrape_interval: {interval:g}s\n  scrape_timeout: {min(interval, 10):g}s\n"
                    f"scrape_configs:\n  - job_name: conn-exporter\n{params_yaml}"
                    f"    static_configs:\n      - targets: [{json.dumps(target)}]\n")
        self.argv = [binary, f"--config.file={self.dir}/prometheus.yml",
                     f"--storage.tsdb.path={self.dir}/data",
                     f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"]

    def start(self, procs: Processes) -> None:
        self.log = open(os.path.join(self.dir, "prometheus.log"), "wb")
        self.proc = procs.start(self.argv, stdout=self.log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        if not wait_port(self.port, self.proc, 60):
            raise RuntimeError(f"Prometheus {self.name} did not listen:\n{self.log_tail()}")

    def log_tail(self) -> str:
        with open(os.path.join(self.dir, "prometheus.log"), "rb") as f:
            return f.read()[-2000:].decode("utf-8", "replace")

    def query(self, q: str, at: float | None = None) -> list[dict]:
        params = {"query": q}
        if at is not None:
            params["time"] = f"{at:.3f}"
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=60) as r:
                res = json.load(r)
        except urllib.error.HTTPError as e:
            res = json.load(e)
        if res.get("status") != "success":
            raise RuntimeError(f"Prometheus {self.name}: {q}: {res.get('error')}")
        return res["data"]["result"]

    def scalar(self, q: str, at: float | None = None) -> float | None:
        res = self.query(q, at)
        return float(res[0]["value"][1]) if res else None

    def names(self, regex: str, start: float, end: float) -> list[str]:
        """Metric names matching regex that had samples between start and end."""
        params = {"match[]": f'{{__name__=~"{regex}"}}', "start": f"{start:.3f}", "end": f"{end:.3f}"}
        url = (f"http://127.0.0.1:{self.port}/api/v1/label/__name__/values?"
               + urllib.parse.urlencode(params))
        with urllib.request.urlopen(url, timeout=60) as r:
            return json.load(r)["data"]

    def own_metric(self, name: str) -> float:
        """A sample of the server's own /metrics (it does not scrape itself here)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=30) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
        raise RuntimeError(f"Prometheus {self.name}: no {name} in its /metrics")

    def scrapes(self) -> int:
        """Successful scrapes so far (samples of up == 1 over the last hour)."""
        return int(self.scalar('sum_over_time(up{job="conn-exporter"}[1h])') or 0)

    def wait_scrapes(self, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.scrapes() < n:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"Prometheus {self.name}: fewer than {n} successful scrapes "
                                   f"in {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.5)


# --------------------------------------------------------------------------- run

def run(args, procs: Processes, tmp: str) -> dict:
    exp_port = free_port(args.port_base)
    exp_log = open(os.path.join(tmp, "conn-exporter.log"), "wb")
    exporter = procs.start([args.exporter_bin, "--web.listen-address", f"127.0.0.1:{exp_port}"]
                           + args.exporter_args, stdout=exp_log, stderr=subprocess.STDOUT,
                           stdin=subprocess.DEVNULL)
    if not wait_port(exp_port, exporter, 30):
        raise RuntimeError("conn-exporter did not listen")
    target = f"127.0.0.1:{exp_port}"
    proms = {
        "full": Prometheus("full", args.prometheus, tmp, free_port(exp_port + 1), target, {},
                           args.scrape_interval),
    }
    proms["bounded"] = Prometheus("bounded", args.prometheus, tmp,
                                  free_port(proms["full"].port + 1), target,
                                  {"collect[]": BOUNDED}, args.scrape_interval)
    for p in proms.values():
        p.start(procs)
    t_prom = time.time()
    # An idle baseline of two scrapes, so the load's series are new ones.
    for p in proms.values():
        p.wait_scrapes(2, 60)
    created_before = {k: p.own_metric("prometheus_tsdb_head_series_created_total") for k, p in proms.items()}

    load = Load(args.rate)
    log(f"load: {args.rate:g} connections/s to 127.0.0.1:{load.port} for {args.duration:g} s; "
        f"scrapes every {args.scrape_interval:g} s")
    t_load = time.time()
    load.start()
    time.sleep(args.duration)
    load.finish()
    t_end_load = time.time()

    exiting = Load(args.rate, server_closes_first=True)
    log(f"exit phase: {args.rate:g} connections/s to 127.0.0.1:{exiting.port}, the server closing "
        f"first, for {args.exit_duration:g} s; then it exits and the scrapes go on for {args.after_exit:g} s")
    exiting.start()
    time.sleep(args.exit_duration)
    exiting.finish()
    t_exit = time.time()
    time.sleep(args.after_exit)
    # One more scrape after the load, then stop the clock for the queries.
    n = {k: p.scrapes() for k, p in proms.items()}
    for k, p in proms.items():
        p.wait_scrapes(n[k] + 1, 4 * args.scrape_interval + 30)
    at = time.time()
    window = f"{int(at - t_prom) + 5}s"

    out: dict = {
        "duration_s": round(t_end_load - t_load, 1),
        "connections_made": len(load.made),
        "connections_failed": load.failed,
        "offered_rate": args.rate,
        "achieved_rate": round(len(load.made) / (t_end_load - t_load), 1),
        "exit_phase": {"port": exiting.port, "connections_made": len(exiting.made),
                       "connections_failed": exiting.failed, "duration_s": args.exit_duration,
                       "after_exit_s": args.after_exit},
        "scrape_interval_s": args.scrape_interval,
        "window": window,
        "prometheus": {},
    }
    for k, p in proms.items():
        names = p.names(FAMILIES_RE, t_prom, at)
        out["prometheus"][k] = {
            "scrape": "/metrics" + ("" if k == "full" else "?" + "&".join(f"collect[]={c}" for c in BOUNDED)),
            "scrapes": p.scrapes(),
            # count_over_time drops the name, so one query per family, the issue's form.
            "distinct": {n: int(p.scalar(f'count(count_over_time({n}{{job="conn-exporter"}}[{window}]))', at) or 0)
                         for n in names},
            "at_end": {n: int(p.scalar(f'count({n}{{job="conn-exporter"}})', at) or 0) for n in names},
            "distinct_all_names": sum(int(p.scalar(f"count(count_over_time({n}[{window}]))", at) or 0)
                                      for n in p.names(".+", t_prom, at)),
            "series_created_before_load": int(created_before[k] or 0),
            "series_created_total": int(p.own_metric("prometheus_tsdb_head_series_created_total")),
        }
        # The peers family's promise, in every scrape of the run: its sum equals the
        # non-listening sockets of network_connection_states.
        if "network_connection_peers" in out["prometheus"][k]["distinct"]:
            out["prometheus"][k]["peers_vs_states_max_abs_diff"] = p.scalar(
                f"max_over_time((abs(sum(network_connection_peers) - "
                f"sum(network_connection_states{{state!=\"LISTEN\"}})))[{window}:{args.scrape_interval:g}s])", at)
        # The exited server's leftovers, two scrapes after its exit (the listener is gone
        # from every read by then): inbound peers of its port, as many as the states
        # family's TIME_WAIT sockets on that port's side ever could be, and none outbound
        # to a client's port.
        after = t_exit + 2 * args.scrape_interval + 1
        port = str(exiting.port)
        out["prometheus"][k]["exit_leftovers_inbound"] = p.scalar(
            f'sum(network_connection_peers{{job="conn-exporter",direction="inbound",source_port="{port}"}})', after)
        known = "|".join(str(x) for x in [exiting.port, load.port, exp_port] + [q.port for q in proms.values()])
        out["prometheus"][k]["exit_leftovers_outbound_other_ports"] = p.scalar(
            f'count(network_connection_peers{{job="conn-exporter",direction="outbound",'
            f'destination_port!~"{known}"}})', after)
        out["prometheus"][k]["peers_series"] = sorted(
            ",".join(f"{a}={b}" for a, b in sorted(r["metric"].items()) if a not in ("job", "instance"))
            for r in p.query(f'last_over_time(network_connection_peers{{job="conn-exporter"}}[{window}])', at))
        # The same count from the series API, a second path through Prometheus.
        params = {"match[]": 'network_connections_info{job="conn-exporter"}', "start": f"{t_prom:.3f}",
                  "end": f"{at:.3f}"}
        with urllib.request.urlopen(f"http://127.0.0.1:{p.port}/api/v1/series?"
                                    + urllib.parse.urlencode(params), timeout=120) as r:
            series = json.load(r)["data"]
        out["prometheus"][k]["info_series_api"] = len(series)
        out["prometheus"][k]["info_client_ports"] = sorted(
            {int(x["source_port"]) for x in series
             if x.get("destination_port") == str(load.port) and x.get("source_address") == "127.0.0.1"})
    # The client's ports, from its own sockets. A port stays taken in TIME_WAIT (60 s, or
    # until the kernel reuses it for a new connection with the same 4-tuple, which keeps
    # the same label set), so every port used two scrape intervals before the end must be
    # in some scrape, and no other client port may be.
    out["client_ports_all"] = sorted({port for _t, port in load.made})
    out["client_ports_before_last_scrapes"] = sorted(
        {port for t, port in load.made if t < at - 2 * args.scrape_interval - 1})
    exp_log.close()
    return out


def checks(out: dict, args) -> list[str]:
    failures = []
    full = out["prometheus"]["full"]
    bounded = out["prometheus"]["bounded"]
    for name, prom in (("full", full), ("bounded", bounded)):
        peers = prom["distinct"].get("network_connection_peers")
        if peers is None:
            failures.append(f"{name}: no network_connection_peers series at all")
        elif peers > args.max_peers_series:
            failures.append(f"{name}: network_connection_peers created {peers} distinct series, "
                            f"target at most {args.max_peers_series}")
        diff = prom.get("peers_vs_states_max_abs_diff")
        if diff is None or diff != 0:
            failures.append(f"{name}: sum(network_connection_peers) differs from the non-listening "
                            f"sockets of network_connection_states by up to {diff}")
    seen = set(full["info_client_ports"])
    missing = set(out["client_ports_before_last_scrapes"]) - seen
    foreign = seen - set(out["client_ports_all"])
    if missing:
        failures.append(f"full: {len(missing)} client ports used before the last scrapes have no "
                        f"network_connections_info series, e.g. {sorted(missing)[:5]}")
    if foreign:
        failures.append(f"full: network_connections_info shows {len(foreign)} client ports the client "
                        f"never used, e.g. {sorted(foreign)[:5]}")
    if "network_connections_info" in bounded["distinct"]:
        failures.append("bounded: the collect[] scrape has per-connection series")
    for name, prom in (("full", full), ("bounded", bounded)):
        if not prom.get("exit_leftovers_inbound"):
            failures.append(f"{name}: after the exit, no inbound peer of the exited server's port "
                            f"{out['exit_phase']['port']} (its TIME_WAIT sockets lost their direction)")
        if prom.get("exit_leftovers_outbound_other_ports"):
            failures.append(f"{name}: after the exit, {prom['exit_leftovers_outbound_other_ports']:g} outbound "
                            f"peer series name a client's port")
    if out["connections_failed"] or out["exit_phase"]["connections_failed"]:
        failures.append(f"the clients had {out['connections_failed']} + "
                        f"{out['exit_phase']['connections_failed']} failed connections")
    return failures


def markdown(out: dict) -> str:
    full, bounded = out["prometheus"]["full"], out["prometheus"]["bounded"]
    names = sorted(set(full["distinct"]) | set(bounded["distinct"]))
    lines = [
        f"{out['connections_made']:,} connections from {len(out['client_ports_all']):,} distinct client "
        f"ports in {out['duration_s']:g} s "
        f"({out['achieved_rate']:g}/s achieved of {out['offered_rate']:g}/s offered); then "
        f"{out['exit_phase']['connections_made']:,} connections in {out['exit_phase']['duration_s']:g} s to a "
        f"server that closes first and exits, and {out['exit_phase']['after_exit_s']:g} s of scrapes after "
        f"its exit (its {full['exit_leftovers_inbound'] or 0:g} leftover sockets inbound peers of its port "
        f"two scrapes after); scrapes every "
        f"{out['scrape_interval_s']:g} s ({full['scrapes']} scrapes), distinct series counted over "
        f"`[{out['window']}]` (the whole run).",
        "",
        "| Family | distinct series, full scrape | at the end | distinct series, bounded scrape |",
        "|---|---:|---:|---:|",
    ]
    for n in names:
        lines.append(f"| `{n}` | {full['distinct'].get(n, 0):,} | {full['at_end'].get(n, 0):,} "
                     f"| {bounded['distinct'].get(n, 0):,} |")
    lines += [
        f"| all series (with `up`, `scrape_*`) | {full['distinct_all_names']:,} | | "
        f"{bounded['distinct_all_names']:,} |",
        f"| `prometheus_tsdb_head_series_created_total` | {full['series_created_total']:,} "
        f"({full['series_created_total'] - full['series_created_before_load']:,} during the load) | | "
        f"{bounded['series_created_total']:,} "
        f"({bounded['series_created_total'] - bounded['series_created_before_load']:,} during the load) |",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--exporter", default=os.environ.get(
        "CONN_EXPORTER_BIN", os.path.join(REPO, "target/release/conn-exporter")),
        help="conn-exporter binary (env CONN_EXPORTER_BIN; default target/release/conn-exporter)")
    ap.add_argument("--exporter-args", default="", help="extra conn-exporter flags (space-separated)")
    ap.add_argument("--prometheus", default=shutil.which("prometheus") or "/usr/bin/prometheus")
    ap.add_argument("--duration", type=float, default=120.0, help="seconds of load (default 120)")
    ap.add_argument("--quick", action="store_true",
                    help="30 s of load, 20 s of the exit phase and 65 s after it (CI)")
    ap.add_argument("--exit-duration", type=float, default=60.0,
                    help="seconds of the exit phase's load before its server exits (default 60)")
    ap.add_argument("--after-exit", type=float, default=90.0,
                    help="seconds of scrapes after the server exits (default 90; TIME_WAIT lasts 60)")
    ap.add_argument("--rate", type=float, default=50.0, help="connections per second (default 50)")
    ap.add_argument("--scrape-interval", type=float, default=5.0, help="seconds (default 5)")
    ap.add_argument("--max-peers-series", type=int, default=30,
                    help="most distinct network_connection_peers series allowed (default 30)")
    ap.add_argument("--port-base", type=int, default=19400)
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--markdown", help="write the Markdown table here")
    ap.add_argument("--no-unshare", action="store_true",
                    help="run in the current network namespace (default as root: a new one)")
    args = ap.parse_args()
    if os.geteuid() == 0 and not args.no_unshare and os.environ.get("CONN_EXPORTER_CHURN_NETNS") != "1":
        for tool in ("unshare", "ip"):
            if not shutil.which(tool):
                log(f"missing tool: {tool} (or use --no-unshare)")
                return 2
        env = dict(os.environ, CONN_EXPORTER_CHURN_NETNS="1")
        argv = ["unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh",
                sys.executable] + sys.argv
        return subprocess.run(argv, env=env).returncode
    if args.quick:
        args.duration, args.exit_duration, args.after_exit = 30.0, 20.0, 65.0
    args.exporter_args = args.exporter_args.split()
    for what, path in (("conn-exporter", args.exporter), ("prometheus", args.prometheus)):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            log(f"{what} binary not found: {path}")
            return 2
    if args.duration <= 0 or args.rate <= 0 or args.scrape_interval <= 0:
        ap.error("--duration, --rate and --scrape-interval must be positive")

    procs = Processes("churn")
    start_load = loadavg()
    try:
        with tempfile.TemporaryDirectory(prefix="conn-exporter-churn-") as tmp:
            # A private copy: a cargo build during the run must not swap the binary.
            args.exporter_bin = os.path.join(tmp, "conn-exporter")
            shutil.copy2(args.exporter, args.exporter_bin)
            try:
                out = run(args, procs, tmp)
            finally:
                procs.stop_all()
    except RuntimeError as e:
        log(str(e))
        return 1
    except KeyboardInterrupt:
        procs.stop_all()
        return 130
    out["host"] = (f"Linux {os.uname().release}, {os.cpu_count()} CPUs, load average "
                   f"{start_load} at the start, {loadavg()} at the end")
    md = markdown(out)
    print(out["host"])
    print(md)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(md)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    failures = checks(out, args)
    for f in failures:
        log("FAILURE: " + f)
    peers = out["prometheus"]["full"]["distinct"].get("network_connection_peers")
    info = out["prometheus"]["full"]["distinct"].get("network_connections_info")
    log(f"network_connection_peers: {peers} distinct series (target <= {args.max_peers_series}); "
        f"network_connections_info: {info}; {len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
