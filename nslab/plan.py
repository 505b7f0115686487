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
import operator
import os
import re
import sys
import types
import typing
from dataclasses import dataclass, field

STAGE_NAMESPACE, STAGE_LINK, STAGE_DEVICE, STAGE_CONFIG, STAGE_ROUTE, STAGE_PROCESS = range(6)


class Frozen:
    """Equality, hash and repr of frozen dataclasses (plan.frozen), as @dataclass(frozen=True)
    would generate them for each (the fields compared, hashed and shown in field order),
    written once from an instance's __dict__ (its fields, in field order: __init__ sets
    them so).  Python 3.11 compiles every generated method of every dataclass at import:
    three per class fewer (the 20 here, the backends' 5, images' and qdisc's: 81 methods)
    is ~2% of the instructions of a converge (tests/test_plan_record.py holds them to the
    generated ones)."""
    __slots__ = ()

    def __eq__(self, other):
        if other.__class__ is self.__class__:
            return self.__dict__ == other.__dict__
        return NotImplemented

    def __hash__(self):
        return hash(tuple(self.__dict__.values()))

    def __repr__(self):
        return f"{self.__class__.__qualname__}({', '.join(f'{k}={v!r}' for k, v in self.__dict__.items())})"


def frozen(cls):
    """@dataclass(frozen=True) with Frozen's equality, hash and repr (the class derives
    from Frozen): for a frozen dataclass whose fields all compare and show (no field(...)
    options), here and in the modules above."""
    return dataclass(frozen=True, eq=False, repr=False)(cls)


@frozen
class Container(Frozen):
    """A container node (nslab/containers.py): started with `--network none`, then its
    network namespace is named <lab>.<node> and wired like any other."""
    image: str
    command: tuple = ()            # argv; empty: the image's own CMD
    env: tuple = ()                # (key, value) pairs
    cap_add: tuple = ()


@frozen
class Netns(Frozen):
    ns: str
    node: str
    container: Container | None = None     # the namespace is a container's (`image:`)
    stage = STAGE_NAMESPACE


@frozen
class Sysctl(Frozen):
    ns: str
    key: str          # sysctl(8) notation; '/' stands for a dot inside a name
    value: str
    stage: int = STAGE_NAMESPACE   # STAGE_CONFIG for per-interface keys (the interface must exist)


@frozen
class Peer(Frozen):
    ns: str
    name: str
    mtu: int
    mac: str
    address: str | None = None     # only for display; addresses are Addr ops


@frozen
class Link(Frozen):
    """Create a device.  kind: veth (with peer, both ends created in their namespaces),
    bridge, vxlan (options in vxlan), ipip (options in ipip), tun (a persistent TUN device
    owned by the lab: created with TUNSETIFF + TUNSETPERSIST inside the namespace), dummy
    (kube-proxy's ipvs mode: kube-ipvs0, left down as kube-proxy leaves it: up False)."""
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
    up: bool = True                # False: created down (kube-ipvs0)


@frozen
class BridgePort(Frozen):
    """A bridge port's settings: hairpin mode, or (master) the veth end made in a namespace
    other than its bridge's enslaved to it (a join of two segments: a veth's peer cannot
    be given a master in the message that creates the pair)."""
    ns: str
    dev: str
    hairpin: bool = False
    master: str | None = None
    stage = STAGE_CONFIG


@frozen
class Addr(Frozen):
    ns: str
    dev: str
    address: str                   # CIDR
    peer: str | None = None        # point-to-point peer address
    stage = STAGE_CONFIG


@frozen
class Up(Frozen):
    ns: str
    dev: str
    stage = STAGE_CONFIG


@frozen
class Nexthop(Frozen):
    via: str | None
    dev: str


@frozen
class Route(Frozen):
    ns: str
    dst: str                       # CIDR, 0.0.0.0/0 for default
    nexthops: tuple[Nexthop, ...]
    onlink: bool = False
    scope: str | None = None       # None: link without a gateway, else global; "global" forces it
    stage = STAGE_ROUTE


@frozen
class Neigh(Frozen):
    """A permanent neighbour entry (flannel writes one per remote VTEP)."""
    ns: str
    dev: str
    address: str
    lladdr: str
    stage = STAGE_ROUTE


@frozen
class Fdb(Frozen):
    """A permanent FDB entry on a vxlan device: MAC -> remote VTEP IP (`self permanent`)."""
    ns: str
    dev: str
    lladdr: str
    dst: str
    stage = STAGE_ROUTE


