#!/usr/bin/env python3
"""NAT resolution through conntrack on real DNAT and SNAT paths (issue 21's truth test).

Run as root in a private mount and network namespace (it creates namespaces nt-node,
nt-pod, nt-b1..3, nt-out and nt-ctr, each run anew):

    /work/iso.sh python3 tests/ops/lib/nat_truth.py [--run RUN] [--break CHECK]

The topology, a Kubernetes node in miniature (every address exists only inside the
namespaces made here):

    nt-pod   10.244.0.2 --- 10.244.0.1 \\               / 10.244.1.1 --- 10.244.1.2  nt-b1 :8080
                                        nt-node ------ 10.244.2.1 --- 10.244.2.2  nt-b2 :8080
    nt-out   10.0.0.2   --- 10.0.0.1   /  (default      \\ 10.244.3.1 --- 10.244.3.2  nt-b3 :8080
                                           via nt-out)   \\ 172.17.0.1 --- 172.17.0.2  nt-ctr :80

nt-node's nat table is shaped as kube-proxy's: chain KUBE-SVC-NT sends the Service
10.96.0.10:80 round-robin (statistic --mode nth, 1/3, 1/2, rest) to the three backends
at :8080, jumped to from OUTPUT (clients in nt-node itself) and PREROUTING (the pod);
a published port as Docker's: 10.0.0.1:8080 DNAT to the container 172.17.0.2:80, with
MASQUERADE on the way in so that the container sees 172.17.0.1. A canary Service
10.96.0.99:80 (DNAT to nt-b1:8081) tells when the exporter is ready: once a canary
connection's close is counted with its backend, the lifecycle source and the NAT
tables are both live. Backends and the container are Python TCP servers whose
listening sockets live in their namespaces; each counts its accepts per peer address.

Each run (exporter in nt-node, `--collector.nat`, the lifecycle source of the run):

  closed   the client (nt-node in host mode, nt-pod in all mode) makes 300 connections
           to 10.96.0.10:80, each closed after a request and its answer; the last 30
           stay open over one scrape. Per backend B, the exporter's
           network_connections_closed_total{direction="outbound",destination_address=
           "10.96.0.10",destination_port="80",destination_backend_address=B,
           destination_backend_port="8080"} equals the entries `conntrack -L` in nt-node
           lists with reply source B and the connections B accepted; they sum to 300,
           and no closed connection to the ClusterIP is left without a backend.
  peers    while the 30 are open: network_connection_peers{...,state="ESTABLISHED"}
           per backend equals the ESTABLISHED sockets `ss` shows on :8080 in that
           backend's namespace; and for every state (the 270 are in TIME_WAIT) the
           exporter's count per (backend, state) equals the client's sockets to
           10.96.0.10:80 as `ss` shows them, each put to its backend by the conntrack
           entry of its port.
  failed   nt-b3 stops listening (its kernel answers SYNs with RST: an endpoint whose
           pod died); 30 more connections: network_connections_failed_total{
           destination_backend_address="10.244.3.2"} equals the client's
           ECONNREFUSED count and the CLOSE entries to nt-b3 in conntrack; none for
           the others; closed counts per backend again equal conntrack's TIME_WAIT
           entries and the backends' accepts.
  inbound  (all mode) nt-out connects 10 times to the published port 10.0.0.1:8080
           (3 open over a scrape): the container's series (netns="nt-ctr",
           direction="inbound", source 172.17.0.2:80, destination_address the remote
           as the container sees it, 172.17.0.1) carry destination_original_address=
           "10.0.0.2", closed count = the container's accepts = conntrack's entries,
           peers = ss; then without the MASQUERADE rule, 10 more: destination_address
           "10.0.0.2" and no destination_original_address.
  ksm      (run all-netlink) Prometheus scrapes the exporter and a fixture exposition
           of kube-state-metrics' kube_service_info (Service shop/web, cluster_ip
           10.96.0.10; also a Service with another cluster IP and a headless one); the
           query of docs/promql-queries.md marked `<!-- doc-test: nat-backends -->`,
           run as written, returns exactly the three backends of shop/web, each > 0.
  self     conn_exporter_scrape_collector_success{collector="nat"} is 1; the scrape
           has no duplicate series.

Runs: host-netlink, host-ebpf (exporter without --collector.namespaces: its own,
nt-node's, sockets and table), all-netlink, all-ebpf (--collector.namespaces=all: the
pod's, backends' and container's namespaces through /run/netns; labels carry netns),
and nonat: host mode without --collector.nat, 30 connections counted with none of the
NAT labels on any series.

--break CHECK breaks one input or expectation so that its assertion must fail:
closed (exporter's count for nt-b1 expected +1), sum (total expected 301), peers
(ESTABLISHED for nt-b1 expected ss + 1), failed (ECONNREFUSED count expected +1),
inbound (destination_original_address expected 10.0.0.3), no-snat (the MASQUERADE rule
kept for the connections meant to be without SNAT), nonat (the nonat run given
--collector.nat), success (collector success expected 0), ksm (the fixture's
cluster_ip is 10.96.0.11).
"""

