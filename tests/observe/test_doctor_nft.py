"""doctor's replay of a plan's `nft -f` text (observe/doctor.nft_plan): what the kernel
holds after it, chain by chain and set by set, as `nft -j list ruleset` is counted."""
from __future__ import annotations

from nslab import lab
from nslab import plan as P
from nslab.observe.doctor import nft_plan

from conftest import TOPOLOGIES


def test_flush_and_delete_replay_as_nft_does():
    text = "\n".join([
        'add table ip t { comment "x" ; }',
        "add chain ip t a",
        "delete chain ip t a",                  # kube-proxy's create-then-delete of a chain
        "add chain ip t b { type nat hook postrouting priority 100 ; }",
        "flush chain ip t b",
        "add rule ip t b ip saddr 10.0.0.0/8 return",
        "add rule ip t b masquerade",
        "add map ip t m { type ipv4_addr : verdict ; }",
        "flush map ip t m",
        "add element ip t m { 10.0.0.1 : goto b , 10.0.0.2 : goto b }",
        "add element ip t m { 10.0.0.3 : goto b }",
        "add element ip t m { 10.0.0.3 : goto b }",     # again (a cluster IP once per port): one key
    ])
    [(key, t)] = nft_plan([text]).items()
    assert key == ("ip", "t")
    assert {c: len(r) for c, r in t["chains"].items()} == {"b": 2}
    assert t["sets"] == {"m": {"10.0.0.1", "10.0.0.2", "10.0.0.3"}}
    assert nft_plan([text, "flush chain ip t b"])[("ip", "t")]["chains"]["b"] == []
    assert nft_plan([text, "delete table ip t"]) == {}


def test_kube_proxy_and_flannel_tables_of_a_real_plan():
    topo = lab.load(str(TOPOLOGIES / "spine-leaf-services.yaml"), overrides={"proxy_mode": "nftables"})
    plan = lab.plan_for_this_kernel(topo)
    texts = [op.text for op in plan.ops if isinstance(op, P.Nftables) and op.ns == topo.nodes["worker1"].ns]
    tables = nft_plan(texts)
    kp = tables[("ip", "kube-proxy")]
    assert len(kp["chains"]["services"]) == 2 and len(kp["sets"]["service-ips"]) == 2   # testappds and kube-dns
    assert "filter-prerouting" in kp["chains"]          # deleted, then added again: present
