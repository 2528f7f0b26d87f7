#!/usr/bin/env python3
"""Cost of --collector.namespaces=all (issues 11 and 22), in a world of its own.

  cost   Sockets spread over network namespaces read in `all` mode, against a
         `host`-mode scrape of as many sockets in one namespace, measured in the same
         run: wall time (median and range over --rounds) and exporter CPU (user+sys from
         /proc/PID/stat) per scrape and per socket; the first `all` scrape (which starts
         one thread per namespace) is reported apart. The `all` run is made once per
         --sources entry against the same sockets and the same host baseline: `ebpf` (the
         eBPF walk of the host's TCP table, --collector.namespaces.source=ebpf) and
         `netlink` (a sock_diag dump per namespace). The issue's bound is all/host <= 1.3 in CPU per socket, checked on
         the `ebpf` run (on the wall ratio when only `netlink` is run, as before).

         The shape is --layout (connections, 2 sockets each, per namespace: `40x500+20000`
         is 40 namespaces of 500 connections and one of 20,000, the shape of issue 22;
         `100x1000` is 100 of 1,000), or --namespaces and --sockets (sockets split evenly,
         the shape of issue 11). Every namespace also holds a listener per holder process.
         Each `all` scrape must count every held socket in network_connection_states
         (by netns), and the walk (conn_exporter_socket_table_entries) must find them.
         --quick: 10x1000+10000, 3 rounds of 5 scrapes each (about 10 s); at that size a
         host scrape is a few 10 ms ticks of CPU and all mode's fixed costs per scrape
         (the walk of every bucket, a UDP dump per namespace) weigh more, so the bound
         checked is 2.0, not 1.3 (the output says so).

The exporters run with --collector.connections.max-series=0 and --no-collector.quality
(the quality sampler dumps every namespace each --collector.quality.interval whatever the
source, off the scrape path; --quality keeps it on). Between the host and the all phase
the script waits until the kernel's TCP socket count (`alloc` in /proc/net/sockstat) is
back where it started, so that the dumps do not walk sockets of the host phase.

Namespace churn (memory, descriptors, threads) is bench/netns_churn.py.

The script re-runs itself under `unshare --mount --pid --fork --mount-proc` with a
tmpfs on /run/netns, so that the exporter finds only the namespaces made here (no
other process's or test's), then makes its namespaces with `ip netns add`. Sockets
are made by one process that enters each namespace with setns(2) (through ctypes:
Python 3.11 has no os.setns) and connects on that namespace's loopback.

Needs root, iproute2, util-linux (unshare), curl. Run it inside a network namespace
of your own (`ip netns exec NS python3 bench/namespaces.py cost`).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

CLONE_NEWNET = 0x40000000
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
MARK = "CONN_EXPORTER_BENCH_PRIVATE"
libc = ctypes.CDLL(None, use_errno=True)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def sh(*args: str) -> None:
    subprocess.run(args, check=True)


def enter(name: str) -> None:
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {name}")
    finally:
        os.close(fd)


PRIVATE_EHASH = 0


def make_ns(name: str, sockets: int = 0) -> None:
    if PRIVATE_EHASH:
        # The namespace gets a TCP hash table of its own (Linux 6.1+), sized for its
        # sockets: a dump then walks its sockets only, not every namespace's.
        size = max(128, 1 << max(0, (sockets * 2 - 1).bit_length()))
        with open("/proc/sys/net/ipv4/tcp_child_ehash_entries", "w") as f:
            f.write(str(size))
    sh("ip", "netns", "add", name)
    sh("ip", "-n", name, "link", "set", "lo", "up")


def hold_in_this_process(tasks: list[tuple[str, int, int]], keep: list) -> None:
    """Opens, per (namespace, connections, port) task, a listener on that port and that
    many loopback connections to it (2 sockets each), from this process."""
    for name, connections, port in tasks:
        enter(name)
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", port))
        srv.listen(4096)
        keep.append(srv)
        left = connections
        while left:
            batch = min(left, 1000)
            clients = []
            for _ in range(batch):
                c = socket.socket()
                c.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                # Spread sources over 127.0.x.y so ephemeral ports never run out.
                n = len(keep)
                c.bind((f"127.0.{(n // 250) % 250 + 1}.{n % 250 + 1}", 0))
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                c.connect(("127.0.0.1", port))
                clients.append(c)
            for c in clients:
                s, _ = srv.accept()
                keep.extend([c, s])
            left -= batch


class Holders:
    """Processes holding sockets (RLIMIT_NOFILE caps one process, and only a process with
    CAP_SYS_RESOURCE may raise it): each takes tasks up to --per-process sockets, says
    when it is done, and holds until stopped."""

    # The write ends of every set's stop pipes, closed in each new holder.
    stop_fds: set[int] = set()

    def __init__(self, plan: list[tuple[str, int]], per_process: int):
        self.children: list[tuple[int, int]] = []
        self.made = 0
        batches: list[list[tuple[str, int, int]]] = [[]]
        room = per_process
        for name, connections in plan:
            while connections:
                if room < 4:
                    batches.append([])
                    room = per_process
                take = min(connections, (room - 1) // 2)
                batches[-1].append((name, take, 9000 + len(batches)))
                room -= 2 * take + 1
                connections -= take
                self.made += 2 * take + 1
        for tasks in batches:
            ready_r, ready_w = os.pipe()
            stop_r, stop_w = os.pipe()
            pid = os.fork()
            if pid == 0:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                os.close(ready_r)
                os.close(stop_w)
                # Earlier holders' stop pipes (of this set and of any other set still
                # holding): kept open here, they would never close.
                for other in Holders.stop_fds:
                    os.close(other)
                keep: list = []
                hold_in_this_process(tasks, keep)
                os.write(ready_w, b"x")
                os.read(stop_r, 1)
                os._exit(0)
            os.close(ready_w)
            os.close(stop_r)
            if os.read(ready_r, 1) != b"x":
                raise SystemExit("a socket holder failed")
            os.close(ready_r)
            self.children.append((pid, stop_w))
            Holders.stop_fds.add(stop_w)

    def stop(self) -> None:
        for pid, stop_w in self.children:
            os.close(stop_w)
            Holders.stop_fds.discard(stop_w)
            os.waitpid(pid, 0)
        self.children.clear()


def status(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM", "Threads"):
                out[k] = int(v.split()[0])
    out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return out


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Exporter:
    def __init__(self, binary: str, ns: str, port: int, args: list[str]):
        self.ns, self.port = ns, port
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, binary, f"--web.listen-address=127.0.0.1:{port}",
             "--collector.connections.max-series=0", *args],
            stderr=subprocess.PIPE, text=True)
        for line in self.proc.stderr:
            if "listening on" in line:
                break
        else:
            raise SystemExit("the exporter did not start")
        # The rest of its log is read (and dropped) so that it never blocks on a full pipe.
        threading.Thread(target=self._drain, daemon=True).start()
        # `ip netns exec` execs the binary: the pid is the exporter's.
        self.pid = self.proc.pid

    def _drain(self) -> None:
        for line in self.proc.stderr:
            if " ERROR " in line or " WARN " in line:
                log(f"exporter: {line.rstrip()}")

    def scrape(self, keep: bool = False) -> tuple[float, float, int] | str:
        """(wall seconds, exporter CPU seconds, body bytes) of one full scrape; with keep,
        the body instead."""
        cpu = cpu_seconds(self.pid)
        t = time.perf_counter()
        fmt = [] if keep else ["-o", "/dev/null", "-w", "%{size_download} %{time_total}"]
        out = subprocess.run(["ip", "netns", "exec", self.ns, "curl", "-sSf", *fmt,
                              f"http://127.0.0.1:{self.port}/metrics"],
                             check=True, capture_output=True, text=True).stdout
        if keep:
            return out
        out = out.split()
        wall = float(out[1]) if out else time.perf_counter() - t
        return wall, cpu_seconds(self.pid) - cpu, int(out[0])

    def scrapes(self, n: int) -> tuple[float, float, int]:
        """One round: n scrapes back to back, wall and CPU per scrape (the mean of the n;
        several lift the CPU above the 10 ms tick of /proc/PID/stat)."""
        cpu = cpu_seconds(self.pid)
        got = [self.scrape() for _ in range(n)]
        return (statistics.mean(x[0] for x in got), (cpu_seconds(self.pid) - cpu) / n, got[-1][2])

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()


def summary(xs: list[float]) -> str:
    return f"median {statistics.median(xs) * 1000:.1f} ms (min {min(xs) * 1000:.1f}, max {max(xs) * 1000:.1f})"


def spread(xs: list[float], scale: float = 1.0, fmt: str = ".1f") -> str:
    """median (min–max) of xs times scale."""
    return f"{statistics.median(xs) * scale:{fmt}} ({min(xs) * scale:{fmt}}–{max(xs) * scale:{fmt}})"


def parse_layout(text: str) -> list[int]:
    """`40x500+20000` -> connections per namespace: 40 of 500, then one of 20,000."""
    out: list[int] = []
    for term in text.split("+"):
        count, _, conns = term.strip().rpartition("x")
        if not conns.isdigit() or (count and not count.isdigit()) or int(conns) < 1:
            raise SystemExit(f"--layout: {term!r} is neither NxC nor C (C connections, N namespaces)")
        out += [int(conns)] * (int(count) if count else 1)
    return out


def tcp_alloc() -> int:
    """TCP sockets of the machine (every namespace: the `alloc` counter is global)."""
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                fields = line.split()
                return int(fields[fields.index("alloc") + 1])
    return 0


def wait_drained(baseline: int, slack: int, timeout: float = 60.0) -> int:
    """Waits until the machine's TCP sockets are back near `baseline` (a deleted
    namespace's sockets go in the kernel's cleanup work, after `ip netns del` returns)."""
    deadline = time.monotonic() + timeout
    while tcp_alloc() > baseline + slack and time.monotonic() < deadline:
        time.sleep(0.5)
    return tcp_alloc()


def metric(text: str, name: str, labels: str = "") -> float:
    """Sum of a family's samples whose labels contain `labels`; NaN if none."""
    total, seen = 0.0, False
    for line in text.splitlines():
        if line.startswith(name) and line[len(name):len(name) + 1] in ("{", " ") and labels in line:
            total += float(line.rsplit(" ", 1)[1])
            seen = True
    return total if seen else float("nan")


