#!/usr/bin/env python3
"""Opens sockets in several TCP states in the current network namespace, prints one
JSON line of what it made, then holds them until its standard input closes.

Arguments: the namespace's own veth address, and an address on that veth's subnet with
a static neighbour entry but no host behind it (SYNs to it go unanswered).

States made: LISTEN on the wildcard and on 127.0.0.1, ESTABLISHED both ways on the veth
address, FIN_WAIT2 and CLOSE_WAIT (a client that shut down its side, a server that has
not), TIME_WAIT on the client that closed first, SYN_SENT to the silent address.
"""
import json
import socket
import sys

addr, silent = sys.argv[1], sys.argv[2]
held = []


def listen(host, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    s.listen(16)
    held.append(s)
    return s


srv = listen("0.0.0.0", 8080)
listen("127.0.0.1", 9090)


def pair():
    c = socket.create_connection((addr, 8080), source_address=(addr, 0))
    s, _ = srv.accept()
    held.extend([c, s])
    return c, s


pair()  # ESTABLISHED, both ends
c, s = pair()
c.shutdown(socket.SHUT_WR)  # client FIN_WAIT2, server CLOSE_WAIT
assert s.recv(1) == b""
c, s = pair()
c.shutdown(socket.SHUT_WR)
assert s.recv(1) == b""
s.close()
assert c.recv(1) == b""  # the server's FIN arrived: the client is in TIME_WAIT once closed
c.close()
held.remove(c)
held.remove(s)
syn = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
syn.setblocking(False)
syn.connect_ex((silent, 80))  # SYN_SENT until retries run out (minutes)
held.append(syn)

print(json.dumps({"address": addr, "silent": silent}), flush=True)
sys.stdin.read()
