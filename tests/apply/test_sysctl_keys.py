"""Sysctl keys from a topology never reach outside /proc/sys/net of a lab namespace.

Rules (nslab/plan.py sysctl_key_problem, enforced again in nslab/apply/netns.py): sysctl(8) notation, '/' standing for a dot
inside a level (net.ipv4.conf.flannel/1.rp_filter); every level a word of
[A-Za-z0-9_/-] starting with a letter, digit or '_' (so after '/' -> '.' no level is
empty, '.', '..' or an option); only per-namespace subtrees (net.ipv4, net.ipv6,
net.netfilter, net.bridge, net.mptcp, net.unix, net.mpls, net.sctp and a few net.core
keys).  validate refuses the rest with file:line path (tests/errors/sysctl-*); up checks
again when it writes: never in the host's namespace, opened one level at a time without
following symlinks, and only a procfs file.
"""
from __future__ import annotations

import os
import posixpath
import shlex
import subprocess
import sys
import threading

import pytest
from hypothesis import given, settings, strategies as st

from nslab.apply import netns
from nslab.plan import SYSCTL_ROOT
from nslab.errors import NslabError

GOOD = [
    "net.ipv4.ip_forward",
    "net.ipv4.conf.all.rp_filter",
    "net.ipv4.conf.eth0.rp_filter",
    "net.ipv4.conf.flannel/1.rp_filter",
    "net.ipv4.conf.flannel/4000.forwarding",
    "net.ipv4.conf.br-veth0.proxy_arp",
    "net.ipv4.neigh.default.gc_thresh3",
    "net.ipv4.fib_multipath_hash_policy",
    "net.ipv6.conf.default.disable_ipv6",
    "net.netfilter.nf_conntrack_tcp_timeout_established",
    "net.bridge.bridge-nf-call-iptables",
    "net.unix.max_dgram_qlen",
    "net.core.somaxconn",
    "net.core.xfrm_larval_drop",
]

BAD = [
    ("net.//.kernel.core_pattern", "has a level that is empty"),         # /proc/sys/net/../kernel
    ("net.//.//.//.etc.shadow", "has a level that is empty"),            # /proc/sys/net/../../../etc
    ("net.ipv4./", "has a level that is empty"),
    ("net.ipv4..ip_forward", "has a level that is empty"),
    ("net.ipv4.conf.-x.rp_filter", "has a level that is empty"),
    ("net.x;touch${IFS}/tmp/p;#", "is not a sysctl key"),
    ("net.ipv4.ip_forward x", "is not a sysctl key"),
    ("net.ipv4.conf.eth0\n.rp_filter", "is not a sysctl key"),
    ("net.ipv4.conf.$(id).rp_filter", "is not a sysctl key"),
    ("net.ipv4.conf.é.rp_filter", "is not a sysctl key"),
    ("kernel.core_pattern", "only per-namespace net.* sysctls"),
    ("net.core.rmem_max", "is not a per-namespace sysctl"),             # host-wide: read-only in a netns
    ("net.core.somaxconn.x", "is not a per-namespace sysctl"),
    ("net.nf_conntrack_max", "is not a per-namespace sysctl"),
    ("net.ipv4", "is not a per-namespace sysctl"),
    ("net." + "a" * 260, "is not a sysctl key"),
    (7, "only per-namespace net.* sysctls"),
]


@pytest.mark.parametrize("key", GOOD)
def test_keys_nslab_needs_are_accepted(key):
    assert netns.sysctl_key_problem(key) is None
    assert netns.sysctl_path(key).startswith("/proc/sys/net/")


def test_slash_stands_for_a_dot_inside_a_level():
    assert netns.sysctl_path("net.ipv4.conf.flannel/1.rp_filter") == "/proc/sys/net/ipv4/conf/flannel.1/rp_filter"


@pytest.mark.parametrize("key,why", BAD, ids=[repr(k)[:40] for k, _ in BAD])
def test_hostile_keys_are_refused(key, why):
    assert why in netns.sysctl_key_problem(key)
    with pytest.raises(ValueError):
        netns.sysctl_path(key)


def _assert_one_file_under_proc_sys_net(key: str) -> None:
    path = netns.sysctl_path(key)
    assert path.startswith(SYSCTL_ROOT + "/")
    assert posixpath.normpath(path) == path
    assert all(part not in ("", ".", "..") for part in path.split("/")[1:])
    assert shlex.split(key) == [key] and shlex.quote(key) == key      # one shell word, printed as is


# Keys built from the pieces that matter (levels that are, or translate to, '', '.', '..',
# options, metacharacters) and raw text over a wide alphabet: whatever is accepted is one
# file under /proc/sys/net and one shell word.
LEVELS = ["ipv4", "ipv6", "core", "conf", "all", "flannel/1", "eth0", "somaxconn", "rp_filter", "", "/", "//",
          "///", ".", "..", "-x", "x/", "/x", "_", "a-b", "kernel", "etc", ";", "$(id)", " ", "\n", "*", "~"]


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.sampled_from(LEVELS), min_size=1, max_size=6))
def test_accepted_structured_keys_stay_under_proc_sys_net(levels):
    key = "net." + ".".join(levels)
    if netns.sysctl_key_problem(key) is None:
        _assert_one_file_under_proc_sys_net(key)


