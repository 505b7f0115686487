"""Ownership record helpers that need no root."""
from __future__ import annotations

from nslab import state


def test_a_process_that_vanishes_while_being_read_counts_as_gone(monkeypatch):
    """Reading /proc/PID/stat of a process that exits between open() and read() raises
    ESRCH (ProcessLookupError); `down` must treat it as gone, not crash (seen in the VM
    stage when a tunnel daemon exited during teardown)."""
    class Vanishing:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self):
            raise ProcessLookupError(3, "No such process")

    monkeypatch.setattr(state, "open", lambda *a, **k: Vanishing(), raising=False)
    assert state._zombie(12345) is True
    assert state.process_start_time(12345) is None


# --- the one writer ------------------------------------------------------------------------

import errno  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import os  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(state, "RUN_DIR", str(tmp_path))
    return tmp_path


def _claimed(lab: str) -> state.LabState:
    st = state.claim(lab, "x.yaml")
    state.release(lab)
    return st


def test_claim_is_exclusive_and_update_round_trips(run_dir):
    _claimed("a")
    with pytest.raises(state.LabExists):
        state.claim("a", "x.yaml")
    st = state.update("a", lambda s: s.ns_ids.__setitem__("a.n1", [4, 123]))
    assert st.ns_ids == {"a.n1": [4, 123]}
    assert state.load("a").ns_ids == {"a.n1": [4, 123]}
    assert state.update("gone", lambda s: None) is None
    assert sorted(os.listdir(run_dir / "a")) == ["lock", "state.json"]      # no temp file left


def _append_many(run_dir: str, worker: int, n: int) -> None:
    state.RUN_DIR = run_dir
    for i in range(n):
        state.update("a", lambda s: s.files.append(f"{worker}-{i}"))


def test_concurrent_updates_lose_nothing(run_dir):
    """Eight processes appending at once: every entry is there, the file always parses."""
    _claimed("a")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(str(run_dir), w, 40)) for w in range(8)]
    for p in procs:
        p.start()
    seen_bad = 0
    while any(p.is_alive() for p in procs):      # readers never see a half-written record
        try:
            json.loads((run_dir / "a" / "state.json").read_text())
        except ValueError:
            seen_bad += 1
    for p in procs:
        p.join()
        assert p.exitcode == 0
    assert seen_bad == 0
    assert sorted(state.load("a").files) == sorted(f"{w}-{i}" for w in range(8) for i in range(40))


def test_a_corrupt_record_is_a_record_error(run_dir):
    _claimed("a")
    for text in ("{not json", "[]", '{"namespaces": 5}', '{"processes": [{"pid": "1"}]}',
                 '{"ns_ids": {"a.x": "inode"}}', '{"files": [1]}', "[" * 100000):
        (run_dir / "a" / "state.json").write_text(text)
        with pytest.raises(state.RecordError, match=r"lab a: its record .* is corrupt"):
            state.load("a")


def test_unknown_keys_are_kept_and_warned_about(run_dir):
    _claimed("a")
    data = json.loads((run_dir / "a" / "state.json").read_text())
    data.update(future={"x": 1}, lab="../../elsewhere")
    (run_dir / "a" / "state.json").write_text(json.dumps(data))
    st = state.load("a")
    assert st.lab == "a" and st.dir == str(run_dir / "a")        # the directory's name, never the record's
    assert any("future" in w for w in st.warnings) and any("elsewhere" in w for w in st.warnings)
    state.update("a", lambda s: s.files.append("f"))
    assert json.loads((run_dir / "a" / "state.json").read_text())["future"] == {"x": 1}


def test_a_failed_write_says_why_and_leaves_the_old_record(run_dir, monkeypatch):
    _claimed("a")
    before = (run_dir / "a" / "state.json").read_text()

    write = os.write

    def full(fd, data):                     # the run directory's file system is full
        if os.readlink(f"/proc/self/fd/{fd}").startswith(str(run_dir)):
            raise OSError(errno.ENOSPC, "No space left on device")
        return write(fd, data)
    monkeypatch.setattr(state.os, "write", full)
    with pytest.raises(state.RecordError, match="no space left on the device"):
        state.update("a", lambda s: s.files.append("f"))
    assert (run_dir / "a" / "state.json").read_text() == before
    assert sorted(os.listdir(run_dir / "a")) == ["lock", "state.json"]


