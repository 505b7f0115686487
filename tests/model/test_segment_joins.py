"""Segments joined switch to switch (a segment listed as a member of another): one L2
domain with one subnet, one allocator and one gateway; loops and conflicts refused.
The error sentences themselves are in tests/errors/segment-join-*.expected."""
from __future__ import annotations

import textwrap

import pytest

from nslab import model
from nslab.compile import compile_topology
from nslab import plan as P
from nslab.errors import TopologyError


def load(text: str) -> model.Topology:
    return model.load("lab.yaml", text=textwrap.dedent(text))


def test_a_later_segment_may_be_joined_and_the_domain_takes_the_subnet_from_either():
    topo = load("""
        hosts: [a, b, c]
        segments:
          top: {members: [left, right]}
          left: {members: [a, b]}
          right: {subnet: 10.5.0.0/24, members: [c]}
    """)
    assert {s.domain for s in topo.segments.values()} == {"top"}
    assert all(str(s.subnet) == "10.5.0.0/24" for s in topo.segments.values())
    assert [str(topo.address_of(h)) for h in "abc"] == ["10.5.0.1", "10.5.0.2", "10.5.0.3"]
    # the joins: one port on each bridge, named after the other switch, no address
    top = topo.nodes["top"]
    assert sorted(i.name for i in top.ifaces) == ["left", "right"]
    assert all(i.bridge == "br0" and i.ip is None for n in ("top", "left") for i in topo.nodes[n].ifaces)
    assert topo.nodes["left"].iface("top").peer_node == "top"


def test_same_subnet_on_each_joined_segment_is_one_network():
    topo = load("""
        hosts: [a, b]
        segments:
          s1: {subnet: 10.0.0.0/24, members: [a]}
          s2: {subnet: 10.0.0.0/24, members: [b, s1]}
    """)
    assert str(topo.address_of("b")) == "10.0.0.2"


def test_hand_addressed_members_of_joined_segments_share_their_network():
    topo = load("""
        hosts: [a, b]
        segments:
          s1: {members: {a: {ip: 10.0.0.1/24}}}
          s2: {members: [s1, {b: {ip: 10.0.0.2/24}}]}
    """)
    assert str(topo.address_of("b")) == "10.0.0.2"


def test_the_domains_gateway_serves_every_host_and_routers_see_each_other_across_joins():
    topo = load("""
        routers: [r1, r2, r3]
        hosts: [a, b, far]
        segments:
          s1: {subnet: 10.0.0.0/24, gateway: r1, members: [a]}
          s2: {members: [b, s1, {r2: {ip: 10.0.0.253}}]}
          lan: {subnet: 10.9.0.0/24, gateway: r3, members: [far]}
        links:
          - [r2, r3]
    """)
    for host in ("a", "b"):
        (default,) = [r for r in topo.nodes[host].routes if r.dst.prefixlen == 0]
        assert str(default.nexthops[0].via) == "10.0.0.254"
    # r1 (on s1) reaches far's lan through r2 (on s2): one network across the join
    (route,) = [r for r in topo.nodes["r1"].routes if str(r.dst) == "10.9.0.0/24"]
    assert str(route.nexthops[0].via) == "10.0.0.253"


def test_the_far_end_of_a_join_is_enslaved_by_its_own_op():
    plan = compile_topology(load("""
        hosts: [a, b]
        segments:
          s1: {subnet: 10.0.0.0/24, members: [a]}
          s2: {members: [b, {s1: {conditions: {delay: 2ms}}}]}
    """))
    (join,) = [op for op in plan.ops if isinstance(op, P.Link) and op.peer and op.peer.name in ("s1", "s2")
               and op.name in ("s1", "s2")]
    assert join.master == "br0"
    assert P.BridgePort(join.peer.ns, join.peer.name, master="br0") in plan.ops
    assert {op.dev for op in plan.ops if isinstance(op, P.Qdisc)} >= {"s1", "s2"}    # shaped both ways


@pytest.mark.parametrize("segments,says", [
    ("s1: {members: [s2]}\n  s2: {members: [s1]}", "closes a loop (s2 - s1 - s2)"),
    ("s1: {members: [s2, s3]}\n  s2: {members: [s4]}\n  s3: {members: [s4]}\n  s4: {}",
     "closes a loop (s3 - s1 - s2 - s4 - s3)"),
    ("s1: {subnet: 10.0.0.0/24}\n  s2: {subnet: 10.0.0.0/25, members: [s1]}", "differs from 10.0.0.0/24"),
])
def test_loops_and_conflicts_are_refused(segments, says):
    with pytest.raises(TopologyError) as e:
        load(f"segments:\n  {segments}\n")
    assert says in str(e.value) and e.value.exit_code == 2


def test_static_neighbours_of_a_domain_reach_across_its_joins():
    """`neighbours: static`: the entries of one L2 domain are those of one network."""
    topo = load("""
        neighbours: static
        segments:
          rack1: {subnet: 10.1.0.0/24}
          rack2: {members: [rack1]}
        cluster:
          nodes:
            n1: {segment: rack1, ip: 10.1.0.11}
            n2: {segment: rack2, ip: 10.1.0.12}
    """)
    neigh = {(op.ns, op.address) for op in compile_topology(topo).ops if isinstance(op, P.Neigh)}
    assert {("lab.n1", "10.1.0.12"), ("lab.n2", "10.1.0.11")} <= neigh


def test_host_gw_takes_cluster_nodes_on_joined_segments_and_refuses_separate_ones():
    """host-gw's routes go via the peer's IP: one L2 domain is enough, two segments that
    are not joined are refused (the error case host-gw-across-segments has the sentence)."""
    text = """
        segments:
          rack1: {subnet: 192.168.56.0/24}
          rack2: {members: [rack1]}
        cluster:
          network: 10.244.0.0/16
          backend: {type: host-gw}
          nodes:
            n1: {segment: rack1, ip: 192.168.56.11}
            n2: {segment: rack2, ip: 192.168.56.12}
    """
    plan = compile_topology(load(text))
    routes = [op for op in plan.ops if isinstance(op, P.Route) and op.dst == "10.244.1.0/24"]
    assert [(r.ns.split(".")[-1], r.nexthops[0].via) for r in routes] == [("n1", "192.168.56.12")]
    with pytest.raises(TopologyError, match="every node must be on one L2 segment"):
        load(text.replace("rack2: {members: [rack1]}", "rack2: {subnet: 192.168.57.0/24}")
             .replace("192.168.56.12", "192.168.57.12"))
