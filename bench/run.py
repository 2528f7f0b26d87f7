#!/usr/bin/env python3
"""Side-by-side scrape benchmark of conn-exporter against ss, /proc and node_exporter.

For each size N (plus an empty host first), the runner:
  1. starts bench/loadgen.py with N loopback TCP connections (2*N ESTABLISHED sockets) and
     waits for its READY line;
  2. starts conn-exporter (--collector.connections.max-series=0) and Debian's
     prometheus-node-exporter with only the tcpstat collector, each on a free loopback port;
  3. reads the exporter's idle RSS, then makes one untimed "first" scrape of each endpoint,
     which is parsed and checked (ESTABLISHED series vs `ss`, duplicate series, aggregate);
  4. times R rounds, round-robin, of
       (a) GET conn-exporter /metrics                 (full body read)
       (b) GET conn-exporter /metrics?collect[]=states (aggregate only)
       (c) ss -tanH > /dev/null
       (d) cat /proc/net/tcp /proc/net/tcp6 > /dev/null
       (e) GET node_exporter /metrics                  (tcpstat only)
       (f) GET conn-exporter /metrics?collect[]=peers  (network_connection_peers only)
     rotating which measure starts each round so none always follows the same neighbour;
  5. reads the exporter's peak RSS (VmHWM) and, --settle seconds after the last scrape, its
     settled RSS (VmRSS); stops everything and waits for the sockets to go away.

Wall time is time.perf_counter() around connect + request + reading the whole response
(HTTP) or around spawn + wait (commands). CPU time (user + system) per operation comes
from the exporters' /proc/PID/stat read before and after each scrape (10 ms ticks, so the
mean over the rounds is reported) and from RUSAGE_CHILDREN around each command. Every row
gives both, and both ratios: the exporter works on several threads (decoding, encoding,
gzip) where ss works on one, so wall time alone flatters it on a multi-core host.

--smoke (N=2000, 3 rounds) exits non-zero if a scrape failed, if the exporter's
ESTABLISHED series (per-connection, states or peers) do not match `ss` within the
tolerance, or if the peers scrape has per-connection series; CI runs it.

Python 3.11 standard library only. Needs root only if loadgen must raise sysctls.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import re
import resource
import select
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

from benchlib import (PROMETHEUS_ACCEPT, Processes, free_port, loadavg, proc_cpu_seconds,
                      proc_status, ss_established, wait_port)
from benchlib import take_lock
from benchlib import wait_quiet as benchlib_wait_quiet

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

MEASURES = [
    ("a", "conn-exporter /metrics"),
    ("b", "conn-exporter states"),
    ("c", "ss -tanH"),
    ("d", "cat /proc/net/tcp*"),
    ("e", "node_exporter tcpstat"),
    ("f", "conn-exporter peers"),
]


def log(msg: str) -> None:
    print(f"run: {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- processes

# --------------------------------------------------------------------------- HTTP

@dataclass
class Response:
    ok: bool
    status: int
    error: str
    wire_bytes: int          # response bytes on the wire, headers included
    seconds: float
    body: bytes | None = None  # decoded body (dechunked, gunzipped) if asked for


def _dechunk(data: bytes) -> bytes:
    out = []
    i = 0
    while True:
        j = data.index(b"\r\n", i)
        size = int(data[i:j].split(b";")[0], 16)
        if size == 0:
            return b"".join(out)
        out.append(data[j + 2:j + 2 + size])
        i = j + 2 + size + 2


def http_get(port: int, path: str, headers: dict[str, str], keep_body: bool,
             timeout: float) -> Response:
    """GET with a plain socket and `Connection: close`; reads the response to the end.

    The timed span is connect -> last byte. Without keep_body only the head and the tail
    are kept, so timing a 100 MB body costs the client a recv_into loop and nothing more.
    """
    req = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}",
           "User-Agent: conn-exporter-bench/1", "Connection: close"]
    req += [f"{k}: {v}" for k, v in headers.items()]
    raw_req = ("\r\n".join(req) + "\r\n\r\n").encode()
    buf = bytearray(1 << 20)
    mv = memoryview(buf)
    head = bytearray()
    head_done = False
    body_start = 0
    tail = b""
    chunks: list[bytes] = []
    total = 0
    content_length = None
    t0 = time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(raw_req)
            while True:
                n = s.recv_into(mv)
                if n == 0:
                    break
                total += n
                if keep_body:
                    chunks.append(bytes(mv[:n]))
                if not head_done:
                    head += mv[:n]
                    k = head.find(b"\r\n\r\n")
                    if k >= 0:
                        head_done = True
                        body_start = k + 4
                        m = re.search(rb"(?im)^content-length:\s*(\d+)", head[:k])
                        if m:
                            content_length = int(m.group(1))
                tail = (tail + bytes(mv[max(0, n - 8):n]))[-8:]
                if content_length is not None and total >= body_start + content_length:
                    break
        t1 = time.perf_counter()
    except OSError as e:
        return Response(False, 0, f"{type(e).__name__}: {e}", total, time.perf_counter() - t0)

    if not head_done:
        return Response(False, 0, "no complete HTTP header", total, t1 - t0)
    status_line = bytes(head[:head.find(b"\r\n")]).decode("latin-1")
    try:
        status = int(status_line.split()[1])
    except (IndexError, ValueError):
        return Response(False, 0, f"bad status line {status_line!r}", total, t1 - t0)
    hdr = bytes(head[:body_start]).decode("latin-1").lower()
    chunked = "transfer-encoding: chunked" in hdr
    if content_length is not None and total - body_start != content_length:
        return Response(False, status, f"short body: {total - body_start}/{content_length}",
                        total, t1 - t0)
    if chunked and not tail.endswith(b"0\r\n\r\n"):
        return Response(False, status, "chunked body without final chunk", total, t1 - t0)
    if status != 200:
        return Response(False, status, f"HTTP {status}", total, t1 - t0)
    body = None
    if keep_body:
        data = b"".join(chunks)[body_start:]
        if chunked:
            data = _dechunk(data)
        if "content-encoding: gzip" in hdr:
            data = gzip.decompress(data)
        body = data
    return Response(True, status, "", total, t1 - t0, body)


# --------------------------------------------------------------------------- metrics

LABEL_RE = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_samples(body: bytes, names: set[str]):
    """Yield (name, labels dict, value, series key) for samples of the given families."""
    for line in body.decode("utf-8", "replace").splitlines():
        if not line or line[0] == "#":
            continue
        brace = line.find("{")
        space = line.find(" ")
        if brace != -1 and (space == -1 or brace < space):
            name = line[:brace]
            end = line.rfind("}")
            labels = dict(LABEL_RE.findall(line[brace + 1:end]))
            key = line[:end + 1]
            rest = line[end + 1:].split()
        else:
            name = line[:space]
            labels = {}
            key = name
            rest = line[space:].split()
        if name in names:
            yield name, labels, float(rest[0]) if rest else float("nan"), key


def count_series(body: bytes, series_metric: str) -> tuple[int, int, int]:
    """(all series, ESTABLISHED series, duplicate series) of the per-connection family."""
    seen: set[str] = set()
    total = est = dups = 0
    for _name, labels, _v, key in parse_samples(body, {series_metric}):
        total += 1
        if labels.get("state", "").lower() == "established":
            est += 1
        if key in seen:
            dups += 1
        seen.add(key)
    return total, est, dups


def established_value(body: bytes, metric: str) -> float | None:
    """Sum of the family's samples with state ESTABLISHED, over all other labels.

    conn-exporter splits network_connection_states by family and interface, where
    interface="any" is the bucket of sockets bound to a wildcard address (not a total).
    """
    vals = [v for _n, labels, v, _k in parse_samples(body, {metric})
            if labels.get("state", "").lower() == "established"]
    return sum(vals) if vals else None


def children_cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


# --------------------------------------------------------------------------- one size

@dataclass
class SizeResult:
    n: int
    ss_established: int = 0
    ss_established_end: int = 0
    background: int = 0
    times: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k, _ in MEASURES})
    cpu: dict[str, float] = field(default_factory=lambda: {k: 0.0 for k, _ in MEASURES})
    cpu_samples: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k, _ in MEASURES})
    first: dict[str, float] = field(default_factory=dict)
    wire_bytes: dict[str, int] = field(default_factory=dict)
    body_bytes: int = 0
    series_total: int = 0
    series_established: int = 0
    series_duplicates: int = 0
    states_established: float | None = None
    peers_established: float | None = None
    peers_has_info: bool = False
    node_established: float | None = None
    rss_idle_kib: int = 0
    rss_peak_kib: int = 0
    rss_settled_kib: int = 0
    node_rss_peak_kib: int = 0
    failures: list[str] = field(default_factory=list)


def wait_quiet(args) -> int:
    return benchlib_wait_quiet(args.max_background, args.quiet_wait, args.smoke or args.allow_busy, "run")


def run_size(n: int, args, procs: Processes, tmp: str) -> SizeResult:
    res = SizeResult(n)
    timeout = args.scrape_timeout
    loadgen = None
    res.background = wait_quiet(args)
    if n > 0:
        ready = os.path.join(tmp, f"ready-{n}")
        argv = [sys.executable, os.path.join(HERE, "loadgen.py"), "-n", str(n),
                "--ready-file", ready] + (["--set-sysctls"] if args.set_sysctls else [])
        t0 = time.perf_counter()
        loadgen = procs.start(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        line = b""
        deadline = time.monotonic() + 60 + n / 1000
        while not line.startswith(b"READY"):
            if time.monotonic() > deadline or loadgen.poll() is not None:
                procs.stop(loadgen)
                raise RuntimeError(f"loadgen for N={n} did not become ready")
            r, _, _ = select.select([loadgen.stdout], [], [], 1.0)
            if r:
                line = loadgen.stdout.readline()
        up = int(line.split()[1])
        if up != n:
            res.failures.append(f"loadgen opened {up} connections, asked {n}")
        log(f"N={n}: load ready in {time.perf_counter() - t0:.1f} s")
    res.ss_established = ss_established()
    if n > 0 and res.ss_established < 2 * n:
        res.failures.append(f"ss sees {res.ss_established} ESTABLISHED sockets, expected >= {2 * n}")

    taken: set[int] = set()
    exporter = node = None
    exp_port = node_port = 0
    exp_log = None
    if args.exporter_bin:
        exp_port = free_port(args.port_base, taken)
        argv = [args.exporter_bin, "--web.listen-address", f"127.0.0.1:{exp_port}",
                "--collector.connections.max-series=0",
                "--web.disable-exporter-metrics"] + shlex.split(args.exporter_args)
        if args.source:
            argv += ["--collector.connections.source", args.source]
        exp_log = open(os.path.join(tmp, f"conn-exporter-{n}.log"), "wb")
        exporter = procs.start(argv, stdout=exp_log, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL)
    node_port = free_port(args.port_base, taken)
    node_log = open(os.path.join(tmp, f"node-exporter-{n}.log"), "wb")
    node = procs.start([args.node_exporter, "--collector.disable-defaults", "--collector.tcpstat",
                        "--web.disable-exporter-metrics",
                        f"--web.listen-address=127.0.0.1:{node_port}"],
                       stdout=node_log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        for name, p, port in (("conn-exporter", exporter, exp_port),
                              ("node_exporter", node, node_port)):
            if p is not None and not wait_port(port, p, 30.0):
                logf = os.path.join(tmp, f"{'conn-exporter' if p is exporter else 'node-exporter'}-{n}.log")
                with open(logf, "rb") as f:
                    tail = f.read()[-2000:].decode("utf-8", "replace")
                raise RuntimeError(f"{name} did not listen on port {port}:\n{tail}")
        time.sleep(1.0)
        if exporter:
            res.rss_idle_kib = proc_status(exporter.pid).get("VmRSS", 0)

        hdrs = ({"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip"}
                if args.encoding == "gzip" else {"Accept": "text/plain;version=0.0.4"})
        targets = {
            "a": (exp_port, "/metrics"),
            "b": (exp_port, "/metrics?collect%5B%5D=states"),
            "e": (node_port, "/metrics"),
            "f": (exp_port, "/metrics?collect%5B%5D=peers"),
        }
        active = [k for k, _ in MEASURES if k in "cde" or exporter]

        # First scrape of each endpoint: untimed in the statistics, parsed and checked.
        ss_before = ss_established()
        for k in [x for x in ("a", "b", "e", "f") if x in active]:
            port, path = targets[k]
            r = http_get(port, path, hdrs, True, timeout)
            res.first[k] = r.seconds
            if not r.ok:
                res.failures.append(f"first scrape ({k}) failed: {r.error}")
                continue
            res.wire_bytes[k] = r.wire_bytes
            if k == "a":
                res.body_bytes = len(r.body)
                res.series_total, res.series_established, res.series_duplicates = \
                    count_series(r.body, args.series_metric)
            elif k == "b":
                res.states_established = established_value(r.body, args.states_metric)
            elif k == "f":
                res.peers_established = established_value(r.body, "network_connection_peers")
                res.peers_has_info = any(True for _ in parse_samples(r.body, {args.series_metric}))
            else:
                res.node_established = established_value(r.body, "node_tcp_connection_states")
        ss_after = ss_established()
        check_counts(res, ss_before, ss_after, args)

        def run_cmd(argv: list[str]) -> tuple[bool, float, str]:
            t0 = time.perf_counter()
            p = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            t1 = time.perf_counter()
            return p.returncode == 0, t1 - t0, p.stderr.decode(errors="replace").strip()

        for rnd in range(args.rounds):
            order = active[rnd % len(active):] + active[:rnd % len(active)]
            for k in order:
                if k in targets:
                    pid = exporter.pid if k in "abf" else node.pid
                    c0 = proc_cpu_seconds(pid)
                    r = http_get(*targets[k], hdrs, False, timeout)
                    cpu = proc_cpu_seconds(pid) - c0
                    ok, secs, err = r.ok, r.seconds, r.error
                else:
                    argv = ["ss", "-tanH"] if k == "c" else ["cat", "/proc/net/tcp", "/proc/net/tcp6"]
                    c0 = children_cpu_seconds()
                    ok, secs, err = run_cmd(argv)
                    cpu = children_cpu_seconds() - c0
                if ok:
                    res.times[k].append(secs)
                    res.cpu_samples[k].append(cpu)
                else:
                    res.failures.append(f"round {rnd} ({k}) failed: {err}")
            if exporter and exporter.poll() is not None:
                raise RuntimeError(f"conn-exporter exited with {exporter.returncode}")
        for k, xs in res.cpu_samples.items():
            res.cpu[k] = statistics.mean(xs) if xs else 0.0
        res.ss_established_end = ss_established()
        drift = abs(res.ss_established_end - res.ss_established)
        if drift > max(args.tolerance_abs, int(res.ss_established * args.tolerance)):
            msg = (f"ESTABLISHED sockets moved from {res.ss_established} to "
                   f"{res.ss_established_end} during the rounds: foreign load?")
            if args.smoke:
                log("note: " + msg)
            else:
                res.failures.append(msg)

        if exporter:
            res.rss_peak_kib = proc_status(exporter.pid).get("VmHWM", 0)
        res.node_rss_peak_kib = proc_status(node.pid).get("VmHWM", 0)
        if exporter:
            time.sleep(args.settle)
            res.rss_settled_kib = proc_status(exporter.pid).get("VmRSS", 0)
    finally:
        for p in (exporter, node, loadgen):
            if p is not None:
                procs.stop(p)
        for f in (exp_log, node_log):
            if f is not None:
                f.close()
    if loadgen is not None:
        # Wait for the RST teardown to finish so the next size starts from a quiet host.
        deadline = time.monotonic() + 60
        while ss_established() > 1000 and time.monotonic() < deadline:
            time.sleep(0.5)
    return res


def check_counts(res: SizeResult, ss_before: int, ss_after: int, args) -> None:
    lo, hi = min(ss_before, ss_after), max(ss_before, ss_after)
    slack = max(args.tolerance_abs, int(hi * args.tolerance))

    def within(x: float) -> bool:
        return lo - slack <= x <= hi + slack

    if args.exporter_bin and "a" in res.first and not any("(a)" in f for f in res.failures):
        if not within(res.series_established):
            res.failures.append(
                f"{args.series_metric}: {res.series_established} ESTABLISHED series, "
                f"ss saw {lo}..{hi} (tolerance {slack})")
        if res.series_duplicates:
            res.failures.append(f"{args.series_metric}: {res.series_duplicates} duplicate series")
    if args.exporter_bin and "b" in res.first and not any("(b)" in f for f in res.failures):
        if res.states_established is None:
            res.failures.append(f"{args.states_metric}{{state=established}} missing in states scrape")
        elif not within(res.states_established):
            res.failures.append(f"{args.states_metric} established = {res.states_established:.0f}, "
                                f"ss saw {lo}..{hi}")
    if args.exporter_bin and "f" in res.first and not any("(f)" in f for f in res.failures):
        # Every ESTABLISHED socket is a peer (inbound or outbound), counted once.
        if res.peers_established is None:
            res.failures.append("network_connection_peers{state=ESTABLISHED} missing in peers scrape")
        elif not within(res.peers_established):
            res.failures.append(f"network_connection_peers established = {res.peers_established:.0f}, "
                                f"ss saw {lo}..{hi}")
        if res.peers_has_info:
            res.failures.append(f"the collect[]=peers scrape has {args.series_metric} series")
    if res.node_established is not None and not within(res.node_established):
        # node_exporter is the reference, not the subject: report, do not fail.
        log(f"note: node_exporter says {res.node_established:.0f} established, ss {lo}..{hi}")


# --------------------------------------------------------------------------- report

def fmt_ms(xs: list[float]) -> str:
    if not xs:
        return "n/a"
    ms = [x * 1000 for x in xs]
    return f"{num(statistics.median(ms))} ({num(min(ms))}–{num(max(ms))})"


def num(x: float) -> str:
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def ratio(res: SizeResult, a: str, b: str) -> str:
    """Wall-time ratio of the medians."""
    if not res.times[a] or not res.times[b]:
        return "n/a"
    return f"{statistics.median(res.times[a]) / statistics.median(res.times[b]):.2f}"


def cpu_ratio(res: SizeResult, a: str, b: str) -> str:
    """CPU-time ratio of the means (per-operation CPU comes in 10 ms ticks for the exporters)."""
    if not res.cpu_samples[a] or not res.cpu_samples[b] or res.cpu[b] <= 0:
        return "n/a"
    return f"{res.cpu[a] / res.cpu[b]:.2f}"


def fmt_cpu(res: SizeResult, k: str) -> str:
    """Mean CPU ms per operation (min–max of the rounds)."""
    xs = [x * 1000 for x in res.cpu_samples[k]]
    if not xs:
        return "n/a"
    return f"{num(statistics.mean(xs))} ({num(min(xs))}–{num(max(xs))})"


def mib(kib: int) -> str:
    return f"{kib / 1024:.1f}" if kib else "n/a"


def print_size(res: SizeResult, args) -> None:
    print()
    print(f"== N = {res.n} connections: {res.ss_established} ESTABLISHED sockets (ss; "
          f"{res.background} before the load, {res.ss_established_end} after the rounds), "
          f"{args.rounds} rounds, encoding {args.encoding}, source {args.source or 'default'}")
    print(f"  {'measure':<28} {'wall ms median (min–max)':>28} {'CPU ms/op mean (min–max)':>28} "
          f"{'first ms':>9}")
    for k, label in MEASURES:
        first = f"{res.first[k] * 1000:.1f}" if k in res.first else ""
        print(f"  ({k}) {label:<24} {fmt_ms(res.times[k]):>28} {fmt_cpu(res, k):>28} {first:>9}")
    print(f"  ratios: (a)/(c) wall {ratio(res, 'a', 'c')}, CPU {cpu_ratio(res, 'a', 'c')}; "
          f"(b)/(e) wall {ratio(res, 'b', 'e')}, CPU {cpu_ratio(res, 'b', 'e')}; "
          f"(f)/(b) wall {ratio(res, 'f', 'b')}, CPU {cpu_ratio(res, 'f', 'b')}")
    if args.exporter_bin:
        print(f"  conn-exporter RSS MiB: idle {mib(res.rss_idle_kib)}, peak (VmHWM) "
              f"{mib(res.rss_peak_kib)}, settled (VmRSS {args.settle:.0f} s after) "
              f"{mib(res.rss_settled_kib)}")
        print(f"  conn-exporter body: {res.body_bytes} bytes decoded, {res.wire_bytes.get('a', 0)} "
              f"on the wire; {res.series_total} series, {res.series_established} ESTABLISHED, "
              f"{res.series_duplicates} duplicates; states says "
              f"{res.states_established if res.states_established is not None else 'n/a'} established, "
              f"peers says {res.peers_established if res.peers_established is not None else 'n/a'}")
    print(f"  node_exporter: peak RSS {mib(res.node_rss_peak_kib)} MiB, says "
          f"{res.node_established if res.node_established is not None else 'n/a'} established")
    for f in res.failures:
        print(f"  FAILURE: {f}")


def markdown(results: list[SizeResult], args) -> str:
    lines = [
        f"Each cell: wall time in ms, median (min–max) of {args.rounds} rounds, then CPU time "
        f"(user + system) in ms per operation, mean of the rounds; encoding `{args.encoding}`, "
        f"source `{args.source or 'default'}`. Ratios: wall of the medians, CPU of the means.",
        "",
        "| Connections | ESTABLISHED sockets | (a) full scrape | (b) states scrape | (c) `ss -tanH` "
        "| (d) `cat /proc/net/tcp*` | (e) node_exporter | (f) peers scrape | (a)/(c) wall "
        "| (a)/(c) CPU | (b)/(e) wall | (b)/(e) CPU | (f)/(b) wall | (f)/(b) CPU |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def cell(r: SizeResult, k: str) -> str:
        if not r.times[k]:
            return "n/a"
        return f"{fmt_ms(r.times[k])}<br>CPU {num(r.cpu[k] * 1000)}"

    for r in results:
        lines.append(
            f"| {r.n:,} | {r.ss_established:,} | " + " | ".join(cell(r, k) for k, _ in MEASURES)
            + f" | {ratio(r, 'a', 'c')} | {cpu_ratio(r, 'a', 'c')} | {ratio(r, 'b', 'e')} "
            f"| {cpu_ratio(r, 'b', 'e')} | {ratio(r, 'f', 'b')} | {cpu_ratio(r, 'f', 'b')} |")
    lines += [
        "",
        "| Connections | RSS idle MiB | RSS peak (VmHWM) MiB | RSS settled MiB "
        "| body (a) bytes | series (a) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.n:,} | {mib(r.rss_idle_kib)} | {mib(r.rss_peak_kib)} | {mib(r.rss_settled_kib)} "
            f"| {r.body_bytes:,} | {r.series_total:,} |")
    return "\n".join(lines) + "\n"


def host_line() -> str:
    kernel = os.uname().release
    cpus = os.cpu_count()
    with open("/proc/meminfo") as f:
        mem = int(f.readline().split()[1]) // (1024 * 1024)
    load = loadavg()
    return (f"host: Linux {kernel}, {cpus} CPUs, {mem} GiB, Python {sys.version.split()[0]}, "
            f"load average {load}")


# --------------------------------------------------------------------------- main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000,250000",
                    help="comma-separated connection counts (default 10000,100000,250000)")
    ap.add_argument("--rounds", type=int, default=11, help="timed rounds per size (default 11)")
    ap.add_argument("--no-empty", action="store_true", help="skip the empty-host run (N=0)")
    ap.add_argument("--smoke", action="store_true",
                    help="N=2000, 3 rounds, settle 2 s; exit 1 on any failure")
    ap.add_argument("--exporter", default=os.environ.get("CONN_EXPORTER_BIN",
                                                         os.path.join(REPO, "target/release/conn-exporter")),
                    help="conn-exporter binary (env CONN_EXPORTER_BIN; default target/release/conn-exporter)")
    ap.add_argument("--no-exporter", action="store_true",
                    help="measure only ss, /proc and node_exporter (test the harness)")
    ap.add_argument("--exporter-args", default="", help="extra conn-exporter flags (shell-quoted)")
    ap.add_argument("--source", choices=["auto", "netlink", "procfs"],
                    help="pass --collector.connections.source (default: not passed, the "
                         "exporter's own default)")
    ap.add_argument("--node-exporter", default=shutil.which("prometheus-node-exporter")
                    or "/usr/bin/prometheus-node-exporter")
    ap.add_argument("--encoding", default="gzip", choices=["gzip", "identity"],
                    help="gzip: Prometheus's Accept/Accept-Encoding (default); identity: text/plain, no gzip")
    ap.add_argument("--settle", type=float, default=5.0,
                    help="seconds after the last scrape before reading settled RSS (default 5)")
    ap.add_argument("--scrape-timeout", type=float, default=300.0)
    ap.add_argument("--port-base", type=int, default=19100, help="first port tried for the exporters")
    ap.add_argument("--series-metric", default="network_connections_info")
    ap.add_argument("--states-metric", default="network_connection_states")
    ap.add_argument("--tolerance", type=float, default=0.01,
                    help="relative tolerance of series counts vs ss (default 0.01)")
    ap.add_argument("--tolerance-abs", type=int, default=10,
                    help="absolute tolerance of series counts vs ss (default 10)")
    ap.add_argument("--set-sysctls", action="store_true", help="let loadgen raise sysctls")
    ap.add_argument("--max-background", type=int, default=2000,
                    help="most ESTABLISHED sockets allowed before the load starts (default 2000)")
    ap.add_argument("--quiet-wait", type=float, default=120.0,
                    help="seconds to wait for a busy host to drop below --max-background")
    ap.add_argument("--allow-busy", action="store_true",
                    help="measure even if the host has other connections")
    ap.add_argument("--lock-file", default="/tmp/conn-exporter-bench.lock",
                    help="runs on one host are serialised with flock on this file")
    ap.add_argument("--json", help="write all raw samples and results here")
    ap.add_argument("--markdown", help="write the Markdown tables here")
    args = ap.parse_args()

    if args.smoke:
        args.sizes = "2000"
        args.rounds = 3
        args.settle = min(args.settle, 2.0)
    sizes = [int(x) for x in args.sizes.replace("_", "").split(",") if x.strip()]
    if not args.no_empty:
        sizes = [0] + [s for s in sizes if s != 0]
    if args.rounds < 1:
        ap.error("--rounds must be >= 1")
    args.exporter_bin = None
    if not args.no_exporter:
        if not (os.path.isfile(args.exporter) and os.access(args.exporter, os.X_OK)):
            log(f"conn-exporter binary not found: {args.exporter} "
                "(build it, set --exporter / CONN_EXPORTER_BIN, or use --no-exporter)")
            return 2
        args.exporter_bin = os.path.abspath(args.exporter)
    for tool in (args.node_exporter, shutil.which("ss"), shutil.which("cat")):
        if not tool or not os.path.exists(tool):
            log(f"missing tool: {tool}")
            return 2

    take_lock(args.lock_file, "run")

    procs = Processes("run")

    def on_term(signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    results: list[SizeResult] = []
    errors: list[str] = []
    t_start = time.perf_counter()
    host_line_start = host_line()
    print(host_line_start)
    try:
        with tempfile.TemporaryDirectory(prefix="conn-exporter-bench-") as tmp:
            if args.exporter_bin:
                # Run a private copy: a `cargo build` during the run must not swap the
                # binary between sizes.
                copy = os.path.join(tmp, "conn-exporter")
                shutil.copy2(args.exporter_bin, copy)
                with open(copy, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()[:16]
                version = subprocess.run([copy, "--version"], capture_output=True,
                                         text=True).stdout.strip()
                print(f"conn-exporter: {args.exporter_bin} ({version or 'no --version'}, "
                      f"sha256 {digest}...)")
                args.exporter_bin = copy
            for n in sizes:
                try:
                    res = run_size(n, args, procs, tmp)
                except RuntimeError as e:
                    errors.append(f"N={n}: {e}")
                    log(f"N={n}: {e}")
                    continue
                results.append(res)
                print_size(res, args)
                sys.stdout.flush()
    except KeyboardInterrupt:
        log("interrupted: stopping children")
        procs.stop_all()
        return 130
    finally:
        procs.stop_all()

    md = (f"{host_line_start}; load average at the end {loadavg()}.\n\n"
          + markdown(results, args))
    print()
    print(md)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(md)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"host": host_line(), "args": {k: v for k, v in vars(args).items()},
                       "results": [r.__dict__ for r in results], "errors": errors}, f, indent=1)
    failures = errors + [f"N={r.n}: {f}" for r in results for f in r.failures]
    log(f"done in {time.perf_counter() - t_start:.0f} s, {len(failures)} failure(s); "
        f"load average at the end {loadavg()}")
    for f in failures:
        log("FAILURE: " + f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