import argparse
import collections
import http.server
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from delayline import netns, sh  # noqa: E402
from doc_blocks import blocks as doc_blocks  # noqa: E402
from metrics_grep import duplicates  # noqa: E402
from quality_paths import Scrape, wait_for  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
NODE, POD, OUT, CTR = "nt-node", "nt-pod", "nt-out", "nt-ctr"
BACKENDS = {"nt-b1": "10.244.1.2", "nt-b2": "10.244.2.2", "nt-b3": "10.244.3.2"}
REFUSING = "nt-b3"
CLUSTER_IP, SVC_PORT, BACKEND_PORT = "10.96.0.10", 80, 8080
CANARY_IP, CANARY_PORT = "10.96.0.99", 8081
POD_ADDR, NODE_ADDR, OUT_ADDR = "10.244.0.2", "10.0.0.1", "10.0.0.2"
CTR_ADDR, CTR_GW, CTR_PORT, PUBLISHED = "172.17.0.2", "172.17.0.1", 80, 8080
CONNS, HELD, REFUSE_CONNS, INBOUND, INBOUND_HELD = 300, 30, 30, 10, 3
PACE = 0.01  # s between connections: spread over several 1 s Prometheus scrapes
# The exporter learns translations from conntrack events, drained every 20 ms by its NAT
# thread: a socket younger than that may be unlabelled in one scrape (a gauge, right in
# the next). The open connections are scraped once they are older; closes are counted
# with no such allowance.
SETTLE = 0.5
EXPORTER_PORT, PROM_PORT, KSM_PORT = 19621, 19692, 19622
NAT_LABELS = ("destination_backend_address", "destination_backend_port", "destination_original_address")
RUNS = ("host-netlink", "host-ebpf", "all-netlink", "all-ebpf", "nonat")
BREAKS = ("closed", "sum", "peers", "failed", "inbound", "no-snat", "nonat", "success", "ksm")
MASQ = ["POSTROUTING", "-d", f"{CTR_ADDR}/32", "-p", "tcp", "--dport", str(CTR_PORT), "-j", "MASQUERADE"]

failures = []
broken = set()
BROKEN = " [--break: expected +1 on purpose]"


def check(cond, msg):
    print(("ok: " if cond else "FAIL: ") + msg, flush=True)
    if not cond:
        failures.append(msg)
    return cond


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- the kernel's views: conntrack and ss ----------------------------------------------------

def conntrack(*filters):
    """nt-node's TCP conntrack entries: dicts of state, orig and reply (src, sport, dst, dport)."""
    out = sh("ip", "netns", "exec", NODE, "conntrack", "-L", "-p", "tcp", *filters)
    entries = []
    for line in out.splitlines():
        toks = line.split()
        if len(toks) < 4 or toks[0] != "tcp":
            continue
        kv = collections.defaultdict(list)
        for t in toks:
            if "=" in t:
                k, v = t.split("=", 1)
                kv[k].append(v)
        if len(kv["src"]) < 2:
            continue
        entries.append({"state": toks[3], "line": line,
                        "orig": (kv["src"][0], kv["sport"][0], kv["dst"][0], kv["dport"][0]),
                        "reply": (kv["src"][1], kv["sport"][1], kv["dst"][1], kv["dport"][1])})
    return entries


