#!/usr/bin/env python3
"""All mode (the eBPF walk, or the dumps) against `ss` while sockets change (tests/ops/test-netns-table.sh).

Two commands:

    table_truth.py sockets [--churn CONNS]
        Run inside one network namespace (`ip netns exec NS`): holds the namespace's
        steady sockets and, with --churn, keeps CONNS short connections open at any time,
        opening and closing them continually. Prints "ready" once every held socket is
        made, then runs until killed.

    table_truth.py check --work DIR --namespaces A,B,.. --churn A,.. --mode MODE [--break KIND]
        Checks DIR/scrape-N/{ss-before/NS, metrics, ss-after/NS} for every N: `ss -tanH`
        in each namespace right before and right after a scrape of the exporter. Prints
        one line per failure, naming the socket, and a summary; exit 1 on any failure.

The held sockets of each namespace (steady: the same in both ss reads):
    LISTEN 127.0.0.1:7000, [::1]:7000 (IPV6_V6ONLY), [::]:7001 (dual stack),
           127.0.0.1:7003 (TCP_DEFER_ACCEPT 60 s)
    ESTABLISHED pairs to each of 7000 (IPv4, IPv6) and 7001 (IPv4 clients, so the server's
           end is ::ffff:127.0.0.1, and one IPv6 client)
    FIN_WAIT2 / CLOSE_WAIT pairs (one end shut down for writing: a full socket in
           FIN_WAIT2, not orphaned, so it stays), each way, IPv4 and IPv6
    SYN_RECV request socks on 7003 (the client sent nothing, so the request waits: the
           client's end is ESTABLISHED)
The churn (ports 7100 IPv4 and IPv6, 7102 IPv4 with TCP_DEFER_ACCEPT 5 s): each
connection lives 0.05-1.5 s, then one end closes (the client or the server, at random)
and the other end 0-0.8 s later: the first closer goes FIN_WAIT1 -> FIN_WAIT2 (a
minisock: it is orphaned) -> TIME_WAIT, the other CLOSE_WAIT -> LAST_ACK. Connections
to 7102 are SYN_RECV request socks until the client sends a byte (0.02-0.4 s after its
connect): the request becomes a full socket. Churn clients bind ports in turn from
30000-65000 (see CHURN_CLIENT_PORTS), and tcp_tw_reuse is 0 in the test's namespaces (the
script sets it), so a tuple is not reused while its TIME_WAIT lives.

Checks, per scrape and namespace + tuple (the series labelled netns=NS, value = count):
  steady    in both ss reads with one state: in the scrape exactly once, in that state;
  changing  in both, two states: exactly once, in a state on a TCP path from the first
            to the second (ESTABLISHED, FIN_WAIT1, FIN_WAIT2, TIME_WAIT for ESTABLISHED
            -> TIME_WAIT);
  born/died in one ss read only: at most once, in a state that can lead to (born) or
            follow (died) the state ss saw;
  neither   in no ss read: only a churn connection (port 7100-7102 at either end, in a
            churn namespace), at most once;
  any       never twice (two states, or a count of 2), no duplicate series at all;
  totals    network_connection_states of each namespace sums to its
            network_connections_info; each churn namespace's TIME_WAIT sockets are in the
            scrape (> 0);
  source    conn_exporter_socket_source_info says the source asked for; with ebpf the
            conn_exporter_socket_table_* metrics are there and no read fell back to the
            dumps.
--break dup|drop|state corrupts the first scrape before the checks (a steady socket's
line duplicated, removed, or its state rewritten), to show that the checks can fail.
"""

import argparse
import collections
import ipaddress
import os
import random
import re
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from metrics_grep import LINE, PAIR, duplicates, parse_series  # noqa: E402

HELD_PORTS = (7000, 7001, 7003)
CHURN_PORTS = (7100, 7101, 7102)
# Churn clients bind their ports in turn from this range, above the namespaces'
# ip_local_port_range (the script sets 10000-29999): a client port, so a tuple, comes back
# only after 35,000 connections (minutes), never while a TIME_WAIT of it lives on either
# side. (A kernel-chosen port can come back at once where the server closed first: the
# client keeps no TIME_WAIT, and a SYN to the server's TIME_WAIT opens a new connection.)
CHURN_CLIENT_PORTS = (30000, 65000)

# ---------------------------------------------------------------------------------------
# sockets: the helper run in each namespace
# ---------------------------------------------------------------------------------------


def listener(family, addr, port, v6only=None, defer=0):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if v6only is not None:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1 if v6only else 0)
    if defer:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, defer)
    s.bind((addr, port))
    s.listen(1024)
    return s


