#!/usr/bin/env python3
"""The quality collector on real paths, read by a real Prometheus (issue 19's truth tests).

Run as root in a private namespace (it creates namespaces qp-client and qp-server with
the delay-and-loss line, tests/ops/lib/delayline.py):

    mkdir -p /run/netns && /work/iso.sh python3 tests/ops/lib/quality_paths.py [--mode host|all]

Each mode starts the line (20 ms each way, every 20th client->server data segment
dropped), the exporter ($CONN_EXPORTER_BIN) and Prometheus (scrape and evaluation every
second, the shipped deploy/prometheus/recording-rules.yml and a copy of alerts.yml in
which PeerRetransmitRatioHigh's `for: 10m` is 2s), then checks, each against a source
that is not the exporter:

  rtt    a ping-pong connection to 10.77.0.2: `ss -tin` in the client namespace shows
         rtt within [40, 42] ms; the exporter's network_connection_rtt_seconds for that
         peer (outbound, destination 10.77.0.2:7101) has every observation in le=0.05
         and none in le=0.025; a loopback peer (127.0.0.1:7400) in the same scrape has
         every observation in le=0.001. Prometheus's recording rule
         instance_service:network_connection_rtt_seconds:p99_rate5m for 10.77.0.2:7101
         lies in (0.025, 0.05].
  loss   a paced 6 MiB transfer (1.25 MB/s) client->server (BBR, the default here): after it is
         acknowledged, the connection closed and the next sample taken, the peer's
         network_connection_lost_segments_total equals the line's drops and the client
         namespace's nstat delta TcpRetransSegs - TcpExtTCPDSACKRecvSegs;
         network_connection_retransmits_total equals TcpRetransSegs and ss's
         retrans:/TOTAL; network_connection_sent_segments_total equals ss's
         data_segs_out (read before the close) and the data segments the line saw, and,
         where no other TCP traffic shares the namespace (mode all: Prometheus scrapes in
         the root namespace), nstat's TcpOutSegs + TcpRetransSegs (tcpi_data_segs_out
         counts data segments, retransmissions included; TcpOutSegs counts new segments,
         data or not, and no retransmission; this connection sends no segment without
         data between the two readings). PeerRetransmitRatioHigh is pending or firing in
         Prometheus for destination_address="10.77.0.2" and not for the clean loopback
         peer, whose ratio Prometheus computes under 0.01 (0 unless, in mode all, another
         namespace's loopback traffic retransmits) with more than 10 segments/s.
         (6 MiB: the alert's rate() over 5m divides by the whole window, and the test's
         series are younger than it, so the floor of 10 segments/s needs more than
         3,000 segments.)
  stall  a receiver that never reads (StalledReceiver): the writer's
         network_connection_receive_window_limited_seconds_total grows between two
         samples; its queued_bytes{queue="send"} and unsent_bytes equal ss's Send-Q and
         notsent once they are stable; in mode all the reader's (server namespace)
         queued_bytes{queue="receive"} equals its Recv-Q.

Modes: host (the exporter inside the client namespace, --collector.lifecycle.source=
netlink) and all (the exporter in this namespace, --collector.namespaces=all
--collector.lifecycle.source=ebpf: labels carry netns="qp-client").

--break CHECK shifts that check's expectation so it must fail: rtt (45 ms expected,
observations expected in le=0.025), p99 (expected in (0.05, 0.1]), loss (expected
drops +1), sent (expected segments +1), alert (expected firing for the clean peer),
stall (rwnd_limited expected to stay still, Send-Q expected +1).
"""

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from delayline import DelayLine, StalledReceiver, netns, sh  # noqa: E402
from test_delayline import ss_socket, nstat, listen, connect  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
CLIENT, SERVER = "qp-client", "qp-server"
SERVER_ADDR = "10.77.0.2"
RTT_PORT, LOOP_PORT, BULK_PORT, STALL_PORT = 7101, 7400, 7201, 7300
EXPORTER_PORT, PROM_PORT = 19611, 19691
INTERVAL = 2.0  # --collector.quality.interval
SO_MAX_PACING_RATE = 47