class ConntrackEvents:
    """`conntrack -E -p tcp FILTER` in nt-node from now until stop(), which returns the
    events as conntrack() returns entries, plus event ("NEW", "DESTROY", ...) and unreplied."""

    def __init__(self, *filters):
        self.p = subprocess.Popen(["ip", "netns", "exec", NODE, "conntrack", "-E", "-p", "tcp", *filters],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.sample = ""
        # `conntrack -E` prints nothing when it has subscribed: a moment to do so.
        time.sleep(0.5)

    def stop(self):
        self.p.terminate()
        out, _ = self.p.communicate(timeout=10)
        events = []
        for line in out.splitlines():
            toks = line.split()
            if len(toks) < 5 or not toks[0].startswith("["):
                continue
            kv = collections.defaultdict(list)
            for tk in toks:
                if "=" in tk:
                    k, v = tk.split("=", 1)
                    kv[k].append(v)
            if len(kv["src"]) < 2:
                continue
            events.append({"event": toks[0].strip("[]"), "state": toks[4], "unreplied": "[UNREPLIED]" in toks,
                           "orig": (kv["src"][0], kv["sport"][0], kv["dst"][0], kv["dport"][0]),
                           "reply": (kv["src"][1], kv["sport"][1], kv["dst"][1], kv["dport"][1])})
            if toks[0] == "[DESTROY]" and not self.sample:
                self.sample = line
        return events


SS_STATES = {"ESTAB": "ESTABLISHED", "UNCONN": "CLOSE", "FIN-WAIT-1": "FIN_WAIT1", "FIN-WAIT-2": "FIN_WAIT2"}


def ss(ns, *filt):
    """(state as the exporter names it, local addr, local port, remote addr, remote port) of
    each TCP socket `ss -Htan FILTER` shows in NS. (No `state` in FILTER: ss then leaves
    out the state column.)"""
    rows = []
    for line in sh("ip", "netns", "exec", ns, "ss", "-Htan", *filt).splitlines():
        f = line.split()
        if len(f) < 5:
            continue
        la, lp = f[3].rsplit(":", 1)
        ra, rp = f[4].rsplit(":", 1)
        rows.append((SS_STATES.get(f[0], f[0].replace("-", "_")), la, lp, ra, rp))
    return rows


# --- servers and clients -----------------------------------------------------------------------

class Server:
    """A TCP server listening in namespace NS: per connection it reads a request, answers,
    and closes once the client has closed. Counts accepts and finished connections per
    peer address. refuse() stops listening: the kernel then answers SYNs with RST."""

    def __init__(self, ns, addr, port):
        self.ns, self.addr, self.port = ns, addr, port
        with netns(ns):
            self.lst = socket.create_server((addr, port), backlog=512)
        self.lock = threading.Lock()
        self.accepted = collections.Counter()
        self.finished = collections.Counter()
        self.conns = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, peer = self.lst.accept()
            except OSError:
                return  # refuse() or close()
            with self.lock:
                self.accepted[peer[0]] += 1
                self.conns.append(c)
            threading.Thread(target=self._serve, args=(c, peer[0]), daemon=True).start()

    def _serve(self, c, peer):
        try:
            c.settimeout(60)
            if c.recv(64):
                c.sendall(b"pong")
                while c.recv(64):
                    pass
        except OSError:
            pass
        finally:
            c.close()
            with self.lock:
                self.finished[peer] += 1

    def refuse(self):
        # shutdown() wakes the accept() of the other thread (close() alone would not)
        # and takes the socket out of LISTEN at once.
        try:
            self.lst.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.lst.close()

    def close(self):
        self.refuse()
        with self.lock:
            for c in self.conns:
                try:
                    c.close()
                except OSError:
                    pass


def exchange(ns, addr, port, hold=False):
    """One connection from namespace NS: a request, its answer, then the close (the
    client closes first) unless HOLD, when the open socket is returned."""
    with netns(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect((addr, port))
        s.sendall(b"ping")
        if s.recv(64) != b"pong":
            raise RuntimeError(f"{addr}:{port} from {ns}: no answer")
    except BaseException:
        s.close()
        raise
    if hold:
        return s
    s.close()
    return None


# --- the topology -----------------------------------------------------------------------------

def ipt(*args):
    sh("ip", "netns", "exec", NODE, "iptables", "-w", *args)


class Topology:
    """The namespaces, links, routes, iptables rules and servers of one run."""

    def __enter__(self):
        self.names = [NODE, POD, OUT, CTR, *BACKENDS]
        for ns in self.names:
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        self.link("v-pod", POD, "10.244.0.1", POD_ADDR)
        for i, (ns, addr) in enumerate(BACKENDS.items(), 1):
            self.link(f"v-b{i}", ns, f"10.244.{i}.1", addr)
        self.link("v-out", OUT, NODE_ADDR, OUT_ADDR, default=False)
        self.link("v-ctr", CTR, CTR_GW, CTR_ADDR)
        # The node's own traffic leaves by its LAN (nt-out), as a real node's default
        # route does: its connections to the ClusterIP get 10.0.0.1 as source.
        sh("ip", "-n", NODE, "route", "add", "default", "via", OUT_ADDR)
        sh("ip", "netns", "exec", NODE, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        # kube-proxy's shape: one chain per Service, entered from OUTPUT and PREROUTING;
        # nth 1/3, then 1/2 of the rest, then the rest: exact round-robin over new
        # connections (only a connection's first packet passes the nat table).
        ipt("-t", "nat", "-N", "KUBE-SVC-NT")
        n = len(BACKENDS)
        for i, addr in enumerate(BACKENDS.values()):
            nth = ["-m", "statistic", "--mode", "nth", "--every", str(n - i), "--packet", "0"] if i < n - 1 else []
            ipt("-t", "nat", "-A", "KUBE-SVC-NT", "-p", "tcp", *nth, "-j", "DNAT",
                "--to-destination", f"{addr}:{BACKEND_PORT}")
        for chain in ("OUTPUT", "PREROUTING"):
            ipt("-t", "nat", "-A", chain, "-d", f"{CLUSTER_IP}/32", "-p", "tcp", "--dport", str(SVC_PORT),
                "-j", "KUBE-SVC-NT")
            ipt("-t", "nat", "-A", chain, "-d", f"{CANARY_IP}/32", "-p", "tcp", "--dport", str(SVC_PORT),
                "-j", "DNAT", "--to-destination", f"{BACKENDS['nt-b1']}:{CANARY_PORT}")
        # Docker's shape of a published port: DNAT from the host's address, and here a
        # MASQUERADE towards the container (as docker-proxy-less setups with hairpin
        # or userland-proxy=false plus SNAT do), so that it sees the node's address.
        ipt("-t", "nat", "-A", "PREROUTING", "-d", f"{NODE_ADDR}/32", "-p", "tcp", "--dport", str(PUBLISHED),
            "-j", "DNAT", "--to-destination", f"{CTR_ADDR}:{CTR_PORT}")
        ipt("-t", "nat", "-A", *MASQ)
        self.servers = {ns: Server(ns, addr, BACKEND_PORT) for ns, addr in BACKENDS.items()}
        self.canary = Server("nt-b1", BACKENDS["nt-b1"], CANARY_PORT)
        self.ctr = Server(CTR, CTR_ADDR, CTR_PORT)
        return self

    @staticmethod
    def link(node_if, ns, node_addr, addr, default=True):
        sh("ip", "link", "add", node_if, "netns", NODE, "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "-n", NODE, "addr", "add", f"{node_addr}/24", "dev", node_if)
        sh("ip", "-n", NODE, "link", "set", node_if, "up")
        sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        if default:
            sh("ip", "-n", ns, "route", "add", "default", "via", node_addr)

    def __exit__(self, *a):
        for srv in [*getattr(self, "servers", {}).values(), getattr(self, "canary", None), getattr(self, "ctr", None)]:
            if srv:
                srv.close()
        for ns in self.names:
            sh("ip", "netns", "del", ns, check=False)
        return False


# --- the exporter, Prometheus and the kube-state-metrics fixture --------------------------------

KSM_FIXTURE = """# HELP kube_service_info Information about service.
# TYPE kube_service_info gauge
kube_service_info{namespace="shop",service="web",uid="3f0b8c1e-5d2a-4a57-9e0c-6b1d2f4a7c10",cluster_ip="%s",external_name="",load_balancer_ip="",external_traffic_policy=""} 1
kube_service_info{namespace="default",service="kubernetes",uid="0c9e1a77-2b3d-4e5f-8a6b-7c8d9e0f1a2b",cluster_ip="10.96.0.1",external_name="",load_balancer_ip="",external_traffic_policy=""} 1
kube_service_info{namespace="shop",service="web-headless",uid="9d8c7b6a-5f4e-4d3c-2b1a-0f9e8d7c6b5a",cluster_ip="None",external_name="",load_balancer_ip="",external_traffic_policy=""} 1
"""


class Run:
    """One exporter (in nt-node) and what it is asked."""

    def __init__(self, name, binary):
        self.name = name
        self.mode = "all" if name.startswith("all") else "host"
        self.source = "ebpf" if name.endswith("ebpf") else "netlink"
        self.nat = name != "nonat" or "nonat" in broken
        self.prom = name == "all-netlink"
        self.client = POD if self.mode == "all" else NODE
        self.client_addr = POD_ADDR if self.mode == "all" else NODE_ADDR
        self.binary = binary
        self.tmp = tempfile.mkdtemp(prefix=f"nat-{name}-")
        self.procs = []

    def labels(self, ns=None, **kw):
        if self.mode == "all":
            kw["netns"] = ns or self.client
        return kw

    def start(self, name, argv):
        out = open(os.path.join(self.tmp, name + ".log"), "w")
        p = subprocess.Popen(["ip", "netns", "exec", NODE, *argv], stdout=out, stderr=subprocess.STDOUT)
        self.procs.append((name, p))
        return p

    def stop(self):
        for _, p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.procs = []
        if getattr(self, "ksm", None):
            self.ksm.shutdown()
            self.ksm.server_close()

    def tail(self, name, n=20):
        try:
            with open(os.path.join(self.tmp, name + ".log")) as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def http(self, url):
        with netns(NODE):
            with urllib.request.urlopen(url, timeout=10) as r:
                return r.read().decode()

    def scrape(self):
        return Scrape(self.http(f"http://127.0.0.1:{EXPORTER_PORT}/metrics"))

    def promq(self, q):
        u = f"http://127.0.0.1:{PROM_PORT}/api/v1/query?" + urllib.parse.urlencode({"query": q})
        r = json.loads(self.http(u))
        if r["status"] != "success":
            raise RuntimeError(f"{q}: {r}")
        return r["data"]["result"]

    def start_stack(self):
        argv = [self.binary, f"--web.listen-address=127.0.0.1:{EXPORTER_PORT}",
                f"--collector.lifecycle.source={self.source}"]
        if self.nat:
            argv.append("--collector.nat")
        if self.mode == "all":
            argv.append("--collector.namespaces=all")
        log(f"exporter: ip netns exec {NODE} {' '.join(argv)}")
        self.start("exporter", argv)
        if self.prom:
            self.start_prometheus()
        wait_for(self.scrape, 20, "the exporter's /metrics")
        self.await_canary()
        if self.prom:
            # rate() needs the series scraped while they grow: Prometheus scrapes both
            # targets before the first connection.
            wait_for(lambda: len(self.promq("up == 1")) == 2, 30, "Prometheus scraping the exporter and the fixture")

    def await_canary(self):
        """Canary connections until the exporter counts one closed, with its backend when
        NAT is on: from then on the lifecycle source and the NAT tables are live."""
        want = {"direction": "outbound", "destination_address": CANARY_IP}
        if self.nat:
            want["destination_backend_address"] = BACKENDS["nt-b1"]

        def seen():
            exchange(self.client, CANARY_IP, SVC_PORT)
            time.sleep(0.3)
            return self.scrape().find("network_connections_closed_total", **self.labels(**want))

        t0 = time.monotonic()
        wait_for(seen, 30, f"a canary connection counted closed ({want})")
        log(f"exporter ready ({self.name}): canary counted after {time.monotonic() - t0:.1f}s")

    def start_prometheus(self):
        ip = "10.96.0.11" if "ksm" in broken else CLUSTER_IP
        body = (KSM_FIXTURE % ip).encode()

        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        with netns(NODE):
            self.ksm = http.server.ThreadingHTTPServer(("127.0.0.1", KSM_PORT), H)
        threading.Thread(target=self.ksm.serve_forever, daemon=True).start()
        cfg = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
            "scrape_configs": [
                {"job_name": "conn-exporter", "static_configs": [{"targets": [f"127.0.0.1:{EXPORTER_PORT}"]}]},
                {"job_name": "kube-state-metrics", "static_configs": [{"targets": [f"127.0.0.1:{KSM_PORT}"]}]},
            ],
        }
        path = os.path.join(self.tmp, "prometheus.yml")
        with open(path, "w") as f:
            f.write(json.dumps(cfg))  # JSON is YAML
        sh("promtool", "check", "config", path)
        self.start("prometheus", ["prometheus", f"--config.file={path}", f"--storage.tsdb.path={self.tmp}/data",
                                  f"--web.listen-address=127.0.0.1:{PROM_PORT}"])


# --- reading the scrape -------------------------------------------------------------------------

def pick(s, name, **want):
    """Samples of NAME whose labels equal WANT; a wanted "" also matches an absent label
    (an empty label is absent to Prometheus)."""
    return [(lab, v, line) for n, lab, v, line in s.samples
            if n == name and all(lab.get(k, "") == val for k, val in want.items())]


def total(s, name, **want):
    return sum(v for _, v, _ in pick(s, name, **want))


def excerpt(title, rows):
    print(f"  {title}:")
    for _, _, line in rows or [(None, None, "(none)")]:
        print("    " + line)


def settle(run, name, want, expect, timeout=15):
    """Scrapes until the sum of NAME{WANT} reaches EXPECT (or TIMEOUT), then once more a
    second later: the figure asserted is one that has stopped moving, so a late extra
    count shows too."""
    end = time.monotonic() + timeout
    while total(run.scrape(), name, **want) < expect and time.monotonic() < end:
        time.sleep(0.5)
    time.sleep(1)
    return run.scrape()


def self_checks(run, s):
    dups = duplicates(s.text.splitlines(keepends=True))
    check(not dups, f"{run.name}: no duplicate series in the scrape ({dups[:3]})")
    if not run.nat:
        return
    succ = s.value("conn_exporter_scrape_collector_success", collector="nat")
    want = 0 if "success" in broken else 1
    check(succ == want, f"{run.name}: conn_exporter_scrape_collector_success{{collector=\"nat\"}} {succ} == {want}")
    print("  self-metrics: " + ", ".join(
        f"{n} {s.value(n)}" for n in ("conn_exporter_nat_entries", "conn_exporter_nat_entries_dropped_total",
                                      "conn_exporter_nat_resyncs_total", "conn_exporter_nat_namespaces",
                                      "conn_exporter_nat_cilium_detected")))


# --- the phases -----------------------------------------------------------------------------------

def service_labels(run, backend=None, **kw):
    want = dict(direction="outbound", destination_address=CLUSTER_IP, destination_port=str(SVC_PORT), **kw)
    if backend is not None:
        want["destination_backend_address"] = backend
        want["destination_backend_port"] = str(BACKEND_PORT) if backend else ""
    return run.labels(**want)


def client_sockets_by_backend(run):
    """The client's sockets to the ClusterIP (ss), each put to its backend by the conntrack
    entry of its port: Counter of (backend address, state)."""
    ct = {e["orig"][1]: e["reply"][0] for e in conntrack("--orig-dst", CLUSTER_IP)
          if e["orig"][0] == run.client_addr}
    out = collections.Counter()
    for state, la, lp, ra, rp in ss(run.client, "dst", CLUSTER_IP):
        if la == run.client_addr and ra == CLUSTER_IP and rp == str(SVC_PORT):
            out[(ct.get(lp, "no conntrack entry"), state)] += 1
    return out


def established(ns, port):
    return sum(1 for r in ss(ns, f"( sport = :{port} )") if r[0] == "ESTABLISHED")


def backends_established():
    return {ns: established(ns, BACKEND_PORT) for ns in BACKENDS}


def peers_phase(run):
    """With HELD connections open: peers per backend against ss in the backends, and per
    (backend, state) against the client's ss joined with conntrack."""
    print(f"peers ({run.name}):", flush=True)
    for _ in range(4):
        client0, est0 = client_sockets_by_backend(run), backends_established()
        s = run.scrape()
        client1, est1 = client_sockets_by_backend(run), backends_established()
        if (client0, est0) == (client1, est1):
            break
        time.sleep(0.5)
    stable = (client0, est0) == (client1, est1)
    got = collections.Counter()
    rows = pick(s, "network_connection_peers", **service_labels(run))
    for lab, v, _ in rows:
        got[(lab.get("destination_backend_address", ""), lab.get("state"))] += int(v)
    excerpt(f"scrape excerpt ({run.name}), network_connection_peers to {CLUSTER_IP}:{SVC_PORT}", rows)
    print(f"  ss ESTABLISHED on :{BACKEND_PORT} in the backends: {est1}; client's sockets by backend"
          f" (ss + conntrack): {dict(sorted(client1.items()))}")
    check(sum(est1.values()) == HELD, f"the backends hold {sum(est1.values())} == {HELD} open connections (ss)")
    for i, (ns, addr) in enumerate(BACKENDS.items()):
        shift = 1 if "peers" in broken and i == 0 else 0
        e = total(s, "network_connection_peers", **service_labels(run, addr, state="ESTABLISHED"))
        check(stable and e == est1[ns] + shift,
              f"peers{{destination_backend_address=\"{addr}\",state=\"ESTABLISHED\"}} {e:.0f} == ss in {ns}"
              f" {est1[ns]}{BROKEN if shift else ''}")
    check(stable and got == client1,
          f"peers per (backend, state) {dict(sorted(got.items()))} == the client's ss joined with conntrack")


def closed_phase(run, topo):
    print(f"closed ({run.name}):", flush=True)
    t0 = time.monotonic()
    for _ in range(CONNS - HELD):
        exchange(run.client, CLUSTER_IP, SVC_PORT)
        time.sleep(PACE)
    # Let the last closes leave FIN_WAIT2 (the server closes on EOF) before ss is read.
    time.sleep(0.3)
    held = [exchange(run.client, CLUSTER_IP, SVC_PORT, hold=True) for _ in range(HELD)]
    time.sleep(SETTLE)
    log(f"{CONNS - HELD} connections made and closed in {time.monotonic() - t0:.1f}s, {HELD} open")
    peers_phase(run)
    for c in held:
        c.close()
    wait_for(lambda: all(topo.servers[ns].finished[run.client_addr] == topo.servers[ns].accepted[run.client_addr]
                         for ns in BACKENDS), 10, "the backends to see every close")
    s = settle(run, "network_connections_closed_total", service_labels(run), CONNS)
    compare_closed(run, topo, s, CONNS)
    self_checks(run, s)


def compare_closed(run, topo, s, want_sum):
    ct = conntrack("--orig-dst", CLUSTER_IP)
    ct = [e for e in ct if e["orig"][0] == run.client_addr and e["orig"][3] == str(SVC_PORT)]
    states = collections.Counter(e["state"] for e in ct)
    by_backend = collections.Counter(e["reply"][0] for e in ct if e["state"] == "TIME_WAIT")
    print(f"  conntrack -L -p tcp --orig-dst {CLUSTER_IP} (src {run.client_addr}): {len(ct)} entries,"
          f" states {dict(states)}; TIME_WAIT by reply source {dict(sorted(by_backend.items()))}")
    for e in ct[:2]:
        print("    " + e["line"])
    # A refused connect leaves no entry: the kernel destroys an unreplied entry at the RST.
    check(set(states) == {"TIME_WAIT"}, f"conntrack: every connection ended in TIME_WAIT ({dict(states)})")
    rows = pick(s, "network_connections_closed_total", **service_labels(run))
    excerpt(f"scrape excerpt ({run.name}), network_connections_closed_total to {CLUSTER_IP}:{SVC_PORT}", rows)
    got_sum = 0
    for i, (ns, addr) in enumerate(BACKENDS.items()):
        shift = 1 if "closed" in broken and i == 0 else 0
        got = total(s, "network_connections_closed_total", **service_labels(run, addr))
        got_sum += got
        seen = topo.servers[ns].accepted[run.client_addr]
        check(got == by_backend[addr] + shift == seen + shift,
              f"closed{{destination_backend_address=\"{addr}\"}} {got:.0f} == conntrack {by_backend[addr]}"
              f" == accepted by {ns} {seen}{BROKEN if shift else ''}")
    want = want_sum + (1 if "sum" in broken else 0)
    check(got_sum == want == sum(by_backend.values()),
          f"closed to {CLUSTER_IP}:{SVC_PORT} summed over the backends {got_sum:.0f} == {want}"
          f" == conntrack {sum(by_backend.values())}")
    unresolved = pick(s, "network_connections_closed_total", **service_labels(run, ""))
    check(not unresolved, f"no closed connection to {CLUSTER_IP} without a backend ({[r[2] for r in unresolved]})")


def failed_phase(run, topo):
    print(f"failed ({run.name}):", flush=True)
    refusing = BACKENDS[REFUSING]
    topo.servers[REFUSING].refuse()
    # conntrack destroys an unreplied entry as soon as the RST passes (NEW, then DESTROY
    # in CLOSE [UNREPLIED]): `conntrack -L` never lists a refused connect, its events do.
    events = ConntrackEvents("--orig-dst", CLUSTER_IP)
    refused = 0
    for _ in range(REFUSE_CONNS):
        try:
            exchange(run.client, CLUSTER_IP, SVC_PORT)
        except ConnectionRefusedError:
            refused += 1
        time.sleep(PACE)
    time.sleep(0.3)
    ct_refused = collections.Counter(e["reply"][0] for e in events.stop()
                                     if e["event"] == "DESTROY" and e["state"] == "CLOSE" and e["unreplied"]
                                     and e["orig"][0] == run.client_addr)
    wait_for(lambda: all(topo.servers[ns].finished[run.client_addr] == topo.servers[ns].accepted[run.client_addr]
                         for ns in BACKENDS), 10, "the backends to see every close")
    settle(run, "network_connections_closed_total", service_labels(run), CONNS + REFUSE_CONNS - refused)
    fail_labels = run.labels(direction="outbound", destination_address=CLUSTER_IP)
    s = settle(run, "network_connections_failed_total", dict(fail_labels, destination_backend_address=refusing),
               refused)
    rows = pick(s, "network_connections_failed_total", **fail_labels)
    excerpt(f"scrape excerpt ({run.name}), network_connections_failed_total to {CLUSTER_IP}", rows)
    print(f"  client: {refused} of {REFUSE_CONNS} connects refused (ECONNREFUSED); `conntrack -E`: unreplied"
          f" entries destroyed in CLOSE, by reply source {dict(ct_refused)}")
    if events.sample:
        print("    " + events.sample)
    got = total(s, "network_connections_failed_total", **fail_labels, destination_backend_address=refusing)
    want = refused + (1 if "failed" in broken else 0)
    check(refused > 0 and got == want == ct_refused[refusing],
          f"failed{{destination_backend_address=\"{refusing}\"}} {got:.0f} == ECONNREFUSED {want} =="
          f" conntrack -E {ct_refused[refusing]}")
    others = {lab.get("destination_backend_address", "") for lab, v, _ in rows if v} - {refusing}
    check(not others, f"no failed connects to other backends or unresolved ({sorted(others)})")
    compare_closed(run, topo, s, CONNS + REFUSE_CONNS - refused)


def inbound_phase(run, topo):
    print(f"inbound ({run.name}):", flush=True)
    orig = "10.0.0.3" if "inbound" in broken else OUT_ADDR
    local = run.labels(CTR, direction="inbound", source_address=CTR_ADDR, source_port=str(CTR_PORT))
    for _ in range(INBOUND - INBOUND_HELD):
        exchange(OUT, NODE_ADDR, PUBLISHED)
    held = [exchange(OUT, NODE_ADDR, PUBLISHED, hold=True) for _ in range(INBOUND_HELD)]
    time.sleep(SETTLE)
    est = established(CTR, CTR_PORT)
    s = run.scrape()
    rows = pick(s, "network_connection_peers", **local)
    excerpt(f"scrape excerpt ({run.name}), the container's network_connection_peers", rows)
    p = total(s, "network_connection_peers", **local, destination_address=CTR_GW, destination_original_address=orig,
              state="ESTABLISHED")
    check(p == est == INBOUND_HELD,
          f"container peers{{destination_address=\"{CTR_GW}\",destination_original_address=\"{orig}\",state=\"ESTABLISHED\"}}"
          f" {p:.0f} == ss in {CTR} {est} == {INBOUND_HELD}")
    for c in held:
        c.close()
    wait_for(lambda: topo.ctr.finished[CTR_GW] == INBOUND, 10, "the container to see every close")
    s = settle(run, "network_connections_closed_total", dict(local, destination_address=CTR_GW), INBOUND)
    ct = [e for e in conntrack("--orig-dst", NODE_ADDR, "--dport", str(PUBLISHED)) if e["orig"][0] == OUT_ADDR]
    snat = sum(1 for e in ct if e["reply"][2] == CTR_GW)
    print(f"  conntrack --orig-dst {NODE_ADDR} --dport {PUBLISHED}: {len(ct)} entries, {snat} with reply"
          f" destination {CTR_GW} (masqueraded)")
    for e in ct[:1]:
        print("    " + e["line"])
    rows = pick(s, "network_connections_closed_total", **local)
    excerpt(f"scrape excerpt ({run.name}), the container's network_connections_closed_total", rows)
    got = total(s, "network_connections_closed_total", **local, destination_address=CTR_GW,
                destination_original_address=orig)
    check(got == INBOUND == topo.ctr.accepted[CTR_GW] == snat,
          f"with SNAT: closed{{destination_address=\"{CTR_GW}\",destination_original_address=\"{orig}\"}} {got:.0f}"
          f" == {INBOUND} == accepted by the container {topo.ctr.accepted[CTR_GW]} == conntrack {snat}")
    # Without SNAT the container sees the real client, and nothing is to be told.
    if "no-snat" not in broken:
        ipt("-t", "nat", "-D", *MASQ)
    for _ in range(INBOUND):
        exchange(OUT, NODE_ADDR, PUBLISHED)
    wait_for(lambda: topo.ctr.finished[OUT_ADDR] + topo.ctr.finished[CTR_GW] == 2 * INBOUND, 10,
             "the container to see every close")
    s = settle(run, "network_connections_closed_total", dict(local, destination_address=OUT_ADDR), INBOUND)
    ct = [e for e in conntrack("--orig-dst", NODE_ADDR, "--dport", str(PUBLISHED)) if e["orig"][0] == OUT_ADDR]
    plain = sum(1 for e in ct if e["reply"][2] == OUT_ADDR)
    rows = pick(s, "network_connections_closed_total", **local)
    excerpt(f"scrape excerpt ({run.name}), after the MASQUERADE rule was deleted", rows)
    direct = pick(s, "network_connections_closed_total", **local, destination_address=OUT_ADDR)
    got = sum(v for _, v, _ in direct)
    labelled = [line for lab, _, line in direct if lab.get("destination_original_address")]
    check(got == INBOUND == topo.ctr.accepted[OUT_ADDR] == plain and not labelled,
          f"without SNAT: closed{{destination_address=\"{OUT_ADDR}\"}} {got:.0f} == {INBOUND} == accepted by the"
          f" container {topo.ctr.accepted[OUT_ADDR]} == conntrack (not masqueraded) {plain},"
          f" none with destination_original_address ({labelled})")
    # The backends' inbound sockets (all mode sees them) came from the pod unchanged.
    rows = [r for ns in BACKENDS for r in pick(s, "network_connections_closed_total", direction="inbound", netns=ns)
            if r[0].get("destination_original_address")]
    check(not rows, f"no destination_original_address on the backends' inbound series ({[r[2] for r in rows]})")


def ksm_phase(run):
    print(f"ksm ({run.name}):", flush=True)
    path = os.path.join(REPO, "docs/promql-queries.md")
    with open(path) as f:
        found = doc_blocks(f.read(), "nat-backends")
    check(len(found) == 1, f"docs/promql-queries.md marks {len(found)} block(s) nat-backends, want 1")
    q = "\n".join(line for line in found[0].splitlines() if not line.lstrip().startswith("#")).strip()
    print("  the documented query:\n" + "\n".join("    " + line for line in q.splitlines()))
    want = {("shop", "web", addr, str(BACKEND_PORT)) for addr in BACKENDS.values()}

    def answer():
        res = run.promq(q)
        got = {(r["metric"].get("namespace"), r["metric"].get("service"), r["metric"].get("destination_backend_address"),
                r["metric"].get("destination_backend_port")): float(r["value"][1]) for r in res}
        return (set(got) == want and all(v > 0 for v in got.values())) and got

    try:
        got = wait_for(answer, 20, "the documented query to name the three backends of shop/web")
    except RuntimeError as e:
        print(f"  {e}")
        got = {}
    res = run.promq(q)
    for r in res:
        print(f"    {r['metric']} {r['value'][1]}")
    check(bool(got), f"Prometheus: the Service join gives {len(res)} series, want exactly shop/web x"
          f" {sorted(BACKENDS.values())} at :{BACKEND_PORT}, each > 0")


def nonat_phase(run):
    print(f"nonat ({run.name}):", flush=True)
    for _ in range(HELD):
        exchange(run.client, CLUSTER_IP, SVC_PORT)
    s = settle(run, "network_connections_closed_total", service_labels(run), HELD)
    rows = pick(s, "network_connections_closed_total", **service_labels(run))
    excerpt(f"scrape excerpt ({run.name}), network_connections_closed_total to {CLUSTER_IP}:{SVC_PORT}", rows)
    got = total(s, "network_connections_closed_total", **service_labels(run))
    check(got == HELD, f"without --collector.nat: {got:.0f} closed to {CLUSTER_IP}:{SVC_PORT} == {HELD}")
    # Not even empty: the labels belong to --collector.nat.
    labelled = [line for _, lab, _, line in s.samples if any(k in lab for k in NAT_LABELS)]
    check(not labelled, f"without --collector.nat: no series has {', '.join(NAT_LABELS)}, not even empty"
          f" ({len(labelled)}: {labelled[:3]})")
    print(f"  conn_exporter_scrape_collector_success{{collector=\"nat\"}}:"
          f" {s.value('conn_exporter_scrape_collector_success', collector='nat')}"
          f"; nat self-metrics served: {sorted({n for n, *_ in s.samples if n.startswith('conn_exporter_nat_')})}")
    self_checks(run, s)


def run_one(name, binary):
    print(f"=== run {name}", flush=True)
    run = Run(name, binary)
    try:
        with Topology() as topo:
            try:
                run.start_stack()
                if name == "nonat":
                    nonat_phase(run)
                else:
                    closed_phase(run, topo)
                    if run.prom:
                        ksm_phase(run)
                    failed_phase(run, topo)
                    if run.mode == "all":
                        inbound_phase(run, topo)
            finally:
                run.stop()
    except Exception as e:  # noqa: BLE001 (reported as a failed check, with the logs)
        check(False, f"{name}: {e!r}\n--- exporter log:\n{run.tail('exporter')}"
              + (f"--- prometheus log:\n{run.tail('prometheus', 10)}" if run.prom else ""))
    if failures:
        print(f"--- exporter log ({name}):\n{run.tail('exporter', 8)}")
    shutil.rmtree(run.tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", choices=RUNS, action="append")
    ap.add_argument("--break", dest="broken", choices=BREAKS, action="append", default=[])
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("nat_truth.py: needs root (run it under /work/iso.sh or tests/ops/test-nat.sh)")
    broken.update(args.broken)
    binary = os.environ.get("CONN_EXPORTER_BIN", os.path.join(REPO, "target/release/conn-exporter"))
    if not os.path.isabs(binary):
        binary = os.path.join(REPO, binary)
    t0 = time.monotonic()
    for name in args.run or RUNS:
        run_one(name, binary)
    print(f"{'FAILED: %d check(s)' % len(failures) if failures else 'all checks passed'}"
          f" ({time.monotonic() - t0:.0f}s)")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
