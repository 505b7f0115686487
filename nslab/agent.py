"""The lab agent: one process per lab that runs the lab's small services.

A pod with `serve: http` gets an HTTP server on :80 (the notes curl nginx).  Instead of a
process per pod, the agent opens each listening socket from inside the pod's namespace
(a socket stays in the namespace it was created in) and serves them all from one
selector loop.  It is recorded in the lab's state and stopped by `nslab down`; it also
exits by itself when the lab's run directory disappears, so it can never outlive its lab
(its sockets would otherwise keep the lab's namespaces alive).
"""
from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time

from . import netns

SPEC = "agent.json"
LOG = "agent.log"


def start(st, services) -> None:
    """Start the agent for `services` (plan Serve ops) and wait until it listens."""
    from . import state
    from .errors import NslabError
    with open(os.path.join(st.dir, SPEC), "w") as f:
        json.dump([dict(ns=s.ns, node=s.node, kind=s.kind, port=s.port) for s in services], f)
    read_fd, write_fd = os.pipe()
    with open(os.path.join(st.dir, LOG), "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "nslab.agent", st.dir, str(write_fd)],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                pass_fds=(write_fd,), start_new_session=True)
    os.close(write_fd)
    state.record_process(st, proc.pid, f"agent: http on {len(services)} pods")
    with os.fdopen(read_fd, "rb") as ready:
        line = ready.readline().decode().strip()
    if line != "ready":
        raise NslabError(f"the lab agent did not start: {line or 'it exited'} (log: {os.path.join(st.dir, LOG)})")


def _response(node: str, conn: socket.socket) -> bytes:
    local, peer = conn.getsockname(), conn.getpeername()
    body = f"{node} {local[0]}:{local[1]} answered {peer[0]}:{peer[1]}\n".encode()
    return (b"HTTP/1.1 200 OK\r\nServer: nslab\r\nContent-Type: text/plain\r\nConnection: close\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def serve(run_dir: str, ready_fd: int | None) -> None:
    with open(os.path.join(run_dir, SPEC)) as f:
        services = json.load(f)
    sel = selectors.DefaultSelector()
    try:
        for svc in services:
            with netns.enter(svc["ns"]):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("0.0.0.0", svc["port"]))
            sock.listen(128)
            sock.setblocking(False)
            sel.register(sock, selectors.EVENT_READ, ("listen", svc["node"]))
    except OSError as e:
        if ready_fd is not None:
            os.write(ready_fd, f"{e}\n".encode())
        raise SystemExit(1)
    if ready_fd is not None:
        os.write(ready_fd, b"ready\n")
        os.close(ready_fd)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    buffers: dict[socket.socket, bytes] = {}
    last_check = time.monotonic()
    while True:
        for key, _ in sel.select(timeout=0.5):
            role, node = key.data
            if role == "listen":
                try:
                    conn, _ = key.fileobj.accept()
                except BlockingIOError:
                    continue
                conn.setblocking(False)
                buffers[conn] = b""
                sel.register(conn, selectors.EVENT_READ, ("conn", node))
                continue
            conn = key.fileobj
            try:
                data = conn.recv(4096)
            except (BlockingIOError, ConnectionError):
                data = b""
            buffers[conn] = buffers.get(conn, b"") + data
            if data and b"\r\n\r\n" not in buffers[conn] and len(buffers[conn]) < 65536:
                continue
            try:
                if data:
                    conn.setblocking(True)
                    conn.settimeout(1.0)
                    conn.sendall(_response(node, conn))
            except OSError:
                pass
            sel.unregister(conn)
            buffers.pop(conn, None)
            conn.close()
        if time.monotonic() - last_check > 0.5:
            last_check = time.monotonic()
            if not os.path.isdir(run_dir):   # the lab is gone: never outlive it
                return


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else None)
