"""Hole 5 of issue 18: `nslab cli` (root) keeps its history only in a regular file of its own
user, in a HOME of its own user (with `sudo -E` or `su` HOME is someone else's, and
~/.nslab_history there may be a symlink to any file)."""
from __future__ import annotations

import os
import stat

import pytest

from nslab import console_cli

readline = pytest.importorskip("readline")


@pytest.fixture
def history():
    """readline's history holding two lines; emptied again afterwards."""
    readline.clear_history()
    for line in ("nodes", "h1 ping -c1 h2"):
        readline.add_history(line)
    yield
    readline.clear_history()


def home(tmp_path, monkeypatch, mode: int = 0o755):
    d = tmp_path / "home"
    d.mkdir()
    d.chmod(mode)
    monkeypatch.setenv("HOME", str(d))
    return d


def test_history_is_saved_and_loaded_in_our_home(tmp_path, monkeypatch, history):
    d = home(tmp_path, monkeypatch)
    console_cli.save_history(readline)
    st = os.lstat(d / ".nslab_history")
    assert stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) == 0o600
    assert (d / ".nslab_history").read_text() == "nodes\nh1 ping -c1 h2\n"
    readline.clear_history()
    console_cli.load_history(readline)
    assert [readline.get_history_item(i) for i in (1, 2)] == ["nodes", "h1 ping -c1 h2"]
    readline.add_history("exit")                   # saved again: the file is rewritten, not appended to
    console_cli.save_history(readline)
    assert (d / ".nslab_history").read_text() == "nodes\nh1 ping -c1 h2\nexit\n"


def test_a_symlinked_history_is_neither_followed_nor_replaced(tmp_path, monkeypatch, history):
    d = home(tmp_path, monkeypatch)
    target = tmp_path / "elsewhere"
    target.write_text("someone's file\n")
    target.chmod(0o644)
    (d / ".nslab_history").symlink_to(target)
    console_cli.save_history(readline)
    assert target.read_text() == "someone's file\n" and stat.S_IMODE(target.stat().st_mode) == 0o644
    assert os.path.islink(d / ".nslab_history")
    readline.clear_history()
    console_cli.load_history(readline)             # nor read through
    assert readline.get_current_history_length() == 0


def test_a_hard_link_is_not_written_through(tmp_path, monkeypatch, history):
    d = home(tmp_path, monkeypatch)
    target = tmp_path / "elsewhere"
    target.write_text("someone's file\n")
    os.link(target, d / ".nslab_history")
    console_cli.save_history(readline)
    assert target.read_text() == "someone's file\n"


def test_a_home_others_can_write_to_gets_no_history(tmp_path, monkeypatch, history):
    d = home(tmp_path, monkeypatch, 0o777)
    console_cli.save_history(readline)
    assert not os.path.lexists(d / ".nslab_history")


@pytest.mark.skipif(os.geteuid() != 0, reason="making a HOME of another user needs root")
def test_someone_elses_home_gets_no_history(tmp_path, monkeypatch, history):
    """`sudo -E nslab cli`: HOME is the user's; nothing of root's is written there."""
    d = home(tmp_path, monkeypatch)
    os.chown(d, 65534, 65534)
    console_cli.save_history(readline)
    assert not os.path.lexists(d / ".nslab_history")
    (d / ".nslab_history").write_text("theirs\n")    # their file is not ours to rewrite either
    os.chown(d / ".nslab_history", 65534, 65534)
    console_cli.save_history(readline)
    assert (d / ".nslab_history").read_text() == "theirs\n" and os.stat(d / ".nslab_history").st_uid == 65534


@pytest.mark.skipif(os.geteuid() != 0, reason="a file of another user needs root")
def test_a_history_file_of_another_user_is_left_alone(tmp_path, monkeypatch, history):
    d = home(tmp_path, monkeypatch)
    (d / ".nslab_history").write_text("theirs\n")
    os.chown(d / ".nslab_history", 65534, 65534)
    console_cli.save_history(readline)
    assert (d / ".nslab_history").read_text() == "theirs\n"
