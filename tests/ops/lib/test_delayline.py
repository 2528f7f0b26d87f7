#!/usr/bin/env python3
"""Self-test of the delay line (delayline.py): does it do what the truth tests assume?

Run as root in a private namespace (it creates namespaces dlt-client, dlt-server):

    mkdir -p /run/netns && /work/iso.sh python3 tests/ops/lib/test_delayline.py [--quick]

Checks, each printing its figures:
  rtt     with D ms each way (and an asymmetric 30/5 line), TCP's smoothed RTT as
          `ss -tin` prints it (`rtt:`) lies in [sum of delays, sum + max(2 ms, 5%)] on
          every connection, IPv4 and IPv6; `minrtt:` too.
  drops   with drop-every 50 on a paced bulk transfer, each way, IPv4 and IPv6: the
          count the line reports equals the sender namespace's `nstat` delta of
          TcpRetransSegs minus TcpExtTCPDSACKRecvSegs, and equals the socket's
          tcpi_total_retrans (`retrans:x/TOTAL`) minus `dsack_dups:`; the TUN devices
          dropped nothing themselves. One run adds a 1 s delay spike (the line's hold,
          in order): its RTOs retransmit spuriously, the receiver reports the duplicates
          by DSACK, and the equality still holds (TcpExtTCPDSACKRecvSegs > 0 asserted).
          Without --quick also drop-every 7, cubic instead of the default congestion
          control, and an unpaced sender.
  stall   a receiver that never reads: the writer's `rwnd_limited:` grows between two
          samples, its Send-Q and the receiver's Recv-Q are not empty.

--break CHECK shifts that check's expectation (expected delay +5 ms, expected drop
count +1, rwnd_limited expected to stay still) so the check must fail: run it once
per check to see that the assertion can fail.
"""

import argparse
import json
import os
import re
import socket
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from delayline import DelayLine, StalledReceiver, netns, sh  # noqa: E402

CLIENT, SERVER = "dlt-client", "dlt-server"
SO_MAX_PACING_RATE = 47
NSTAT_KEYS = ["TcpOutSegs", "TcpRetransSegs", "TcpExtTCPDSACKRecvSegs", "TcpExtTCPDSACKRecv",
              "TcpExtTCPLostRetransmit", "TcpExtTCPLossProbes", "TcpExtTCPTimeouts",
              "TcpExtTCPSackRecoveryFail", "TcpExtTCPSpuriousRTOs", "TcpExtTCPDSACKOfoRecv",
              "TcpExtTCPFastRetrans", "TcpExtTCPSlowStartRetrans"]

failures = []


def check(cond, msg):
    print(("ok: " if cond else "FAIL: ") + msg, flush=True)
    if not cond:
        failures.append(msg)
    return cond


# --- kernel views --------------------------------------------------------------------------

def ss_socket(ns, port):
    """`ss -tinH` in NS for the socket whose local port is PORT: dict of its fields
    (state, recvq, sendq, and the tcp_info keys as ss prints them)."""
    out = sh("ip", "netns", "exec", ns, "ss", "-tinH", f"( sport = :{port} )")
    lines = out.splitlines()
    if not lines:
        return None
    first = lines[0].split()
    info = {"state": first[0], "recvq": int(first[1]), "sendq": int(first[2])}
    text = " ".join(lines[1:])
    for key, val in re.findall(r"(\w+):(\S+)", text):
        info[key] = val
    m = re.search(r"\brtt:([\d.]+)/([\d.]+)", text)
    if m:
        info["rtt_ms"], info["rttvar_ms"] = float(m.group(1)), float(m.group(2))
    m = re.search(r"\bretrans:(\d+)/(\d+)", text)
    info["retrans_now"], info["total_retrans"] = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    for key in ("lost", "dsack_dups", "bytes_retrans", "minrtt"):
        info[key] = float(info[key]) if key in info else 0
    m = re.search(r"rwnd_limited:(\d+)ms", text)
    info["rwnd_limited_ms"] = int(m.group(1)) if m else 0
    return info


