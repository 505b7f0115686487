"""Daily use of a running lab (issue 19): what a node resolves, how nodes are named on the
command line, what a path that does not exist means."""
from __future__ import annotations

import time

from conftest import nslab


def test_a_node_has_its_own_resolv_conf_and_an_unknown_name_fails_at_once(root_unchanged, lab_factory):
    lab = lab_factory("diy-ip-forward.yaml")
    conf = lab.exec("ns1", "cat", "/etc/resolv.conf", check=True).stdout
    assert conf.startswith("# nslab: this lab has no DNS server"), conf      # not the host's
    assert "nameserver 127.0.0.1\n" in conf
    # node names still resolve (hosts), anything else is refused by the node's own loopback
    assert lab.exec("ns1", "getent", "hosts", "ns2", check=True).stdout.split() == ["10.1.2.2", "ns2"]
    started = time.monotonic()
    r = lab.exec("ns1", "getent", "hosts", "nosuch-name.example")
    took = time.monotonic() - started
    assert r.returncode == 2, r                     # getent: key not found
    # the host's resolver would be asked with 5 s timeouts; a generous bound, far below them
    assert took < 4, f"an unknown name took {took:.1f} s to fail"
