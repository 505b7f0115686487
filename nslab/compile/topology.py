"""Compile a resolved topology into a plan.  Pure: no kernel, no root, deterministic."""
from __future__ import annotations

from .. import plan as P
from ..model import Topology
from ..model.limits import hub_pairs, neighbour_domains
from ..model.types import interface_text, ip_text
from .cluster import compile_cluster
from .tunnels import compile_tunnels


def compile_topology(topo: Topology) -> P.Plan:
    plan = P.Plan(lab=topo.name)
    nodes = topo.nodes
    for node in nodes.values():
        plan.add(P.Netns(ns=node.ns, node=node.name, container=node.container))
        if not topo.ipv6:
            # Quiet captures: no router solicitations or MLD reports among the notes' ARP and
            # ICMP.  Writing `all` also sets `default` (the kernel's addrconf_disable_ipv6), so
            # devices made later are covered: one sysctl write per namespace, not two.
            plan.add(P.Sysctl(node.ns, "net.ipv6.conf.all.disable_ipv6", "1"))
        for key, value in node.sysctls.items():
            # per-interface keys (net.ipv4.conf.eth0.x) need the interface first
            iface_key = key.split(".")[3] if key.startswith(("net.ipv4.conf.", "net.ipv6.conf.", "net.ipv4.neigh.")) else None
            stage = P.STAGE_CONFIG if iface_key not in (None, "all", "default") else P.STAGE_NAMESPACE
            plan.add(P.Sysctl(node.ns, key, value, stage=stage))
    for node in nodes.values():
        for br in node.bridges:
            plan.add(P.Link(ns=node.ns, name=br.name, kind="bridge", mtu=br.mtu, mac=br.mac))
    # veth pairs: created from the switch side (so the port is enslaved in the same message)
    # or from the first-declared end; both ends are born in their own namespaces.
    pairs = list(_veth_pairs(topo))     # walked twice: found once (a frozenset per interface)
    for (node, iface), (peer_node, peer) in pairs:
        plan.add(P.Link(ns=node.ns, name=iface.name, kind="veth", mtu=iface.mtu, mac=iface.mac,
                        master=iface.bridge,
                        peer=P.Peer(ns=peer_node.ns, name=peer.name, mtu=peer.mtu, mac=peer.mac,
                                    address=interface_text(peer.ip) if peer.ip else None)))
    for (_, _), (peer_node, peer) in pairs:
        plan.add(P.Up(peer_node.ns, peer.name))
        if peer.bridge:         # two segments joined: the far end is a port of its own bridge
            plan.add(P.BridgePort(peer_node.ns, peer.name, master=peer.bridge))
    for node in nodes.values():
        plan.add(P.Up(node.ns, "lo"))
        for br in node.bridges:
            if br.ip is not None:
                plan.add(P.Addr(node.ns, br.name, interface_text(br.ip)))
        for iface in node.ifaces:
            if iface.ip is not None:
                plan.add(P.Addr(node.ns, iface.name, interface_text(iface.ip)))
            if iface.hairpin:
                plan.add(P.BridgePort(node.ns, iface.name, hairpin=True))
            if iface.conditions is not None:     # link conditions: this end's root qdisc
                plan.add(P.Qdisc(node.ns, iface.name, iface.conditions.to_pairs(), iface.mtu))
    # Computed routes share their destination and next-hop objects (10,000-node CLOS: ~100,000
    # routes over ~900 subnets): convert each object once, by identity, not once per route.
    dsts: dict[int, str] = {}
    hops: dict[int, tuple] = {}
    for node in nodes.values():
        for route in node.routes:
            dst = dsts.get(id(route.dst))
            if dst is None:
                dst = dsts[id(route.dst)] = str(route.dst)
            nh = hops.get(id(route.nexthops))
            if nh is None:
                nh = hops[id(route.nexthops)] = tuple(P.Nexthop(via=ip_text(h.via) if h.via else None, dev=h.dev)
                                                      for h in route.nexthops)
            plan.add(P.Route(ns=node.ns, dst=dst, onlink=route.onlink, nexthops=nh))
    _static_neighbours(topo, plan)
    if topo.cluster is not None:
        compile_cluster(topo, plan)
    compile_tunnels(topo, plan)
    for node in nodes.values():
        for kind in node.serve if node.container is None else ():   # a container serves by itself
            plan.add(P.Serve(ns=node.ns, node=node.name, kind=kind))
        for m in node.members:       # a pod's containers: listeners in the one namespace they share
            if m.serve:
                plan.add(P.Serve(ns=node.ns, node=f"{node.name}/{m.name}", kind=m.serve, port=m.port))
    for node in nodes.values():
        addr = topo.address_of(node.name)
        if addr is not None and node.kind != "switch":
            plan.hosts[node.name] = str(addr)
    return plan


# `neighbours: static` gives a network of up to MESH_MEMBERS members the full mesh (every
# member's entry for every other: the pods on a node's cni0, the nodes of a cluster's rack
# talk to each other directly), within MESH_BUDGET entries for the whole lab; a bigger
# network gets the star (each hub's entry for every member and theirs for it).
MESH_MEMBERS = 32
MESH_BUDGET = 50_000


def _static_neighbours(topo: Topology, plan: P.Plan) -> None:
    """`neighbours: static`: permanent entries (nslab chose every MAC), so no ARP and nothing
    counted against the kernel's shared table.  Every member of a small network gets one for
    each other member; on a big one (a 100-host rack), each member one for each router on
    it (its gateway) and each router one for every member: a full mesh there is n x (n - 1)
    entries (1,010,000 in a 10,000-host CLOS, ~23 us each in the kernel), the star 2n, and
    hosts of one rack still resolve each other by ARP."""
    if topo.neighbours_auto:
        plan.notes.setdefault("_notices", []).append(topo.neighbours_auto)
    if not topo.static_neighbours() and not any(topo.static_neighbours(s) for s in topo.segments):
        return                      # the notes' labs: nothing static, no address texts to build
    budget = MESH_BUDGET
    for _, static, members, hubs in neighbour_domains(topo):
        if not static:
            continue
        n = len(members)
        if n <= MESH_MEMBERS and n * (n - 1) <= budget:
            budget -= n * (n - 1)
            pairs = ((a, b) for a in range(n) for b in range(n) if a != b)
        else:
            pairs = hub_pairs(members, hubs)
        plan.ops.extend(P.Neigh(members[a][0], members[a][1], members[b][2], members[b][3]) for a, b in pairs)


def _veth_pairs(topo: Topology):
    """Each veth pair once: ((creating node, its end), (peer node, peer end))."""
    seen = set()
    for node in topo.nodes.values():
        for iface in node.ifaces:
            key = frozenset([(node.name, iface.name), (iface.peer_node, iface.peer_name)])
            if key in seen:
                continue
            seen.add(key)
            peer_node = topo.nodes[iface.peer_node]
            peer = peer_node.iface(iface.peer_name)
            if peer.bridge and not iface.bridge:
                yield (peer_node, peer), (node, iface)
            else:
                yield (node, iface), (peer_node, peer)
