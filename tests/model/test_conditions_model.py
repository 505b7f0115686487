"""`conditions:` in a topology: which interfaces they land on, and how levels combine
(a link end over its link, a member over its segment, cluster nodes take their segment's).
Bad values: tests/errors/conditions-*.yaml (file:line path: message)."""
from __future__ import annotations

from nslab import model

TOPO = """
hosts: [a, b, c]
routers: [r]
segments:
  lan:
    subnet: 10.0.0.0/24
    gateway: r
    conditions: {rate: 100mbit}
    members:
      c: {conditions: {delay: 5ms}}
links:
  - ends: [a, {node: r, conditions: {delay: 20ms, loss: 1%}}]
    conditions: {rate: 50mbit}
  - [b, r]
"""


def shaped(topo) -> dict[str, str]:
    return {f"{n.name}:{i.name}": i.conditions.describe() for n in topo.nodes.values() for i in n.ifaces
            if i.conditions is not None}


def test_levels_land_on_the_right_ends():
    topo = model.load("t.yaml", text=TOPO)
    assert shaped(topo) == {
        "a:eth0": "rate 50Mbit",                           # the link's, at both ends ...
        "r:eth1": "rate 50Mbit delay 20ms loss 1%",        # ... with r's own end on top
        "c:eth0": "rate 100Mbit delay 5ms",                # a member over its segment, both ends
        "lan:c": "rate 100Mbit delay 5ms",
        "r:eth0": "rate 100Mbit",                          # the gateway: the segment's
        "lan:r": "rate 100Mbit",
    }                                                      # b <-> r: nothing


def test_cluster_nodes_take_their_segments_conditions():
    text = """
segments:
  lan: {subnet: 192.168.56.0/24, conditions: {delay: 5ms}}
cluster:
  network: 10.244.0.0/16
  iface: ens33
  backend: {type: vxlan}
  nodes:
    master: {segment: lan, ip: 192.168.56.133}
    node1: {segment: lan, ip: 192.168.56.134}
"""
    got = shaped(model.load("c.yaml", text=text))
    assert got == {"master:ens33": "delay 5ms", "node1:ens33": "delay 5ms", "lan:master": "delay 5ms",
                   "lan:node1": "delay 5ms"}


def test_empty_conditions_shape_nothing():
    topo = model.load("e.yaml", text="hosts: [a, b]\nlinks:\n  - {ends: [a, b], conditions: {}}\n")
    assert shaped(topo) == {}
