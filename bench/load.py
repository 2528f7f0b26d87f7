#!/usr/bin/env python3
"""Load test of conn-exporter: many concurrent scrapes, then idle clients, on a loaded host.

  0. takes the host-wide benchmark lock (/tmp/conn-exporter-bench.lock, shared with
     bench/run.py), waits for a quiet host (not in --quick), starts bench/loadgen.py with
     N loopback connections (2*N ESTABLISHED sockets) and waits for its READY line;
  1. starts a private copy of conn-exporter with --collector.connections.max-series=0 and
     --web.max-requests M, reads its idle RSS, makes one untimed scrape to check it;
  2. phase 1: S scraper threads, each on its own keep-alive connection, loop
     GET /metrics with Prometheus's Accept and Accept-Encoding: gzip for D seconds. Every
     response must be 200, gzip, complete, end with "# EOF\\n" and hold at least 2*N
     network_connections_info series. The exporter's VmRSS, threads and descriptors are
     sampled every second (at 1 s, 2 s, ... after the phase starts; every 0.25 s in
     --quick);
  3. phase 2: opens I idle clients (TCP connect and nothing more; a share of them send
     half a request head) and, while they are open, runs S2 scrapers for D2 seconds, which
     must all succeed. An idle client closed by the exporter is replaced while the
     scrapers run, so I of them are open throughout; then each must be closed by the
     exporter about --idle-timeout (10 s, the exporter's header timeout) after it
     connected. The idle clients live in a child process, so that the scraper threads'
     contention for the GIL does not delay noticing a close;
  4. prints scrapes, failures, latency percentiles and scrapes/s per phase, RSS (idle,
     mean of the first and last 10 s of phase 1 -- a third of the phase if it is shorter
     than 30 s --, their ratio, peak), the exporter's CPU seconds, and the host's TcpExt
     ListenOverflows/ListenDrops/TCPSynRetrans counters (accept-queue overflows).

Latency is time.perf_counter() from sending the request (from connect() when the
scraper had to open a new connection) to the last byte of the body; decompression and
checks come after and are not timed. The client runs on the same CPUs as the exporter:
its own CPU time is printed too.

Exit status: 0 if every scrape succeeded, RSS was flat (mean of the last window / mean of
the first <= --rss-flat, 1.2) and every idle client was closed on time; 1 otherwise; 2 if
the run could not be set up. A 503 ("too many concurrent scrapes", --web.max-requests)
is a failed scrape: Prometheus records it as a failed scrape (up == 0).

--quick (2000 connections, 10 scrapers for 10 s, 200 idle clients, 10 scrapers for 12 s
in phase 2) takes about 35 s; CI can run it.

Python 3.11 standard library only.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import multiprocessing
import os
import resource
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

from benchlib import (PROMETHEUS_ACCEPT, Processes, free_port, loadavg, proc_cpu_seconds,
                      proc_status, ss_established, start_loadgen, wait_port)
from benchlib import take_lock
from benchlib import wait_quiet as benchlib_wait_quiet

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

SERIES_MARK = b"\nnetwork_connections_info{"
HALF_HEAD = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/pl"


def log(msg: str) -> None:
    print(f"load: {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- processes

def proc_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def self_cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


NETSTAT_KEYS = ("ListenOverflows", "ListenDrops", "TCPSynRetrans")


def tcp_ext_counters() -> dict[str, int]:
    """Host-wide TcpExt counters of /proc/net/netstat: accept-queue overflows and drops,
    SYN retransmissions (a client's SYN dropped by a full queue is sent again 1 s later)."""
    try:
        with open("/proc/net/netstat") as f:
            lines = f.read().splitlines()
    except OSError:
        return {}
    for head, vals in zip(lines[::2], lines[1::2]):
        if head.startswith("TcpExt:"):
            d = dict(zip(head.split()[1:], (int(v) for v in vals.split()[1:])))
            return {k: d.get(k, 0) for k in NETSTAT_KEYS}
    return {}


def counters_delta(a: dict[str, int], b: dict[str, int]) -> str:
    return ", ".join(f"{k} +{b.get(k, 0) - a.get(k, 0)}" for k in NETSTAT_KEYS)


def listen_backlog(port: int) -> str:
    """The accept-queue length a listener asked for (ss's Send-Q for LISTEN sockets)."""
    out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True,
                         text=True).stdout.split()
    return out[2] if len(out) > 2 else "?"


