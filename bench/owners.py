#!/usr/bin/env python3
"""Cost of `--collector.connections.owner` (issue 11): --processes processes holding
--sockets loopback sockets between them, scraped by two exporters side by side, one with
owners off and one with owners on (otherwise the same flags), alternating, --rounds
times each.

Reported: the first scrape of each (the owner cache starts empty: every process's
name, unit and descriptors are read), and for the later scrapes the median and range of
wall time and of exporter CPU (user + system from /proc/PID/stat); the owner mapping's
added cost is the difference on/off of each round's pair, median and range, and per
socket. The issue's bound is 1 µs per socket per scrape after the first (checked on CPU
time in a full run; --quick only reports). Each scrape of the owners-on exporter must
name the holders (`process="sleep"`) on at least 99% of the held sockets.

Sockets: one listener and --sockets/2 connections to it, made by this script in a
network namespace of its own, source addresses spread over 127.0.x.y; after each batch
of sockets/processes sockets a `sleep` process is started that inherits them (and only
them), and this script closes its copies: every socket then has exactly one holder.

Churn (--churn-workers W, default 20; 0 skips it): after the rounds above, W more
processes (Python) each hold --churn-held connections (both ends, with a listener of
their own) and, before each of --rounds more rounds, close --churn-replace of them and
open as many new ones: sockets the owner cache has not seen, in processes it knows. The
report gives what owners add then, per scrape and per new socket; each owners-on scrape
must name the churning processes on at least 99% of their sockets (found at once).

    python3 bench/owners.py                 # 5,000 processes, 100,000 sockets, 11 rounds
    python3 bench/owners.py --quick         # 200 processes, 4,000 sockets, 5 rounds (CI)

Like bench/namespaces.py it re-runs itself under `unshare --mount --pid --fork
--mount-proc`, so the exporters walk only the processes made here. Needs root, iproute2,
util-linux (unshare).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import namespaces as nsb  # noqa: E402  (make_ns, enter, cpu_seconds, status)

PORT = 7000


def hold(processes: int, sockets: int) -> tuple[list[subprocess.Popen], int]:
    """The holder processes and how many sockets they hold."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", PORT))
    srv.listen(4096)
    per = sockets // processes
    holders = []
    n = 0
    for _ in range(processes):
        mine = []
        while len(mine) + 2 <= per:
            c = socket.socket()
            c.setsockopt(socket.IPPROTO_IP, nsb.IP_BIND_ADDRESS_NO_PORT, 1)
            c.bind((f"127.0.{(n // 250) % 250 + 1}.{n % 250 + 1}", 0))
            n += 1
            c.connect(("127.0.0.1", PORT))
            s, _ = srv.accept()
            mine.extend([c, s])
        holders.append(subprocess.Popen(["sleep", "infinity"], pass_fds=[s.fileno() for s in mine],
                                        stdin=subprocess.DEVNULL))
        for s in mine:
            s.close()
    srv.close()  # the connections stay; no listener is needed any more
    return holders, n * 2


class Exporter:
    def __init__(self, binary: str, port: int, extra: list[str]):
        self.port = port
        self.proc = subprocess.Popen(
            [binary, f"--web.listen-address=127.0.0.1:{port}", "--collector.connections.max-series=0",
             "--no-collector.lifecycle", "--no-collector.quality", *extra], stderr=subprocess.PIPE, text=True)
        for line in self.proc.stderr:
            if "listening on" in line:
                break
        else:
            raise SystemExit("the exporter did not start")
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()

    def scrape(self) -> tuple[float, float, str]:
        """(wall seconds, exporter CPU seconds, body) of one whole scrape."""
        cpu = nsb.cpu_seconds(self.proc.pid)
        t = time.perf_counter()
        with socket.create_connection(("127.0.0.1", self.port)) as s:
            s.sendall(f"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1:{self.port}\r\n"
                      "Accept: text/plain;version=0.0.4\r\n\r\n".encode())
            chunks = []
            while data := s.recv(1 << 20):
                chunks.append(data)
        wall = time.perf_counter() - t
        head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
        if b" 200 " not in head.split(b"\r\n", 1)[0]:
            raise SystemExit(f"scrape of :{self.port} failed: {head[:200]!r}")
        return wall, nsb.cpu_seconds(self.proc.pid) - cpu, body.decode()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()