@frozen
class Serve(Frozen):
    """A service the lab agent runs in a namespace (one agent process for the whole lab)."""
    ns: str
    node: str
    kind: str                      # http
    port: int = 80
    stage = STAGE_PROCESS


@frozen
class TxChecksum(Frozen):
    """Turn a device's transmit checksum offload on or off (`ethtool -K DEV tx off`).
    Off, the kernel completes checksums (and segments GSO packets) before the device, as
    a real NIC would; needed where a kernel ipip node talks to a userspace encapsulator,
    whose raw socket would otherwise read the inner TCP checksum still partial."""
    ns: str
    dev: str
    on: bool
    stage = STAGE_CONFIG


@frozen
class Qdisc(Frozen):
    """Link conditions on a device: its root qdisc (`tc qdisc replace dev DEV root ...`),
    tbf for a rate alone, netem for delay, jitter or loss.  `conditions` are (key, value)
    pairs as a topology writes them (model.units.Conditions.parse reads them back); `mtu`
    is the device's, as tbf's bucket must hold a whole frame."""
    ns: str
    dev: str
    conditions: tuple              # (key, value) pairs: rate, delay, jitter, loss, limit, burst
    mtu: int = 1500
    stage = STAGE_CONFIG


@frozen
class Daemon(Frozen):
    """A process the lab agent runs in a node: a userspace dataplane on its TUN device `dev`
    (nslab/runtime/tunnels.py), kind udp (flannel's udp proxy) or ipip (the encapsulator
    standing in for kernel ipip); or kind dns, the cluster DNS server in the coredns pod
    (nslab/runtime/dns.py, dev empty)."""
    ns: str
    node: str
    kind: str
    dev: str
    config: tuple = ()             # (key, value) pairs, see the module
    stage = STAGE_PROCESS

    @property
    def module(self) -> str:
        return "nslab.runtime.dns" if self.kind == "dns" else "nslab.runtime.tunnels"

    @property
    def what(self) -> str:
        """How the lab's record and `nslab ls` name the process (with the node's count of
        dataplanes: a dev is named when a node has more than one)."""
        return f"{self.kind} {'server' if self.kind == 'dns' else 'dataplane'} on {self.node}"


@frozen
class Iptables(Frozen):
    """Rules for the namespace's own netfilter tables (flannel's ip-masq, kube-proxy's
    services): `text` is iptables-restore input, loaded with one `iptables-restore
    --noflush` per namespace (apply/iptables.py).  After the routes: nothing in it names a
    device that must exist, but a lab is only half there before its routes."""
    ns: str
    text: str
    stage = STAGE_ROUTE


@frozen
class Nftables(Frozen):
    """Tables of the namespace's own nftables (kube-proxy's nftables mode, flannel's
    EnableNFTables masquerade): `text` is `nft -f` input, every Nftables op of a namespace
    loaded with one `nft -f -` (one transaction: all of it or nothing; apply/nftables.py).
    Stage as Iptables."""
    ns: str
    text: str
    stage = STAGE_ROUTE


@frozen
class Ipset(Frozen):
    """IP sets of the namespace (kube-proxy's ipvs mode: KUBE-CLUSTER-IP, KUBE-NODE-PORT-TCP,
    ...): `text` is `ipset restore` input, loaded with one `ipset restore` per namespace
    before its iptables rules (which name the sets).  Sets live in the namespace and go
    with it.  Stage as Iptables."""
    ns: str
    text: str
    stage = STAGE_ROUTE


@frozen
class Ipvs(Frozen):
    """IPVS virtual and real servers of the namespace (kube-proxy's ipvs mode): `text` is
    `ipvsadm-restore` input, loaded with one ipvsadm-restore per namespace, first in its
    batch (it loads ip_vs, whose net.ipv4.vs.* sysctls the same batch then sets).  IPVS
    keeps its tables per network namespace: they go with it.  Stage as Iptables."""
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
# Encoders and decoders are made once per class (a 1,000-node cluster's plan has ~44,000 ops).

PLAN_FORMAT = 1


def _classes() -> dict[str, type]:
    mod = sys.modules[__name__]
    return {name: cls for name, cls in vars(mod).items()
            if dataclasses.is_dataclass(cls) and isinstance(cls, type) and cls.__module__ == __name__}


