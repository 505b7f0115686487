"""nslab/flannel_peers.py without a kernel: a shard's plan keeps no entry for cluster nodes
on other machines (they come from the leases), the entries made from a lease are exactly
the ones the plan of the whole lab holds for that peer, and a lease that does not fit the
lab's cluster is refused with a reason.  (The sandbox suite runs it for real.)"""
from __future__ import annotations

import dataclasses
from ipaddress import IPv4Network

import pytest

from conftest import REPO
from nslab import coord, flannel_peers, model
from nslab.compile import compile_topology
from nslab.compile import placement as pl

RACKS = REPO / "tests" / "golden" / "placement" / "spine-leaf-racks.yaml"


def placed(backend: str):
    topo = model.load(str(RACKS), overrides={"backend": backend})
    return topo, pl.place(topo, compile_topology(topo), None, underlay_mtu=9216)


@pytest.mark.parametrize("backend", ["vxlan", "ipip"])
def test_remote_peers_come_from_leases_not_the_plan(backend):
    topo, p = placed(backend)
    whole = compile_topology(topo)
    for machine in ("m1", "m2"):
        plan = p.plans[machine]
        before = list(plan.ops)
        removed = flannel_peers.strip_remote_peers(plan, topo, p.where, machine)
        assert removed > 0
        gone = [op for op in before if op not in plan.ops]
        # each removed op is what a remote node's lease gives back, and nothing else went
        local = [n for n in topo.cluster.nodes.values() if p.where[n.name] == machine]
        from_leases = []
        for node in local:
            for peer in topo.cluster.nodes.values():
                if p.where[peer.name] != machine:
                    lease = flannel_peers.own_lease(topo.cluster, peer)
                    from_leases += flannel_peers._peer_ops(topo.cluster, node, flannel_peers._lease_peer(node, lease),
                                                           topo.nodes[node.name].ns)
        assert sorted(map(repr, gone)) == sorted(map(repr, from_leases))
        assert all(op in whole.ops for op in from_leases)


def test_udp_proxy_keeps_its_machines_peers_and_reads_the_others_from_its_routes_file():
    """flannel's udp backend routes from the leases too (processSubnetEvents' setRoute):
    the shard's proxy keeps the routes to nodes on its own machine, the rest it learns."""
    from nslab import plan as P
    topo, p = placed("udp")
    nodes = topo.cluster.nodes
    removed = flannel_peers.strip_remote_peers(p.plans["m1"], topo, p.where, "m1")
    daemons = {op.node: dict(op.config) for op in p.plans["m1"].ops if isinstance(op, P.Daemon) and op.kind == "udp"}
    local = [n for n in nodes if p.where[n] == "m1"]
    assert sorted(daemons) == sorted(local) and removed == len(local) * (len(nodes) - len(local))
    for node, config in daemons.items():
        assert config["routes_file"] == f"udp-{node}.routes"
        kept = {item.partition("@")[0] for item in config["routes"].split(",") if item}
        assert kept == {str(nodes[n].subnet) for n in local if n != node}


def test_own_lease_is_flannels_json():
    topo, _ = placed("vxlan")
    w3 = topo.cluster.nodes["worker3"]
    lease = flannel_peers.own_lease(topo.cluster, w3)
    assert coord._lease_value(lease) == (
        '{"PublicIP":"30.0.0.23","PublicIPv6":null,"BackendType":"vxlan",'
        f'"BackendData":{{"VNI":4000,"VtepMAC":"{w3.vtep_mac}"}}}}')


@pytest.mark.parametrize("change, problem", [
    (dict(backend_type="host-gw", backend_data={}), "BackendType host-gw is not the cluster's (vxlan)"),
    (dict(backend_data={"VNI": 1, "VtepMAC": "02:00:00:00:00:01"}), "VNI 1 is not the cluster's (4000)"),
    (dict(subnet=IPv4Network("192.168.9.0/24")), "subnet 192.168.9.0/24 is not a /24 of the network"),
    (dict(subnet=IPv4Network("10.244.9.0/25")), "subnet 10.244.9.0/25 is not a /24"),
    (dict(public_ip="127.0.0.1"), "PublicIP 127.0.0.1 is not a node address"),
    (dict(public_ip="10.244.3.7"), "PublicIP 10.244.3.7 is not a node address"),
    (dict(public_ip="10.0.0.21"), "PublicIP 10.0.0.21 is a node's on this machine"),
])
def test_a_lease_that_does_not_fit_the_cluster_is_refused(change, problem):
    topo, p = placed("vxlan")
    local = [n for n in topo.cluster.nodes.values() if p.where[n.name] == "m1"]
    good = flannel_peers.own_lease(topo.cluster, topo.cluster.nodes["worker3"])
    assert flannel_peers.lease_problem(topo.cluster, local, good) is None
    bad = dataclasses.replace(good, **change)
    assert problem in flannel_peers.lease_problem(topo.cluster, local, bad)
    mine = flannel_peers.own_lease(topo.cluster, local[0])
    assert "is a node's on this machine" in flannel_peers.lease_problem(topo.cluster, local, mine)
