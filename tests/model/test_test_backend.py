"""`backend:` on a test: which flannel backends it was written for (model/tests.py)."""
from __future__ import annotations

import pytest

from nslab import model
from nslab.errors import TopologyError

from conftest import TOPOLOGIES

CLUSTER = """\
name: tb
segments:
  lan: {subnet: 192.168.0.0/24}
cluster:
  backend: {type: vxlan}
  nodes:
    a: {segment: lan, ip: 192.168.0.11}
    b: {segment: lan, ip: 192.168.0.12}
  pods:
    pa: {node: a}
    pb: {node: b}
tests:
"""


def load(tests: str, text: str = CLUSTER):
    return model.load("tb.yaml", text=text + tests)


def test_backend_key_and_encap_say_what_a_test_assumes():
    topo = load("  - {ping: [pa, pb], backend: vxlan}\n"
                "  - {ping: [pa, pb], backend: [udp, ipip], name: two}\n"
                "  - {ping: [pa, pb], expect: {encap: vxlan}, name: by encap}\n"
                "  - {ping: [pa, pb], expect: {encap: none}, name: none is no backend}\n"
                "  - {ping: [pa, pb], name: any}\n")
    assert [c.assumes for c in topo.tests] == [("vxlan",), ("udp", "ipip"), ("vxlan",), (), ()]


@pytest.mark.parametrize("tests, message", [
    ("  - {ping: [pa, pb], backend: geneve}\n",
     "tb.yaml:13 tests[0].backend: backend must be a flannel backend (vxlan, host-gw, ipip, udp) or a list of them, "
     "got 'geneve'"),
    ("  - {ping: [pa, pb], backend: [udp, 7]}\n", "tb.yaml:13 tests[0].backend[1]: backend must be a flannel"),
])
def test_bad_backend_values(tests, message):
    with pytest.raises(TopologyError) as info:
        load(tests)
    assert str(info.value).startswith(message)


def test_backend_needs_a_cluster():
    text = "name: nc\nhosts: [h1, h2]\nlinks: [[h1, h2]]\ntests:\n  - {ping: [h1, h2], backend: vxlan}\n"
    with pytest.raises(TopologyError, match=r"tests\[0\].backend: backend: names the flannel backend a test assumes; "
                                            r"this topology has no cluster: section"):
        model.load("nc.yaml", text=text)


def test_spine_leaf_says_which_tests_are_vxlan_only():
    topo = model.load(str(TOPOLOGIES / "spine-leaf.yaml"), overrides={"backend": "udp"})
    anywhere = [c.name for c in topo.tests if not c.assumes]
    assert anywhere == ["same node bridged on cni0", "nothing listens on 81"]