def counted_in(text: str, names: list[str]) -> int:
    """Sockets network_connection_states counts in the namespaces `names`."""
    want = {f'netns="{n}"' for n in names}
    total = 0
    for line in text.splitlines():
        if line.startswith("network_connection_states{"):
            m = re.search(r'netns="[^"]*"', line)
            if m and m.group(0) in want:
                total += int(float(line.rsplit(" ", 1)[1]))
    return total


def cost(args) -> int:
    if args.layout:
        conns = parse_layout(args.layout)
        shape = args.layout
    else:
        conns = [args.sockets // args.namespaces // 2] * args.namespaces
        shape = f"{args.namespaces} x {args.sockets // args.namespaces} sockets"
    sources = [s for s in args.sources.split(",") if s]
    extra = [] if args.quality else ["--no-collector.quality"]
    load = {}
    start_alloc = tcp_alloc()

    make_ns("bench-one", 2 * sum(conns))
    holders = Holders([("bench-one", sum(conns))], args.per_process)
    host_sockets = holders.made
    log(f"host mode: {host_sockets} sockets in one namespace")
    try:
        e = Exporter(args.exporter, "bench-one", 9101, extra)
        try:
            e.scrape()
            host = [e.scrapes(args.batch) for _ in range(args.rounds)]
            load["host"] = open("/proc/loadavg").read().split()[0]
            host_rss = status(e.pid)["VmRSS"]
        finally:
            e.stop()
    finally:
        holders.stop()
    sh("ip", "netns", "del", "bench-one")
    left = wait_drained(start_alloc, 64 + len(conns))
    log(f"host phase over: {left} TCP sockets on the machine (were {start_alloc})")

    names = [f"bench-{i:03d}" for i in range(len(conns))]
    for n, c in zip(names, conns):
        make_ns(n, 2 * c)
    make_ns("bench-root")
    holders = Holders(list(zip(names, conns)), args.per_process)
    all_sockets = holders.made
    log(f"all mode: {all_sockets} sockets in {len(names)} namespaces ({shape})")
    runs = {}
    bad = []
    try:
        for i, source in enumerate(sources):
            e = Exporter(args.exporter, "bench-root", 9102 + i,
                         ["--collector.namespaces=all", f"--collector.namespaces.source={source}", *extra])
            try:
                first = e.scrape()
                rounds = [e.scrapes(args.batch) for _ in range(args.rounds)]
                load[source] = open("/proc/loadavg").read().split()[0]
                body = e.scrape(keep=True)
                st = status(e.pid)
            finally:
                e.stop()
            in_use = 'conn_exporter_socket_source_info{source="%s"} 1' % source
            if in_use not in body:
                bad.append(f"{source}: the exporter does not read with {source} ({in_use} missing)")
            counted = counted_in(body, names)
            if counted != all_sockets:
                bad.append(f"{source}: network_connection_states counts {counted} sockets in the bench's "
                           f"namespaces, {all_sockets} are held")
            entries = metric(body, "conn_exporter_socket_table_entries")
            if source == "ebpf" and not entries >= all_sockets:
                bad.append(f"ebpf: the table holds {entries:.0f} entries, {all_sockets} sockets are held")
            runs[source] = {"first": first, "rounds": rounds, "threads": st["Threads"], "rss": st["VmRSS"],
                            "entries": entries, "counted": counted,
                            "fallbacks": metric(body, "conn_exporter_socket_table_fallbacks_total")}
    finally:
        holders.stop()

    hw = statistics.median(x[0] for x in host)
    hc = statistics.mean(x[1] for x in host)
    hps = hc / host_sockets
    print(f"binary {args.exporter} (sha256 {sha256(args.exporter)[:16]}); {args.rounds} rounds of "
          f"{args.batch} scrape(s); {os.cpu_count()} CPUs, kernel {os.uname().release}; "
          f"quality collector {'on' if args.quality else 'off'}; private ehash {'yes' if PRIVATE_EHASH else 'no'}")
    print(f"host mode, {host_sockets} sockets, 1 namespace: wall {summary([x[0] for x in host])}, "
          f"CPU median {spread([x[1] for x in host], 1000, '.0f')} ms/scrape (mean {hc * 1000:.1f}), "
          f"{hps * 1e6:.2f} us/socket, body {host[0][2]} B, RSS {host_rss} KiB; load {load['host']}")
    ratio = {}
    for source, r in runs.items():
        rs = r["rounds"]
        aw = statistics.median(x[0] for x in rs)
        ac = statistics.mean(x[1] for x in rs)
        aps = ac / all_sockets
        ratio[source] = (aw / hw, aps / max(hps, 1e-12))
        first = r["first"]
        table = (f"; table entries {r['entries']:.0f}, fallbacks {r['fallbacks']:.0f}" if source == "ebpf" else "")
        print(f"all mode, source {source}, {all_sockets} sockets in {len(names)} namespaces ({shape}): "
              f"wall {summary([x[0] for x in rs])}, CPU median {spread([x[1] for x in rs], 1000, '.0f')} ms/scrape "
              f"(mean {ac * 1000:.1f}), {aps * 1e6:.2f} us/socket, body {rs[0][2]} B; first scrape "
              f"{first[0] * 1000:.0f} ms wall, {first[1] * 1000:.0f} ms CPU; {r['threads']} threads, "
              f"RSS {r['rss']} KiB; counted {r['counted']}{table}; load {load[source]}")
    bound = 2.0 if args.quick else args.bound
    for source, (w, c) in ratio.items():
        print(f"ratio all/host, {source}: wall {w:.2f}, CPU per socket {c:.2f}")
    if args.quick:
        print(f"quick: at {sum(conns)} connections a host scrape is a few 10 ms ticks of CPU and all mode's "
              f"fixed costs per scrape weigh more, so the bound checked is {bound} (the full bound is "
              f"{args.bound}: run without --quick for the issue's figure)")
    for b in bad:
        print(f"FAIL: {b}", file=sys.stderr)
    if "ebpf" in ratio:
        ok = ratio["ebpf"][1] <= bound
        print(f"bound: ebpf CPU per socket all/host {ratio['ebpf'][1]:.2f} {'<=' if ok else '>'} {bound}"
              f"{'' if ok else ' (FAIL)'}")
    else:
        ok = ratio[sources[0]][0] <= bound
        print(f"bound: {sources[0]} wall all/host {ratio[sources[0]][0]:.2f} {'<=' if ok else '>'} {bound}"
              f"{'' if ok else ' (FAIL)'}")
    print(f"load {open('/proc/loadavg').read().strip()}")
    if args.no_check:
        return 0
    return 0 if ok and not bad else 1


def sha256(path: str) -> str:
    import hashlib
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def private_world(tools: tuple[str, ...], tmpfs: str, home: str) -> int | None:
    """Re-runs this script under `unshare --mount --pid --fork --mount-proc` (its exit
    status returned), or, already there, mounts a tmpfs named `tmpfs` on /run/netns and
    moves this process into a namespace `home` of its own, then returns None: the
    exporters find only the bench's namespaces and processes."""
    if os.environ.get(MARK) != "1":
        for tool in ("unshare", *tools):
            if not shutil.which(tool):
                raise SystemExit(f"{tool} is needed")
        env = dict(os.environ, **{MARK: "1"})
        argv = [sys.executable, os.path.abspath(sys.argv[0]), *sys.argv[1:]]
        # SIGTERM or SIGINT here ends unshare, which passes SIGTERM to the script inside
        # (--kill-child): its `finally` blocks stop what it started, and when it exits,
        # the PID namespace's other processes and the namespaces on the tmpfs go with it.
        p = subprocess.Popen(["unshare", "--mount", "--pid", "--fork", "--mount-proc", "--kill-child=SIGTERM",
                              *argv], env=env)

        def forward(signum, _frame):
            p.send_signal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        return p.wait()
    # The init of a PID namespace ignores signals it has no handler for.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    os.makedirs("/run/netns", exist_ok=True)
    sh("mount", "-t", "tmpfs", tmpfs, "/run/netns")
    make_ns(home)
    enter(home)
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["cost"])
    ap.add_argument("--exporter", default=os.environ.get("CONN_EXPORTER_BIN", "target/release/conn-exporter"))
    ap.add_argument("--sockets", type=int, default=100_000, help="sockets in all (without --layout)")
    ap.add_argument("--namespaces", type=int, default=100, help="namespaces (without --layout)")
    ap.add_argument("--layout", help="connections per namespace, e.g. 40x500+20000 (40 namespaces of 500 "
                                     "connections and one of 20,000); replaces --namespaces and --sockets")
    ap.add_argument("--sources", default="ebpf,netlink",
                    help="--collector.namespaces.source of the all-mode runs, in this order (ebpf, netlink, auto)")
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--batch", type=int, default=1, help="scrapes per round (CPU and wall per scrape averaged)")
    ap.add_argument("--bound", type=float, default=1.3, help="most ebpf CPU per socket all/host")
    ap.add_argument("--quick", action="store_true",
                    help="10x1000+10000, 3 rounds of 5 scrapes, bound 2.0 (CI; about 10 s)")
    ap.add_argument("--quality", action="store_true", help="leave the quality collector on (its sampler)")
    ap.add_argument("--per-process", type=int, default=16000,
                    help="most sockets one holder process opens (below RLIMIT_NOFILE)")
    ap.add_argument("--private-ehash", action="store_true",
                    help="give each namespace its own TCP hash table (net.ipv4.tcp_child_ehash_entries)")
    ap.add_argument("--no-check", action="store_true", help="report only; exit 0")
    args = ap.parse_args()
    if args.quick:
        args.layout = args.layout or "10x1000+10000"
        args.rounds, args.batch = 3, 5
    for s in args.sources.split(","):
        if s not in ("ebpf", "netlink", "auto"):
            ap.error("--sources: ebpf, netlink or auto, comma-separated")
    if args.layout:
        parse_layout(args.layout)
    args.exporter = os.path.abspath(args.exporter)
    # This process, and every command it starts, lives in a namespace of the bench too,
    # so that the namespace it came from (and that namespace's hash table) is not read.
    rc = private_world(("ip", "curl"), "bench-netns", "bench-home")
    if rc is not None:
        return rc
    global PRIVATE_EHASH
    PRIVATE_EHASH = int(args.private_ehash)
    try:
        return cost(args)
    finally:
        if PRIVATE_EHASH:
            with open("/proc/sys/net/ipv4/tcp_child_ehash_entries", "w") as f:
                f.write("0")


if __name__ == "__main__":
    sys.exit(main())