# --------------------------------------------------------------------------- HTTP client

class HttpError(Exception):
    pass


class KeepAliveClient:
    """One HTTP/1.1 connection, reused for every request as Prometheus does."""

    def __init__(self, port: int, timeout: float) -> None:
        self.port = port
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.rfile = None
        self.connects = 0
        self.stale_retries = 0

    def close(self) -> None:
        if self.rfile is not None:
            self.rfile.close()
        if self.sock is not None:
            self.sock.close()
        self.sock = self.rfile = None

    def _connect(self) -> None:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = s
        self.rfile = s.makefile("rb", buffering=256 * 1024)
        self.connects += 1

    def request(self, raw: bytes) -> tuple[int, dict[str, str], bytes, int]:
        """(status, headers, body as sent, bytes on the wire). Raises on any error."""
        reused = self.sock is not None
        if not reused:
            self._connect()
        try:
            self.sock.sendall(raw)
            line = self.rfile.readline(8192)
        except OSError:
            if not reused:
                raise
            line = b""
        if not line and reused:
            # The server closed an idle keep-alive connection: retry once on a new one,
            # as HTTP clients do. Counted, since a healthy run should have none.
            self.stale_retries += 1
            self.close()
            self._connect()
            self.sock.sendall(raw)
            line = self.rfile.readline(8192)
        if not line:
            raise HttpError("connection closed before the status line")
        wire = len(line)
        parts = line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise HttpError(f"bad status line {line[:80]!r}")
        status = int(parts[1])
        headers: dict[str, str] = {}
        while True:
            h = self.rfile.readline(8192)
            wire += len(h)
            if not h:
                raise HttpError("connection closed in the response head")
            if h in (b"\r\n", b"\n"):
                break
            k, _, v = h.decode("latin-1").partition(":")
            headers[k.strip().lower()] = v.strip()
        body, n = self._read_body(headers)
        wire += n
        if headers.get("connection", "").lower() == "close" or parts[0] == b"HTTP/1.0":
            self.close()
        return status, headers, body, wire

    def _read_body(self, headers: dict[str, str]) -> tuple[bytes, int]:
        f = self.rfile
        if "chunked" in headers.get("transfer-encoding", "").lower():
            out = []
            wire = 0
            while True:
                line = f.readline(1024)
                wire += len(line)
                if not line:
                    raise HttpError("connection closed inside a chunked body (no final chunk)")
                size = int(line.split(b";")[0], 16)
                if size == 0:
                    while True:  # trailers, then the blank line
                        t = f.readline(8192)
                        wire += len(t)
                        if not t:
                            raise HttpError("connection closed after the final chunk")
                        if t in (b"\r\n", b"\n"):
                            return b"".join(out), wire
                data = f.read(size)
                crlf = f.read(2)
                wire += len(data) + len(crlf)
                if len(data) != size or crlf != b"\r\n":
                    raise HttpError(f"chunk cut short: {len(data)}/{size} bytes")
                out.append(data)
        if "content-length" in headers:
            size = int(headers["content-length"])
            data = f.read(size)
            if len(data) != size:
                raise HttpError(f"short body: {len(data)}/{size} bytes")
            return data, size
        data = f.read()  # delimited by the end of the connection
        self.close()
        return data, len(data)


def build_request(port: int, path: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}",
             "User-Agent: conn-exporter-load/1", f"Accept: {PROMETHEUS_ACCEPT}",
             "Accept-Encoding: gzip", "X-Prometheus-Scrape-Timeout-Seconds: 10"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def check_response(status: int, headers: dict[str, str], body: bytes,
                   min_series: int) -> tuple[str, int, int]:
    """('' if good, else why; decoded size; series count)."""
    if status != 200:
        return f"HTTP {status}", 0, 0
    if headers.get("content-encoding", "").lower() != "gzip":
        return "response not gzip-encoded", len(body), 0
    if not headers.get("content-type", "").startswith("application/openmetrics-text"):
        return f"content type {headers.get('content-type')!r}, not OpenMetrics", len(body), 0
    try:
        data = gzip.decompress(body)
    except (OSError, EOFError, ValueError) as e:
        return f"bad gzip: {e}", 0, 0
    if not data.endswith(b"# EOF\n"):
        return "body does not end with '# EOF\\n'", len(data), 0
    series = data.count(SERIES_MARK)
    if series == 0:
        return "no network_connections_info in the body", len(data), 0
    if series < min_series:
        return f"{series} network_connections_info series, expected >= {min_series}", len(data), series
    return "", len(data), series


