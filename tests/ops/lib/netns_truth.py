#!/usr/bin/env python3
"""Compares an all-mode scrape with `ss` in a booted container and a peer namespace
(tests/ops/test-booted-netns.sh writes the inputs into --work):

    scrape                     the exporter's text exposition
    ss-container.1, .2         `ss -HtanpO` inside the container, before and after the scrape
    ss-peer.1, .2              `ss -Htan` in the peer namespace, before and after
    addr-container             `ip -o -4 addr show` inside the container
    echo-units                 `systemctl list-units 'cx-echo@*'` inside the container

Exit 0 when every check holds, 1 otherwise (each failure printed). See the test's header
for what is checked.
"""

import argparse
import collections
import os
import re
import sys

from metrics_grep import duplicates, parse_series

STATES = {"ESTAB": "ESTABLISHED", "UNCONN": "CLOSE"}

failures = []


def check(cond, msg):
    if not cond:
        failures.append(msg)
        print("FAIL: " + msg)
    return cond


def endpoint(ep):
    ip, port = ep.rsplit(":", 1)
    ip = ip.strip("[]")
    ip = ip.split("%", 1)[0]
    if ip.startswith("::ffff:"):
        ip = ip[len("::ffff:"):]
    return ("0.0.0.0" if ip == "*" else ip), ("0" if port == "*" else port)


def read_ss(path):
    """(state, local addr, local port, remote addr, remote port) -> per socket, its holders
    as (pid, comm) pairs, pids as the namespace that ran ss sees them."""
    out = collections.defaultdict(list)
    with open(path) as f:
        for line in f:
            fields = line.split()
            if len(fields) < 5:
                continue
            state = STATES.get(fields[0], fields[0]).replace("-", "_").replace("FIN_WAIT_", "FIN_WAIT")
            key = (state, *endpoint(fields[3]), *endpoint(fields[4]))
            users = re.findall(r'\("([^"]*)",pid=(\d+)', line)
            out[key].append(sorted({(int(pid), comm) for comm, pid in users}))
    return out


def read_scrape(path):
    with open(path) as f:
        lines = f.readlines()
    dups = duplicates(lines)
    check(not dups, f"duplicate series in the scrape: {dups[:3]}")
    return parse_series(lines)


def key_of(labels):
    return (labels["state"], labels["source_address"], labels["source_port"],
            labels["destination_address"], labels["destination_port"])


def interfaces(path):
    table = {}
    with open(path) as f:
        for line in f:
            m = re.match(r"\d+:\s+(\S+)\s+inet\s+([0-9.]+)/", line)
            if m:
                table[m.group(2)] = m.group(1)
    return table


def expected_interface(addr, table):
    if addr in ("0.0.0.0", "::"):
        return "any"
    return table.get(addr, "unknown")


def compare_namespace(name, info, ss, table):
    """The scrape's series labelled netns=name against ss of that namespace."""
    mine = [(l, v) for _, l, v in info if l.get("netns") == name]
    got = collections.Counter()
    for l, v in mine:
        got[key_of(l)] += int(v)
        check(l.get("container_id") == "" and l.get("pod_uid") == "",
              f"{name}: {key_of(l)} has container_id={l.get('container_id')!r} pod_uid={l.get('pod_uid')!r}")
        want_if = expected_interface(l["source_address"], table)
        check(l["interface"] == want_if, f"{name}: {key_of(l)} interface={l['interface']!r}, want {want_if!r}")
    want = collections.Counter({k: len(v) for k, v in ss.items()})
    missing, extra = want - got, got - want
    check(not missing, f"{name}: sockets ss shows, missing from the scrape: {sorted(missing.items())}")
    check(not extra, f"{name}: series of sockets ss does not show: {sorted(extra.items())}")
    return mine


