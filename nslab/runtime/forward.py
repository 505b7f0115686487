"""TCP forwarders from the host's 127.0.0.1 into a namespace of nslab's (the sandbox's
underlay, nslab/sandbox.py), so the host reaches etcd and the machines' agents without a
route, a link or a sysctl in the root namespace: a listening socket is all it adds there.

    forward.py NETNS_PATH RUN_DIR LISTEN_PORT=HOST:PORT ...

The listening sockets are opened first, on 127.0.0.1 in the namespace the process starts
in (the host's); then the process enters NETNS_PATH (setns, before any thread exists, so
every thread it starts lives there too) and each accepted connection is joined to
HOST:PORT from inside it.  RUN_DIR (the sandbox's) names the owner: the process exits
when it is gone, and `nslab sandbox down` ends it by PID anyway.
"""
from __future__ import annotations

import os
import socket
import sys
import threading
import time


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _serve(listener: socket.socket, target: tuple[str, int]) -> None:
    while True:
        conn, _ = listener.accept()
        try:
            up = socket.create_connection(target, timeout=5)
            up.settimeout(None)
        except OSError:
            conn.close()
            continue
        for a, b in ((conn, up), (up, conn)):
            threading.Thread(target=_pipe, args=(a, b), daemon=True).start()


def main(argv: list[str]) -> None:
    from nslab.apply import netns       # lazy: only the child needs it
    ns_path, run_dir, *pairs = argv
    listeners = []
    for pair in pairs:
        port, _, target = pair.partition("=")
        host, _, tport = target.rpartition(":")
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", int(port)))
        s.listen(64)
        listeners.append((s, (host, int(tport))))
    fd = os.open(ns_path, os.O_RDONLY | os.O_CLOEXEC)
    netns.setns(fd)
    os.close(fd)
    for s, target in listeners:
        threading.Thread(target=_serve, args=(s, target), daemon=True).start()
    while os.path.isdir(run_dir):
        time.sleep(0.5)


if __name__ == "__main__":
    main(sys.argv[1:])