def test_only_lab_names_count_as_labs_and_namespaces(run_dir):
    for d in ("good", "Bad", ".hidden", "x" * 40):
        (run_dir / d).mkdir()
    os.symlink("/", run_dir / "link")
    assert state.labs() == ["good"]
    assert state.lab_namespace("lab", "lab.node-1")
    for ns in ("../../etc/passwd", "/etc/passwd", "other.node", "lab.", "lab.a/b", "lab.a.b", "lab..", 5, "lab"):
        assert not state.lab_namespace("lab", ns), ns


# --- namespace identities appended a group at a time (issue 12) ----------------------------


def test_recorded_namespaces_are_appended_then_folded_into_the_record(run_dir):
    _claimed("a")
    state.record_namespaces("a", {"a.n1": [4, 11], "a.n2": [4, 12]})
    state.record_namespaces("a", {"a.n3": [4, 13]})
    before = (run_dir / "a" / "state.json").read_bytes()
    assert state.load("a").ns_ids == {"a.n1": [4, 11], "a.n2": [4, 12], "a.n3": [4, 13]}
    assert (run_dir / "a" / "state.json").read_bytes() == before      # appended: the record is not rewritten
    state.update("a", lambda s: setattr(s, "status", "up"))             # a full write takes the log in
    assert sorted(os.listdir(run_dir / "a")) == ["lock", "state.json"]
    assert json.loads((run_dir / "a" / "state.json").read_text())["ns_ids"]["a.n3"] == [4, 13]


def test_the_records_own_identity_wins_over_the_log(run_dir):
    """rewire writes a namespace's new identity into the record; a log entry for the same
    name (left by a crash between the record's write and the log's removal) is older."""
    _claimed("a")
    state.update("a", lambda s: s.ns_ids.__setitem__("a.n1", [4, 99]))
    (run_dir / "a" / state.NS_LOG).write_text('{"a.n1": [4, 11], "a.n2": [4, 12]}\n')
    assert state.load("a").ns_ids == {"a.n1": [4, 99], "a.n2": [4, 12]}


def test_a_log_line_cut_short_is_ignored_and_a_bad_one_is_corrupt(run_dir):
    _claimed("a")
    log = run_dir / "a" / state.NS_LOG
    log.write_text('{"a.n1": [4, 11]}\n{"a.n2": [4, ')                   # killed while appending
    assert state.load("a").ns_ids == {"a.n1": [4, 11]}
    for bad in ('{"a.n1": [4, "11"]}\n', '[1, 2]\n', 'not json\n'):
        log.write_text(bad)
        with pytest.raises(state.RecordError, match="namespaces.log is corrupt"):
            state.load("a")
    log.unlink()
    os.symlink("/etc/hostname", log)                                    # never followed
    with pytest.raises(state.RecordError, match="cannot read"):
        state.load("a")


def test_names_that_are_not_lab_names_reach_nothing_outside_the_run_directory(run_dir):
    """A lab name from the command line or a record is input: `..` would make RUN_DIR/..
    the lab's directory (its record, its namespaces.log, its lock)."""
    (run_dir / "state.json").write_text("{}")
    (run_dir / state.NS_LOG).write_text("{}\n")
    for bad in ("..", ".", "a/../..", "", "x/y"):
        assert state.update(bad, lambda s: s.files.append("f")) is None
        assert state.load(bad) is None
        with pytest.raises(state.RecordError):
            state.record_namespaces(bad, {"x.n": [1, 2]})
        with state.locked(bad) as exists:
            assert exists is False
        with pytest.raises(state.RecordError, match="is not a lab name"):
            state.claim(bad, "x.yaml")
    assert (run_dir / "state.json").read_text() == "{}" and (run_dir / state.NS_LOG).read_text() == "{}\n"
    assert sorted(os.listdir(run_dir)) == ["namespaces.log", "state.json"]            # no lock file either


# --- what a record's namespace identities are worth (issue 18 hole 2, issue 24 item 4) -------
# Files in a temporary /run/netns stand for namespaces: their (st_dev, st_ino) are the
# identities, and _netns_facts says their file system is nsfs.  No root needed.

import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from nslab.apply import netns  # noqa: E402
from nslab import spawn  # noqa: E402


