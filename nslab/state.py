"""Ownership records: what a lab created, written down before it is created.

/run/nslab/<lab>/state.json lists the lab's namespaces, processes (PID and start time, so
a recycled PID is never killed) and files.  `down` works from any process, after a crash
and after kill -9 in the middle of `up`, because every object is recorded before it exists.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import time
from dataclasses import asdict, dataclass, field

from . import netns

RUN_DIR = os.environ.get("NSLAB_RUN_DIR", "/run/nslab")
HOSTS_DIR = "/etc/netns"   # `ip netns exec NS` bind-mounts /etc/netns/NS/hosts over /etc/hosts
# Inside /etc/netns when nslab made it (ip netns only looks at /etc/netns/<ns>): whichever
# lab goes down last, with any run directory, removes the directory again.
HOSTS_DIR_MARK = os.path.join(HOSTS_DIR, ".made-by-nslab")


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
    namespaces: list[str] = field(default_factory=list)
    nodes: dict[str, str] = field(default_factory=dict)     # node -> namespace
    processes: list[Process] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)                # per-node facts (subnet.env, notes)
    overrides: dict = field(default_factory=dict)           # command-line changes (--backend)
    containers: list[dict] = field(default_factory=list)    # {node, name, id}: recorded before created

    @property
    def dir(self) -> str:
        return lab_dir(self.lab)

    def save(self) -> None:
        tmp = os.path.join(self.dir, "state.json.tmp")
        with open(tmp, "w") as f:
            json.dump(asdict(self), f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(self.dir, "state.json"))


def lab_dir(lab: str) -> str:
    return os.path.join(RUN_DIR, lab)


def claim(lab: str, file: str) -> LabState:
    """Create the lab's run directory atomically; FileExistsError if the lab exists."""
    os.makedirs(RUN_DIR, mode=0o755, exist_ok=True)
    os.mkdir(lab_dir(lab), 0o755)
    st = LabState(lab=lab, file=os.path.abspath(file))
    st.save()
    return st


def load(lab: str) -> LabState | None:
    try:
        with open(os.path.join(lab_dir(lab), "state.json")) as f:
            data = json.load(f)
    except FileNotFoundError:
        return None if not os.path.isdir(lab_dir(lab)) else LabState(lab=lab, file="?", status="failed")
    data["processes"] = [Process(**p) for p in data.get("processes", [])]
    return LabState(**data)


def labs() -> list[str]:
    try:
        return sorted(d for d in os.listdir(RUN_DIR) if os.path.isdir(lab_dir(d)))
    except FileNotFoundError:
        return []


def process_start_time(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def record_process(st: LabState, pid: int, what: str) -> Process:
    proc = Process(pid=pid, start_time=process_start_time(pid) or 0, what=what)
    st.processes.append(proc)
    st.save()
    return proc


def is_ours(proc: Process) -> bool:
    return process_start_time(proc.pid) == proc.start_time


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


def destroy(st: LabState) -> list[str]:
    """Remove everything the record lists; return the namespaces removed."""
    if st.containers:                  # first, so that a missing engine leaves everything in place
        from . import containers
        containers.remove(st)
    stop_processes(st.processes)
    removed = [ns for ns in st.namespaces if netns.remove(ns)]
    for path in st.files:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except IsADirectoryError:       # a lab recorded before hosts files became symlinks
            shutil.rmtree(path, ignore_errors=True)
    try:
        if os.listdir(HOSTS_DIR) == [os.path.basename(HOSTS_DIR_MARK)]:   # no lab (or user) left
            os.unlink(HOSTS_DIR_MARK)
            os.rmdir(HOSTS_DIR)
    except OSError:                      # absent, or another down was quicker
        pass
    shutil.rmtree(st.dir, ignore_errors=True)
    return removed