def host_pids(leader):
    """The container's pids (as its ss names them) -> the host's, from the NSpid lines
    of the processes in the leader's pid namespace."""
    pidns = os.readlink(f"/proc/{leader}/ns/pid")
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry}/ns/pid") != pidns:
                continue
            with open(f"/proc/{entry}/status") as f:
                nspid = next(line for line in f if line.startswith("NSpid:")).split()
        except (OSError, StopIteration):
            continue
        out[int(nspid[-1])] = int(entry)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--machine", required=True)
    ap.add_argument("--peer", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--ours", required=True, help="container address,peer address")
    ap.add_argument("--leader", type=int, required=True, help="host pid of the container's init")
    args = ap.parse_args()
    w = lambda n: os.path.join(args.work, n)  # noqa: E731
    ss_c1, ss_c2 = read_ss(w("ss-container.1")), read_ss(w("ss-container.2"))
    ss_p1, ss_p2 = read_ss(w("ss-peer.1")), read_ss(w("ss-peer.2"))
    if ss_c1 != ss_c2 or ss_p1 != ss_p2:
        print("the sockets changed during the scrape; again")
        return 1
    series = read_scrape(w("scrape"))
    info = [s for s in series if s[0] == "network_connections_info"]
    c_ip, p_ip = args.ours.split(",")
    container_table = interfaces(w("addr-container"))
    check(container_table.get(c_ip) == "host0", f"the container's ip addr shows {container_table}")

    mine = compare_namespace(args.machine, info, ss_c1, container_table)
    compare_namespace(args.peer, info, ss_p1, {"127.0.0.1": "lo", p_ip: "cxpeer0"})

    # The test's addresses belong to one namespace each, and appear under no other.
    for _, l, _ in info:
        for addr, ns in ((c_ip, args.machine), (p_ip, args.peer)):
            if l["source_address"] == addr:
                check(l.get("netns") == ns, f"{key_of(l)} is labelled netns={l.get('netns')!r}, want {ns!r}")

    # The states family counts the container's sockets too.
    states = sum(v for n, l, v in series if n == "network_connection_states" and l.get("netns") == args.machine)
    ss_total = sum(len(v) for v in ss_c1.values())
    check(states == ss_total, f"network_connection_states{{netns={args.machine!r}}} sums to {states}, ss shows {ss_total}")

    # The peers family counts every non-listening socket of the container once; the
    # listener family has each listener, with the owner the per-connection series has.
    peers = sum(v for n, l, v in series if n == "network_connection_peers" and l.get("netns") == args.machine)
    ss_open = sum(len(v) for k, v in ss_c1.items() if k[0] != "LISTEN")
    check(peers == ss_open, f"network_connection_peers{{netns={args.machine!r}}} sums to {peers}, ss shows {ss_open} "
                            "non-listening sockets")
    listeners = {(l["source_address"], l["source_port"]): l.get("process") for n, l, _ in series
                 if n == "network_listen_queue_length" and l.get("netns") == args.machine}
    info_listeners = {(l["source_address"], l["source_port"]): l.get("process") for l, _ in mine
                      if l["state"] == "LISTEN"}
    check(listeners == info_listeners and len(listeners) == sum(1 for k in ss_c1 if k[0] == "LISTEN"),
          f"network_listen_queue_length{{netns={args.machine!r}}}: {listeners}, per-connection LISTEN: {info_listeners}")

    # Owners: each socket's holders as `ss -tanp` in the container names them; a socket
    # several hold takes the holder with the lowest pid on the host (the README's rule).
    with open(w("echo-units")) as f:
        echo_units = {line.split()[0] for line in f if line.strip()}
    to_host = host_pids(args.leader)
    by_process = collections.Counter()
    shared = 0
    for l, _ in mine:
        holders = ss_c1[key_of(l)][0]
        check(all(pid in to_host for pid, _ in holders), f"{key_of(l)}: holders {holders} not all found on the host")
        holders = sorted((to_host.get(pid, 0), comm) for pid, comm in holders)
        want = holders[0][1] if holders else ""
        shared += len({pid for pid, _ in holders}) > 1
        check(l.get("process") == want, f"{key_of(l)}: process={l.get('process')!r}, ss -tanp names {holders}")
        unit = l.get("systemd_unit")
        # A cx-echo@ instance's cat shares its connection with systemd; on a host whose pids
        # wrapped past pid_max, that cat can have the lower host pid and own it.
        want_unit = {"bash": {"cx-client.service"}, "cat": {"cx-activate.service"} | echo_units,
                     "systemd": {"init.scope"}, "systemd-socket-": {"cx-activate.service"}, "": {""}}.get(want)
        check(want_unit is not None and unit in want_unit,
              f"{key_of(l)}: process {want!r} systemd_unit={unit!r}, want one of {sorted(want_unit or [])}")
        by_process[l.get("process")] += 1
    # What the scenario made is all there: bash's 4 connections; systemd's listener and
    # the 3 connections it accepted, each shared with the cat of a cx-echo@ instance;
    # cx-activate.service's listener and the connection its child cat holds alone. Each
    # shared connection is systemd's or its cat's, whichever has the lower host pid
    # (checked socket by socket above): usually systemd, the parent, unless pids wrapped.
    check(by_process["bash"] == 4 and by_process["systemd"] >= 1
          and by_process["systemd"] + by_process["cat"] == 5
          and by_process["systemd-socket-"] == 1 and shared == 3 and len(echo_units) == 3,
          f"container sockets by process: {dict(by_process)}, {shared} shared, {len(echo_units)} cx-echo@ units; "
          "want bash 4, systemd and cat 5 (systemd at least its listener), systemd-socket- 1, 3 shared, 3 units")
    print(f"container {args.machine}: {len(mine)} series = ss ({ss_total} sockets), by process {dict(by_process)}; "
          f"peer {args.peer}: {sum(len(v) for v in ss_p1.values())} sockets; {len(info)} series in all namespaces")
    if failures:
        with open(w("ss-container.1")) as f:
            print("ss -tanp in the container:\n" + f.read())
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
