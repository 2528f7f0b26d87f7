#!/usr/bin/env python3
"""A delay-and-loss line between two network namespaces, without netem.

This kernel has no netem, tbf or fq qdisc, but it has /dev/net/tun. The line is two
network namespaces, a client side and a server side, each with a TUN device, and a
forwarder (this file, in its own process) that reads every IP packet from one TUN and
writes it to the other after holding it a fixed time:

    client ns                       forwarder                        server ns
    10.77.0.1/24 fd77::1/64  dl-c <-- hold delay_c2s_ms, drop -->  dl-s  10.77.0.2/24 fd77::2/64

- Delays are per direction. A direction's delay is constant, so a FIFO per direction
  keeps order (no reordering) and its head is always the next deadline; the loop
  sleeps in select() until the next deadline or a packet, on the monotonic clock. A
  packet is never released early; it is late by the loop's latency (tens of µs).
- Loss: with drop_every=n, every n-th TCP data segment (TCP payload > 0, IPv4 or IPv6,
  all flows of that direction counted together) of the chosen direction(s) is dropped.
  Pure ACKs, SYNs and FINs without data are never dropped or counted. Retransmissions
  are data segments like any other: they count, and every n-th is dropped too.
- The counts (packets forwarded, data segments seen, segments dropped, per direction)
  are written as one JSON object to the status file (atomically) and as a JSON line on
  stdout: at start ("ready"), every status interval when they changed, on SIGUSR1, and
  at exit ("final").
- A delay spike: `hold` (the API's line.hold("c2s", 1000), or {"cmd": "hold", ...} on
  stdin with --commands) releases nothing in a direction for that long; what is held
  leaves in order when it ends. A spike longer than the RTO makes the sender
  retransmit spuriously, which the receiver reports by DSACK.
- The namespaces are created by the line and deleted when it stops (SIGTERM, SIGINT,
  or the context manager's exit). Existing namespaces of the same names are an error.

TUN devices carry no GSO without IFF_VNET_HDR, so every TCP segment crosses the line
as its own packet (at most the MTU) and "every n-th data segment" means wire segments.

Python API (the forwarder runs in a child process; root needed):

    from delayline import DelayLine, netns
    with DelayLine("dl-client", "dl-server", delay_ms=20, drop_every=50,
                   drop_direction="c2s") as line:
        ...                        # sockets made inside `with netns(line.client_ns):`
        line.status()["dropped"]   # {"c2s": 12, "s2c": 0}, exact at the moment asked

Also here: `netns(name)`, a context manager that moves the calling thread into a
namespace (sockets created there stay in it), and `StalledReceiver`, a server that
accepts and never reads while a client keeps writing (rwnd_limited, Recv-Q, Send-Q
grow).

CLI:

    delayline.py run --client-ns C --server-ns S --delay-ms 20 [--delay-s2c-ms 5]
                     [--drop-every 50 --drop-direction c2s] [--status FILE] [--commands]
    delayline.py stall --client-ns C --server-ns S [--address 10.77.0.2] [--port 7070]

`run` prints a JSON line at start ({"event": "ready", ...}) and at exit (
{"event": "final", ...}); SIGUSR1 makes it print (and write) the current counts.
`stall` needs a line (or any route) between the namespaces; it prints "ready" once the
client has filled its send buffer and holds the connection until killed.
"""

import argparse
import collections
import contextlib
import ctypes
import fcntl
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

CLONE_NEWNET = 0x40000000
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000

DEFAULTS = {
    "client_if": "dl-c",
    "server_if": "dl-s",
    "client_addr4": "10.77.0.1",
    "server_addr4": "10.77.0.2",
    "prefix4": 24,
    "client_addr6": "fd77::1",
    "server_addr6": "fd77::2",
    "prefix6": 64,
}

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd):
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def netns(name):
    """Runs the body with the calling thread in network namespace NAME (/run/netns/NAME).
    Sockets and TUN devices created in the body belong to that namespace for their
    whole life; the thread returns to its previous namespace afterwards."""
    back = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(back)
    finally:
        os.close(target)
        os.close(back)


def sh(*args, check=True):
    """Runs a command (no shell), returning its stdout; the error says what failed."""
    p = subprocess.run(args, capture_output=True, text=True)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: exit {p.returncode}: {p.stderr.strip()}")
    return p.stdout


