#!/usr/bin/env python3
"""Cost of the quality collector (issue 19): what sampling tcp_info costs, beside what
the exporter does without it, at N loopback connections (2 N established sockets, held
by bench/loadgen.py).

Three measurements, each in alternating runs, medians with the spread (min..max):

  dump    the kernel's cost of one NETLINK_SOCK_DIAG dump of the sampled states (every
          full socket: not TIME_WAIT, not request sockets) with INET_DIAG_INFO against
          the same dump without it: system time of this process per dump, read with
          getrusage around the dumps (the kernel fills the dump in the recvmsg calls of
          the reader), and the bytes received;
  sample  the exporter's CPU (user+sys from /proc/PID/stat, kernel time of its dumps
          included) over --window seconds with the quality collector on at --interval,
          against an exporter with it off: the difference per sample, and as a share of
          one core at the default 15 s interval;
  scrape  the CPU of one scrape of /metrics (every family) with the collector on
          against off: sampling is off the scrape path, so the two should match.

The exporter's resident memory after each window is reported beside (the collector
keeps each socket's last totals, and reuses the buffer of one namespace's sample).

Run as root, inside a network namespace of your own, with a release build:
    ip netns add bench; ip netns exec bench ip link set lo up
    ip netns exec bench python3 bench/quality.py --connections 50000
(--connections 50000 is 100k sockets.) --quick (CI: 1,000 connections, 1 s interval, a
few seconds) checks that the samples run and exits 1 when one failed or the families are
missing. Python 3.11 standard library only.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from benchlib import Processes, free_port, proc_cpu_seconds, proc_status, start_loadgen, wait_port  # noqa: E402

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
INET_DIAG_INFO = 2
# The states the collector samples: every full socket but listeners (dumped apart).
SAMPLED_STATES = sum(1 << s for s in (1, 2, 4, 5, 8, 9, 11))


def dump(family: int, ext: int) -> tuple[int, int]:
    """One sock_diag dump of the sampled TCP states; returns (sockets, bytes)."""
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)
    try:
        body = struct.pack("=BBBxI", family, socket.IPPROTO_TCP, ext, SAMPLED_STATES) + bytes(48)
        s.sendto(struct.pack("=IHHII", 16 + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, 1, 0)
                 + body, (0, 0))
        n = size = 0
        while True:
            buf = s.recv(1 << 16)
            size += len(buf)
            off = 0
            while off + 16 <= len(buf):
                length, kind = struct.unpack_from("=IH", buf, off)
                if kind == NLMSG_DONE:
                    return n, size
                if kind == NLMSG_ERROR:
                    errno = -struct.unpack_from("=i", buf, off + 16)[0]
                    if errno == 0:
                        off += (length + 3) & ~3
                        continue
                    return n, size  # ENOENT: no inet6_diag
                n += 1
                off += (length + 3) & ~3
    finally:
        s.close()


def sys_seconds() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_stime


def measure_dumps(repeats: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"info": [], "plain": [], "info_bytes": [], "plain_bytes": [], "sockets": []}
    for i in range(repeats):
        for kind in (("info", "plain") if i % 2 == 0 else ("plain", "info")):
            ext = 1 << (INET_DIAG_INFO - 1) if kind == "info" else 0
            t0 = sys_seconds()
            n = size = 0
            for fam in (socket.AF_INET, socket.AF_INET6):
                a, b = dump(fam, ext)
                n, size = n + a, size + b
            out[kind].append(sys_seconds() - t0)
            out[kind + "_bytes"].append(size)
            out["sockets"].append(n)
    return out


def scrape(port: int, path: str = "/metrics") -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=120) as r:
        return r.read().decode()


def value(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def start_exporter(exe: str, quality: bool, interval: str, procs: Processes) -> tuple[subprocess.Popen, int]:
    port = free_port(19600)
    args = [exe, f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn", "--no-collector.lifecycle"]
    args += [f"--collector.quality.interval={interval}"] if quality else ["--no-collector.quality"]
    p = procs.start(args, stdout=subprocess.DEVNULL)
    if not wait_port(port, p, 30):
        raise RuntimeError("exporter did not start")
    return p, port


def med(v: list[float], scale: float = 1.0, fmt: str = "{:.3g}") -> str:
    if not v:
        return "-"
    return f"{fmt.format(statistics.median(v) * scale)} ({fmt.format(min(v) * scale)}..{fmt.format(max(v) * scale)})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--exporter", default=os.environ.get(
        "CONN_EXPORTER_BIN", os.path.join(REPO, "target/release/conn-exporter")))
    ap.add_argument("--connections", type=int, default=50000, help="loadgen connections, 2 sockets each")
    ap.add_argument("--interval", default="5s", help="--collector.quality.interval of the sample runs "
                    "(shorter than the default 15 s to take more samples in the window)")
    ap.add_argument("--window", type=float, default=60.0, help="seconds each sample run is measured")
    ap.add_argument("--rounds", type=int, default=3, help="alternating runs of each kind")
    ap.add_argument("--scrapes", type=int, default=10, help="scrapes per scrape run")
    ap.add_argument("--quick", action="store_true", help="1,000 connections, 1 s interval, 4 s windows, 1 round")
    a = ap.parse_args()
    if a.quick:
        a.connections, a.interval, a.window, a.rounds, a.scrapes = 1000, "1s", 4.0, 1, 3
    interval_s = float(a.interval.rstrip("s"))
    procs = Processes("quality-bench")
    failures: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            start_loadgen(a.connections, procs, tmp, set_sysctls=True)
            d = measure_dumps(max(3, 2 * a.rounds + 1))
            per = [x / max(n, 1) * 1e6 for x, n in zip(d["info"], d["sockets"][::2])]
            print(f"sockets dumped: {int(statistics.median(d['sockets']))}")
            print(f"dump with INET_DIAG_INFO: system time {med(d['info'], 1e3)} ms, "
                  f"{med(d['info_bytes'], 1 / 2**20)} MiB")
            print(f"dump without:             system time {med(d['plain'], 1e3)} ms, "
                  f"{med(d['plain_bytes'], 1 / 2**20)} MiB")
            ratios = [i / p for i, p in zip(d["info"], d["plain"]) if p > 0]
            print(f"  with / without: {med(ratios)}; with: {med(per)} us per socket")

            sample_cpu: dict[bool, list[float]] = {True: [], False: []}
            samples_taken: list[float] = []
            scrape_cpu: dict[bool, list[float]] = {True: [], False: []}
            rss: dict[bool, list[float]] = {True: [], False: []}
            for r in range(a.rounds):
                for quality in ((True, False) if r % 2 == 0 else (False, True)):
                    p, port = start_exporter(a.exporter, quality, a.interval, procs)
                    try:
                        # Let the first sample (at start) pass before measuring.
                        deadline = time.monotonic() + 60
                        while quality and value(scrape(port, "/metrics?collect[]=quality"),
                                                "conn_exporter_quality_samples_total") < 1:
                            if time.monotonic() > deadline:
                                raise RuntimeError("no first sample")
                            time.sleep(0.2)
                        n0 = value(scrape(port, "/metrics?collect[]=quality"), "conn_exporter_quality_samples_total") \
                            if quality else 0
                        c0 = proc_cpu_seconds(p.pid)
                        time.sleep(a.window)
                        c1 = proc_cpu_seconds(p.pid)
                        rss[quality].append(proc_status(p.pid).get("VmRSS", 0) / 1024)
                        text = scrape(port, "/metrics?collect[]=quality") if quality else ""
                        n1 = value(text, "conn_exporter_quality_samples_total") if quality else 0
                        sample_cpu[quality].append(c1 - c0)
                        if quality:
                            samples_taken.append(n1 - n0)
                            if value(text, "conn_exporter_quality_sample_failures_total") > 0:
                                failures.append("a sample failed")
                            if "network_connection_rtt_seconds_count{" not in text:
                                failures.append("no network_connection_rtt_seconds series")
                        for _ in range(a.scrapes):
                            s0 = proc_cpu_seconds(p.pid)
                            scrape(port)
                            scrape_cpu[quality].append(proc_cpu_seconds(p.pid) - s0)
                    finally:
                        procs.stop(p)
            # Per sample: the CPU of the window with the collector on, less the same
            # window's CPU of an exporter without it (its idle wake-ups), per sample.
            idle = statistics.median(sample_cpu[False]) if sample_cpu[False] else 0.0
            per_sample = [(c - idle) / n for c, n in zip(sample_cpu[True], samples_taken) if n > 0]
            print(f"exporter CPU over {a.window:.0f} s: quality on (every {a.interval}) "
                  f"{med(sample_cpu[True], 1e3)} ms, off {med(sample_cpu[False], 1e3)} ms; "
                  f"samples {med(samples_taken)}")
            print(f"  CPU per sample (user+sys, kernel dump included): {med(per_sample, 1e3)} ms; "
                  f"at the default 15 s interval: {med([x / 15 for x in per_sample], 100, '{:.3f}')} % of one core")
            print(f"exporter RSS after the window: quality on {med(rss[True])} MiB, off {med(rss[False])} MiB")
            print(f"scrape CPU (every family): quality on {med(scrape_cpu[True], 1e3)} ms, "
                  f"off {med(scrape_cpu[False], 1e3)} ms")
            if samples_taken and min(samples_taken) < max(1, a.window / interval_s - 2):
                failures.append(f"too few samples: {samples_taken}")
        finally:
            procs.stop_all()
    for f in failures:
        print(f"quality bench: {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
