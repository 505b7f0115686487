"""Ownership records: what a lab created, and proof that it did.

/run/nslab/<lab>/state.json lists the lab's namespaces (with the device and inode of each,
taken before its name was published), processes (PID and start time, so a recycled PID is
never killed), /etc/netns links and containers.  `down` works from any process, after a
crash and after kill -9 in the middle of `up`, and removes only what it can verify was
made by the lab: a hand-edited or corrupted record cannot point it at anything else.  A
recorded namespace counts only while /run/netns/<name> holds the very namespace recorded
(and never the host's: verified_ids); a process only if it is one of the lab's nslab
processes or lives in such a namespace; the commands that enter or change a lab (exec,
link, show, trace, rewire) use a recorded name only after the same check.  The run
directory itself must be root's and writable by nobody else (check_run_dir).

One writer: every change goes through `update()` (or `claim()` for the first version),
which holds the lab's lock (flock on <run dir>/lock), re-reads the record, applies the
change and replaces the file atomically (unique temporary file, then rename).  No fsync:
the record describes namespaces, mounts and processes that no reboot keeps (and RUN_DIR is
a tmpfs on most machines); a killed process loses nothing the page cache holds, and a
power cut takes the lab with it (2 ms per fsync on this machine's ext4 /run, ~60 per
10,000-namespace up).  `locked()` holds the same lock across a whole command (up, down,
rewire); it is re-entrant within one process, so their own updates go through.

What was built: before anything is applied, `up` writes the exact topology text it loaded
(topology.yaml) and the plan it applies (plan.json, already fitted to this kernel) into
the run directory, each atomically, and only then names them with their SHA-256 in the
record (`built`).  Observers and `rewire` read those (`read_built`), never the user's file
again; a file that does not match its digest is refused, and never stops `down`.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import hashlib
import itertools
import json
import os
import re
import resource
import shutil
import signal
import stat as S
import tempfile
import time
from dataclasses import dataclass, field, fields
from typing import Callable, Iterator

from .apply import containers, netns
from . import spawn
from .errors import NslabError, PrerequisiteError

RUN_DIR = os.environ.get("NSLAB_RUN_DIR", "/run/nslab")
HOSTS_DIR = "/etc/netns"   # `ip netns exec NS` bind-mounts /etc/netns/NS/hosts over /etc/hosts
# Inside /etc/netns when nslab made it (ip netns only looks at /etc/netns/<ns>): whichever
# lab goes down last, with any run directory, removes the directory again.
HOSTS_DIR_MARK = os.path.join(HOSTS_DIR, ".made-by-nslab")
STATE, LOCK = "state.json", "lock"
TOPOLOGY, PLAN = "topology.yaml", "plan.json"      # what was built (record_built)
# Identities of namespaces appended by `up` a group at a time (record_namespaces), folded
# into STATE by the next full write: rewriting the whole record per group made recording
# quadratic (40 ms per group of 256 at 10,000 namespaces).
NS_LOG = "namespaces.log"
MAX_BUILT_BYTES = 1 << 30                          # a record larger than this is not ours
# The name rules of nslab.model (kept here so reading a record needs no model import).
# Full matches only: with `$`, a name with a trailing newline would pass.
LAB_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
NODE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")


class RecordError(NslabError):
    """The record cannot be read or written (corrupt, read-only, disk full)."""

    exit_code = 1


class LabExists(Exception):
    """claim(): the lab's run directory exists already."""


@dataclass
class Process:
    pid: int
    start_time: int     # /proc/PID/stat field 22, to recognise our own process
    what: str


@dataclass
class LabState:
    lab: str
    file: str
    status: str = "creating"              # creating | up | failed
    created: float = field(default_factory=time.time)
    namespaces: list[str] = field(default_factory=list)     # the plan's (intended)
    nodes: dict[str, str] = field(default_factory=dict)     # node -> namespace
    processes: list[Process] = field(default_factory=list)
    files: list[str] = field(default_factory=list)          # /etc/netns links, once made
    info: dict = field(default_factory=dict)                # per-node facts (subnet.env, notes)
    overrides: dict = field(default_factory=dict)           # command-line changes (--backend)
    containers: list[dict] = field(default_factory=list)    # {node, name, id}: once created
    ns_ids: dict[str, list[int]] = field(default_factory=dict)   # namespace -> [st_dev, st_ino]
    built: dict[str, str] = field(default_factory=dict)      # TOPOLOGY/PLAN -> SHA-256 of the file written
    # `nslab break`'s faults, recorded before each is made, kept until undone (nslab/faults.py
    # reads and validates them: each names what it changed in the lab's own namespaces)
    breaks: list[dict] = field(default_factory=list)
    # keys of a newer nslab: kept as they are, never interpreted
    extra: dict = field(default_factory=dict, repr=False)
    warnings: list[str] = field(default_factory=list, repr=False)   # not saved

    @property
    def dir(self) -> str:
        return lab_dir(self.lab)


