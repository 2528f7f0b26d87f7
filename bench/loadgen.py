#!/usr/bin/env python3
"""Load generator for conn-exporter benchmarks: N real ESTABLISHED TCP connections on loopback.

Each connection has both ends in this machine, so N connections are 2*N sockets in state
ESTABLISHED (what `ss -tanH state established | wc -l` counts). The work is spread over
worker processes because RLIMIT_NOFILE is capped per process (20000 on the bench host): a
worker holds both ends of its connections, so it costs two descriptors per connection.

  * IPv4 clients bind to source addresses spread over 127.0.0.0/8 (127.W.X.Y, W = worker
    number + 1), a few hundred connections per address, with IP_BIND_ADDRESS_NO_PORT so the
    ephemeral port is chosen at connect() time by 4-tuple: ephemeral ports never run out.
  * About 10 % of the connections (--ipv6-share) go from ::1 to ::1 (the only IPv6 loopback
    address), spread over one listener port per worker.
  * Every socket has SO_LINGER {on, 0}: closing it sends RST, so no TIME_WAIT or orphan is
    left behind and teardown is immediate.

Readiness: once every worker has all its connections up, the parent prints `READY <n>` on
stdout (n = connections, i.e. half the sockets) and writes the same line to --ready-file.
It then holds until SIGTERM or SIGINT, tells the workers to exit (their sockets close with
RST as the process dies) and removes the ready file.

Python 3.11 standard library only. Run as root if sysctls must be changed (--set-sysctls).
"""

from __future__ import annotations

import argparse
import os
import resource
import select
import signal
import socket
import struct
import sys
import time

# Linux <netinet/in.h>: defer ephemeral port allocation from bind() to connect().
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
LINGER_RST = struct.pack("ii", 1, 0)
# Connections per IPv4 source address: far below the ephemeral range so that, even if
# IP_BIND_ADDRESS_NO_PORT were ignored, bind(addr, 0) would always find a free port.
PER_SOURCE_ADDRESS = 500
# Descriptors a worker keeps for itself (listeners, pipes, Python's own).
FD_RESERVE = 64


def log(msg: str) -> None:
    print(f"loadgen: {msg}", file=sys.stderr, flush=True)


def read_sysctl(name: str) -> str | None:
    try:
        with open("/proc/sys/" + name.replace(".", "/")) as f:
            return f.read().strip()
    except OSError:
        return None


def write_sysctl(name: str, value: str) -> None:
    with open("/proc/sys/" + name.replace(".", "/"), "w") as f:
        f.write(value)
    log(f"set {name} = {value}")


def raise_nofile() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft


def check_host(n: int, n6_per_worker: int, workers: int, set_sysctls: bool) -> list[str]:
    """Check (and with set_sysctls, fix) the kernel settings a run of n connections needs.

    Returns the problems that remain; an empty list means the host is adequate.
    """
    problems: list[str] = []
    sockets = 2 * n
    wanted: list[tuple[str, int, str]] = []  # (sysctl, minimum, why)

    lo, hi = (int(x) for x in (read_sysctl("net.ipv4.ip_local_port_range") or "32768 60999").split())
    ports = hi - lo + 1
    # IPv6 clients all come from ::1, so one worker's IPv6 connections to its own listener
    # port share the ephemeral range (IPv4 ones use a few hundred per source address).
    if max(n6_per_worker, PER_SOURCE_ADDRESS) > ports - 1000:
        problems.append(f"net.ipv4.ip_local_port_range {lo}-{hi} has {ports} ports, "
                        f"need > {n6_per_worker + 1000} per destination")

    # Descriptors system-wide: the sockets plus slack for everything else.
    wanted.append(("fs.file-max", sockets + 100_000, "one file per socket"))
    # Sockets whose close could not send RST would become orphans; with SO_LINGER 0 there
    # should be none, but a crashing worker can leave some.
    wanted.append(("net.ipv4.tcp_max_orphans", 65536, "headroom if a worker dies"))
    # If connection tracking is active (some netfilter rule needs it, which shows as a
    # non-zero entry count), each loopback connection is one entry. When no rule uses it,
    # as on the bench host, the count stays 0 and the limit does not apply.
    ct_count = read_sysctl("net.netfilter.nf_conntrack_count")
    if ct_count is not None and int(ct_count) > 0:
        wanted.append(("net.netfilter.nf_conntrack_max", n + 50_000,
                       "one conntrack entry per connection when netfilter hooks are active"))
    for name, minimum, why in wanted:
        cur = read_sysctl(name)
        if cur is None:
            continue
        if int(cur.split()[0]) < minimum:
            if set_sysctls:
                write_sysctl(name, str(minimum))
            else:
                problems.append(f"{name} = {cur} < {minimum} ({why}); rerun with --set-sysctls")

    somaxconn = int(read_sysctl("net.core.somaxconn") or "4096")
    if somaxconn < 128:
        problems.append(f"net.core.somaxconn = {somaxconn} is too small for batched accepts")

    # Memory: an idle ESTABLISHED TCP socket costs roughly 2.5-3.5 KiB of kernel memory
    # (sock, file, dentry/inode); no data is sent, so tcp_mem is not touched.
    try:
        with open("/proc/meminfo") as f:
            avail_kib = next(int(l.split()[1]) for l in f if l.startswith("MemAvailable:"))
        need_kib = sockets * 4 + workers * 30_000
        if need_kib > avail_kib * 0.8:
            problems.append(f"about {need_kib // 1024} MiB needed, {avail_kib // 1024} MiB available")
    except (OSError, StopIteration):
        pass
    return problems


