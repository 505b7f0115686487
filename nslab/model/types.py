"""The resolved topology: nodes, interfaces, bridges, routes, segments, and the naming rules
(stable MACs, short interface names, namespace names) that parser and compile share."""
from __future__ import annotations

import functools
import hashlib
import os
import re
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from ..backends import IFNAMSIZ, IPV4_MIN_MTU as MIN_MTU   # linux/if.h; RFC 791 (defined once, below us)
from .yamldoc import Doc

DEFAULT_MTU = 1500
MAX_MTU = 65535
DEFAULT_LINK_POOL = "172.31.0.0/16"
# Checked with fullmatch, as every pattern in nslab/model: match() with `^...$` took "name\n".
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
LAB_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]*")
MAX_LAB_NAME = 32
MAX_NODE_NAME = 63
NAME_MAX = 255          # a file name under /run/netns (a namespace name), in bytes
BRIDGE_PORTS = 1023     # a Linux bridge numbers its ports 1..1023 (BR_MAX_PORTS 1024, port 0 unused)
# Devices the kernel itself puts in every new namespace once their module is loaded (the
# fallback tunnels); a lab interface with one of these names fails at `up` on such a host.
KERNEL_DEVICES = frozenset({"lo", "tunl0", "gre0", "gretap0", "erspan0", "sit0", "ip6tnl0", "ip6gre0",
                            "ip_vti0", "ip6_vti0"})

IFNAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
DEFAULT_ROUTE = IPv4Network("0.0.0.0/0")      # one object for every default route nslab adds (never changed)


@dataclass
class Iface:
    """One end of a veth pair, inside `node`."""
    node: str
    name: str
    ip: IPv4Interface | None
    mac: str
    mtu: int
    peer_node: str
    peer_name: str
    segment: str | None = None      # set on both ends of a segment attachment
    bridge: str | None = None       # set on the bridge-side end: the bridge it is a port of
    hairpin: bool = False           # bridge port hairpin mode (the bridge CNI's hairpinMode)
    conditions: object | None = None    # units.Conditions: how this end shapes what it sends


@dataclass
class Bridge:
    """A Linux bridge inside a node: a segment's br0, or a cluster node's cni0."""
    name: str
    mtu: int
    mac: str
    ip: IPv4Interface | None = None


@dataclass
class Nexthop:
    via: IPv4Address | None
    dev: str


@dataclass
class Route:
    dst: IPv4Network
    nexthops: list[Nexthop]         # several = ECMP (multipath)
    onlink: bool = False
    origin: str = "static"          # static | computed (for show/trace explanations)


@dataclass
class Node:
    name: str
    kind: str                       # host | router | switch | pod
    ns: str                         # network namespace name (/run/netns/<ns>)
    mtu: int
    ifaces: list[Iface] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    sysctls: dict[str, str] = field(default_factory=dict)
    serve: list[str] = field(default_factory=list)   # services the lab agent runs here (http)
    members: list = field(default_factory=list)      # a pod's containers: model.cluster.Member, one netns
    bridges: list[Bridge] = field(default_factory=list)
    tunnels: list = field(default_factory=list)      # model.tunnels.Tunnel (ip tunnel add ... mode ipip)
    path: tuple = ()
    container: object | None = None                  # plan.Container: the node is a container (image:)

    @property
    def bridge(self) -> str | None:
        """The first bridge's name (a segment's switch has exactly one)."""
        return self.bridges[0].name if self.bridges else None

    def iface(self, name: str) -> Iface | None:
        # An index, not a scan: a segment's switch has one port per member (100,000 in a
        # hostile file), looked up once per member.  Rebuilt when a lookup misses or finds
        # a renamed interface (names are given late, ifaces only get appended).
        index = self.__dict__.get("_iface_index")
        hit = index.get(name) if index is not None else None
        if hit is not None and hit.name == name:
            return hit
        self.__dict__["_iface_index"] = index = {i.name: i for i in reversed(self.ifaces)}
        return index.get(name)

    @property
    def addresses(self) -> list[IPv4Interface]:
        return [i.ip for i in self.ifaces if i.ip is not None]


