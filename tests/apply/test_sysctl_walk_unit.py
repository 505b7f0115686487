"""The sysctl walk without root (nslab/apply/netns.py _open_sysctl, read_sysctl, write_sysctl):
what mutation testing found untested (tests/README.md).  Only reads of this namespace's
sysctls, writes only of keys that exist nowhere (an interface named nslabmut0), and the
host's refusal offered the host's own value: nothing here can change the machine.

- outside sysctl_walks() the walk starts at / and closes every directory it opened;
- inside one walk, directories are cached by their path and shared (and still give the
  right file), and every fd is closed when the walk ends;
- read_sysctl refuses a key outside the rules as OSError(EINVAL);
- write_sysctl refuses the host's namespace, and says which key is missing or not procfs.
"""
from __future__ import annotations

import errno
import os

import pytest

from nslab.apply import netns
from nslab.errors import NslabError

KEYS = ["net.ipv4.ip_forward", "net.ipv4.conf.all.rp_filter", "net.ipv4.conf.lo.forwarding",
        "net.ipv6.conf.all.disable_ipv6", "net.core.somaxconn", "net.ipv4.tcp_syncookies"]


def direct(key: str) -> str:
    with open(netns.sysctl_path(key)) as f:
        return f.read().strip()


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture
def no_walk_root():
    """No private procfs instance held between tests (it keeps one fd open on purpose)."""
    netns.release_walk_root()
    yield
    netns.release_walk_root()


def test_outside_a_walk_reads_from_root_and_leaks_no_fd(no_walk_root):
    before = open_fds()
    for _ in range(3):
        assert [netns.read_sysctl(k) for k in KEYS] == [direct(k) for k in KEYS]
    assert open_fds() == before


def test_one_walk_shares_directories_and_still_reads_the_right_files(no_walk_root):
    before = open_fds()
    with netns.sysctl_walks():
        at = next(iter(netns._walk_cache))                     # ('proc',) or () without fsopen
        for _ in range(2):                                     # the second round from the cache
            assert [netns.read_sysctl(k) for k in KEYS] == [direct(k) for k in KEYS]
        cached = set(netns._walk_cache)
        for prefix in (("sys", "net", "ipv4"), ("sys", "net", "ipv4", "conf", "all"), ("sys", "net", "ipv6", "conf", "all"),
                       ("sys", "net", "core")):
            assert at + prefix in cached, (prefix, cached)
        assert len(cached) == len(set(netns._walk_cache.values()))   # one fd per directory, none replaced
    netns.release_walk_root()
    assert open_fds() == before


def test_read_refuses_a_key_outside_the_rules_as_einval():
    for key in ("net.//.kernel.core_pattern", "kernel.core_pattern"):
        with pytest.raises(OSError) as e:
            netns.read_sysctl(key)
        assert e.value.errno == errno.EINVAL and e.value.strerror == netns.sysctl_key_problem(key)


def test_write_refuses_the_hosts_namespace():
    key = "net.ipv4.conf.all.rp_filter"
    with pytest.raises(NslabError, match=r"^refusing to set net.ipv4.conf.all.rp_filter in the host's network namespace$"):
        netns.write_sysctl(key, direct(key))      # the host's own value: a broken guard changes nothing


@pytest.fixture
def tree_walk(tmp_path, monkeypatch):
    """write_sysctl past the host guard, its walk starting at a tmp tree (only keys of an
    interface that exists nowhere: a walk that went to the real /proc finds nothing)."""
    conf = tmp_path / "proc/sys/net/ipv4/conf/nslabmut0"
    conf.mkdir(parents=True)
    (conf / "rp_filter").write_text("0")
    monkeypatch.setattr(netns, "_host_netns_inodes", lambda: set())
    monkeypatch.setattr(netns, "_walk_root", lambda: (os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY), ()))
    with netns.sysctl_walks():
        yield conf


def test_write_errors_name_the_key(tree_walk):
    with pytest.raises(NslabError, match=r"^cannot set sysctl net.ipv4.conf.nslabmut0.rp_filter: "):
        netns.write_sysctl("net.ipv4.conf.nslabmut0.rp_filter", 1)          # a file, not procfs
    assert (tree_walk / "rp_filter").read_text() == "0"
    with pytest.raises(NslabError, match=r"^sysctl net.ipv4.conf.nslabmut0.forwarding does not exist in a lab "
                                         r"namespace on this kernel \(its module is not loaded, or the interface"):
        netns.write_sysctl("net.ipv4.conf.nslabmut0.forwarding", 1)
    with pytest.raises(NslabError, match=r"^sysctl key net.//.x has a level that is empty"):
        netns.write_sysctl("net.//.x", 1)


def test_the_host_is_this_namespace_and_inits():
    try:
        init = {os.stat("/proc/1/ns/net").st_ino}
    except PermissionError:          # a sandbox may hide init's namespace even from root
        init = set()
    assert netns._host_netns_inodes() == {netns.ROOT_NETNS_INODE} | init
    assert netns.current_inode() == netns.ROOT_NETNS_INODE
