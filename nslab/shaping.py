"""Link conditions on a running lab: `nslab link set / show / clear`.

The kernel holds them (a root qdisc per interface, apply/qdisc.py); the lab's record holds
what was changed since `up` (info["_conditions"]: "node:iface" -> the mapping, {} for
cleared), so `show` and `graph` tell declared from changed and a later `link set --delay`
keeps a rate set before.  `down` needs nothing: the qdiscs go with the namespaces.
"""
from __future__ import annotations

from . import lab as labmod
from . import state
from .apply import qdisc
from .errors import UsageError
from .model.units import Conditions, ConditionsError

RECORD_KEY = "_conditions"


def recorded(st: state.LabState) -> dict[str, dict]:
    value = st.info.get(RECORD_KEY, {})
    return value if isinstance(value, dict) else {}


def _target(lab: str, target: str) -> tuple[str, str, str]:
    """(node, iface, namespace) of NODE:IFACE in a running lab."""
    node, sep, iface = target.partition(":")
    if not sep or not node or not iface:
        raise UsageError(f"{target!r} is not NODE:IFACE (e.g. leaf02:eth0)")
    return node, iface, labmod.node_namespace(lab, node)


def current(lab: str, node: str, iface: str, st: state.LabState) -> Conditions | None:
    """What the lab says the interface has: a change recorded since up, else the topology's."""
    changed = recorded(st).get(f"{node}:{iface}")
    if changed is not None:
        return Conditions.parse(changed) if changed else None
    topo_node = labmod.topology(lab, st).nodes.get(node)
    found = topo_node.iface(iface) if topo_node is not None else None
    return found.conditions if found is not None else None


def _device(sock, ns: str, iface: str) -> tuple[int, int]:
    """(ifindex, mtu) of iface in the namespace of sock."""
    for index, (name, mtu) in qdisc.links(sock).items():
        if name == iface:
            return index, mtu
    raise UsageError(f"namespace {ns} has no interface {iface!r}")


def set_conditions(lab: str, target: str, values: dict, without_netem: bool = False) -> tuple[Conditions, str | None]:
    """Set conditions on NODE:IFACE on top of what it has (a new --delay keeps the rate).
    Returns (what the kernel now holds, a notice or None).  No netem: KernelFeatureError
    before anything changes, unless without_netem (then the rate part alone)."""
    node, iface, ns = _target(lab, target)
    try:
        change = Conditions.parse(values, check=False)
    except ConditionsError as e:
        raise UsageError(f"--{e.key}: {e}" if e.key else str(e)) from None
    if not values:
        raise UsageError("say what to set: --rate, --delay, --jitter, --loss, --limit or --burst")
    st = state.load(lab)
    base = current(lab, node, iface, st)
    if base is not None and change.needs_netem and change.burst is None:
        base = Conditions(**{**base.__dict__, "burst": None})    # netem carries the rate, without a bucket
    try:
        cond = base.merged(change) if base is not None else change
        cond.check()
    except ConditionsError as e:
        raise UsageError(f"{e} (on top of what {target} has: {base.describe()})") from None
    notice = None
    if cond.needs_netem and not qdisc.netem_available():
        if not without_netem:
            qdisc.require([cond], hint="--without-netem sets the rate alone")
        cond, notice = cond.without_netem(), (f"this kernel has no netem qdisc: delay, jitter and loss left out "
                                              f"on {target} (--without-netem)")
        if cond.empty:
            raise UsageError(f"nothing left to set on {target} without netem: give a --rate")
    sock = qdisc.open_socket(ns)
    try:
        index, mtu = _device(sock, ns, iface)
        try:
            qdisc.apply(sock, [(iface, index, cond)], mtu=mtu, where=ns)
        except ConditionsError as e:         # what only the device can tell (a burst below its frame)
            raise UsageError(f"--{e.key} on {target}: {e}" if e.key else f"{target}: {e}") from None
    finally:
        sock.close()
    state.update(lab, lambda s: s.info.setdefault(RECORD_KEY, {}).__setitem__(f"{node}:{iface}", cond.to_mapping()))
    return cond, notice


def clear(lab: str, target: str) -> None:
    """NODE:IFACE back to the kernel's default queue (declared conditions included)."""
    node, iface, ns = _target(lab, target)
    sock = qdisc.open_socket(ns)
    try:
        index, _mtu = _device(sock, ns, iface)
        qdisc.clear(sock, [(iface, index)], where=ns)
    finally:
        sock.close()
    state.update(lab, lambda s: s.info.setdefault(RECORD_KEY, {}).__setitem__(f"{node}:{iface}", {}))


def show(lab: str, target: str | None = None) -> list[dict]:
    """What each interface's root qdisc is, read back from the kernel: [{node, iface, kind,
    conditions}] (conditions '' where nothing is set), lab interfaces only (not lo)."""
    st = state.load(lab)
    if st is None:
        raise UsageError(f"no lab named {lab!r} is running")
    node_name, _, only = (target or "").partition(":")
    nodes = [node_name] if node_name else list(st.nodes)
    rows = []
    for node in nodes:
        ns = labmod.node_namespace(lab, node)
        sock = qdisc.open_socket(ns)
        try:
            read = qdisc.read(sock)
            names = [name for name, _mtu in qdisc.links(sock).values() if name != "lo"]
        finally:
            sock.close()
        if only and only not in names:
            raise UsageError(f"namespace {ns} has no interface {only!r}")
        for name in sorted(names):
            if only and name != only:
                continue
            q = read.get(name)
            shaped = q is not None and q.conditions is not None
            rows.append(dict(node=node, iface=name, kind=q.kind if q is not None else "noqueue",
                             conditions=q.describe() if shaped else ""))
    return rows


def apply_recorded(topo, st: state.LabState) -> None:
    """The topology's interfaces with the changes `link set/clear` recorded (for graph)."""
    for key, mapping in recorded(st).items():
        node, _, iface = key.partition(":")
        found = topo.nodes[node].iface(iface) if node in topo.nodes else None
        if found is not None:
            found.conditions = Conditions.parse(mapping) if mapping else None
