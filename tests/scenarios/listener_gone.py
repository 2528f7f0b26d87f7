#!/usr/bin/env python3
"""One connection whose listener has gone: a server on 127.0.0.1:PORT accepts one client,
then closes its listener and keeps the connection. Prints one JSON line of what it made
({"server_port", "client_port"}), then holds the connection until its standard input
closes. With one connection neither end is shared, so only the namespace's port range
can tell which end is the service.

usage: listener_gone.py PORT
"""
import json
import socket
import sys

port = int(sys.argv[1])
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", port))
listener.listen(1)
client = socket.create_connection(("127.0.0.1", port))
server, _ = listener.accept()
listener.close()
print(json.dumps({"server_port": port, "client_port": client.getsockname()[1]}), flush=True)
sys.stdin.read()