def nstat(ns):
    out = sh("ip", "netns", "exec", ns, "nstat", "-asz", *NSTAT_KEYS)
    vals = {k: 0 for k in NSTAT_KEYS}
    for line in out.splitlines():
        f = line.split()
        if len(f) >= 2 and f[0] in vals:
            vals[f[0]] = int(f[1])
    return vals


def tun_drops(ns, ifname):
    link = json.loads(sh("ip", "-n", ns, "-s", "-j", "link", "show", "dev", ifname))[0]
    st = link["stats64"]
    return st["rx"]["dropped"] + st["tx"]["dropped"]


def listen(ns, addr, port):
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with netns(ns):
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr, port))
        s.listen(8)
    return s


def connect(ns, addr, port):
    with netns(ns):
        return socket.create_connection((addr, port), timeout=10)


# --- rtt -----------------------------------------------------------------------------------

def rtt_check(delay_c2s, delay_s2c, expect_shift, rounds, conns):
    expect = delay_c2s + delay_s2c + expect_shift
    tol = max(2.0, 0.05 * expect)
    with DelayLine(CLIENT, SERVER, delay_c2s_ms=delay_c2s, delay_s2c_ms=delay_s2c):
        for addr, port in (("10.77.0.2", 7101), ("fd77::2", 7102)):
            lst = listen(SERVER, addr, port)

            def serve():
                for _ in range(conns):
                    c, _ = lst.accept()
                    while True:
                        b = c.recv(64)
                        if not b:
                            break
                        c.sendall(b)
                    c.close()

            t = threading.Thread(target=serve, daemon=True)
            t.start()
            rtts, minrtts = [], []
            for _ in range(conns):
                c = connect(CLIENT, addr, port)
                c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                for _ in range(rounds):
                    c.sendall(b"ping")
                    c.recv(64)
                info = ss_socket(CLIENT, c.getsockname()[1])
                rtts.append(info["rtt_ms"])
                minrtts.append(info["minrtt"])
                c.close()
            t.join(5)
            lst.close()
            fam = "IPv6" if ":" in addr else "IPv4"
            print(f"  {fam} delay {delay_c2s}+{delay_s2c} ms, {conns} connections x {rounds} round trips:"
                  f" ss rtt median {statistics.median(rtts):.3f} ms (min {min(rtts):.3f}, max {max(rtts):.3f});"
                  f" minrtt median {statistics.median(minrtts):.3f} ms (min {min(minrtts):.3f}, max {max(minrtts):.3f})")
            check(all(expect <= r <= expect + tol for r in rtts),
                  f"{fam}: every ss rtt in [{expect}, {expect + tol:.1f}] ms: {rtts}")
            check(all(expect <= r <= expect + tol for r in minrtts),
                  f"{fam}: every ss minrtt in [{expect}, {expect + tol:.1f}] ms: {minrtts}")


# --- drops ---------------------------------------------------------------------------------

