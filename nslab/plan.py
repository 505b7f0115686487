"""The plan: an ordered list of kernel operations, pure data.

nslab/compile/ produces it from a model; nslab/apply/ executes it through netlink, batched per
namespace and stage; compile/script.py renders it as the iproute2 commands the notes teach.
Each operation names the namespace it acts in.  Stages order the work across namespaces
(all namespaces exist before any veth is created across them, all links exist before a
route names one); inside a stage and namespace the plan order is kept (flannel's
neighbour -> FDB -> route order is plan order).
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import types
import typing
from dataclasses import dataclass, field

STAGE_NAMESPACE, STAGE_LINK, STAGE_DEVICE, STAGE_CONFIG, STAGE_ROUTE, STAGE_PROCESS = range(6)


@dataclass(frozen=True)
class Container:
    """A container node (nslab/containers.py): started with `--network none`, then its
    network namespace is named <lab>.<node> and wired like any other."""
    image: str
    command: tuple = ()            # argv; empty: the image's own CMD
    env: tuple = ()                # (key, value) pairs
    cap_add: tuple = ()


@dataclass(frozen=True)
class Netns:
    ns: str
    node: str
    container: Container | None = None     # the namespace is a container's (`image:`)
    stage = STAGE_NAMESPACE


@dataclass(frozen=True)
class Sysctl:
    ns: str
    key: str          # sysctl(8) notation; '/' stands for a dot inside a name
    value: str
    stage: int = STAGE_NAMESPACE   # STAGE_CONFIG for per-interface keys (the interface must exist)


@dataclass(frozen=True)
class Peer:
    ns: str
    name: str
    mtu: int
    mac: str
    address: str | None = None     # only for display; addresses are Addr ops


@dataclass(frozen=True)
class Link:
    """Create a device.  kind: veth (with peer, both ends created in their namespaces),
    bridge, vxlan (options in vxlan), ipip (options in ipip), tun (a persistent TUN device
    owned by the lab: created with TUNSETIFF + TUNSETPERSIST inside the namespace)."""
    ns: str
    name: str
    kind: str
    mtu: int
    mac: str | None = None
    master: str | None = None
    peer: Peer | None = None
    vxlan: tuple = ()              # (key, value) pairs: id, local, port, dev, learning, gbp
    ipip: tuple = ()               # (key, value) pairs: local, remote (None = any), pmtudisc
    stage: int = STAGE_LINK


@dataclass(frozen=True)
class BridgePort:
    ns: str
    dev: str
    hairpin: bool
    stage = STAGE_CONFIG


@dataclass(frozen=True)
class Addr:
    ns: str
    dev: str
    address: str                   # CIDR
    peer: str | None = None        # point-to-point peer address
    stage = STAGE_CONFIG


@dataclass(frozen=True)
class Up:
    ns: str
    dev: str
    stage = STAGE_CONFIG


@dataclass(frozen=True)
class Nexthop:
    via: str | None
    dev: str


@dataclass(frozen=True)
class Route:
    ns: str
    dst: str                       # CIDR, 0.0.0.0/0 for default
    nexthops: tuple[Nexthop, ...]
    onlink: bool = False
    scope: str | None = None       # None: link without a gateway, else global; "global" forces it
    stage = STAGE_ROUTE


@dataclass(frozen=True)
class Neigh:
    """A permanent neighbour entry (flannel writes one per remote VTEP)."""
    ns: str
    dev: str
    address: str
    lladdr: str
    stage = STAGE_ROUTE


@dataclass(frozen=True)
class Fdb:
    """A permanent FDB entry on a vxlan device: MAC -> remote VTEP IP (`self permanent`)."""
    ns: str
    dev: str
    lladdr: str
    dst: str
    stage = STAGE_ROUTE


@dataclass(frozen=True)
class Serve:
    """A service the lab agent runs in a namespace (one agent process for the whole lab)."""
    ns: str
    node: str
    kind: str                      # http
    port: int = 80
    stage = STAGE_PROCESS


@dataclass(frozen=True)
class TxChecksum:
    """Turn a device's transmit checksum offload on or off (`ethtool -K DEV tx off`).
    Off, the kernel completes checksums (and segments GSO packets) before the device, as
    a real NIC would; needed where a kernel ipip node talks to a userspace encapsulator,
    whose raw socket would otherwise read the inner TCP checksum still partial."""
    ns: str
    dev: str
    on: bool
    stage = STAGE_CONFIG


@dataclass(frozen=True)
class Daemon:
    """A userspace dataplane the lab runs in a node on its TUN device `dev` (nslab/tunnel.py):
    kind udp (flannel's udp proxy) or ipip (the encapsulator standing in for kernel ipip)."""
    ns: str
    node: str
    kind: str
    dev: str
    config: tuple = ()             # (key, value) pairs, see tunnel.py
    stage = STAGE_PROCESS


@dataclass(frozen=True)
class Iptables:
    """Rules for the namespace's own netfilter tables (flannel's ip-masq, kube-proxy's
    services): `text` is iptables-restore input, loaded with one `iptables-restore
    --noflush` per namespace (apply/iptables.py).  After the routes: nothing in it names a
    device that must exist, but a lab is only half there before its routes."""
    ns: str
    text: str
    stage = STAGE_ROUTE


@dataclass
class Plan:
    lab: str
    ops: list = field(default_factory=list)
    hosts: dict[str, str] = field(default_factory=dict)     # name -> address, for /etc/hosts
    notes: dict[str, dict] = field(default_factory=dict)    # ns -> files to record (subnet.env)

    def add(self, op):
        self.ops.append(op)
        return op

    @property
    def namespaces(self) -> list[str]:
        return [op.ns for op in self.ops if isinstance(op, Netns)]

    def staged(self) -> list:
        """Operations in execution order: by stage, plan order within a stage."""
        return sorted(self.ops, key=lambda op: op.stage)


# ---- sysctl keys: what a Sysctl op may name (model checks it at validate, netns again at write) ----

# Sysctl keys nslab may set, in sysctl(8) notation: levels separated by dots, '/' for a
# dot inside a level (net.ipv4.conf.flannel/1.rp_filter).  Only settings a network
# namespace owns: in a namespace other than the host's, /proc/sys/net shows only those
# (host-wide entries are hidden or read-only there, e.g. net.core.rmem_max,
# net.netfilter.nf_conntrack_max).  These are the top levels a fresh namespace shows
# writable on Linux 6.x (`unshare -n find /proc/sys/net -perm -200`), plus mpls and sctp,
# whose tables are per namespace too when their modules are loaded.  net.core is mostly
# host-wide: only the listed keys are per namespace.
SYSCTL_PER_NETNS = ("ipv4", "ipv6", "netfilter", "bridge", "mptcp", "unix", "mpls", "sctp")
SYSCTL_PER_NETNS_CORE = ("somaxconn", "optmem_max", "txrehash", "tstamp_allow_data", "rps_default_mask",
                         "xfrm_acq_expires", "xfrm_aevent_etime", "xfrm_aevent_rseqth", "xfrm_larval_drop")
# (the error message abbreviates the xfrm_* keys: keep it in step with this list)
# One level: a safe word (no shell metacharacters, no whitespace), never starting with '.'
# or '-' once '/' is read as a dot, so never '', '.', '..' or an option.
_SYSCTL_LEVEL = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_/-]*")
SYSCTL_ROOT = "/proc/sys/net"
SLASH_DOT = str.maketrans("./", "/.")


