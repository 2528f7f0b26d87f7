#!/usr/bin/env python3
"""A service that restarts on another port and exits, in the current network namespace:
what every deploy of a real service does to the sockets an exporter classifies.

usage: service_exit.py RATE SECONDS HELD HELD_FOR

Twice (runs "a" then "b"), a server listens on 127.0.0.1:0 (a port inside the
ephemeral range, as many services and test servers bind), keeps HELD connections open,
and answers RATE connections a second for SECONDS seconds: it reads one byte, answers
one and closes first, so its side of each connection sits in TIME_WAIT for a minute.
Then it exits as a draining service does: it closes its listener at once and its held
connections HELD_FOR seconds later, server side first (the kernel destroys the server's
sockets then, long after their listener), their clients just after. Run "b" starts right
after "a" closes its listener.

Prints one JSON line per event, flushed: {"event": "listening", "run", "port"},
{"event": "exited", "run", "port", "accepted"} when its listener closed (every connection it
accepted, held ones included) and {"event": "done"} once the last held connection has
closed. Then waits for
its standard input to close.
"""
import json
import socket
import sys
import time

RATE, SECONDS, HELD, HELD_FOR = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])


def say(**event):
    print(json.dumps(event), flush=True)


def connect(port):
    c = socket.socket()
    c.connect(("127.0.0.1", port))
    return c


# Held connections waiting for their time to close: (when, server side, client side).
closing = []


def close_due(now):
    for item in [x for x in closing if x[0] <= now]:
        item[1].close()
        item[2].close()
        closing.remove(item)


def run(name):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    port = listener.getsockname()[1]
    say(event="listening", run=name, port=port)
    held = []
    for _ in range(HELD):
        c = connect(port)
        s, _ = listener.accept()
        held.append((c, s))
    accepted = HELD
    start = time.monotonic()
    n = int(RATE * SECONDS)
    for i in range(n):
        due = start + i / RATE
        while time.monotonic() < due:
            close_due(time.monotonic())
            time.sleep(min(0.005, max(0.0, due - time.monotonic())))
        c = connect(port)
        s, _ = listener.accept()
        accepted += 1
        c.sendall(b"q")
        s.recv(1)
        s.sendall(b"a")
        s.close()  # the server closes first: its side goes to TIME_WAIT
        c.recv(1)
        c.recv(1)  # the FIN
        c.close()
    # Exit: the listener goes now, the held connections later.
    listener.close()
    for c, s in held:
        closing.append((time.monotonic() + HELD_FOR, s, c))
    say(event="exited", run=name, port=port, accepted=accepted)


run("a")
run("b")
while closing:
    close_due(time.monotonic())
    time.sleep(0.05)
say(event="done")
sys.stdin.read()