_TYPES = {"lab": str, "file": str, "status": str, "created": (int, float), "namespaces": list, "nodes": dict,
          "processes": list, "files": list, "info": dict, "overrides": dict, "containers": list, "ns_ids": dict,
          "built": dict, "breaks": list}


def lab_dir(lab: str) -> str:
    return os.path.join(RUN_DIR, lab)


def check_run_dir(lab: str | None = None) -> None:
    """RecordError (one sentence) unless RUN_DIR, and lab's directory in it if it exists,
    belongs to root (or to this user) and nobody else can write to it: its records steer
    what root removes and kills, so nobody else may plant or swap them.  Checked before
    anything there is read or written; an absent directory holds nothing yet."""
    for d in (RUN_DIR,) + ((lab_dir(lab),) if lab is not None and valid_lab(lab) else ()):
        try:
            s = os.stat(d)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as e:
            raise RecordError(f"cannot read nslab's run directory {d}: {e.strerror}") from None
        fix = (f"make it root's and not writable by others (chown root {d}; chmod 755 {d}) or set NSLAB_RUN_DIR "
               f"to a root-owned directory of mode 0755")
        if s.st_uid not in (0, os.geteuid()):
            raise RecordError(f"nslab's run directory {d} belongs to uid {s.st_uid}, not root, so its records cannot "
                              f"be trusted: {fix}")
        if s.st_mode & 0o022:
            raise RecordError(f"nslab's run directory {d} is writable by group or others (mode "
                              f"{S.S_IMODE(s.st_mode):04o}), so its records cannot be trusted: {fix}")


def valid_lab(lab: str) -> bool:
    return isinstance(lab, str) and bool(LAB_NAME_RE.fullmatch(lab))


def lab_namespace(lab: str, ns) -> bool:
    """ns is `<lab>.<node>` with a valid node name (so never a path)."""
    return isinstance(ns, str) and ns.startswith(lab + ".") and bool(NODE_NAME_RE.fullmatch(ns[len(lab) + 1:]))


# ---- reading --------------------------------------------------------------------------------


def _parse(lab: str, data) -> LabState:
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    known = {f.name for f in fields(LabState)} - {"extra", "warnings"}
    for key, types in _TYPES.items():
        if key in data and not isinstance(data[key], types):
            raise ValueError(f"{key!r} is a {type(data[key]).__name__}")
    if not isinstance(data.get("file", ""), str):
        raise ValueError("'file' is not a string")
    procs = []
    for p in data.get("processes", []):
        if not (isinstance(p, dict) and isinstance(p.get("pid"), int) and isinstance(p.get("start_time"), int)):
            raise ValueError(f"process entry {p!r} has no integer pid and start_time")
        procs.append(Process(pid=p["pid"], start_time=p["start_time"], what=str(p.get("what", ""))))
    for key in ("namespaces", "files"):
        if not _all(data.get(key, []), str):
            raise ValueError(f"{key!r} holds something other than strings")
    if not all(isinstance(c, dict) and isinstance(c.get("node"), str) and isinstance(c.get("name"), str)
               and isinstance(c.get("id"), (str, type(None))) for c in data.get("containers", [])):
        raise ValueError("'containers' holds something other than {node, name, id} objects")
    if not _all(data.get("nodes", {}).values(), str):
        raise ValueError("'nodes' holds something other than namespace names")
    if not _identities(data.get("ns_ids", {})):
        raise ValueError("'ns_ids' holds something other than [device, inode] pairs")
    if not _all(data.get("breaks", []), dict):
        raise ValueError("'breaks' holds something other than objects")
    if not _all(data.get("built", {}).values(), str):
        raise ValueError("'built' holds something other than digests")
    st = LabState(lab=lab, file=data.get("file", "?"),
                  **{k: data[k] for k in known - {"lab", "file", "processes"} if k in data}, processes=procs)
    st.extra = {k: v for k, v in data.items() if k not in known}
    if st.extra:
        st.warnings.append(f"lab {lab}: its record has keys this nslab does not know "
                           f"({', '.join(sorted(st.extra))}); ignored")
    if data.get("lab", lab) != lab:
        st.warnings.append(f"lab {lab}: its record names lab {data.get('lab')!r}; the directory's name counts")
    return st