def sysctl_key_problem(key) -> str | None:
    """Why `key` is not a per-namespace sysctl nslab may set, or None."""
    if not isinstance(key, str) or not key.startswith("net."):
        return f"only per-namespace net.* sysctls can be set, not {key!r}"
    if not re.fullmatch(r"[A-Za-z0-9_./-]+", key) or len(key) > 255:
        return f"{key!r} is not a sysctl key (letters, digits, '_', '-', '.' and '/' only)"
    levels = key.split(".")
    if not all(_SYSCTL_LEVEL.fullmatch(level) for level in levels):
        return (f"sysctl key {key} has a level that is empty or starts with '/' or '-' ('/' stands for a dot "
                f"inside a name): it must name one file under {SYSCTL_ROOT}")
    if len(levels) < 3 or levels[1] not in SYSCTL_PER_NETNS + ("core",) or \
            (levels[1] == "core" and (len(levels) != 3 or levels[2] not in SYSCTL_PER_NETNS_CORE)):
        return (f"{key} is not a per-namespace sysctl; nslab sets net.{{{','.join(SYSCTL_PER_NETNS)}}}.* "
                f"and of net.core only somaxconn, optmem_max, txrehash, tstamp_allow_data, rps_default_mask "
                f"and xfrm_*")
    path = "/proc/sys/" + key.translate(SLASH_DOT)
    if os.path.normpath(path) != path or not path.startswith(SYSCTL_ROOT + "/"):   # the rules above ensure it
        return f"{key} does not name a file under {SYSCTL_ROOT}"
    return None


# ---- the record: a plan as JSON and back (lab.up stores the plan it applied) ------------------
#
# Generic over the dataclasses above: an op is any dataclass of this module with a `stage`;
# its fields are encoded by their annotations, so a new op needs no edit here.  Reading is
# validation: the file is input (only known op types and fields, each of its annotated type).

PLAN_FORMAT = 1


def _classes() -> dict[str, type]:
    mod = sys.modules[__name__]
    return {name: cls for name, cls in vars(mod).items()
            if dataclasses.is_dataclass(cls) and isinstance(cls, type) and cls.__module__ == __name__}


def op_types() -> dict[str, type]:
    """Every operation type of a plan, by class name."""
    return {name: cls for name, cls in _classes().items() if hasattr(cls, "stage") and cls is not Plan}


_HINTS: dict[type, dict[str, object]] = {}


def _hints(cls: type) -> dict[str, object]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls, vars(sys.modules[__name__]))
    return _HINTS[cls]