failures = []
broken = set()


def check(cond, msg):
    print(("ok: " if cond else "FAIL: ") + msg, flush=True)
    if not cond:
        failures.append(msg)
    return cond


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- the exporter's exposition ---------------------------------------------------------------

LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


class Scrape:
    def __init__(self, text):
        self.text = text
        self.samples = []
        for line in text.splitlines():
            m = LINE.match(line)
            if line.startswith("#") or not m:
                continue
            self.samples.append((m.group(1), dict(PAIR.findall(m.group(2) or "")), float(m.group(3)), line))

    def find(self, name, **labels):
        return [(lab, v, line) for n, lab, v, line in self.samples
                if n == name and all(lab.get(k) == val for k, val in labels.items())]

    def value(self, name, **labels):
        """The one sample's value (None when absent); more than one is an error."""
        got = self.find(name, **labels)
        if len(got) > 1:
            raise RuntimeError(f"{name} {labels}: {len(got)} samples: {[g[2] for g in got]}")
        return got[0][1] if got else None


class Mode:
    """Where the exporter and Prometheus run, and the labels a peer gets."""

    def __init__(self, name):
        self.name = name
        self.ns = CLIENT if name == "host" else None  # where exporter and Prometheus run
        self.procs = []
        self.tmp = tempfile.mkdtemp(prefix=f"qp-{name}-")

    def ctx(self):
        return netns(self.ns) if self.ns else _null()

    def peer(self, ns=CLIENT, **labels):
        if self.name == "all":
            labels["netns"] = ns
        return labels

    def cmd(self, argv):
        return (["ip", "netns", "exec", self.ns] if self.ns else []) + argv

    def start(self, name, argv):
        out = open(os.path.join(self.tmp, name + ".log"), "w")
        p = subprocess.Popen(self.cmd(argv), stdout=out, stderr=subprocess.STDOUT)
        self.procs.append((name, p))
        return p

    def stop(self):
        for name, p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.procs = []

    def http(self, url):
        with self.ctx():
            with urllib.request.urlopen(url, timeout=10) as r:
                return r.read().decode()

    def scrape(self):
        return Scrape(self.http(f"http://127.0.0.1:{EXPORTER_PORT}/metrics"))

    def promq(self, q):
        u = f"http://127.0.0.1:{PROM_PORT}/api/v1/query?" + urllib.parse.urlencode({"query": q})
        r = json.loads(self.http(u))
        assert r["status"] == "success", r
        return r["data"]["result"]

    def tail(self, name, n=20):
        try:
            return "".join(open(os.path.join(self.tmp, name + ".log")).readlines()[-n:])
        except OSError:
            return ""


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def wait_for(pred, timeout, what, step=0.5):
    end = time.monotonic() + timeout
    while True:
        try:
            r = pred()
            if r:
                return r
        except Exception as e:  # noqa: BLE001 (not up yet)
            last = e
        else:
            last = None
        if time.monotonic() > end:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}" + (f": {last}" if last else ""))
        time.sleep(step)


