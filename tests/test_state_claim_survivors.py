"""state.claim where mutation testing found nothing watching (tests/README.md): the run
directory and the lab's directory are 0755 whatever the umask, LabExists names the lab, a
directory that cannot be made is one sentence naming lab and path, a record that cannot be
written leaves no directory and no lock behind, and the lock is held from claim to
release.  (Written against state.py as of this commit; tests/test_state.py has the rest.)"""
from __future__ import annotations

import fcntl
import os
import stat

import pytest

from nslab import state


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    run = tmp_path / "run"                       # claim makes it
    monkeypatch.setattr(state, "RUN_DIR", str(run))
    return run


def lock_is_free(lab: str) -> bool:
    fd = os.open(os.path.join(state.lab_dir(lab), state.LOCK), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)      # another open file: another owner
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def test_directories_are_0755_whatever_the_umask(run_dir):
    old = os.umask(0)
    try:
        state.claim("a", "x.yaml")
    finally:
        os.umask(old)
        state.release("a")
    assert stat.S_IMODE(os.stat(run_dir).st_mode) == 0o755
    assert stat.S_IMODE(os.stat(run_dir / "a").st_mode) == 0o755


def test_the_lock_is_held_from_claim_to_release(run_dir):
    state.claim("a", "x.yaml")
    try:
        assert not lock_is_free("a")
    finally:
        state.release("a")
    assert lock_is_free("a")


def test_lab_exists_names_the_lab(run_dir):
    state.claim("a", "x.yaml")
    state.release("a")
    with pytest.raises(state.LabExists) as e:
        state.claim("a", "x.yaml")
    assert e.value.args == ("a",)


def test_a_directory_that_cannot_be_made_is_one_sentence(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setattr(state, "RUN_DIR", str(tmp_path / "file" / "run"))
    with pytest.raises(state.RecordError) as e:
        state.claim("a", "x.yaml")
    assert str(e.value) == f"cannot write the record of lab a ({tmp_path}/file/run/a): Not a directory"


def test_a_record_that_cannot_be_written_leaves_nothing(run_dir, monkeypatch):
    def full(st):
        raise state.RecordError("disk full")
    monkeypatch.setattr(state, "_write", full)
    with pytest.raises(state.RecordError, match="^disk full$"):
        state.claim("a", "x.yaml")
    assert not (run_dir / "a").exists() and "a" not in state._claims
    monkeypatch.undo()
    monkeypatch.setattr(state, "RUN_DIR", str(run_dir))
    state.claim("a", "x.yaml")                  # nothing held: the name is free again
    state.release("a")


def test_a_namespace_of_the_lab_is_lab_dot_a_node_name():
    assert state.lab_namespace("a", "a.b1")
    assert not state.lab_namespace("a", "a.-x") and not state.lab_namespace("a", "a._x")
    assert not state.lab_namespace("a", "ab.x") and not state.lab_namespace("a", "a.")
