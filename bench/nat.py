#!/usr/bin/env python3
"""Cost of the NAT collector (issue 21): what resolving NAT through conntrack
(--collector.nat) costs the exporter, beside the same exporter without it.

Everything runs in a network namespace of its own: the script re-runs itself under
`unshare --net` (loopback up), so the host's conntrack table is never read or written;
the namespace, and every entry put in its table, goes when the run ends. The global
net.netfilter.nf_conntrack_max (read-only inside a namespace) is raised from the caller's
namespace when a figure needs more entries, and set back afterwards.

The filler: a small ctnetlink client (NETLINK_NETFILTER, IPCTNL_MSG_CT_NEW with
NLM_F_CREATE|NLM_F_EXCL|NLM_F_ACK, a thousand messages per send) that puts translated
(DNAT-looking: the reply's source is not the original destination) TCP entries in
state ESTABLISHED, ASSURED, with a timeout of days, into the namespace's table; the count
is checked with `conntrack -C`, `conntrack -L` and nf_conntrack_count.

Figures (each exporter a private copy of the binary, started fresh; CPU is the process's
user+sys from /proc/PID/stat, 10 ms ticks; medians with the spread min..max):

  fill  N entries inserted: time, entries/s, kernel memory (the nf_conntrack slab);
  a     --connections loopback connections held by bench/loadgen.py (50,000 = 100,000
        sockets) and --entries translated entries (one for each loadgen client socket, as
        if the listener's address were a Service's address DNATed to a backend, the rest
        unrelated): the exporter's CPU per full scrape and per minute of idle, and the wall
        time per scrape, with --collector.nat against without, in alternating runs, and the
        ratios;
  b     --big-entries translated entries (1,000,000): the exporter's RSS with the
        collector (at the default --collector.nat.max-entries and at one that holds them
        all) against without, and how long the initial dump takes at start;
  c     connections opened and closed through an iptables DNAT rule in the namespace
        (a client connects to a Service address, the rule sends it to the listener) at
        --churn-rates for --churn-duration seconds: the exporter's CPU and the rate
        achieved with --collector.nat against without (the kernel builds conntrack
        events only for a listener, so the rate shows that cost too).

Run as root with a release build:
    python3 bench/nat.py --exporter target/release/conn-exporter
    python3 bench/nat.py --figures fill --big-entries 1000000   # the filler alone
--quick (CI, a few seconds): 5,000 entries and 2 s of churn at 500/s; exits 1 unless the
filler's entries are all counted, the exporter with --collector.nat reports
conn_exporter_nat_entries >= the entries inserted and
conn_exporter_scrape_collector_success{collector="nat"} 1, and (almost: 99 %) every close
through the DNAT rule is counted with destination_backend_address.
Python 3.11 standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from benchlib import (CLK_TCK, Processes, free_port, loadavg, proc_cpu_seconds,  # noqa: E402
                      proc_status, start_loadgen, take_lock, wait_port)

SYSCTL = "/proc/sys/net/netfilter/"
INNER_ENV = "CONN_EXPORTER_NAT_BENCH_INNER"

# <linux/netlink.h>, <linux/netfilter/nfnetlink.h>, <linux/netfilter/nfnetlink_conntrack.h>
NETLINK_NETFILTER = 12
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
NLMSG_ERROR = 2
NLA_F_NESTED = 0x8000
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW = 0
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_STATUS, CTA_PROTOINFO, CTA_TIMEOUT = 1, 2, 3, 4, 7
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
CTA_PROTOINFO_TCP, CTA_PROTOINFO_TCP_STATE = 1, 1
TCP_CONNTRACK_ESTABLISHED = 3
CTA_NAT_DST = 13
CTA_NAT_V4_MINIP, CTA_NAT_PROTO, CTA_NAT_V6_MINIP = 1, 3, 4
CTA_PROTONAT_PORT_MIN = 1
# <linux/netfilter/nf_conntrack_common.h>. With a NAT binding (CTA_NAT_DST) the kernel
# checks the status strictly: CONFIRMED must be given, and it sets the NAT bits itself
# (DST_NAT, SRC_NAT_DONE, DST_NAT_DONE: 0x1ae in a dump, what kube-proxy's DNAT leaves).
IPS_SEEN_REPLY, IPS_ASSURED, IPS_CONFIRMED, IPS_DST_NAT, IPS_DST_NAT_DONE = 0x2, 0x4, 0x8, 0x20, 0x100
ENTRY_STATUS = IPS_SEEN_REPLY | IPS_ASSURED | IPS_CONFIRMED | IPS_DST_NAT | IPS_DST_NAT_DONE
ENTRY_TIMEOUT = 5 * 86400  # seconds: nothing expires during a run
SERVICE_PORT = 80


def _nla(kind: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return struct.pack("=HH", n, kind) + payload + bytes((4 - n % 4) % 4)


def _nest(kind: int, *attrs: bytes) -> bytes:
    return _nla(kind | NLA_F_NESTED, b"".join(attrs))


def _tuple(kind: int, family: int, src: bytes, dst: bytes, sport: int, dport: int) -> bytes:
    a_src, a_dst = (CTA_IP_V4_SRC, CTA_IP_V4_DST) if family == socket.AF_INET else (CTA_IP_V6_SRC, CTA_IP_V6_DST)
    return _nest(kind,
                 _nest(CTA_TUPLE_IP, _nla(a_src, src), _nla(a_dst, dst)),
                 _nest(CTA_TUPLE_PROTO, _nla(CTA_PROTO_NUM, bytes([socket.IPPROTO_TCP])),
                       _nla(CTA_PROTO_SRC_PORT, struct.pack("!H", sport)),
                       _nla(CTA_PROTO_DST_PORT, struct.pack("!H", dport))))


_TAIL = (_nest(CTA_PROTOINFO, _nest(CTA_PROTOINFO_TCP, _nla(CTA_PROTOINFO_TCP_STATE, bytes([TCP_CONNTRACK_ESTABLISHED]))))
         + _nla(CTA_STATUS, struct.pack("!I", ENTRY_STATUS)) + _nla(CTA_TIMEOUT, struct.pack("!I", ENTRY_TIMEOUT)))
_NEW = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW
_NEW_FLAGS = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL


def ct_new(seq: int, family: int, client: bytes, cport: int, vip: bytes, vport: int,
           backend: bytes, bport: int) -> bytes:
    """One IPCTNL_MSG_CT_NEW: client:cport -> vip:vport, DNATed to backend:bport.

    As `conntrack -I --dst-nat` does: the reply tuple given mirrors the original and the
    binding (CTA_NAT_DST) makes the kernel rewrite it (reply source backend:bport) and set
    the DNAT status bits, so the entry is what iptables' DNAT target would have made."""
    v4 = family == socket.AF_INET
    body = (struct.pack("=BBH", family, 0, 0)  # nfgenmsg: family, NFNETLINK_V0, res_id
            + _tuple(CTA_TUPLE_ORIG, family, client, vip, cport, vport)
            + _tuple(CTA_TUPLE_REPLY, family, vip, client, vport, cport)
            + _nest(CTA_NAT_DST, _nla(CTA_NAT_V4_MINIP if v4 else CTA_NAT_V6_MINIP, backend),
                    _nest(CTA_NAT_PROTO, _nla(CTA_PROTONAT_PORT_MIN, struct.pack("!H", bport))))
            + _TAIL)
    return struct.pack("=IHHII", 16 + len(body), _NEW, _NEW_FLAGS, seq, 0) + body


