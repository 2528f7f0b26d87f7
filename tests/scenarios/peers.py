#!/usr/bin/env python3
"""Opens the sockets of the peers and listeners truth test in the current network
namespace, prints one JSON line of what it made (the facts the test checks against),
then holds them until its standard input closes.

Every case of issue #9's classification: listeners on a specific and a wildcard
address, a dual-stack listener with IPv4-mapped and IPv6 clients, a local client and
server, TIME_WAIT on the server side and on the client side, a client whose ephemeral
port equals another address's listener port, and a listener with backlog 8 holding 5
connections not yet accepted.
"""
import json
import socket
import sys
import time

held = []


def listen(family, addr, port, backlog=64, v6only=None):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if v6only is not None:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
    s.bind((addr, port))
    s.listen(backlog)
    held.append(s)
    return s


def connect(family, addr, port, bind=None):
    c = socket.socket(family, socket.SOCK_STREAM)
    if bind:
        c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        c.bind(bind)
    c.connect((addr, port))
    held.append(c)
    return c


def accept(listener, n):
    for _ in range(n):
        conn, _ = listener.accept()
        held.append(conn)


expected = {"inbound": {}, "outbound": {}}


def pairs(listener, family, addr, port, n):
    for _ in range(n):
        connect(family, addr, port)
    accept(listener, n)
    expected["inbound"][str(port)] = expected["inbound"].get(str(port), 0) + n
    expected["outbound"][str(port)] = expected["outbound"].get(str(port), 0) + n


V4, V6 = socket.AF_INET, socket.AF_INET6
a = listen(V4, "0.0.0.0", 7001)
pairs(a, V4, "127.0.0.1", 7001, 3)
b = listen(V4, "127.0.0.2", 7002)
pairs(b, V4, "127.0.0.2", 7002, 2)
c = listen(V6, "::", 7003, v6only=False)
pairs(c, V4, "127.0.0.1", 7003, 2)  # v4-mapped on the server side
pairs(c, V6, "::1", 7003, 1)
d = listen(V6, "::1", 7004)
pairs(d, V6, "::1", 7004, 1)

# A client bound to 127.0.0.1:7006 while 127.0.0.3:7006 listens: still outbound.
listen(V4, "127.0.0.3", 7006)
cl = connect(V4, "127.0.0.1", 7001, bind=("127.0.0.1", 7006))
accept(a, 1)
expected["inbound"]["7001"] += 1
expected["outbound"]["7001"] += 1

# TIME_WAIT: the side that closes first keeps it. Server first, then client first.
e = listen(V4, "127.0.0.1", 7005)
for server_first in (True, False):
    x = socket.socket(V4, socket.SOCK_STREAM)
    x.connect(("127.0.0.1", 7005))
    y, _ = e.accept()
    first, second = (y, x) if server_first else (x, y)
    first.close()
    time.sleep(0.05)
    second.close()
expected["time_wait"] = {"inbound": 1, "outbound": 1, "port": 7005}

# Backlog 8, five connections never accepted.
q = listen(V4, "127.0.0.1", 7008, backlog=8)
for _ in range(5):
    connect(V4, "127.0.0.1", 7008)
expected["queue"] = {"address": "127.0.0.1", "port": 7008, "length": 5, "limit": 8}
expected["outbound"]["7008"] = 5
expected["inbound"]["7008"] = 5  # completed, waiting in the accept queue

print(json.dumps(expected), flush=True)
sys.stdin.read()
