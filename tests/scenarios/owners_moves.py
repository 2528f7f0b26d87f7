#!/usr/bin/env python3
"""Owners that change while the exporter runs, for the owner cache test. `cx-top`
(holds no TCP socket at first) forks `cx-parent`, which listens on 127.0.0.1:7071 and
forks `cx-child`, which inherits the listener. Prints one JSON line with the three pids,
then takes commands on standard input, one a line, and answers each with a JSON line
once done:

- `exit`: the parent is killed; the child holds the listener alone.
- `pass`: the child connects to the listener and accepts, keeps the client end and
  passes the accepted end to `cx-top` over a unix socket, then closes its copy: a
  socket that moved between two living processes.

Ends when standard input closes (the parent and child end with it).
"""
import json
import os
import signal
import socket
import sys


def set_comm(name):
    with open("/proc/self/comm", "w") as f:
        f.write(name)


set_comm("cx-top")
top_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
gone_r, gone_w = os.pipe()  # EOF for the parent when cx-top ends
pid_r, pid_w = os.pipe()
parent = os.fork()
if parent == 0:
    set_comm("cx-parent")
    top_end.close()
    os.close(gone_w)
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 7071))
    srv.listen(16)
    child = os.fork()
    if child == 0:
        set_comm("cx-child")
        os.close(gone_r)
        os.write(pid_w, b"%d\n" % os.getpid())
        kept = []
        while (cmd := child_end.recv(16)) == b"pass":
            c = socket.create_connection(("127.0.0.1", 7071))
            a, _ = srv.accept()
            socket.send_fds(child_end, [b"x"], [a.fileno()])
            a.close()
            kept.append(c)
        os._exit(0)
    child_end.close()
    os.read(gone_r, 1)
    os._exit(0)
child_end.close()
os.close(gone_r)
child = int(os.read(pid_r, 32))
print(json.dumps({"top": os.getpid(), "parent": parent, "child": child}), flush=True)
held = []
for line in sys.stdin:
    cmd = line.strip()
    if cmd == "exit":
        os.kill(parent, signal.SIGKILL)
        os.waitpid(parent, 0)
    elif cmd == "pass":
        top_end.send(b"pass")
        _, fds, _, _ = socket.recv_fds(top_end, 1, 1)
        held.append(socket.socket(fileno=fds[0]))
    print(json.dumps({"done": cmd}), flush=True)
