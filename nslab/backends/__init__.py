"""Flannel backends: one module per backend in this folder, found by this registry.

A backend module defines `BACKEND = Backend(...)`: everything nslab knows about it — the
keys of its `cluster.backend:` section and how they parse, its MTU overhead, the device
flanneld creates, the kernel operations flanneld performs on one node (in flannel's order),
how its packets look on the wire, how `nslab graph` draws it and the userspace dataplane
that stands in for it, if any.  Adding a backend is adding one file (docs/adding-a-backend.md).

Callers (model, compile, decode, checks, trace, graph, script, runtime) ask the registry:
  get(type) / names() / all()        the Backend objects, in the order users see them
  parse(spec, path, err, mtu, override)  the `backend:` section (+ --backend) -> Config
  flannel_mtu(...) / check_cluster(...)  per-node MTU and whole-cluster rules
  encap_ports(config) / ip_protocols() / encap_layers() / classify(layers)
                                     the one encapsulation classifier
  dataplane(kind) / describe_daemon(op)  userspace daemons (udp's proxy, ipip's fallback)
  title(config)                      `flannel vxlan VNI 1 port 8472, DirectRouting`

This package sits below the model: it imports nslab.plan, nslab.errors and the standard
library only.  Cluster and node objects are duck-typed (the model's ClusterNode: name, ip,
subnet, underlay, underlay_net, mtu, vtep_mac, segment, path).
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Callable

from ..errors import UsageError
from ..plan import Frozen, frozen

IFNAMSIZ = 16               # linux/if.h: device names hold at most 15 bytes
IPV4_MIN_MTU = 68           # RFC 791; the kernel refuses less on an IPv4 device
DEFAULT_TYPE = "vxlan"      # nslab's default when `backend:` names no type
SHARED_KEYS = ("directRouting", "mtu")   # mean the same for every backend: kept by --backend TYPE

# err(path, message) -> the exception to raise (the model's Parser.err: `file:line path: message`)
Err = Callable[[tuple, str], Exception]
# mtu(value, path) -> int, raising err for a bad MTU (the model's Parser.mtu)
MtuCheck = Callable[[Any, tuple], int]


class UnknownBackend(UsageError):
    """get() of a type no module defines (a record from another nslab version, a typo)."""


@frozen
class Config(Frozen):
    """One lab's backend section, parsed (what flanneld reads from net-conf.json's Backend).
    vni and gbp mean something to vxlan only, port to the UDP backends (None elsewhere);
    `options` holds (key, value) pairs of keys only a newer backend has."""
    type: str = DEFAULT_TYPE
    vni: int = 1
    port: int | None = None
    mtu: int | None = None
    direct_routing: bool = False
    gbp: bool = False
    options: tuple = ()

    @property
    def backend(self) -> "Backend":
        return get(self.type)

    @property
    def device(self) -> str | None:
        """The device flanneld creates on every node (flannel.<VNI>, flannel.ipip, flannel0)."""
        return get(self.type).device(self)


@frozen
class Style(Frozen):
    """How `nslab graph` draws the overlay paths of this backend."""
    colour: str
    legend: str                 # the words of the legend


# A pair of nodes its backend routes without encapsulation (host-gw; DirectRouting's peers)
DIRECT = Style("#27ae60", "direct route (no encapsulation)")


@frozen
class Wire(Frozen):
    """How the backend's packets look on the wire, for decode / test / trace.
    A UDP backend (ip_proto 17) is recognised by destination port: its `default_ports` in
    any lab, plus the lab's configured port.  Otherwise by the outer IP protocol."""
    layer: str                  # decode's name for the encapsulation header
    ip_proto: int               # outer IP protocol: 17 (UDP) or 4 (IPIP)
    inner: str                  # what the header carries: "eth" or "ip"
    description: str            # the protocol column of `nslab capture --decode`'s outer row
    default_ports: tuple = ()   # UDP ports that mean this backend in any lab
    header_len: int = 0         # bytes of its own header after the UDP header
    fields: Callable[[bytes], dict] | None = None   # that header -> fields of its layer
    decap_note: str | None = None   # trace's note where the kernel decapsulates it ({port} {device} {id})

    @property
    def udp(self) -> bool:
        return self.ip_proto == 17

    @property
    def signature(self) -> tuple[str, ...]:
        """decode's layer names from after the outer IP header to the first inner header."""
        return (("udp",) if self.udp else ()) + (self.layer, self.inner)


@frozen
class Dataplane(Frozen):
    """A userspace process nslab runs in a node's namespace on a TUN device (the code is in
    the runtime); plan.Daemon ops name it by `kind`."""
    kind: str
    process_name: bytes         # PR_SET_NAME: what `ss -ulpn` and `ps` show
    describe: Callable[[Any], str]   # plan.Daemon op -> one line for `nslab script`
    ttl_hops: int = 0           # TTL it takes off each packet it carries, beyond the kernel's routing