class Encoder:
    """ct_new at speed: the message of a family is the same bytes but for the sequence
    number, the addresses and the ports, so it is one precompiled struct whose other
    fields are the constant runs of a template (about 1 us per message, not 8)."""

    def __init__(self, family: int) -> None:
        alen = 4 if family == socket.AF_INET else 16
        marks = {"client": b"\xa1" * alen, "vip": b"\xa2" * alen, "backend": b"\xa3" * alen}
        ports = {"cport": 0xb1c1, "vport": 0xb2c2, "bport": 0xb3c3}
        raw = ct_new(0x5eed5eed, family, marks["client"], ports["cport"], marks["vip"], ports["vport"],
                     marks["backend"], ports["bport"])
        fields = [(8, "seq", "I")]
        for name, m in marks.items():
            fields += [(i, name, f"{alen}s") for i in _find_all(raw, m)]
        for name, v in ports.items():
            fields += [(i, name, "H") for i in _find_all(raw, struct.pack("!H", v))]
        fields.sort()
        fmt, self.order, self.consts, pos = "=", [], [], 0
        for off, name, f in fields:
            if off > pos:
                fmt += f"{off - pos}s"
                self.order.append(None)
                self.consts.append(raw[pos:off])
            fmt += f
            self.order.append(name)
            pos = off + struct.calcsize("=" + f)
        fmt += f"{len(raw) - pos}s"
        self.order.append(None)
        self.consts.append(raw[pos:])
        self.struct = struct.Struct(fmt)
        assert self.struct.size == len(raw)
        # One Python function with the argument list spelled out: fastest to call.
        args, ci = [], 0
        for name in self.order:
            if name is None:
                args.append(f"c[{ci}]")
                ci += 1
            elif name in ports:
                args.append(f"htons({name})")
            else:
                args.append(name)
        src = (f"def encode(seq, client, cport, vip, vport, backend, bport):\n"
               f"    return pack({', '.join(args)})\n")
        env = {"pack": self.struct.pack, "c": self.consts, "htons": socket.htons}
        exec(src, env)  # noqa: S102 - the source is built above from field names only
        self.encode = env["encode"]
        check = self.encode(0x5eed5eed, marks["client"], ports["cport"], marks["vip"], ports["vport"],
                            marks["backend"], ports["bport"])
        assert check == raw, "template encoder differs from ct_new"


def _find_all(raw: bytes, needle: bytes) -> list[int]:
    out, i = [], raw.find(needle)
    while i >= 0:
        out.append(i)
        i = raw.find(needle, i + 1)
    return out


