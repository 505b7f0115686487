"""The lab agent: the processes that keep a lab's small services and userspace dataplanes
running, and restart whichever of them dies.

A pod with `serve: http` gets an HTTP server on :80 (the notes curl nginx).  Instead of a
process per pod, the agent opens each listening socket from inside the pod's namespace
(a socket stays in the namespace it was created in) and serves them all from one
selector loop.  The lab's userspace dataplanes (plan Daemon ops: flannel's udp proxy, the
ipip encapsulator; nslab/runtime/tunnels.py) run as one process per node, in the node's namespace,
logged to <run dir>/tunnel-<node>.log.

Supervision (the design): two supervisors that watch each other, plus a check on look.
- The *agent* (HTTP servers) watches every dataplane and the *warden*; the warden's only
  job is to watch the agent.  Each watches through a pidfd, so a death wakes it at once;
  whichever dies is started again (at most once a second each, against a crash loop) and
  traffic resumes: the TUN devices are persistent, the restarted agent re-opens its
  listening sockets.  Measured here: HTTP answers again ~0.3 s after `kill -9` of the
  agent, a udp/ipip daemon forwards again ~0.3 s after its `kill -9`
  (tests/integration/test_supervision.py).
- The dataplanes outlive the agent: a restarted agent adopts the running ones (their PID
  and start time are in the lab's record) and starts only what is missing, so killing the
  agent never interrupts the tunnels.
- Nothing dies silently: `health()` compares the record with what runs, and `nslab ls` /
  `nslab show` say "degraded" and name what is missing.  Only if the agent and the warden
  are both killed at once is nobody left to restart them: `nslab show` does (`heal()`).
- Owned before it acts: every process is started with PR_SET_PDEATHSIG=SIGKILL (set before
  exec, so it covers Python's start-up) and waits on a pipe until its starter has written
  its PID and start time into the lab's record; only then ("go") does it drop the
  death-signal and act.  A starter killed in between (kill -9 of `nslab up`, of the agent)
  takes its unrecorded children with it, so `nslab down` always finds every process.
- Never outlives its lab: agent, warden and dataplanes exit when the run directory
  disappears (checked twice a second), and `nslab down` stops them by PID (verified by
  start time) anyway.  `down` signals them all at once; a supervisor that sees its partner
  die first waits a moment for its own SIGTERM before restarting anything.
"""
from __future__ import annotations

import ctypes
import fcntl
import json
import os
import select
import selectors
import signal
import socket
import subprocess
import sys
import time

from .. import state
from ..apply import netns
from ..errors import NslabError
from ..plan import Daemon
from .. import spawn as clean

SPEC = "agent.json"
LOG = "agent.log"
LOCK = "agent.lock"
AGENT, WARDEN = "agent:", "warden:"          # how their records' `what` begins
WARDEN_WHAT = "warden: restarts the lab agent if it dies"
PR_SET_PDEATHSIG = 1
RESTART_GAP = 1.0         # seconds between two starts of one process (crash loop guard)
GRACE = 0.05              # `nslab down` signals every process at once: wait for ours first
_libc = ctypes.CDLL(None, use_errno=True)


def _prctl(option: int, arg) -> None:
    _libc.prctl(option, arg, 0, 0, 0)


def _log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} [{os.getpid()}] {msg}", flush=True)


# ---- the lab's record ----------------------------------------------------------------------

def _lab(run_dir: str) -> str:
    return os.path.basename(run_dir.rstrip("/"))


def _update(run_dir: str, change) -> bool:
    """Apply change(LabState) to the lab's record through the one locked, atomic writer;
    False when the lab is gone."""
    return state.update(_lab(run_dir), change) is not None


# While `nslab up` runs it holds the lab's lock, so the agent it starts cannot write the
# record itself: until it says "ready" it asks `up` to (a line on the ready pipe, "ok" back).
_via_up: tuple[int, object] | None = None


def _record(run_dir: str, pid: int, what: str) -> bool:
    """Record pid as `what`, dropping earlier records of `what` whose process is gone."""
    if _via_up is not None:
        fd, replies = _via_up
        os.write(fd, f"record {pid} {what}\n".encode())
        return replies.readline().strip() == b"ok"
    proc = state.Process(pid=pid, start_time=state.process_start_time(pid) or 0, what=what)

    def change(st):
        st.processes = [p for p in st.processes if p.what != what or _running(p)] + [proc]
    return _update(run_dir, change)


