"""What `nslab up` changes in a running lab: the difference between the plan it applied
(the record's) and the plan of the file now, as work to do (pure: no root, no kernel).

Ops are frozen dataclasses, so the difference is a set difference: an op in the old plan
only is removed, one in the new plan only is added, a changed op is both.  Each removed op
in a namespace that stays is undone in place where nslab has a precise inverse (route,
address, neighbour and FDB entries are deleted, a veth is deleted, a qdisc or a sysctl,
bridge-port, checksum setting is overwritten by its new value or the root qdisc deleted);
anything else recreates its namespace: a changed Netns op (a container's image), a
bridge/vxlan/ipip/TUN device changed or removed (the backend's type, VNI or port), an
iptables text changed (iptables-restore --noflush cannot take rules back), a sysctl,
`up`, hairpin or checksum setting removed (its default is unknown).  Whatever dies with
a device that goes (a deleted veth's far end, every device of a recreated namespace and
its veths' far ends) is applied again from the new plan (apply.containers.ops_touching's
rule, for a set of dying devices)."""
from __future__ import annotations

import collections
from dataclasses import dataclass, field

from .. import plan as P
from .script import render_op

PROCESS_OPS = (P.Serve, P.Daemon)
UNDONE = (P.Route, P.Addr, P.Neigh, P.Fdb)              # deleted in place (apply.applier.undo)
OVERWRITTEN = {P.Sysctl: lambda op: (op.ns, op.key), P.BridgePort: lambda op: (op.ns, op.dev),
               P.TxChecksum: lambda op: (op.ns, op.dev), P.Qdisc: lambda op: (op.ns, op.dev)}


@dataclass
class Converge:
    """The work a converge does, and the difference it comes from (for --dry-run)."""
    added: list = field(default_factory=list)         # ops of the new plan only
    removed: list = field(default_factory=list)       # ops of the old plan only
    create: list = field(default_factory=list)        # namespaces of the new plan only
    remove: list = field(default_factory=list)        # namespaces of the old plan only (and forced, gone)
    recreate: dict = field(default_factory=dict)      # namespace -> why it cannot change in place
    undo: list = field(default_factory=list)          # old ops undone in place (namespaces kept)
    apply: list = field(default_factory=list)         # new ops to apply (plan order)
    agent: bool = False                               # the lab agent restarts (Serve/Daemon changed)
    hosts: bool = False                               # the hosts file changes
    notes: bool = False                               # the per-node facts change
    dying: set = field(default_factory=set)           # (ns, dev) deleted on the way (re-applied)

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.recreate or self.remove or self.create or self.hosts
                    or self.notes or self.agent)

    @property
    def touched(self) -> set:
        """Every namespace this converge changes (a converge killed half-way: these are
        recreated by the next one, whatever state they were left in)."""
        out = set(self.create) | set(self.remove) | set(self.recreate)
        for op in self.added + self.removed:
            out |= set(namespaces_of(op))
        return out


def namespaces_of(op) -> tuple:
    if isinstance(op, P.Link) and op.peer is not None:
        return (op.ns, op.peer.ns)
    return (op.ns,)


def touches(op, dying: set) -> bool:
    """Whether `op` names a device of `dying` ((ns, dev) pairs): applied again once it is back."""
    if isinstance(op, P.Link):
        return (op.ns, op.name) in dying or (op.peer is not None and (op.peer.ns, op.peer.name) in dying) \
            or (op.ns, op.master) in dying
    if isinstance(op, P.Route):
        return any((op.ns, h.dev) in dying for h in op.nexthops)
    if isinstance(op, P.Sysctl):
        levels = op.key.split(".")
        return len(levels) > 4 and (op.ns, levels[3].replace("/", ".")) in dying
    if isinstance(op, PROCESS_OPS):
        return False
    return (op.ns, getattr(op, "dev", None)) in dying


