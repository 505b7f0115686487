"""/etc/netns: nslab removes it again only if nslab made it, once no lab uses it."""
from __future__ import annotations

import os
import shutil

import pytest

from nslab import state
from nslab.api import Lab

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (real namespaces)")
TOPO = os.path.join(os.path.dirname(__file__), "..", "..", "topologies", "diy-veth.yaml")


def test_made_by_nslab_goes_with_the_last_lab():
    if os.path.isdir(state.HOSTS_DIR):
        pytest.skip("/etc/netns exists already (a user's, or other labs are running)")
    a = Lab.up(TOPO, name=f"t{os.getpid()}ha")
    b = Lab.up(TOPO, name=f"t{os.getpid()}hb")
    try:
        assert os.path.isdir(state.HOSTS_DIR)
        a.down()
        assert os.path.isdir(state.HOSTS_DIR)                 # b still resolves names through it
        assert b.exec("ns1", "getent", "hosts", "ns2").stdout.split()[0] == "10.1.1.3"
    finally:
        b.down()
    assert not os.path.exists(state.HOSTS_DIR) and not os.path.exists(state.HOSTS_DIR_MARK)


def test_a_users_own_etc_netns_stays():
    if os.path.isdir(state.HOSTS_DIR):
        pytest.skip("/etc/netns exists already")
    os.makedirs(os.path.join(state.HOSTS_DIR, "mine"))
    try:
        lab = Lab.up(TOPO, name=f"t{os.getpid()}hc")
        lab.down()
        assert os.path.isdir(os.path.join(state.HOSTS_DIR, "mine"))
        os.rmdir(os.path.join(state.HOSTS_DIR, "mine"))
        lab = Lab.up(TOPO, name=f"t{os.getpid()}hd")   # an empty dir nslab did not make
        lab.down()
        assert os.path.isdir(state.HOSTS_DIR)
    finally:
        shutil.rmtree(state.HOSTS_DIR, ignore_errors=True)
