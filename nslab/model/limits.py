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

# Apply (nslab/apply/applier.py) keeps at most open_namespaces() namespaces open at once,
# each as its namespace fd and one NETLINK_ROUTE socket opened inside it, the least recently
# used closed and reopened by name; lab.RecordingApplier holds up to as many more anonymous
# namespaces (fd and socket each) waiting for their name.  The window is OPEN_NAMESPACES, or
# what the hard open-files limit leaves room for; a lab is refused only when not even
# MIN_OPEN_NAMESPACES fit (fewer would reopen namespaces over and over).
FDS_PER_NAMESPACE = 4
OPEN_NAMESPACES = 256
MIN_OPEN_NAMESPACES = 16
# stdin/out/err, the lab lock and record, /dev/null, imports, a Docker API connection, ...
FDS_RESERVE = 64
GC_THRESH3 = "/proc/sys/net/ipv4/neigh/default/gc_thresh3"
# Routes model.py computes (every router learns every subnet it reaches: routers x subnets).
# A 10,000-node CLOS (108 routers, ~900 subnets) needs ~97,000; five times that is ~200 MB
# of Route objects and a few seconds.
MAX_COMPUTED_ROUTES = 500_000
# kube-proxy rules compile writes for services: every cluster node x every endpoint of every
# service (compile/kubeproxy.py, ~5 us each): 200,000 is about a second.
MAX_SERVICE_ENDPOINT_RULES = 200_000


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


