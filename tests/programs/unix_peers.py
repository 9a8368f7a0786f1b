"""A UNIX-socket server or client driven by lines on stdin, each answered "ok" (the test
suite's scenario protocol), run by Debian's python3:
  serve PATH        listen on PATH, accept every connection and keep it
  connect PATH N    open N stream connections to PATH and keep them
  close N           close N of the connections opened
A PATH of the form @HEX is the abstract name of those bytes (any byte may follow the NUL).
"""
import socket
import sys
import threading

kept = []
clients = []


def address(path):
    if path.startswith("@"):
        return b"\0" + bytes.fromhex(path[1:])
    return path


def accept_all(listener):
    while True:
        connection, _ = listener.accept()
        kept.append(connection)


for line in sys.stdin:
    words = line.split()
    if words[0] == "serve":
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(address(words[1]))
        listener.listen(128)
        threading.Thread(target=accept_all, args=(listener,), daemon=True).start()
    elif words[0] == "connect":
        for _ in range(int(words[2])):
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            client.connect(address(words[1]))
            clients.append(client)
    elif words[0] == "close":
        for _ in range(int(words[1])):
            clients.pop().close()
    print("ok", flush=True)