@dataclass
class Segment:
    name: str
    subnet: IPv4Network | None
    gateway: str | None             # router node owning the gateway address
    gateway_ip: IPv4Address | None
    bridge: str
    mtu: int
    neighbours: str | None = None   # static | dynamic; None: the lab's setting
    # The L2 domain: the first-declared segment of those joined switch to switch (a
    # segment listed as a member of another), its own name when it is joined to none.
    # A domain has one subnet (every segment of it holds it), one address allocator and
    # at most one gateway.
    domain: str = ""


@dataclass
class Topology:
    name: str
    file: str
    mtu: int
    ipv6: bool
    nodes: dict[str, Node]
    segments: dict[str, Segment]
    doc: Doc | None = None
    cluster: object | None = None   # model.cluster.Cluster when the file has a cluster: section
    tests: list = field(default_factory=list)   # model.tests.Check: the file's tests: section
    # `neighbours:` static: permanent ARP entries for every lab-internal L2 peer (compile
    # emits them); limits.check switches a lab to it when its possible dynamic entries
    # would not fit the kernel's shared table, and leaves why in `neighbours_auto`.
    neighbours: str = "dynamic"
    neighbours_given: bool = False  # the file says which (nslab then never switches)
    neighbours_auto: str | None = None
    # `placement:` (model/placement.py): node or segment -> (machine, YAML path); {}: none given
    placement: dict = field(default_factory=dict)

    def static_neighbours(self, segment: str | None = None) -> bool:
        seg = self.segments.get(segment) if segment is not None else None
        return (seg.neighbours if seg is not None and seg.neighbours else self.neighbours) == "static"

    def node(self, name: str) -> Node:
        return self.nodes[name]

    def address_of(self, name: str) -> IPv4Address | None:
        """The address other nodes use for `name` (its first address)."""
        addrs = self.nodes[name].addresses
        return addrs[0].ip if addrs else None


def stable_mac(*parts: str) -> str:
    """A locally administered unicast MAC derived from names, so a lab's MACs are the same
    on every run (captures, goldens and traces can be compared)."""
    h = hashlib.sha256("/".join(parts).encode()).digest()
    return (bytes([(h[0] & 0xFC) | 0x02]) + h[1:6]).hex(":")


def short_ifname(*parts: str) -> str:
    """An interface name from parts, shortened with a stable hash when longer than 15 bytes
    (the kernel counts bytes, not characters)."""
    name = "-".join(parts)
    if len(name.encode()) < IFNAMSIZ:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:5]
    head = name.encode()[: IFNAMSIZ - 1 - 6].decode(errors="ignore")   # never half a character
    return head + "-" + digest


@functools.lru_cache(maxsize=1 << 16)
def ipv4_network(address: int, prefixlen: int) -> IPv4Network:
    """IPv4Network((address, prefixlen)) from ints, built once per network: a link's two
    ends and a segment's members share theirs (ipaddress parses a string per call, ~6 us)."""
    return IPv4Network((address, prefixlen))


def ipv4_interface(address: int, prefixlen: int) -> IPv4Interface:
    """Equal to IPv4Interface(f"{IPv4Address(address)}/{prefixlen}") (value, str, hash,
    network), without parsing: the attributes IPv4Interface.__init__ sets, the network
    shared through ipv4_network.  tests/model/test_validate_scale.py holds it to that."""
    ifc = object.__new__(IPv4Interface)
    ifc._ip = address
    ifc.network = net = ipv4_network(address & (0xFFFFFFFF ^ ((1 << (32 - prefixlen)) - 1)), prefixlen)
    ifc.netmask = net.netmask
    ifc._prefixlen = prefixlen
    return ifc


def ip_text(ifc: IPv4Interface | IPv4Address) -> str:
    """str(ifc.ip) without building the IPv4Address (2 of a neighbour entry's 3 us); of an
    IPv4Address (its int is in _ip too), str(address) without ipaddress's bytes-and-join."""
    a = ifc._ip
    return f"{a >> 24}.{(a >> 16) & 255}.{(a >> 8) & 255}.{a & 255}"


