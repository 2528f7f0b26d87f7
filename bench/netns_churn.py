#!/usr/bin/env python3
"""Namespace churn against the exporter's memory (issue 11): network namespaces created and
destroyed in a loop, one a second, while an exporter in `--collector.namespaces=all` mode
with `--collector.connections.owner` is scraped every second; the exporter's RSS
(`VmRSS` of /proc/PID/status), open descriptors (entries of /proc/PID/fd) and threads
are read after the warm-up and at the end, and must stay within stated bounds.

Each namespace holds sockets (a listener and one loopback connection) in a process of its
own, so that every path of the exporter churns: namespaces found by their bind mount
(`ip netns add`, even turns) and namespaces found only from a process
(`unshare(CLONE_NEWNET)` in the holder, odd turns, labelled `netns-<inode>`), each
with a thread, a netlink socket and owners that come and go. --live namespaces exist at
any time; each turn makes one and destroys the oldest (its holder killed, its bind
mount removed).

Bounds (the run fails beyond them): descriptors and threads at the end no more than
after the warm-up (--fd-slack, --thread-slack: 0 and 1 by default; a runtime thread
may still be idle), RSS no more than --rss-slack-kib (2048) above the warm-up value.
A leak of one descriptor or thread per namespace shows at once; one of 4 KiB per
namespace exceeds the RSS bound in the 10-minute run (600 namespaces).

    python3 bench/netns_churn.py                  # 10 minutes, 600 namespaces
    python3 bench/netns_churn.py --quick          # 30 s (scripts/test.sh)

Like bench/namespaces.py it re-runs itself under `unshare --mount --pid --fork
--mount-proc` with a tmpfs on /run/netns, so the exporter sees only the namespaces
made here. Needs root, iproute2, util-linux (unshare), curl.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import namespaces as nsb  # noqa: E402  (bench/namespaces.py: make_ns, enter, Exporter, status)

CLONE_NEWNET = 0x40000000


def holder(name: str | None) -> int:
    """Forks a process that enters namespace `name` (or a new anonymous one), holds a
    listener and one loopback connection, and returns its pid once it is ready."""
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(ready_r)
            if name is None:
                if nsb.libc.unshare(CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET)")
                subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
            else:
                nsb.enter(name)
            srv = socket.socket()
            srv.bind(("127.0.0.1", 8000))
            srv.listen(8)
            c = socket.create_connection(("127.0.0.1", 8000))
            s, _ = srv.accept()
            os.write(ready_w, b"x")
            signal.pause()
            del c, s
        finally:
            os._exit(1)
    os.close(ready_w)
    got = os.read(ready_r, 1)
    os.close(ready_r)
    if got != b"x":
        raise SystemExit(f"the holder of namespace {name or '(anonymous)'} failed")
    return pid


def scrape(e: nsb.Exporter) -> str:
    return subprocess.run(["ip", "netns", "exec", e.ns, "curl", "-sSf", f"http://127.0.0.1:{e.port}/metrics"],
                          check=True, capture_output=True, text=True).stdout


def run(args) -> int:
    nsb.make_ns("churn-root")
    e = nsb.Exporter(args.exporter, "churn-root", 9104,
                     ["--collector.namespaces=all", "--collector.connections.owner"])
    # Its log goes on being read, so that a full pipe never blocks it.
    threading.Thread(target=lambda: e.proc.stderr.read(), daemon=True).start()
    live: list[tuple[int, str | None]] = []
    made = 0
    samples: list[tuple[float, dict[str, int]]] = []
    start = time.monotonic()
    next_sample = args.warmup
    bodies = []
    try:
        while time.monotonic() - start < args.seconds:
            tick = time.monotonic()
            name = f"churn-{made}" if made % 2 == 0 else None
            if name:
                nsb.make_ns(name)
            pid = holder(name)
            live.append((pid, name))
            made += 1
            if len(live) > args.live:
                old_pid, old_name = live.pop(0)
                os.kill(old_pid, signal.SIGKILL)
                os.waitpid(old_pid, 0)
                if old_name:
                    nsb.sh("ip", "netns", "del", old_name)
            body = scrape(e)
            size = len(body)
            bodies.append(size)
            # Every live namespace is read: its listener is there, with its owner.
            listeners = [line for line in body.splitlines() if line.startswith("network_connections_info{")
                         and 'state="LISTEN"' in line and 'source_port="8000"' in line]
            owned = [line for line in listeners if 'process="python3"' in line]
            if len(listeners) != len(live) or len(owned) != len(live):
                raise SystemExit(f"scrape {made}: {len(listeners)} listeners on :8000 ({len(owned)} owned by "
                                 f"python3), want one per live namespace ({len(live)})")
            elapsed = time.monotonic() - start
            if elapsed >= next_sample:
                s = nsb.status(e.pid)
                samples.append((elapsed, s))
                nsb.log(f"t={elapsed:5.0f}s namespaces made {made}: RSS {s['VmRSS']} KiB, fds {s['fds']}, "
                        f"threads {s['Threads']}, body {size} B")
                next_sample += args.every
            time.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
        # One last sample, taken as the others right after a scrape.
        s = nsb.status(e.pid)
        samples.append((time.monotonic() - start, s))
    finally:
        e.stop()
        for pid, _ in live:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    if len(samples) < 2:
        raise SystemExit("the run is shorter than its warm-up: no samples to compare")
    first, last = samples[0][1], samples[-1][1]
    rss = [s["VmRSS"] for _, s in samples]
    fds = [s["fds"] for _, s in samples]
    print(f"netns churn: {made} namespaces made and destroyed in {args.seconds:.0f} s ({args.live} live, "
          f"half named, half anonymous, each with a holder process and 3 sockets), a scrape each second "
          f"(all mode, owners on; body {min(bodies)}-{max(bodies)} B)")
    print(f"  after the {args.warmup:.0f} s warm-up -> end: RSS {first['VmRSS']} -> {last['VmRSS']} KiB "
          f"(min {min(rss)}, max {max(rss)}); fds {first['fds']} -> {last['fds']} "
          f"(min {min(fds)}, max {max(fds)}); threads {first['Threads']} -> {last['Threads']}")
    problems = []
    if last["fds"] > first["fds"] + args.fd_slack:
        problems.append(f"open descriptors grew {first['fds']} -> {last['fds']} (bound +{args.fd_slack})")
    if last["Threads"] > first["Threads"] + args.thread_slack:
        problems.append(f"threads grew {first['Threads']} -> {last['Threads']} (bound +{args.thread_slack})")
    if last["VmRSS"] > first["VmRSS"] + args.rss_slack_kib:
        problems.append(f"RSS grew {first['VmRSS']} -> {last['VmRSS']} KiB (bound +{args.rss_slack_kib} KiB)")
    for p in problems:
        print(f"  FAIL: {p}")
    if not problems:
        print(f"  within bounds: fds +{args.fd_slack}, threads +{args.thread_slack}, RSS +{args.rss_slack_kib} KiB")
    return 1 if problems and not args.no_check else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--exporter", default=os.environ.get("CONN_EXPORTER_BIN", "target/release/conn-exporter"))
    ap.add_argument("--quick", action="store_true", help="30 s, warm-up 10 s (CI)")
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--warmup", type=float, default=30)
    ap.add_argument("--every", type=float, default=60)
    ap.add_argument("--live", type=int, default=3, help="namespaces alive at any time")
    ap.add_argument("--fd-slack", type=int, default=0)
    ap.add_argument("--thread-slack", type=int, default=1)
    ap.add_argument("--rss-slack-kib", type=int, default=2048)
    ap.add_argument("--no-check", action="store_true", help="report only; exit 0")
    args = ap.parse_args()
    if args.quick:
        args.seconds, args.warmup, args.every = 30, 10, 10
    args.exporter = os.path.abspath(args.exporter)
    if not os.access(args.exporter, os.X_OK):
        raise SystemExit(f"no exporter binary at {args.exporter} (cargo build --release, or --exporter)")
    rc = nsb.private_world(("ip", "curl"), "churn-netns", "churn-home")
    if rc is not None:
        return rc
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