def owned(body: str, process: str = "sleep") -> int:
    return sum(1 for line in body.splitlines()
               if line.startswith("network_connections_info{") and f'process="{process}"' in line)


CHURNER = r"""
import socket, sys
held, replace = int(sys.argv[1]), int(sys.argv[2])
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(4096)
def pair():
    c = socket.create_connection(srv.getsockname())
    return c, srv.accept()[0]
pairs = [pair() for _ in range(held)]
print("ready", flush=True)
for _ in sys.stdin:
    for _ in range(replace):
        for s in pairs.pop(0):
            s.close()
        pairs.append(pair())
    print("done", flush=True)
"""


def churn(args, off: Exporter, on: Exporter) -> tuple[list, list, int]:
    """Rounds with connections replaced before each: (off rows, on rows, sockets held)."""
    workers = [subprocess.Popen([sys.executable, "-c", CHURNER, str(args.churn_held), str(args.churn_replace)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
               for _ in range(args.churn_workers)]
    # Named after the interpreter's comm, as the exporter sees it.
    comm = open(f"/proc/{workers[0].pid}/comm").read().strip()
    try:
        for w in workers:
            if w.stdout.readline().strip() != "ready":
                raise SystemExit("a churning process did not start")
        held = args.churn_workers * (2 * args.churn_held + 1)
        off.scrape()
        on.scrape()
        rows_off, rows_on = [], []
        for i in range(args.rounds):
            for w in workers:
                w.stdin.write("go\n")
                w.stdin.flush()
            for w in workers:
                if w.stdout.readline().strip() != "done":
                    raise SystemExit("a churning process stopped")
            pair = (off, on) if i % 2 == 0 else (on, off)
            got = {id(x): x.scrape() for x in pair}
            rows_off.append(got[id(off)][:2])
            rows_on.append(got[id(on)][:2])
            n = owned(got[id(on)][2], comm)
            if n < 0.99 * held:
                raise SystemExit(f"churn round {i}: {n} sockets owned by {comm}, want {held}")
        return rows_off, rows_on, held
    finally:
        for w in workers:
            w.kill()
            w.wait()


def ms(xs: list[float]) -> str:
    return f"median {statistics.median(xs) * 1000:.1f} ms (min {min(xs) * 1000:.1f}, max {max(xs) * 1000:.1f})"


def run(args) -> int:
    t = time.monotonic()
    holders, held = hold(args.processes, args.sockets)
    nsb.log(f"{len(holders)} processes hold {held} sockets ({time.monotonic() - t:.0f} s to make)")
    off = Exporter(args.exporter, 9201, [])
    on = Exporter(args.exporter, 9202, ["--collector.connections.owner"])
    try:
        first_off = off.scrape()
        first_on = on.scrape()
        if owned(first_on[2]) < 0.99 * held:
            raise SystemExit(f"first scrape: {owned(first_on[2])} sockets owned by sleep, want {held}")
        rows_off, rows_on = [], []
        for i in range(args.rounds):
            # Alternate which goes first, so neither always follows the other.
            pair = (off, on) if i % 2 == 0 else (on, off)
            got = {id(x): x.scrape() for x in pair}
            rows_off.append(got[id(off)][:2])
            rows_on.append(got[id(on)][:2])
            n = owned(got[id(on)][2])
            if n < 0.99 * held:
                raise SystemExit(f"round {i}: {n} sockets owned by sleep, want {held}")
            if owned(got[id(off)][2]):
                raise SystemExit(f"round {i}: the owners-off exporter labels owners")
        rss_on = nsb.status(on.proc.pid)["VmRSS"]
        rss_off = nsb.status(off.proc.pid)["VmRSS"]
        churned = churn(args, off, on) if args.churn_workers else None
    finally:
        off.stop()
        on.stop()
        for h in holders:
            h.kill()
            h.wait()
    d_wall = [b[0] - a[0] for a, b in zip(rows_off, rows_on)]
    d_cpu = [b[1] - a[1] for a, b in zip(rows_off, rows_on)]
    per_cpu = statistics.median(d_cpu) / held * 1e6
    per_wall = statistics.median(d_wall) / held * 1e6
    print(f"owners: {args.processes} processes holding {held} sockets, {args.rounds} rounds, "
          f"{os.cpu_count()} CPUs, load {open('/proc/loadavg').read().split()[0]}")
    print(f"  first scrape: owners off {first_off[0] * 1000:.0f} ms wall, {first_off[1] * 1000:.0f} ms CPU; "
          f"owners on {first_on[0] * 1000:.0f} ms wall, {first_on[1] * 1000:.0f} ms CPU "
          f"(added {(first_on[1] - first_off[1]) / held * 1e6:.2f} µs CPU per socket)")
    print(f"  later scrapes, owners off: wall {ms([r[0] for r in rows_off])}, CPU {ms([r[1] for r in rows_off])}")
    print(f"  later scrapes, owners on:  wall {ms([r[0] for r in rows_on])}, CPU {ms([r[1] for r in rows_on])}")
    print(f"  added by owners (on - off, per round): wall {ms(d_wall)}, CPU {ms(d_cpu)}")
    print(f"  per socket: CPU {per_cpu:.2f} µs (range {min(d_cpu) / held * 1e6:.2f} to "
          f"{max(d_cpu) / held * 1e6:.2f}), wall {per_wall:.2f} µs; bound 1 µs; RSS on {rss_on} KiB, off {rss_off} KiB")
    if churned:
        c_off, c_on, c_held = churned
        c_cpu = [b[1] - a[1] for a, b in zip(c_off, c_on)]
        new = 2 * args.churn_workers * args.churn_replace
        print(f"  churn: {args.churn_workers} processes holding {c_held} more sockets, {new} of them new before each "
              f"of {args.rounds} rounds")
        print(f"  churn, owners off: CPU {ms([r[1] for r in c_off])}; owners on: CPU {ms([r[1] for r in c_on])}")
        print(f"  churn, added by owners: CPU {ms(c_cpu)}, {statistics.median(c_cpu) / (held + c_held) * 1e6:.2f} µs "
              f"per socket of the read, {statistics.median(c_cpu) / new * 1e6:.1f} µs per new socket")
    if args.quick or args.no_check:
        return 0
    return 0 if per_cpu <= 1.0 else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--exporter", default=os.environ.get("CONN_EXPORTER_BIN", "target/release/conn-exporter"))
    ap.add_argument("--processes", type=int, default=5000)
    ap.add_argument("--sockets", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--quick", action="store_true", help="200 processes, 4,000 sockets, 5 rounds; report only")
    ap.add_argument("--no-check", action="store_true", help="report only; exit 0")
    ap.add_argument("--churn-workers", type=int, default=20)
    ap.add_argument("--churn-held", type=int, default=500, help="connections each churning process holds")
    ap.add_argument("--churn-replace", type=int, default=100, help="connections each replaces before a round")
    args = ap.parse_args()
    if args.quick:
        args.processes, args.sockets, args.rounds = 200, 4000, 5
        args.churn_workers, args.churn_held, args.churn_replace = 4, 50, 10
    if args.sockets // args.processes < 2:
        raise SystemExit("--sockets must be at least twice --processes")
    args.exporter = os.path.abspath(args.exporter)
    if not os.access(args.exporter, os.X_OK):
        raise SystemExit(f"no exporter binary at {args.exporter} (cargo build --release, or --exporter)")
    rc = nsb.private_world(("ip", "sleep"), "owners-netns", "owners-bench")
    if rc is not None:
        return rc
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
