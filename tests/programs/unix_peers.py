"""A UNIX-socket server or client driven by lines on stdin, each answered "ok" (the test
suite's scenario protocol), run by Debian's python3:
  serve PATH        listen on PATH, accept every connection and keep it
  connect PATH N    open N stream connections to PATH and keep them
  close N           close N of the connections opened
  spawn N           N children (sleep), each holding one end of a socketpair whose other end
                    this process keeps (as a service spawning children with piped stdio)
  reap N            kill N of those children and wait for them: their ends are released
  stall PATH B      listen on PATH with backlog B and never accept
  try-connect PATH N  N non-blocking stream connections to PATH, kept; answers how many
                    connected (a full listener refuses the rest)
A PATH of the form @HEX is the abstract name of those bytes (any byte may follow the NUL).
"""
import ctypes
import signal
import socket
import subprocess
import sys
import threading

PR_SET_PDEATHSIG = 1
libc = ctypes.CDLL(None)


def die_with_parent():
    # A test kills this process; its children must not outlive it (nor hold the test's pipes).
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


kept = []
clients = []
children = []


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
    elif words[0] == "spawn":
        for _ in range(int(words[1])):
            ours, theirs = socket.socketpair()
            child = subprocess.Popen(
                ["sleep", "1000"],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                preexec_fn=die_with_parent,
            )
            theirs.close()
            kept.append(ours)
            children.append(child)
    elif words[0] == "reap":
        for _ in range(int(words[1])):
            child = children.pop()
            child.kill()
            child.wait()
    elif words[0] == "stall":
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(address(words[1]))
        listener.listen(int(words[2]))
        kept.append(listener)
    elif words[0] == "try-connect":
        connected = 0
        for _ in range(int(words[2])):
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            client.setblocking(False)
            try:
                client.connect(address(words[1]))
                connected += 1
                clients.append(client)
            except BlockingIOError:
                client.close()
        print("ok", connected, flush=True)
        continue
    print("ok", flush=True)
