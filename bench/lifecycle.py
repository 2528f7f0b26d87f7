#!/usr/bin/env python3
"""Rate and cost of the lifecycle collector (issues 10 and 13): loopback connections at
offered rates, with each source of the collector and with it off, in alternating runs.

Each run starts a fresh exporter in one of three modes: `netlink`
(--collector.lifecycle.source=netlink: socket-destroy notifications), `ebpf`
(--collector.lifecycle.source=ebpf: the eBPF program; needs root or CAP_BPF and
CAP_PERFMON) or `off` (--no-collector.lifecycle: no subscriber, no program), then this
process opens and closes connections to a listener
of its own for --duration seconds at the offered rate (or as fast as one thread can:
`max`). Each connection: connect, accept, the server side closes with RST (SO_LINGER 0,
so no TIME_WAIT piles up and both ends keep their ports), the client closes. Reported
per run:

  * connections made and the rate achieved;
  * with a source on, closed connections counted by the exporter for this listener
    (inbound plus outbound, so 2 per connection) against 2 x connections made, and
    conn_exporter_lifecycle_overruns_total;
  * the exporter's CPU (user+sys from /proc/PID/stat) per 1,000 connections and as a
    share of one core;
  * the host's busy CPU (all cores, /proc/stat) per connection and as a share of the
    machine.

Run inside a network namespace of your own, as root, with a release build:
    ip netns add bench; ip netns exec bench ip link set lo up
    ip netns exec bench python3 bench/lifecycle.py --exporter target/release/conn-exporter
--quick (a few seconds, 1k/s, one round of each) checks only that the counts are exact
and nothing overran, and exits 1 otherwise: scripts/test.sh runs it.
The summary gives each source's rate as a share of the `off` runs' (median of the ratios
of runs in the same round): 1 - that share is the slowdown.
Python 3.11 standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import struct
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import CLK_TCK, Processes, free_port, proc_cpu_seconds, proc_status, wait_port  # noqa: E402

LINGER_RST = struct.pack("ii", 1, 0)


def host_cpu() -> tuple[float, float]:
    """(busy, total) seconds over all cores since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])
    return (total - idle) / CLK_TCK, total / CLK_TCK


def kworker_cpu() -> float:
    """CPU seconds of every kernel worker thread: the destroy notifications are built and
    sent from a work queue, so the difference on - off is the kernel's cost of them
    (other kernel work the host does meanwhile is noise in both)."""
    total = 0.0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                head, rest = f.read().rsplit(")", 1)
        except OSError:
            continue
        if "(kworker" in head:
            fields = rest.split()
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        return r.read().decode()


def closed_for(text: str, port: int, family: str = "network_connections_closed_total") -> int:
    """Closed connections counted for the bench listener's port, both directions (or,
    with `family` network_connection_rtt_seconds_count, RTT observations)."""
    total = 0
    for line in text.splitlines():
        if line.startswith(family + "{") and (
                f'source_port="{port}"' in line or f'destination_port="{port}"' in line):
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def value(text: str, name: str) -> float:
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(m.group(1)) if m else float("nan")


def closed_all(text: str) -> int:
    """Closed connections in every series, `other` included."""
    return sum(int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines()
               if line.startswith("network_connections_closed_total{"))


def kernel_peers(pid: int) -> tuple[int, int]:
    """(entries, max_entries) of the eBPF program's `peers` map held by process `pid`,
    found through its descriptors' fdinfo and counted with bpftool."""
    ids = set()
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                m = re.search(r"^map_id:\s*(\d+)", f.read(), re.M)
        except OSError:
            continue
        if m:
            ids.add(int(m.group(1)))
    for i in sorted(ids):
        info = json.loads(subprocess.run(["bpftool", "map", "show", "id", str(i), "--json"],
                                         capture_output=True, text=True, check=True).stdout)
        if info.get("name") == "peers":
            dump = json.loads(subprocess.run(["bpftool", "map", "dump", "id", str(i), "--json"],
                                             capture_output=True, text=True, check=True).stdout)
            return len(dump), info["max_entries"]
    raise RuntimeError(f"pid {pid} holds no eBPF map named peers")


