"""flannel v0.19.1's masquerade and forward rules (nslab/compile/masq.py), computed without root."""
from __future__ import annotations

import pytest

from nslab.compile import masq
from test_kubeproxy import golden


def test_golden_worker3():
    golden("worker3.flannel.rules", masq.rules("10.244.0.0/16", "10.244.3.0/24"))


def test_rule_order_is_flannels():
    nat = masq.masq_rules("10.244.0.0/16", "10.244.3.0/24")
    # pod<->pod RETURN must come before pod->outside MASQUERADE, and the node-local RETURN
    # before the outside->pod MASQUERADE: otherwise pod traffic would be NATed.
    assert [r.split(" -j ")[1] for r in nat] == ["RETURN", "MASQUERADE --random-fully",
                                                  "RETURN", "MASQUERADE --random-fully"]
    assert nat[0].startswith("-A POSTROUTING -s 10.244.0.0/16 -d 10.244.0.0/16 ")
    assert "! -d 224.0.0.0/4" in nat[1]
    assert nat[2].startswith("-A POSTROUTING ! -s 10.244.0.0/16 -d 10.244.3.0/24 ")
    assert all('-m comment --comment "flanneld masq"' in r for r in nat)


def test_switches():
    assert "*nat" not in masq.rules("10.244.0.0/16", "10.244.3.0/24", ip_masq=False)
    assert "*filter" in masq.rules("10.244.0.0/16", "10.244.3.0/24", ip_masq=False)
    assert masq.rules("10.244.0.0/16", "10.244.3.0/24", ip_masq=False, forward=False) == ""
    assert "--random-fully" not in masq.rules("10.244.0.0/16", "10.244.3.0/24", random_fully=False)


@pytest.mark.parametrize("network,subnet", [("10.244.0.0/16", "10.245.3.0/24"), ("10.244.0.1/16", "10.244.3.0/24")])
def test_bad_networks(network, subnet):
    with pytest.raises(ValueError):
        masq.masq_rules(network, subnet)