def pair(lsock, family, addr, port, accept=True):
    c = socket.socket(family, socket.SOCK_STREAM)
    c.settimeout(5)
    c.connect((addr, port))
    if not accept:
        return c, None
    lsock.settimeout(5)
    s, _ = lsock.accept()
    return c, s


def hold(args):
    v4, v6 = socket.AF_INET, socket.AF_INET6
    kept = []
    l4 = listener(v4, "127.0.0.1", 7000)
    l6 = listener(v6, "::1", 7000, v6only=True)
    ld = listener(v6, "::", 7001, v6only=False)
    ldef = listener(v4, "127.0.0.1", 7003, defer=60)
    kept += [l4, l6, ld, ldef]
    for _ in range(args.held):
        kept += pair(l4, v4, "127.0.0.1", 7000)
        kept += pair(l6, v6, "::1", 7000)
    for _ in range(2):
        kept += pair(ld, v4, "127.0.0.1", 7001)
    kept += pair(ld, v6, "::1", 7001)
    # One end shut down for writing: FIN_WAIT2 (a full socket: not orphaned) / CLOSE_WAIT.
    for lsock, fam, addr in ((l4, v4, "127.0.0.1"), (l6, v6, "::1")):
        c, s = pair(lsock, fam, addr, 7000)
        c.shutdown(socket.SHUT_WR)
        kept += [c, s]
        c, s = pair(lsock, fam, addr, 7000)
        s.shutdown(socket.SHUT_WR)
        kept += [c, s]
    # SYN_RECV request socks: the client sends nothing, the deferred accept waits.
    for _ in range(2):
        kept.append(pair(ldef, v4, "127.0.0.1", 7003, accept=False)[0])
    churn = Churn(args.churn) if args.churn else None
    print("ready", flush=True)
    while True:
        if churn:
            churn.step()
            time.sleep(0.002)
        else:
            time.sleep(1)


class Churn:
    """Keeps `target` short connections open, each closed by one end then the other."""

    def __init__(self, target):
        v4, v6 = socket.AF_INET, socket.AF_INET6
        self.target = target
        self.listeners = [
            (listener(v4, "127.0.0.1", 7100), v4, "127.0.0.1", 7100, False),
            (listener(v6, "::1", 7100, v6only=True), v6, "::1", 7100, False),
            (listener(v4, "127.0.0.1", 7102, defer=5), v4, "127.0.0.1", 7102, True),
        ]
        for entry in self.listeners:
            entry[0].setblocking(False)
        self.conns = {}  # client's (addr, port) -> dict
        self.servers = {}  # client's (addr, port) -> accepted socket not yet matched
        self.later = []  # (time, socket): second closes
        self.rng = random.Random()
        self.port = self.rng.randrange(*CHURN_CLIENT_PORTS)

    def open_one(self, now):
        lsock, fam, addr, port, defer = self.rng.choices(self.listeners, weights=(45, 35, 20))[0]
        c = socket.socket(fam, socket.SOCK_STREAM)
        c.settimeout(1)
        try:
            for _ in range(20):
                self.port = CHURN_CLIENT_PORTS[0] + (self.port + 1 - CHURN_CLIENT_PORTS[0]) % (
                    CHURN_CLIENT_PORTS[1] - CHURN_CLIENT_PORTS[0])
                try:
                    c.bind((addr, self.port))
                    break
                except OSError:
                    continue
            c.connect((addr, port))
        except OSError:
            c.close()
            return
        key = c.getsockname()[:2]
        self.conns[key] = {
            "client": c,
            "server": None,
            "data_at": now + self.rng.uniform(0.02, 0.4) if defer else None,
            "close_at": now + self.rng.uniform(0.05, 1.5),
            "client_first": self.rng.random() < 0.5,
            "gap": self.rng.uniform(0.0, 0.8),
        }

    def accept_all(self):
        for lsock, *_ in self.listeners:
            while True:
                try:
                    s, peer = lsock.accept()
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    break
                key = peer[:2]
                conn = self.conns.get(key)
                if conn is None:
                    s.close()  # its client is gone already
                else:
                    conn["server"] = s

    def step(self):
        now = time.monotonic()
        self.accept_all()
        while len(self.conns) < self.target:
            self.open_one(now)
        for key, conn in list(self.conns.items()):
            if conn["data_at"] is not None and now >= conn["data_at"]:
                try:
                    conn["client"].send(b"x")
                except OSError:
                    pass
                conn["data_at"] = None
            if now < conn["close_at"]:
                continue
            first, second = ("client", "server") if conn["client_first"] or conn["server"] is None else ("server", "client")
            conn[first].close()
            if conn[second] is not None:
                self.later.append((now + conn["gap"], conn[second]))
            del self.conns[key]
        keep = []
        for at, s in self.later:
            if now >= at:
                s.close()
            else:
                keep.append((at, s))
        self.later = keep