@settings(max_examples=1500, deadline=None)
@given(st.text(alphabet="net.ipv4conf/_-;$` \n\t'\"\\*?~&|<>()", max_size=40))
def test_accepted_random_keys_stay_under_proc_sys_net(text):
    for key in (text, "net.ipv4." + text):
        if netns.sysctl_key_problem(key) is None:
            _assert_one_file_under_proc_sys_net(key)


# --- where it is written (root: real namespaces) ----------------------------------------------

def _in_fresh_namespace(fn):
    """Run fn() in a thread that unshares a network namespace of its own (gone when the
    thread ends); return its result or raise what it raised."""
    out = {}

    def run():
        try:
            netns.unshare(netns.CLONE_NEWNET)
            out["value"] = fn()
        except BaseException as e:       # re-raised in the test's thread
            out["error"] = e
    t = threading.Thread(target=run)
    t.start()
    t.join(60)
    if "error" in out:
        raise out["error"]
    return out["value"]


@pytest.mark.root
def test_write_goes_to_the_lab_namespace_never_the_host(root_unchanged):
    host = netns.read_sysctl("net.ipv4.conf.all.rp_filter")
    other = "2" if host != "2" else "1"

    def inside():
        netns.write_sysctl("net.ipv4.conf.all.rp_filter", other)
        return netns.read_sysctl("net.ipv4.conf.all.rp_filter")
    assert _in_fresh_namespace(inside) == other
    assert netns.read_sysctl("net.ipv4.conf.all.rp_filter") == host
    # In the host's namespace it is refused; the host's own value is the one offered, so even
    # a broken guard could not change the host.
    with pytest.raises(NslabError, match="host's network namespace"):
        netns.write_sysctl("net.ipv4.conf.all.rp_filter", host)


@pytest.mark.root
def test_write_refuses_a_hostile_key_even_without_validate():
    with pytest.raises(NslabError, match="has a level that is empty"):
        _in_fresh_namespace(lambda: netns.write_sysctl("net.//.kernel.core_pattern", "core"))


@pytest.mark.root
def test_write_of_a_read_only_or_missing_key_is_one_sentence():
    with pytest.raises(NslabError, match="read-only inside a network namespace"):
        _in_fresh_namespace(lambda: netns.write_sysctl("net.ipv4.conf.all.mc_forwarding", "1"))
    with pytest.raises(NslabError, match="does not exist in a lab namespace"):
        _in_fresh_namespace(lambda: netns.write_sysctl("net.ipv4.conf.nosuch0.rp_filter", "1"))


PLANTED = r"""
import os, sys, threading
from nslab.apply import netns
from nslab.errors import NslabError
target = sys.argv[1]
os.makedirs("/proc/sys/net/ipv4/conf/lo", exist_ok=True)
os.symlink(target, "/proc/sys/net/ipv4/ip_forward")            # a symlink as the last level
os.symlink(os.path.dirname(target), "/proc/sys/net/ipv4/conf/x")   # ... and as a directory level
with open("/proc/sys/net/ipv4/conf/lo/rp_filter", "w") as f:     # a plain file, not procfs
    f.write("0")
def writes():                     # from a namespace of its own, as nslab up writes (not the host's)
    netns.unshare(netns.CLONE_NEWNET)
    for key in ("net.ipv4.ip_forward", "net.ipv4.conf.x." + os.path.basename(target), "net.ipv4.conf.lo.rp_filter"):
        try:
            netns.write_sysctl(key, "pwned")
            print("WROTE", key)
        except NslabError as e:
            print("refused", key, e)
t = threading.Thread(target=writes)
t.start()
t.join()
"""


@pytest.mark.root
def test_write_follows_no_symlink_and_writes_only_procfs(tmp_path):
    """A /proc/sys that is not procfs (a tmpfs mounted over it in a private mount namespace,
    with symlinks planted in it) gets no write: neither the symlinks' target nor the file."""
    target = tmp_path / "target"
    target.write_text("untouched")
    script = ("mount -t tmpfs nslab-test /proc/sys && "
              f"exec {shlex.quote(sys.executable)} -c {shlex.quote(PLANTED)} {shlex.quote(str(target))}")
    proc = subprocess.run(["unshare", "--mount", "--net", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, timeout=60, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 3 and all(line.startswith("refused ") and "cannot set sysctl" in line
                                   for line in lines), proc.stdout
    assert target.read_text() == "untouched"


@pytest.mark.root
def test_up_sets_per_interface_keys_with_a_dot_in_the_name(root_unchanged, lab_factory):
    """`/` for a dot inside an interface name still works end to end (flannel.1 style)."""
    lab = lab_factory("""
hosts:
  h1:
    sysctls:
      net.ipv4.conf.up/1.rp_filter: 2
      net.core.somaxconn: 1234
  h2: {}
links:
  - [{node: h1, iface: up.1}, h2]
""")
    got = subprocess.run(["ip", "netns", "exec", lab.ns("h1"), "sysctl", "-n", "net.ipv4.conf.up/1.rp_filter",
                          "net.core.somaxconn"], capture_output=True, text=True, timeout=30)
    assert got.stdout.split() == ["2", "1234"], got.stderr
