"""compile/diff.py: what `nslab up` changes in a running lab, for each kind of edit (pure:
plans compiled from small files, compared; the --dry-run text is held as a golden)."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import ROUTED_HOSTS
from nslab import model
from nslab import plan as P
from nslab.compile import compile_topology
from nslab.compile import diff as D
from nslab.errors import NslabError

REPO = Path(__file__).resolve().parents[2]

ROUTED = "name: x\n" + ROUTED_HOSTS


def plan(text: str) -> P.Plan:
    return compile_topology(model.load("x.yaml", text=text, name="x"))


def compute(old: P.Plan, new: P.Plan, force=()) -> D.Converge:
    """D.compute, checked against the way a converge calls it: the old plan read back from
    its record beside the new plan's lines (only the lines that differ decoded and compared
    as ops) gives the same converge."""
    want = D.compute(old, new, force)
    new_lines = P.op_lines(new)
    back, old_lines = P.from_json_lines(P.to_json(old), dict(zip(new_lines, new.ops)))
    assert back == old
    assert D.compute(back, new, force, (old_lines, new_lines)) == want
    return want


def cluster(edit=lambda s: s) -> str:
    return edit((REPO / "topologies" / "flannel-vxlan.yaml").read_text().split("\ntests:")[0] + "\n")


def test_the_same_file_changes_nothing():
    c = compute(plan(ROUTED), plan(ROUTED))
    assert c.empty and not c.apply and not c.undo
    assert D.render(c, {}) == ["no changes"]


def test_a_route_changed_in_place():
    new = ROUTED.replace("10.9.0.0/24", "10.8.0.0/24")
    c = compute(plan(ROUTED), plan(new))
    assert not c.recreate and not c.create and not c.remove
    assert [type(op).__name__ for op in c.undo] == ["Route"] and c.undo[0].dst == "10.9.0.0/24"
    assert [op.dst for op in c.apply] == ["10.8.0.0/24"]
    assert D.render(c, {}) == ["~ h1: changed in place",
                               "  - route add 10.9.0.0/24 via 10.1.0.1 dev eth0",
                               "  + route add 10.8.0.0/24 via 10.1.0.1 dev eth0"]


def test_an_address_changed_reapplies_the_routes_through_it():
    new = ROUTED.replace("10.2.0.2/24", "10.2.0.3/24")
    c = compute(plan(ROUTED), plan(new))
    assert not c.recreate
    # the default route through it goes with the old address: deleted if left, added again
    assert [(type(op).__name__, getattr(op, "address", getattr(op, "dst", None))) for op in c.undo] == \
        [("Addr", "10.2.0.2/24"), ("Route", "0.0.0.0/0")]
    assert [(type(op).__name__, getattr(op, "address", getattr(op, "dst", None))) for op in c.apply] == \
        [("Addr", "10.2.0.3/24"), ("Route", "0.0.0.0/0")]
    assert c.hosts        # h2's name now points at its new address


def test_a_node_added_is_created_with_what_touches_it():
    new = ROUTED.replace("  h2: {}\n", "  h2: {}\n  h3: {}\n") + \
        "  - [{node: r1, ip: 10.3.0.1/24}, {node: h3, ip: 10.3.0.2/24}]\n"
    c = compute(plan(ROUTED), plan(new))
    assert c.create == ["x.h3"] and not c.remove and not c.recreate and not c.undo
    assert {op.ns for op in c.apply} == {"x.h3", "x.r1"}
    assert any(isinstance(op, P.Netns) and op.ns == "x.h3" for op in c.apply)
    assert D.render(c, {})[0].startswith("+ h3: new node")


def test_a_node_removed_takes_its_link_with_it():
    new = ROUTED.replace("  h2: {}\n", "").replace("  - [{node: r1, ip: 10.2.0.1/24}, {node: h2, ip: 10.2.0.2/24}]\n",
                                                   "")
    c = compute(plan(ROUTED), plan(new))
    assert c.remove == ["x.h2"] and not c.recreate
    # the veth had one end in r1: deleted in place (or with h2); r1's address on it went with it
    assert all(not isinstance(op, P.Addr) for op in c.undo)
    assert ("x.r1", "eth1") in c.dying
    assert D.render(c, {})[0] == "- h2: removed"


def test_a_link_added_between_existing_nodes():
    new = ROUTED + "  - [{node: h1, ip: 10.5.0.1/24}, {node: h2, ip: 10.5.0.2/24}]\n"
    c = compute(plan(ROUTED), plan(new))
    assert not c.recreate and not c.create and not c.undo
    kinds = sorted(type(op).__name__ for op in c.apply)
    assert "Link" in kinds and kinds.count("Addr") == 2 and kinds.count("Up") >= 1


def test_a_link_mtu_changed_deletes_the_veth_and_reapplies_both_ends():
    new = ROUTED.replace("{node: h2, ip: 10.2.0.2/24}]", "{node: h2, ip: 10.2.0.2/24, mtu: 1400}]")
    c = compute(plan(ROUTED), plan(new))
    assert not c.recreate
    assert [type(op).__name__ for op in c.undo] == ["Link"]
    again = {(type(op).__name__, op.ns) for op in c.apply}
    assert ("Addr", "x.r1") in again and ("Addr", "x.h2") in again and ("Link", c.undo[0].ns) in again


def test_a_sysctl_changed_is_overwritten_removed_recreates():
    base = ROUTED.replace("  h2: {}\n", "  h2:\n    sysctls: {net.ipv4.conf.all.rp_filter: 0}\n")
    c = compute(plan(base), plan(base.replace("rp_filter: 0", "rp_filter: 2")))
    assert not c.recreate and not c.undo and [op.value for op in c.apply] == ["2"]
    c = compute(plan(base), plan(ROUTED))
    assert list(c.recreate) == ["x.h2"] and "default" in c.recreate["x.h2"]


def test_a_link_condition_changed_is_replaced_in_place():
    base = ROUTED.replace("{node: h2, ip: 10.2.0.2/24}]", "{node: h2, ip: 10.2.0.2/24, conditions: {delay: 20ms}}]")
    c = compute(plan(base), plan(base.replace("20ms", "50ms")))
    assert not c.recreate and not c.undo
    assert [type(op).__name__ for op in c.apply] == ["Qdisc"]
    c = compute(plan(base), plan(ROUTED))         # gone: the root qdisc is deleted
    assert [type(op).__name__ for op in c.undo] == ["Qdisc"] and not c.apply


def test_a_pod_added_keeps_every_other_namespace():
    new = cluster(lambda s: s.replace("    nginx: {node: node1", "    web2: {node: node1}\n    nginx: {node: node1"))
    c = compute(plan(cluster()), plan(new))
    assert c.create == ["x.web2"] and not c.recreate and not c.undo and not c.agent
    assert {op.ns for op in c.apply} == {"x.web2", "x.node1"}
    assert D.render(c, {"x.node1": "node1"}) == [
        "+ web2: new node (7 objects)", "~ node1: changed in place",
        "  + link veth081aff2e veth to web2:eth0 mtu 1450 master cni0",
        "  + link set dev veth081aff2e hairpin on",
        "~ hosts file (node names) rewritten"]


def test_a_pod_removed_is_removed_and_its_service_stops():
    c = compute(plan(cluster()), plan(cluster(lambda s: s.replace("    nginx: {node: node1, ip: 10.244.1.6, serve: "
                                                                     "http}\n", ""))))
    assert "x.nginx" in c.remove and c.agent


def test_a_service_added_restarts_the_agent():
    c = compute(plan(cluster()), plan(cluster(lambda s: s.replace("client: {node: master}",
                                                                    "client: {node: master, serve: http}"))))
    assert c.agent and not c.recreate and not c.create


def test_backend_vni_port_or_type_changed_recreates_the_cluster_nodes():
    for edit in (lambda s: s.replace("vni: 1", "vni: 2"), lambda s: s.replace("port: 8472", "port: 4789"),
                 lambda s: s.replace("{type: vxlan, vni: 1, port: 8472}", "{type: ipip}")):
        c = compute(plan(cluster()), plan(cluster(edit)))
        assert set(c.recreate) == {"x.master", "x.node1"}, c.recreate
        assert not c.create and not c.remove
        # the pods' veths into the recreated nodes are made again
        assert {"x.client", "x.nginx"} <= {op.ns for op in c.apply} | {op.peer.ns for op in c.apply
                                                                      if isinstance(op, P.Link) and op.peer}


def test_container_image_changed_recreates_that_node():
    text = (REPO / "topologies" / "containers.yaml").read_text().split("\ntests:")[0] + "\n"
    image = next(op.container.image for op in plan(text).ops if isinstance(op, P.Netns) and op.container)
    c = compute(plan(text), plan(text.replace(image, image + "-other", 1)))
    assert len(c.recreate) == 1 and list(c.recreate.values()) == ["its container changed"]


def test_an_interrupted_converge_recreates_what_it_touched():
    c = compute(plan(ROUTED), plan(ROUTED), force={"x.r1", "x.gone"})
    assert c.recreate == {"x.r1": "an earlier converge was interrupted"} and c.remove == ["x.gone"]
    assert not c.empty and {op.ns for op in c.apply} >= {"x.r1", "x.h1", "x.h2"}


def test_an_address_change_on_a_veth_peer_leaves_the_veth():
    """Peer.address is for display only: the far end's new address must not replace the veth."""
    text = (REPO / "topologies" / "diy-veth.yaml").read_text().split("\ntests:")[0] + "\n"
    c = compute(plan(text), plan(text.replace("10.1.1.3", "10.1.1.9")))
    assert [type(op).__name__ for op in c.undo] == ["Addr"] and [type(op).__name__ for op in c.apply] == ["Addr"]
    assert D.render(c, {}) == ["~ ns2: changed in place", "  - addr add 10.1.1.3/24 brd + dev veth1",
                               "  + addr add 10.1.1.9/24 brd + dev veth1", "~ hosts file (node names) rewritten"]