class Ctnetlink:
    """A ctnetlink socket of the namespace this process is in."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.bind((0, 0))
        for opt, force in ((socket.SO_SNDBUF, 32), (socket.SO_RCVBUF, 33)):  # SO_*BUFFORCE
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, force, 8 << 20)
            except OSError:
                self.sock.setsockopt(socket.SOL_SOCKET, opt, 8 << 20)
        self.seq = 0
        self.encoders = {f: Encoder(f).encode for f in (socket.AF_INET, socket.AF_INET6)}

    def close(self) -> None:
        self.sock.close()

    def insert(self, entries, batch: int = 1000) -> tuple[int, Counter]:
        """Sends one CT_NEW per entry (tuples of ct_new's arguments after seq), `batch`
        messages per send, and reads every acknowledgement. Returns (created, errors by
        errno name)."""
        ok, errors = 0, Counter()
        pending: list[bytes] = []
        # Each acknowledgement is a message of its own, one per recv: read them into one
        # buffer (a fresh 1 MiB bytes object per recv costs an mmap and page faults each).
        buf = bytearray(1 << 16)

        def flush() -> None:
            nonlocal ok
            if not pending:
                return
            self.sock.send(b"".join(pending))
            want = len(pending)
            pending.clear()
            while want:
                size = self.sock.recv_into(buf)
                off = 0
                while off + 16 <= size:
                    length, kind = struct.unpack_from("=IH", buf, off)
                    if kind == NLMSG_ERROR:
                        err = -struct.unpack_from("=i", buf, off + 16)[0]
                        if err == 0:
                            ok += 1
                        else:
                            errors[os.strerror(err)] += 1
                        want -= 1
                    off += (length + 3) & ~3

        enc = self.encoders
        for family, *rest in entries:
            self.seq += 1
            pending.append(enc[family](self.seq, *rest))
            if len(pending) >= batch:
                flush()
        flush()
        return ok, errors


def ip4(a: int, b: int, c: int) -> bytes:
    return bytes((127, a, b, c))


def synthetic(n: int, offset: int = 0):
    """n translated entries that match no socket: client 127.200+.x.y from ports
    10000..59999 to one of 1,000 Services 127.96.s.s:80, answered by one of three
    backends 127.244+.s.{1,2,3}:8080."""
    for i in range(offset, offset + n):
        k, port = divmod(i, 50000)
        k, svc = k + 1, i % 1000 + 1
        yield (socket.AF_INET, ip4(200 + (k >> 16), (k >> 8) & 255, k & 255), 10000 + port,
               ip4(96, svc >> 8, svc & 255), SERVICE_PORT,
               ip4(244 + (svc >> 8), svc & 255, 1 + i % 3), 8080)


def read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def write_sysctl(name: str, value: int) -> None:
    with open(SYSCTL + name, "w") as f:
        f.write(str(value))


def slab_conntrack() -> tuple[int, int] | None:
    """(active objects, bytes of their slabs) of the nf_conntrack cache, if readable."""
    try:
        with open("/proc/slabinfo") as f:
            for line in f:
                if line.startswith("nf_conntrack "):
                    v = line.split()
                    # name active_objs num_objs objsize objperslab pagesperslab : ... slabdata active_slabs num_slabs
                    active, objsize, pages, slabs = int(v[1]), int(v[3]), int(v[5]), int(v[-1])
                    return active, slabs * pages * os.sysconf("SC_PAGE_SIZE") or active * objsize
    except (OSError, ValueError, IndexError):
        pass
    return None


def conntrack_counts() -> dict[str, int]:
    """The namespace's entry count three ways: `conntrack -C`, lines of `conntrack -L`,
    and nf_conntrack_count."""
    res = {"proc": read_int(SYSCTL + "nf_conntrack_count") or 0}
    out = subprocess.run(["conntrack", "-C"], capture_output=True, text=True)
    res["conntrack_C"] = int(out.stdout.strip() or -1) if out.returncode == 0 else -1
    p = subprocess.Popen(["conntrack", "-L"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    n = 0
    for chunk in iter(lambda: p.stdout.read(1 << 20), b""):
        n += chunk.count(b"\n")
    p.wait()
    res["conntrack_L"] = n
    return res


def fill(n: int, entries=None) -> dict:
    """Inserts n synthetic entries (or the given ones) and reports how it went."""
    slab0 = slab_conntrack()
    count0 = read_int(SYSCTL + "nf_conntrack_count") or 0
    ct = Ctnetlink()
    t0 = time.perf_counter()
    cpu0 = os.times()
    try:
        ok, errors = ct.insert(entries if entries is not None else synthetic(n))
    finally:
        ct.close()
    elapsed = time.perf_counter() - t0
    cpu1 = os.times()
    slab1 = slab_conntrack()
    res = {"inserted": ok, "errors": dict(errors), "seconds": elapsed, "per_second": ok / elapsed if elapsed else 0,
           "user_s": cpu1.user - cpu0.user, "sys_s": cpu1.system - cpu0.system,
           "count_before": count0}
    if slab0 and slab1:
        res["slab_objects"] = slab1[0] - slab0[0]
        res["slab_bytes"] = slab1[1] - slab0[1]
    return res


# ---------------------------------------------------------------- sockets of loadgen

def _proc_addr(hexaddr: str) -> tuple[bytes, int]:
    addr, port = hexaddr.split(":")
    raw = bytes.fromhex(addr)
    # /proc/net/tcp* print each 32-bit word in host (little-endian) order.
    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return raw, int(port, 16)


def client_sockets() -> list[tuple[int, bytes, int, bytes, int]]:
    """(family, local address, local port, remote address, remote port) of every
    ESTABLISHED socket of this namespace whose remote end is one of its listeners: the
    client ends of loadgen's connections."""
    listeners, established = set(), []
    for family, path in ((socket.AF_INET, "/proc/net/tcp"), (socket.AF_INET6, "/proc/net/tcp6")):
        try:
            f = open(path)
        except OSError:
            continue
        with f:
            next(f)
            for line in f:
                v = line.split(None, 4)
                if v[3] == "0A":
                    listeners.add((family, *_proc_addr(v[1])))
                elif v[3] == "01":
                    established.append((family, *_proc_addr(v[1]), *_proc_addr(v[2])))
    return [s for s in established if (s[0], s[3], s[4]) in listeners]


def dnat_keys(entries) -> int:
    """How many translations the exporter can hold for these entries: it keys a DNAT by
    (client address, client port, Service address), and entries that share a key with
    different Service ports make it ambiguous (one key, answering nothing). loadgen's IPv6
    clients all come from ::1 to one listener port per worker, so a few share one."""
    return len({(e[0], e[1], e[2], e[3]) for e in entries})


def matching(sockets) -> list[tuple]:
    """A DNAT entry for each client socket, as if the listener's address and port were a
    Service's, sent to one of three backends: 127.240+j.P.P:port for IPv4, ::1 with
    another port for IPv6 (the only loopback address)."""
    out = []
    for family, laddr, lport, raddr, rport in sockets:
        if family == socket.AF_INET:
            backend, bport = ip4(240 + lport % 3, rport >> 8, rport & 255), rport
        else:
            backend, bport = raddr, rport + 1 if rport < 65535 else rport - 1
        out.append((family, laddr, lport, raddr, rport, backend, bport))
    return out


# ---------------------------------------------------------------- the exporter

BASE_ARGS = ["--log.level=warn", "--no-collector.quality"]
EXTRA_ARGS: list[str] = []  # --exporter-args


def start_exporter(exe: str, nat: bool, procs: Processes, log: str, extra: list[str] | None = None,
                   timeout: float = 300.0) -> tuple[subprocess.Popen, int, float]:
    """A fresh exporter with or without --collector.nat; returns it, its port and the
    seconds until it accepted a connection."""
    port = free_port(19700)
    args = [exe, f"--web.listen-address=127.0.0.1:{port}", *BASE_ARGS, *EXTRA_ARGS,
            "--collector.nat" if nat else "--no-collector.nat", *(extra or [])]
    t0 = time.monotonic()
    with open(log, "ab") as lf:
        p = procs.start(args, stdout=subprocess.DEVNULL, stderr=lf)
    if not wait_port(port, p, timeout):
        with open(log, errors="replace") as f:
            tail = f.read()[-2000:]
        raise RuntimeError(f"exporter {' '.join(args[1:])} did not start (exit {p.poll()}): {tail}")
    return p, port, time.monotonic() - t0


def scrape(port: int, path: str = "/metrics") -> tuple[str, float]:
    """A scrape as Prometheus makes it (OpenMetrics, gzip); (body, wall seconds)."""
    import gzip
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={
        "Accept": "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
        "Accept-Encoding": "gzip"})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=120) as r:
        body = r.read()
        gz = r.headers.get("Content-Encoding") == "gzip"
    wall = time.perf_counter() - t0
    return (gzip.decompress(body) if gz else body).decode(), wall


def value(text: str, name: str, labels: str = "") -> float | None:
    """The value of the series `name{labels}` (labels: the exact label text, or empty)."""
    sel = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "")
    m = re.search(rf"^{sel} (\S+)", text, re.M)
    return float(m.group(1)) if m else None


def nat_status(port: int) -> dict:
    """The NAT collector's self-metrics (from the cheapest scrape that has them)."""
    for path in ("/metrics?collect[]=nat", "/metrics?collect[]=lifecycle", "/metrics"):
        try:
            text, _ = scrape(port, path)
        except urllib.error.HTTPError:
            continue
        if "conn_exporter_nat_entries" in text or path == "/metrics":
            return {"entries": value(text, "conn_exporter_nat_entries"),
                    "dropped": value(text, "conn_exporter_nat_entries_dropped_total"),
                    "resyncs": value(text, "conn_exporter_nat_resyncs_total"),
                    "namespaces": value(text, "conn_exporter_nat_namespaces"),
                    "success": value(text, "conn_exporter_scrape_collector_success", 'collector="nat"'),
                    "path": path}
    return {}