def source_address(worker: int, j: int) -> str:
    """IPv4 source address for connection j of a worker: 127.(w+1).X.Y."""
    k = j // PER_SOURCE_ADDRESS
    return f"127.{worker + 1}.{k // 250}.{k % 250 + 1}"


def listener(family: int, addr: str, backlog: int) -> socket.socket:
    s = socket.socket(family, socket.SOCK_STREAM)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)  # inherited by accept()
    s.bind((addr, 0))
    s.listen(backlog)
    return s


def open_connections(worker: int, n4: int, n6: int, batch: int, keep: list) -> None:
    """Open n4 IPv4 and n6 IPv6 connections; both ends are appended to keep."""
    backlog = batch * 2
    plan = []
    if n4:
        plan.append((socket.AF_INET, listener(socket.AF_INET, "127.0.0.1", backlog), n4))
    if n6:
        plan.append((socket.AF_INET6, listener(socket.AF_INET6, "::1", backlog), n6))
    for family, lsock, count in plan:
        keep.append(lsock)
        dest = lsock.getsockname()
        done = 0
        while done < count:
            todo = min(batch, count - done)
            # connect() on loopback completes the handshake into the accept queue, so a
            # batch smaller than the backlog never blocks; then drain the queue.
            for j in range(done, done + todo):
                c = socket.socket(family, socket.SOCK_STREAM)
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
                if family == socket.AF_INET:
                    c.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                    c.bind((source_address(worker, j), 0))
                c.connect(dest)
                keep.append(c)
            for _ in range(todo):
                s, _ = lsock.accept()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
                keep.append(s)
            done += todo


def worker_main(worker: int, n4: int, n6: int, batch: int, wfd: int) -> None:
    """Body of a worker process: open the connections, report, sleep until killed."""
    def die(*_):
        # Exiting closes every socket; SO_LINGER 0 makes each close send RST.
        os._exit(0)

    signal.signal(signal.SIGTERM, die)
    signal.signal(signal.SIGINT, die)
    keep: list = []
    try:
        raise_nofile()
        open_connections(worker, n4, n6, batch, keep)
        conns = (len(keep) - (1 if n4 else 0) - (1 if n6 else 0)) // 2
        os.write(wfd, f"ok {worker} {conns}\n".encode())
    except Exception as e:  # report any failure to the parent, then stop
        os.write(wfd, f"err {worker} {type(e).__name__}: {e}\n".encode())
        os._exit(1)
    os.close(wfd)
    while True:
        signal.pause()