# --------------------------------------------------------------------------- scrapers

@dataclass
class Scrape:
    t: float          # start, seconds since the phase began
    seconds: float    # latency
    status: int       # 0 on an exception
    error: str        # '' if good
    wire: int = 0
    decoded: int = 0
    series: int = 0


@dataclass
class PhaseResult:
    name: str
    scrapers: int
    planned: float
    elapsed: float = 0.0
    scrapes: list[Scrape] = field(default_factory=list)
    connects: int = 0
    stale_retries: int = 0
    cpu_exporter: float = 0.0
    cpu_client: float = 0.0

    def ok(self) -> list[Scrape]:
        return [s for s in self.scrapes if not s.error]

    def failed(self) -> list[Scrape]:
        return [s for s in self.scrapes if s.error]


def run_scrapers(name: str, port: int, count: int, duration: float, min_series: int,
                 timeout: float, exporter_pid: int) -> PhaseResult:
    res = PhaseResult(name, count, duration)
    raw = build_request(port, "/metrics")
    lock = threading.Lock()
    start_gate = threading.Barrier(count + 1)
    clients = [KeepAliveClient(port, timeout) for _ in range(count)]
    t_base = 0.0
    deadline = 0.0

    def worker(client: KeepAliveClient) -> None:
        mine: list[Scrape] = []
        start_gate.wait()
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            try:
                status, headers, body, wire = client.request(raw)
                t1 = time.perf_counter()
            except Exception as e:  # any error is a failed scrape, never a lost thread
                t1 = time.perf_counter()
                client.close()
                mine.append(Scrape(t0 - t_base, t1 - t0, 0, f"{type(e).__name__}: {e}"))
                time.sleep(0.01)
                continue
            err, decoded, series = check_response(status, headers, body, min_series)
            mine.append(Scrape(t0 - t_base, t1 - t0, status, err, wire, decoded, series))
            if status != 200:
                # Do not turn 503s into a busy loop that no Prometheus would make.
                time.sleep(0.01)
        client.close()
        with lock:
            res.scrapes.extend(mine)

    threads = [threading.Thread(target=worker, args=(c,), daemon=True) for c in clients]
    for th in threads:
        th.start()
    cpu_e0, cpu_c0 = proc_cpu_seconds(exporter_pid), self_cpu_seconds()
    t_base = time.perf_counter()
    deadline = t_base + duration
    start_gate.wait()
    for th in threads:
        th.join()
    res.elapsed = time.perf_counter() - t_base
    res.cpu_exporter = proc_cpu_seconds(exporter_pid) - cpu_e0
    res.cpu_client = self_cpu_seconds() - cpu_c0
    res.connects = sum(c.connects for c in clients)
    res.stale_retries = sum(c.stale_retries for c in clients)
    res.scrapes.sort(key=lambda s: s.t)
    return res


class Sampler(threading.Thread):
    """Samples the exporter's VmRSS, threads and descriptors every `interval` seconds."""

    def __init__(self, pid: int, interval: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, int, int, int]] = []  # (t, rss KiB, threads, fds)
        self.t_base = time.perf_counter()
        self.stopping = threading.Event()

    def run(self) -> None:
        # The first sample is one interval in: the idle RSS is read apart.
        next_t = self.t_base + self.interval
        while not self.stopping.wait(max(0.0, next_t - time.perf_counter())):
            st = proc_status(self.pid)
            if st:
                self.samples.append((time.perf_counter() - self.t_base, st.get("VmRSS", 0),
                                     st.get("Threads", 0), proc_fds(self.pid)))
            next_t += self.interval

    def stop(self) -> None:
        self.stopping.set()
        self.join()

    def between(self, t0: float, t1: float) -> list[tuple[float, int, int, int]]:
        """Samples in (t0, t1]."""
        return [s for s in self.samples if t0 < s[0] <= t1]


# --------------------------------------------------------------------------- idle clients

@dataclass
class IdleResult:
    opened: int = 0
    half_head: int = 0
    open_seconds: float = 0.0            # time to open the first batch
    connect_errors: list[str] = field(default_factory=list)
    lifetimes: list[float] = field(default_factory=list)   # connect -> close seen
    answered: int = 0                    # closed with some bytes sent first
    resets: int = 0                      # closed with RST rather than FIN
    never_closed: int = 0
    min_open: int = 0                    # fewest open while the scrapers ran
    open_at_end: int = 0                 # open when the scrapers stopped
    samples_first_bytes: list[bytes] = field(default_factory=list)


