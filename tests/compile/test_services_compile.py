"""Services and ip-masq compiled into the plan: one Iptables op per cluster node (pure)."""
from __future__ import annotations

from pathlib import Path

from nslab import model
from nslab import plan as P
from nslab.compile import compile_topology
from nslab.compile.script import render

SHIPPED = Path(__file__).parent.parent.parent / "topologies" / "spine-leaf-services.yaml"
CLUSTER_NODES = ("master1", "worker1", "worker2", "worker3")


def ops(plan, cls):
    return [op for op in plan.ops if isinstance(op, cls)]


def test_one_iptables_op_per_node_with_the_notes_chains():
    plan = compile_topology(model.load(str(SHIPPED)))
    rules = {op.ns.split(".", 1)[1]: op.text for op in ops(plan, P.Iptables)}
    assert sorted(rules) == sorted(CLUSTER_NODES)
    w3 = rules["worker3"]
    # flannel's rules for worker3's lease, then kube-proxy's chains named as the note shows them
    assert "-A POSTROUTING ! -s 10.244.0.0/16 -d 10.244.3.0/24 -m comment --comment \"flanneld masq\" -j RETURN" in w3
    assert "-A KUBE-NODEPORTS -m comment --comment default/testappds -m tcp -p tcp --dport 30080 " \
           "-j KUBE-EXT-QMR6LTDCBEU4U25W" in w3
    assert "-d 10.111.222.68 --dport 8080 -j KUBE-SVC-QMR6LTDCBEU4U25W" in w3
    assert w3.count("--probability 0.3333333333") == 1 and w3.count("--probability 0.5000000000") == 1
    for ip in ("10.244.1.2", "10.244.2.2", "10.244.3.2"):
        assert f"--to-destination {ip}:80" in w3
    # kube-proxy's sysctl in every node, nowhere else
    localnet = {op.ns.split(".", 1)[1] for op in ops(plan, P.Sysctl) if op.key == "net.ipv4.conf.all.route_localnet"}
    assert localnet == set(CLUSTER_NODES)


def test_ip_masq_false_leaves_out_flannels_masquerade_only():
    text = SHIPPED.read_text().replace("ipMasq: true", "ipMasq: false")
    plan = compile_topology(model.load(str(SHIPPED), text=text))
    w1 = next(op.text for op in ops(plan, P.Iptables) if op.ns.endswith(".worker1"))
    assert "flanneld masq" not in w1 and "flanneld forward" in w1
    assert "KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" " \
           "-j MASQUERADE --random-fully" in w1


def test_cluster_without_services_gets_flannels_masquerade_by_default():
    """ipMasq not written out: flanneld's default (true), so its rules and no kube-proxy's."""
    plan = compile_topology(model.load(str(SHIPPED.parent / "spine-leaf.yaml")))
    rules = {op.ns.split(".", 1)[1]: op.text for op in ops(plan, P.Iptables)}
    assert sorted(rules) == sorted(CLUSTER_NODES)
    assert "-A POSTROUTING -s 10.244.0.0/16 ! -d 224.0.0.0/4 -m comment --comment \"flanneld masq\" " \
           "-j MASQUERADE --random-fully" in rules["worker1"]
    assert not any("KUBE-" in text for text in rules.values())
    text = SHIPPED.parent.joinpath("spine-leaf.yaml").read_text().replace("cluster:\n", "cluster:\n  ipMasq: false\n", 1)
    plan = compile_topology(model.load(str(SHIPPED.parent / "spine-leaf.yaml"), text=text))
    assert not any("flanneld masq" in op.text for op in ops(plan, P.Iptables))


def test_script_prints_one_restore_per_namespace():
    plan = compile_topology(model.load(str(SHIPPED)))
    text = render(plan)
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if "iptables-restore --noflush <<'EOF'" in line]
    assert len(starts) == 4
    first = lines[starts[0]:]
    body = first[1:first.index("EOF")]
    assert body == next(op.text for op in ops(plan, P.Iptables)).splitlines()


def test_plan_json_round_trip_keeps_rules():
    plan = compile_topology(model.load(str(SHIPPED)))
    back = P.from_json(P.to_json(plan))
    assert ops(back, P.Iptables) == ops(plan, P.Iptables)
