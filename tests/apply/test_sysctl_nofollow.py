"""The sysctl walk follows no symlink, also one that points at another procfs file.

nslab/apply/netns.py _open_sysctl opens a key one level at a time with O_NOFOLLOW and then
checks that the file is on procfs.  A planted link to a file that is not procfs is refused
by either guard; a link to *another procfs file* (/proc/sys/kernel/..., or the host's
/proc/sys/net) passes the procfs check, so only O_NOFOLLOW refuses it.  These tests plant
exactly that.

The unit tests start the walk at a temporary tree (sysctl_walks' starting point,
netns._walk_root, pointed at tmp_path) and only read, so they need no root and touch
nothing.  The root test plants the links where a real walk from / goes: a tmpfs over
/proc/sys in a private mount namespace, the links pointing into a procfs mounted beside it.
"""
from __future__ import annotations

import errno
import os
import shlex
import subprocess
import sys

import pytest

from nslab.apply import netns

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OSTYPE = "/proc/sys/kernel/ostype"                  # "Linux": procfs, readable by anyone


def _read_from_tree(monkeypatch, root: str, key: str) -> str:
    """read_sysctl(key) with the walk starting at `root` instead of a procfs instance."""
    monkeypatch.setattr(netns, "_walk_root", lambda: (os.open(root, os.O_RDONLY | os.O_DIRECTORY), ()))
    with netns.sysctl_walks():
        return netns.read_sysctl(key)


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "proc" / "sys" / "net" / "ipv4" / "conf").mkdir(parents=True)
    return tmp_path


def test_a_link_to_a_procfs_file_as_the_last_level_is_not_followed(tree, monkeypatch):
    assert open(OSTYPE).read().strip() == "Linux"            # the target passes the procfs check
    os.symlink(OSTYPE, tree / "proc/sys/net/ipv4/ip_forward")
    with pytest.raises(OSError) as e:
        _read_from_tree(monkeypatch, str(tree), "net.ipv4.ip_forward")
    assert e.value.errno == errno.ELOOP


def test_a_link_to_a_procfs_directory_as_a_middle_level_is_not_followed(tree, monkeypatch):
    os.symlink("/proc/sys/kernel", tree / "proc/sys/net/ipv6")
    os.symlink("/proc/sys/net/ipv4/conf/all", tree / "proc/sys/net/ipv4/conf/x")
    for key in ("net.ipv6.ostype", "net.ipv4.conf.x.rp_filter"):
        with pytest.raises(OSError) as e:
            _read_from_tree(monkeypatch, str(tree), key)
        assert e.value.errno in (errno.ELOOP, errno.ENOTDIR), key


def test_the_same_tree_without_links_reaches_the_file_and_the_procfs_check(tree, monkeypatch):
    """The walk did start at the tree (not the real /proc): a plain file there is reached
    and refused by the procfs check, and a real procfs root reads the value."""
    (tree / "proc/sys/net/ipv4/ip_forward").write_text("1")
    with pytest.raises(OSError) as e:
        _read_from_tree(monkeypatch, str(tree), "net.ipv4.ip_forward")
    assert e.value.errno == errno.EXDEV and "is not on procfs" in str(e.value)
    assert _read_from_tree(monkeypatch, "/", "net.ipv4.ip_forward") == open("/proc/sys/net/ipv4/ip_forward").read().strip()


PLANTED = r"""
import os, sys, threading
from nslab.apply import netns
from nslab.errors import NslabError
procfs = sys.argv[1]                        # a procfs mounted beside the tmpfs now on /proc/sys
os.makedirs("/proc/sys/net/ipv4/conf", exist_ok=True)
os.symlink(procfs + "/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv4/ip_forward")   # the last level
os.symlink(procfs + "/sys/net/ipv4/conf/all", "/proc/sys/net/ipv4/conf/x")         # a directory level
os.symlink(procfs + "/sys/kernel", "/proc/sys/net/ipv6")                            # out of net entirely
def values():
    return [open(procfs + "/sys/net/ipv4/" + f).read().strip() for f in ("ip_forward", "conf/all/rp_filter")]
def walks():                      # from a namespace of its own, as nslab up writes (not the host's)
    netns.unshare(netns.CLONE_NEWNET)
    before = values()
    for key, now in zip(("net.ipv4.ip_forward", "net.ipv4.conf.x.rp_filter"), before):
        try:
            netns.write_sysctl(key, (int(now) + 1) % 2)        # a value the file does not have
            print("WROTE", key)
        except NslabError as e:
            print("refused", key, e)
    try:
        print("READ", netns.read_sysctl("net.ipv6.ostype"))
    except OSError as e:
        print("refused net.ipv6.ostype", e)
    print("unchanged" if values() == before else f"CHANGED {before} -> {values()}")
t = threading.Thread(target=walks)
t.start()
t.join()
"""


@pytest.mark.root
def test_write_from_root_follows_no_link_into_procfs(tmp_path):
    """Links planted on the real walk from / (a tmpfs over /proc/sys), each pointing at a
    procfs file: the writes are refused and the files behind the links keep their values.
    Everything happens in a private mount namespace and a fresh network namespace (the
    files a followed link would reach are that namespace's)."""
    procfs = tmp_path / "procfs"
    procfs.mkdir()
    script = (f"mount -t proc nslab-test {shlex.quote(str(procfs))} && mount -t tmpfs nslab-test /proc/sys && "
              f"exec {shlex.quote(sys.executable)} -c {shlex.quote(PLANTED)} {shlex.quote(str(procfs))}")
    proc = subprocess.run(["unshare", "--mount", "--net", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 4, proc.stdout
    assert all(line.startswith("refused ") for line in lines[:3]), proc.stdout
    assert "cannot set sysctl" in lines[0] and "cannot set sysctl" in lines[1], proc.stdout
    assert lines[3] == "unchanged", proc.stdout
