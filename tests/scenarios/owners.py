#!/usr/bin/env python3
"""Sockets with known owners for the owner truth test: a listener shared by a parent
(comm `cx-parent`) and its forked child (`cx-child`), a connection the child makes to
it, accepted by the parent, and a TIME_WAIT socket, which no process holds. Prints one
JSON line with the pids, then holds everything until standard input closes.
"""
import json
import os
import socket
import sys


def set_comm(name):
    with open("/proc/self/comm", "w") as f:
        f.write(name)


set_comm("cx-parent")
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 7070))
srv.listen(16)

# TIME_WAIT on a client the parent closes first, after the server side closed too.
c = socket.create_connection(("127.0.0.1", 7070))
s, _ = srv.accept()
c.shutdown(socket.SHUT_WR)
assert s.recv(1) == b""
s.close()
assert c.recv(1) == b""
c.close()

ready_r, ready_w = os.pipe()
child = os.fork()
if child == 0:
    set_comm("cx-child")
    conn = socket.create_connection(("127.0.0.1", 7070))
    os.write(ready_w, b"x")
    # Hold the connection and the inherited listener until the parent ends.
    sys.stdin.read()
    os._exit(0)
os.read(ready_r, 1)
accepted, _ = srv.accept()
print(json.dumps({"parent": os.getpid(), "child": child}), flush=True)
sys.stdin.read()
os.kill(child, 15)
os.waitpid(child, 0)