def load(lab: str) -> LabState | None:
    """The lab's record; None if the lab does not exist; RecordError if it is corrupt.
    The lab's name is always the directory's, never the record's."""
    if not valid_lab(lab):
        return None
    check_run_dir(lab)
    d = lab_dir(lab)
    try:
        with open(os.path.join(d, STATE), "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        # a run directory without a record: `up` was killed before writing it
        return None if not os.path.isdir(d) else LabState(lab=lab, file="?", status="failed")
    except OSError as e:
        raise RecordError(f"lab {lab}: cannot read its record {os.path.join(d, STATE)}: {e.strerror}") from None
    try:
        st = _parse(lab, json.loads(raw))
    except (ValueError, TypeError, RecursionError) as e:
        raise RecordError(f"lab {lab}: its record {os.path.join(d, STATE)} is corrupt ({e})") from None
    st.ns_ids = {**_read_ns_log(lab), **st.ns_ids}     # the record's own entries are newer (rewire)
    return st


def _read_ns_log(lab: str) -> dict[str, list[int]]:
    """NS_LOG's groups merged; a last line without its newline was cut short by a crash
    (its namespaces were never named: nothing to find) and is ignored."""
    path = os.path.join(lab_dir(lab), NS_LOG)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise RecordError(f"lab {lab}: cannot read its record {path}: {e.strerror}") from None
    with open(fd, "rb") as f:
        lines = f.read().split(b"\n")[:-1]
    ids: dict[str, list[int]] = {}
    try:
        for line in lines:
            group = json.loads(line)
            if not isinstance(group, dict) or not _identities(group):
                raise ValueError("a line holds something other than namespace: [device, inode] pairs")
            ids.update(group)
    except (ValueError, RecursionError) as e:
        raise RecordError(f"lab {lab}: its record {path} is corrupt ({e})") from None
    return ids


def _all(values, types) -> bool:
    """Each value an instance of `types` (the loop in C: a record's lists are as long as the lab)."""
    return all(map(isinstance, values, itertools.repeat(types)))


def _identities(ids: dict) -> bool:
    return all(isinstance(v, list) and len(v) == 2 and isinstance(v[0], int) and isinstance(v[1], int)
               for v in ids.values())


def labs() -> list[str]:
    """Run directories with a valid lab name (anything else in RUN_DIR is not nslab's)."""
    check_run_dir()
    try:
        return sorted(d for d in os.listdir(RUN_DIR) if valid_lab(d) and os.path.isdir(lab_dir(d))
                      and not os.path.islink(lab_dir(d)))
    except FileNotFoundError:
        return []


# ---- the one writer -------------------------------------------------------------------------

_held: dict[str, int] = {}          # lab -> depth of locked() in this process


@contextlib.contextmanager
def locked(lab: str) -> Iterator[bool]:
    """Hold the lab's lock; yields False if the lab does not exist (or went while waiting).
    A name that is not a lab name (`..`, `a/b`) never names a directory here: whatever
    writes or removes under the lock (update, record_namespaces, destroy) stays in RUN_DIR."""
    if not valid_lab(lab):
        yield False
        return
    if lab in _held:
        _held[lab] += 1
        try:
            yield os.path.isdir(lab_dir(lab))
        finally:
            _held[lab] -= 1
        return
    check_run_dir(lab)
    path = os.path.join(lab_dir(lab), LOCK)
    for _ in range(100):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except (FileNotFoundError, NotADirectoryError):
            yield False
            return
        except OSError as e:
            raise _write_error(lab, path, e) from None
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            same = os.fstat(fd).st_ino == os.stat(path, follow_symlinks=False).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)              # removed (down) while we waited: look again
    else:
        raise RecordError(f"lab {lab}: its lock {path} keeps changing")
    _held[lab] = 1
    try:
        yield True
    finally:
        del _held[lab]
        os.close(fd)