def open_namespaces(hard: int | None = None) -> int:
    """How many namespaces apply keeps open at once under the hard open-files limit `hard`
    (default: this process's; None or RLIM_INFINITY: no limit): OPEN_NAMESPACES, or as many
    as fit in it beside the reserve (`ulimit -Hn 1024`: 240).  Below MIN_OPEN_NAMESPACES,
    check() refuses the lab."""
    hard = nofile_hard_limit() if hard is None else hard
    if hard is None or hard == resource.RLIM_INFINITY:
        return OPEN_NAMESPACES
    return max(0, min(OPEN_NAMESPACES, (hard - FDS_RESERVE) // FDS_PER_NAMESPACE))


def descriptors_needed(topo, window: int | None = None) -> int:
    """Descriptors apply holds at most for topo with `window` namespaces open (default OPEN_NAMESPACES)."""
    return FDS_PER_NAMESPACE * min(len(topo.nodes), OPEN_NAMESPACES if window is None else window) + FDS_RESERVE


def neighbour_domains(topo, detail: bool = True):
    """Every lab-internal L2 network with its addressed members, as (segment name or None,
    static?, members, hubs): members are (namespace, device, address, MAC); hubs are the
    members every other one talks through (the routers on a segment, a node's addressed
    bridge for the pods on it (cni0), both ends of a point-to-point veth).  Linear in
    interfaces.  detail=False: members are None, for counting (an address's text costs
    more than the rest of the walk)."""
    from .types import ip_text  # lazy: start-up (the CLI imports this module for its file limit; types loads PyYAML)
    nodes = topo.nodes
    segments: dict[str, tuple[list, list]] = {}
    bridged: dict[tuple, tuple[list, list]] = {}
    for node in nodes.values():
        for br in node.bridges:
            if br.ip is not None:
                bridged[(node.name, br.name)] = ([(node.ns, br.name, ip_text(br.ip), br.mac) if detail else None], [0])
    for node in nodes.values():
        if node.kind == "switch":
            continue
        for iface in node.ifaces:
            if iface.ip is None or iface.bridge:
                continue
            me = (node.ns, iface.name, ip_text(iface.ip), iface.mac) if detail else None
            if iface.segment is not None:      # joined segments: one L2 domain, one network
                members, hubs = segments.setdefault(topo.segments[iface.segment].domain or iface.segment, ([], []))
                if node.kind == "router":
                    hubs.append(len(members))
                members.append(me)
                continue
            peer_node = nodes.get(iface.peer_node)
            peer = peer_node.iface(iface.peer_name) if peer_node is not None else None
            if peer is None:
                continue
            if peer.bridge:         # a pod's eth0 on its node's cni0
                found = bridged.get((peer_node.name, peer.bridge))
                if found is not None:
                    found[0].append(me)
            elif peer.ip is not None and (node.name, iface.name) < (peer_node.name, peer.name):
                yield None, topo.static_neighbours(), [me, (peer_node.ns, peer.name, ip_text(peer.ip), peer.mac)
                                                       if detail else None], [0, 1]
    for name, (members, hubs) in segments.items():
        yield name, topo.static_neighbours(name), members, hubs
    for members, hubs in bridged.values():
        if len(members) > 1:
            yield None, topo.static_neighbours(), members, hubs


def hub_pairs(members, hubs):
    """(from, to) member indexes: each hub and every other member, both ways, once."""
    is_hub = set(hubs)
    for h in hubs:
        for m in range(len(members)):
            if m != h:
                yield h, m
                if m not in is_hub:
                    yield m, h


def _hub_pair_count(n: int, hubs: int) -> int:
    return hubs * (n - 1) + (n - hubs) * hubs


def possible_dynamic_neighbours(topo) -> int:
    """Dynamic neighbour entries the lab can need at once: every member of every L2 network
    may talk to every other (all-pairs tests do), n x (n - 1) per network.  Counted, not
    enumerated."""
    return sum(len(m) * (len(m) - 1) for _, static, m, _ in neighbour_domains(topo, detail=False) if not static)


def minimum_dynamic_neighbours(topo) -> int:
    """Dynamic entries the lab needs even if each member only talks to its routers (each
    host and its gateway, both ends of each link, each pod and its cni0): the floor.
    Networks with static neighbours count nothing (permanent entries are not counted
    against the kernel's table)."""
    return sum(_hub_pair_count(len(m), len(h)) for _, static, m, h in neighbour_domains(topo, detail=False)
               if not static)


def permanent_neighbours(plan) -> set[tuple[str, str, str]]:
    return {(op.ns, op.dev, op.address) for op in plan.ops if isinstance(op, Neigh)}


def choose_neighbours(topo) -> None:
    """Switch a lab to `neighbours: static` when its L2 peers could need more dynamic
    entries than the kernel's shared table holds (and the file does not say which)."""
    thresh = gc_thresh3()
    if thresh is None or topo.neighbours_given:
        return
    dynamic = possible_dynamic_neighbours(topo)
    if dynamic > thresh:
        # Permanent entries are not counted against the shared table: nslab knows every MAC.
        topo.neighbours = "static"
        topo.neighbours_auto = (f"neighbours: static (chosen by nslab): the lab's L2 peers could need {dynamic:,} "
                                f"dynamic ARP entries, more than the kernel's shared table holds ({thresh:,}, "
                                f"net.ipv4.neigh.default.gc_thresh3); permanent entries instead: every member's "
                                f"for every other on small networks (pods of a node, a rack of up to 32), each "
                                f"host's for its gateway and back on bigger ones (write `neighbours: dynamic` "
                                f"to keep ARP)")


def check(topo) -> None:
    """Refuse a lab this machine cannot hold (TopologyError, exit 2)."""
    name = topo.doc.display_name if topo.doc is not None else topo.file

    hard = nofile_hard_limit()
    need = descriptors_needed(topo, MIN_OPEN_NAMESPACES)       # the least apply can work with
    if hard is not None and need > hard:
        raise TopologyError(name, None, "", f"building {len(topo.nodes)} namespaces needs about {need} open files "
                                            f"(at least {min(len(topo.nodes), MIN_OPEN_NAMESPACES)} namespaces "
                                            f"open at once, {FDS_PER_NAMESPACE} descriptors each: its handle, a "
                                            f"netlink socket and the next one waiting for its name), "
                                            f"but this process may open at most {hard} (the hard limit, "
                                            f"`ulimit -Hn`); raise it as root (`ulimit -Hn "
                                            f"{descriptors_needed(topo)}` in the shell that runs nslab, or a "
                                            f"nofile line in /etc/security/limits.conf)")

    thresh = gc_thresh3()
    if thresh is None:
        return
    all_static = topo.neighbours == "static" and not any(s.neighbours == "dynamic" for s in topo.segments.values())
    floor = 0 if all_static else minimum_dynamic_neighbours(topo)
    if floor > thresh:
        raise TopologyError(name, None, "", f"the lab needs at least {floor} dynamic neighbour (ARP) entries "
                                            f"(each host and its gateway, both ends of each link), but the "
                                            f"kernel's neighbour table, shared by every namespace, holds "
                                            f"{thresh} (net.ipv4.neigh.default.gc_thresh3, which nslab never "
                                            f"changes); write `neighbours: static` (permanent entries, not "
                                            f"counted) or use fewer hosts per lab")
