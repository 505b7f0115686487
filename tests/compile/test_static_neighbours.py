"""`neighbours: static` (issue 12): permanent entries for every L2 peer on small networks
(the pods of a node's cni0, the nodes of a cluster's rack: all-pairs traffic between them
needs no ARP), the star on big ones (a CLOS rack: each host <-> its gateway)."""
from __future__ import annotations

from collections import Counter

from nslab import generate, model
from nslab.compile import compile_topology
from nslab.compile.topology import MESH_BUDGET, MESH_MEMBERS
from nslab.plan import Neigh


def _neighs(shape: str, head: str = "neighbours: static\n"):
    topo = model.load("gen.yaml", text=head + generate.render(shape))
    return topo, [op for op in compile_topology(topo).ops if isinstance(op, Neigh)]


def test_pods_of_a_node_and_nodes_of_a_rack_get_the_full_mesh():
    topo, neigh = _neighs("cluster:2,3,4")                  # 4 pods + cni0 per node, 3 nodes + leaf per rack
    pod = next(n for n in topo.nodes.values() if n.kind == "pod")
    mates = [n for n in topo.nodes.values() if n.kind == "pod" and n is not pod
             and n.ifaces[0].peer_node == pod.ifaces[0].peer_node]
    assert len(mates) == 3
    mine = {(op.dev, op.address, op.lladdr) for op in neigh if op.ns == pod.ns}
    assert {("eth0", str(m.ifaces[0].ip.ip), m.ifaces[0].mac) for m in mates} < mine      # each other pod
    node = topo.nodes[pod.ifaces[0].peer_node]
    rack = next(i.segment for i in node.ifaces if i.segment)
    peers = {str(i.ip.ip) for n in topo.nodes.values() for i in n.ifaces
             if i.segment == rack and i.ip is not None and n is not node}
    assert len(peers) == 3 and peers <= {op.address for op in neigh if op.ns == node.ns}   # 2 nodes + the leaf
    # one entry per ordered pair of each network: no duplicates
    assert not [k for k, c in Counter((op.ns, op.dev, op.address) for op in neigh).items() if c > 1]


def test_a_big_network_gets_the_star():
    topo, neigh = _neighs(f"clos:1,1,{MESH_MEMBERS + 5}")     # one rack above the mesh size
    hosts = [n for n in topo.nodes.values() if n.kind == "host"]
    gw = str(topo.segments["rack01"].gateway_ip)
    for h in hosts:
        assert [op.address for op in neigh if op.ns == h.ns] == [gw]
    assert len(neigh) == 2 * len(hosts) + 2           # + the leaf-spine link, both ways


def test_the_mesh_stops_at_the_budget(monkeypatch):
    """Within MESH_BUDGET entries the small networks get the mesh; past it, the star."""
    from nslab.compile import topology
    topo, full = _neighs("cluster:1,4,3")                     # 4 nodes x (3 pods + cni0): 12 each
    cni0s = {op.ns for op in full if op.dev == "cni0"}
    assert len(cni0s) == 4
    pod_to_pod = [op for op in full if op.ns not in cni0s and op.dev == "eth0" and op.address.startswith("10.244.")
                  and not op.address.endswith(".1")]
    assert len(pod_to_pod) == 4 * 3 * 2                          # each pod: its 2 mates, on 4 nodes
    monkeypatch.setattr(topology, "MESH_BUDGET", 12 + 2 * 12)    # the rack's 4 nodes, then two nodes' pods
    _, capped = _neighs("cluster:1,4,3")
    meshed = [op for op in capped if op in pod_to_pod]
    assert len(meshed) == 2 * 3 * 2 and len(capped) < len(full)  # the other two nodes: the star only