@pytest.fixture
def netns_dir(tmp_path, monkeypatch, run_dir):
    d = tmp_path / "netns"
    d.mkdir()
    monkeypatch.setattr(netns, "NETNS_RUN_DIR", str(d))
    monkeypatch.setattr(state, "HOSTS_DIR", str(tmp_path / "etc-netns"))        # destroy looks there
    monkeypatch.setattr(state, "HOSTS_DIR_MARK", str(tmp_path / "etc-netns" / ".made-by-nslab"))
    host = tmp_path / "host-netns"                                           # stands for the host's
    host.touch()
    monkeypatch.setattr(state, "_netns_facts", lambda: (os.stat(d).st_dev, [_ident(host)]))
    return d, host


def _ident(path) -> list[int]:
    s = os.stat(path)
    return [s.st_dev, s.st_ino]


def _record(lab: str, **fields) -> state.LabState:
    _claimed(lab)
    return state.update(lab, lambda s: [setattr(s, k, v) for k, v in fields.items()])


def _sleeper(*args: str) -> subprocess.Popen:
    return _started([sys.executable, "-c", "import time; time.sleep(300)", *args])


def _started(argv: list[str]) -> subprocess.Popen:
    """A child once it runs argv (until exec, /proc shows the parent's command line)."""
    p = subprocess.Popen(argv)
    while open(f"/proc/{p.pid}/cmdline", "rb").read().split(b"\0")[:-1] != [os.fsencode(a) for a in argv]:
        time.sleep(0.005)
    return p


def test_only_a_namespace_mounted_with_its_recorded_identity_is_the_labs(netns_dir, tmp_path, monkeypatch):
    d, host = netns_dir
    for name in ("a.good", "a.swapped", "other.x"):
        (d / name).touch()
    os.link(host, d / "a.host")                         # the host's namespace under a lab name
    st = _record("a", ns_ids={"a.good": _ident(d / "a.good"), "a.swapped": [1, 2], "a.gone": [3, 4],
                              "other.x": _ident(d / "other.x"), "a.host": _ident(host)})
    assert state.verified_ids(st) == {"a.good": _ident(d / "a.good")}
    assert state.verified_ids(st, ["a.swapped", "a.good", ["not", "a", "name"], None]) == \
        {"a.good": _ident(d / "a.good")}
    assert state.namespace_problem(st, "a.good") is None
    assert state.namespace_problem(st, "a.gone", "n") == "lab a: namespace 'a.gone' of node n is gone; " \
                                                         "`nslab down a` and bring it up again"
    for ns in ("a.swapped", "a.host"):
        assert state.namespace_problem(st, ns) == (f"lab a: namespace {ns!r} is not the one lab a created (its "
                                                   f"identity is not the recorded one): nslab will not touch it; "
                                                   f"`nslab down a` and bring it up again")
    assert "is not a namespace name of lab a" in state.namespace_problem(st, "other.x")
    # a file with the recorded identity that is not on nsfs (a regular file, not a mount) counts for nothing
    monkeypatch.setattr(state, "_netns_facts", lambda: (os.stat(d).st_dev + 1, []))
    assert state.verified_ids(st) == {}


def test_down_never_stops_a_process_by_a_recorded_host_namespace(netns_dir):
    """Issue 18 hole 2 without root: the record names the namespace the process lives in
    (this process's own, the real one) under a lab-shaped name, and the process: `down`
    must leave it running.  /run/netns/a.host is absent here, so nothing verifies it."""
    victim = _sleeper()
    try:
        me = state.process_namespace(os.getpid())
        _record("a", ns_ids={"a.host": me},
                processes=[state.Process(victim.pid, state.process_start_time(victim.pid), "tcpdump")])
        out = state.destroy("a")
        assert victim.poll() is None, "down killed a process outside the lab"
        assert out.removed == [] and not os.path.exists(state.lab_dir("a"))
    finally:
        victim.kill()
        victim.wait()


