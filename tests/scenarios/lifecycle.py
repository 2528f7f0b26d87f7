#!/usr/bin/env python3
"""Makes the connections of the lifecycle exact-count test in the current network
namespace, then prints one JSON line of what it made (the facts the test checks).

Usage: lifecycle.py FAMILY(4|6) CONNECTIONS REQUEST_BYTES RESPONSE_BYTES REFUSED

Each connection: the client sends REQUEST_BYTES and shuts down its side; the server
reads to EOF, answers RESPONSE_BYTES and closes; the client reads to EOF and closes. So
both FINs are received before either socket is destroyed. Then REFUSED blocking
connects to a port that was bound once and is not listening.
"""
import json
import socket
import sys

family = socket.AF_INET6 if sys.argv[1] == "6" else socket.AF_INET
addr = "::1" if family == socket.AF_INET6 else "127.0.0.1"
n, request, response, refused = (int(a) for a in sys.argv[2:6])

listener = socket.socket(family)
listener.bind((addr, 0))
listener.listen(256)
port = listener.getsockname()[1]
for _ in range(n):
    c = socket.socket(family)
    c.connect((addr, port))
    s, _ = listener.accept()
    c.sendall(b"q" * request)
    c.shutdown(socket.SHUT_WR)
    while s.recv(65536):
        pass
    s.sendall(b"r" * response)
    s.close()
    while c.recv(65536):
        pass
    c.close()

# A port that nothing listens on: bound (so nobody else takes it meanwhile), not listening.
closed = socket.socket(family)
closed.bind((addr, 0))
closed_port = closed.getsockname()[1]
failures = 0
for _ in range(refused):
    c = socket.socket(family)
    try:
        c.connect((addr, closed_port))
    except ConnectionRefusedError:
        failures += 1
    c.close()
closed.close()
listener.close()
print(json.dumps({"address": addr, "port": port, "connections": n, "request": request,
                  "response": response, "refused": failures, "closed_port": closed_port}), flush=True)