def drive(listener: socket.socket, rate: float | None, duration: float, spread: bool = False,
          rss_of: int | None = None, rss: list | None = None) -> int:
    """Opens and closes connections for `duration` s at `rate` per second (None: max).
    `spread`: each client from another source address of 127.0.0.0/8, so that the
    exporter sees an ever-growing set of remote addresses; `rss` then gets the
    exporter's VmRSS every 10 s."""
    addr = listener.getsockname()
    made = 0
    start = time.monotonic()
    end = start + duration
    while True:
        now = time.monotonic()
        if now >= end:
            break
        if rate is not None:
            due = int((now - start) * rate)
            if made >= due:
                time.sleep(min(0.001, end - now))
                continue
        c = socket.socket()
        if spread:
            n = made + 1
            c.bind((f"127.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}", 0))
            if rss is not None and made % (10 * int(rate or 1000)) == 0:
                rss.append(proc_status(rss_of).get("VmRSS", 0))
        c.connect(addr)
        s, _ = listener.accept()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
        s.close()
        c.close()
        made += 1
    return made


MODES = ("netlink", "ebpf", "off", "netlink+quality", "ebpf+quality")


def run_once(exporter: str, mode: str, rate: float | None, duration: float,
             procs: Processes, spread: bool = False, extra: list[str] | None = None) -> dict:
    port = free_port(19400)
    args = [exporter, f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn", *(extra or [])]
    # `+quality`: the quality collector on too (its default), sampling every 15 s and
    # observing each close; the plain modes leave it off, so `off` has no subscriber.
    mode, _, quality = mode.partition("+")
    if not quality:
        args.append("--no-collector.quality")
    collector = mode != "off"
    if collector:
        args.append(f"--collector.lifecycle.source={mode}")
    else:
        args.append("--no-collector.lifecycle")
    p = procs.start(args, stdout=subprocess.DEVNULL)
    try:
        if not wait_port(port, p, 30):
            raise RuntimeError("exporter did not start")
        if collector and f'conn_exporter_lifecycle_source_info{{source="{mode}"}} 1' not in scrape(port):
            raise RuntimeError(f"the lifecycle collector does not run with source {mode}")
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1024)
        lport = listener.getsockname()[1]
        before = scrape(port)
        kw0 = kworker_cpu()
        cpu0, (busy0, total0), t0 = proc_cpu_seconds(p.pid), host_cpu(), time.monotonic()
        rss: list[int] = []
        made = drive(listener, rate, duration, spread, p.pid, rss)
        elapsed = time.monotonic() - t0
        cpu1, (busy1, total1) = proc_cpu_seconds(p.pid), host_cpu()
        kw1 = kworker_cpu()
        listener.close()
        counted = 0
        after = before
        if collector:
            # Notifications come from a kernel work queue: wait until the counts settle.
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                after = scrape(port)
                counted = closed_for(after, lport) - closed_for(before, lport)
                if counted >= 2 * made or (spread and closed_all(after) - closed_all(before) >= 2 * made):
                    break
                time.sleep(0.1)
        # With the quality collector: an RTT observation for each close (both ends), and
        # a few more from samples of connections open at that moment.
        observed = 0
        if quality:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                observed = closed_for(after, lport, "network_connection_rtt_seconds_count") - closed_for(
                    before, lport, "network_connection_rtt_seconds_count")
                if observed >= 2 * made:
                    break
                time.sleep(0.1)
                after = scrape(port)
        ncores = os.cpu_count() or 1
        bounded = {}
        if spread:
            bounded = {
                "closed_all": closed_all(after) - closed_all(before),
                "series": sum(1 for line in after.splitlines()
                              if line.startswith("network_connections_closed_total{")),
                "merged": value(after, "conn_exporter_lifecycle_merged_total"),
            }
            if mode == "ebpf":
                bounded["kernel_map_entries"], bounded["kernel_map_max"] = kernel_peers(p.pid)
        return {
            **bounded,
            "mode": mode + ("+quality" if quality else ""),
            "offered": "max" if rate is None else int(rate),
            "connections": made,
            "rate": made / elapsed,
            "counted": counted,
            "expected": 2 * made,
            "rtt_observed": observed if quality else None,
            "overruns": value(after, "conn_exporter_lifecycle_overruns_total") if collector else 0,
            "exporter_cpu_per_1k_ms": (cpu1 - cpu0) / made * 1e6 if made else float("nan"),
            "exporter_core_share": (cpu1 - cpu0) / elapsed,
            "host_busy_share": (busy1 - busy0) / (total1 - total0) if total1 > total0 else float("nan"),
            "host_busy_per_conn_us": (busy1 - busy0) / made * 1e6 if made else float("nan"),
            "kworker_per_conn_us": (kw1 - kw0) / made * 1e6 if made else float("nan"),
            "kworker_core_share": (kw1 - kw0) / elapsed,
            "cores": ncores,
            "rss_kib": rss + [proc_status(p.pid).get("VmRSS", 0)],
        }
    finally:
        procs.stop(p)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_exe = "target/release/conn-exporter"
    if not os.path.exists(default_exe):
        default_exe = "target/debug/conn-exporter"
    ap.add_argument("--exporter", default=default_exe)
    ap.add_argument("--duration", type=float, default=60.0, help="seconds per run")
    ap.add_argument("--rates", default="5000,max", help="offered rates per second")
    ap.add_argument("--rounds", type=int, default=3, help="rounds (one run of each mode) per rate")
    ap.add_argument("--modes", default="netlink,ebpf,off",
                    help="modes to compare: netlink, ebpf, off, and netlink+quality, ebpf+quality (the "
                         "quality collector on too; the plain modes run without it)")
    ap.add_argument("--json", help="write every run here")
    ap.add_argument("--memory", action="store_true",
                    help="one run per source mode, clients from ever new 127/8 source "
                         "addresses, --collector.lifecycle.max-series 1000: VmRSS every 10 s")
    ap.add_argument("--quick", action="store_true",
                    help="3 s at 1k/s, one round; exit 1 unless exact (with --memory: bounded)")
    a = ap.parse_args()
    if a.quick:
        a.duration, a.rates, a.rounds = 3.0, "1000", 1
    procs = Processes("lifecycle-bench")
    runs = []
    modes = [m for m in a.modes.split(",") if m]
    if any(m not in MODES for m in modes):
        ap.error(f"--modes: each of {', '.join(MODES)}")
    if a.memory:
        rate = float(a.rates.split(",")[0])
        results = []
        try:
            for mode in (m for m in modes if m != "off"):
                results.append(run_once(a.exporter, mode, rate, a.duration, procs, spread=True,
                                        extra=["--collector.lifecycle.max-series=1000"]))
                print(json.dumps(results[-1]), flush=True)
        finally:
            procs.stop_all()
        # Outbound series past the bound fold the port: `counted` (by port) is then below
        # `expected` by design. Every connection is counted in some series (`other`
        # included; the bench's own scrapes add a few), the label sets stay within the
        # bound, and the kernel's map within its size.
        bad = [r for r in results if r["overruns"] != 0 or r["series"] > 1000 or r["merged"] == 0
               or not r["expected"] <= r["closed_all"] <= r["expected"] + 20
               or r.get("kernel_map_entries", 0) > r.get("kernel_map_max", 0)]
        for r in bad:
            print(f"{r['mode']}: not bounded or not exact: {json.dumps(r)}", file=sys.stderr)
        return 1 if bad else 0
    try:
        for r in a.rates.split(","):
            rate = None if r == "max" else float(r)
            for i in range(a.rounds):
                # Rotate which goes first so that drift in the host favours none.
                order = modes[i % len(modes):] + modes[:i % len(modes)]
                for mode in order:
                    res = run_once(a.exporter, mode, rate, a.duration, procs)
                    res["round"] = i
                    runs.append(res)
                    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v)
                                      for k, v in res.items()}), flush=True)
    finally:
        procs.stop_all()
    if a.json:
        with open(a.json, "w") as f:
            json.dump(runs, f, indent=1)
    print("\nmedians (spread min..max) per offered rate:")
    for r in a.rates.split(","):
        offered = r if r == "max" else int(float(r))

        def med(rs, k):
            v = [x[k] for x in rs]
            return f"{statistics.median(v):.3g} ({min(v):.3g}..{max(v):.3g})" if v else "-"
        off = {x["round"]: x for x in runs if x["offered"] == offered and x["mode"] == "off"}
        for mode in modes:
            rs = [x for x in runs if x["offered"] == offered and x["mode"] == mode]
            line = (f"  offered {offered}/s, {mode}: rate {med(rs, 'rate')}; exporter CPU per 1k conns "
                    f"{med(rs, 'exporter_cpu_per_1k_ms')} ms; host busy per conn {med(rs, 'host_busy_per_conn_us')} us; "
                    f"kworker CPU per conn {med(rs, 'kworker_per_conn_us')} us")
            if mode != "off":
                line += (f"; counted/expected {sum(x['counted'] for x in rs)}/{sum(x['expected'] for x in rs)}, "
                         f"overruns {sum(x['overruns'] for x in rs):.0f}")
                ratios = [x["rate"] / off[x["round"]]["rate"] for x in rs if x["round"] in off]
                if ratios:
                    line += (f"; rate / off in the same round {statistics.median(ratios):.3f} "
                             f"({min(ratios):.3f}..{max(ratios):.3f})")
            print(line)
    bad = [x for x in runs if x["mode"] != "off" and (x["counted"] != x["expected"] or x["overruns"] != 0
                                                       or (x["rtt_observed"] is not None
                                                           and x["rtt_observed"] < x["expected"]))]
    if bad:
        print(f"lifecycle counts not exact, overrun, or closes without an RTT observation in {len(bad)} run(s)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
