"""The lab agent: one process per lab that runs the lab's small services.

A pod with `serve: http` gets an HTTP server on :80 (the notes curl nginx).  Instead of a
process per pod, the agent opens each listening socket from inside the pod's namespace
(a socket stays in the namespace it was created in) and serves them all from one
selector loop.  It is recorded in the lab's state and stopped by `nslab down`; it also
exits by itself when the lab's run directory disappears, so it can never outlive its lab
(its sockets would otherwise keep the lab's namespaces alive).

It also supervises the lab's userspace dataplanes (plan Daemon ops: flannel's udp proxy,
the ipip encapsulator; nslab/tunnel.py), one process per node, as a kubelet keeps
flanneld running: each is started in its node's namespace, logged to
<run dir>/tunnel-<node>.log, recorded in the lab's state (PID + start time), restarted if
it dies (and re-recorded), and stopped with the agent.
"""
from __future__ import annotations

import json
import os
import select
import selectors
import signal
import socket
import subprocess
import sys
import time

from . import netns

SPEC = "agent.json"
LOG = "agent.log"


def start(st, ops) -> None:
    """Start the agent for plan Serve and Daemon ops; wait until it listens and every
    dataplane runs, and record them all."""
    from . import state
    from .errors import NslabError
    from .plan import Daemon
    services = [s for s in ops if not isinstance(s, Daemon)]
    daemons = [d for d in ops if isinstance(d, Daemon)]
    with open(os.path.join(st.dir, SPEC), "w") as f:
        json.dump({"services": [dict(ns=s.ns, node=s.node, kind=s.kind, port=s.port) for s in services],
                   "daemons": [dict(ns=d.ns, node=d.node, kind=d.kind, dev=d.dev, config=list(d.config))
                               for d in daemons]}, f)
    read_fd, write_fd = os.pipe()
    with open(os.path.join(st.dir, LOG), "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "nslab.agent", st.dir, str(write_fd)],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                pass_fds=(write_fd,), start_new_session=True)
    os.close(write_fd)
    state.record_process(st, proc.pid, f"agent: http on {len(services)} pods, {len(daemons)} dataplanes")
    with os.fdopen(read_fd, "rb") as ready:
        line = ready.readline().decode().strip()
    if line.split(" ")[0] != "ready":
        raise NslabError(f"the lab agent did not start: {line or 'it exited'} (log: {os.path.join(st.dir, LOG)})")
    for pid, d in zip(line.split()[1:], daemons):
        state.record_process(st, int(pid), _what(d))


def _what(d) -> str:
    return f"{d['kind'] if isinstance(d, dict) else d.kind} dataplane on " \
           f"{d['node'] if isinstance(d, dict) else d.node}"


class Dataplane:
    """One supervised daemon (nslab/tunnel.py) in its node's namespace."""

    def __init__(self, run_dir: str, spec: dict):
        self.run_dir, self.spec = run_dir, spec
        self.proc: subprocess.Popen | None = None
        self.started = 0.0
        self.unrecorded: int | None = None     # the PID this one replaced, until the state says so

    def spawn(self) -> None:
        s = self.spec
        read_fd, write_fd = os.pipe()
        argv = [sys.executable, "-m", "nslab.tunnel", "--netns", s["ns"], "--ready-fd", str(write_fd),
                "--run-dir", self.run_dir, s["kind"], s["dev"]] + [f"{k}={v}" for k, v in s["config"]]
        with open(os.path.join(self.run_dir, f"tunnel-{s['node']}.log"), "ab") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         pass_fds=(write_fd,))
        os.close(write_fd)
        self.ready = os.fdopen(read_fd, "rb")
        self.started = time.monotonic()

    def wait_ready(self, timeout: float = 10.0) -> str | None:
        """None when it runs, else why not."""
        try:
            ready, _, _ = select.select([self.ready], [], [], timeout)
            line = self.ready.readline().decode().strip() if ready else ""
        finally:
            self.ready.close()
        if line == "ready":
            return None
        self.proc.kill()
        self.proc.wait()
        with open(os.path.join(self.run_dir, f"tunnel-{self.spec['node']}.log"), "rb") as log:
            last = (log.read().decode(errors="replace").strip().splitlines() or ["it exited"])[-1]
        return f"{_what(self.spec)} did not start: {last}"

    def rerecord(self) -> None:
        """Swap the dead PID for the new one in the lab's state, once `up` has finished
        writing it (status up), so neither write loses the other."""
        from . import state
        st = state.load(os.path.basename(self.run_dir))
        if st is None or st.status != "up":
            return
        st.processes = [p for p in st.processes if p.pid != self.unrecorded]
        self.unrecorded = None
        state.record_process(st, self.proc.pid, _what(self.spec))

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()


def supervise(planes: list[Dataplane]) -> None:
    """Restart dead dataplanes (at most once a second each) and keep the state current."""
    for dp in planes:
        if dp.proc.poll() is not None and time.monotonic() - dp.started > 1.0:
            print(f"{time.strftime('%H:%M:%S')} {_what(dp.spec)} (pid {dp.proc.pid}) exited with "
                  f"{dp.proc.returncode}; restarting it", flush=True)
            dp.unrecorded = dp.unrecorded or dp.proc.pid
            dp.spawn()
            problem = dp.wait_ready(5.0)
            if problem:
                print(problem, flush=True)
        if dp.unrecorded is not None and dp.proc.poll() is None:
            dp.rerecord()


def _response(node: str, conn: socket.socket) -> bytes:
    local, peer = conn.getsockname(), conn.getpeername()
    body = f"{node} {local[0]}:{local[1]} answered {peer[0]}:{peer[1]}\n".encode()
    return (b"HTTP/1.1 200 OK\r\nServer: nslab\r\nContent-Type: text/plain\r\nConnection: close\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def serve(run_dir: str, ready_fd: int | None) -> None:
    with open(os.path.join(run_dir, SPEC)) as f:
        spec = json.load(f)
    services = spec["services"]
    planes = [Dataplane(run_dir, d) for d in spec["daemons"]]
    try:
        _serve(run_dir, ready_fd, services, planes)
    finally:
        for dp in planes:
            dp.stop()


def _serve(run_dir: str, ready_fd: int | None, services: list, planes: list) -> None:
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
        for dp in planes:
            dp.spawn()
        problem = next(filter(None, (dp.wait_ready() for dp in planes)), None)
        if problem:
            raise OSError(problem)
    except OSError as e:
        if ready_fd is not None:
            os.write(ready_fd, f"{e}\n".encode())
        raise SystemExit(1)
    if ready_fd is not None:
        os.write(ready_fd, ("ready" + "".join(f" {dp.proc.pid}" for dp in planes) + "\n").encode())
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
            supervise(planes)


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else None)
