#!/usr/bin/env python3
"""Opens N loopback connections in the current network namespace, prints one JSON line
of what it made, holds them until its standard input closes, then closes them.

Usage: hold_established.py N
"""
import json
import socket
import sys

n = int(sys.argv[1])
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(n)
port = listener.getsockname()[1]
held = []
for _ in range(n):
    c = socket.create_connection(("127.0.0.1", port))
    s, _ = listener.accept()
    held += [c, s]
print(json.dumps({"port": port, "connections": n}), flush=True)
sys.stdin.read()
for s in held:
    s.close()
listener.close()