def drop_check(direction, addr, port, size, rate, drop_every, expect_shift, cc=None, hold=None):
    """A paced bulk transfer of SIZE bytes across a line dropping every DROP_EVERY-th data
    segment in DIRECTION; compares the line's count with the sender's kernel counts."""
    sender_ns = CLIENT if direction == "c2s" else SERVER
    with DelayLine(CLIENT, SERVER, delay_ms=10, drop_every=drop_every, drop_direction=direction) as line:
        lst = listen(SERVER, addr, port)
        cl = connect(CLIENT, addr, port)
        sv, _ = lst.accept()
        lst.close()
        snd, rcv = (cl, sv) if direction == "c2s" else (sv, cl)
        cl.settimeout(None)
        if rate:
            snd.setsockopt(socket.SOL_SOCKET, SO_MAX_PACING_RATE, rate)
        if cc:
            snd.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, cc.encode())
        if hold:  # (direction, ms, after seconds): a delay spike in the middle
            threading.Timer(hold[2], line.hold, (hold[0], hold[1])).start()
        before = nstat(sender_ns)
        got = [0]

        def drain():
            while got[0] < size:
                b = rcv.recv(1 << 16)
                if not b:
                    break
                got[0] += len(b)

        # ss's lost: (tcpi_lost, the segments marked lost now) sampled while it runs.
        lost_seen = []
        done = threading.Event()

        def sample():
            while not done.wait(0.02):
                i = ss_socket(sender_ns, snd.getsockname()[1])
                if i:
                    lost_seen.append(int(i["lost"]))

        t = threading.Thread(target=drain, daemon=True)
        sampler = threading.Thread(target=sample, daemon=True)
        t0 = time.monotonic()
        t.start()
        sampler.start()
        chunk = b"d" * (1 << 16)
        left = size
        while left > 0:
            left -= snd.send(chunk[:left])
        t.join(120)
        elapsed = time.monotonic() - t0
        done.set()
        sampler.join(5)
        # Let the last ACKs (and any DSACK) cross, then read every view at the same moment.
        deadline = time.monotonic() + 5
        while True:
            time.sleep(0.1)
            info = ss_socket(sender_ns, snd.getsockname()[1])
            if info["sendq"] == 0 and "unacked" not in info:  # ss prints unacked only if > 0
                break
            if time.monotonic() > deadline:
                break
        time.sleep(0.1)
        info = ss_socket(sender_ns, snd.getsockname()[1])
        after = nstat(sender_ns)
        st = line.status()
        drops_tun = tun_drops(CLIENT, "dl-c") + tun_drops(SERVER, "dl-s")
        cl.close()
        sv.close()
    delta = {k: after[k] - before[k] for k in NSTAT_KEYS}
    dropped = st["dropped"][direction]
    fam = "IPv6" if ":" in addr else "IPv4"
    how = (f" {cc}" if cc else "") + (f" paced {rate} B/s" if rate else " unpaced") + \
        (f", {hold[0]} held {hold[1]} ms" if hold else "")
    print(f"  {fam} {direction}{how}, {size} bytes in {elapsed:.1f}s, drop every {drop_every}:"
          f" line dropped {dropped} of {st[direction]['data_segments']} data segments;"
          f" nstat deltas {json.dumps({k: v for k, v in delta.items() if v})};"
          f" ss retrans:{info['retrans_now']}/{info['total_retrans']} lost:{info['lost']:.0f}"
          f" dsack_dups:{info['dsack_dups']:.0f} bytes_retrans:{info['bytes_retrans']:.0f}"
          f" unacked:{info.get('unacked', 0)}; tun drops {drops_tun};"
          f" lost: while running, {len(lost_seen)} samples, max {max(lost_seen, default=0)},"
          f" non-zero in {sum(1 for x in lost_seen if x)}")
    check(got[0] == size, f"{fam} {direction}: receiver got all {size} bytes ({got[0]})")
    check(drops_tun == 0, f"{fam} {direction}: the TUN devices dropped nothing ({drops_tun})")
    check(dropped > 0, f"{fam} {direction}: the line dropped segments ({dropped})")
    if hold:
        check(delta["TcpExtTCPDSACKRecvSegs"] > 0,
              f"{fam} {direction}: the delay spike made spurious retransmissions the receiver reported"
              f" by DSACK (TcpExtTCPDSACKRecvSegs {delta['TcpExtTCPDSACKRecvSegs']})")
    kernel = delta["TcpRetransSegs"] - delta["TcpExtTCPDSACKRecvSegs"]
    check(dropped + expect_shift == kernel,
          f"{fam} {direction}: line's drops {dropped}{'+%d' % expect_shift if expect_shift else ''}"
          f" == nstat TcpRetransSegs - TcpExtTCPDSACKRecvSegs"
          f" ({delta['TcpRetransSegs']} - {delta['TcpExtTCPDSACKRecvSegs']} = {kernel})")
    sock = info["total_retrans"] - int(info["dsack_dups"])
    check(dropped + expect_shift == sock,
          f"{fam} {direction}: line's drops{'+%d' % expect_shift if expect_shift else ''} == ss total retrans - dsack_dups"
          f" ({info['total_retrans']} - {int(info['dsack_dups'])} = {sock})")
    return dropped, delta, info


