"""flannel's host-gw backend (pkg/backend/hostgw): no encapsulation, no device.

On each node, for every other node: `<their subnet> via <their IP> dev <underlay>`.  The
kernel refuses a gateway that is not directly connected, so every node must share one L2
network: one segment, or segments joined switch to switch (check below); across racks,
vxlan with directRouting does the same where it can.
"""
from __future__ import annotations

from .. import plan as P
from . import DIRECT, Backend, Config


def parse(spec: dict, path: tuple, err, mtu) -> Config:
    return Config(type="host-gw")          # `type` is its only key


def ops(cluster, node, ns_of) -> list:
    return [P.Route(ns_of(node.name), str(peer.subnet), (P.Nexthop(str(peer.ip), node.underlay),))
            for peer in cluster.nodes.values() if peer is not node]


def check(cluster, err) -> None:
    nodes = list(cluster.nodes.values())
    for n in nodes[1:]:
        if n.ip not in nodes[0].underlay_net:       # one subnet: one segment or one L2 domain
            raise err(n.path + ("segment",),
                      f"host-gw routes pod subnets via node IPs, so every node must be on one L2 segment: "
                      f"{n.name} ({n.ip}) is on {n.segment} but {nodes[0].name} ({nodes[0].ip}) is on "
                      f"{nodes[0].segment}; use vxlan (with directRouting) across racks")


BACKEND = Backend(
    name="host-gw", rank=1,
    keys=frozenset({"type"}),
    overhead=0, overhead_source="flannel pkg/backend/hostgw/hostgw.go: plain routes, the link MTU unchanged",
    parse=parse, device=lambda c: None, ops=ops, direct=lambda c, node, peer: True,
    style=DIRECT,                          # every pair is drawn as a direct route
    summary=lambda c: "host-gw",
    edge_label=lambda c: "direct",
    check=check,
)
