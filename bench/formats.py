#!/usr/bin/env python3
"""Protobuf scrape against text scrape: exporter CPU, wall time and bytes (issue 20).

For each size N the runner starts bench/loadgen.py with N loopback connections (2*N
ESTABLISHED sockets), starts conn-exporter (--collector.connections.max-series=0,
--web.disable-exporter-metrics), makes one untimed scrape per measure (checked: the
protobuf body is a well-formed stream of delimited MetricFamily messages holding as many
network_connections_info series as the text body has lines), then R rounds of

    om-gzip   what Prometheus 2.42 asks by default: OpenMetrics, gzip
    pb-gzip   what it asks with --enable-feature=native-histograms: protobuf, gzip
    text      text 0.0.4, no compression
    pb        protobuf, no compression

rotating which measure starts each round. Per scrape: wall time (connect to last byte),
the exporter's user+system CPU from /proc/PID/stat before and after (10 ms ticks: the
median over rounds is what to read) and the bytes on the wire. Medians with the
interquartile range (or min-max below 8 rounds).

  --quick   N=2000, 3 rounds: exits non-zero if a check fails (scripts/test.sh runs it)
  default   N=100000, 15 rounds; --json writes the figures

Python 3.11 standard library only.
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import json
import os
import select
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from benchlib import (PROMETHEUS_ACCEPT, Processes, free_port, proc_cpu_seconds,  # noqa: E402
                      take_lock, wait_port)

# scrape/scrape.go, scrapeAcceptHeaderWithProtobuf, Prometheus 2.42.
NATIVE_ACCEPT = ("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;"
                 "encoding=delimited,application/openmetrics-text;version=1.0.0;q=0.8,"
                 "application/openmetrics-text;version=0.0.1;q=0.75,"
                 "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
PROTOBUF_TYPE = "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited"

MEASURES = {
    "om-gzip": {"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip"},
    "pb-gzip": {"Accept": NATIVE_ACCEPT, "Accept-Encoding": "gzip"},
    "text": {"Accept": "text/plain;version=0.0.4"},
    "pb": {"Accept": NATIVE_ACCEPT},
}


def log(msg: str) -> None:
    print(f"formats: {msg}", file=sys.stderr, flush=True)


def scrape(port: int, headers: dict[str, str], timeout: float):
    """(wall seconds, wire bytes, body as served, content-type, content-encoding)."""
    t0 = time.perf_counter()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    c.request("GET", "/metrics", headers=headers)
    r = c.getresponse()
    body = r.read()
    wall = time.perf_counter() - t0
    c.close()
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status}")
    return wall, len(body), body, r.getheader("Content-Type"), r.getheader("Content-Encoding")


def varint(buf: bytes, i: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return n, i


def protobuf_series(body: bytes) -> dict[str, int]:
    """Metrics per family name in a delimited MetricFamily stream (fields 1 and 4)."""
    out: dict[str, int] = {}
    i = 0
    while i < len(body):
        size, i = varint(body, i)
        end = i + size
        if end > len(body):
            raise ValueError("a message runs past the body")
        name, metrics = "", 0
        while i < end:
            key, i = varint(body, i)
            field, wire = key >> 3, key & 7
            if wire == 2:
                n, i = varint(body, i)
                if field == 1:
                    name = body[i:i + n].decode()
                elif field == 4:
                    metrics += 1
                i += n
            elif wire == 0:
                _, i = varint(body, i)
            elif wire == 1:
                i += 8
            else:
                raise ValueError(f"wire type {wire}")
        if i != end:
            raise ValueError("a field runs past its message")
        out[name] = out.get(name, 0) + metrics
    return out


def spread(xs: list[float]) -> tuple[float, float, float]:
    xs = sorted(xs)
    if len(xs) >= 8:
        q = statistics.quantiles(xs, n=4)
        return statistics.median(xs), q[0], q[2]
    return statistics.median(xs), xs[0], xs[-1]


def run(args) -> int:
    procs = Processes("formats")
    failures: list[str] = []
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            ready = os.path.join(tmp, "ready")
            argv = [sys.executable, os.path.join(HERE, "loadgen.py"), "-n", str(args.n), "--ready-file", ready]
            if args.set_sysctls:
                argv.append("--set-sysctls")
            loadgen = procs.start(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
            line, deadline = b"", time.monotonic() + 60 + args.n / 1000
            while not line.startswith(b"READY"):
                if time.monotonic() > deadline or loadgen.poll() is not None:
                    raise RuntimeError("loadgen did not become ready")
                if select.select([loadgen.stdout], [], [], 1.0)[0]:
                    line = loadgen.stdout.readline()
            log(f"N={args.n}: {line.decode().strip()}")
            port = free_port(args.port_base)
            exporter = procs.start([args.exporter, "--web.listen-address", f"127.0.0.1:{port}",
                                    "--collector.connections.max-series=0", "--web.disable-exporter-metrics"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
            if not wait_port(port, exporter, 30.0):
                raise RuntimeError("conn-exporter did not listen")
            time.sleep(1.0)

            # Untimed first scrapes, checked.
            first = {k: scrape(port, h, args.timeout) for k, h in MEASURES.items()}
            text_lines = sum(1 for ln in first["text"][2].split(b"\n")
                             if ln.startswith(b"network_connections_info{"))
            for k in ("pb", "pb-gzip"):
                _, _, body, ctype, enc = first[k]
                if ctype != PROTOBUF_TYPE:
                    failures.append(f"{k}: Content-Type {ctype!r}")
                if k == "pb-gzip":
                    if enc != "gzip":
                        failures.append(f"{k}: Content-Encoding {enc!r}")
                    body = gzip.decompress(body)
                try:
                    series = protobuf_series(body).get("network_connections_info", 0)
                except (ValueError, IndexError) as e:
                    failures.append(f"{k}: not a delimited MetricFamily stream: {e}")
                    continue
                # Connections come and go between scrapes (the exporter's own included).
                if abs(series - text_lines) > 10 or series < 2 * args.n:
                    failures.append(f"{k}: {series} network_connections_info series, text had {text_lines}")
            if gzip.decompress(first["om-gzip"][2]).count(b"\nnetwork_connections_info{") < 2 * args.n:
                failures.append("om-gzip: fewer series than the load")

            samples: dict[str, dict[str, list[float]]] = {k: {"wall": [], "cpu": [], "bytes": []} for k in MEASURES}
            order = list(MEASURES)
            for r in range(args.rounds):
                for k in order[r % len(order):] + order[:r % len(order)]:
                    cpu0 = proc_cpu_seconds(exporter.pid)
                    wall, size, _, _, _ = scrape(port, MEASURES[k], args.timeout)
                    cpu1 = proc_cpu_seconds(exporter.pid)
                    samples[k]["wall"].append(wall)
                    samples[k]["cpu"].append(cpu1 - cpu0)
                    samples[k]["bytes"].append(size)
            for k, s in samples.items():
                results[k] = {m: spread(v) for m, v in s.items()}
                results[k]["raw_bytes"] = len(gzip.decompress(first[k][2])) if k.endswith("gzip") else first[k][1]
        finally:
            procs.stop_all()

    print(f"N={args.n} connections ({2 * args.n} sockets), {args.rounds} rounds; median [spread]")
    print(f"{'measure':<9} {'wall ms':>22} {'exporter CPU ms':>22} {'wire bytes':>14} {'uncompressed':>14}")
    for k, r in results.items():
        w, c, b = r["wall"], r["cpu"], r["bytes"]
        print(f"{k:<9} {w[0] * 1e3:8.1f} [{w[1] * 1e3:.1f}-{w[2] * 1e3:.1f}] "
              f"{c[0] * 1e3:8.0f} [{c[1] * 1e3:.0f}-{c[2] * 1e3:.0f}] {b[0]:>14,.0f} {r['raw_bytes']:>14,}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"n": args.n, "rounds": args.rounds, "results": results, "failures": failures}, f, indent=1)
    for f in failures:
        print(f"FAIL: {f}", file=sys.stderr)
    return 1 if failures else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--exporter", default=os.path.join(HERE, "..", "target", "release", "conn-exporter"))
    ap.add_argument("--quick", action="store_true", help="N=2000, 3 rounds, checks only")
    ap.add_argument("-n", type=int, default=100_000, help="connections (default 100000)")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--port-base", type=int, default=19300)
    ap.add_argument("--set-sysctls", action="store_true", help="let loadgen raise sysctls")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    if args.quick:
        args.n, args.rounds = 2000, 3
    take_lock("/tmp/conn-exporter-bench.lock", "formats")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
