"""What one machine can hold, checked at validate: a lab that would run out of file
descriptors or overflow the kernel's shared neighbour table is refused with the number and
the limit, before anything is built (not half-way through `up`).

Both checks only read: the root namespace's sysctls are never written, and the only limit
nslab changes is its own soft RLIMIT_NOFILE (raised to the hard limit, which any process
may do).
"""
from __future__ import annotations

import resource

from ..errors import TopologyError
from ..plan import Neigh

# nslab/apply.py (Applier, lab.RecordingApplier) holds, for every namespace of the lab at
# once, its namespace fd and one NETLINK_ROUTE socket opened inside it: 2 descriptors.
FDS_PER_NAMESPACE = 2
# stdin/out/err, the lab lock and record, /dev/null, imports, a Docker API connection, ...
FDS_RESERVE = 64
GC_THRESH3 = "/proc/sys/net/ipv4/neigh/default/gc_thresh3"
# Routes model.py computes (every router learns every subnet it reaches: routers x subnets).
# A 10,000-node CLOS (108 routers, ~900 subnets) needs ~97,000; five times that is ~200 MB
# of Route objects and a few seconds.
MAX_COMPUTED_ROUTES = 500_000


def raise_nofile_soft_limit() -> tuple[int, int]:
    """Raise this process's soft open-files limit to its hard limit (Debian's login soft
    limit is 1024); returns (soft, hard) as they are afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard and (hard == resource.RLIM_INFINITY or soft < hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass        # RLIM_INFINITY above fs.nr_open: keep what we have
    return soft, hard


def nofile_hard_limit() -> int | None:
    """The most descriptors this process could open (None: no limit)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return None if hard == resource.RLIM_INFINITY else hard


def gc_thresh3() -> int | None:
    """The kernel's hard cap on neighbour entries, shared by all namespaces (read only)."""
    try:
        with open(GC_THRESH3) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def descriptors_needed(topo) -> int:
    return FDS_PER_NAMESPACE * len(topo.nodes) + FDS_RESERVE


def minimum_dynamic_neighbours(topo, permanent: set[tuple[str, str, str]] = frozenset()) -> int:
    """Neighbour (ARP) entries the lab needs even if only each host talks to its gateway:
    every addressed segment member and its gateway resolve each other (two entries), both
    ends of an addressed point-to-point link resolve each other, and every pod and its
    node's cni0.  All-pairs traffic needs more; this is the floor.  Entries nslab installs
    as permanent ((namespace, device, address) in `permanent`) do not count.  Linear."""
    nodes = topo.nodes
    gateway_of = {}     # segment -> (gateway node, its interface on the segment)
    for seg in topo.segments.values():
        if seg.gateway is not None and seg.gateway_ip is not None and seg.gateway in nodes:
            gw = nodes[seg.gateway]
            iface = next((i for i in gw.ifaces if i.segment == seg.name), None)
            if iface is not None:
                gateway_of[seg.name] = (gw, iface)
    count = 0

    def pair(node_a, iface_a, node_b, iface_b):
        nonlocal count
        if iface_a.ip is None or iface_b.ip is None:
            return
        count += (node_a.ns, iface_a.name, str(iface_b.ip.ip)) not in permanent
        count += (node_b.ns, iface_b.name, str(iface_a.ip.ip)) not in permanent

    for node in nodes.values():
        if node.kind == "switch":
            continue
        for iface in node.ifaces:
            if iface.segment is not None:
                gw = gateway_of.get(iface.segment)
                if gw is not None and gw[0] is not node:
                    pair(node, iface, gw[0], gw[1])
                continue
            peer_node = nodes.get(iface.peer_node)
            peer = peer_node.iface(iface.peer_name) if peer_node is not None else None
            if peer is None:
                continue
            if peer.bridge and peer_node.bridges:      # a pod's eth0 on its node's cni0
                br = next((b for b in peer_node.bridges if b.name == peer.bridge), None)
                if br is not None and br.ip is not None and iface.ip is not None:
                    count += (node.ns, iface.name, str(br.ip.ip)) not in permanent
                    count += (peer_node.ns, br.name, str(iface.ip.ip)) not in permanent
            elif (node.name, iface.name) < (peer_node.name, peer.name):     # a link: once, from one end
                pair(node, iface, peer_node, peer)
    return count


def permanent_neighbours(plan) -> set[tuple[str, str, str]]:
    return {(op.ns, op.dev, op.address) for op in plan.ops if isinstance(op, Neigh)}


def cluster_permanent_neighbours(topo) -> set[tuple[str, str, str]]:
    """The permanent neighbour entries the plan will hold, from the model (model sits below
    compile): flannel's vxlan backend installs one per remote node it reaches through the
    VXLAN device, as compile/cluster.py's vxlan() does; no other op makes one.  A unit test
    holds this equal to permanent_neighbours(compile_topology(topo))."""
    cluster = topo.cluster
    if cluster is None or cluster.backend.type != "vxlan":
        return set()
    dev = cluster.backend.device
    return {(topo.nodes[node.name].ns, dev, str(peer.subnet.network_address))
            for node in cluster.nodes.values() for peer in cluster.nodes.values()
            if peer is not node and not (cluster.backend.direct_routing and peer.ip in node.underlay_net)}


def check(topo) -> None:
    """Refuse a lab this machine cannot hold (TopologyError, exit 2)."""
    name = topo.doc.display_name if topo.doc is not None else topo.file

    hard = nofile_hard_limit()
    need = descriptors_needed(topo)
    if hard is not None and need > hard:
        raise TopologyError(name, None, "", f"{len(topo.nodes)} namespaces need about {need} open files while the "
                                            f"lab is built ({FDS_PER_NAMESPACE} per namespace: its handle and a "
                                            f"netlink socket), but this process may open at most {hard} (the hard "
                                            f"limit, `ulimit -Hn`); raise it as root (`ulimit -Hn {need}` in the "
                                            f"shell that runs nslab, or a nofile line in "
                                            f"/etc/security/limits.conf) or split the lab")

    thresh = gc_thresh3()
    if thresh is None:
        return
    dynamic = minimum_dynamic_neighbours(topo)
    if dynamic > thresh:
        # entries nslab installs as permanent do not count
        dynamic = minimum_dynamic_neighbours(topo, cluster_permanent_neighbours(topo))
    if dynamic > thresh:
        raise TopologyError(name, None, "", f"the lab needs at least {dynamic} dynamic neighbour (ARP) entries "
                                            f"(each host and its gateway, both ends of each link), but the "
                                            f"kernel's neighbour table, shared by every namespace, holds "
                                            f"{thresh} (net.ipv4.neigh.default.gc_thresh3, which nslab never "
                                            f"changes); use fewer hosts per lab or ask the machine's admin to "
                                            f"raise it")