def test_a_kube_service_added_replaces_iptables_in_place():
    service = "  dns: false\n  services:\n    web: {selector: nginx, port: 8080, targetPort: 80, clusterIP: 10.96.0.10}\n" \
              "  pods:\n"       # no cluster DNS: its pod would be a namespace created
    c = compute(plan(cluster()), plan(cluster(lambda s: s.replace("  pods:\n", service))))
    assert not c.recreate and not c.create and not c.undo
    for ns in ("x.master", "x.node1"):
        rules = [op.text for op in c.apply if isinstance(op, P.Iptables) and op.ns == ns]
        # first the tables reset as in a fresh namespace, then the node's whole new text
        assert rules[0].startswith("*filter\n-F\n-X\n:INPUT ACCEPT [0:0]\n") and "*nat\n-F\n-X\n" in rules[0]
        assert len(rules) == 2 and "10.96.0.10" in rules[1]


def test_a_udp_port_changed_restarts_the_dataplanes_in_place():
    def udp(port):
        return compile_topology(model.load(str(REPO / "topologies" / "spine-leaf.yaml"), name="x",
                                           overrides={"backend": f"udp:{port}"}))
    c = compute(udp(8285), udp(8300))
    assert c.agent and not c.recreate and not c.apply and not c.undo
    assert D.render(c, {})[:3] == ["~ master1: changed in place", "  - udp dataplane on flannel0 (port 8285)",
                                   "  + udp dataplane on flannel0 (port 8300)"]