def count_established() -> int:
    """Sockets in ESTABLISHED, from /proc/net/tcp{,6} (state field 01)."""
    total = 0
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path, "rb") as f:
                next(f)
                total += sum(1 for line in f if line.split(None, 4)[3] == b"01")
        except OSError:
            pass
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", "--connections", type=int, required=True,
                    help="number of TCP connections (2 sockets each)")
    ap.add_argument("--ipv6-share", type=float, default=0.10,
                    help="fraction of connections over ::1 (default 0.10)")
    ap.add_argument("--per-worker", type=int, default=8000,
                    help="connections per worker process (default 8000; capped by RLIMIT_NOFILE)")
    ap.add_argument("--batch", type=int, default=512,
                    help="connects before each accept drain (default 512, < somaxconn)")
    ap.add_argument("--ready-file", help="write 'READY <n>' here when all connections are up")
    ap.add_argument("--set-sysctls", action="store_true",
                    help="raise sysctls found inadequate instead of failing")
    ap.add_argument("--force", action="store_true", help="start even if checks fail")
    ap.add_argument("--verify", action="store_true",
                    help="count ESTABLISHED sockets in /proc/net/tcp* before READY (slow at 500k)")
    ap.add_argument("--timeout", type=float, default=600.0,
                    help="give up if the connections are not up after this many seconds")
    args = ap.parse_args()

    n = args.connections
    if n < 0:
        ap.error("--connections must be >= 0")
    soft = raise_nofile()
    per_worker = min(args.per_worker, (soft - FD_RESERVE) // 2)
    if per_worker < 1:
        ap.error(f"RLIMIT_NOFILE {soft} too small")
    somaxconn = int(read_sysctl("net.core.somaxconn") or "4096")
    batch = max(1, min(args.batch, somaxconn // 2))
    workers = max(1, -(-n // per_worker))
    if workers > 254:
        ap.error(f"{n} connections need {workers} workers; at most 254 (raise --per-worker)")
    n6_total = round(n * args.ipv6_share)
    # Spread evenly: worker w gets its share of IPv4 and IPv6 connections.
    shares = []
    for w in range(workers):
        cnt = n // workers + (1 if w < n % workers else 0)
        c6 = n6_total // workers + (1 if w < n6_total % workers else 0)
        c6 = min(c6, cnt)
        shares.append((cnt - c6, c6))

    problems = check_host(n, max(s[1] for s in shares), workers, args.set_sysctls)
    for p in problems:
        log("host check: " + p)
    if problems and not args.force:
        log("refusing to start (use --force to try anyway)")
        return 2

    if args.ready_file:
        try:
            os.unlink(args.ready_file)
        except FileNotFoundError:
            pass

    stop = False

    def on_signal(signum, _frame):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    t0 = time.perf_counter()
    rfd, wfd = os.pipe()
    pids: list[int] = []
    for w, (n4, n6) in enumerate(shares):
        if n4 + n6 == 0:
            continue
        pid = os.fork()
        if pid == 0:
            os.close(rfd)
            worker_main(w, n4, n6, batch, wfd)
            os._exit(0)
        pids.append(pid)
    os.close(wfd)
    log(f"{n} connections ({n6_total} IPv6) in {len(pids)} workers, "
        f"{per_worker} max per worker, batch {batch}")

    def teardown() -> None:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for pid in pids:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        if args.ready_file:
            try:
                os.unlink(args.ready_file)
            except FileNotFoundError:
                pass

    up = 0
    reported = 0
    buf = b""
    deadline = time.monotonic() + args.timeout
    ok = True
    while reported < len(pids) and not stop:
        if time.monotonic() > deadline:
            log(f"timeout: {reported}/{len(pids)} workers ready")
            ok = False
            break
        try:
            r, _, _ = select.select([rfd], [], [], 1.0)
        except InterruptedError:
            continue
        if not r:
            continue
        chunk = os.read(rfd, 4096)
        if not chunk:
            log(f"workers exited early: {reported}/{len(pids)} reported")
            ok = False
            break
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            parts = line.decode().split(" ", 2)
            reported += 1
            if parts[0] == "ok":
                up += int(parts[2])
            else:
                log(f"worker {parts[1]} failed: {parts[2]}")
                ok = False
        if not ok:
            break
    os.close(rfd)
    if stop or not ok:
        teardown()
        return 0 if stop and ok else 1

    elapsed = time.perf_counter() - t0
    msg = f"{up} connections up in {elapsed:.1f} s"
    if args.verify:
        msg += f"; {count_established()} ESTABLISHED sockets on the host"
    log(msg)
    line = f"READY {up}"
    if args.ready_file:
        tmp = args.ready_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(line + "\n")
        os.replace(tmp, args.ready_file)
    print(line, flush=True)

    while not stop:
        # Hold; also notice a worker that died (its connections would be gone).
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid:
            log(f"worker pid {pid} exited unexpectedly (status {status})")
            pids.remove(pid)
            teardown()
            return 1
        time.sleep(0.5)
    t1 = time.perf_counter()
    teardown()
    log(f"torn down in {time.perf_counter() - t1:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