class IdleClients:
    """Holds idle connections, notices when the exporter closes them, replaces them.

    Runs in a process of its own (see idle_process), so that the scraper threads'
    contention for the GIL does not delay noticing a close.
    """

    def __init__(self, port: int, count: int, half_share: float) -> None:
        self.port = port
        self.count = count
        self.half_share = half_share
        self.sel = selectors.DefaultSelector()
        self.res = IdleResult()
        self.last_open = 0.0
        self.seq = 0

    def _open_one(self) -> None:
        # Spread evenly: every 1/share-th client sends half a head.
        half = int((self.seq + 1) * self.half_share) > int(self.seq * self.half_share)
        self.seq += 1
        try:
            s = socket.create_connection(("127.0.0.1", self.port), timeout=10.0)
            t = time.perf_counter()
            if half:
                s.sendall(HALF_HEAD)
        except OSError as e:
            self.res.connect_errors.append(f"{type(e).__name__}: {e}")
            return
        s.setblocking(False)
        self.sel.register(s, selectors.EVENT_READ, {"t": t, "got": b""})
        self.res.opened += 1
        self.res.half_head += half
        self.last_open = t

    def open_all(self) -> None:
        t0 = time.perf_counter()
        for _ in range(self.count):
            self._open_one()
        self.res.open_seconds = time.perf_counter() - t0
        self.res.min_open = self.open_now()

    def open_now(self) -> int:
        return len(self.sel.get_map())

    def poll(self, timeout: float, refill: bool) -> None:
        """Notices closes for up to `timeout` s; with refill, replaces each closed client."""
        closed = 0
        for key, _ in self.sel.select(timeout=timeout):
            s, data = key.fileobj, key.data
            try:
                chunk = s.recv(65536)
            except BlockingIOError:
                continue
            except ConnectionResetError:
                chunk = None
            now = time.perf_counter()
            if chunk:
                if len(data["got"]) < 256:
                    data["got"] += chunk[:256]
                continue
            self.sel.unregister(s)
            s.close()
            closed += 1
            self.res.lifetimes.append(now - data["t"])
            if chunk is None:
                self.res.resets += 1
            if data["got"]:
                self.res.answered += 1
                if len(self.res.samples_first_bytes) < 3:
                    self.res.samples_first_bytes.append(data["got"][:120])
        if refill:
            # Replacements after the whole batch: a close is stamped when it is seen.
            for _ in range(closed):
                self._open_one()
            self.res.min_open = min(self.res.min_open, self.open_now())

    def close_rest(self) -> None:
        for key in list(self.sel.get_map().values()):
            self.res.never_closed += 1
            self.sel.unregister(key.fileobj)
            key.fileobj.close()
        self.sel.close()