def wait_entries(port: int, proc: subprocess.Popen, want: float, timeout: float,
                 interval: float = 0.05) -> tuple[dict, float]:
    """Polls until conn_exporter_nat_entries reaches `want` and stays put; returns the
    last status and the monotonic time it first reached its final value."""
    deadline = time.monotonic() + timeout
    last, since = {}, time.monotonic()
    while time.monotonic() < deadline and proc.poll() is None:
        st = nat_status(port)
        if st.get("entries") != last.get("entries"):
            since = time.monotonic()
        last = st
        if st.get("entries") is not None and st["entries"] >= want:
            return st, since
        time.sleep(interval)
    return last, since


def med(v: list[float], scale: float = 1.0, fmt: str = "{:.3g}") -> str:
    if not v:
        return "-"
    return f"{fmt.format(statistics.median(v) * scale)} ({fmt.format(min(v) * scale)}..{fmt.format(max(v) * scale)})"


def thread_cpu(pid: int) -> dict[str, float]:
    """User+sys CPU seconds of each thread of a process, by thread name (threads of one
    name summed; threads that ended are not counted, a scrape's helpers are short-lived)."""
    out: dict[str, float] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                head, rest = f.read().rsplit(")", 1)
        except OSError:
            continue
        v = rest.split()
        name = head.split("(", 1)[1]
        out[name] = out.get(name, 0.0) + (int(v[11]) + int(v[12])) / CLK_TCK
    return out


def thread_delta(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    """Milliseconds each thread name used between two thread_cpu readings (non-zero only)."""
    d = {k: round((b.get(k, 0.0) - a.get(k, 0.0)) * 1e3) for k in sorted(set(a) | set(b))}
    return {k: v for k, v in d.items() if v > 0}  # a thread gone in between reads negative


def count_labelled(text: str, label: str) -> int:
    return sum(1 for line in text.splitlines() if not line.startswith("#") and f'{label}="' in line)


def meminfo_kib(field: str) -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def run_counts(full_list: bool = True) -> dict:
    t0 = time.perf_counter()
    c = conntrack_counts() if full_list else {"proc": read_int(SYSCTL + "nf_conntrack_count") or 0}
    c["seconds"] = time.perf_counter() - t0
    return c


def print_fill(tag: str, f: dict, c: dict) -> None:
    line = (f"{tag}: {f['inserted']:,} entries inserted in {f['seconds']:.2f} s "
            f"({f['per_second']:,.0f}/s; this process: user {f['user_s']:.2f} s, sys {f['sys_s']:.2f} s)")
    if f["errors"]:
        line += f"; errors {f['errors']}"
    print(line)
    print(f"{tag}: count: nf_conntrack_count {c.get('proc')}, conntrack -C {c.get('conntrack_C')}, "
          f"conntrack -L lines {c.get('conntrack_L')} ({c['seconds']:.1f} s to count)")
    if "slab_objects" in f:
        print(f"{tag}: kernel memory: nf_conntrack slab +{f['slab_objects']:,} objects, "
              f"+{f['slab_bytes'] / 2**20:.1f} MiB ({f['slab_bytes'] / max(f['inserted'], 1):.0f} bytes per entry); "
              f"/proc/meminfo Slab +{f['meminfo_slab_kib'] / 1024:.1f} MiB")


def do_fill(n: int, entries=None, list_them: bool = True) -> tuple[dict, dict]:
    slab0 = meminfo_kib("Slab")
    f = fill(n, entries)
    f["meminfo_slab_kib"] = meminfo_kib("Slab") - slab0
    return f, run_counts(list_them)


# ---------------------------------------------------------------- figure: the filler alone

def fig_fill(a, procs, tmp, out) -> list[str]:
    f, c = do_fill(a.big_entries)
    print_fill("fill", f, c)
    out["fill"] = {"fill": f, "counts": c}
    want = f["inserted"]
    bad = [k for k in ("proc", "conntrack_C", "conntrack_L") if c.get(k) != want]
    return [f"fill: inserted {want} but {k} says {c.get(k)}" for k in bad] + (
        [f"fill: {f['errors']}"] if f["errors"] else [])


# ---------------------------------------------------------------- figure A

def fig_a(a, procs, tmp, out) -> list[str]:
    failures: list[str] = []
    print(f"A: load average {loadavg()}; {a.connections:,} loadgen connections, {a.entries:,} entries")
    start_loadgen(a.connections, procs, tmp, set_sysctls=True)
    socks = client_sockets()
    ents = matching(socks)
    ents += list(synthetic(max(0, a.entries - len(ents))))
    f, c = do_fill(0, ents)
    print_fill("A", f, c)
    expected = dnat_keys(ents)
    print(f"A: {len(socks):,} client sockets of loadgen each with a DNAT entry, "
          f"{f['inserted'] - len(socks):,} entries unrelated to any socket; {expected:,} distinct keys "
          f"(client address and port, Service address) for the exporter to hold")
    log = os.path.join(tmp, "exporter-a.log")
    runs = []
    for r in range(a.rounds):
        for nat in ((True, False) if r % 2 == 0 else (False, True)):
            p, port, t_listen = start_exporter(a.exporter, nat, procs, log)
            try:
                run = {"round": r, "nat": nat, "listen_s": t_listen}
                if nat:
                    t0 = time.monotonic()
                    st, since = wait_entries(port, p, expected, 120)
                    run["status"], run["dump_s"] = st, since - t0 + t_listen
                    if (st.get("entries") or 0) < expected or st.get("success") != 1:
                        failures.append(f"A round {r}: NAT status {st}, expected {expected} entries")
                text, _ = scrape(port)  # the first one, untimed
                run["body_bytes"] = len(text.encode())
                run["backend_labelled"] = count_labelled(text, "destination_backend_address")
                run["series"] = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
                time.sleep(a.settle)
                c0, t0, th0 = proc_cpu_seconds(p.pid), time.monotonic(), thread_cpu(p.pid)
                time.sleep(a.idle)
                run["idle_cpu_per_min"] = (proc_cpu_seconds(p.pid) - c0) * 60 / (time.monotonic() - t0)
                run["idle_threads_ms"] = thread_delta(th0, thread_cpu(p.pid))
                run["scrape_cpu"], run["scrape_wall"] = [], []
                for _ in range(a.scrapes):
                    c0 = proc_cpu_seconds(p.pid)
                    _, wall = scrape(port)
                    run["scrape_cpu"].append(proc_cpu_seconds(p.pid) - c0)
                    run["scrape_wall"].append(wall)
                s = proc_status(p.pid)
                run["rss_mib"], run["hwm_mib"] = s.get("VmRSS", 0) / 1024, s.get("VmHWM", 0) / 1024
            finally:
                procs.stop(p)
            runs.append(run)
            print("A run: " + json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in run.items()
                                          if k not in ("scrape_cpu", "scrape_wall", "status")}
                                         | {"scrape_cpu_ms": med(run["scrape_cpu"], 1e3),
                                            "scrape_wall_ms": med(run["scrape_wall"], 1e3)}), flush=True)
    out["a"] = {"fill": f, "counts": c, "client_sockets": len(socks), "runs": runs}

    def all_of(nat, k):
        return [x for run in runs if run["nat"] == nat for x in run[k]]

    def each(nat, k):
        return [run[k] for run in runs if run["nat"] == nat and k in run]

    cpu_on, cpu_off = all_of(True, "scrape_cpu"), all_of(False, "scrape_cpu")
    wall_on, wall_off = all_of(True, "scrape_wall"), all_of(False, "scrape_wall")
    mean_cpu = {(run["round"], run["nat"]): statistics.mean(run["scrape_cpu"]) for run in runs}
    ratios = [mean_cpu[(r, True)] / mean_cpu[(r, False)] for r in range(a.rounds) if mean_cpu.get((r, False))]
    wall_mean = {(run["round"], run["nat"]): statistics.mean(run["scrape_wall"]) for run in runs}
    wratios = [wall_mean[(r, True)] / wall_mean[(r, False)] for r in range(a.rounds) if wall_mean.get((r, False))]
    print(f"\nA: load average {loadavg()} at the end; {len(socks) * 2:,} loadgen sockets, {expected:,} translated entries, {a.rounds} rounds x "
          f"{a.scrapes} scrapes (full /metrics, OpenMetrics + gzip), idle windows of {a.idle:.0f} s")
    print(f"  scrape CPU (user+sys) with --collector.nat {med(cpu_on, 1e3)} ms, without {med(cpu_off, 1e3)} ms; "
          f"ratio of medians {statistics.median(cpu_on) / statistics.median(cpu_off):.3f}, "
          f"per round (means) {med(ratios, 1, '{:.3f}')}")
    print(f"  scrape wall with {med(wall_on, 1e3)} ms, without {med(wall_off, 1e3)} ms; ratio of medians "
          f"{statistics.median(wall_on) / statistics.median(wall_off):.3f}, per round {med(wratios, 1, '{:.3f}')}")
    print(f"  idle CPU per minute with {med(each(True, 'idle_cpu_per_min'), 1e3)} ms, "
          f"without {med(each(False, 'idle_cpu_per_min'), 1e3)} ms")
    print(f"  initial dump (start to every entry held) {med(each(True, 'dump_s'), 1e3)} ms; listening after "
          f"with {med(each(True, 'listen_s'), 1e3)} ms, without {med(each(False, 'listen_s'), 1e3)} ms")
    print(f"  RSS after the scrapes with {med(each(True, 'rss_mib'))} MiB, without {med(each(False, 'rss_mib'))} MiB; "
          f"peak with {med(each(True, 'hwm_mib'))} MiB, without {med(each(False, 'hwm_mib'))} MiB")
    print(f"  body of a scrape (uncompressed) with {med(each(True, 'body_bytes'), 1 / 2**20)} MiB, "
          f"without {med(each(False, 'body_bytes'), 1 / 2**20)} MiB")
    for nat in (True, False):
        print(f"  idle CPU by thread (ms per window, each run) {'with' if nat else 'without'}: "
              f"{[run.get('idle_threads_ms') for run in runs if run['nat'] == nat]}")
    print(f"  series carrying destination_backend_address: {med(each(True, 'backend_labelled'))} "
          f"(of {med(each(True, 'series'))} series), without the collector {med(each(False, 'backend_labelled'))}")
    out["a"]["summary"] = {"cpu_ratio_of_medians": statistics.median(cpu_on) / statistics.median(cpu_off),
                           "cpu_ratio_rounds": ratios, "wall_ratio_rounds": wratios}
    return failures


