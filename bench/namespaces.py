#!/usr/bin/env python3
"""Cost of --collector.namespaces=all (issue 11), in a world of its own.

  cost   100 network namespaces x 1,000 sockets read in `all` mode, against a
         `host`-mode scrape of 100,000 sockets in one namespace: wall time (median and
         range over --rounds) and exporter CPU per scrape; the first `all` scrape (which
         starts one thread per namespace) is reported apart. The issue's bound is
         all/host <= 1.3.

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
import shutil
import socket
import statistics
import subprocess
import sys
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
                os.close(ready_r)
                os.close(stop_w)
                # Earlier holders' stop pipes: kept open here, they would never close.
                for _, other in self.children:
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

    def stop(self) -> None:
        for pid, stop_w in self.children:
            os.close(stop_w)
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
        # `ip netns exec` execs the binary: the pid is the exporter's.
        self.pid = self.proc.pid

    def scrape(self) -> tuple[float, float, int]:
        """(wall seconds, exporter CPU seconds, body bytes) of one full scrape."""
        cpu = cpu_seconds(self.pid)
        t = time.perf_counter()
        out = subprocess.run(["ip", "netns", "exec", self.ns, "curl", "-sSf", "-o", "/dev/null", "-w",
                              "%{size_download} %{time_total}", f"http://127.0.0.1:{self.port}/metrics"],
                             check=True, capture_output=True, text=True).stdout.split()
        wall = float(out[1]) if out else time.perf_counter() - t
        return wall, cpu_seconds(self.pid) - cpu, int(out[0])

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()


def summary(xs: list[float]) -> str:
    return f"median {statistics.median(xs) * 1000:.1f} ms (min {min(xs) * 1000:.1f}, max {max(xs) * 1000:.1f})"


def cost(args) -> int:
    make_ns("bench-one", args.sockets)
    holders = Holders([("bench-one", args.sockets // 2)], args.per_process)
    log(f"host mode: {holders.made} sockets in one namespace")
    e = Exporter(args.exporter, "bench-one", 9101, [])
    e.scrape()
    host = [e.scrape() for _ in range(args.rounds)]
    e.stop()
    holders.stop()
    sh("ip", "netns", "del", "bench-one")

    names = [f"bench-{i:03d}" for i in range(args.namespaces)]
    per_ns = args.sockets // args.namespaces
    for n in names:
        make_ns(n, per_ns)
    make_ns("bench-root")
    holders = Holders([(n, per_ns // 2) for n in names], args.per_process)
    log(f"all mode: {holders.made} sockets in {args.namespaces} namespaces")
    e = Exporter(args.exporter, "bench-root", 9102, ["--collector.namespaces=all"])
    first = e.scrape()
    all_ = [e.scrape() for _ in range(args.rounds)]
    threads = status(e.pid)["Threads"]
    e.stop()
    holders.stop()

    hw = statistics.median(x[0] for x in host)
    aw = statistics.median(x[0] for x in all_)
    hc = statistics.mean(x[1] for x in host)
    ac = statistics.mean(x[1] for x in all_)
    print(f"host mode, {args.sockets} sockets, 1 namespace: wall {summary([x[0] for x in host])}, "
          f"CPU {hc * 1000:.0f} ms/scrape, body {host[0][2]} B")
    print(f"all mode, {args.namespaces} x {per_ns} sockets: wall {summary([x[0] for x in all_])}, "
          f"CPU {ac * 1000:.0f} ms/scrape, body {all_[0][2]} B; first scrape {first[0] * 1000:.0f} ms "
          f"wall, {first[1] * 1000:.0f} ms CPU; {threads} threads")
    print(f"ratio all/host: wall {aw / hw:.2f}, CPU {ac / max(hc, 1e-9):.2f} (bound 1.3); private ehash "
          f"{'yes' if PRIVATE_EHASH else 'no'}; {args.rounds} rounds, "
          f"{os.cpu_count()} CPUs, load {open('/proc/loadavg').read().split()[0]}")
    return 0 if aw / hw <= 1.3 or args.no_check else 1


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
        return subprocess.run(["unshare", "--mount", "--pid", "--fork", "--mount-proc", *argv], env=env).returncode
    os.makedirs("/run/netns", exist_ok=True)
    sh("mount", "-t", "tmpfs", tmpfs, "/run/netns")
    make_ns(home)
    enter(home)
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["cost"])
    ap.add_argument("--exporter", default=os.environ.get("CONN_EXPORTER_BIN", "target/release/conn-exporter"))
    ap.add_argument("--sockets", type=int, default=100_000)
    ap.add_argument("--namespaces", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--per-process", type=int, default=16000,
                    help="most sockets one holder process opens (below RLIMIT_NOFILE)")
    ap.add_argument("--private-ehash", action="store_true",
                    help="give each namespace its own TCP hash table (net.ipv4.tcp_child_ehash_entries)")
    ap.add_argument("--no-check", action="store_true", help="report only; exit 0")
    args = ap.parse_args()
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