def test_converge_refuses_a_namespace_its_record_names_that_is_not_the_labs(tmp_path, monkeypatch):
    """The plan in a lab's record is input (hole 3 of issue 18): a converge drops, recreates or
    changes only namespaces of the lab's name rule that are verifiably the ones it made."""
    from nslab import converge, state
    monkeypatch.setattr(state, "RUN_DIR", str(tmp_path))
    st = state.LabState(lab="lab1", file="x.yaml", ns_ids={"other.x": [1, 2]})
    for field, value in (("remove", ["other.x"]), ("recreate", {"other.x": "image changed"})):
        with pytest.raises(NslabError) as e:
            converge._refuse("lab1", D.Converge(**{field: value}), [], st)
        assert str(e.value).startswith("lab lab1: its record names namespace 'other.x', which is not a namespace "
                                       "name of lab lab1: nslab will not touch it"), e.value
    # a namespace of the lab's name that is gone is no one's: nothing refused
    converge._refuse("lab1", D.Converge(remove=["lab1.gone"]), [], st)


@pytest.mark.parametrize("ns, node", [("lab1.../../../etc", "../../../etc"), ("lab1.a", "../../x"),
                                      ("other.a", "a"), ("lab1.a", "b")])
def test_converge_refuses_a_recorded_plan_whose_names_are_not_the_labs(ns, node):
    """A node name of the recorded plan becomes a path (its UTS file: uts/<node>, unmounted and
    unlinked when the node goes): a plan naming anything but LAB.NODE is refused first."""
    from nslab import converge, state
    with pytest.raises(state.RecordError) as e:
        converge._own_names("lab1", [P.Netns(ns, node)])
    assert str(e.value) == (f"lab lab1: its recorded plan names namespace {ns!r} for node {node!r}, which is not how "
                            f"lab lab1 names its nodes: nslab will not touch it; `nslab down lab1` and bring it up "
                            f"again")
    converge._own_names("lab1", [P.Netns("lab1.a", "a")])