# ---------------------------------------------------------------- figure B

def fig_b(a, procs, tmp, out) -> list[str]:
    failures: list[str] = []
    print(f"B: load average {loadavg()}; {a.big_entries:,} entries")
    f, c = do_fill(a.big_entries)
    print_fill("B", f, c)
    n = f["inserted"]
    modes = [("off", False, []), ("nat", True, []),
             ("nat-all", True, [f"--collector.nat.max-entries={max(n, 1)}"])]
    log = os.path.join(tmp, "exporter-b.log")
    runs = []
    for r in range(a.rounds_b):
        for name, nat, extra in (modes if r % 2 == 0 else modes[::-1]):
            t0 = time.monotonic()
            p, port, t_listen = start_exporter(a.exporter, nat, procs, log, extra)
            try:
                run = {"round": r, "mode": name, "listen_s": t_listen}
                if nat:
                    deadline = time.monotonic() + 900
                    st = {}
                    while time.monotonic() < deadline and p.poll() is None:
                        st = nat_status(port)
                        if (st.get("entries") or 0) + (st.get("dropped") or 0) >= n:
                            break
                        time.sleep(0.1)
                    run["dump_s"] = time.monotonic() - t0
                    run["start_cpu_s"] = proc_cpu_seconds(p.pid)
                    run["status"] = st
                    if st.get("success") != 1 or (st.get("entries") or 0) + (st.get("dropped") or 0) < n:
                        failures.append(f"B {name}: NAT status {st} with {n} entries")
                time.sleep(a.settle)
                s = proc_status(p.pid)
                run["rss_mib"] = s.get("VmRSS", 0) / 1024
                c0 = proc_cpu_seconds(p.pid)
                _, run["scrape_wall"] = scrape(port)
                run["scrape_cpu"] = proc_cpu_seconds(p.pid) - c0
                time.sleep(a.settle)
                s = proc_status(p.pid)
                run["rss_after_scrape_mib"], run["hwm_mib"] = s.get("VmRSS", 0) / 1024, s.get("VmHWM", 0) / 1024
            finally:
                procs.stop(p)
            runs.append(run)
            print("B run: " + json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in run.items()}),
                  flush=True)
    out["b"] = {"fill": f, "counts": c, "runs": runs}

    def each(mode, k):
        return [run[k] for run in runs if run["mode"] == mode and k in run]

    print(f"\nB: load average {loadavg()} at the end; {n:,} translated entries, {a.rounds_b} runs of each")
    for mode, _, extra in modes:
        line = (f"  {mode:8s} {' '.join(extra) or ('(default max-entries)' if mode == 'nat' else '')}: "
                f"RSS {med(each(mode, 'rss_mib'))} MiB, after a scrape {med(each(mode, 'rss_after_scrape_mib'))} MiB, "
                f"peak {med(each(mode, 'hwm_mib'))} MiB")
        if mode != "off":
            st = each(mode, "status")
            line += (f"; dump at start {med(each(mode, 'dump_s'))} s (CPU {med(each(mode, 'start_cpu_s'))} s); "
                     f"held {st[-1].get('entries') if st else '-'}, dropped {st[-1].get('dropped') if st else '-'}")
        print(line)
    return failures