@frozen
class Backend(Frozen):
    name: str                   # the `type:` of the backend section
    rank: int                   # position in lists users see (flannel's docs order)
    keys: frozenset             # keys its section may have, `type` included
    overhead: int               # bytes added per packet; FLANNEL_MTU = underlay MTU - overhead
    overhead_source: str        # where flannel says so
    parse: Callable[[dict, tuple, Err, MtuCheck], Config]   # key-checked section -> Config
    device: Callable[[Config], str | None]
    ops: Callable[[Any, Any, Callable[[str], str]], list]    # (cluster, node, ns_of) -> plan ops
    direct: Callable[[Config, Any, Any], bool]   # (config, node, peer): peer routed without encapsulation
    style: Style
    summary: Callable[[Config], str]        # `vxlan VNI 1 port 8472` (graph title, show)
    edge_label: Callable[[Config], str]     # `vxlan VNI 1` (graph overlay edges)
    wire: Wire | None = None                # None: packets are not encapsulated (host-gw)
    dataplane: Dataplane | None = None
    check: Callable[[Any, Err], None] | None = None   # whole-cluster rule, err with absolute paths


# --- helpers for backend modules -----------------------------------------------------------

def port_number(spec: dict, path: tuple, err: Err, default: int) -> int:
    if "port" not in spec:
        return default
    port = spec["port"]
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise err(path + ("port",), f"port {port!r} is not a UDP port (1 to 65535)")
    return port


def flag(spec: dict, key: str, path: tuple, err: Err) -> bool:
    if key not in spec:
        return False
    if not isinstance(spec[key], bool):
        raise err(path + (key,), f"{key} must be true or false, got {spec[key]!r}")
    return spec[key]


def direct_route(config: Config, node, peer) -> bool:
    """flannel's DirectRouting (ip.DirectRouting in pkg/backend/vxlan and ipip): a peer on
    the node's own underlay subnet is routed to directly, without encapsulation."""
    return config.direct_routing and peer.ip in node.underlay_net


# --- the registry --------------------------------------------------------------------------

_BACKENDS: dict[str, Backend] = {}