def update(lab: str, change: Callable[[LabState], None]) -> LabState | None:
    """The only way to change a record: lock, re-read, change(state), write atomically.
    Returns the new state, or None if the lab is gone."""
    with locked(lab) as exists:
        if not exists:
            return None
        st = load(lab)
        if st is None:
            return None
        change(st)
        _write(st)
        return st


def record_namespaces(lab: str, ids: dict[str, list[int]]) -> None:
    """Add namespace identities to the record by appending them to NS_LOG, under the
    lab's lock: linear in the group, whatever the record holds."""
    path = os.path.join(lab_dir(lab), NS_LOG)
    with locked(lab) as exists:
        if not exists:
            raise RecordError(f"lab {lab}: its run directory {lab_dir(lab)} is gone")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                view = memoryview(json.dumps(ids).encode() + b"\n")
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
        except OSError as e:
            raise _write_error(lab, path, e) from None


def claim(lab: str, file: str) -> LabState:
    """Create the lab's run directory and first record, and take its lock (held until
    release(lab); `up` keeps it for its whole run).  LabExists if the lab exists."""
    if not valid_lab(lab):          # the model checks names; this is the record's own guard
        raise RecordError(f"{lab!r} is not a lab name (lowercase letters, digits, '-' or '_')")
    d = lab_dir(lab)
    try:
        os.makedirs(RUN_DIR, mode=0o755, exist_ok=True)
        check_run_dir()
        os.mkdir(d, 0o755)
    except FileExistsError:
        raise LabExists(lab) from None
    except OSError as e:
        raise _write_error(lab, d, e) from None
    try:
        cm = locked(lab)
        if not cm.__enter__():
            raise LabExists(lab)      # a `down` removed it between mkdir and lock
        # a generated fabric (`nslab up clos:4,20,50`) is named by its shape, not a path
        st = LabState(lab=lab, file=os.path.abspath(file) if os.path.exists(file) else file)
        try:
            _write(st)
        except BaseException:
            cm.__exit__(None, None, None)
            raise
        _claims[lab] = cm
    except BaseException:
        _rmtree_own(lab)
        raise
    return st


_claims: dict[str, contextlib.AbstractContextManager] = {}


def release(lab: str) -> None:
    cm = _claims.pop(lab, None)
    if cm is not None:
        cm.__exit__(None, None, None)


def _write(st: LabState) -> None:
    data = {f.name: getattr(st, f.name) for f in fields(LabState) if f.name not in ("extra", "warnings")}
    data["processes"] = [vars(p) for p in st.processes]
    # one line: json's C encoder (an indent sends it through the pure-Python one, 10x slower
    # on a 10,000-namespace record, which `up` rewrites once per group of namespaces)
    _write_file(st.lab, STATE, json.dumps({**st.extra, **data}).encode() + b"\n")
    # st came from load(), which merged NS_LOG in: it is in STATE now
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(lab_dir(st.lab), NS_LOG))


def _write_file(lab: str, name: str, text: bytes) -> None:
    """Replace <run dir>/name atomically: unique temporary file, then rename (no fsync: see
    the module's doc)."""
    d = lab_dir(lab)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{name.split('.')[0]}.", suffix=".tmp", dir=d)
        try:
            view = memoryview(text)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.rename(tmp, os.path.join(d, name))
        tmp = None
    except OSError as e:
        raise _write_error(lab, os.path.join(d, name), e) from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def record_built(lab: str, topology_text: str, plan_json: str) -> None:
    """What `up` builds, recorded before it is applied: the topology text and the plan are
    written (each atomically), then named with their digests in the record.  Held under
    the lab's lock (up holds it already)."""
    files = {TOPOLOGY: topology_text.encode(), PLAN: plan_json.encode()}
    with locked(lab):
        for name, data in files.items():
            _write_file(lab, name, data)
        digests = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
        update(lab, lambda s: s.built.update(digests))