def devices(plan_ops, ns_set: set) -> set:
    """(ns, dev) of every device the ops make in the namespaces of ns_set, with the far
    ends of their veths (which die with them)."""
    out = set()
    for op in plan_ops:
        if isinstance(op, P.Link):
            ends = {(op.ns, op.name)} | ({(op.peer.ns, op.peer.name)} if op.peer else set())
            if any(ns in ns_set for ns, _ in ends):
                out |= ends
    return out


BUILTIN_CHAINS = {"filter": ("INPUT", "FORWARD", "OUTPUT"), "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
                  "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
                  "raw": ("PREROUTING", "OUTPUT"), "security": ("INPUT", "FORWARD", "OUTPUT")}


def _tables(texts) -> list[str]:
    return sorted({line[1:].strip() for t in texts for line in t.splitlines() if line.startswith("*")})


def iptables_reset(ns: str, texts: list[str]) -> P.Iptables:
    """iptables-restore text that returns the tables `texts` use to a fresh namespace's."""
    return P.Iptables(ns, "".join(f"*{t}\n-F\n-X\n" + "".join(f":{c} ACCEPT [0:0]\n" for c in BUILTIN_CHAINS[t])
                                  + "COMMIT\n" for t in _tables(texts)))


def _why_not_in_place(op, new_keys: set) -> str | None:
    """None if `op` (removed, in a namespace that stays) can be undone in place, else why not."""
    if isinstance(op, P.Netns):
        return "its container changed" if op.container is not None else "its namespace changed"
    if isinstance(op, UNDONE):
        return None
    if isinstance(op, P.Link):
        return None if op.kind == "veth" else f"{op.kind} device {op.name} changed or went"
    if type(op) in OVERWRITTEN:
        if isinstance(op, P.Qdisc) or OVERWRITTEN[type(op)](op) in new_keys:
            return None
        return f"{describe(op)} went (its default is not known)"
    if isinstance(op, P.Up):
        return f"{op.dev} is no longer brought up"
    if isinstance(op, P.Iptables):
        return None if set(_tables([op.text])) <= set(BUILTIN_CHAINS) else "its iptables rules changed"
    if isinstance(op, PROCESS_OPS):
        return None
    return f"{type(op).__name__} cannot be undone in place"


def _key(op):
    """What makes two ops the same kernel work: a veth's Peer.address is only for display
    (the peer's Addr op sets it), so an address change does not replace the veth."""
    if isinstance(op, P.Link) and op.peer is not None:
        p = op.peer
        return (op.ns, op.name, op.kind, op.mtu, op.mac, op.master, p.ns, p.name, p.mtu, p.mac, op.vxlan, op.ipip,
                op.stage)
    return op


def _changed(old: list, new: list) -> tuple[list, list]:
    """(ops of `new` only, ops of `old` only), by _key."""
    old_k, new_k = [_key(op) for op in old], [_key(op) for op in new]
    old_set, new_set = set(old_k), set(new_k)
    return [op for op, k in zip(new, new_k) if k not in old_set], [op for op, k in zip(old, old_k) if k not in new_set]


def _by_type(ops: list) -> collections.defaultdict:
    """The ops by their type, each list in plan order."""
    by = collections.defaultdict(list)
    for op in ops:
        by[type(op)].append(op)
    return by