def discover(paths, package: str) -> dict[str, Backend]:
    """Import every module in `paths` (not starting with `_`) and collect its BACKEND."""
    found: dict[str, Backend] = {}
    where: dict[str, str] = {}
    for info in sorted(pkgutil.iter_modules(paths), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{package}.{info.name}")
        backend = getattr(module, "BACKEND", None)
        if not isinstance(backend, Backend):
            raise TypeError(f"{module.__name__} defines no BACKEND = Backend(...)")
        if backend.name in found:
            raise TypeError(f"{module.__name__} and {where[backend.name]} both define backend {backend.name!r}")
        found[backend.name] = backend
        where[backend.name] = module.__name__
    return dict(sorted(found.items(), key=lambda kv: (kv[1].rank, kv[0])))


def get(type_: str) -> Backend:
    backend = _BACKENDS.get(type_) if isinstance(type_, str) else None
    if backend is None:
        raise UnknownBackend(f"unknown backend {type_!r} (flannel backends: {', '.join(names())})")
    return backend


def names() -> list[str]:
    return list(_BACKENDS)


def all() -> list[Backend]:     # noqa: A001 - backends.all() reads as meant
    return list(_BACKENDS.values())


def _and(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def parse(spec, path, err: Err, mtu: MtuCheck, override: str | None = None) -> Config:
    """The `cluster.backend` section (None: all defaults) at `path`, with the command line's
    `--backend TYPE[:PORT]` override applied.  Raises err(path, message) on bad input."""
    path = tuple(path)
    if spec is None:
        spec = {}
    elif not isinstance(spec, dict):
        raise err(path, f"expected a mapping for this backend, got {type(spec).__name__} {spec!r}")
    spec = dict(spec)
    if override:
        # --backend TYPE[:PORT] (udp:8282 is note 001's udp walk-through).  Switching type
        # keeps only the keys that mean the same for every backend; a vxlan port is no udp port.
        otype, _, oport = str(override).partition(":")
        if otype != spec.get("type", DEFAULT_TYPE):
            spec = {k: v for k, v in spec.items() if k in SHARED_KEYS}
        known = _BACKENDS.get(otype)
        spec = {k: v for k, v in spec.items() if k in (known.keys if known else {"type"})}
        spec["type"] = otype
        if oport:
            # values from the command line: the error names the option, not the file
            if not (known and "port" in known.keys):
                takers = [b.name for b in _BACKENDS.values() if "port" in b.keys]
                raise UsageError(f"--backend {override}: only {_and(takers)} take a port (--backend udp:8282)")
            if not (oport.isascii() and oport.isdigit() and len(oport) <= 5 and 1 <= int(oport) <= 65535):
                raise UsageError(f"--backend {override}: {oport!r} is not a UDP port (1 to 65535)")
            spec["port"] = int(oport)
        if otype not in _BACKENDS:
            raise UsageError(f"--backend {override}: unknown backend {otype!r} (flannel backends: "
                             f"{', '.join(names())})")
    btype = spec.get("type", DEFAULT_TYPE)
    if not isinstance(btype, str) or btype not in _BACKENDS:
        raise err(path + ("type",), f"unknown backend {btype!r} (flannel backends: {', '.join(names())})")
    backend = _BACKENDS[btype]
    for key in spec:
        if key not in backend.keys:
            raise err(path + (key,), f"unknown key {key!r} (expected one of: {', '.join(sorted(backend.keys))})")
    return backend.parse(spec, path, err, mtu)


def flannel_mtu(config: Config, underlay_mtu: int, segment: str, path, err: Err) -> int:
    """FLANNEL_MTU of a node on `segment`: the backend's mtu, else the underlay's minus the
    overhead.  `path` is the backend section's (errors name its type or mtu)."""
    path, over = tuple(path), get(config.type).overhead
    room = underlay_mtu - over
    if config.mtu is None:
        if room < IPV4_MIN_MTU:
            raise err(path + ("type",), f"underlay MTU {underlay_mtu} of segment {segment} is too small for "
                                        f"{config.type}: {over} bytes of encapsulation leave {room}, below the "
                                        f"IPv4 minimum of {IPV4_MIN_MTU}")
        return room
    if config.mtu > room:
        raise err(path + ("mtu",), f"backend MTU {config.mtu} does not fit segment {segment}'s MTU {underlay_mtu} "
                                   f"minus {over} bytes of {config.type} encapsulation (at most {room})")
    return config.mtu


def check_cluster(cluster, err: Err) -> None:
    """The backend's rules about the whole cluster (host-gw: one L2 segment); call once every
    node is placed.  err takes absolute paths (a node's path)."""
    backend = get(cluster.backend.type)
    if backend.check is not None:
        backend.check(cluster, err)


def title(config: Config) -> str:
    """`vxlan VNI 4000 port 4789, DirectRouting`, `host-gw`, `udp port 8285`."""
    text = get(config.type).summary(config)
    if config.direct_routing and "directRouting" in get(config.type).keys:
        text += ", DirectRouting"
    return text


# --- the one encapsulation classifier ------------------------------------------------------

def encap_ports(config: Config | None = None) -> dict[int, str]:
    """UDP destination port -> backend type carried on it: every UDP backend's default ports
    (VXLAN's 4789 and 8472 in any lab) and the lab's own backend on its port.  `config` may be
    anything with .type and .port (None: a lab without a cluster)."""
    ports = {p: b.name for b in _BACKENDS.values() if b.wire and b.wire.udp for p in b.wire.default_ports}
    if config is not None:
        wire = get(config.type).wire
        if wire is not None and wire.udp and config.port:
            ports[config.port] = config.type
    return ports


def ip_protocols() -> dict[int, str]:
    """Outer IP protocol -> backend type, for backends not carried in UDP (4: ipip)."""
    return {b.wire.ip_proto: b.name for b in _BACKENDS.values() if b.wire and not b.wire.udp}


def encap_layers() -> dict[str, str]:
    """decode's encapsulation layer name -> backend type (`flannel-udp` -> udp)."""
    return {b.wire.layer: b.name for b in _BACKENDS.values() if b.wire}


def classify(layers: list[dict]) -> str | None:
    """The backend type of the outermost encapsulation in decoded layers, None if none."""
    kinds = encap_layers()
    return next((kinds[l["layer"]] for l in layers if l.get("layer") in kinds), None)


def dataplane(kind: str) -> Dataplane:
    for b in _BACKENDS.values():
        if b.dataplane is not None and b.dataplane.kind == kind:
            return b.dataplane
    raise UnknownBackend(f"no backend has a userspace dataplane {kind!r} (dataplanes: "
                         f"{', '.join(b.dataplane.kind for b in _BACKENDS.values() if b.dataplane)})")


def describe_daemon(op) -> str:
    """One line for `nslab script`: what stands in for a plan.Daemon op."""
    return dataplane(op.kind).describe(op)


# Last, once the names above exist: the modules import them from this package.
_BACKENDS.update(discover(__path__, __name__))