# ---------------------------------------------------------------------------------------
# check
# ---------------------------------------------------------------------------------------

SS_STATES = {
    "ESTAB": "ESTABLISHED", "SYN-SENT": "SYN_SENT", "SYN-RECV": "SYN_RECV",
    "FIN-WAIT-1": "FIN_WAIT1", "FIN-WAIT-2": "FIN_WAIT2", "TIME-WAIT": "TIME_WAIT",
    "UNCONN": "CLOSE", "CLOSE-WAIT": "CLOSE_WAIT", "LAST-ACK": "LAST_ACK",
    "LISTEN": "LISTEN", "CLOSING": "CLOSING",
}
# TCP's transitions a socket can make while it is seen (RFC 793's diagram, the kernel's
# request sock -> full socket and full socket -> TIME_WAIT minisock keep the state).
NEXT = {
    "SYN_SENT": {"ESTABLISHED", "CLOSE"},
    "SYN_RECV": {"ESTABLISHED", "FIN_WAIT1", "CLOSE"},
    "ESTABLISHED": {"FIN_WAIT1", "CLOSE_WAIT", "CLOSE"},
    "FIN_WAIT1": {"FIN_WAIT2", "CLOSING", "TIME_WAIT", "CLOSE"},
    "FIN_WAIT2": {"TIME_WAIT", "CLOSE"},
    "CLOSING": {"TIME_WAIT", "CLOSE"},
    "CLOSE_WAIT": {"LAST_ACK", "CLOSE"},
    "LAST_ACK": {"CLOSE"},
    "TIME_WAIT": set(),
    "LISTEN": {"CLOSE"},
    "CLOSE": set(),
}


def reach(state):
    """States reachable from state (itself included)."""
    seen, todo = {state}, [state]
    while todo:
        for n in NEXT.get(todo.pop(), ()):
            if n not in seen:
                seen.add(n)
                todo.append(n)
    return seen


REACH = {s: reach(s) for s in NEXT}
REACHED_FROM = {s: {p for p in NEXT if s in REACH[p]} for s in NEXT}


def between(a, b):
    return {s for s in NEXT if s in REACH.get(a, {a}) and b in REACH.get(s, {s})}


def norm_addr(text):
    text = text.strip("[]").split("%", 1)[0]
    if text == "*":
        return "::"
    try:
        return ipaddress.ip_address(text).compressed
    except ValueError:
        return text


def endpoint(ep):
    addr, port = ep.rsplit(":", 1)
    return norm_addr(addr), "0" if port == "*" else port


def read_ss(path):
    """(local addr, local port, remote addr, remote port) -> [states] of one `ss -tanH`."""
    out = collections.defaultdict(list)
    with open(path) as f:
        for line in f:
            fields = line.split()
            if len(fields) < 5:
                continue
            state = SS_STATES.get(fields[0], fields[0])
            out[(*endpoint(fields[3]), *endpoint(fields[4]))].append(state)
    return out


def fmt(key):
    la, lp, ra, rp = key
    b = lambda a: f"[{a}]" if ":" in a else a  # noqa: E731
    return f"{b(la)}:{lp} -> {b(ra)}:{rp}"


class Checker:
    def __init__(self, limit):
        self.failures = collections.Counter()
        self.printed = collections.Counter()
        self.limit = limit

    def fail(self, kind, msg):
        self.failures[kind] += 1
        self.printed[kind] += 1
        if self.printed[kind] <= self.limit:
            print(f"FAIL [{kind}] {msg}")

    def check(self, cond, kind, msg):
        if not cond:
            self.fail(kind, msg)
        return cond


def parse_metrics(lines):
    return parse_series(lines)


def info_key(labels):
    return (norm_addr(labels["source_address"]), labels["source_port"],
            norm_addr(labels["destination_address"]), labels["destination_port"])