def open_tun(ns, ifname):
    """Creates TUN device IFNAME inside namespace NS; returns its non-blocking fd."""
    with netns(ns):
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
        try:
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", ifname.encode(), IFF_TUN | IFF_NO_PI))
        except OSError:
            os.close(fd)
            raise
    return fd


def setup_side(ns, ifname, addr4, prefix4, addr6, prefix6):
    """Addresses and brings up a side's TUN and loopback. The on-link prefixes route the
    other side's addresses through the TUN (a TUN has no neighbours to resolve)."""
    sh("ip", "-n", ns, "link", "set", "lo", "up")
    # No router solicitations or DAD on the TUN: nothing but the test's traffic crosses.
    for key, val in (("accept_dad", "0"), ("router_solicitations", "0"), ("accept_ra", "0")):
        sh("ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv6.conf.{ifname}.{key}={val}", check=False)
    sh("ip", "-n", ns, "addr", "add", f"{addr4}/{prefix4}", "dev", ifname)
    sh("ip", "-n", ns, "-6", "addr", "add", f"{addr6}/{prefix6}", "dev", ifname, "nodad")
    sh("ip", "-n", ns, "link", "set", ifname, "up")


# --- packet classification --------------------------------------------------------------

def tcp_payload_len(pkt):
    """TCP payload length of an IP packet, or -1 when it is not TCP (or is a fragment or
    too short to tell)."""
    if len(pkt) < 20:
        return -1
    version = pkt[0] >> 4
    if version == 4:
        ihl = (pkt[0] & 0x0F) * 4
        if pkt[9] != 6:
            return -1
        flags_frag = (pkt[6] << 8) | pkt[7]
        if flags_frag & 0x3FFF:  # MF set or a non-zero offset: not a whole segment
            return -1
        total = (pkt[2] << 8) | pkt[3]
        if len(pkt) < ihl + 20:
            return -1
        doff = (pkt[ihl + 12] >> 4) * 4
        return total - ihl - doff
    if version == 6:
        if len(pkt) < 60 or pkt[6] != 6:  # extension headers: not TCP as far as we count
            return -1
        plen = (pkt[4] << 8) | pkt[5]
        doff = (pkt[40 + 12] >> 4) * 4
        return plen - doff
    return -1


# --- the forwarder ------------------------------------------------------------------------

class Direction:
    """One direction: its delay, its FIFO of (deadline, packet), its counts."""

    def __init__(self, name, delay_ms, drop_every, src_fd, dst_fd):
        self.name = name
        self.delay = delay_ms / 1000.0
        self.drop_every = drop_every
        self.src, self.dst = src_fd, dst_fd
        self.queue = collections.deque()
        self.held_until = 0.0  # monotonic time before which nothing is released
        self.holds = 0
        self.packets = 0  # forwarded
        self.data_segments = 0  # TCP payload > 0, seen (dropped ones included)
        self.dropped = 0
        self.write_errors = 0
        self.max_queued = 0

    def receive(self, now):
        """Reads every packet waiting on the source TUN (bounded batch); queues or drops."""
        n = 0
        while n < 512:
            try:
                pkt = os.read(self.src, 65536)
            except BlockingIOError:
                break
            n += 1
            if tcp_payload_len(pkt) > 0:
                self.data_segments += 1
                if self.drop_every and self.data_segments % self.drop_every == 0:
                    self.dropped += 1
                    continue
            self.queue.append((now + self.delay, pkt))
        if len(self.queue) > self.max_queued:
            self.max_queued = len(self.queue)
        return n

    def next_deadline(self):
        return max(self.queue[0][0], self.held_until) if self.queue else None

    def release(self, now):
        if now < self.held_until:
            return
        q = self.queue
        while q and q[0][0] <= now:
            _, pkt = q.popleft()
            try:
                os.write(self.dst, pkt)
                self.packets += 1
            except OSError:
                self.write_errors += 1

    def counts(self):
        return {"packets": self.packets, "data_segments": self.data_segments,
                "dropped": self.dropped, "write_errors": self.write_errors, "holds": self.holds,
                "queued": len(self.queue), "max_queued": self.max_queued}