def start_stack(mode, binary):
    argv = [binary, f"--web.listen-address=127.0.0.1:{EXPORTER_PORT}",
            f"--collector.quality.interval={int(INTERVAL)}s"]
    if mode.name == "host":
        argv += ["--collector.lifecycle.source=netlink"]
    else:
        argv += ["--collector.namespaces=all", "--collector.lifecycle.source=ebpf"]
    log(f"exporter: {' '.join(mode.cmd(argv))}")
    mode.start("exporter", argv)
    wait_for(lambda: mode.scrape().find("network_connection_rtt_seconds_count") is not None, 20,
             "the exporter's /metrics")
    # Prometheus: the shipped recording rules, and the alerts with the quality alert's
    # `for:` shortened so that it can fire within the test.
    alerts = open(os.path.join(REPO, "deploy/prometheus/alerts.yml")).read()
    m = re.search(r'- alert: "PeerRetransmitRatioHigh".*?for: "10m"', alerts, re.S)
    if not m:
        raise RuntimeError("alerts.yml: PeerRetransmitRatioHigh with for: 10m not found")
    alerts = alerts[:m.start()] + m.group(0)[:-len('"10m"')] + '"2s"' + alerts[m.end():]
    open(os.path.join(mode.tmp, "alerts.yml"), "w").write(alerts)
    cfg = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "rule_files": [os.path.join(mode.tmp, "alerts.yml"),
                       os.path.join(REPO, "deploy/prometheus/recording-rules.yml")],
        "scrape_configs": [{"job_name": "conn-exporter",
                            "static_configs": [{"targets": [f"127.0.0.1:{EXPORTER_PORT}"]}]}],
    }
    path = os.path.join(mode.tmp, "prometheus.yml")
    open(path, "w").write(json.dumps(cfg))  # JSON is YAML
    sh("promtool", "check", "config", path)
    mode.start("prometheus", ["prometheus", f"--config.file={path}",
                              f"--storage.tsdb.path={mode.tmp}/data",
                              f"--web.listen-address=127.0.0.1:{PROM_PORT}"])
    wait_for(lambda: mode.promq('up{job="conn-exporter"} == 1'), 30, "Prometheus scraping the exporter")
    log(f"Prometheus {PROM_PORT} scrapes the exporter {EXPORTER_PORT} ({mode.name} mode)")


def after_next_sample(mode):
    """Waits past the exporter's next sample: an interval, and a second for the scrape."""
    time.sleep(INTERVAL + 1.0)


# --- a, the delay ------------------------------------------------------------------------

def echo_server(ns, addr, port, conns=1):
    lst = listen(ns, addr, port)

    def serve():
        for _ in range(conns):
            c, _ = lst.accept()
            while True:
                b = c.recv(4096)
                if not b:
                    break
                c.sendall(b)
            c.close()
        lst.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return t


def ping(c, rounds, pause=0.0):
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for _ in range(rounds):
        c.sendall(b"ping")
        c.recv(64)
        if pause:
            time.sleep(pause)


