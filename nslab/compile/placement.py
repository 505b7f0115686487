"""Placement: one lab's plan -> a plan per machine plus the VXLAN stitches between them
(issue 20, items 3, 4 and 10).  Pure: nothing here touches the kernel or etcd.

Which machine runs a node comes from the file's `placement:` (model/placement.py) or, when
the file has none, from `spread()`: a partition of the lab over the machines given.  The
plan is then split by namespace: every operation goes to the machine of the namespace it
acts in, except a veth pair whose two ends land on different machines, which becomes a
`Stitch`: each end becomes a VXLAN device in its node's namespace with the veth end's
name, MAC and MTU (and bridge, on a segment's switch), both ends sharing a VNI and
reaching each other between the machines' underlay addresses.  Addresses, routes and
qdiscs of such an end stay in its machine's plan, as they were: a stitched end looks to
its node like the veth it replaces.  A segment split over machines is the same case: each
member's veth that crosses becomes a stitch to the segment's bridge.

The MTU (item 4): a stitch adds VXLAN's 50 bytes (outer IPv4 20 + UDP 8 + VXLAN 8 + the
inner Ethernet header 14, flannel's own encapOverhead) to the lab's frames, so an underlay
must carry the largest stitched link's MTU + 50; a cluster node's flannel vxlan inside a
stitch puts 100 bytes of headers on a pod's packet.  `place()` refuses, in one sentence,
a lab whose stitched links the underlay cannot carry — never a silent black hole.

The VNIs printed here are proposals (VNI_BASE upwards, in plan order); at `up` each stitch
takes its VNI in an etcd transaction (nslab/coord.py, `allocate_vnis`)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from .. import backends
from .. import plan as P
from ..console import plural, wrap
from ..errors import UsageError, one_line
from ..model.placement import machine_problem
from ..model.types import MAX_MTU, MIN_MTU, name_list

STITCH_OVERHEAD = backends.get("vxlan").overhead   # a stitch is a VXLAN: 50 bytes per frame
DEFAULT_STITCH_PORT = 4789      # IANA's VXLAN port (RFC 7348); --stitch-port changes it
DEFAULT_UNDERLAY_MTU = 1500
VNI_BASE = 5001                 # the first VNI proposed (a 24-bit VNI: 1..16,777,215)
MAX_VNI = (1 << 24) - 1
BALANCE_SLACK = 1.05            # spread: a machine may hold 5 % more than an even share


@dataclass(frozen=True)
class Machine:
    name: str
    address: str | None = None  # its underlay address (known from etcd at up; optional here)


@dataclass(frozen=True)
class StitchEnd:
    """One end of a stitch: made like the veth end it replaces (plan.Link makes its own end
    with its master set and up; the peer's Up op stays in its machine's plan)."""
    machine: str
    node: str
    ns: str
    dev: str                    # the veth end's name, MAC and MTU, kept
    mac: str | None
    mtu: int
    master: str | None          # the bridge it is a port of (a segment's switch side)


@dataclass(frozen=True)
class Stitch:
    vni: int
    port: int
    a: StitchEnd
    b: StitchEnd

    @property
    def mtu(self) -> int:
        return max(self.a.mtu, self.b.mtu)

    @property
    def underlay_mtu(self) -> int:
        """What the underlay between a and b must carry."""
        return self.mtu + STITCH_OVERHEAD


@dataclass
class Placed:
    lab: str
    machines: list[Machine]
    where: dict[str, str]                   # node -> machine
    source: str                             # "placement:" or "--spread"
    plans: dict[str, P.Plan]                # machine -> its shard's plan
    stitches: list[Stitch] = field(default_factory=list)
    port: int = DEFAULT_STITCH_PORT
    underlay_mtu: int = DEFAULT_UNDERLAY_MTU
    flannel: tuple | None = None            # (backend type, overhead) when stitches carry a cluster


# ---- the command line's machine list ------------------------------------------------------

def parse_machines(text: str, option: str) -> list[Machine]:
    """`m1,m2=198.18.0.2,m3` -> machines (an address is optional); a problem: UsageError naming the option."""
    machines: list[Machine] = []
    shown = one_line(str(text))         # the option as typed, on one line
    for item in str(text).split(","):
        name, eq, address = item.strip().partition("=")
        problem = machine_problem(name)
        if problem:
            raise UsageError(f"{option} {shown}: {problem}")
        if any(m.name == name for m in machines):
            raise UsageError(f"{option} {shown}: machine {name} is named twice")
        if eq:
            try:
                address = str(IPv4Address(address))
            except ValueError:
                raise UsageError(f"{option} {shown}: {address!r} is not an IPv4 address (NAME=ADDRESS)") from None
        machines.append(Machine(name, address or None))
    return machines


# ---- who runs where -------------------------------------------------------------------------

def _segments_of(node) -> list[str]:
    """The segments `node` is a member of (the switch side's ports carry the segment too)."""
    return list(dict.fromkeys(i.segment for i in node.ifaces if i.segment)) if node.kind != "switch" else []


def _host_of(topo, pod) -> str | None:
    """A pod's cluster node: the other end of its eth0 (the cni0 port)."""
    return next((i.peer_node for i in pod.ifaces if topo.nodes[i.peer_node].kind != "pod"), None)


def from_file(topo, machines: list[Machine] | None) -> tuple[dict[str, str], list[Machine]]:
    """The file's placement: node -> machine, every node placed (a segment's entry covers its
    members without one of their own; a pod goes with its node)."""
    doc, entries = topo.doc, topo.placement
    if machines is not None:
        known = {m.name for m in machines}
        for name, (machine, at) in entries.items():
            if machine not in known:
                raise doc.error(at, f"machine {machine} is not one of --machines {name_list(sorted(known))}")
    where: dict[str, str] = {}
    by_segment: dict[str, tuple[str, tuple]] = {}
    for name, (machine, at) in entries.items():
        if topo.nodes[name].kind == "switch":
            by_segment[name] = (machine, at)
        where[name] = machine
    for node in topo.nodes.values():
        if node.name in entries or node.kind in ("switch", "pod"):
            continue
        chosen = None
        for seg in _segments_of(node):
            if seg not in by_segment:
                continue
            machine, at = by_segment[seg]
            if chosen is not None and chosen[0] != machine:
                raise doc.error(at, f"{node.name} is a member of segments {chosen[1]} ({chosen[0]}) and {seg} "
                                    f"({machine}); give {node.name} an entry of its own")
            chosen = (machine, seg)
        if chosen is not None:
            where[node.name] = chosen[0]
    for node in topo.nodes.values():
        if node.kind == "pod":
            host = _host_of(topo, node)
            if host in where:
                where[node.name] = where[host]
    missing = [n for n in topo.nodes if n not in where]
    if missing:
        raise doc.error(("placement",), f"{len(missing):,} node(s) have no machine: {name_list(missing)} (give "
                                        f"each node or its segment an entry, or drop placement: and use --spread)")
    if machines is None:
        machines = [Machine(m) for m in dict.fromkeys(machine for machine, _ in entries.values())]
    return where, machines


def groups(topo) -> list[list[str]]:
    """The units `spread` never splits: a segment with its members (a rack with its leaf),
    a cluster node with its pods; nodes in file order, groups by their first node."""
    parent = {n: n for n in topo.nodes}

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(a, b):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[rb] = ra
    for node in topo.nodes.values():
        for seg in _segments_of(node):
            union(seg, node.name)
        if node.kind == "pod":
            host = _host_of(topo, node)
            if host is not None:
                union(host, node.name)
    out: dict[str, list[str]] = {}
    for name in topo.nodes:
        out.setdefault(find(name), []).append(name)
    return list(out.values())


def spread(topo, machines: list[Machine]) -> dict[str, str]:
    """A partition of the lab over `machines`: segments and racks stay whole (groups()), as
    few point-to-point links cut as possible, namespaces balanced (no machine above an even
    share + 5 %; a group bigger than that goes to the least loaded machine).  Greedy, then single moves that cut
    fewer links while the balance holds (Kernighan-Lin's move step, without swaps); every
    tie broken by size, then file order, then the machines' order: deterministic."""
    units = groups(topo)
    unit_of = {n: i for i, g in enumerate(units) for n in g}
    links: list[dict[int, int]] = [{} for _ in units]     # unit -> {neighbour unit: links between}
    for node in topo.nodes.values():
        for iface in node.ifaces:
            u, v = unit_of[node.name], unit_of[iface.peer_node]
            if u != v:
                links[u][v] = links[u].get(v, 0) + 1       # counted from both ends: symmetric
    k = len(machines)
    total = sum(len(g) for g in units)
    cap = math.ceil(total * BALANCE_SLACK / k)   # a group bigger than that goes where least is
    load = [0] * k
    at: list[int | None] = [None] * len(units)
    order = sorted(range(len(units)), key=lambda i: (-len(units[i]), i))

    def pull(u, m):         # links from u to units already on machine m
        return sum(c for v, c in links[u].items() if at[v] == m)

    for u in order:
        fits = [m for m in range(k) if load[m] + len(units[u]) <= cap]
        m = min(fits, key=lambda m: (-pull(u, m), load[m], m)) if fits else min(range(k), key=lambda m: (load[m], m))
        at[u] = m
        load[m] += len(units[u])
    for _ in range(20):     # each move cuts at least one link fewer: this ends
        moved = False
        for u in order:
            here, size = at[u], len(units[u])
            best = max((m for m in range(k) if m != here and load[m] + size <= cap),
                       key=lambda m: (pull(u, m), -load[m], -m), default=None)
            if best is not None and pull(u, best) > pull(u, here):
                load[here] -= size
                load[best] += size
                at[u] = best
                moved = True
        if not moved:
            break
    return {n: machines[at[unit_of[n]]].name for n in topo.nodes}


# ---- one plan -> a plan per machine + stitches ---------------------------------------------

def split(plan: P.Plan, topo, where: dict[str, str], machines: list[Machine], port: int,
          vni_base: int = VNI_BASE) -> tuple[dict[str, P.Plan], list[Stitch]]:
    node_of = {n.ns: n.name for n in topo.nodes.values()}
    machine_of = {ns: where[node] for ns, node in node_of.items()}
    plans = {m.name: P.Plan(lab=plan.lab, hosts=dict(plan.hosts)) for m in machines}
    stitches: list[Stitch] = []
    for op in plan.ops:
        here = machine_of[op.ns]
        if isinstance(op, P.Link) and op.peer is not None and machine_of[op.peer.ns] != here:
            vni = vni_base + len(stitches)
            if vni > MAX_VNI:
                raise UsageError(f"{len(stitches) + 1:,} stitches do not fit the VNIs from {vni_base} "
                                 f"to {MAX_VNI:,}")
            stitches.append(Stitch(
                vni=vni, port=port,
                a=StitchEnd(here, node_of[op.ns], op.ns, op.name, op.mac, op.mtu, op.master),
                b=StitchEnd(machine_of[op.peer.ns], node_of[op.peer.ns], op.peer.ns, op.peer.name, op.peer.mac,
                            op.peer.mtu, None)))
            continue
        plans[here].add(op)
    for key, value in plan.notes.items():   # a node's (subnet.env) to its machine, the lab's (_notices) to all
        for m in [where[key]] if key in where else plans:
            plans[m].notes[key] = value
    return plans, stitches


def _flannel_inside(topo, stitches: list[Stitch]) -> tuple | None:
    """(backend type, its overhead) when the lab has an encapsulating cluster: its packets
    between nodes may cross any stitch (worker1 -> worker3 crosses leaf01 -- spine)."""
    cluster = topo.cluster
    if cluster is None or not stitches or not backends.get(cluster.backend.type).overhead:
        return None
    return cluster.backend.type, backends.get(cluster.backend.type).overhead


def place(topo, plan: P.Plan, machines: list[Machine] | None, *, port: int = DEFAULT_STITCH_PORT,
          underlay_mtu: int = DEFAULT_UNDERLAY_MTU, vni_base: int = VNI_BASE) -> Placed:
    """The lab over machines: the file's placement if it has one (machines, when given, must
    include every machine it names), else spread over `machines`."""
    if not 1 <= port <= 65535:
        raise UsageError(f"--stitch-port {port}: a UDP port is 1 to 65535")
    if not MIN_MTU <= underlay_mtu <= MAX_MTU:
        raise UsageError(f"--underlay-mtu {underlay_mtu}: an MTU is {MIN_MTU} to {MAX_MTU}")
    if topo.placement:
        where, machines = from_file(topo, machines)
        source = "placement:"
    elif machines:
        where, source = spread(topo, machines), "--spread"
    else:
        raise UsageError("this lab has no placement: section; name the machines to spread it over "
                         "(--machines m1,m2 for validate, --spread m1,m2 for up)")
    plans, stitches = split(plan, topo, where, machines, port, vni_base)
    placed = Placed(lab=plan.lab, machines=machines, where=where, source=source, plans=plans, stitches=stitches,
                    port=port, underlay_mtu=underlay_mtu, flannel=_flannel_inside(topo, stitches))
    worst = max(stitches, key=lambda s: s.underlay_mtu, default=None)
    if worst is not None and worst.underlay_mtu > underlay_mtu:
        inner = (f"; a pod's packet under flannel {placed.flannel[0]} carries {placed.flannel[1] + STITCH_OVERHEAD} "
                 f"bytes of headers across it" if placed.flannel else "")
        raise UsageError(f"--underlay-mtu {underlay_mtu}: the stitch {describe(worst)} carries frames of "
                         f"{worst.underlay_mtu} bytes (its MTU {worst.mtu} + {STITCH_OVERHEAD} of VXLAN{inner}); "
                         f"give the lab's links an MTU of at most {underlay_mtu - STITCH_OVERHEAD}, or an "
                         f"underlay that carries {worst.underlay_mtu}")
    return placed


# ---- what `validate --machines` and `up --spread --dry-run` print ---------------------------

def as_dict(placed: Placed) -> dict:
    """`up --spread --dry-run --json`."""
    return dict(lab=placed.lab, source=placed.source, dry_run=True, port=placed.port,
                underlay_mtu=placed.underlay_mtu,
                machines=[dict(name=m.name, address=m.address, nodes=[n for n, w in placed.where.items() if w == m.name],
                               operations=len(placed.plans[m.name].ops)) for m in placed.machines],
                stitches=[dict(vni=s.vni, port=s.port, mtu=s.mtu, underlay_mtu=s.underlay_mtu,
                               ends=[dict(machine=e.machine, node=e.node, dev=e.dev) for e in (s.a, s.b)])
                          for s in placed.stitches])


def describe(s: Stitch) -> str:
    return f"{s.a.node}:{s.a.dev} -- {s.b.node}:{s.b.dev} ({s.a.machine} -> {s.b.machine})"


STITCHES_LISTED = 12            # a lab with many more: the first ones, and the count per pair of machines


def render(placed: Placed, width: int | None = 80) -> list[str]:
    """The placement and the cross-machine links, readable at 80 columns (None: unwrapped)."""
    by_machine: dict[str, list[str]] = {m.name: [] for m in placed.machines}
    for node, machine in placed.where.items():
        by_machine[machine].append(node)
    lines = [f"lab {placed.lab} over {plural(len(placed.machines), 'machine')} (from {placed.source}):"]
    name_w = max(len(m.name) for m in placed.machines)
    for m in placed.machines:
        nodes = by_machine[m.name]
        count = f"{len(nodes):,} namespace{'' if len(nodes) == 1 else 's'}"
        head = f"  {m.name:<{name_w}}  {m.address or 'address from etcd':<17}  {count:>16}"
        names = name_list(nodes, 12 if len(nodes) <= 12 else 6)      # a big machine: a few, and the count
        lines.append(wrap(f"{head}  {names}" if nodes else head, width, len(head) + 2))
    n = len(placed.stitches)
    if not n:
        lines.append("cross-machine links: none")
        return lines
    lines.append(wrap(f"cross-machine links: {plural(n, 'VXLAN stitch', 'VXLAN stitches')}, UDP port "
                      f"{placed.port} (VNIs proposed; etcd allocates them at up):", width, 4))
    shown = placed.stitches if n <= STITCHES_LISTED + 4 else placed.stitches[:STITCHES_LISTED]
    if len(shown) < n:          # a big lab: how the cut falls between machines, then a sample
        pairs: dict[tuple[str, str], int] = {}
        for s in placed.stitches:
            key = tuple(sorted((s.a.machine, s.b.machine), key=[m.name for m in placed.machines].index))
            pairs[key] = pairs.get(key, 0) + 1
        lines.append(wrap("  between " + ", ".join(f"{a} and {b}: {c:,}" for (a, b), c in pairs.items()),
                          width, 4, sep=", "))
    for s in shown:
        lines.append(wrap(f"  VNI {s.vni}  {describe(s)}  mtu {s.mtu}", width, 6))
    if len(shown) < n:
        lines.append(f"  ... and {n - len(shown):,} more (--json lists every stitch)")
    worst = max(s.underlay_mtu for s in placed.stitches)
    inner = (f"; flannel {placed.flannel[0]} inside a stitch: {placed.flannel[1] + STITCH_OVERHEAD} bytes of "
             f"headers on a pod's packet" if placed.flannel else "")
    lines.append(wrap(f"underlay MTU: {worst} needed ({worst - STITCH_OVERHEAD} + {STITCH_OVERHEAD} of VXLAN"
                      f"{inner}), {placed.underlay_mtu} available", width, 4))
    return lines


# ---- one machine's shard: what its agent applies ----------------------------------------------

def shard(placed: Placed, machine: str, addresses: dict[str, str], vnis: list[int],
          underlay_dev: str | None = None) -> P.Plan:
    """Machine `machine`'s plan with its stitch ends as VXLAN links: each made like the veth
    end it replaces (name, MAC, MTU, bridge), VNI `vnis[i]` for stitch i (etcd's, in
    stitch order), from this machine's underlay address to the peer machine's, no learning
    (one peer), created from the machine's own namespace (apply/applier.make_stitches)."""
    if len(vnis) != len(placed.stitches):
        raise UsageError(f"{len(vnis)} VNIs for {len(placed.stitches)} stitches")
    plan = placed.plans[machine]
    for s, vni in zip(placed.stitches, vnis):
        for end, other in ((s.a, s.b), (s.b, s.a)):
            if end.machine != machine:
                continue
            opts = [("id", vni), ("local", addresses[machine]), ("remote", addresses[other.machine]),
                    ("port", s.port), ("learning", False), ("underlay", True)]
            if underlay_dev:
                opts.append(("dev", underlay_dev))
            plan.add(P.Link(ns=end.ns, name=end.dev, kind="vxlan", mtu=end.mtu, mac=end.mac, master=end.master,
                            vxlan=tuple(opts)))
    return plan
