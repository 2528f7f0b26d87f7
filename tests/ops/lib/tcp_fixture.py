#!/usr/bin/env python3
"""Holds TCP sockets open for the ops tests until killed.

    tcp_fixture.py --listen 10.123.0.11:20001 [--listen ...] [--connect 10.123.0.12:20002 ...]

Listens on each --listen address (accepting and keeping connections), then
connects to each --connect address, retrying until it succeeds, and keeps
every connection open. An accepted connection is read (and what it sends
dropped) and closed once its client closes it, so short client connections
end on both sides. Prints "ready" once all listeners are bound.
"""
import argparse
import select
import socket
import sys
import time


def addr(text):
    host, port = text.rsplit(":", 1)
    return host.strip("[]"), int(port)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", action="append", default=[], type=addr)
    ap.add_argument("--connect", action="append", default=[], type=addr)
    args = ap.parse_args()
    listeners, kept, accepted = [], [], []
    for host, port in args.listen:
        s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        s.listen(16)
        listeners.append(s)
    print("ready", flush=True)
    pending = list(args.connect)
    deadline = time.time() + 120
    while True:
        for target in list(pending):
            try:
                kept.append(socket.create_connection(target, timeout=1))
                pending.remove(target)
            except OSError:
                if time.time() > deadline:
                    print(f"cannot connect to {target}", file=sys.stderr)
                    pending.remove(target)
        readable, _, _ = select.select(listeners + accepted, [], [], 0.5)
        for s in readable:
            if s in listeners:
                conn, _ = s.accept()
                accepted.append(conn)
                continue
            try:
                data = s.recv(65536)
            except OSError:
                data = b""
            if not data:
                accepted.remove(s)
                s.close()


if __name__ == "__main__":
    main()