def rtt_phase(mode):
    print(f"rtt ({mode.name} mode):", flush=True)
    # The clean loopback peer: ping-pong for a while (also the alert's clean peer, with
    # well over 10 segments a second in both directions).
    t_loop = echo_server(CLIENT, "127.0.0.1", LOOP_PORT)
    loop = connect(CLIENT, "127.0.0.1", LOOP_PORT)
    loop_rounds = [0]
    stop_loop = threading.Event()

    def loop_ping():
        while not stop_loop.is_set():
            ping(loop, 1, 0.002)
            loop_rounds[0] += 1

    tl = threading.Thread(target=loop_ping, daemon=True)
    tl.start()
    t_rtt = echo_server(SERVER, SERVER_ADDR, RTT_PORT)
    c = connect(CLIENT, SERVER_ADDR, RTT_PORT)
    ping(c, 30)
    info = ss_socket(CLIENT, c.getsockname()[1])
    expect = 45.0 if "rtt" in broken else 40.0
    check(expect <= info["rtt_ms"] <= expect + 2.0,
          f"ss -tin in {CLIENT}: rtt {info['rtt_ms']} ms (minrtt {info['minrtt']}) in [{expect}, {expect + 2}] ms")
    # Stay open over several samples (each observes it), pinging now and then so that
    # the RTT stays a fresh 40 ms; the close adds one more observation.
    end = time.monotonic() + 4 * INTERVAL + 1
    while time.monotonic() < end:
        ping(c, 1, 0.25)
    info = ss_socket(CLIENT, c.getsockname()[1])
    log(f"ss rtt before close: {info['rtt_ms']} ms")
    c.close()
    stop_loop.set()
    tl.join(2)
    loop.close()
    t_rtt.join(5)
    t_loop.join(5)
    after_next_sample(mode)
    s = mode.scrape()
    peer = mode.peer(direction="outbound", destination_address=SERVER_ADDR, destination_port=str(RTT_PORT))
    buckets = sorted(s.find("network_connection_rtt_seconds_bucket", **peer),
                     key=lambda x: float(x[0]["le"]))
    print(f"  scrape excerpt ({mode.name} mode), the 40 ms peer's RTT histogram:")
    for _, _, line in buckets:
        print("    " + line)
    for name in ("network_connection_rtt_seconds_sum", "network_connection_rtt_seconds_count"):
        for _, _, line in s.find(name, **peer):
            print("    " + line)
    b = {x[0]["le"]: x[1] for x in buckets}
    total = b.get("+Inf", 0)
    low, high = ("0.01", "0.025") if "rtt" in broken else ("0.025", "0.05")
    check(total >= 4 and b.get(low) == 0 and b.get(high) == total,
          f"exporter: {SERVER_ADDR}:{RTT_PORT} has {total} observations (>= 4), {b.get(high)} in le={high},"
          f" {b.get(low)} in le={low}")
    lpeer = mode.peer(direction="outbound", destination_address="127.0.0.1", destination_port=str(LOOP_PORT))
    lb = {x[0]["le"]: x[1] for x in s.find("network_connection_rtt_seconds_bucket", **lpeer)}
    check(lb.get("+Inf", 0) >= 4 and lb.get("0.001") == lb.get("+Inf"),
          f"exporter: loopback 127.0.0.1:{LOOP_PORT} ({loop_rounds[0]} round trips) has {lb.get('+Inf')}"
          f" observations, {lb.get('0.001')} in le=0.001 (sum {s.value('network_connection_rtt_seconds_sum', **lpeer)} s)")
    # The recording rule, evaluated by Prometheus.
    q = ('instance_service:network_connection_rtt_seconds:p99_rate5m{direction="outbound",'
         f'destination_address="{SERVER_ADDR}",destination_port="{RTT_PORT}"}}')
    res = wait_for(lambda: mode.promq(q), 20, "the p99 recording rule for the 40 ms service")
    v = float(res[0]["value"][1])
    lo, hi = (0.05, 0.1) if "p99" in broken else (0.025, 0.05)
    check(len(res) == 1 and lo < v <= hi,
          f"Prometheus: {q} = {v:.4f} in ({lo}, {hi}] ({len(res)} series: {[r['metric'] for r in res]})")


# --- b, the loss ---------------------------------------------------------------------------