def op_types() -> dict[str, type]:
    """Every operation type of a plan, by class name."""
    return {name: cls for name, cls in _classes().items() if hasattr(cls, "stage") and cls is not Plan}


class _Plain:
    """A bare tuple's items: JSON scalars, or tuples of them."""


class _Json:
    """Any JSON value (an untyped dict's values: notes)."""


_FIELDS: dict[type, tuple] = {}


def _fields_spec(cls: type) -> tuple:
    """(field names, their getter, (name, default) of those with a default) of dataclass `cls`."""
    spec = _FIELDS.get(cls)
    if spec is None:
        fs = dataclasses.fields(cls)
        spec = _FIELDS[cls] = (tuple(f.name for f in fs), operator.attrgetter(*(f.name for f in fs)),
                               tuple((f.name, f.default) for f in fs if f.default is not dataclasses.MISSING))
    return spec


def _fields(value, op: str | None = None) -> dict:
    """A dataclass's fields as a dict, defaults left out (a large plan stays small); `op`:
    an op's type name, put first under "op" (its line's dict made once, not copied)."""
    cls = type(value)
    spec = _FIELDS.get(cls)
    if spec is None:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"cannot record a {cls.__name__} in a plan: {value!r}")
        spec = _fields_spec(cls)
    names, get, defaults = spec
    out = {"op": op} if op is not None else {}
    own = getattr(value, "__dict__", None)
    if own is not None and len(own) == len(names):
        out.update(own)         # the fields, in class order (__init__ sets them so): a C-level copy
    else:
        values = get(value)
        out.update(zip(names, values if len(names) > 1 else (values,)))
    for name, default in defaults:
        v = out[name]
        if v == default and type(v) is type(default):
            del out[name]
    return out


# nested dataclasses (Peer, Nexthop, Container) through `default`; tuples are JSON lists
_ENCODE_JSON = json.JSONEncoder(check_circular=False, default=_fields).encode


def op_lines(plan: Plan) -> list[str]:
    """Each op of the plan as the line of JSON to_json writes for it.  Equal ops have equal
    lines (fields in class order, defaults left out), so a converge compares two plans by
    their lines (compile/diff.py) and reads back only the lines that changed (from_json)."""
    import orjson       # lazy: start-up (commands that do not write a plan)
    dumps, opt, refused = orjson.dumps, orjson.OPT_PASSTHROUGH_DATACLASS, orjson.JSONEncodeError
    makers = _LINE_DICTS

    def line(op) -> str:
        make = makers.get(type(op))
        fields = (make or _line_dict(type(op)))(op)
        try:        # orjson: the JSON of a 1,000-pod plan's ~12,000 ops in ~1/3 of json's time
            return dumps(fields, default=_fields, option=opt).decode()
        except refused:         # what orjson does not take (an integer beyond 64 bits): json's
            return _ENCODE_JSON(fields)
    return [line(op) for op in plan.ops]


_LINE_DICTS: dict[type, object] = {}


def _line_dict(cls: type):
    """op -> _fields(op, cls.__name__) for ops of class `cls`, made once per class: its
    fields copied from the op's __dict__ (as _fields does), only its fields that have a
    default compared (a 1,000-pod plan has ~12,000 ops: the generic _fields is most of
    op_lines' time)."""
    tag = cls.__name__
    _fields_spec(cls)
    names, _, defaults = _FIELDS[cls]
    size = len(names) + 1

    def make(op) -> dict:
        out = {"op": tag, **op.__dict__}
        if len(out) != size:            # not the fields alone: the generic way
            return _fields(op, tag)
        for name, default in defaults:
            v = out[name]
            if v == default and type(v) is type(default):
                del out[name]
        return out
    _LINE_DICTS[cls] = make
    return make


_OPS_OPEN, _OPS_CLOSE = ', "ops": [\n', "\n]}\n"


def to_json(plan: Plan, lines: list[str] | None = None) -> str:
    """The plan as JSON text (one op per line, so a diff of two records reads well);
    `lines`: op_lines(plan), if made already."""
    ops = op_lines(plan) if lines is None else lines
    head = _ENCODE_JSON({"format": PLAN_FORMAT, "lab": plan.lab, "hosts": plan.hosts, "notes": plan.notes})
    return head[:-1] + _OPS_OPEN + ",\n".join(ops) + _OPS_CLOSE