def interface_text(ifc: IPv4Interface) -> str:
    """str(ifc) ("10.0.0.1/24") without ipaddress's bytes-and-join (an op per address)."""
    return f"{ip_text(ifc)}/{ifc._prefixlen}"


def network_bounds(net: IPv4Network) -> tuple[int, int]:
    """(first, last) address of a network as ints (broadcast_address builds two objects)."""
    first = net.network_address._ip
    return first, first | ((1 << (32 - net.prefixlen)) - 1)


def host_range(net: IPv4Network) -> tuple[int, int]:
    """(first, last) usable host as ints, as net.hosts() gives them: all of a /31, the one
    address of a /32, otherwise without the network and broadcast addresses."""
    first, last = network_bounds(net)
    return (first, last) if net.prefixlen >= 31 else (first + 1, last - 1)


def free_blocks(pool: IPv4Network, prefixlen: int, used):
    """The first address (an int) of each /prefixlen block of pool that overlaps none of
    `used`, in address order.  Jumps over used ranges instead of testing every candidate
    (a /8 pool has 4 million /30s)."""
    size = 1 << (32 - prefixlen)
    merged: list[list[int]] = []
    for start, end in sorted(network_bounds(u) for u in used):
        if merged and start <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    (addr, last), i = network_bounds(pool), 0
    while addr + size - 1 <= last:
        while i < len(merged) and merged[i][1] < addr:
            i += 1
        if i < len(merged) and merged[i][0] <= addr + size - 1:
            addr = (merged[i][1] // size + 1) * size     # the first aligned block after it
            continue
        yield addr
        addr += size


def free_subnets(pool: IPv4Network, prefixlen: int, used: list[IPv4Network]):
    """The /prefixlen subnets of pool that overlap none of `used`, in address order."""
    return (IPv4Network((addr, prefixlen)) for addr in free_blocks(pool, prefixlen, used))


def name_list(names, limit: int = 10) -> str:
    """Names for an error message: the first `limit`, then "and N more" (an unknown member
    in a 3,000-router file must not print 3,000 names), or "none"."""
    shown, more = [], 0
    for n in names:
        if len(shown) < limit:
            shown.append(str(n))
        else:
            more += 1
    if not shown:
        return "none"
    return ", ".join(shown) + (f" and {more:,} more" if more else "")


def ifname_problem(name) -> str | None:
    """Why `name` cannot be an interface name (Linux's dev_valid_name, then nslab's safe
    set), or None."""
    if not isinstance(name, str) or not name:
        return "an interface name must be a non-empty string"
    # Stricter than the kernel: names reach `nslab script`'s shell lines, sysctl keys and
    # ip(8) arguments, so ASCII words only (no shell metacharacters, no '%', which the
    # kernel expands as a template, no leading '-' that reads as an option).  A name the
    # pattern takes has no '/', ':' or whitespace and is not '.' or '..', so only a refused
    # one is scanned for the kernel's reasons (said first, as they are the more exact).
    if not IFNAME_RE.fullmatch(name):
        if name in (".", "..") or any(c in name for c in "/:") or any(c.isspace() for c in name):
            return f"{name!r} cannot be an interface name (no '/', ':', whitespace, '.' or '..')"
        return (f"{name!r} is not an interface name nslab accepts: ASCII letters, digits, '_', '-' and '.', "
                f"starting with a letter or digit")
    if len(name) >= IFNAMSIZ:
        return f"interface name {name!r} is {len(name)} characters; Linux allows at most {IFNAMSIZ - 1}"
    return None


def namespace_name(lab: str, node: str) -> str:
    return f"{lab}.{node}"


def lab_name_from_file(file: str) -> str:
    stem = os.path.splitext(os.path.basename(file))[0].lower()
    stem = re.sub(r"[^a-z0-9_-]", "-", stem).strip("-_") or "lab"
    return stem[:MAX_LAB_NAME]