def loss_phase(mode, line, size, rate):
    print(f"loss ({mode.name} mode):", flush=True)
    lst = listen(SERVER, SERVER_ADDR, BULK_PORT)
    cl = connect(CLIENT, SERVER_ADDR, BULK_PORT)
    sv, _ = lst.accept()
    lst.close()
    cl.settimeout(None)
    cl.setsockopt(socket.SOL_SOCKET, SO_MAX_PACING_RATE, rate)
    cc = cl.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16).rstrip(b"\0").decode()
    port = cl.getsockname()[1]
    # Let a sample and a scrape see the connection first, so that Prometheus has its
    # series before they grow (rate() cannot see growth before a series' first sample).
    after_next_sample(mode)
    peer = mode.peer(direction="outbound", destination_address=SERVER_ADDR, destination_port=str(BULK_PORT))
    s = mode.scrape()
    print("  before the transfer, the peer's counters: " + ", ".join(
        f"{n} {s.value(n, **peer)}" for n in ("network_connection_sent_segments_total",
                                             "network_connection_retransmits_total",
                                             "network_connection_lost_segments_total")))
    before, st0 = nstat(CLIENT), line.status()
    got = [0]

    def drain():
        while got[0] < size:
            b = sv.recv(1 << 16)
            if not b:
                break
            got[0] += len(b)

    t = threading.Thread(target=drain, daemon=True)
    t0 = time.monotonic()
    t.start()
    chunk = b"d" * (1 << 16)
    left = size
    while left > 0:
        left -= cl.send(chunk[:left])
    t.join(120)
    elapsed = time.monotonic() - t0
    deadline = time.monotonic() + 5
    while True:
        time.sleep(0.1)
        info = ss_socket(CLIENT, port)
        if (info["sendq"] == 0 and "unacked" not in info) or time.monotonic() > deadline:
            break
    time.sleep(0.2)
    info = ss_socket(CLIENT, port)
    after, st1 = nstat(CLIENT), line.status()
    delta = {k: after[k] - before[k] for k in after}
    # One more sample while it is open, then the close (the remainder counted at close).
    after_next_sample(mode)
    cl.close()
    sv.close()
    after_next_sample(mode)
    s = mode.scrape()
    lost = s.value("network_connection_lost_segments_total", **peer)
    retrans = s.value("network_connection_retransmits_total", **peer)
    sent = s.value("network_connection_sent_segments_total", **peer)
    dropped = st1["dropped"]["c2s"] - st0["dropped"]["c2s"]
    wire = st1["c2s"]["data_segments"] - st0["c2s"]["data_segments"]
    print(f"  {size} bytes c2s ({cc}, paced {rate} B/s) in {elapsed:.1f}s, line drops every"
          f" {line.drop_every}: dropped {dropped} of {wire} data segments;"
          f" nstat deltas {json.dumps({k: v for k, v in delta.items() if v})};"
          f" ss retrans:{info['retrans_now']}/{info['total_retrans']} dsack_dups:{info['dsack_dups']:.0f}"
          f" data_segs_out:{info.get('data_segs_out')} segs_out:{info.get('segs_out')}")
    print(f"  exporter: lost_segments {lost}, retransmits {retrans}, sent_segments {sent}")
    for _, _, l in (s.find("network_connection_lost_segments_total", **peer)
                    + s.find("network_connection_retransmits_total", **peer)
                    + s.find("network_connection_sent_segments_total", **peer)):
        print("    " + l)
    check(got[0] == size, f"receiver got all {size} bytes ({got[0]})")
    check(dropped >= 5, f"the line dropped segments ({dropped})")
    shift = 1 if "loss" in broken else 0
    kernel_lost = delta["TcpRetransSegs"] - delta["TcpExtTCPDSACKRecvSegs"]
    check(lost == dropped + shift == kernel_lost,
          f"lost_segments {lost} == line's drops {dropped}{'+1' if shift else ''} =="
          f" nstat TcpRetransSegs - TcpExtTCPDSACKRecvSegs ({delta['TcpRetransSegs']} -"
          f" {delta['TcpExtTCPDSACKRecvSegs']} = {kernel_lost})")
    check(delta["TcpRetransSegs"] == info["total_retrans"],
          f"nstat TcpRetransSegs {delta['TcpRetransSegs']} == ss total retrans {info['total_retrans']}")
    if mode == "host":
        # The notifications' and the samples' count: tcpi_total_retrans, exact.
        check(retrans == delta["TcpRetransSegs"] + shift,
              f"retransmits {retrans} == nstat TcpRetransSegs {delta['TcpRetransSegs']}{'+1' if shift else ''}"
              f" == ss total retrans {info['total_retrans']}")
    else:
        # The eBPF source counts each tcp:tcp_retransmit_skb event by the segments of its
        # packet (tcp_gso_segs). Known limit, measured here and in the closing notes of
        # issues 19 and 21: idle it reads 227-228 of 228; in fresh-clone CI runs it read
        # 225 and 219 (cause not found; the kernel's own count, total_retrans, is exact).
        # Never above the kernel's count, and within 5% of it.
        want = delta["TcpRetransSegs"] + shift
        check(want * 0.95 <= retrans <= want,
              f"retransmits {retrans} within 5% below nstat TcpRetransSegs {want} (eBPF source;"
              f" exact: {retrans == want})")
    sshift = 1 if "sent" in broken else 0
    dso = int(info.get("data_segs_out", -1))
    check(sent == dso + sshift == wire + sshift,
          f"sent_segments {sent} == ss data_segs_out {dso}{'+1' if sshift else ''} =="
          f" data segments the line saw c2s {wire}")
    kernel_sent = delta["TcpOutSegs"] + delta["TcpRetransSegs"]
    if mode.name == "all":
        check(sent == kernel_sent + sshift,
              f"sent_segments {sent} == nstat TcpOutSegs + TcpRetransSegs ({delta['TcpOutSegs']} +"
              f" {delta['TcpRetransSegs']} = {kernel_sent}){' +1' if sshift else ''} (no other TCP traffic in {CLIENT})")
    else:
        print(f"  (host mode: nstat TcpOutSegs + TcpRetransSegs = {kernel_sent} also counts Prometheus's"
              f" scrapes over loopback in {CLIENT}; not compared)")
    return {"dropped": dropped, "wire": wire, "nstat": delta, "lost": lost, "retrans": retrans, "sent": sent,
            "ss_data_segs_out": dso}