# --- stall ---------------------------------------------------------------------------------

def stall_check(broken):
    with DelayLine(CLIENT, SERVER, delay_ms=5):
        with StalledReceiver(CLIENT, SERVER, "10.77.0.2", 7300) as st:
            time.sleep(1.0)
            port = st.client.getsockname()[1]
            a = ss_socket(CLIENT, port)
            time.sleep(1.0)
            b = ss_socket(CLIENT, port)
            srv = ss_socket(SERVER, 7300)
            print(f"  writer: rwnd_limited {a['rwnd_limited_ms']} -> {b['rwnd_limited_ms']} ms,"
                  f" Send-Q {a['sendq']} -> {b['sendq']}, notsent {b.get('notsent', 0)};"
                  f" receiver Recv-Q {srv['recvq']}; written {st.written} bytes")
            grew = b["rwnd_limited_ms"] - a["rwnd_limited_ms"]
            check((grew <= 0) if broken else (grew >= 900),
                  f"rwnd_limited grew by about the second waited ({grew} ms)"
                  + (" [expectation broken on purpose: expected no growth]" if broken else ""))
            check(b["sendq"] > 0, f"writer Send-Q not empty ({b['sendq']})")
            check(srv["recvq"] > 0, f"receiver Recv-Q not empty ({srv['recvq']})")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer connections, smaller transfers")
    ap.add_argument("--only", choices=("rtt", "drops", "stall"), action="append")
    ap.add_argument("--break", dest="broken", choices=("rtt", "drops", "stall"), action="append",
                    default=[], help="shift this check's expectation so it must fail")
    ap.add_argument("--delay-ms", type=float, default=20.0)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("test_delayline.py: needs root (run it under /work/iso.sh or as root)")
    only = set(args.only or ("rtt", "drops", "stall"))
    conns, rounds = (3, 20) if args.quick else (10, 40)
    size = (2 if args.quick else 6) << 20
    if "rtt" in only:
        print("rtt:", flush=True)
        shift = 5 if "rtt" in args.broken else 0
        rtt_check(args.delay_ms, args.delay_ms, shift, rounds, conns)
        rtt_check(30.0, 5.0, shift, rounds, max(3, conns // 2))
    if "drops" in only:
        print("drops:", flush=True)
        shift = 1 if "drops" in args.broken else 0
        drop_check("c2s", "10.77.0.2", 7201, size, 2_500_000, 50, shift)
        drop_check("s2c", "10.77.0.2", 7202, size, 2_500_000, 50, shift)
        drop_check("c2s", "fd77::2", 7203, size, 2_500_000, 50, shift)
        # A 1 s delay spike (in order) on the data path: RTOs fire, the retransmissions
        # are spurious and come back as DSACKs, which the kernel's counts subtract.
        drop_check("c2s", "10.77.0.2", 7205, size, 2_500_000, 50, shift, hold=("c2s", 1000, 0.3))
        if not args.quick:
            drop_check("c2s", "10.77.0.2", 7204, size, 2_500_000, 7, shift)
            drop_check("c2s", "10.77.0.2", 7206, size, 2_500_000, 50, shift, cc="cubic")
            drop_check("c2s", "10.77.0.2", 7207, size, 0, 50, shift)
    if "stall" in only:
        print("stall:", flush=True)
        stall_check("stall" in args.broken)
    print(f"{'FAILED: %d check(s)' % len(failures) if failures else 'all checks passed'}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