def corrupt(lines, kind, namespaces, ss_before, ss_after):
    """--break: one steady socket's line of the first scrape duplicated, dropped or given
    another state. Returns the lines and what was done."""
    for i, line in enumerate(lines):
        m = LINE.match(line)
        if line.startswith("#") or not m or m.group(1) != "network_connections_info":
            continue
        labels = dict(PAIR.findall(m.group(2)))
        ns = labels.get("netns")
        if ns not in namespaces:
            continue
        key = info_key(labels)
        if ss_before[ns].get(key) != ["ESTABLISHED"] or ss_after[ns].get(key) != ["ESTABLISHED"]:
            continue
        what = f"{ns} {fmt(key)} ESTABLISHED"
        if kind == "dup":
            return lines[:i + 1] + [line] + lines[i + 1:], f"duplicated the line of {what}"
        if kind == "drop":
            return lines[:i] + lines[i + 1:], f"dropped the line of {what}"
        if kind == "state":
            return (lines[:i] + [line.replace('state="ESTABLISHED"', 'state="CLOSE_WAIT"')] + lines[i + 1:],
                    f"rewrote {what} to CLOSE_WAIT")
    raise SystemExit(f"--break {kind}: no steady ESTABLISHED socket of the test's namespaces in the first scrape")


def is_churn(ns, key, churn_ns):
    return ns in churn_ns and (int(key[1]) in CHURN_PORTS or int(key[3]) in CHURN_PORTS)