def alert_phase(mode):
    print(f"alert ({mode.name} mode):", flush=True)
    ratio = ('sum by (instance, destination_address) (rate(network_connection_retransmits_total{job="conn-exporter"}[5m]))'
             ' / sum by (instance, destination_address) (rate(network_connection_sent_segments_total{job="conn-exporter"}[5m]))')
    seg = 'sum by (instance, destination_address) (rate(network_connection_sent_segments_total{job="conn-exporter"}[5m]))'

    def alerts():
        return {r["metric"]["destination_address"]: r["metric"]["alertstate"]
                for r in mode.promq('ALERTS{alertname="PeerRetransmitRatioHigh"}')}

    try:
        wait_for(lambda: SERVER_ADDR in alerts(), 20, "PeerRetransmitRatioHigh for the lossy peer")
    except RuntimeError as e:
        print(f"  {e}")
    time.sleep(3)  # the `for: 2s` passes: pending becomes firing
    got = alerts()
    r = {x["metric"]["destination_address"]: float(x["value"][1]) for x in mode.promq(ratio)}
    g = {x["metric"]["destination_address"]: float(x["value"][1]) for x in mode.promq(seg)}
    pick = (SERVER_ADDR, "127.0.0.1")  # mode all also sees every other namespace's peers
    print(f"  Prometheus: retransmit ratio {({a: r.get(a) for a in pick})}; segments/s"
          f" {({a: g.get(a) for a in pick})}; ALERTS {got}")
    check(got.get(SERVER_ADDR) in ("pending", "firing"),
          f"PeerRetransmitRatioHigh {got.get(SERVER_ADDR)} for {SERVER_ADDR} (ratio {r.get(SERVER_ADDR)})")
    clean = "127.0.0.1"
    if "alert" in broken:
        check(got.get(clean) in ("pending", "firing"), f"[broken on purpose] alert firing for clean {clean}")
    else:
        # Under the threshold, over the floor: the ratio is what keeps it silent. (In
        # mode all, 127.0.0.1 sums the loopback traffic of every namespace on the
        # machine, so its ratio need not be exactly 0.)
        check(clean not in got and r.get(clean) is not None and r[clean] < 0.01 and g.get(clean, 0) > 10,
              f"no PeerRetransmitRatioHigh for the clean {clean}: ratio {r.get(clean)} (< 0.01),"
              f" {g.get(clean)} segments/s (over the floor of 10)")


# --- c, the stall --------------------------------------------------------------------------