def held(st, what: str) -> bool:
    """`nslab break daemon-dead` holds this dataplane down until its undo (nslab/faults.py):
    a change of kind "daemon" naming it in one of the lab's recorded breaks."""
    for b in (st.breaks if st else []):
        changes = b.get("changes") if isinstance(b, dict) else None
        if isinstance(changes, list) and any(isinstance(c, dict) and c.get("kind") == "daemon"
                                             and c.get("what") == what for c in changes):
            return True
    return False


def _running(p) -> bool:
    """A recorded process that still runs (a zombie does not: init may be slow to reap)."""
    return state.is_ours(p) and not state._zombie(p.pid)


def _live(run_dir: str, prefix: str) -> list:
    """Recorded processes whose `what` starts with prefix and that still run."""
    st = state.load(_lab(run_dir))
    return [p for p in (st.processes if st else []) if p.what.startswith(prefix) and _running(p)]


# ---- starting a process that is owned before it acts ---------------------------------------

class Child:
    """A process this one started or adopted, watched through a pidfd."""

    def __init__(self, what: str, pid: int, popen: subprocess.Popen | None = None):
        self.what, self.pid, self.popen = what, pid, popen
        self.started = time.monotonic() if popen is not None else 0.0    # adopted: not ours to pace
        try:
            self.fd = os.pidfd_open(pid) if pid > 0 else None
        except ProcessLookupError:
            self.fd = None
        self.ready: int | None = None
        self.go: socket.socket | None = None     # until commit()

    def dead(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is not None
        if self.fd is None:
            return True
        return bool(select.select([self.fd], [], [], 0)[0])

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.ready is not None:
            os.close(self.ready)
            self.ready = None
        if self.go is not None:
            self.go.close()
            self.go = None


def spawn(module: str, args: list[str], what: str, log_path: str, run_dir: str, ready: bool = False,
          new_session: bool = False, reply_fd: int | None = None, defer: bool = False) -> Child | None:
    """Start `python3 -m MODULE --go-fd N [--ready-fd N] ARGS` (isolated, in "/", with a clean
    environment: nslab/spawn.py), so that it is recorded before it acts; None when the lab
    is gone.

    The child dies with us (PR_SET_PDEATHSIG, from before exec) until it has started and
    said "hello" on the go socket; it then no longer does, and waits.  Only now do we
    record it and answer "go".  Killed at any point, we leave no unrecorded process: before
    "hello" the kernel kills the child, after it the child reads end-of-file and exits.
    A recorded child is never killed with us.  defer: return at once, commit() later (so
    that several children start in parallel)."""
    ours, theirs = socket.socketpair()
    ready_r, ready_w = os.pipe() if ready else (None, None)
    parent = os.getpid()

    def die_with_parent():
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:        # the parent died before prctl took effect
            os._exit(1)

    extra = ["--go-fd", str(theirs.fileno())] + (["--ready-fd", str(ready_w)] if ready else []) + \
        (["--reply-fd", str(reply_fd)] if reply_fd is not None else [])
    keep = (theirs.fileno(),) + ((ready_w,) if ready else ()) + ((reply_fd,) if reply_fd is not None else ())
    try:
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(clean.python(module, *extra, *args), stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, pass_fds=keep, preexec_fn=die_with_parent,
                                    start_new_session=new_session, cwd=clean.CWD,
                                    env=clean.env(NSLAB_RUN_DIR=os.path.dirname(run_dir.rstrip("/"))))
    finally:
        theirs.close()
        if ready:
            os.close(ready_w)
    child = Child(what, proc.pid, proc)
    child.ready = ready_r
    child.go = ours
    return child if defer else commit(child, run_dir, log_path)


def commit(child: Child, run_dir: str, log_path: str) -> Child | None:
    """spawn(), second half: wait for the child's hello, record it, tell it to go."""
    ours, what, proc = child.go, child.what, child.popen
    child.go = None
    try:
        ours.settimeout(30.0)
        if ours.recv(16) != b"hello\n":
            raise OSError(f"{what} exited as it started (log: {log_path})")
        if not _record(run_dir, proc.pid, what):
            raise FileNotFoundError(run_dir)
        ours.sendall(b"go\n")
    except OSError as e:
        proc.kill()
        proc.wait()
        child.close()
        if isinstance(e, FileNotFoundError):
            return None
        raise
    finally:
        ours.close()
    return child


def wait_go(go_fd: int | None, run_dir: str | None) -> None:
    """In a started process, first thing: stop dying with the starter, say hello, and wait
    until it has recorded us ("go").  If the starter died instead, run only if it had
    recorded us already (it died between the record and "go"), else exit quietly."""
    if go_fd is None:
        return
    _prctl(PR_SET_PDEATHSIG, 0)
    with socket.socket(fileno=go_fd) as sock:
        try:
            sock.sendall(b"hello\n")
            go = sock.recv(16)
        except OSError:
            go = b""
    if go == b"go\n":
        return
    me = state.process_start_time(os.getpid())
    try:
        st = state.load(_lab(run_dir)) if run_dir and os.path.isdir(run_dir) else None
    except state.RecordError:
        st = None
    if st is None or not any(p.pid == os.getpid() and p.start_time == me for p in st.processes):
        os._exit(0)


def wait_ready(child: Child, log_path: str, timeout: float = 10.0) -> str | None:
    """None when the child said "ready", else why not (the child is then killed)."""
    line = ""
    if child.ready is not None:
        r, _, _ = select.select([child.ready], [], [], timeout)
        if r:
            line = os.read(child.ready, 4096).decode(errors="replace").strip()
        os.close(child.ready)
        child.ready = None
    if line.split(" ")[0] == "ready":
        return None
    if child.popen is not None:
        child.popen.kill()
        child.popen.wait()
    try:
        with open(log_path, "rb") as log:
            last = (log.read().decode(errors="replace").strip().splitlines() or ["it exited"])[-1]
    except OSError:
        last = "it exited"
    return f"{child.what} did not start: {line or last}"


def enter(ns: str) -> str | None:
    """A daemon's first act after wait_go: move into lab namespace `ns` for good.  Why it
    could not (the path is the namespace it started in), or None."""
    before = netns.current_inode()
    fd = os.open(netns.path(ns), os.O_RDONLY | os.O_CLOEXEC)
    netns.setns(fd)
    os.close(fd)
    return f"{ns} is the namespace we started in" if netns.current_inode() == before else None


AGENT_MODULE = "nslab.runtime.agent"


def _restart_partner(run_dir: str, role: str, what: str, stopping) -> Child | None:
    """Start the agent (role "agent") or the warden again, unless the lab is going down or
    a live one is recorded already (another restarter was quicker)."""
    time.sleep(GRACE)                      # a SIGTERM from `nslab down` lands meanwhile
    if stopping() or not os.path.isdir(run_dir):
        return None
    try:
        lock = os.open(os.path.join(run_dir, LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        live = _live(run_dir, what.split(" ")[0])
        if live:
            return Child(live[0].what, live[0].pid)
        child = spawn(AGENT_MODULE, [run_dir, role], what, os.path.join(run_dir, LOG), run_dir,
                      ready=role == "agent", new_session=True)
        if child is None:
            return None
        if role == "agent":
            problem = wait_ready(child, os.path.join(run_dir, LOG))
            if problem:
                _log(problem)
                return child
        return child
    finally:
        os.close(lock)


# ---- called by `nslab up`, `nslab ls`, `nslab show` ---------------------------------------

def start(st, ops) -> None:
    """Start the agent for plan Serve and Daemon ops; return once it listens and every
    dataplane runs, all of them recorded."""
    services = [s for s in ops if not isinstance(s, Daemon)]
    daemons = [d for d in ops if isinstance(d, Daemon)]
    per_node: dict[str, int] = {}
    for d in daemons:
        per_node[d.node] = per_node.get(d.node, 0) + 1
    spec = {"what": f"{AGENT} http on {len(services)} pods, {len(daemons)} dataplanes",
            "services": [dict(ns=s.ns, node=s.node, kind=s.kind, port=s.port) for s in services],
            "daemons": [dict(ns=d.ns, node=d.node, kind=d.kind, dev=d.dev, config=list(d.config), module=d.module,
                             what=d.what + (f" ({d.dev})" if per_node[d.node] > 1 else ""))
                        for d in daemons]}
    tmp = os.path.join(st.dir, SPEC + ".tmp")
    with open(tmp, "w") as f:            # a restarted agent must never read half of it
        json.dump(spec, f)
    os.replace(tmp, os.path.join(st.dir, SPEC))
    reply_r, reply_w = os.pipe()
    try:
        run_dir = os.path.abspath(st.dir)      # the agent runs in "/"
        child = spawn(AGENT_MODULE, [run_dir, "agent"], spec["what"], os.path.join(run_dir, LOG), run_dir,
                      ready=True, new_session=True, reply_fd=reply_r)
    except OSError as e:
        os.close(reply_w)
        raise NslabError(f"the lab agent did not start: {e}") from None
    finally:
        os.close(reply_r)
    try:
        if child is None:
            raise NslabError(f"lab {st.lab} disappeared while its agent started")
        problem = None
        with os.fdopen(os.dup(child.ready), "rb") as lines:
            while True:
                if not select.select([lines], [], [], 30.0)[0]:
                    problem = "no answer in 30 s"
                    break
                line = lines.readline().decode(errors="replace").strip()
                if line.startswith("record "):       # the agent started its warden or a dataplane
                    _, pid, what = line.split(" ", 2)
                    os.write(reply_w, b"ok\n" if _record(st.dir, int(pid), what) else b"gone\n")
                    continue
                if line != "ready":
                    problem = line or "it exited"
                break
        if problem:
            child.popen.kill()
            child.popen.wait()
    finally:
        os.close(reply_w)
        if child is not None:
            child.close()
    fresh = state.load(st.lab)            # our copy: what the agent had recorded
    if fresh is not None:
        st.processes = fresh.processes
    if problem:
        try:
            with open(os.path.join(st.dir, LOG), "rb") as log:
                last = (log.read().decode(errors="replace").strip().splitlines() or [""])[-1]
        except OSError:
            last = ""
        raise NslabError(f"the lab agent did not start: {problem}{f' ({last})' if last and last != problem else ''} "
                         f"(log: {os.path.join(st.dir, LOG)})")


def expected(st) -> list[str]:
    """The `what` of every process the lab's agent keeps running (empty: no agent)."""
    try:
        with open(os.path.join(st.dir, SPEC)) as f:
            spec = json.load(f)
    except (OSError, ValueError):
        return []
    return [spec.get("what", AGENT), WARDEN_WHAT] + [d.get("what", "") for d in spec.get("daemons", [])]


def health(st) -> list[str]:
    """What is missing from a lab that is up: one phrase per process that should run but
    does not.  Empty when all is well (or the lab has no agent)."""
    if st.status != "up":
        return []
    live = {p.what for p in st.processes if _running(p)}
    recorded = {p.what: p.pid for p in st.processes}
    missing = []
    for what in expected(st):
        if what not in live:
            name = what.split(":")[0] if what.startswith((AGENT, WARDEN)) else what
            pid = recorded.get(what)
            missing.append(f"{name} not running" + (f" (pid {pid} died)" if pid else ""))
    return missing


def heal(st) -> list[str]:
    """Start the agent again when it and its warden are both gone (nobody else will); the
    agent then restarts its warden and any missing dataplane.  Returns what was done."""
    live = {p.what.split(" ")[0] for p in st.processes if _running(p)}
    if not expected(st) or st.status != "up" or AGENT in live or WARDEN in live:
        return []
    try:
        child = _restart_partner(os.path.abspath(st.dir), "agent", expected(st)[0], lambda: False)
    except OSError as e:
        return [f"could not restart the lab agent: {e}"]
    if child is None:
        return []
    child.close()
    return [f"restarted the lab agent (pid {child.pid}), which restarts what else was missing"]


# ---- the agent and the warden -----------------------------------------------------------------

def _response(node: str, conn: socket.socket) -> bytes:
    local, peer = conn.getsockname(), conn.getpeername()
    body = f"{node} {local[0]}:{local[1]} answered {peer[0]}:{peer[1]}\n".encode()
    return (b"HTTP/1.1 200 OK\r\nServer: nslab\r\nContent-Type: text/plain\r\nConnection: close\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


class Supervisor:
    """What the agent and the warden share: children watched through pidfds, and
    SIGTERM (from `nslab down`) meaning stop, never restart."""

    def __init__(self, run_dir: str):
        self.run_dir = run_dir
        self.sel = selectors.DefaultSelector()
        self.stopping = False
        signal.signal(signal.SIGTERM, self._term)

    def _term(self, *_):
        self.stopping = True
        sys.exit(0)

    def watch(self, child: Child) -> None:
        if child.fd is not None:
            self.sel.register(child.fd, selectors.EVENT_READ, ("child", child))

    def unwatch(self, child: Child) -> None:
        if child.fd is not None:
            self.sel.unregister(child.fd)
        if child.popen is not None:
            child.popen.poll()              # reap it
        child.close()

    def lab_gone(self) -> bool:
        return not os.path.isdir(self.run_dir)


def run_warden(run_dir: str) -> None:
    sup = Supervisor(run_dir)
    spec = _read_spec(run_dir)
    agent = None
    while not sup.lab_gone():
        if agent is None or agent.dead():
            if agent is not None:
                sup.unwatch(agent)
                _log(f"the lab agent (pid {agent.pid}) is gone; restarting it")
                _pace(agent)
            t0 = time.monotonic()
            try:
                agent = _restart_partner(run_dir, "agent", spec["what"], lambda: sup.stopping)
            except OSError as e:
                _log(f"the lab agent did not start: {e}; trying again")
                agent = None
                time.sleep(RESTART_GAP)
                continue
            if agent is None:
                return
            _log(f"the lab agent runs: pid {agent.pid}" + (f" (started in {time.monotonic() - t0:.2f} s)"
                                                            if agent.popen is not None else ""))
            sup.watch(agent)
        sup.sel.select(timeout=0.5)


def _pace(child: Child) -> None:
    """At most one start per RESTART_GAP: a process that dies at once is not restarted in a loop."""
    wait = child.started + RESTART_GAP - time.monotonic()
    if wait > 0:
        time.sleep(wait)


def _read_spec(run_dir: str) -> dict:
    with open(os.path.join(run_dir, SPEC)) as f:
        return json.load(f)


class Dataplane:
    """One supervised daemon in its node's namespace: a tunnel (nslab/runtime/tunnels.py)
    or the cluster DNS server (nslab/runtime/dns.py), by its plan.Daemon's module."""
    MODULES = ("nslab.runtime.tunnels", "nslab.runtime.dns")

    def __init__(self, run_dir: str, spec: dict):
        self.run_dir, self.spec = run_dir, spec
        self.child: Child | None = None
        module = spec.get("module", self.MODULES[0])       # a spec written before there was a choice
        if module not in self.MODULES:                     # the spec file is input too
            raise OSError(f"unknown daemon module {module!r} in {SPEC}")
        self.module = module
        log = "dns" if module.endswith(".dns") else "tunnel"
        self.log = os.path.join(run_dir, f"{log}-{spec['node']}.log")

    def start(self, defer: bool = False) -> Child | None:
        s = self.spec
        args = ["--netns", s["ns"], "--run-dir", self.run_dir, s["kind"], s["dev"]] + \
            [f"{k}={v}" for k, v in s["config"]]
        self.child = spawn(self.module, args, s["what"], self.log, self.run_dir, ready=True, defer=defer)
        return self.child


def run_agent(run_dir: str, ready_fd: int | None, reply_fd: int | None = None) -> None:
    global _via_up
    if ready_fd is not None and reply_fd is not None:
        _via_up = (ready_fd, os.fdopen(reply_fd, "rb"))
    sup = Supervisor(run_dir)
    spec = _read_spec(run_dir)
    try:
        planes = [Dataplane(run_dir, d) for d in spec["daemons"]]
        for svc in spec["services"]:
            with netns.enter(svc["ns"]):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("0.0.0.0", svc["port"]))
            sock.listen(128)
            sock.setblocking(False)
            sup.sel.register(sock, selectors.EVENT_READ, ("listen", svc["node"]))
        # Adopt what still runs (this agent replaces one that died), start the rest.
        live = {p.what: p for p in _live(run_dir, "")}
        fresh = []
        for dp in planes:
            p = live.get(dp.spec["what"])
            if p is not None:
                dp.child = Child(p.what, p.pid)
            elif held(state.load(_lab(run_dir)), dp.spec["what"]):
                dp.child = Child(dp.spec["what"], 0)   # dead: revive() retries it after the break's undo
            else:
                dp.start(defer=True)            # all start in parallel; each recorded below
                fresh.append(dp)
        for dp in fresh:
            if commit(dp.child, run_dir, dp.log) is None:
                raise OSError(f"lab {_lab(run_dir)} is gone")
        problem = next(filter(None, (wait_ready(dp.child, dp.log) for dp in fresh)), None)
        if problem:
            raise OSError(problem)
        for dp in planes:
            sup.watch(dp.child)
        warden = _live(run_dir, WARDEN)
        warden = Child(warden[0].what, warden[0].pid) if warden else \
            spawn(AGENT_MODULE, [run_dir, "warden"], WARDEN_WHAT, os.path.join(run_dir, LOG), run_dir,
                  new_session=True)
        if warden is None:
            raise OSError(f"lab {_lab(run_dir)} is gone")
        sup.watch(warden)
    except OSError as e:
        if ready_fd is not None:
            os.write(ready_fd, f"{e}\n".encode())
        raise SystemExit(1)
    if ready_fd is not None:
        os.write(ready_fd, b"ready\n")
        os.close(ready_fd)
    if _via_up is not None:
        _via_up[1].close()
        _via_up = None                   # `up` has finished with the record: write it ourselves
    _log(f"agent runs: http on {len(spec['services'])} pods, {len(planes)} dataplanes, warden {warden.pid}")
    retry: list[Child] = []               # failed to start: tried again after RESTART_GAP
    retry += [dp.child for dp in planes if dp.child.fd is None]        # held down at start

    def revive(who: Child) -> bool:
        """Start `who` (the warden or a dataplane) again; False when the lab is going."""
        nonlocal warden
        _pace(who)
        time.sleep(GRACE)                  # a SIGTERM from `nslab down` lands meanwhile
        if sup.stopping or sup.lab_gone():
            return False
        if who.what != WARDEN_WHAT and held(state.load(_lab(run_dir)), who.what):
            who.started = time.monotonic()          # asked again after RESTART_GAP, quietly
            retry.append(who)
            return True
        t0 = time.monotonic()
        try:
            if who.what == WARDEN_WHAT:
                new = _restart_partner(run_dir, "warden", WARDEN_WHAT, lambda: sup.stopping)
                if new is None:
                    return False
                warden = new
            else:
                dp = next(d for d in planes if d.spec["what"] == who.what)
                if dp.start() is None:
                    return False
                problem = wait_ready(dp.child, dp.log, 5.0)
                if problem:
                    raise OSError(problem)
                new = dp.child
        except OSError as e:
            _log(f"{who.what} did not start again: {e}; trying again")
            who.started = time.monotonic()
            retry.append(who)
            return True
        _log(f"{new.what} runs: pid {new.pid} ({time.monotonic() - t0:.2f} s)")
        sup.watch(new)
        return True

    buffers: dict[socket.socket, bytes] = {}
    last_check = time.monotonic()
    while True:
        for key, _ in sup.sel.select(timeout=0.5):
            role, who = key.data
            if role == "child":
                if who.dead():
                    sup.unwatch(who)
                    _log(f"{who.what} (pid {who.pid}) is gone; restarting it")
                    if not revive(who):
                        return
                continue
            if role == "listen":
                try:
                    conn, _ = key.fileobj.accept()
                except BlockingIOError:
                    continue
                conn.setblocking(False)
                buffers[conn] = b""
                sup.sel.register(conn, selectors.EVENT_READ, ("conn", who))
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
                    conn.sendall(_response(who, conn))
            except OSError:
                pass
            sup.sel.unregister(conn)
            buffers.pop(conn, None)
            conn.close()
        if time.monotonic() - last_check > 0.5:
            last_check = time.monotonic()
            if sup.lab_gone():      # the lab is gone: never outlive it
                return
            for who in [w for w in retry if time.monotonic() - w.started >= RESTART_GAP]:
                retry.remove(who)
                if not revive(who):
                    return


def main(argv: list[str]) -> None:
    """python3 -m nslab.runtime.agent [--go-fd N] [--ready-fd N] RUN_DIR agent|warden"""
    opts = {}
    while argv[0].startswith("--"):
        opts[argv[0]] = int(argv[1])
        argv = argv[2:]
    run_dir, role = argv[0], argv[1]
    wait_go(opts.get("--go-fd"), run_dir)
    if role == "warden":
        run_warden(run_dir)
    else:
        run_agent(run_dir, opts.get("--ready-fd"), opts.get("--reply-fd"))


if __name__ == "__main__":
    main(sys.argv[1:])
