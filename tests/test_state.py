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
