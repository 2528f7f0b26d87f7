#!/usr/bin/env python3
"""Captures real NETLINK_SOCK_DIAG replies from the running kernel as fuzz seeds.

Opens a few loopback sockets of its own (listeners, connections in both families, an
IPv4-mapped peer, TIME_WAIT), then sends inet_diag_req_v2 dump requests the way
src/parse/sock_diag.rs builds them and saves every raw receive buffer, unchanged, as one
file. Also saves a dump with every extension requested (replies then carry rtattrs
after the 72-byte core) and the kernel's error reply to a request it refuses.

With --proc DIR it copies /proc/net/{tcp,tcp6,route,if_inet6} into DIR while the same
sockets are open, so the procfs seeds show the same connections.

    python3 fuzz/capture_sock_diag.py --out fuzz/corpus/sock_diag --proc /tmp/proc-capture
"""
import argparse
import os
import shutil
import socket
import struct

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x100 | 0x200
NLMSG_ERROR = 2
NLMSG_DONE = 3
IPPROTO_TCP = 6
ALL_STATES = 0x1FFE
# idiag_ext is a bitmask of (1 << (INET_DIAG_x - 1)); 0xFF asks for MEMINFO..SHUTDOWN.
ALL_EXTENSIONS = 0xFF


def dump_request(family, protocol, ext, seq):
    # struct inet_diag_req_v2: family, protocol, ext, pad, states, then a zeroed
    # inet_diag_sockid (48 bytes), which a dump ignores.
    body = struct.pack("=BBBxI", family, protocol, ext, ALL_STATES) + bytes(48)
    header = struct.pack("=IHHII", 16 + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
    return header + body


def ends_dump(buf):
    at = 0
    while at + 16 <= len(buf):
        length, kind = struct.unpack_from("=IH", buf, at)
        if kind in (NLMSG_DONE, NLMSG_ERROR) or length < 16:
            return True
        at += (length + 3) & ~3
    return False


def dump(family, protocol=IPPROTO_TCP, ext=0, seq=1):
    """Every receive buffer of one dump, raw."""
    nl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)
    try:
        nl.bind((0, 0))
        nl.send(dump_request(family, protocol, ext, seq))
        buffers = []
        while True:
            buf = nl.recv(64 * 1024)
            buffers.append(buf)
            if not buf or ends_dump(buf):
                return buffers
    finally:
        nl.close()


def open_sockets(connections):
    """Loopback sockets in several states; the caller keeps the list alive."""
    keep = []

    def listener(family, addr):
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and addr == "::":
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind((addr, 0))
        s.listen(1024)
        keep.append(s)
        return s

    v4 = listener(socket.AF_INET, "127.0.0.1")
    v6 = listener(socket.AF_INET6, "::1")
    dual = listener(socket.AF_INET6, "::")
    targets = [
        (socket.AF_INET, ("127.0.0.1", v4.getsockname()[1]), v4),
        (socket.AF_INET6, ("::1", v6.getsockname()[1]), v6),
        # An IPv4 client of a dual-stack listener: the accepted socket is AF_INET6 with
        # ::ffff:127.0.0.1 addresses.
        (socket.AF_INET, ("127.0.0.1", dual.getsockname()[1]), dual),
    ]
    for i in range(connections):
        family, addr, server = targets[i % len(targets)]
        client = socket.socket(family, socket.SOCK_STREAM)
        client.connect(addr)
        accepted, _ = server.accept()
        if i % 5 == 4:
            # The active closer lingers in TIME_WAIT, its peer in CLOSE_WAIT.
            client.close()
            keep.append(accepted)
        else:
            keep.extend([client, accepted])
    return keep


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="directory for the raw reply buffers")
    parser.add_argument("--proc", help="also copy /proc/net/{tcp,tcp6,route,if_inet6} here")
    parser.add_argument("--connections", type=int, default=12, help="loopback connections to open")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    sockets = open_sockets(args.connections)

    captures = {
        "inet": dump(socket.AF_INET),
        "inet6": dump(socket.AF_INET6, seq=2),
        "inet-all-extensions": dump(socket.AF_INET, ext=ALL_EXTENSIONS, seq=3),
        "inet6-all-extensions": dump(socket.AF_INET6, ext=ALL_EXTENSIONS, seq=4),
        # No inet_diag handler for protocol 255: the kernel answers NLMSG_ERROR.
        "error-unknown-protocol": dump(socket.AF_INET, protocol=255, seq=5),
    }
    for name, buffers in captures.items():
        for i, buf in enumerate(buffers):
            path = os.path.join(args.out, f"{name}-{i}.bin")
            with open(path, "wb") as f:
                f.write(buf)
            print(f"{path}: {len(buf)} bytes")

    if args.proc:
        os.makedirs(args.proc, exist_ok=True)
        for name in ("tcp", "tcp6", "route", "if_inet6"):
            shutil.copyfile(f"/proc/net/{name}", os.path.join(args.proc, name))
            print(f"{os.path.join(args.proc, name)} copied")
    for s in sockets:
        s.close()


if __name__ == "__main__":
    main()