def forward(args):
    """The forwarder process: creates both sides, forwards until SIGTERM/SIGINT, cleans up."""
    for ns in (args.client_ns, args.server_ns):
        if os.path.exists(f"/run/netns/{ns}"):
            raise SystemExit(f"delayline: namespace {ns} exists already (another line, or left over)")
    created = []
    fds = []
    try:
        for ns in (args.client_ns, args.server_ns):
            sh("ip", "netns", "add", ns)
            created.append(ns)
        fd_c = open_tun(args.client_ns, args.client_if)
        fds.append(fd_c)
        fd_s = open_tun(args.server_ns, args.server_if)
        fds.append(fd_s)
        setup_side(args.client_ns, args.client_if, args.client_addr4, args.prefix4,
                   args.client_addr6, args.prefix6)
        setup_side(args.server_ns, args.server_if, args.server_addr4, args.prefix4,
                   args.server_addr6, args.prefix6)
        drops = {"c2s": args.drop_direction in ("c2s", "both"),
                 "s2c": args.drop_direction in ("s2c", "both")}
        c2s = Direction("c2s", args.delay_c2s_ms, args.drop_every if drops["c2s"] else 0, fd_c, fd_s)
        s2c = Direction("s2c", args.delay_s2c_ms, args.drop_every if drops["s2c"] else 0, fd_s, fd_c)
        loop(args, c2s, s2c, fd_c, fd_s)
    finally:
        for fd in fds:
            os.close(fd)
        for ns in created:
            sh("ip", "netns", "del", ns, check=False)


def loop(args, c2s, s2c, fd_c, fd_s):
    stop = False
    report = False
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)

    def on_stop(*_):
        nonlocal stop
        stop = True

    def on_report(*_):
        nonlocal report
        report = True

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGUSR1, on_report)

    seq = 0
    last_written = None

    def write_status(event):
        nonlocal seq, last_written
        seq += 1
        st = {
            "event": event, "seq": seq, "pid": os.getpid(),
            "client_ns": args.client_ns, "server_ns": args.server_ns,
            "delay_ms": {"c2s": args.delay_c2s_ms, "s2c": args.delay_s2c_ms},
            "drop_every": args.drop_every, "drop_direction": args.drop_direction,
            "dropped": {"c2s": c2s.dropped, "s2c": s2c.dropped},
            "c2s": c2s.counts(), "s2c": s2c.counts(),
        }
        line = json.dumps(st, sort_keys=True)
        if args.status:
            tmp = args.status + ".tmp"
            with open(tmp, "w") as f:
                f.write(line + "\n")
            os.replace(tmp, args.status)
        print(line, flush=True)
        last_written = (c2s.dropped, s2c.dropped, c2s.packets, s2c.packets)

    write_status("ready")
    next_status = time.monotonic() + args.status_interval
    rlist = [fd_c, fd_s, wake_r]
    # Commands, one JSON object a line on stdin: {"cmd": "status"}, or
    # {"cmd": "hold", "direction": "c2s"|"s2c"|"both", "ms": N}: release nothing in that
    # direction for N ms (a delay spike: what is held leaves in order when it ends).
    cmd_buf = b""
    stdin_fd = sys.stdin.fileno() if args.commands else None
    if stdin_fd is not None:
        os.set_blocking(stdin_fd, False)
        rlist.append(stdin_fd)

    def command(text):
        nonlocal report
        try:
            c = json.loads(text)
            if c["cmd"] == "status":
                report = True
            elif c["cmd"] == "hold":
                until = time.monotonic() + float(c["ms"]) / 1000.0
                for d in (c2s, s2c):
                    if c.get("direction", "both") in (d.name, "both"):
                        d.held_until = max(d.held_until, until)
                        d.holds += 1
                report = True
            else:
                raise KeyError(c["cmd"])
        except (ValueError, KeyError, TypeError) as e:
            print(json.dumps({"event": "error", "command": text, "error": repr(e)}), flush=True)

    while not stop:
        now = time.monotonic()
        c2s.release(now)
        s2c.release(now)
        deadline = next_status
        for d in (c2s, s2c):
            nd = d.next_deadline()
            if nd is not None and nd < deadline:
                deadline = nd
        timeout = max(0.0, deadline - time.monotonic())
        ready, _, _ = select.select(rlist, [], [], timeout)
        now = time.monotonic()
        for fd in ready:
            if fd == fd_c:
                c2s.receive(now)
            elif fd == fd_s:
                s2c.receive(now)
            elif fd == stdin_fd:
                try:
                    data = os.read(stdin_fd, 4096)
                except BlockingIOError:
                    data = None
                if data == b"":
                    rlist.remove(stdin_fd)  # no more commands; keep forwarding
                    stdin_fd = None
                elif data:
                    cmd_buf += data
                    while b"\n" in cmd_buf:
                        text, cmd_buf = cmd_buf.split(b"\n", 1)
                        if text.strip():
                            command(text.decode())
            else:
                try:
                    while os.read(wake_r, 512):
                        pass
                except BlockingIOError:
                    pass
        if report:
            report = False
            write_status("status")
        if now >= next_status:
            next_status = now + args.status_interval
            if last_written != (c2s.dropped, s2c.dropped, c2s.packets, s2c.packets):
                write_status("status")
    # Packets still held are released on time, so a clean stop does not turn into loss.
    end = time.monotonic() + max(c2s.delay, s2c.delay) + 0.01
    while (c2s.queue or s2c.queue) and time.monotonic() < end:
        now = time.monotonic()
        c2s.release(now)
        s2c.release(now)
        time.sleep(0.0005)
    write_status("final")