# ---------------------------------------------------------------- figure C

LINGER_RST = struct.pack("ii", 1, 0)
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
SERVICE_VIP = "127.96.0.1"


def host_cpu() -> tuple[float, float]:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / CLK_TCK, sum(v[:8]) / CLK_TCK


def kworker_cpu() -> float:
    """CPU seconds of the kernel's worker threads (conntrack's garbage collector, which
    sends the DESTROY events of expired entries, is one)."""
    total = 0.0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    head, rest = f.read().rsplit(")", 1)
            except OSError:
                continue
            if "(kworker" in head:
                v = rest.split()
                total += (int(v[11]) + int(v[12])) / CLK_TCK
    return total


def dnat_listener() -> socket.socket:
    """A listener on 127.0.0.1 and the rule that sends SERVICE_VIP:80 to it."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(4096)
    port = ls.getsockname()[1]
    subprocess.run(["iptables", "-t", "nat", "-A", "OUTPUT", "-d", f"{SERVICE_VIP}/32", "-p", "tcp", "--dport",
                    str(SERVICE_PORT), "-j", "DNAT", "--to-destination", f"127.0.0.1:{port}"], check=True)
    return ls


def drive(ls: socket.socket, rate: float | None, duration: float) -> int:
    """Connections to the Service address for `duration` s at `rate` per second (None: as
    fast as this thread can): connect, accept, the server closes with RST, the client
    closes. Clients come from 64 addresses of 127.50.0.0/24."""
    made, start = 0, time.monotonic()
    end = start + duration
    while True:
        now = time.monotonic()
        if now >= end:
            return made
        if rate is not None and made >= int((now - start) * rate):
            time.sleep(min(0.001, end - now))
            continue
        c = socket.socket()
        c.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        c.bind((f"127.50.0.{1 + made % 64}", 0))
        c.connect((SERVICE_VIP, SERVICE_PORT))
        s, _ = ls.accept()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
        s.close()
        c.close()
        made += 1


def closes_through(text: str) -> tuple[int, int]:
    """(outbound closes to the Service address, those of them with a backend label)."""
    total = labelled = 0
    for line in text.splitlines():
        if line.startswith("network_connections_closed_total{") and f'destination_address="{SERVICE_VIP}"' in line:
            v = int(float(line.rsplit(" ", 1)[1]))
            total += v
            if 'destination_backend_address="127.0.0.1"' in line:
                labelled += v
    return total, labelled


def churn_run(a, procs, log, ls, nat: bool, rate: float | None, duration: float) -> dict:
    subprocess.run(["conntrack", "-F"], capture_output=True)
    base_count = read_int(SYSCTL + "nf_conntrack_count") or 0
    p, port, _ = start_exporter(a.exporter, nat, procs, log)
    try:
        if nat:
            wait_entries(port, p, 0, 60)
        before, _ = scrape(port)
        me0 = os.times()
        kw0, (busy0, total0) = kworker_cpu(), host_cpu()
        c0, t0, th0 = proc_cpu_seconds(p.pid), time.monotonic(), thread_cpu(p.pid)
        made = drive(ls, rate, duration)
        elapsed = time.monotonic() - t0
        c1, me1 = proc_cpu_seconds(p.pid), os.times()
        kw1, (busy1, total1) = kworker_cpu(), host_cpu()
        peak_count = read_int(SYSCTL + "nf_conntrack_count") or 0
        # The entries of closed connections stay (state CLOSE) for nf_conntrack_tcp_timeout_close
        # and their DESTROY events come as the garbage collector reaps them: wait for that.
        deadline = time.monotonic() + a.drain
        while time.monotonic() < deadline and (read_int(SYSCTL + "nf_conntrack_count") or 0) > base_count + 50:
            time.sleep(0.5)
        drained = time.monotonic() - t0 - elapsed
        c2, th2 = proc_cpu_seconds(p.pid), thread_cpu(p.pid)
        after, _ = scrape(port)
        closes, labelled = closes_through(after)
        closes0, labelled0 = closes_through(before)
        st = nat_status(port) if nat else {}
        return {"nat": nat, "offered": "max" if rate is None else int(rate), "connections": made,
                "rate": made / elapsed, "exporter_cpu_s": c1 - c0, "exporter_cpu_with_drain_s": c2 - c0,
                "exporter_cpu_per_1k_ms": (c2 - c0) / max(made, 1) * 1e6,
                "driver_cpu_per_conn_us": ((me1.user + me1.system) - (me0.user + me0.system)) / max(made, 1) * 1e6,
                "host_busy_per_conn_us": (busy1 - busy0) / max(made, 1) * 1e6,
                "host_busy_share": (busy1 - busy0) / max(total1 - total0, 1e-9),
                "kworker_per_conn_us": (kw1 - kw0) / max(made, 1) * 1e6,
                "conntrack_peak": peak_count, "drain_s": drained,
                "closes_counted": closes - closes0, "closes_backend_labelled": labelled - labelled0,
                "threads_ms": thread_delta(th0, th2),
                "nat_status": st}
    finally:
        procs.stop(p)


def fig_c(a, procs, tmp, out) -> list[str]:
    failures: list[str] = []
    ls = dnat_listener()
    print(f"C: load average {loadavg()}; DNAT {SERVICE_VIP}:{SERVICE_PORT} -> {ls.getsockname()}, "
          f"{a.churn_duration:.0f} s per run, nf_conntrack_tcp_timeout_close "
          f"{read_int(SYSCTL + 'nf_conntrack_tcp_timeout_close')} s")
    log = os.path.join(tmp, "exporter-c.log")
    runs = []
    rates = [r for r in a.churn_rates.split(",") if r]
    for r in rates:
        rate = None if r == "max" else float(r)
        for i in range(a.rounds):
            for nat in ((True, False) if i % 2 == 0 else (False, True)):
                run = churn_run(a, procs, log, ls, nat, rate, a.churn_duration)
                run["round"] = i
                runs.append(run)
                print("C run: " + json.dumps({k: (round(v, 4) if isinstance(v, float) else v)
                                              for k, v in run.items()}), flush=True)
                if nat and (run["nat_status"].get("resyncs") or 0) > 0:
                    print(f"C: {run['nat_status']['resyncs']:.0f} resyncs (lost events) in this run", flush=True)
    ls.close()
    out["c"] = {"runs": runs}
    print(f"\nC: load average {loadavg()} at the end; medians (min..max) of {a.rounds} runs each")
    for r in rates:
        offered = r if r == "max" else int(float(r))
        for nat in (True, False):
            rs = [x for x in runs if x["offered"] == offered and x["nat"] == nat]

            def m(k, scale=1.0):
                return med([x[k] for x in rs], scale)
            print(f"  offered {offered}/s, {'with' if nat else 'without'} --collector.nat: rate {m('rate')}/s; "
                  f"exporter CPU during the run {m('exporter_cpu_s', 1e3)} ms, with the drain {m('exporter_cpu_with_drain_s', 1e3)} ms "
                  f"({m('exporter_cpu_per_1k_ms')} ms per 1k connections); this driver {m('driver_cpu_per_conn_us')} us/conn; "
                  f"host busy {m('host_busy_per_conn_us')} us/conn; "
                  f"peak entries {m('conntrack_peak')}")
            if nat:
                print(f"    exporter CPU by thread (ms, run and drain, each run): {[x['threads_ms'] for x in rs]}")
                print(f"    NAT entries held / dropped at the end of each run: "
                      f"{[(x['nat_status'].get('entries'), x['nat_status'].get('dropped')) for x in rs]}")
                print(f"    closes to {SERVICE_VIP} counted {sum(x['closes_counted'] for x in rs)}, "
                      f"with destination_backend_address=\"127.0.0.1\" {sum(x['closes_backend_labelled'] for x in rs)}; "
                      f"resyncs {sum((x['nat_status'].get('resyncs') or 0) for x in rs):.0f}")
        on = {x["round"]: x for x in runs if x["offered"] == offered and x["nat"]}
        off = {x["round"]: x for x in runs if x["offered"] == offered and not x["nat"]}
        ratios = [on[i]["rate"] / off[i]["rate"] for i in on if i in off and off[i]["rate"]]
        print(f"  offered {offered}/s: rate with / without in the same round {med(ratios, 1, '{:.3f}')}")
    return failures


# ---------------------------------------------------------------- quick (CI)

def fig_quick(a, procs, tmp, out) -> list[str]:
    failures: list[str] = []
    n = a.quick_entries
    f, c = do_fill(n)
    print_fill("quick", f, c)
    inserted = f["inserted"]
    if f["errors"] or any(c.get(k) != inserted for k in ("proc", "conntrack_C", "conntrack_L")) or inserted < n:
        failures.append(f"filler: inserted {inserted} of {n}, errors {f['errors']}, counts {c}")
    log = os.path.join(tmp, "exporter-quick.log")
    res = {}
    for nat in (True, False):
        t0 = time.monotonic()
        p, port, t_listen = start_exporter(a.exporter, nat, procs, log)
        try:
            r = {"listen_s": t_listen}
            if nat:
                st, since = wait_entries(port, p, inserted, 30)
                r["dump_s"], r["status"] = since - t0, st
                if (st.get("entries") or 0) < inserted:
                    failures.append(f"conn_exporter_nat_entries {st.get('entries')} < {inserted} inserted")
                if st.get("success") != 1:
                    failures.append(f"conn_exporter_scrape_collector_success{{collector=\"nat\"}} is {st.get('success')}")
            r["cpu"], r["wall"] = [], []
            for _ in range(a.scrapes):
                c0 = proc_cpu_seconds(p.pid)
                _, wall = scrape(port)
                r["cpu"].append(proc_cpu_seconds(p.pid) - c0)
                r["wall"].append(wall)
            r["rss_mib"] = proc_status(p.pid).get("VmRSS", 0) / 1024
            if nat:
                ls = dnat_listener()
                before, _ = scrape(port)
                c0, t1 = proc_cpu_seconds(p.pid), time.monotonic()
                made = drive(ls, 500, 2.0)
                r["churn"] = {"connections": made, "rate": made / (time.monotonic() - t1)}
                t0_, lab0 = closes_through(before)
                deadline = time.monotonic() + 10  # outbound closes are held a moment
                while True:
                    after, _ = scrape(port)
                    t, lab = closes_through(after)
                    if t - t0_ >= made or time.monotonic() > deadline:
                        break
                    time.sleep(0.2)
                r["churn"]["exporter_cpu_ms"] = (proc_cpu_seconds(p.pid) - c0) * 1e3
                r["churn"]["closes"], r["churn"]["backend_labelled"] = t - t0_, lab - lab0
                r["churn"]["status"] = nat_status(port)
                ls.close()
                # Every close through the rule was translated: it must carry the backend
                # (a miss is a close counted before its conntrack event was applied).
                if r["churn"]["closes"] < made or r["churn"]["backend_labelled"] < 0.99 * made:
                    failures.append(f"closes through the DNAT rule: {made} made, {r['churn']['closes']} counted, "
                                    f"{r['churn']['backend_labelled']} with destination_backend_address")
        finally:
            procs.stop(p)
        res["nat" if nat else "off"] = r
    out["quick"] = {"fill": f, "counts": c, **res}
    on, off = res["nat"], res["off"]
    print(f"quick: exporter with --collector.nat: NAT status {on['status']}; initial dump done "
          f"{on['dump_s'] * 1e3:.0f} ms after start (listening after {on['listen_s'] * 1e3:.0f} ms)")
    print(f"quick: scrape CPU with {med(on['cpu'], 1e3)} ms, without {med(off['cpu'], 1e3)} ms; wall with "
          f"{med(on['wall'], 1e3)} ms, without {med(off['wall'], 1e3)} ms; RSS with {on['rss_mib']:.1f} MiB, "
          f"without {off['rss_mib']:.1f} MiB")
    ch = on.get("churn", {})
    print(f"quick: churn through DNAT ({SERVICE_VIP}:{SERVICE_PORT}), 2 s at 500/s: {ch.get('connections')} "
          f"connections, {ch.get('rate', 0):.0f}/s, exporter CPU {ch.get('exporter_cpu_ms', 0):.0f} ms; closes "
          f"counted {ch.get('closes')}, with destination_backend_address {ch.get('backend_labelled')}; "
          f"NAT entries after {ch.get('status', {}).get('entries')}")
    return failures


# ---------------------------------------------------------------- main

FIGURES = {"fill": fig_fill, "a": fig_a, "b": fig_b, "c": fig_c, "quick": fig_quick}


def inner(a) -> int:
    """One figure, in the fresh namespace `unshare --net` made for it."""
    if os.environ.get(INNER_ENV) != "1":
        print("nat bench: --inner is for the namespace the bench makes itself", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.stdout.reconfigure(line_buffering=True)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    procs = Processes("nat-bench")
    out: dict = {}
    try:
        with tempfile.TemporaryDirectory(dir=a.tmp) as tmp:
            failures = FIGURES[a.inner](a, procs, tmp, out)
    finally:
        procs.stop_all()
        if a.json_part:
            with open(a.json_part, "w") as f:
                json.dump(out, f, indent=1, default=str)
    for msg in failures:
        print(f"nat bench: {msg}", file=sys.stderr)
    return 1 if failures else 0


def outer(a, argv: list[str]) -> int:
    if os.geteuid() != 0:
        print("nat bench: needs root (a network namespace, ctnetlink, iptables)", file=sys.stderr)
        return 2
    for tool in ("unshare", "ip", "conntrack", "iptables"):
        if not shutil.which(tool):
            print(f"nat bench: {tool} not found", file=sys.stderr)
            return 2
    sys.stdout.reconfigure(line_buffering=True)
    figures = ["quick"] if a.quick else [f for f in a.figures.split(",") if f]
    if any(f not in FIGURES for f in figures):
        print(f"nat bench: --figures takes {', '.join(k for k in FIGURES if k != 'quick')}", file=sys.stderr)
        return 2
    # Entries a figure's namespace holds at most (C: the closed connections' entries
    # linger for nf_conntrack_tcp_timeout_close, 10 s, at up to some 30k/s).
    needs = {"fill": a.big_entries, "a": a.entries, "b": a.big_entries, "c": 400000, "quick": a.quick_entries}
    need = max(needs[f] for f in figures) + 20000
    ct_max = SYSCTL + "nf_conntrack_max"
    old_max = read_int(ct_max)
    if old_max is None:
        print("nat bench: no conntrack in this kernel (net.netfilter.nf_conntrack_max missing)", file=sys.stderr)
        return 2
    rc = 0
    tmp = tempfile.mkdtemp(prefix="nat-bench-")
    changed = False
    child = None

    def on_term(*_):
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    try:
        if any(f != "fill" for f in figures):
            if not os.path.exists(a.exporter):
                print(f"nat bench: no exporter at {a.exporter}", file=sys.stderr)
                return 2
            # A private copy: a cargo build during the run must not swap the binary.
            copy = os.path.join(tmp, "conn-exporter")
            shutil.copy2(a.exporter, copy)
            helptext = subprocess.run([copy, "--help"], capture_output=True, text=True).stdout
            if "collector.nat" not in helptext:
                print(f"nat bench: {a.exporter} has no --collector.nat", file=sys.stderr)
                return 2
            version = subprocess.run([copy, "--version"], capture_output=True, text=True).stdout.strip()
            print(f"nat bench: exporter {a.exporter} ({version}), copied to {copy}")
            argv = argv + ["--exporter", copy]
        if not a.quick:
            take_lock("/tmp/conn-exporter-bench.lock", "nat bench")
        if old_max < need:
            try:
                write_sysctl("nf_conntrack_max", need)
                changed = True
                print(f"nat bench: net.netfilter.nf_conntrack_max {old_max} -> {need} for the run")
            except OSError as e:
                print(f"nat bench: cannot raise net.netfilter.nf_conntrack_max to {need} ({e}); it is global and "
                      "writable only from the initial network namespace", file=sys.stderr)
                return 2
        print(f"nat bench: nf_conntrack_buckets {read_int(SYSCTL + 'nf_conntrack_buckets')}, "
              f"load average {loadavg()}", flush=True)
        parts = []
        for fig in figures:
            part = os.path.join(tmp, f"{fig}.json")
            parts.append((fig, part))
            t0 = time.monotonic()
            child = subprocess.Popen(["unshare", "--net", "--", sys.executable, os.path.abspath(__file__), *argv,
                                      "--inner", fig, "--json-part", part, "--tmp", tmp],
                                     env={**os.environ, INNER_ENV: "1"})
            code = child.wait()
            print(f"nat bench: figure {fig} exit {code} after {time.monotonic() - t0:.0f} s\n", flush=True)
            rc = max(rc, code)
        if a.json:
            merged = {}
            for fig, part in parts:
                try:
                    with open(part) as f:
                        merged.update(json.load(f))
                except (OSError, ValueError):
                    pass
            with open(a.json, "w") as f:
                json.dump(merged, f, indent=1)
    except KeyboardInterrupt:
        rc = 130
    finally:
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)
            child.wait()
        if changed:
            write_sysctl("nf_conntrack_max", old_max)
            print(f"nat bench: net.netfilter.nf_conntrack_max set back to {old_max}")
        shutil.rmtree(tmp, ignore_errors=True)
    return rc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--exporter", default=os.environ.get(
        "CONN_EXPORTER_BIN", os.path.join(REPO, "target/release/conn-exporter")))
    ap.add_argument("--figures", default="a,b,c", help="comma-separated: fill, a, b, c")
    ap.add_argument("--connections", type=int, default=50000, help="A: loadgen connections (2 sockets each)")
    ap.add_argument("--entries", type=int, default=100000, help="A: translated entries in all")
    ap.add_argument("--big-entries", type=int, default=1000000, help="B and fill: translated entries")
    ap.add_argument("--rounds", type=int, default=3, help="A and C: alternating runs of each kind")
    ap.add_argument("--rounds-b", type=int, default=2, help="B: runs of each kind")
    ap.add_argument("--scrapes", type=int, default=10, help="A: timed scrapes per run")
    ap.add_argument("--idle", type=float, default=60.0, help="A: seconds of idle measured per run")
    ap.add_argument("--settle", type=float, default=2.0, help="seconds before an idle window or an RSS reading")
    ap.add_argument("--churn-rates", default="3000,max", help="C: offered connections per second (max: one thread's)")
    ap.add_argument("--churn-duration", type=float, default=20.0, help="C: seconds per run")
    ap.add_argument("--drain", type=float, default=30.0,
                    help="C: seconds at most to wait after a run for the closed connections' entries to go")
    ap.add_argument("--quick-entries", type=int, default=5000)
    ap.add_argument("--quick", action="store_true",
                    help="CI: 5,000 entries, 3 scrapes each way, 2 s of churn; exit 1 unless the NAT entries are all "
                         "held and the collector succeeds")
    ap.add_argument("--exporter-args", default="", help="more arguments for every exporter started "
                    "(e.g. --collector.lifecycle.source=netlink)")
    ap.add_argument("--json", help="write every run here")
    ap.add_argument("--inner", choices=sorted(FIGURES), help=argparse.SUPPRESS)
    ap.add_argument("--json-part", help=argparse.SUPPRESS)
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.quick:
        a.scrapes = 3
    EXTRA_ARGS.extend(shlex.split(a.exporter_args))
    if a.inner:
        return inner(a)
    return outer(a, sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