def _encode(value):
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {}
        for f in dataclasses.fields(value):      # defaults left out: a 10,000-node plan stays small
            v = getattr(value, f.name)
            if f.default is not dataclasses.MISSING and v == f.default and type(v) is type(f.default):
                continue
            out[f.name] = _encode(v)
        return out
    if isinstance(value, (tuple, list)):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"cannot record a {type(value).__name__} in a plan: {value!r}")


def to_json(plan: Plan) -> str:
    """The plan as JSON text (one op per line, so a diff of two records reads well)."""
    ops = [json.dumps({"op": type(op).__name__, **_encode(op)}, sort_keys=True) for op in plan.ops]
    head = json.dumps({"format": PLAN_FORMAT, "lab": plan.lab, "hosts": plan.hosts, "notes": _encode(plan.notes)},
                      sort_keys=True)
    return head[:-1] + ', "ops": [\n' + ",\n".join(ops) + "\n]}\n"


def _what(value) -> str:
    return "null" if value is None else {list: "a list", dict: "an object", str: "a string", bool: "a boolean"}.get(
        type(value), "a number")


def _name(hint) -> str:
    return {type(None): "null", _Plain: "text, a number, a boolean, null or a list of them",
            _Json: "JSON"}.get(hint, getattr(hint, "__name__", str(hint)))


def _decode(value, hint, where: str):
    """`value` (from JSON) as type `hint`; ValueError naming `where` otherwise."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is type(None) or hint is None:
        if value is None:
            return None
    elif origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        problems = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _decode(value, arg, where)
            except ValueError as e:
                problems.append(str(e))
        raise ValueError(problems[0] if len(problems) == 1 else f"{where} is {_what(value)}, of no type it may be")
    elif hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    elif isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if isinstance(value, dict):
            return _build(hint, value, where)
    elif hint is tuple or origin is tuple:
        if isinstance(value, list):
            if not args:                       # bare tuple: (key, value) pairs, argv: scalars and tuples
                return tuple(_decode(v, _Plain, f"{where}[{i}]") for i, v in enumerate(value))
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(_decode(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
            if len(value) != len(args):
                raise ValueError(f"{where} has {len(value)} items, not {len(args)}")
            return tuple(_decode(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    elif hint is list or origin is list:
        if isinstance(value, list):
            item = args[0] if args else _Plain
            return [_decode(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    elif hint is dict or origin is dict:
        if isinstance(value, dict):
            vt = args[1] if args else _Json
            return {k: _decode(v, vt, f"{where}.{k}") for k, v in value.items()}
    elif hint is _Plain:
        if value is None or isinstance(value, (str, int, float, bool)):
            return value
        if isinstance(value, list):
            return tuple(_decode(v, _Plain, f"{where}[{i}]") for i, v in enumerate(value))
    elif hint is _Json or hint is typing.Any:
        return value
    else:
        raise ValueError(f"{where}: nslab cannot read a field of type {hint}")
    raise ValueError(f"{where} is {_what(value)}, not {_name(hint)}")


class _Plain:
    """A bare tuple's items: JSON scalars, or tuples of them."""


class _Json:
    """Any JSON value (an untyped dict's values: notes)."""


def _build(cls: type, data: dict, where: str):
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{where} has a field {cls.__name__} does not have: {unknown[0]!r}")
    kw = {}
    for name, f in fields.items():
        if name in data:
            kw[name] = _decode(data[name], hints[name], f"{where}.{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ValueError(f"{where} has no {name!r}")
    return cls(**kw)


def from_json(text: str | bytes) -> Plan:
    """The plan to_json wrote; ValueError saying what is wrong with anything else."""
    try:
        data = json.loads(text)
    except RecursionError:
        raise ValueError("it is nested too deeply") from None
    if not isinstance(data, dict):
        raise ValueError("it is not a JSON object")
    unknown = sorted(set(data) - {"format", "lab", "hosts", "notes", "ops"})
    if unknown:
        raise ValueError(f"it has a key this nslab does not know: {unknown[0]!r}")
    if data.get("format") != PLAN_FORMAT:
        raise ValueError(f"its format is {data.get('format')!r}, this nslab reads format {PLAN_FORMAT}")
    kinds = op_types()
    ops = data.get("ops")
    if not isinstance(ops, list):
        raise ValueError("'ops' is not a list")
    plan = Plan(lab=_decode(data.get("lab"), str, "lab"), hosts=_decode(data.get("hosts", {}), dict[str, str], "hosts"),
                notes=_decode(data.get("notes", {}), dict[str, _Json], "notes"))
    for i, raw in enumerate(ops):
        where = f"op {i + 1}"
        if not isinstance(raw, dict):
            raise ValueError(f"{where} is {_what(raw)}, not an object")
        kind = raw.get("op")
        if kind not in kinds:
            raise ValueError(f"{where} is of an unknown type {kind!r}" if isinstance(kind, str)
                             else f"{where} names no op type")
        plan.ops.append(_build(kinds[kind], {k: v for k, v in raw.items() if k != "op"}, f"{where} ({kind})"))
    return plan