# --- the Python API ---------------------------------------------------------------------

class DelayLine:
    """Starts the forwarder (a child process) and waits until both sides are up;
    stops it and deletes the namespaces on exit."""

    def __init__(self, client_ns, server_ns, delay_ms=20, delay_c2s_ms=None, delay_s2c_ms=None,
                 drop_every=0, drop_direction="c2s", status_interval=0.1, **addrs):
        self.client_ns, self.server_ns = client_ns, server_ns
        self.delay_c2s_ms = delay_ms if delay_c2s_ms is None else delay_c2s_ms
        self.delay_s2c_ms = delay_ms if delay_s2c_ms is None else delay_s2c_ms
        self.drop_every, self.drop_direction = drop_every, drop_direction
        self.status_interval = status_interval
        unknown = set(addrs) - set(DEFAULTS)
        if unknown:
            raise TypeError(f"unknown DelayLine arguments: {sorted(unknown)}")
        for key, val in DEFAULTS.items():
            setattr(self, key, addrs.get(key, val))
        self.proc = None
        self.final = None
        self._lines = []
        self._eof = False
        self._cond = threading.Condition()

    def argv(self):
        a = [sys.executable, os.path.abspath(__file__), "run",
             "--client-ns", self.client_ns, "--server-ns", self.server_ns,
             "--delay-c2s-ms", str(self.delay_c2s_ms), "--delay-s2c-ms", str(self.delay_s2c_ms),
             "--drop-every", str(self.drop_every), "--drop-direction", self.drop_direction,
             "--status-interval", str(self.status_interval), "--commands"]
        for key in DEFAULTS:
            a += ["--" + key.replace("_", "-"), str(getattr(self, key))]
        return a

    def _reader(self):
        for line in self.proc.stdout:
            try:
                st = json.loads(line)
            except ValueError:
                continue
            with self._cond:
                self._lines.append(st)
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def _wait(self, pred, timeout, what):
        end = time.monotonic() + timeout
        with self._cond:
            while True:
                for st in reversed(self._lines):
                    if pred(st):
                        return st
                if self._eof:
                    break
                left = end - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, 0.2))
        err = self.proc.stderr.read() if self.proc.poll() is not None else ""
        raise RuntimeError(f"delay line: no {what} within {timeout}s (exit {self.proc.poll()}): {err}")

    def __enter__(self):
        self.proc = subprocess.Popen(self.argv(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        threading.Thread(target=self._reader, daemon=True).start()
        self._wait(lambda st: st.get("event") == "ready", 10, "ready line")
        return self

    def status(self, timeout=5):
        """The forwarder's counts now (asks it with SIGUSR1 and waits for the answer)."""
        with self._cond:
            seq = self._lines[-1]["seq"] if self._lines else 0
        self.proc.send_signal(signal.SIGUSR1)
        return self._wait(lambda st: st["seq"] > seq, timeout, "status line")

    def hold(self, direction, ms, timeout=5):
        """Releases nothing in DIRECTION ("c2s", "s2c", "both") for MS ms: a delay spike
        that keeps order. Returns the status line that acknowledges it."""
        with self._cond:
            seq = self._lines[-1]["seq"] if self._lines else 0
        self.proc.stdin.write(json.dumps({"cmd": "hold", "direction": direction, "ms": ms}) + "\n")
        self.proc.stdin.flush()
        return self._wait(lambda st: st["seq"] > seq, timeout, "hold acknowledgement")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.final = self._wait(lambda st: st.get("event") == "final", 5, "final line")
        return self.final

    def __exit__(self, *exc):
        self.stop()
        return False


def _nonblocking_fill(sock, chunk, until):
    """Writes until the socket's send buffer is full (EAGAIN) or UNTIL passes."""
    total = 0
    sock.setblocking(False)
    while time.monotonic() < until:
        try:
            total += sock.send(chunk)
        except BlockingIOError:
            return total, True
    return total, False


class StalledReceiver:
    """A server in SERVER_NS that accepts one connection and never reads, and a client in
    CLIENT_NS that connects and keeps writing (a thread retries whenever the send buffer
    has room). The receiver's window closes: on the client, `ss -tin` shows rwnd_limited
    growing and Send-Q full; on the server, Recv-Q holds what arrived.

        with StalledReceiver("dl-client", "dl-server", "10.77.0.2", 7070) as st:
            ...   # st.client, st.server (the accepted socket), st.written
    """

    def __init__(self, client_ns, server_ns, address="10.77.0.2", port=7070, rcvbuf=None):
        self.client_ns, self.server_ns = client_ns, server_ns
        self.address, self.port, self.rcvbuf = address, port, rcvbuf
        self.written = 0
        self._stop = threading.Event()

    def __enter__(self):
        fam = socket.AF_INET6 if ":" in self.address else socket.AF_INET
        with netns(self.server_ns):
            self.listener = socket.socket(fam, socket.SOCK_STREAM)
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.rcvbuf:
                self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
            self.listener.bind((self.address, self.port))
            self.listener.listen(4)
        with netns(self.client_ns):
            self.client = socket.create_connection((self.address, self.port), timeout=10)
        self.server, _ = self.listener.accept()
        self._thread = threading.Thread(target=self._write, daemon=True)
        self._thread.start()
        return self

    def _write(self):
        chunk = b"x" * 65536
        while not self._stop.is_set():
            n, _ = _nonblocking_fill(self.client, chunk, time.monotonic() + 0.05)
            self.written += n
            select.select([], [self.client], [], 0.05)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(2)
        for s in (self.client, self.server, self.listener):
            s.close()
        return False


# --- CLI -------------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="create the namespaces and forward until SIGTERM/SIGINT")
    run.add_argument("--client-ns", required=True)
    run.add_argument("--server-ns", required=True)
    run.add_argument("--delay-ms", type=float, default=20.0, help="delay each way (default 20)")
    run.add_argument("--delay-c2s-ms", type=float, help="client->server delay (default --delay-ms)")
    run.add_argument("--delay-s2c-ms", type=float, help="server->client delay (default --delay-ms)")
    run.add_argument("--drop-every", type=int, default=0,
                     help="drop every n-th TCP data segment (0: none)")
    run.add_argument("--drop-direction", choices=("c2s", "s2c", "both"), default="c2s")
    run.add_argument("--status", help="file rewritten with the JSON counts")
    run.add_argument("--commands", action="store_true",
                     help='read commands from stdin, one JSON a line: {"cmd": "status"}, '
                          '{"cmd": "hold", "direction": "c2s", "ms": 500} (a delay spike, in order)')
    run.add_argument("--status-interval", type=float, default=1.0,
                     help="seconds between status writes when counts changed (default 1)")
    for key, val in DEFAULTS.items():
        run.add_argument("--" + key.replace("_", "-"), type=type(val), default=val)
    stall = sub.add_parser("stall", help="a client that writes to a server that never reads")
    stall.add_argument("--client-ns", required=True)
    stall.add_argument("--server-ns", required=True)
    stall.add_argument("--address", default=DEFAULTS["server_addr4"])
    stall.add_argument("--port", type=int, default=7070)
    args = ap.parse_args(argv)
    if args.cmd == "run":
        if args.delay_c2s_ms is None:
            args.delay_c2s_ms = args.delay_ms
        if args.delay_s2c_ms is None:
            args.delay_s2c_ms = args.delay_ms
        if args.drop_every < 0:
            ap.error("--drop-every must be >= 0")
        forward(args)
    else:
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        with StalledReceiver(args.client_ns, args.server_ns, args.address, args.port) as st:
            print(json.dumps({"event": "ready", "client": st.client.getsockname()[:2],
                              "server": st.server.getsockname()[:2]}), flush=True)
            while not stop.wait(1):
                pass
            print(json.dumps({"event": "final", "written": st.written}), flush=True)


if __name__ == "__main__":
    main()
