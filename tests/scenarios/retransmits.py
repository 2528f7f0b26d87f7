#!/usr/bin/env python3
"""Sends data over N loopback connections to 127.0.0.1:PORT in the current network
namespace (where the test drops some packets to PORT, so segments are retransmitted),
prints one JSON line once every byte has arrived, then holds the connections open until
its standard input closes.

Usage: retransmits.py PORT CONNECTIONS BYTES
"""
import json
import socket
import sys

port, n, size = (int(a) for a in sys.argv[1:4])
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", port))
listener.listen(n)
held = []
for _ in range(n):
    c = socket.create_connection(("127.0.0.1", port), timeout=60)
    s, _ = listener.accept()
    c.sendall(b"x" * size)
    got = 0
    while got < size:
        got += len(s.recv(65536))
    held += [c, s]
print(json.dumps({"port": port, "connections": n, "bytes": size}), flush=True)
sys.stdin.read()