class _Bad(ValueError):
    """What is wrong with a value; the path to it is prepended on the way out."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text, self.path = text, []

    def at(self, where: str) -> str:
        return f"{where}{''.join(self.path)} {self.text}"


def _what(value) -> str:
    return "null" if value is None else {list: "a list", dict: "an object", str: "a string", bool: "a boolean"}.get(
        type(value), "a number")


def _name(hint) -> str:
    return {type(None): "null", _Plain: "text, a number, a boolean, null or a list of them",
            _Json: "JSON"}.get(hint, getattr(hint, "__name__", str(hint)))


def _wrong(value, hint) -> _Bad:
    return _Bad(f"is {_what(value)}, not {_name(hint)}")


def _items(item, value):
    """Decode a JSON list item by item, naming the index of a bad one."""
    out = []
    for i, v in enumerate(value):
        try:
            out.append(item(v))
        except _Bad as e:
            e.path.insert(0, f"[{i}]")
            raise
    return out


_DECODERS: dict = {}


def _decoder(hint):
    dec = _DECODERS.get(hint)
    if dec is None:
        dec = _DECODERS[hint] = _make_decoder(hint)
    return dec


def _make_decoder(hint):   # noqa: C901 - one case per kind of annotation
    origin, args = typing.get_origin(hint), typing.get_args(hint)

    def typed(ok, convert=None):
        def dec(v):
            if ok(v):
                return convert(v) if convert else v
            raise _wrong(v, hint)
        return dec
    if hint is type(None):
        return typed(lambda v: v is None)
    if origin in (typing.Union, types.UnionType):
        options = [_decoder(a) for a in args if a is not type(None)]
        nullable = type(None) in args
        if len(options) == 1:
            only = options[0]
            return (lambda v: None if v is None else only(v)) if nullable else only

        def union(v):
            if v is None and nullable:
                return None
            for dec in options:
                try:
                    return dec(v)
                except _Bad:
                    pass
            raise _Bad(f"is {_what(v)}, of no type it may be")
        return union
    if hint is bool:
        return typed(lambda v: v is True or v is False)
    if hint is int:
        return typed(lambda v: type(v) is int)
    if hint is float:
        return typed(lambda v: type(v) in (int, float), float)
    if hint is str:
        return typed(lambda v: type(v) is str)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        build = _builder(hint)
        return typed(lambda v: type(v) is dict, build)
    if hint is _Plain:
        def plain(v):
            if v is None or type(v) in (str, int, float, bool):
                return v
            if type(v) is list:
                return tuple(_items(plain, v))
            raise _wrong(v, hint)
        return plain
    if hint is _Json or hint is typing.Any:
        return lambda v: v
    if hint is tuple or origin is tuple:
        if not args:                               # bare tuple: (key, value) pairs, argv
            return _decoder(_Plain)
        if len(args) == 2 and args[1] is Ellipsis:
            item = _decoder(args[0])
            return typed(lambda v: type(v) is list, lambda v: tuple(_items(item, v)))
        decs = [_decoder(a) for a in args]

        def fixed(v):
            if type(v) is not list:
                raise _wrong(v, hint)
            if len(v) != len(decs):
                raise _Bad(f"has {len(v)} items, not {len(decs)}")
            out = []
            for i, (x, dec) in enumerate(zip(v, decs)):
                try:
                    out.append(dec(x))
                except _Bad as e:
                    e.path.insert(0, f"[{i}]")
                    raise
            return tuple(out)
        return fixed
    if hint is list or origin is list:
        item = _decoder(args[0] if args else _Plain)
        return typed(lambda v: type(v) is list, lambda v: _items(item, v))
    if hint is dict or origin is dict:
        value_dec = _decoder(args[1] if args else _Json)

        def mapping(v):
            if type(v) is not dict:
                raise _wrong(v, hint)
            out = {}
            for k, x in v.items():
                try:
                    out[k] = value_dec(x)
                except _Bad as e:
                    e.path.insert(0, f".{k}")
                    raise
            return out
        return mapping
    raise TypeError(f"plan.py: nslab cannot record a field of type {hint}")


_BUILDERS: dict[type, object] = {}
_ABSENT = object()


def _simple(hint) -> frozenset:
    """The JSON types that are a value of `hint` as they are (str, int, bool, None)."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if not all(o in (str, int, bool, type(None)) for o in options):
        return frozenset()
    return frozenset(options)