def compute(old: P.Plan, new: P.Plan, force=(), lines: tuple | None = None) -> Converge:
    """The converge from `old` (applied) to `new`.  `force`: namespaces in an unknown state
    (touched by a converge that was interrupted): recreated if the new plan has them,
    else removed.  `lines`: (old's, new's) plan.op_lines: an op whose line the other plan
    has is in both (equal ops, equal lines), and only the ops whose lines differ are
    compared as ops (a 1,000-pod plan has ~12,000 ops; hashing them is most of a diff)."""
    if lines is None:
        added, removed = _changed(old.ops, new.ops)
    else:
        old_lines, new_lines = set(lines[0]), set(lines[1])
        added, removed = _changed([op for op, line in zip(old.ops, lines[0]) if line not in new_lines],
                                  [op for op, line in zip(new.ops, lines[1]) if line not in old_lines])
    c = Converge(added=added, removed=removed)
    old_by, new_by = _by_type(old.ops), _by_type(new.ops)     # one walk each (~12,000 ops for 1,000 pods)
    old_ns, new_ns = [op.ns for op in old_by[P.Netns]], [op.ns for op in new_by[P.Netns]]
    old_nss, new_nss = set(old_ns), set(new_ns)
    c.create = [ns for ns in new_ns if ns not in old_nss]
    c.remove = [ns for ns in old_ns if ns not in new_nss] + sorted(set(force) - new_nss - old_nss)
    for ns in force:
        if ns in new_nss and ns in old_nss:
            c.recreate[ns] = "an earlier converge was interrupted"
    gone = set(c.remove) | set(c.create)   # created afresh: their old state does not matter
    new_keys = {key(op) for kind, key in OVERWRITTEN.items() for op in new_by[kind]}
    removed_veths = [op for op in c.removed if isinstance(op, P.Link) and op.kind == "veth"]
    veth_ends = devices(removed_veths, set(old_ns) | set(force))
    for op in c.removed:
        kept = [ns for ns in namespaces_of(op) if ns not in gone]
        if not kept or (not isinstance(op, P.Link) and touches(op, veth_ends)):
            continue          # goes with its namespace, or with its device
        why = _why_not_in_place(op, new_keys)
        if why is not None:
            for ns in kept:
                c.recreate.setdefault(ns, why)
    # a deleted veth (changed or gone): both ends die; recreated and removed namespaces'
    # devices too.  What names a dying device in a kept namespace is applied again; a
    # non-veth device whose lower device dies (vxlan dev) recreates its namespace.
    while True:
        dying = devices(old_by[P.Link], set(c.recreate) | gone)
        dying |= veth_ends
        rebuilt = set(c.recreate) | gone
        more = {op.ns for op in new_by[P.Link] if op.kind != "veth" and op.ns not in rebuilt
                and (op.ns, dict(op.vxlan).get("dev")) in dying}
        if not more:
            break
        for ns in more:
            c.recreate[ns] = "the device under its vxlan device is replaced"
    c.dying = dying
    rebuilt = set(c.recreate) | set(c.create)
    added = {id(op) for op in c.added}       # ops of new.ops: by identity, no hashing
    c.apply = [op for op in new.ops if not isinstance(op, PROCESS_OPS)
               and (id(op) in added or op.ns in rebuilt or (dying and touches(op, dying))
                    or (isinstance(op, P.Link) and op.peer is not None and op.peer.ns in rebuilt))]
    c.undo = [op for op in c.removed if not isinstance(op, (P.Netns,) + PROCESS_OPS)
              and not any(ns in rebuilt or ns in c.remove for ns in namespaces_of(op))
              and not (not isinstance(op, P.Link) and touches(op, dying))
              and (isinstance(op, UNDONE + (P.Link,)) or (isinstance(op, P.Qdisc) and (op.ns, op.dev) not in new_keys))]
    # an address deleted in place takes the routes through its device whose gateway it
    # reached: those of the new plan are deleted (if still there) and added again
    readdressed = {(op.ns, op.dev) for op in c.undo if isinstance(op, P.Addr)}
    applied = {id(op) for op in c.apply}
    again = [op for op in (new_by[P.Route] if readdressed else ()) if id(op) not in applied
             and any((op.ns, h.dev) in readdressed for h in op.nexthops)]
    c.undo += again
    c.apply += again
    # iptables text changed in a kept namespace: its tables are reset (flushed, user chains
    # deleted, built-in policies ACCEPT as in a fresh namespace), then its whole new text
    # loaded (iptables-restore --noflush cannot take single rules back)
    gone_or_rebuilt = rebuilt | set(c.remove)
    for ns in dict.fromkeys(op.ns for op in c.removed if isinstance(op, P.Iptables) and op.ns not in gone_or_rebuilt):
        texts = [op for op in new_by[P.Iptables] if op.ns == ns]
        olds = [op.text for op in old_by[P.Iptables] if op.ns == ns]
        applied = {id(op) for op in c.apply}
        c.apply = [iptables_reset(ns, olds + [op.text for op in texts])] + c.apply + \
            [op for op in texts if id(op) not in applied]
    procs = [op for op in c.added + c.removed if isinstance(op, PROCESS_OPS)]
    c.agent = bool(procs) or any(op.ns in gone_or_rebuilt for by in (new_by, old_by) for kind in PROCESS_OPS
                                 for op in by[kind])
    c.hosts = old.hosts != new.hosts
    c.notes = old.notes != new.notes
    return c


