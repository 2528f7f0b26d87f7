#!/usr/bin/env python3
"""Connections whose tcp_info the quality tests compare with `ss -tin`.

Listens on 127.0.0.1:PORT; N clients, each bound to its own address 127.0.0.(10+i)
(so each is alone in its label set), exchange BYTES each way; one more client from
127.0.0.9 writes to a server socket that never reads until its buffers are full (a
stalled receiver: the window limits the sender, the queues fill). Prints one JSON line,
then answers commands on standard input:
  close   closes the N exchanging connections (client first), prints "closed"
Exits when standard input closes.

Usage: quality.py PORT N BYTES
"""
import json
import socket
import sys
import time

port, n, size = (int(a) for a in sys.argv[1:4])
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", port))
listener.listen(n + 1)


def exchange(c, s):
    for a, b in ((c, s), (s, c)):
        a.sendall(b"x" * size)
        got = 0
        while got < size:
            got += len(b.recv(65536))


pairs = []
for i in range(n):
    c = socket.socket()
    c.bind((f"127.0.0.{10 + i}", 0))
    c.connect(("127.0.0.1", port))
    s, _ = listener.accept()
    exchange(c, s)
    pairs.append((c, s))

stalled = socket.socket()
stalled.bind(("127.0.0.9", 0))
stalled.connect(("127.0.0.1", port))
never_read, _ = listener.accept()
stalled.setblocking(False)
written = 0
idle_since = time.monotonic()
# Writes until the kernel takes nothing more for a while: both buffers are full.
while time.monotonic() - idle_since < 1.0:
    try:
        written += stalled.send(b"y" * 65536)
        idle_since = time.monotonic()
    except BlockingIOError:
        time.sleep(0.05)

print(json.dumps({"port": port, "connections": n, "stalled_written": written}), flush=True)
for line in sys.stdin:
    if line.strip() == "close":
        for c, s in pairs:
            c.close()
            s.close()
        pairs = []
        print("closed", flush=True)