def read_built(lab: str, name: str, st: LabState | None = None) -> str:
    """The text of TOPOLOGY or PLAN as `up` recorded it (its digest checked); RecordError
    (one sentence) if the lab is not running, has no such record, or it was changed."""
    if st is None:
        st = load(lab)
    if st is None:
        raise RecordError(f"no lab named {lab!r} is running")
    check_run_dir(lab)
    path = os.path.join(lab_dir(lab), name)
    what = {TOPOLOGY: "topology", PLAN: "plan"}[name]
    if name not in st.built:
        why = "it is still being built or its `up` was interrupted" if st.status != "up" else \
            "it was built by an nslab that did not record it"
        raise RecordError(f"lab {lab}: its record holds no {what} ({why}); `nslab down {lab}` and bring it up again")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            data = f.read(MAX_BUILT_BYTES + 1)
    except OSError as e:
        raise RecordError(f"lab {lab}: cannot read its recorded {what} {path}: {e.strerror}") from None
    if hashlib.sha256(data).hexdigest() != st.built[name]:
        raise RecordError(f"lab {lab}: its recorded {what} {path} was changed after `up` (its SHA-256 is not the "
                          f"one in {STATE}); nslab will not guess what was built: `nslab down {lab}` and up again")
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise RecordError(f"lab {lab}: its recorded {what} {path} is not UTF-8 text") from None


def _write_error(lab: str, path: str, e: OSError) -> NslabError:
    if e.errno == errno.EROFS:
        return RecordError(f"cannot write the record of lab {lab} ({path}): the file system is read-only; "
                           f"nslab keeps its records under {RUN_DIR} (set NSLAB_RUN_DIR to a writable directory)")
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return RecordError(f"cannot write the record of lab {lab} ({path}): no space left on the device; "
                           f"free some space there and try again")
    if e.errno in (errno.EACCES, errno.EPERM):
        return PermissionError(e.errno, e.strerror, path)   # the CLI's "run nslab as root" line
    return RecordError(f"cannot write the record of lab {lab} ({path}): {e.strerror}")


# ---- processes --------------------------------------------------------------------------------