def stall_phase(mode):
    print(f"stall ({mode.name} mode):", flush=True)
    with StalledReceiver(CLIENT, SERVER, SERVER_ADDR, STALL_PORT) as st:
        port = st.client.getsockname()[1]
        peer = mode.peer(direction="outbound", destination_address=SERVER_ADDR, destination_port=str(STALL_PORT))
        speer = mode.peer(SERVER, direction="inbound", source_address=SERVER_ADDR, source_port=str(STALL_PORT))
        # The first sample that sees the connection makes its series (and adds what it
        # did so far); the growth is read from there on.
        wait_for(lambda: mode.scrape().value("network_connection_receive_window_limited_seconds_total",
                                               **peer) is not None, 3 * INTERVAL + 2, "the stalled peer's series")
        a = mode.scrape().value("network_connection_receive_window_limited_seconds_total", **peer)
        # Gauges equal ss once both are stable across a sample: ss read before and after it.
        result = None
        for _ in range(4):
            c0, s0 = ss_socket(CLIENT, port), ss_socket(SERVER, STALL_PORT)
            after_next_sample(mode)
            sc = mode.scrape()
            c1, s1 = ss_socket(CLIENT, port), ss_socket(SERVER, STALL_PORT)
            stable = (c0["sendq"], c0.get("notsent")) == (c1["sendq"], c1.get("notsent"))
            sstable = s0["recvq"] == s1["recvq"] if s0 and s1 else False
            result = (sc, c1, s1, stable, sstable)
            if stable and (sstable or mode.name == "host"):
                break
        sc, c1, s1, stable, sstable = result
        b = sc.value("network_connection_receive_window_limited_seconds_total", **peer)
        sendq = sc.value("network_connection_queued_bytes", queue="send", **peer)
        unsent = sc.value("network_connection_unsent_bytes", **peer)
        print(f"  writer: rwnd_limited {a} -> {b} s; exporter Send {sendq}, unsent {unsent};"
              f" ss Send-Q {c1['sendq']} notsent {c1.get('notsent', 0)} (stable: {stable});"
              f" ss rwnd_limited {c1['rwnd_limited_ms']} ms; written {st.written}")
        if "stall" in broken:
            check(b == a, f"[broken on purpose] rwnd_limited stays still ({a} -> {b})")
        else:
            check(a is not None and b is not None and b > a, f"receive_window_limited grew between two scrapes ({a} -> {b} s)")
        shift = 1 if "stall" in broken else 0
        check(stable and sendq == c1["sendq"] + shift, f"queued_bytes{{queue=\"send\"}} {sendq} == ss Send-Q {c1['sendq']}")
        check(stable and unsent == int(c1.get("notsent", 0)), f"unsent_bytes {unsent} == ss notsent {c1.get('notsent', 0)}")
        if mode.name == "all":
            recvq = sc.value("network_connection_queued_bytes", queue="receive", **speer)
            check(sstable and recvq == s1["recvq"] + shift,
                  f"reader ({SERVER}) queued_bytes{{queue=\"receive\"}} {recvq} == ss Recv-Q {s1['recvq']}")


def run_mode(name, binary, size, rate):
    print(f"=== mode {name}", flush=True)
    mode = Mode(name)
    out = {}
    try:
        with DelayLine(CLIENT, SERVER, delay_ms=20, drop_every=20, drop_direction="c2s") as line:
            try:
                start_stack(mode, binary)
                rtt_phase(mode)
                out = loss_phase(mode, line, size, rate)
                alert_phase(mode)
                stall_phase(mode)
            finally:
                mode.stop()
    except Exception as e:  # noqa: BLE001
        check(False, f"{name} mode: {e!r}\n--- exporter log:\n{mode.tail('exporter')}\n--- prometheus log:\n"
              f"{mode.tail('prometheus', 10)}")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=("host", "all"), action="append")
    ap.add_argument("--break", dest="broken", choices=("rtt", "p99", "loss", "sent", "alert", "stall"),
                    action="append", default=[])
    ap.add_argument("--size", type=int, default=6 << 20)
    ap.add_argument("--rate", type=int, default=1_250_000, help="pacing rate, bytes/s")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("quality_paths.py: needs root (run it under /work/iso.sh or as root)")
    broken.update(args.broken)
    binary = os.environ.get("CONN_EXPORTER_BIN", os.path.join(REPO, "target/release/conn-exporter"))
    if not os.path.isabs(binary):
        binary = os.path.join(REPO, binary)
    for name in args.mode or ("host", "all"):
        run_mode(name, binary, args.size, args.rate)
    print(f"{'FAILED: %d check(s)' % len(failures) if failures else 'all checks passed'}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