def check(args):
    namespaces = [n for n in args.namespaces.split(",") if n]
    churn_ns = {n for n in args.churn.split(",") if n}
    c = Checker(args.limit)
    counts = collections.Counter()
    scrapes = sorted((d for d in os.listdir(args.work) if re.fullmatch(r"scrape-\d+", d)),
                     key=lambda d: int(d.split("-")[1]))
    c.check(scrapes, "input", f"no scrape-N directories in {args.work}")
    fallbacks = []
    for n, d in enumerate(scrapes):
        base = os.path.join(args.work, d)
        ss_before = {ns: read_ss(os.path.join(base, "ss-before", ns)) for ns in namespaces}
        ss_after = {ns: read_ss(os.path.join(base, "ss-after", ns)) for ns in namespaces}
        with open(os.path.join(base, "metrics")) as f:
            lines = f.readlines()
        if args.break_kind and n == 0:
            lines, what = corrupt(lines, args.break_kind, set(namespaces), ss_before, ss_after)
            print(f"--break {args.break_kind}: {d}: {what}")
        dups = duplicates(lines)
        c.check(not dups, "duplicate-series", f"{d}: duplicate series in the scrape: {dups[:3]}")
        series = parse_metrics(lines)
        counts["scrapes"] += 1

        # The scrape's sockets of the test's namespaces: (ns, tuple) -> Counter(state).
        got = collections.defaultdict(collections.Counter)
        info_sum = collections.Counter()
        states_sum = collections.Counter()
        for name, labels, value in series:
            ns = labels.get("netns")
            if ns not in ss_before:
                continue
            if name == "network_connections_info":
                got[(ns, info_key(labels))][labels["state"]] += int(value)
                info_sum[ns] += int(value)
            elif name == "network_connection_states":
                states_sum[ns] += int(value)

        for ns in namespaces:
            c.check(info_sum[ns] > 0, "namespace-missing", f"{d}: no network_connections_info of netns={ns}")
            c.check(info_sum[ns] == states_sum[ns], "totals",
                    f"{d}: {ns}: network_connection_states sums to {states_sum[ns]}, "
                    f"network_connections_info to {info_sum[ns]}")
            if ns in churn_ns:
                tw = sum(v["TIME_WAIT"] for (gns, _), v in got.items() if gns == ns)
                counts["churn_time_wait"] += tw
                c.check(tw > 0, "churn-time-wait", f"{d}: {ns}: no TIME_WAIT socket in the scrape (churn namespace)")
            keys = set(ss_before[ns]) | set(ss_after[ns]) | {k for gns, k in got if gns == ns}
            for key in keys:
                b, a = ss_before[ns].get(key), ss_after[ns].get(key)
                seen = got.get((ns, key), collections.Counter())
                total = sum(seen.values())
                states = sorted(seen.elements())
                where = f"{d}: {ns} {fmt(key)}"
                counts["sockets"] += 1
                if (b and len(b) > 1) or (a and len(a) > 1):
                    counts["ss_twice"] += 1  # ss itself saw the tuple twice: at most once here
                    c.check(total <= 1, "duplicate", f"{where}: ss {b} then {a}, scrape has {states}")
                    continue
                b = b[0] if b else None
                a = a[0] if a else None
                if not c.check(total <= 1, "duplicate", f"{where}: ss {b} then {a}, scrape has {states}"):
                    continue
                s = states[0] if states else None
                if b and a and b == a:
                    counts["steady"] += 1
                    if total == 0:
                        c.fail("missing-steady", f"{where}: {b} in both ss reads, not in the scrape")
                    else:
                        c.check(s == b, "wrong-state", f"{where}: {b} in both ss reads, scrape says {s}")
                elif b and a:
                    ok = between(b, a)
                    if ok:
                        counts["changing"] += 1
                        if total == 0:
                            c.fail("missing-changing", f"{where}: {b} then {a}, not in the scrape")
                        else:
                            c.check(s in ok, "wrong-state", f"{where}: {b} then {a}, scrape says {s} "
                                                            f"(want one of {sorted(ok)})")
                    else:  # the tuple was reused by a new connection: two sockets in turn
                        counts["reused"] += 1
                        if counts["reused"] <= 5:
                            print(f"note: {where}: {b} then {a}, no TCP path between: a new connection "
                                  f"on the tuple; scrape has {states}")
                        c.check(s is None or s in REACH.get(b, {b}) | REACHED_FROM.get(a, {a}), "wrong-state",
                                f"{where}: {b} then (reused) {a}, scrape says {s}")
                elif a:
                    counts["born"] += 1
                    c.check(s is None or s in REACHED_FROM.get(a, {a}), "wrong-state",
                            f"{where}: born during the scrape as {a}, scrape says {s}")
                elif b:
                    counts["died"] += 1
                    c.check(s is None or s in REACH.get(b, {b}), "wrong-state",
                            f"{where}: {b}, gone during the scrape, scrape says {s}")
                else:
                    counts["neither"] += 1
                    c.check(is_churn(ns, key, churn_ns), "phantom",
                            f"{where}: in no ss read and not a churn connection, scrape says {s}")

        # The source and the table's own metrics.
        def values(name):
            return [(labels, value) for n_, labels, value in series if n_ == name]

        src = [labels.get("source") for labels, value in values("conn_exporter_socket_source_info") if value == 1]
        chain = sum(v for labels, v in values("conn_exporter_socket_table_fallbacks_total")
                    if labels.get("reason") == "chain")
        errors = sum(v for labels, v in values("conn_exporter_socket_table_fallbacks_total")
                     if labels.get("reason") == "error")
        entries = [v for _, v in values("conn_exporter_socket_table_entries")]
        if args.mode == "netlink":
            c.check(src == ["netlink"], "source", f"{d}: conn_exporter_socket_source_info says {src}, want netlink")
        else:
            for name in ("entries", "rereads_total", "fallbacks_total"):
                c.check(values(f"conn_exporter_socket_table_{name}"), "table-metrics",
                        f"{d}: conn_exporter_socket_table_{name} missing")
            fallbacks.append((chain, errors))
        if args.mode == "ebpf":
            c.check(src == ["ebpf"], "source", f"{d}: conn_exporter_socket_source_info says {src}, want ebpf")
            c.check(entries and entries[0] > 0, "table-metrics", f"{d}: conn_exporter_socket_table_entries {entries}")
    if fallbacks:
        (c0, e0), (c1, e1) = fallbacks[0], fallbacks[-1]
        c.check(c1 == c0 and e1 == e0, "fallback",
                f"reads fell back to dumps during the scrapes: chain {c0}->{c1}, error {e0}->{e1} "
                "(the walk was not what was checked)")

    for kind, n in sorted(c.failures.items()):
        if n > c.limit:
            print(f"FAIL [{kind}] ... {n} in all ({n - c.limit} not printed)")
    bad = sum(c.failures.values())
    print(f"summary mode={args.mode}: {counts['scrapes']} scrapes, {counts['sockets']} sockets checked: "
          f"{counts['steady']} steady, {counts['changing']} changing, {counts['born']} born, "
          f"{counts['died']} died, {counts['neither']} churn in neither ss read, {counts['reused']} reused tuples, "
          f"{counts['ss_twice']} twice in one ss read; churn TIME_WAIT seen {counts['churn_time_wait']}; "
          f"{bad} bad" + (f" ({', '.join(f'{k} {v}' for k, v in sorted(c.failures.items()))})" if bad else "")
          + f": {'FAIL' if bad else 'PASS'}")
    return 1 if bad else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sockets")
    s.add_argument("--held", type=int, default=4, help="ESTABLISHED pairs per held listener and family")
    s.add_argument("--churn", type=int, default=0, help="churn connections open at any time (0: none)")
    k = sub.add_parser("check")
    k.add_argument("--work", required=True)
    k.add_argument("--namespaces", required=True)
    k.add_argument("--churn", default="")
    k.add_argument("--mode", choices=("ebpf", "netlink"), required=True)
    k.add_argument("--break", dest="break_kind", choices=("dup", "drop", "state"))
    k.add_argument("--limit", type=int, default=15, help="failures printed per kind")
    args = ap.parse_args()
    if args.cmd == "sockets":
        hold(args)
        return 0
    return check(args)


if __name__ == "__main__":
    sys.exit(main())