def test_down_stops_a_process_in_a_verified_namespace_and_removes_that_namespace(netns_dir, monkeypatch):
    d, host = netns_dir
    (d / "a.n1").touch()
    os.link(host, d / "a.host")                        # the host's namespace, named and recorded as the lab's
    inside, outside, named = _sleeper(), _sleeper(), _sleeper()
    where = {inside.pid: _ident(d / "a.n1"), outside.pid: _ident(host)}     # the processes' namespaces
    monkeypatch.setattr(state, "process_namespace", lambda pid: where.get(pid, [0, 0]))
    monkeypatch.setattr(netns, "umount", lambda target: None)               # regular files: nothing mounted
    try:
        procs = [state.Process(p.pid, state.process_start_time(p.pid), "x") for p in (inside, outside, named)]
        st = _record("a", ns_ids={"a.n1": _ident(d / "a.n1"), "a.host": _ident(host)}, processes=procs)
        assert [state.labs_process(st, p) for p in procs] == [True, False, False]
        out = state.destroy("a")
        assert inside.wait(timeout=10) is not None
        assert outside.poll() is None and named.poll() is None
        assert out.removed == ["a.n1"] and sorted(os.listdir(d)) == ["a.host"]
        assert out.kept == ["namespace a.host is not the one lab a created (another has its name now): left alone"]
    finally:
        for p in (inside, outside, named):
            p.kill()
            p.wait()


def test_a_process_with_the_run_directory_in_its_arguments_is_the_labs_only_if_it_is_nslabs(run_dir, tmp_path):
    st = _record("a")
    # spawn.python's own command line, with a stand-in nslab.runtime.agent under its ROOT that sleeps
    fake_root = tmp_path / "root"
    (fake_root / "nslab" / "runtime").mkdir(parents=True)
    for init in ("nslab/__init__.py", "nslab/runtime/__init__.py"):
        (fake_root / init).write_text("")
    (fake_root / "nslab" / "runtime" / "agent.py").write_text("import time\ntime.sleep(300)\n")
    argv = [a.replace(repr(spawn.ROOT), repr(str(fake_root))) for a in spawn.python("nslab.runtime.agent", st.dir,
                                                                                    "agent")]
    plain = _sleeper(st.dir)                                     # e.g. `du -sh /run/nslab/a`
    runtime = _started(argv)
    mimic = _started([sys.executable, "-c", "import time; time.sleep(300)", "-m", "nslab.runtime.agent", st.dir])
    try:
        procs = [state.Process(p.pid, state.process_start_time(p.pid), "agent") for p in (plain, runtime, mimic)]
        # `-m` after `-c CODE` is an argument of CODE, not Python's option: not nslab's
        assert [state.labs_process(st, p, owned={}) for p in procs] == [False, True, False]
    finally:
        for p in (plain, runtime, mimic):
            p.kill()
            p.wait()


# --- the run directory itself (issue 18 hole 3) ----------------------------------------------


def test_a_run_directory_others_can_write_to_is_refused_before_anything_is_read(run_dir):
    _claimed("a")
    for d, mode in ((run_dir, 0o775), (run_dir, 0o757), (run_dir / "a", 0o777)):
        os.chmod(d, mode)
        try:
            calls = [lambda: state.load("a"), lambda: state.update("a", lambda s: None), lambda: state.destroy("a"),
                     lambda: state.read_built("a", state.PLAN)]
            for call in calls + ([state.labs, lambda: state.claim("b", "x.yaml")] if d == run_dir else []):
                with pytest.raises(state.RecordError) as e:
                    call()
                assert str(e.value) == (f"nslab's run directory {d} is writable by group or others (mode "
                                        f"{mode:04o}), so its records cannot be trusted: make it root's and not "
                                        f"writable by others (chown root {d}; chmod 755 {d}) or set "
                                        "NSLAB_RUN_DIR to a root-owned directory of mode 0755")
        finally:
            os.chmod(d, 0o700 if d == run_dir else 0o755)
    assert state.labs() == ["a"] and os.path.exists(run_dir / "a" / "state.json")


def test_a_run_directory_of_another_user_is_refused(run_dir, monkeypatch):
    _claimed("a")
    owner = os.stat(run_dir).st_uid
    monkeypatch.setattr(state.os, "geteuid", lambda: owner + 1)
    if owner == 0:                                   # root's is always trusted
        assert state.labs() == ["a"]
        return
    with pytest.raises(state.RecordError, match=f"run directory {run_dir} belongs to uid {owner}, not root"):
        state.labs()


def test_names_with_a_trailing_newline_are_not_names(run_dir):
    assert not state.valid_lab("a\n") and not state.lab_namespace("a", "a.n1\n")
    with pytest.raises(state.RecordError, match="is not a lab name"):
        state.claim("a\n", "x.yaml")