def process_start_time(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def record_process(st: LabState, pid: int, what: str) -> Process:
    """Record process `pid` in lab st.lab (and in `st`, the caller's copy)."""
    proc = Process(pid=pid, start_time=process_start_time(pid) or 0, what=what)
    st.processes.append(proc)
    update(st.lab, lambda cur: cur.processes.append(proc))
    return proc


def is_ours(proc: Process) -> bool:
    return process_start_time(proc.pid) == proc.start_time


def labs_process(st: LabState, proc: Process, owned: dict[str, list[int]] | None = None) -> bool:
    """A recorded process is the lab's if its start time matches and it carries the lab:
    an nslab runtime process (spawn.python's `-I -c` of an nslab.runtime module, or
    `-m nslab.runtime.*`: the agent, the warden and the tunnel daemons) with the lab's run
    directory among its arguments, or a process living in one
    of the lab's verified namespaces (`owned`, default verified_ids(st)), as a capture's
    tcpdump does.  A hand-edited record that copies another process's start time, or
    records the host's namespace as the lab's, names nothing."""
    if not is_ours(proc):
        return False
    try:
        with open(f"/proc/{proc.pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    if os.fsencode(st.dir) in argv and spawn.runtime_module(argv) is not None:
        return True
    ident = process_namespace(proc.pid)
    return ident is not None and ident in (verified_ids(st) if owned is None else owned).values()


def process_namespace(pid: int) -> list[int] | None:
    """[st_dev, st_ino] of process pid's network namespace; None if it is gone."""
    return ns_identity(f"/proc/{pid}/ns/net")


def stop_processes(procs: list[Process], timeout: float = 2.0) -> None:
    """SIGTERM our processes (by PID, verified by start time), SIGKILL what is left."""
    alive = [p for p in procs if is_ours(p)]
    for p in alive:
        try:
            os.kill(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if is_ours(p) and not _zombie(p.pid)]
        if alive:
            time.sleep(0.01)
    for p in alive:
        try:
            os.kill(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):   # gone between open and read: ESRCH
        return True


# ---- namespaces ---------------------------------------------------------------------------------


def ns_identity(path: str) -> list[int] | None:
    """[st_dev, st_ino] of a namespace file; a /proc/PID/ns/net link is followed, a
    /run/netns entry never is (a symlink there is not a namespace)."""
    try:
        s = os.stat(path, follow_symlinks=path.startswith("/proc/"))
    except OSError:               # gone, or not ours to see
        return None
    return [s.st_dev, s.st_ino]


def _netns_facts() -> tuple[int, list[list[int]]]:
    """nsfs's device (every namespace file is one of its files) and the network namespaces
    never taken for a lab's: the host's (init's) and this process's own."""
    own = os.stat("/proc/self/ns/net")
    never = [[own.st_dev, own.st_ino]]
    init = ns_identity("/proc/1/ns/net")          # None without root: nothing to enter then anyway
    if init is not None:
        never.append(init)
    return own.st_dev, never


def container_namespace(pid: int, what: str) -> list[int]:
    """The identity of the network namespace a container's PID (as the engine reported it)
    lives in, to be recorded and wired as the lab's: never the host's or this process's own
    (an engine that is not the real one could name any PID, PID 1 included)."""
    ident = ns_identity(f"/proc/{pid}/ns/net")
    if ident is None or ident in _netns_facts()[1]:
        raise NslabError(f"{what}: the container engine reported PID {pid}, which lives in "
                         f"{'no network namespace nslab can see' if ident is None else 'the host network namespace'}; "
                         f"nslab wires nothing there (is DOCKER_HOST the machine's own engine?)")
    return ident


def verified_ids(st: LabState, names=None) -> dict[str, list[int]]:
    """The recorded namespaces (of `names`, default all) that are verifiably the lab's now,
    with their identities: the name is the lab's by its name rule, /run/netns/<name> is a
    namespace (a file of nsfs: only a bind mount puts one there) whose identity is the one
    recorded when nslab made it, and that namespace is neither the host's (init's) nor
    this process's own.  An identity a record holds counts for nothing else, whoever
    wrote it."""
    nsfs, never = _netns_facts()
    out = {}
    for ns in st.ns_ids if names is None else names:
        if not lab_namespace(st.lab, ns) or ns not in st.ns_ids:
            continue
        now = ns_identity(netns.path(ns))
        if _is_recorded(now, st.ns_ids[ns], nsfs, never):
            out[ns] = now
    return out


def _is_recorded(now, recorded, nsfs: int, never: list) -> bool:
    return now is not None and now == recorded and now[0] == nsfs and now not in never


def witnessed(name: str, recorded) -> bool:
    """Namespace `name` (/run/netns/<name>) is the one whose identity was recorded when nslab
    made it, by verified_ids' rule: for a namespace outside a lab (the sandbox's underlay)."""
    nsfs, never = _netns_facts()
    return _is_recorded(ns_identity(netns.path(name)), recorded, nsfs, never)


def namespace_problem(st: LabState, ns, node: str | None = None) -> str | None:
    """None if namespace ns is verifiably the lab's (verified_ids); else one sentence
    saying why nslab will not touch it, for the command that was about to."""
    if ns in verified_ids(st, [ns]):
        return None
    what = f"namespace {ns!r}" + (f" of node {node}" if node else "")
    rebuild = f"`nslab down {st.lab}` and bring it up again"
    if not lab_namespace(st.lab, ns):
        return f"lab {st.lab}: its record names {what}, which is not a namespace name of lab {st.lab}: " \
               f"nslab will not touch it; {rebuild}"
    if ns_identity(netns.path(ns)) is None:
        return f"lab {st.lab}: {what} is gone; {rebuild}"
    return f"lab {st.lab}: {what} is not the one lab {st.lab} created (its identity is not the recorded one): " \
           f"nslab will not touch it; {rebuild}"


def _placeholder(path: str) -> bool:
    """An empty mount point file as `ip netns add`/nslab create it before the bind mount
    (mode 0, regular, on /run/netns's own file system): holds no namespace."""
    try:
        s, d = os.stat(path, follow_symlinks=False), os.stat(os.path.dirname(path))
    except OSError:
        return False
    return S.S_ISREG(s.st_mode) and s.st_size == 0 and S.S_IMODE(s.st_mode) == 0 and s.st_dev == d.st_dev


# ---- down -----------------------------------------------------------------------------------------


@dataclass
class Teardown:
    removed: list[str] = field(default_factory=list)     # namespaces removed
    kept: list[str] = field(default_factory=list)        # sentences: what was left, and why


def destroy(lab: str, st: LabState | None = None, progress=None) -> Teardown:
    """Remove what lab `lab` verifiably made, then its run directory.  `st`: the caller's
    own copy of the record (`up` cleaning up after itself); else the record is read, and
    if it is corrupt, only what can be verified without it goes (containers by label,
    /etc/netns links into the run directory) and the rest is named in `kept`."""
    out = Teardown()
    with locked(lab) as exists:
        if not exists and st is None:
            return out
        if st is None:
            try:
                st = load(lab)
            except RecordError as e:
                out.kept.append(f"{e}: removed only what it could verify without it")
                st = None
        if st is None:
            st = LabState(lab=lab, file="?", status="failed")
            corrupt = True
        else:
            corrupt = False
        st.lab = lab
        if st.containers or corrupt:      # first, so that a missing engine leaves everything in place
            try:
                containers.remove(containers.owned(lab, lab_dir(lab), st.containers))
            except NslabError:
                if not corrupt:
                    raise
        owned = verified_ids(st)
        stop_processes([p for p in st.processes if labs_process(st, p, owned)])
        with _held_until_unmounted() as hold:
            for i, ns in enumerate(st.ns_ids):
                if progress:                   # console.Progress: a bar on a terminal after a second
                    progress("removing namespaces", i, len(st.ns_ids))
                p = netns.path(ns)
                if not lab_namespace(lab, ns):
                    out.kept.append(f"{ns!r} is not a namespace name of lab {lab}: left alone")
                elif ns in owned or _placeholder(p):
                    hold(p)
                    if netns.remove(ns):
                        out.removed.append(ns)
                elif ns_identity(p) is not None:
                    out.kept.append(f"namespace {ns} is not the one lab {lab} created (another has its name "
                                    f"now): left alone")
        unverified = [ns for ns in (set(st.namespaces) | set(netns.list_names() if corrupt else []))
                      if ns not in st.ns_ids and lab_namespace(lab, ns) and netns.exists(ns)]
        for ns in sorted(unverified):
            out.kept.append(f"namespace {ns} exists but lab {lab}'s record does not show it made it: left alone "
                            f"(if it is yours: ip netns del {ns})")
        _remove_links(lab, st.files)
        _remove_hosts_dir()
        _rmtree_own(lab)
    return out


@contextlib.contextmanager
def _held_until_unmounted():
    """hold(path): keep that namespace alive with an fd until a group of them is unmounted.
    Unmounting the last reference queues the namespace's teardown on a kernel worker, and
    each later unmount then waits out an RCU grace period behind it (measured: 1,044
    unmounts 0.20 s, 0.07 s with the namespaces held, teardown starting after them).
    Groups stay under the open-files limit (the CLI raises it to the hard one: 20,000 here)."""
    group = max(64, resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 256)
    held: list[int] = []

    def release():
        for fd in held:
            os.close(fd)
        held.clear()

    def hold(path: str) -> None:
        if len(held) >= group:
            release()
        try:
            held.append(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC))
        except OSError:
            pass
    try:
        yield hold
    finally:
        release()


def etc_folder(run_dir: str, resolv_conf: str | None = None) -> str:
    """The folder under a lab's run directory that /etc/netns/<ns> links to: `etc` for the
    lab's own resolv.conf (None), `etc-pods-<digest>` for another text (kubelet's, per pod
    namespace) -- named by its text, so a converge that adds one pod finds its folder."""
    if resolv_conf is None:
        return os.path.join(run_dir, "etc")
    return os.path.join(run_dir, "etc-pods-" + hashlib.sha256(resolv_conf.encode()).hexdigest()[:12])


def etc_folder_re(run_dir: str) -> re.Pattern:
    """Every path etc_folder gives for `run_dir`."""
    return re.compile(re.escape(os.path.join(run_dir, "etc")) + r"(-pods-[0-9a-f]{12})?")


def _remove_hosts_dir() -> None:
    """/etc/netns, if nslab made it and no lab (or user) has anything left in it."""
    try:
        if os.listdir(HOSTS_DIR) == [os.path.basename(HOSTS_DIR_MARK)]:
            os.unlink(HOSTS_DIR_MARK)
            os.rmdir(HOSTS_DIR)
    except OSError:                      # absent, or another down was quicker
        pass


def remove_stale_links(lab: str) -> None:
    """A lab with no run directory here (a reboot emptied /run): the /etc/netns links into
    it that its `up` made removed (and /etc/netns if nslab made it and it is empty now)."""
    if valid_lab(lab) and not os.path.lexists(lab_dir(lab)):
        _remove_links(lab, [])
        _remove_hosts_dir()


def _remove_links(lab: str, recorded: list[str]) -> None:
    """/etc/netns/<lab>.<node> symlinks that point at this lab's hosts folders (also ones
    an interrupted `up` made but did not record); nothing else."""
    own = etc_folder_re(lab_dir(lab))
    names = {os.path.basename(p) for p in recorded if os.path.dirname(p) == HOSTS_DIR}
    names |= {os.path.basename(p) for p in glob.glob(os.path.join(HOSTS_DIR, glob.escape(lab) + ".*"))}
    for name in names:
        link = os.path.join(HOSTS_DIR, name)
        if lab_namespace(lab, name) and os.path.islink(link) and own.fullmatch(os.readlink(link)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(link)


def _rmtree_own(lab: str) -> None:
    """Remove RUN_DIR/<lab> (never through a symlink, never anything outside it)."""
    d = lab_dir(lab)
    if not valid_lab(lab):
        return
    if os.path.islink(d):
        os.unlink(d)
        return
    _unmount_inside(d)
    # Take the name away in one step first: a command that looks for the lab from now on
    # finds no directory, where it could otherwise re-create its lock file inside one being
    # emptied (and leave a run directory holding only `lock`).
    gone = os.path.join(RUN_DIR, f"{REMOVING}{lab}.{os.getpid()}")
    try:
        os.rename(d, gone)
    except FileNotFoundError:
        gone = None
    except OSError:
        gone = d
    if gone:
        shutil.rmtree(gone, ignore_errors=True)
    sweep_removing()


REMOVING = ".removing."     # RUN_DIR/.removing.<lab>.<pid>: a run directory being emptied


def sweep_removing() -> None:
    """Finish the removal of run directories whose remover was killed half-way (only
    nslab's own `.removing.<lab>.<pid>` names, only when that PID is gone)."""
    check_run_dir()
    try:
        names = os.listdir(RUN_DIR)
    except FileNotFoundError:
        return
    for name in names:
        lab, _, pid = name[len(REMOVING):].rpartition(".")
        if not (name.startswith(REMOVING) and valid_lab(lab) and pid.isdigit()):
            continue
        if os.path.exists(f"/proc/{pid}"):
            continue
        path = os.path.join(RUN_DIR, name)
        if os.path.isdir(path) and not os.path.islink(path):
            _unmount_inside(path)
            shutil.rmtree(path, ignore_errors=True)


def _unmount_inside(d: str) -> None:
    """Unmount what is mounted below a run directory (the lab's UTS tmpfs and the node
    namespaces on it): rmtree cannot remove a mount point, and a mount left behind would
    keep its namespace alive.  Each outermost mount goes in one lazy unmount, with what
    is mounted inside it.  Done here, under the lab's lock, so an `up` that mounts while
    a `down` waits for the lock is covered too."""
    prefix = os.path.realpath(d) + "/"
    try:
        with open("/proc/self/mountinfo") as f:
            points = [re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4]) for line in f]
    except OSError:
        return
    inside = {p for p in points if p.startswith(prefix)}

    def below_another(p: str) -> bool:
        while (p := os.path.dirname(p)) + "/" != prefix and len(p) > 1:
            if p in inside:
                return True
        return False
    for point in sorted(p for p in inside if not below_another(p)):
        with contextlib.suppress(OSError):
            netns.umount(point)


def orphans(lab: str | None = None) -> dict[str, list]:
    """Containers nslab labelled for a lab of this run directory that has no run directory
    any more (it lives in /run, a reboot empties it): {lab: [containers]}.  Empty when no
    engine answers (nothing can be found, nothing is touched)."""
    if not containers.engine_socket_present() or not containers.any_labelled(lab):
        return {}
    try:
        client = containers.engine()
    except PrerequisiteError:
        return {}
    out: dict[str, list] = {}
    for c in client.containers.list(all=True, filters={"label": [f"{containers.LABEL_LAB}={lab}" if lab else containers.LABEL_LAB]}):
        name = c.labels.get(containers.LABEL_LAB, "")
        if valid_lab(name) and c.labels.get(containers.LABEL_STATE) == lab_dir(name) \
                and not os.path.lexists(lab_dir(name)):
            out.setdefault(name, []).append(c)
    return out