def _builder(cls: type, tag: str | None = None):
    """data (a JSON object) -> cls(...); `tag`: a key allowed and ignored (an op's "op")."""
    key = (cls, tag)
    if key in _BUILDERS:
        return _BUILDERS[key]
    hints = typing.get_type_hints(cls, vars(sys.modules[__name__]))
    spec = [(f.name, _decoder(hints[f.name]), _simple(hints[f.name]),
             f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
            for f in dataclasses.fields(cls)]
    allowed = {name for name, _, _, _ in spec} | ({tag} if tag else set())

    def build(data: dict):
        if not allowed.issuperset(data):
            raise _Bad(f"has a field {cls.__name__} does not have: {sorted(set(data) - allowed)[0]!r}")
        kw = {}
        for name, dec, simple, required in spec:
            v = data.get(name, _ABSENT)
            if v is _ABSENT:
                if required:
                    raise _Bad(f"has no {name!r}")
            elif type(v) in simple:        # the common case, without a call
                kw[name] = v
            else:
                try:
                    kw[name] = dec(v)
                except _Bad as e:
                    e.path.insert(0, f".{name}")
                    raise
        return cls(**kw)
    _BUILDERS[key] = build
    return build


def _head(data) -> Plan:
    """The plan of a record's JSON object, its ops not read yet."""
    if not isinstance(data, dict):
        raise ValueError("it is not a JSON object")
    unknown = sorted(set(data) - {"format", "lab", "hosts", "notes", "ops"})
    if unknown:
        raise ValueError(f"it has a key this nslab does not know: {unknown[0]!r}")
    if data.get("format") != PLAN_FORMAT:
        raise ValueError(f"its format is {data.get('format')!r}, this nslab reads format {PLAN_FORMAT}")
    if not isinstance(data.get("ops"), list):
        raise ValueError("'ops' is not a list")
    head = {}
    for key, hint, default in (("lab", str, None), ("hosts", dict[str, str], {}), ("notes", dict[str, _Json], {})):
        try:
            head[key] = _decoder(hint)(data.get(key, default))
        except _Bad as e:
            raise ValueError(e.at(key)) from None
    return Plan(**head)


def _op_builders() -> dict:
    return {name: _builder(cls, "op") for name, cls in op_types().items()}


def _op(i: int, raw, kinds: dict):
    """Op i (from 0) of a record, validated: ValueError naming it."""
    kind = raw.get("op") if type(raw) is dict else None
    build = kinds.get(kind) if type(kind) is str else None
    if build is None:
        where = f"op {i + 1}"
        if type(raw) is not dict:
            raise ValueError(f"{where} is {_what(raw)}, not an object")
        raise ValueError(f"{where} is of an unknown type {kind!r}" if isinstance(kind, str)
                         else f"{where} names no op type")
    try:
        return build(raw)
    except _Bad as e:
        raise ValueError(e.at(f"op {i + 1} ({kind})")) from None


def _loads(text: str | bytes):
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("it is nested too deeply") from None


def from_json(text: str | bytes) -> Plan:
    """The plan to_json wrote; ValueError saying what is wrong with anything else."""
    data = _loads(text)
    plan = _head(data)
    kinds = _op_builders()
    plan.ops = [_op(i, raw, kinds) for i, raw in enumerate(data["ops"])]
    return plan


def from_json_lines(text: str, known: dict) -> tuple[Plan, list[str]]:
    """from_json, and each op's line (op_lines), for a converge: a line found in `known`
    (line -> op: the op_lines of the plan compiled now) is that op, as decoding it would
    give (equal ops, equal lines), and is not decoded again; every other line is decoded
    and validated as from_json does.  Text not laid out as to_json lays it out (edited by
    hand, say): from_json, whole."""
    head, _, rest = text.partition("\n")
    if head.endswith(_OPS_OPEN[:-1]) and rest.endswith(_OPS_CLOSE):
        body = rest[:-len(_OPS_CLOSE)]
        lines = body.split(",\n") if body else []
        plan = _head(_loads(head + "]}"))
        plan.ops = ops = [known.get(line) for line in lines]
        missing = [i for i, op in enumerate(ops) if op is None]
        try:        # the decoders made only if a line is to be decoded (not so for a pod added)
            kinds = _op_builders() if missing else None
            for i in missing:
                ops[i] = _op(i, _loads(lines[i]), kinds)
            return plan, lines
        except ValueError:      # a line that is not one JSON value: the text is not to_json's
            pass
    plan = from_json(text)
    return plan, op_lines(plan)