def idle_process(conn, port: int, count: int, half_share: float, idle_timeout: float,
                 grace: float) -> None:
    """Child process: opens the idle clients, reports, keeps them (refilled) until told to
    finish, then waits for the exporter to close the rest and sends the IdleResult."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    idle = IdleClients(port, count, half_share)
    idle.open_all()
    conn.send("opened")
    while not conn.poll():
        idle.poll(0.05, refill=True)
    conn.recv()
    idle.res.open_at_end = idle.open_now()
    wait_until = idle.last_open + idle_timeout + grace
    while idle.open_now() and time.perf_counter() < wait_until:
        idle.poll(0.05, refill=False)
    idle.close_rest()
    conn.send(idle.res)
    conn.close()


# --------------------------------------------------------------------------- report

def pct(xs: list[float], p: float) -> float:
    """Nearest-rank percentile of a sorted list."""
    if not xs:
        return float("nan")
    return xs[max(0, min(len(xs) - 1, math.ceil(p / 100 * len(xs)) - 1))]


def latency_line(xs: list[float]) -> str:
    xs = sorted(x * 1000 for x in xs)
    if not xs:
        return "n/a"
    return (f"p50 {pct(xs, 50):.0f} ms, p90 {pct(xs, 90):.0f} ms, p99 {pct(xs, 99):.0f} ms, "
            f"max {xs[-1]:.0f} ms")


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f}"


def print_phase(r: PhaseResult) -> None:
    ok, bad = r.ok(), r.failed()
    rate = len(ok) / r.elapsed if r.elapsed else 0.0
    print(f"== {r.name}: {r.scrapers} scrapers, {r.planned:.0f} s planned, {r.elapsed:.1f} s run")
    print(f"  scrapes {len(r.scrapes)}, good {len(ok)}, failures {len(bad)}, "
          f"{rate:.2f} good scrapes/s; connections opened {r.connects}, "
          f"stale keep-alive retries {r.stale_retries}")
    print(f"  latency (good): {latency_line([s.seconds for s in ok])}")
    if bad:
        print(f"  latency (failed): {latency_line([s.seconds for s in bad])}")
        kinds: dict[str, int] = {}
        for s in bad:
            kinds[s.error] = kinds.get(s.error, 0) + 1
        for k, n in sorted(kinds.items(), key=lambda kv: -kv[1])[:8]:
            print(f"  FAILED x{n}: {k}")
    slow = sum(1 for s in ok if s.seconds > 10.0)
    if slow:
        print(f"  note: {slow} good scrapes took over 10 s (Prometheus's default scrape_timeout)")
    if ok:
        print(f"  body: decoded {statistics.median(s.decoded for s in ok):,.0f} bytes, "
              f"{statistics.median(s.wire for s in ok):,.0f} on the wire (median); series "
              f"{min(s.series for s in ok):,}–{max(s.series for s in ok):,}")
    per = r.cpu_exporter / len(r.scrapes) * 1000 if r.scrapes else float("nan")
    print(f"  CPU: exporter {r.cpu_exporter:.1f} s ({per:.1f} ms/scrape, "
          f"{r.cpu_exporter / r.elapsed * 100 if r.elapsed else 0:.0f} % of one CPU), "
          f"this client {r.cpu_client:.1f} s")


def windows_table(r: PhaseResult, sampler: Sampler, t_phase: float, width: float) -> list[str]:
    """Per-window scrapes, latency and RSS: shows trends and stalls."""
    out = [f"  {'window':>11} {'scrapes':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
           f"{'RSS MiB':>8} {'threads':>8}"]
    t = 0.0
    while t < r.elapsed - width / 2:
        in_w = sorted(s.seconds * 1000 for s in r.scrapes if t <= s.t < t + width)
        smp = sampler.between(t_phase + t, t_phase + t + width)
        rss = statistics.fmean(s[1] for s in smp) if smp else 0
        thr = max((s[2] for s in smp), default=0)
        out.append(f"  {t:5.0f}–{t + width:<5.0f} {len(in_w):8d} {pct(in_w, 50):8.0f} "
                   f"{pct(in_w, 99):8.0f} {(in_w[-1] if in_w else float('nan')):8.0f} "
                   f"{mib(rss):>8} {thr:8d}")
        t += width
    return out


# --------------------------------------------------------------------------- main

def wait_quiet(args) -> int:
    return benchlib_wait_quiet(args.max_background, args.quiet_wait, args.quick or args.allow_busy, "load")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", type=int, default=10000,
                    help="loadgen connections, 2 sockets each (default 10000)")
    ap.add_argument("--scrapers", type=int, default=50, help="phase 1 scrapers (default 50)")
    ap.add_argument("--duration", type=float, default=60.0, help="phase 1 seconds (default 60)")
    ap.add_argument("--idle", type=int, default=1000, help="phase 2 idle clients (default 1000)")
    ap.add_argument("--half-head-share", type=float, default=0.25,
                    help="share of idle clients that send half a request head (default 0.25)")
    ap.add_argument("--phase2-scrapers", type=int, default=10, help="phase 2 scrapers (default 10)")
    ap.add_argument("--phase2-duration", type=float, default=20.0,
                    help="phase 2 seconds of scraping (default 20)")
    ap.add_argument("--idle-timeout", type=float, default=10.0,
                    help="the exporter's header timeout, to check idle clients against (10)")
    ap.add_argument("--max-requests", type=int, default=None,
                    help="--web.max-requests for the exporter; 0 = no limit (default: "
                         "max(64, scrapers), so every scraper is served; 40 is the exporter's default)")
    ap.add_argument("--quick", action="store_true",
                    help="2000 connections, 10 scrapers for 10 s, 200 idle, phase 2 for 12 s, "
                         "RSS every 0.25 s (CI); explicit options still win")
    ap.add_argument("--rss-flat", type=float, default=1.2,
                    help="largest allowed ratio of mean RSS, last window / first (default 1.2)")
    ap.add_argument("--rss-interval", type=float, default=1.0,
                    help="seconds between RSS samples (default 1; --quick: 0.25, so that its "
                         "short windows still average a dozen samples)")
    ap.add_argument("--rss-window", type=float, default=10.0,
                    help="seconds of the first and last RSS windows (default 10; at most "
                         "a third of the phase)")
    ap.add_argument("--exporter", default=os.environ.get(
        "CONN_EXPORTER_BIN", os.path.join(REPO, "target/release/conn-exporter")),
                    help="binary (env CONN_EXPORTER_BIN; default target/release/conn-exporter)")
    ap.add_argument("--exporter-args", default="", help="extra exporter flags (space-separated)")
    ap.add_argument("--scrape-timeout", type=float, default=60.0,
                    help="client socket timeout per scrape (default 60)")
    ap.add_argument("--port-base", type=int, default=19300)
    ap.add_argument("--set-sysctls", action="store_true", help="let loadgen raise sysctls")
    ap.add_argument("--max-background", type=int, default=2000,
                    help="most ESTABLISHED sockets allowed before the load starts (default 2000)")
    ap.add_argument("--quiet-wait", type=float, default=120.0)
    ap.add_argument("--allow-busy", action="store_true")
    ap.add_argument("--lock-file", default="/tmp/conn-exporter-bench.lock")
    ap.add_argument("--json", help="write every scrape and sample here")
    args = ap.parse_args()

    if args.quick:  # the quick sizes, unless given on the command line
        quick = {"connections": 2000, "scrapers": 10, "duration": 10.0, "idle": 200,
                 "phase2_scrapers": 10, "phase2_duration": 12.0, "rss_interval": 0.25}
        for k, v in quick.items():
            if getattr(args, k) == ap.get_default(k):
                setattr(args, k, v)
    if args.max_requests is None:
        args.max_requests = max(64, args.scrapers, args.phase2_scrapers)
    if min(args.scrapers, args.phase2_scrapers) < 1 or args.duration <= 0:
        ap.error("need at least one scraper and a positive duration")
    exporter = os.path.abspath(args.exporter)
    if not (os.path.isfile(exporter) and os.access(exporter, os.X_OK)):
        log(f"conn-exporter binary not found: {exporter} (cargo build --release)")
        return 2

    take_lock(args.lock_file, "load")

    def on_term(signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    children = Processes("load")
    t_start = time.perf_counter()
    load_start = loadavg()
    failures: list[str] = []
    with open("/proc/meminfo") as f:
        mem_gib = int(f.readline().split()[1]) // (1024 * 1024)
    print(f"host: Linux {os.uname().release}, {os.cpu_count()} CPUs, {mem_gib} GiB, "
          f"Python {sys.version.split()[0]}, load average {load_start}")
    try:
        with tempfile.TemporaryDirectory(prefix="conn-exporter-load-") as tmp:
            copy = os.path.join(tmp, "conn-exporter")
            shutil.copy2(exporter, copy)
            version = subprocess.run([copy, "--version"], capture_output=True,
                                     text=True).stdout.strip()
            print(f"conn-exporter: {exporter} ({version or 'no --version'})")
            try:
                background = wait_quiet(args)
                loadgen = start_loadgen(args.connections, children, tmp, args.set_sysctls)
            except RuntimeError as e:
                log(str(e))
                return 2
            port = free_port(args.port_base)
            argv = [copy, f"--web.listen-address=127.0.0.1:{port}",
                    "--collector.connections.max-series=0",
                    f"--web.max-requests={args.max_requests}"] + args.exporter_args.split()
            elog = open(os.path.join(tmp, "exporter.log"), "wb")
            proc = children.start(argv, stdout=elog, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL)
            if not wait_port(port, proc, 30.0):
                elog.close()
                with open(os.path.join(tmp, "exporter.log"), "rb") as f:
                    log("exporter did not listen:\n" + f.read()[-2000:].decode(errors="replace"))
                return 2
            est = ss_established()
            print(f"load: {args.connections} connections up ({est} ESTABLISHED sockets, "
                  f"{background} before); exporter pid {proc.pid} on port {port} (listen "
                  f"backlog {listen_backlog(port)}): {' '.join(argv[1:])}")
            time.sleep(1.0)
            st0 = proc_status(proc.pid)
            rss_start = st0.get("VmRSS", 0)
            fds_start = proc_fds(proc.pid)
            cpu0 = proc_cpu_seconds(proc.pid)
            min_series = 2 * args.connections

            # One untimed scrape: shows the body and checks it before the load.
            c = KeepAliveClient(port, args.scrape_timeout)
            t0 = time.perf_counter()
            status, headers, body, wire = c.request(build_request(port, "/metrics"))
            first_s = time.perf_counter() - t0
            c.close()
            err, decoded, series = check_response(status, headers, body, min_series)
            print(f"first scrape: HTTP {status}, {first_s * 1000:.0f} ms, {wire:,} bytes on the "
                  f"wire, {decoded:,} decoded, {series:,} network_connections_info series"
                  + (f": FAILED {err}" if err else ""))
            if err:
                failures.append(f"first scrape: {err}")

            sampler = Sampler(proc.pid, args.rss_interval)
            sampler.start()
            net0 = tcp_ext_counters()

            # ---- phase 1
            t_p1 = time.perf_counter() - sampler.t_base
            p1 = run_scrapers("phase 1 (scrapers only)", port, args.scrapers, args.duration,
                              min_series, args.scrape_timeout, proc.pid)
            fds_p1 = proc_fds(proc.pid)
            net1 = tcp_ext_counters()
            w = min(args.rss_window, p1.elapsed / 3)
            p1_samples = sampler.between(t_p1, t_p1 + p1.elapsed)
            first_w = [s[1] for s in sampler.between(t_p1, t_p1 + w)] or \
                [s[1] for s in p1_samples[:1]]
            last_w = [s[1] for s in sampler.between(t_p1 + p1.elapsed - w, t_p1 + p1.elapsed)] \
                or [s[1] for s in p1_samples[-1:]]
            rss_first = statistics.fmean(first_w) if first_w else 0.0
            rss_last = statistics.fmean(last_w) if last_w else 0.0
            rss_ratio = rss_last / rss_first if rss_first else float("inf")
            rss_peak_p1 = max((s[1] for s in p1_samples), default=0)
            threads_peak_p1 = max((s[2] for s in p1_samples), default=0)

            # ---- phase 2
            ctx = multiprocessing.get_context("spawn")
            parent_end, child_end = ctx.Pipe()
            idle_proc = ctx.Process(target=idle_process, daemon=True,
                                    args=(child_end, port, args.idle, args.half_head_share,
                                          args.idle_timeout, 5.0))
            idle_proc.start()
            if not parent_end.poll(60.0):
                raise RuntimeError("the idle clients did not open within 60 s")
            parent_end.recv()
            est_idle = ss_established()
            fds_idle = proc_fds(proc.pid)
            t_p2 = time.perf_counter() - sampler.t_base
            p2 = run_scrapers("phase 2 (with idle clients)", port, args.phase2_scrapers,
                              args.phase2_duration, min_series, args.scrape_timeout, proc.pid)
            parent_end.send("finish")
            if not parent_end.poll(args.idle_timeout + 60.0):
                raise RuntimeError("the idle-client process did not report")
            idle_res: IdleResult = parent_end.recv()
            idle_proc.join(10.0)
            net2 = tcp_ext_counters()
            time.sleep(0.5)
            fds_end = proc_fds(proc.pid)
            sampler.stop()
            st_end = proc_status(proc.pid)
            cpu_total = proc_cpu_seconds(proc.pid) - cpu0
            p2_samples = sampler.between(t_p2, t_p2 + p2.elapsed)
            alive = proc.poll() is None
            children.stop(proc)
            elog.close()
            children.stop(loadgen)
            with open(os.path.join(tmp, "exporter.log"), "rb") as f:
                exporter_log = f.read().decode("utf-8", "replace")
            warnings = [ln for ln in exporter_log.splitlines()
                        if "level=warn" in ln or "level=error" in ln]
    except KeyboardInterrupt:
        log("interrupted: stopping children")
        children.stop_all()
        return 130
    except (RuntimeError, OSError, HttpError) as e:
        log(f"run aborted: {type(e).__name__}: {e}")
        children.stop_all()
        return 2
    finally:
        children.stop_all()

    # ---- report
    print()
    print_phase(p1)
    print(f"  per {10 if p1.elapsed >= 30 else 2:.0f} s window:")
    for line in windows_table(p1, sampler, t_p1, 10.0 if p1.elapsed >= 30 else 2.0):
        print(line)
    flat = rss_ratio <= args.rss_flat
    print(f"  RSS MiB: at start (idle) {mib(rss_start)}, mean of the first {w:.1f} s "
          f"{mib(rss_first)}, of the last {w:.1f} s {mib(rss_last)}, ratio {rss_ratio:.2f} "
          f"({'flat' if flat else 'NOT FLAT'}, limit {args.rss_flat}); peak sampled "
          f"{mib(rss_peak_p1)}; threads peak {threads_peak_p1}; descriptors {fds_start} at "
          f"start, {fds_p1} after")
    print(f"  host TCP counters: {counters_delta(net0, net1)}")
    print()
    print_phase(p2)
    r = idle_res
    lt = sorted(r.lifetimes)
    print(f"  idle clients: {r.opened} opened ({r.half_head} with half a request head; the "
          f"first {args.idle} in {r.open_seconds:.2f} s), {len(r.connect_errors)} connect errors; "
          f"ESTABLISHED sockets with them {est_idle}; exporter descriptors {fds_idle}")
    print(f"  open while scraping: at least {r.min_open}, {r.open_at_end} at the end")
    if lt:
        print(f"  closed by the exporter: {len(lt)}, after {lt[0]:.2f} s min, "
              f"{statistics.median(lt):.2f} s median, {lt[-1]:.2f} s max "
              f"(expected {args.idle_timeout:.0f} s); {r.resets} by RST, {r.answered} "
              f"answered before closing; never closed: {r.never_closed}")
    print(f"  host TCP counters: {counters_delta(net1, net2)}")
    for b in r.samples_first_bytes:
        print(f"    answer to an idle client: {b!r}")
    rss_peak_p2 = max((s[1] for s in p2_samples), default=0)
    print(f"  RSS MiB during phase 2: peak sampled {mib(rss_peak_p2)}; threads peak "
          f"{max((s[2] for s in p2_samples), default=0)}; descriptors peak "
          f"{max((s[3] for s in p2_samples), default=0)}, {fds_end} after the idle clients")
    print()
    all_scrapes = p1.scrapes + p2.scrapes
    print(f"== totals: {len(all_scrapes)} scrapes, {len(p1.failed()) + len(p2.failed())} "
          f"failures; exporter CPU {cpu_total:.1f} s over both phases; RSS peak (VmHWM) "
          f"{mib(st_end.get('VmHWM', 0))} MiB, at the end {mib(st_end.get('VmRSS', 0))} MiB; "
          f"load average {load_start} at the start, {loadavg()} at the end; "
          f"{time.perf_counter() - t_start:.0f} s in all")
    for ln in warnings[:10]:
        print(f"  exporter log: {ln}")

    if not alive:
        failures.append("the exporter exited during the run")
    for ph in (p1, p2):
        if ph.failed():
            failures.append(f"{ph.name}: {len(ph.failed())} of {len(ph.scrapes)} scrapes failed")
        if not ph.ok():
            failures.append(f"{ph.name}: no good scrape")
    if not flat:
        failures.append(f"RSS not flat: last/first = {rss_ratio:.2f} > {args.rss_flat}")
    if r.connect_errors:
        failures.append(f"{len(r.connect_errors)} idle clients could not connect: "
                        f"{r.connect_errors[0]}")
    if r.never_closed:
        failures.append(f"{r.never_closed} idle clients still open "
                        f"{args.idle_timeout + 5:.0f} s after they connected")
    early = [x for x in lt if x < args.idle_timeout - 0.5]
    late = [x for x in lt if x > args.idle_timeout + 5.0]
    if early:
        failures.append(f"{len(early)} idle clients closed before the timeout "
                        f"(first after {min(early):.2f} s)")
    if late:
        failures.append(f"{len(late)} idle clients closed late (up to {max(late):.1f} s)")

    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "load_start": load_start, "load_end": loadavg(),
                       "phases": [{"name": ph.name, "elapsed": ph.elapsed,
                                   "cpu_exporter": ph.cpu_exporter,
                                   "scrapes": [s.__dict__ for s in ph.scrapes]}
                                  for ph in (p1, p2)],
                       "samples": sampler.samples, "idle_lifetimes": lt,
                       "tcp_ext": [net0, net1, net2],
                       "failures": failures}, f)
    for msg in failures:
        log("FAILURE: " + msg)
    log(f"{'FAILED' if failures else 'passed'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
