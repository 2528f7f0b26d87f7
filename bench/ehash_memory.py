#!/usr/bin/env python3
"""Kernel memory of a network namespace's own TCP hash table (issue 22).

With `net.ipv4.tcp_child_ehash_entries=V` (Linux 6.1+) set in a namespace, every network
namespace made afterwards by a process of that namespace gets a TCP established hash
table of its own with V entries (rounded up to a power of two); V=0 (the default) lets
it share the host's. This script measures what that table costs: for each size V it
makes --namespaces child namespaces and reads /proc/meminfo and /proc/slabinfo before
and after (the children kept alive by an open /proc/thread-self/ns/net descriptor each,
no process of their own), then frees them and waits for the slab to settle. The cost of
the own table is a child's at V minus the median of a child's at V=0 (shared), per
namespace; medians over --rounds (the sizes' order rotates from round to round), with
min..max, and the slab caches that grew against V=0 (the bucket locks: kmalloc-4k).
Figures: docs/performance.md, "Memory of own TCP tables".

The sysctl is written ONLY in the network namespace this script runs in, which must
not be the host's: it refuses to run unless its own /proc/sys/net/ipv4/tcp_ehash_entries
is negative (a namespace sharing the host's table; the host's own reads positive).
Children are made from this process (unshare(CLONE_NEWNET), then setns back), so the
value they inherit is this namespace's. Run it like this (a private mount and network
world, with a namespace of its own for the setting):

  unshare --mount --net --propagation private bash -c \\
    'mount -t tmpfs none /run/netns && ip netns add N0 &&
     ip netns exec N0 python3 bench/ehash_memory.py; rc=$?; ip netns del N0; exit $rc'

Needs root, Linux 6.1+. Python 3.11 has no os.unshare/os.setns: ctypes.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import sys
import time

CLONE_NEWNET = 0x40000000
libc = ctypes.CDLL(None, use_errno=True)
SYSCTL = "/proc/sys/net/ipv4/tcp_child_ehash_entries"
MEMINFO_KEYS = ("MemAvailable", "Slab", "SUnreclaim", "VmallocUsed", "Percpu", "KernelStack", "PageTables")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def check(rc: int, what: str) -> None:
    if rc != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def read_int(path: str) -> int:
    with open(path) as f:
        return int(f.read().split()[0])


def snapshot() -> dict[str, int]:
    """KiB: the /proc/meminfo fields, and the slab caches' pages ("slabinfo"); bytes of
    active objects of each slab cache, as "cache:NAME"."""
    out: dict[str, int] = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":", 1)
            if k in MEMINFO_KEYS:
                out[k] = int(v.split()[0])
    total = 0
    with open("/proc/slabinfo") as f:
        for line in f:
            if line.startswith(("slabinfo", "#")):
                continue
            p = line.split()
            # name active num objsize perslab pagesperslab : tunables ... : slabdata active_slabs num_slabs shared
            total += int(p[14]) * int(p[5]) * os.sysconf("SC_PAGE_SIZE")
            out["cache:" + p[0]] = out.get("cache:" + p[0], 0) + int(p[1]) * int(p[3])
    out["slabinfo"] = total // 1024
    return out


def settle(limit: float = 30.0) -> None:
    """Waits until SUnreclaim is steady (the kernel frees a namespace from a work queue,
    after an RCU grace period): two readings 2 s apart within 256 KiB, or `limit` s."""
    end = time.monotonic() + limit
    prev = snapshot()["SUnreclaim"]
    while time.monotonic() < end:
        time.sleep(2)
        cur = snapshot()["SUnreclaim"]
        if abs(cur - prev) <= 256:
            return
        prev = cur


def make_children(n: int, home: int) -> tuple[list[int], dict[str, int]]:
    """n namespaces made from this one, each held by a descriptor; the first's TCP
    sysctls as it sees them."""
    fds, seen = [], {}
    for i in range(n):
        check(libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
        try:
            fds.append(os.open("/proc/thread-self/ns/net", os.O_RDONLY))
            if i == 0:
                for k in ("tcp_ehash_entries", "tcp_max_tw_buckets", "tcp_max_syn_backlog"):
                    seen[k] = read_int(f"/proc/sys/net/ipv4/{k}")
        finally:
            check(libc.setns(home, CLONE_NEWNET), "setns back")
    return fds, seen


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="0,1024,4096,65536", help="values of tcp_child_ehash_entries (0: shared)")
    ap.add_argument("--namespaces", type=int, default=100, help="children made per measurement")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--hold", type=float, default=1.0, help="seconds between making the children and reading")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if 0 not in sizes:
        ap.error("--sizes needs 0 (shared), the baseline")

    own = read_int("/proc/sys/net/ipv4/tcp_ehash_entries")
    if own >= 0:
        log(f"refusing: this namespace's tcp_ehash_entries is {own} (not negative): it is the host's "
            "or has its own table; run inside a namespace made for this (see --help)")
        return 2
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    before_sysctl = read_int(SYSCTL)
    ncpu = os.sysconf("SC_NPROCESSORS_CONF")
    log(f"namespace {os.readlink('/proc/thread-self/ns/net')}: tcp_ehash_entries {own}, "
        f"tcp_child_ehash_entries {before_sysctl}; {ncpu} CPUs configured; kernel {os.uname().release}")

    # results[V][key] = per-namespace KiB for each round
    results: dict[int, dict[str, list[float]]] = {v: {} for v in sizes}
    seen_by_size: dict[int, dict[str, int]] = {}
    try:
        for r in range(args.rounds):
            order = sizes[r % len(sizes):] + sizes[:r % len(sizes)]
            for v in order:
                with open(SYSCTL, "w") as f:
                    f.write(str(v))
                settle()
                a = snapshot()
                fds, seen = make_children(args.namespaces, home)
                time.sleep(args.hold)
                b = snapshot()
                for fd in fds:
                    os.close(fd)
                want = -abs(own) if v == 0 else 1 << max(0, (v - 1).bit_length())
                if seen["tcp_ehash_entries"] != want:
                    log(f"V={v}: a child reads tcp_ehash_entries {seen['tcp_ehash_entries']}, want {want}")
                    return 1
                seen_by_size[v] = seen
                per = {k: (b.get(k, 0) - a.get(k, 0)) / args.namespaces for k in a.keys() | b.keys()}
                for k in [k for k in per if k.startswith("cache:")]:
                    results[v].setdefault(k, []).append(per.pop(k) / 1024)
                per["MemAvailable"] = -per["MemAvailable"]  # used, not available
                for k, x in per.items():
                    results[v].setdefault(k, []).append(x)
                log(f"round {r + 1} V={v}: child sees {seen}; per namespace KiB: "
                    + ", ".join(f"{k} {per[k]:.1f}" for k in (*MEMINFO_KEYS, "slabinfo")))
    finally:
        with open(SYSCTL, "w") as f:
            f.write(str(before_sysctl))
        settle()

    def fmt(xs: list[float]) -> str:
        return f"{statistics.median(xs):.1f} ({min(xs):.1f}..{max(xs):.1f})"

    keys = ["SUnreclaim", "Slab", "slabinfo", "VmallocUsed", "Percpu", "KernelStack", "PageTables", "MemAvailable"]
    print(f"# KiB per namespace, {args.namespaces} namespaces x {args.rounds} rounds, median (min..max); "
          f"MemAvailable as used; {ncpu} CPUs; kernel {os.uname().release}")
    print("| tcp_child_ehash_entries | child sees: ehash, max_tw_buckets, max_syn_backlog | " + " | ".join(keys) + " |")
    print("|---|---|" + "---|" * len(keys))
    for v in sizes:
        s = seen_by_size[v]
        print(f"| {v} | {s['tcp_ehash_entries']}, {s['tcp_max_tw_buckets']}, {s['tcp_max_syn_backlog']} | "
              + " | ".join(fmt(results[v][k]) for k in keys) + " |")
    med = {k: statistics.median(xs) for k, xs in results[0].items()}
    print("# own table: V's readings minus the median at V=0 (shared): median (min..max)")
    print("| tcp_child_ehash_entries | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    for v in sizes:
        if v == 0:
            continue
        print(f"| {v} | " + " | ".join(fmt([x - med[k] for x in results[v][k]]) for k in keys) + " |")
    print("# slab caches whose active objects grew by 0.5 KiB or more per namespace against V=0 (medians)")
    for v in sizes:
        if v == 0:
            continue
        grew = []
        for k, xs in results[v].items():
            if k.startswith("cache:"):
                d = statistics.median(xs) - statistics.median(results[0].get(k, [0.0]))
                if d >= 0.5:
                    grew.append(f"{k[6:]} {d:.1f}")
        print(f"# V={v}: " + (", ".join(sorted(grew, key=lambda g: -float(g.split()[-1]))) or "none"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