# ---- --dry-run ---------------------------------------------------------------------------------

_PREFIXES = ("ip -n ", "ip netns exec ", "bridge -n ")


def describe(op) -> str:
    """One short line for an op, as iproute2 would say it, without its namespace."""
    if isinstance(op, P.Netns):
        return f"container {op.container.image}" if op.container is not None else "namespace"
    if isinstance(op, P.Link):
        to = f" to {op.peer.ns.split('.', 1)[-1]}:{op.peer.name}" if op.peer else ""
        master = f" master {op.master}" if op.master else ""
        opts = " ".join(f"{k} {v}" for k, v in op.vxlan + op.ipip if v not in (None, False))
        return f"link {op.name} {op.kind}{to} mtu {op.mtu}{master}" + (f" ({opts})" if opts else "")
    if isinstance(op, P.Iptables):
        return f"iptables rules ({len(op.text.splitlines())} lines)"
    if isinstance(op, P.Nftables):
        return f"nftables rules ({len(op.text.splitlines())} lines)"
    if isinstance(op, P.Ipset):
        return f"ipsets ({len(op.text.splitlines())} lines)"
    if isinstance(op, P.Ipvs):
        return f"IPVS servers ({len(op.text.splitlines())} lines)"
    if isinstance(op, P.Serve):
        return f"serve {op.kind} on :{op.port}"
    if isinstance(op, P.Daemon):
        port = dict(op.config).get("port")
        return op.what if op.kind == "dns" else f"{op.kind} dataplane on {op.dev}" + (f" (port {port})" if port else "")
    line = render_op(op)[0]
    for prefix in _PREFIXES:
        if line.startswith(prefix):
            rest = line[len(prefix):]
            return rest.split(" ", 1)[1] if " " in rest else rest
    return line


def render(c: Converge, node_of: dict) -> list[str]:
    """--dry-run's lines: per node, what is added (+), removed (-), recreated (~)."""
    if c.empty:
        return ["no changes"]
    per: dict[str, list[str]] = {}

    def node(ns: str) -> str:
        return node_of.get(ns, ns.split(".", 1)[-1])
    for op in c.removed:
        if op.ns not in c.remove and not isinstance(op, P.Netns):
            per.setdefault(op.ns, []).append(f"  - {describe(op)}")
    for op in c.added:
        if op.ns not in c.create and not isinstance(op, P.Netns):
            per.setdefault(op.ns, []).append(f"  + {describe(op)}")
    lines = []
    for ns in c.create:
        n_ops = sum(1 for op in c.added if op.ns == ns)
        lines.append(f"+ {node(ns)}: new node ({n_ops} objects)")
    for ns in c.remove:
        lines.append(f"- {node(ns)}: removed")
    for ns in sorted(per, key=node):
        if ns in c.remove or ns in c.create:
            continue
        how = f"recreated: {c.recreate[ns]}" if ns in c.recreate else "changed in place"
        lines.append(f"~ {node(ns)}: {how}")
        lines += per[ns]
    for ns in sorted(set(c.recreate) - set(per), key=node):
        lines.append(f"~ {node(ns)}: recreated: {c.recreate[ns]}")
    added = {id(op) for op in c.added}
    again = sorted({op.ns for op in c.apply if id(op) not in added} - set(c.recreate) - set(c.create))
    if again:
        lines.append(f"  (applied again, where devices or iptables tables are replaced: "
                     f"{', '.join(node(ns) for ns in again)})")
    if c.hosts:
        lines.append("~ hosts file (node names) rewritten")
    if c.agent:
        lines.append("~ the lab agent restarts (services and dataplanes)")
    return lines
