"""Topology model: parse and validate a topology file into a fully resolved lab.

Everything a user can get wrong is caught here, before anything touches the kernel, and
reported as one sentence naming file, line and YAML path.  The result is resolved: every
interface has a name, an address (or none, on purpose), a MAC and an MTU; every node has
its routes.  `nslab/compile/` turns it into a plan without making any further decisions that
could fail.
"""
from __future__ import annotations

import gc
import re
from collections import deque
from itertools import islice
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from ..errors import TopologyError, UsageError
from ..plan import sysctl_key_problem
from . import cluster, conditions, containers, limits, placement, tests, tunnels, yamldoc
from .units import ConditionsError
from .limits import MAX_COMPUTED_ROUTES
from .yamldoc import Doc
from .types import (BRIDGE_PORTS, Bridge, DEFAULT_LINK_POOL, DEFAULT_ROUTE, DEFAULT_MTU, IFNAMSIZ, Iface, KERNEL_DEVICES, LAB_NAME_RE,
                    MAX_LAB_NAME, MAX_MTU, MAX_NODE_NAME, MIN_MTU, NAME_MAX, NAME_RE, Nexthop, Node, Route,
                    Segment, Topology, free_blocks, host_range, ifname_problem, lab_name_from_file, name_list,
                    ipv4_interface, namespace_name, network_bounds, short_ifname, stable_mac)


class Parser:
    """Walks the document with explicit paths; the first problem raises a TopologyError."""

    TOP_KEYS = {"name", "mtu", "ipv6", "pools", "hosts", "routers", "segments", "links",
                "cluster", "tests", "description", "neighbours", "placement"}
    NODE_KEYS = {"mtu", "routes", "sysctls", "serve", "tunnels", "image", "command", "env", "cap_add"}
    SEGMENT_KEYS = {"subnet", "gateway", "gateway_ip", "bridge", "mtu", "members", "neighbours",
                    "conditions"}
    MEMBER_KEYS = {"iface", "port", "ip", "mac", "mtu", "conditions"}
    END_KEYS = {"node", "iface", "ip", "mac", "mtu", "conditions"}
    LINK_KEYS = {"ends", "mtu", "subnet", "conditions"}
    ROUTE_KEYS = {"to", "via", "dev", "onlink"}

    def __init__(self, doc: Doc, name_override: str | None = None):
        self.doc = doc
        self.name_override = name_override
        self.overrides: dict = {}

    # ---- small typed getters -------------------------------------------------------
    def err(self, path, msg):
        return self.doc.error(tuple(path), msg)

    def mapping(self, value, path, keys: set[str] | None = None, what="section") -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.err(path, f"expected a mapping for this {what}, got {type(value).__name__} {value!r}")
        if keys is not None:
            for k in value:
                if k not in keys:
                    raise self.err(tuple(path) + (k,),
                                   f"unknown key {k!r} (expected one of: {', '.join(sorted(keys))})")
        return value

    def neighbours(self, value, path) -> str:
        if value not in ("static", "dynamic"):
            raise self.err(path, f"neighbours must be static (permanent ARP entries for every lab peer, "
                                 f"installed by nslab) or dynamic (ARP), got {value!r}")
        return value

    def mtu(self, value, path) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.err(path, f"MTU must be an integer, got {value!r}")
        if value < MIN_MTU:
            raise self.err(path, f"MTU {value} is below the IPv4 minimum of {MIN_MTU}")
        if value > MAX_MTU:
            raise self.err(path, f"MTU {value} is above the maximum of {MAX_MTU}")
        return value

    def network(self, value, path) -> IPv4Network:
        try:
            return IPv4Network(str(value), strict=True)
        except ValueError as e:
            if isinstance(value, str) and "/" in value:
                try:
                    IPv4Network(value, strict=False)
                    raise self.err(path, f"{value} has host bits set (did you mean "
                                         f"{IPv4Network(value, strict=False)}?)") from None
                except ValueError:
                    pass
            raise self.err(path, f"{value!r} is not an IPv4 network in CIDR form ({e})") from None

    def address(self, value, path) -> IPv4Address:
        try:
            return IPv4Address(str(value))
        except ValueError:
            raise self.err(path, f"{value!r} is not an IPv4 address") from None

    def interface(self, value, path, subnet: IPv4Network | None) -> IPv4Interface:
        text = str(value)
        if "/" in text:
            try:
                ifc = IPv4Interface(text)
            except ValueError:
                raise self.err(path, f"{value!r} is not an IPv4 address with prefix (like 10.1.1.2/24)") from None
            if subnet is not None and ifc.network != subnet:
                if ifc.ip in subnet:
                    raise self.err(path, f"{ifc} has a different prefix length than its subnet {subnet} "
                                         f"(write {ifc.ip} or {ifc.ip}/{subnet.prefixlen})")
                raise self.err(path, f"{ifc} is not inside subnet {subnet}")
        else:
            addr = self.address(value, path)
            if subnet is None:
                raise self.err(path, f"{value} has no prefix length and there is no subnet to take it from "
                                     f"(write it as {value}/24, for example)")
            if addr not in subnet:
                raise self.err(path, f"{value} is not inside subnet {subnet}")
            ifc = IPv4Interface(f"{addr}/{subnet.prefixlen}")
        if subnet is not None and subnet.prefixlen < 31 and ifc.ip in (subnet.network_address, subnet.broadcast_address):
            raise self.err(path, f"{ifc.ip} is the {'network' if ifc.ip == subnet.network_address else 'broadcast'} "
                                 f"address of {subnet} and cannot be given to an interface")
        if ifc.network.prefixlen < 31 and ifc.ip in (ifc.network.network_address, ifc.network.broadcast_address):
            raise self.err(path, f"{ifc.ip} is the {'network' if ifc.ip == ifc.network.network_address else 'broadcast'} "
                                 f"address of {ifc.network} and cannot be given to an interface")
        return ifc

    def mac(self, value, path) -> str:
        text = str(value).lower()
        if not re.fullmatch(r"([0-9a-f]{2}:){5}[0-9a-f]{2}", text):
            raise self.err(path, f"{value!r} is not a MAC address like 02:00:00:00:00:01")
        if int(text[:2], 16) & 1:
            raise self.err(path, f"{value} is a multicast MAC address; an interface needs a unicast one")
        return text

    def ifname(self, value, path) -> str:
        problem = ifname_problem(value)
        if problem:
            raise self.err(path, problem)
        return value

    def node_name(self, value, path) -> str:
        if not isinstance(value, str) or not NAME_RE.fullmatch(value) or len(value) > MAX_NODE_NAME:
            raise self.err(path, f"node name {value!r} must be letters, digits, '-' or '_' (starting with a "
                                 f"letter or digit, at most {MAX_NODE_NAME} characters)")
        return value

    def names_or_mapping(self, value, path, what) -> dict:
        """`[a, b]` or `{a: {...}, b: null}` -> {name: (spec, path)}."""
        out: dict[str, tuple[dict, tuple]] = {}
        if value is None:
            return out
        if isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, dict) and len(item) == 1:
                    (name, spec), = item.items()
                    p = tuple(path) + (i, name)
                else:
                    name, spec, p = item, None, tuple(path) + (i,)
                self.node_name(name, p)
                if name in out:
                    raise self.err(p, f"{what} {name!r} is listed twice")
                out[name] = (spec, p)
            return out
        if not isinstance(value, dict):
            raise self.err(path, f"expected a list of {what} names or a mapping of {what} name to its settings, "
                                 f"got {type(value).__name__} {value!r}")
        for name, spec in self.mapping(value, path, what=what).items():
            p = tuple(path) + (name,)
            self.node_name(name, p)
            out[name] = (spec, p)
        return out

    # ---- the document ---------------------------------------------------------------
    def parse(self) -> "Builder":
        doc = self.doc
        if not isinstance(doc.data, dict):
            raise self.err((), "a topology file must be a YAML mapping (name:, hosts:, routers:, segments:, links:, ...)")
        top = self.mapping(doc.data, (), self.TOP_KEYS)
        b = Builder(self, doc)
        if self.name_override is not None:
            b.lab = self.name_override
            if not LAB_NAME_RE.fullmatch(b.lab) or len(b.lab) > MAX_LAB_NAME:
                raise TopologyError(doc.display_name, None, "--name",
                                    f"lab name {b.lab!r} must be lowercase letters, digits, '-' or '_' "
                                    f"(at most {MAX_LAB_NAME} characters)")
        elif "name" in top:
            b.lab = top["name"]
            if not isinstance(b.lab, str) or not LAB_NAME_RE.fullmatch(b.lab) or len(b.lab) > MAX_LAB_NAME:
                raise self.err(("name",), f"lab name {b.lab!r} must be lowercase letters, digits, '-' or '_' "
                                          f"(at most {MAX_LAB_NAME} characters)")
        else:
            b.lab = lab_name_from_file(doc.file)
        b.mtu = self.mtu(top["mtu"], ("mtu",)) if "mtu" in top else DEFAULT_MTU
        ipv6 = top.get("ipv6", False)
        if not isinstance(ipv6, bool):
            raise self.err(("ipv6",), f"ipv6 must be true or false, got {ipv6!r}")
        b.ipv6 = ipv6
        b.neighbours = self.neighbours(top["neighbours"], ("neighbours",)) if "neighbours" in top else None
        pools = self.mapping(top.get("pools"), ("pools",), {"links"})
        b.link_pool = self.network(pools.get("links", DEFAULT_LINK_POOL), ("pools", "links"))
        if b.link_pool.prefixlen > 30:
            raise self.err(("pools", "links"), f"link pool {b.link_pool} is too small for even one /30 link")

        for kind, key in (("host", "hosts"), ("router", "routers")):
            for name, (spec, p) in self.names_or_mapping(top.get(key), (key,), kind).items():
                b.add_node(name, kind, self.mapping(spec, p, self.NODE_KEYS, what=kind), p)
        segments = {}
        for name, spec in self.mapping(top.get("segments"), ("segments",), what="segments").items():
            p = ("segments", name)
            self.node_name(name, p)
            spec = self.mapping(spec, p, self.SEGMENT_KEYS, what="segment")
            segments[name] = (spec, p, self.names_or_mapping(spec.get("members"), p + ("members",), "member"))
        b.join_segments(segments)
        for name, (spec, p, members) in segments.items():
            b.add_segment(name, spec, p, members)
        links = top.get("links") or []
        if not isinstance(links, list):
            raise self.err(("links",), "links must be a list of links ([a, b] or {ends: [a, b]})")
        for i, spec in enumerate(links):
            b.add_link(spec, ("links", i))
        if "cluster" in top:
            cluster.parse(self, b, top["cluster"], ("cluster",))
        b.tests = tests.parse(self, b, top.get("tests"), ("tests",))
        b.placement = placement.parse(self, b, top.get("placement"), ("placement",))
        return b


class Builder:
    """Collects nodes and attachments, then resolves names, addresses and routes."""

    def __init__(self, parser: Parser, doc: Doc):
        self.p, self.doc = parser, doc
        self.lab = ""
        self.mtu = DEFAULT_MTU
        self.ipv6 = False
        self.neighbours = None      # the file's `neighbours:` (None: not given, dynamic unless too many)
        self.link_pool: IPv4Network = IPv4Network(DEFAULT_LINK_POOL)
        self.nodes: dict[str, Node] = {}
        self.node_specs: dict[str, dict] = {}
        self.segments: dict[str, Segment] = {}
        self.attachments: list[dict] = []   # pending veth pairs, resolved in order
        self.segment_conditions: dict = {}  # segment -> its `conditions:` (every attachment's default)
        self.domains: dict[str, str] = {}   # segment -> its L2 domain (join_segments)
        self.domain_subnets: dict[str, tuple] = {}   # domain -> (subnet, where it is written)
        self.domain_gateways: dict[str, str] = {}    # domain -> the segment that names its gateway
        self.tests: list = []
        self.extensions: list = []          # callables(builder) run after addresses (cluster)
        self.iface_paths: dict[int, tuple] = {}   # id(Iface) -> where its name or end is written
        self._ifnames: dict[str, set[str]] = {}   # node -> its interface names (a switch has thousands)
        self._next_eth: dict[str, int] = {}
        self.cluster = None

    def err(self, path, msg):
        return self.p.err(path, msg)

    def add_node(self, name, kind, spec, path, mtu=None):
        if name in self.nodes:
            other = self.nodes[name]
            raise self.err(path, f"name {name!r} is already used by the {other.kind} at line "
                                 f"{self.doc.line(other.path)}")
        node_mtu = self.p.mtu(spec["mtu"], path + ("mtu",)) if "mtu" in spec else (mtu or self.mtu)
        node = Node(name=name, kind=kind, ns="", mtu=node_mtu, path=path)
        sysctls = self.p.mapping(spec.get("sysctls"), path + ("sysctls",), what="sysctls")
        for key, value in sysctls.items():
            problem = sysctl_key_problem(key)     # the rules write_sysctl checks again at up
            levels = key.split(".") if problem is None else []
            if levels[:3] in (["net", "ipv4", "conf"], ["net", "ipv6", "conf"], ["net", "ipv4", "neigh"],
                              ["net", "ipv6", "neigh"]) and len(levels) > 4 and levels[3] not in ("all", "default"):
                problem = ifname_problem(levels[3].replace("/", "."))
                problem = problem and f"{key}: {problem}"
            if problem:
                raise self.err(path + ("sysctls", key), problem)
            if isinstance(value, bool) or not isinstance(value, (int, str)):
                raise self.err(path + ("sysctls", key), f"sysctl value must be a number or string, got {value!r}")
            if any(c < " " and c != "\t" or c == "\x7f" for c in str(value)):
                raise self.err(path + ("sysctls", key), f"the value of {key} must be one line of printable text")
            if _integer_sysctl(levels) and not re.fullmatch(r"\s*-?[0-9]+\s*", str(value), re.ASCII):
                raise self.err(path + ("sysctls", key), f"{key} takes a whole number, not {value!r}")
            node.sysctls[key] = str(value)
        serve = spec.get("serve")
        if serve is not None:
            serve = serve if isinstance(serve, list) else [serve]
            for s in serve:
                if s != "http":
                    raise self.err(path + ("serve",), f"unknown service {s!r} (nslab can serve: http)")
            node.serve = list(serve)
        if any(k in spec for k in ("image", "command", "env", "cap_add")):
            node.container = containers.parse(self.p, spec, path)
        if spec.get("tunnels") is not None:
            node.tunnels = tunnels.parse(self.p, spec["tunnels"], path + ("tunnels",))
            self.extensions.append(lambda b, node=node: tunnels.check(b, node))
        self.nodes[name] = node
        self.node_specs[name] = spec
        return node

    def join_segments(self, segments: dict) -> None:
        """Segments listed as members of other segments are joined switch to switch (a veth
        between their bridges, as Mininet's addLink(switch, switch)); each set of joined
        segments is one L2 domain.  Refused here, before anything else: a join that closes
        a loop (nslab's bridges run without STP, so a broadcast would circle it forever),
        two different subnets in one domain, and two gateways for one."""
        root = {n: n for n in segments}      # union-find over the joins: loops in linear time

        def find(x):
            while root[x] != x:
                root[x] = root[root[x]]
                x = root[x]
            return x

        joins: dict[str, list[str]] = {n: [] for n in segments}
        for name, (spec, path, members) in segments.items():
            gw = spec.get("gateway")
            if isinstance(gw, str) and gw in segments:
                raise self.err(path + ("gateway",), f"gateway {gw!r} of segment {name} is a segment; a gateway "
                                                    f"is a router (to join {gw} to {name}, list it under members:)")
            for member, (mspec, mpath) in members.items():
                if member not in segments:
                    continue
                if member == name:
                    raise self.err(mpath, f"segment {name} lists itself as a member")
                if isinstance(mspec, dict) and "ip" in mspec:
                    raise self.err(mpath + ("ip",), f"{member} is a segment: a join of two switches has no address")
                if find(member) == find(name):
                    loop = _join_path(joins, name, member)
                    raise self.err(mpath, f"joining segment {member} to {name} closes a loop "
                                          f"({' - '.join(loop + [name])}): nslab's bridges run without STP, so a "
                                          f"broadcast would circle it forever; remove one of these joins")
                root[find(member)] = find(name)
                joins[name].append(member)
                joins[member].append(name)
        for name in segments:               # a domain is named by its first-declared segment
            if name not in self.domains:
                todo = [name]
                self.domains[name] = name
                while todo:
                    for other in joins[todo.pop()]:
                        if other not in self.domains:
                            self.domains[other] = name
                            todo.append(other)
        for name, (spec, path, _) in segments.items():
            dom = self.domains[name]
            if "subnet" in spec:
                net = self.p.network(spec["subnet"], path + ("subnet",))
                other = self.domain_subnets.get(dom)
                if other is None:
                    self.domain_subnets[dom] = (net, path + ("subnet",))
                elif other[0] != net:
                    raise self.err(path + ("subnet",), f"subnet {net} differs from {other[0]} of segment "
                                                       f"{other[1][1]} (line {self.doc.line(other[1])}), joined to "
                                                       f"this one in one L2 domain: joined segments share one "
                                                       f"subnet (write it once, or the same on each)")
            if spec.get("gateway") is not None:
                other = self.domain_gateways.get(dom)
                if other is not None:
                    first = ("segments", other, "gateway")
                    raise self.err(path + ("gateway",), f"segment {other} (line {self.doc.line(first)}) already "
                                                        f"gives the L2 domain this segment is joined to its "
                                                        f"gateway; a domain has one (another router can be a "
                                                        f"member with an ip:)")
                self.domain_gateways[dom] = name

    def add_segment(self, name, spec, path, members=None):
        """A segment: a switch node with its bridge, its members attached (a member that is
        a segment is joined bridge to bridge: join_segments has made them one domain)."""
        dom = self.domains.setdefault(name, name)
        subnet = self.domain_subnets[dom][0] if dom in self.domain_subnets else None
        mtu = self.p.mtu(spec["mtu"], path + ("mtu",)) if "mtu" in spec else self.mtu
        bridge = self.p.ifname(spec.get("bridge", "br0"), path + ("bridge",))
        switch = self.add_node(name, "switch", {}, path, mtu=mtu)
        switch.bridges.append(Bridge(name=bridge, mtu=mtu, mac=stable_mac(self.lab, name, bridge)))
        seg = Segment(name=name, subnet=subnet, gateway=None, gateway_ip=None, bridge=bridge, mtu=mtu,
                      neighbours=self.p.neighbours(spec["neighbours"], path + ("neighbours",))
                      if "neighbours" in spec else None, domain=dom)
        self.segments[name] = seg
        seg_cond = conditions.parse(self.p, spec.get("conditions"), path + ("conditions",))
        self.segment_conditions[name] = (seg_cond, path)
        if members is None:
            members = self.p.names_or_mapping(spec.get("members"), path + ("members",), "member")
        gw = spec.get("gateway")
        gw_ip = spec.get("gateway_ip")
        if gw is not None:
            self.p.node_name(gw, path + ("gateway",))
            seg.gateway = gw
            if subnet is None and gw_ip is None:
                raise self.err(path + ("gateway",), f"segment {name} has a gateway but no subnet to give it an address from")
            if gw_ip is not None:
                seg.gateway_ip = self.p.interface(gw_ip, path + ("gateway_ip",), subnet).ip
            else:
                seg.gateway_ip = subnet.broadcast_address - 1   # .254 on a /24, as the notes' leaves
                if seg.gateway_ip not in subnet:
                    raise self.err(path + ("subnet",), f"subnet {subnet} has no room for the gateway's address "
                                                       f"(use a /31 or larger, or give gateway_ip)")
            if gw in members:
                mspec, mpath = members[gw]
                if mspec and "ip" in mspec:
                    raise self.err(mpath + ("ip",), f"{gw} is the gateway of segment {name}; give its address "
                                                    f"with gateway_ip, not here")
            else:
                members[gw] = ({}, path + ("gateway",))
        elif gw_ip is not None:
            raise self.err(path + ("gateway_ip",), "gateway_ip needs a gateway router (gateway: NAME)")
        for member, (mspec, mpath) in members.items():
            mspec = self.p.mapping(mspec, mpath, Parser.MEMBER_KEYS, what="member")
            if self.domains.get(member) == dom and member != name:
                self.join(name, member, mspec, mpath, seg_cond)
                continue
            ip = None
            if "ip" in mspec:
                ip = self.p.interface(mspec["ip"], mpath + ("ip",), subnet)
            elif member == gw:
                ip = IPv4Interface(f"{seg.gateway_ip}/{subnet.prefixlen if subnet else 32}")
            self.attach(name, member, iface=mspec.get("iface"), ip=ip, path=mpath, port=mspec.get("port"),
                        mac=mspec.get("mac"), mtu=mspec.get("mtu"),
                        auto_ip=subnet is not None and "ip" not in mspec and member != gw)
            # a member's conditions shape both ends of its veth, over the segment's
            self.attachments[-1]["conditions"] = self._merged_conditions(
                seg_cond, conditions.parse(self.p, mspec.get("conditions"), mpath + ("conditions",)), mpath)
            self.attachments[-1]["cond_path"] = mpath if "conditions" in mspec else path

    def attach(self, segment: str, node: str, iface: str | None, ip: IPv4Interface | None, path: tuple,
               port: str | None = None, mac: str | None = None, mtu: int | None = None, auto_ip: bool = False):
        """Attach `node` to a segment's bridge through a veth (node end `iface`, bridge end `port`)."""
        self.attachments.append(dict(
            kind="segment", segment=segment, path=path, mtu=self.segments[segment].mtu,
            subnet=self.segments[segment].subnet,
            a=dict(node=node, iface=iface, ip=ip, mac=mac, mtu=mtu, path=path, iface_path=path + ("iface",),
                   auto_ip=auto_ip),
            b=dict(node=segment, iface=port, ip=None, mac=None, mtu=None, path=path, iface_path=path + ("port",)),
            # the segment's conditions (members may add theirs; cluster nodes take these)
            conditions=self.segment_conditions.get(segment, (None,))[0],
            cond_path=self.segment_conditions.get(segment, (None, path))[1]))

    def join(self, segment: str, member: str, mspec: dict, mpath: tuple, seg_cond):
        """Join segment `member` to `segment`: a veth between their bridges, each end a port
        named after the other switch (`iface:` names member's end, `port:` segment's)."""
        self.attachments.append(dict(
            kind="join", segment=segment, path=mpath, mtu=None, subnet=None,
            a=dict(node=member, iface=mspec.get("iface"), ip=None, mac=mspec.get("mac"), mtu=mspec.get("mtu"),
                   path=mpath, iface_path=mpath + ("iface",), auto_ip=False),
            b=dict(node=segment, iface=mspec.get("port"), ip=None, mac=None, mtu=None, path=mpath,
                   iface_path=mpath + ("port",)),
            conditions=self._merged_conditions(
                seg_cond, conditions.parse(self.p, mspec.get("conditions"), mpath + ("conditions",)), mpath),
            cond_path=mpath if "conditions" in mspec else self.segment_conditions[segment][1]))

    def _end(self, spec, path) -> dict:
        if isinstance(spec, str):
            node, _, iface = spec.partition(":")
            return dict(node=node, iface=iface or None, ip=None, mac=None, mtu=None, path=path, iface_path=path,
                        conditions=None)
        spec = self.p.mapping(spec, path, Parser.END_KEYS, what="link end")
        if "node" not in spec:
            raise self.err(path, "a link end needs node: NAME")
        return dict(node=spec["node"], iface=spec.get("iface"), ip=spec.get("ip"), mac=spec.get("mac"),
                    mtu=spec.get("mtu"), path=path, iface_path=path + ("iface",),
                    conditions=conditions.parse(self.p, spec.get("conditions"), path + ("conditions",)))

    def add_link(self, spec, path):
        if isinstance(spec, dict):
            spec = self.p.mapping(spec, path, Parser.LINK_KEYS, what="link")
            ends, ends_path = spec.get("ends"), path + ("ends",)
            mtu = self.p.mtu(spec["mtu"], path + ("mtu",)) if "mtu" in spec else None
            subnet = self.p.network(spec["subnet"], path + ("subnet",)) if "subnet" in spec else None
            link_cond = conditions.parse(self.p, spec.get("conditions"), path + ("conditions",))
        else:
            ends, ends_path, mtu, subnet, link_cond = spec, path, None, None, None
        if not isinstance(ends, list) or len(ends) != 2:
            raise self.err(ends_path, "a point-to-point link has exactly two ends, like [a, b]")
        a, b = (self._end(e, ends_path + (i,)) for i, e in enumerate(ends))
        for end, raw in zip((a, b), ends):
            self.p.node_name(end["node"], end["path"] + (("node",) if isinstance(raw, dict) else ()))
            if end["ip"] is not None:
                end["ip"] = self.p.interface(end["ip"], end["path"] + ("ip",), subnet)
        if a["node"] == b["node"]:
            raise self.err(ends_path, f"both ends of this link are on {a['node']}; a link joins two different nodes")
        if (a["ip"] is None) != (b["ip"] is None):
            given = a if a["ip"] is not None else b
            missing = b if given is a else a
            raise self.err(missing["path"], f"this end has no address while the other has {given['ip']}; "
                                            f"give both ends an address or neither")
        if a["ip"] is not None and a["ip"].network != b["ip"].network:
            raise self.err(b["path"] + ("ip",), f"{b['ip']} is not in the same subnet as the other end {a['ip']}")
        for end in (a, b):
            end["auto_ip"] = a["ip"] is None
        for end in (a, b):        # an end's conditions shape that end only, over the link's
            end["cond_path"] = end["path"] if end["conditions"] else path
            end["conditions"] = self._merged_conditions(link_cond, end["conditions"], end["path"])
        self.attachments.append(dict(kind="link", segment=None, path=path, a=a, b=b, mtu=mtu, subnet=subnet,
                                     conditions=link_cond))

    def _merged_conditions(self, wide, narrow, path):
        try:
            return conditions.merged(wide, narrow)
        except ConditionsError as e:
            raise self.err(path + ("conditions",), f"{e} (here on top of the inherited {wide.describe()})") from None

    # ---- resolution -------------------------------------------------------------------
    def build(self) -> Topology:
        if not self.nodes:
            raise self.err((), "the topology has no nodes (add hosts:, routers:, segments: or cluster:)")
        for node in self.nodes.values():
            node.ns = namespace_name(self.lab, node.name)
            if node.kind == "router":
                node.sysctls.setdefault("net.ipv4.ip_forward", "1")
        self._resolve_attachments()
        self._allocate_link_subnets()
        self._check_addresses()
        for ext in self.extensions:
            ext(self)
        self._check_kernel_names()
        self._check_macs()
        topo = Topology(name=self.lab, file=self.doc.file, mtu=self.mtu, ipv6=self.ipv6, nodes=self.nodes,
                        segments=self.segments, doc=self.doc, cluster=self.cluster, tests=self.tests,
                        neighbours=self.neighbours or "dynamic", neighbours_given=self.neighbours is not None)
        limits.choose_neighbours(topo)     # always: a lab's record reads back as it was built
        if getattr(self.p, "check_limits", True):   # off for a running lab's record (checked at up)
            limits.check(topo)      # what this machine can hold (descriptors, neighbour table), before routes
        self._resolve_routes()
        return topo

    def _check_kernel_names(self):
        """Every name as the kernel will see it, in bytes: namespaces (/run/netns/<lab>.<node>),
        and per namespace the devices nslab and the cluster backend create, all distinct."""
        reserved: dict[str, dict[str, str]] = {}       # node -> {device: who makes it}
        if self.cluster is not None:
            device = self.cluster.backend.device
            for cn in self.cluster.nodes.values():
                made = reserved.setdefault(cn.name, {})
                if device:
                    made[device] = f"the {self.cluster.backend.type} backend's device"
        for node in self.nodes.values():
            if len(node.ns.encode()) > NAME_MAX:
                raise self.err(node.path, f"namespace name {node.ns} is {len(node.ns.encode())} bytes; "
                                          f"a file name under /run/netns holds at most {NAME_MAX}")
            ports: dict[str, int] = {}
            for i in node.ifaces:
                if i.bridge:
                    ports[i.bridge] = ports.get(i.bridge, 0) + 1
            for br, count in ports.items():
                if count > BRIDGE_PORTS:
                    what = f"segment {node.name}" if node.kind == "switch" else f"bridge {br} of {node.name}"
                    raise self.err(node.path, f"{what} would have {count:,} ports; a Linux bridge holds at most "
                                              f"{BRIDGE_PORTS:,} (split it, or build a fabric: nslab generate clos)")
            names: dict[str, str] = dict(reserved.get(node.name, {}))
            devices = [(br.name, node.path, "bridge") for br in node.bridges]
            devices += [(i.name, self.iface_paths.get(id(i), node.path), "interface") for i in node.ifaces]
            devices += [(t.name, t.path, "tunnel") for t in node.tunnels]
            for name, path, what in devices:
                size = len(name.encode())
                if not name or size >= IFNAMSIZ:
                    raise self.err(path, f"{what} name {name!r} on {node.name} is {size} bytes; Linux allows "
                                         f"at most {IFNAMSIZ - 1}")
                if name in KERNEL_DEVICES:
                    raise self.err(path, f"{node.name} cannot have a {what} named {name}: the kernel makes "
                                         f"that device itself in every namespace")
                if name in names:
                    raise self.err(path, f"{node.name} would have two devices named {name} (this {what} and "
                                         f"{names[name]})")
                names[name] = f"a {what}"

    def _check_macs(self):
        """No two interfaces on one L2 domain (a segment's bridge, a cni0, a veth pair) share
        a MAC: the bridge would send one's frames to the other."""
        domains: dict[tuple, dict[str, Iface]] = {}
        for node in self.nodes.values():
            for iface in node.ifaces:
                if iface.segment:
                    key = ("segment", self.segments[iface.segment].domain)
                elif iface.bridge:
                    key = ("bridge", node.name, iface.bridge)
                else:
                    peer = self.nodes[iface.peer_node].iface(iface.peer_name)
                    key = ("bridge", peer.node, peer.bridge) if peer is not None and peer.bridge else \
                        ("pair",) + tuple(sorted(((node.name, iface.name), (iface.peer_node, iface.peer_name))))
                seen = domains.setdefault(key, {})
                other = seen.get(iface.mac)
                if other is not None:
                    path = self.iface_paths.get(id(iface), node.path)
                    where = f"segment {iface.segment}" if iface.segment else "the same link"
                    if iface.segment and other.segment != iface.segment:
                        where += f" (joined to {other.segment})"
                    raise self.err(path, f"MAC {iface.mac} of {node.name}:{iface.name} is also the MAC of "
                                         f"{other.node}:{other.name} on {where}; every MAC on one L2 network "
                                         f"must be different")
                seen[iface.mac] = iface

    def _early_route_count(self):
        """The route-count check (_check_route_count) from who is attached to what, before
        interfaces, addresses and subnets exist: a 2,000-router mesh was refused only after
        6 s of allocation.  The same directed router graph _router_adjacency builds later (a
        router reaches the addressed routers of each segment it is on, and the router at the
        other end of each link), with a segment as one stop instead of routers x routers
        edges, and the same subnets (links: one each; a segment: its subnet, or its members'
        own networks)."""
        nodes, routers = self.nodes, [n for n, x in self.nodes.items() if x.kind == "router"]
        if not routers:
            return
        out: dict[object, list] = {r: [] for r in routers}     # router or ("seg", name) -> next stops
        subnets: dict[object, set[str]] = {}
        for k, att in enumerate(self.attachments):
            a, b = att["a"], att["b"]
            kind = att["kind"]
            if kind == "segment":
                if nodes[a["node"]].kind != "router":
                    continue
                stop = ("seg", self.domains[att["segment"]])     # joined segments: one stop
                out[a["node"]].append(stop)
                if a["ip"] is not None or a.get("auto_ip"):
                    out.setdefault(stop, []).append(a["node"])
                    net = a["ip"].network if a["ip"] is not None else att["subnet"]
                    subnets.setdefault(net, set()).add(a["node"])
            elif kind == "link":
                ra, rb = nodes[a["node"]].kind == "router", nodes[b["node"]].kind == "router"
                if ra and rb:
                    out[a["node"]].append(b["node"])
                    out[b["node"]].append(a["node"])
                if ra or rb:    # every link end gets an address (given, its subnet's, or the pool's)
                    net = a["ip"].network if a["ip"] is not None else att["subnet"] or ("link", k)
                    subnets.setdefault(net, set()).update(e["node"] for e, r in ((a, ra), (b, rb)) if r)
            elif nodes[a["node"]].kind == "router" or nodes[b["node"]].kind == "router":
                return      # another kind of attachment on a router: leave it to the full check
        comp: dict[object, int] = {}
        sizes: list[int] = []
        for start in routers:
            if start in comp:
                continue
            comp[start], queue, size = len(sizes), [start], 0
            while queue:
                r = queue.pop()
                size += isinstance(r, str)
                for nb in out.get(r, ()):
                    if nb not in comp:
                        comp[nb] = comp[start]
                        queue.append(nb)
            sizes.append(size)
        total = sum(sizes[comp[next(iter(attached))]] - len(attached) for attached in subnets.values())
        if total > MAX_COMPUTED_ROUTES:
            raise self._route_count_error(total, len(routers))

    def _route_count_error(self, total: int, routers: int) -> TopologyError:
        return TopologyError(self.doc.display_name, None, "",
                             f"the routers would need {total:,} routes ({routers:,} routers each learning every "
                             f"subnet they reach); nslab computes at most {MAX_COMPUTED_ROUTES:,}: split the "
                             f"lab, or join routers through fewer subnets")

    def _next_free_ifname(self, node: Node, prefix="eth") -> str:
        taken = self._ifnames.setdefault(node.name, set())
        n = self._next_eth.get(node.name, 0)       # names only get taken: resume where we were
        while f"{prefix}{n}" in taken:
            n += 1
        self._next_eth[node.name] = n
        return f"{prefix}{n}"

    def _resolve_attachments(self):
        # gateways first: an unknown gateway is also a pending member, and "unknown gateway"
        # says more than "unknown node"
        for seg in self.segments.values():
            if seg.gateway is not None:
                gw = self.nodes.get(seg.gateway)
                if gw is None or gw.kind != "router":
                    path = ("segments", seg.name, "gateway")
                    raise self.err(path, f"gateway {seg.gateway!r} of segment {seg.name} must be a router "
                                         f"(declared under routers:)" if gw is not None else
                                         f"unknown gateway {seg.gateway!r} (routers: "
                                         f"{name_list(n for n, x in self.nodes.items() if x.kind == 'router')})")
        for att in self.attachments:
            a, b = att["a"], att["b"]
            for end in (a, b):
                if end["node"] not in self.nodes:
                    raise self.err(end["path"], f"unknown node {end['node']!r} (nodes: "
                                                f"{name_list(sorted(n for n, x in self.nodes.items() if x.kind != 'switch'))})")
            if att["kind"] == "link":
                for end in (a, b):
                    if self.nodes[end["node"]].kind == "switch":
                        raise self.err(end["path"], f"{end['node']} is a segment; attach nodes to it with "
                                                    f"segments.{end['node']}.members, not links")
        self._early_route_count()
        on_segment: set[tuple[str, str]] = set()    # (node, segment): a gateway of 12,000 segments
        for att in self.attachments:                 # was a scan of its interfaces per segment
            a, b = att["a"], att["b"]
            na, nb = self.nodes[a["node"]], self.nodes[b["node"]]
            if att["kind"] == "segment":
                seg = self.segments[att["segment"]]
                if (na.name, seg.name) in on_segment:
                    raise self.err(a["path"], f"{na.name} is attached to segment {seg.name} twice")
                on_segment.add((na.name, seg.name))
            names = []
            for end, node in ((a, na), (b, nb)):
                if end["iface"] is not None:
                    name = self.p.ifname(end["iface"], end["iface_path"])
                    if name in self._ifnames.get(node.name, ()) or name == node.bridge or name == "lo":
                        raise self.err(end["iface_path"], f"{node.name} already has an interface named {name}")
                elif att["kind"] == "segment" and node is nb or att["kind"] == "join":
                    other = na if node is nb else nb    # a bridge port is named after what it leads to
                    name = short_ifname(other.name) if short_ifname(other.name) not in self._ifnames.get(node.name, ()) \
                        else short_ifname(node.name, other.name)
                else:
                    name = self._next_free_ifname(node)
                names.append(name)
            mtus = []
            for end, node in ((a, na), (b, nb)):
                if end["mtu"] is not None:
                    mtus.append(self.p.mtu(end["mtu"], end["path"] + ("mtu",)))
                else:
                    mtus.append(self._default_mtu(att, node, na, nb))
            for idx, (end, node) in enumerate(((a, na), (b, nb))):
                mac = self.p.mac(end["mac"], end["path"] + ("mac",)) if end["mac"] else \
                    stable_mac(self.lab, node.name, names[idx])
                other = (b, nb) if idx == 0 else (a, na)
                cond = end.get("conditions") or att.get("conditions")    # links: merged in add_link
                conditions.check_burst(self.p, cond, mtus[idx], end.get("cond_path") or att.get("cond_path", att["path"]))
                iface = Iface(node=node.name, name=names[idx], ip=end["ip"], mac=mac, mtu=mtus[idx],
                              peer_node=other[1].name, peer_name=names[1 - idx],
                              segment=node.name if att["kind"] == "join" else att["segment"], conditions=cond)
                if att["kind"] == "segment" and node is nb or att["kind"] == "join":
                    iface.bridge = node.bridge
                if end.get("bridge"):       # a port of a bridge inside a node (cni0)
                    iface.bridge, iface.hairpin = end["bridge"], end.get("hairpin", False)
                node.ifaces.append(iface)
                self._ifnames.setdefault(node.name, set()).add(iface.name)
                end["iface_obj"] = iface
                self.iface_paths[id(iface)] = end["iface_path"] if end["iface"] is not None else end["path"]

    def _default_mtu(self, att, node: Node, na: Node, nb: Node) -> int:
        """An interface's MTU when its end does not say: the link's, else the node's own
        `mtu:` if it declared one, else the segment's (or, for a link, the smaller node MTU)."""
        if att["kind"] == "link":
            return att["mtu"] or min(na.mtu, nb.mtu)
        if att["kind"] == "join":           # two segments' bridges: the smaller MTU
            return min(na.mtu, nb.mtu)
        if att["kind"] == "segment" and "mtu" in self.node_specs.get(node.name, {}):
            return node.mtu
        return att["mtu"]

    def _by_domain(self) -> dict[str, list[dict]]:
        """Each L2 domain's attachments (its segments' members), in the order written."""
        out: dict[str, list[dict]] = {}
        for att in self.attachments:
            if att["segment"] is not None and att["kind"] != "join":
                out.setdefault(self.segments[att["segment"]].domain, []).append(att)
        return out

    def _all_subnets(self) -> list[tuple[IPv4Network, tuple]]:
        out = [self.domain_subnets[s.name] for s in self.segments.values() if s.name in self.domain_subnets]
        for att in self.attachments:
            if att["kind"] == "link" and att["a"]["ip"] is not None:
                where = (att["path"] + ("subnet",) if att["subnet"] is not None else att["path"]) \
                    if att["a"].get("auto_ip") else att["a"]["path"] + ("ip",)
                out.append((att["a"]["ip"].network, where))
        by_domain = self._by_domain()
        for seg in self.segments.values():
            if seg.subnet is None and seg.domain == seg.name:   # members addressed by hand: each
                nets = {}                                       # network the domain carries, once
                for att in by_domain.get(seg.name, []):
                    if att["a"]["ip"] is not None:
                        nets.setdefault(att["a"]["ip"].network, att["a"]["path"] + ("ip",))
                out.extend(nets.items())
        return out

    def _allocate_link_subnets(self):
        used = [n for n, _ in self._all_subnets()]
        used += [att["subnet"] for att in self.attachments if att["kind"] == "link" and att["subnet"] is not None]
        # addresses as ints (ipv4_interface): never an enumeration of a range, never a parse
        candidates = free_blocks(self.link_pool, 30, used)
        for att in self.attachments:
            a, b = att["a"], att["b"]
            if att["kind"] in ("segment", "join"):     # a join of two bridges has no address
                continue
            if a["ip"] is not None:
                continue
            if att["subnet"] is not None:
                net = att["subnet"]
                first, last = host_range(net)
                prefixlen = net.prefixlen
                if last - first < 1:
                    raise self.err(att["path"] + ("subnet",), f"{net} has room for fewer than two addresses")
            else:
                first = next(candidates, None)
                if first is None:
                    raise self.err(att["path"], f"link address pool {self.link_pool} is exhausted; "
                                                f"set pools.links to a larger network")
                first, prefixlen = first + 1, 30
            a["iface_obj"].ip = a["ip"] = ipv4_interface(first, prefixlen)
            b["iface_obj"].ip = b["ip"] = ipv4_interface(first + 1, prefixlen)
        # segment members without an address: next free host address of their L2 domain,
        # in member order (joined segments in the order written: Mininet's h1, h2, ...)
        by_domain = self._by_domain()
        for seg in self.segments.values():
            if seg.subnet is None or seg.domain != seg.name:
                continue
            members = by_domain.get(seg.name, [])
            taken = {att["a"]["ip"]._ip for att in members if att["a"]["ip"] is not None}
            addr, last = host_range(seg.subnet)
            for att in members:
                if att["a"]["auto_ip"]:
                    while addr in taken:
                        addr += 1
                    if addr > last:
                        joined = "" if att["segment"] == seg.name else f", joined to {seg.name}"
                        raise self.err(att["path"], f"segment {att['segment']} ({seg.subnet}{joined}) has no free "
                                                    f"address left")
                    att["a"]["iface_obj"].ip = att["a"]["ip"] = ipv4_interface(addr, seg.subnet.prefixlen)
                    addr += 1

    def _check_addresses(self):
        subnets = sorted(self._all_subnets(), key=lambda s: self.doc.line(s[1]) or 0)  # blame the later line
        # CIDR blocks either nest or are disjoint: one sweep in address order finds, for each
        # block, one earlier block containing it (not all pairs: n log n, not n squared).
        bounds = [network_bounds(net) for net, _ in subnets]
        order = sorted(range(len(subnets)), key=lambda k: (bounds[k][0], subnets[k][0].prefixlen))
        pairs, cover = [], None
        for k in order:
            first, last = bounds[k]
            if cover is not None and first <= bounds[cover][1]:
                pairs.append((min(cover, k), max(cover, k)))
            if cover is None or last > bounds[cover][1]:
                cover = k
        if pairs:
            i, j = min(pairs)
            (n1, p1), (n2, p2) = subnets[i], subnets[j]
            raise self.err(p2, f"subnet {n2} overlaps {n1} ({yamldoc.format_path(p1)}, line {self.doc.line(p1)})")
        seen: dict[int, tuple] = {}     # the address as an int: an IPv4Address is built per .ip
        for att in self.attachments:
            for end in (att["a"], att["b"]):
                ip = end["ip"]
                if ip is None:
                    continue
                other = seen.get(ip._ip)
                if other is not None:
                    other_node, other_path = other
                    raise self.err(end["path"] + ("ip",) if not end.get("auto_ip") else end["path"],
                                   f"address {ip.ip} is already used by {other_node} (line {self.doc.line(other_path)})")
                seen[ip._ip] = (end["node"], end["path"])

    # ---- routes ------------------------------------------------------------------------
    def _resolve_routes(self):
        for name, node in self.nodes.items():
            spec = self.node_specs.get(name, {})
            if "routes" in spec:
                node.routes.extend(self._static_routes(node, spec["routes"], node.path + ("routes",)))
        self._default_routes()
        self._router_routes()

    def _static_routes(self, node: Node, specs, path) -> list[Route]:
        if not isinstance(specs, list):
            raise self.err(path, "routes must be a list of {to: CIDR|default, via: ADDRESS, dev: IFACE}")
        out = []
        dsts: set[IPv4Network] = set()      # routes x routes comparisons, and routes x interfaces
        on_net: dict[int, dict[int, list[int]]] = {}   # scans, were 10^8 steps for a big router
        for k, i in enumerate(node.ifaces):     # prefix length -> network (an int) -> iface indexes
            if i.ip is not None:
                on_net.setdefault(i.ip.network.prefixlen, {}).setdefault(
                    i.ip.network.network_address._ip, []).append(k)
        for i, spec in enumerate(specs):
            p = path + (i,)
            spec = self.p.mapping(spec, p, Parser.ROUTE_KEYS, what="route")
            if "to" not in spec:
                raise self.err(p, "a route needs to: CIDR (or default)")
            dst = IPv4Network("0.0.0.0/0") if spec["to"] == "default" else self.p.network(spec["to"], p + ("to",))
            dev = spec.get("dev")
            if dev is not None and node.iface(dev) is None:
                raise self.err(p + ("dev",), f"{node.name} has no interface {dev!r} "
                                             f"(it has: {name_list(i.name for i in node.ifaces)})")
            via = self.p.address(spec["via"], p + ("via",)) if "via" in spec else None
            onlink = spec.get("onlink", False)
            if not isinstance(onlink, bool):
                raise self.err(p + ("onlink",), f"onlink must be true or false, got {onlink!r}")
            if via is None and dev is None:
                raise self.err(p, "a route needs via: ADDRESS or dev: IFACE")
            if via is not None and not onlink:
                # the first interface (in order) whose network holds via: one lookup per prefix length
                v = via._ip
                on = sorted(k for plen, nets in on_net.items()
                            for k in nets.get(v & (0xFFFFFFFF ^ ((1 << (32 - plen)) - 1)), ())
                            if dev is None or node.ifaces[k].name == dev)
                if not on:
                    raise self.err(p + ("via",), f"gateway {via} is not on any subnet connected to {node.name}")
                dev = dev or node.ifaces[on[0]].name
            if dst in dsts:
                raise self.err(p + ("to",), f"{node.name} already has a route to {dst}")
            dsts.add(dst)
            out.append(Route(dst=dst, nexthops=[Nexthop(via=via, dev=dev)], onlink=onlink, origin="static"))
        return out

    def _default_routes(self):
        """A host's default route: via its segment's gateway, else via the router at the
        other end of one of its links (what a DHCP'd host or a container gets)."""
        for node in self.nodes.values():
            if node.kind not in ("host",) or any(r.dst.prefixlen == 0 for r in node.routes):
                continue
            if any(r.origin == "static" for r in node.routes):
                continue  # the user wrote this node's routes; add nothing behind their back
            nh = None
            for iface in node.ifaces:
                seg = self.segments.get(iface.segment) if iface.segment else None
                if seg and seg.domain in self.domain_gateways:      # its own segment's, or a joined one's
                    seg = self.segments[self.domain_gateways[seg.domain]]
                if seg and seg.gateway and seg.gateway != node.name:
                    nh = Nexthop(via=seg.gateway_ip, dev=iface.name)
                    break
                peer = self.nodes[iface.peer_node]
                if not iface.segment and peer.kind == "router":
                    nh = Nexthop(via=peer.iface(iface.peer_name).ip.ip, dev=iface.name)
                    break
            if nh:
                node.routes.append(Route(dst=DEFAULT_ROUTE, nexthops=[nh], origin="computed"))

    def _router_adjacency(self):
        """router -> [(neighbour router, its address, my interface)] over links and segments."""
        adj: dict[str, list] = {n: [] for n, x in self.nodes.items() if x.kind == "router"}
        # each segment's addressed router interfaces, in node order: not a scan of every
        # node per router interface (100 leaves x 10,000 nodes)
        on_segment: dict[str, list] = {}     # by L2 domain: joined segments are one network
        for r in adj:
            for oi in self.nodes[r].ifaces:
                if oi.segment and oi.ip is not None:
                    on_segment.setdefault(self.segments[oi.segment].domain, []).append((r, oi))
        for r in adj:
            for iface in self.nodes[r].ifaces:
                if iface.segment:
                    for other, oi in on_segment.get(self.segments[iface.segment].domain, ()):
                        if other != r:
                            adj[r].append((other, oi.ip.ip, iface.name))
                else:
                    peer = self.nodes[iface.peer_node]
                    if peer.kind == "router":
                        adj[r].append((peer.name, peer.iface(iface.peer_name).ip.ip, iface.name))
        return adj

    def _check_route_count(self, adj, subnets):
        """Every router learns every subnet of its part of the router graph: routers x
        subnets routes, quadratic.  Count them first (components, linear) and refuse a lab
        that would take minutes and gigabytes to compute (a chain of 1,500 routers: 2.2
        million routes)."""
        comp: dict[str, int] = {}
        sizes: list[int] = []
        for start in adj:
            if start in comp:
                continue
            comp[start], queue, size = len(sizes), [start], 0
            while queue:
                r = queue.pop()
                size += 1
                for nb, _, _ in adj[r]:
                    if nb not in comp:
                        comp[nb] = comp[start]
                        queue.append(nb)
            sizes.append(size)
        total = sum(sizes[comp[next(iter(attached))]] - len(attached) for attached in subnets.values() if attached)
        if total > MAX_COMPUTED_ROUTES:
            raise self._route_count_error(total, len(adj))

    def _router_routes(self):
        """Every router learns every subnet it is not connected to, by shortest path (hop
        count) over the router graph, with ECMP (a multipath route) where paths tie."""
        adj = self._router_adjacency()
        if not adj:
            return
        declared = {r: {rt.dst for rt in self.nodes[r].routes} for r in adj}
        subnets: dict[IPv4Network, set[str]] = {}
        for node in self.nodes.values():
            for iface in node.ifaces:
                if iface.ip is not None:
                    subnets.setdefault(iface.ip.network, set())
                    if node.kind == "router":
                        subnets[iface.ip.network].add(node.name)
        self._check_route_count(adj, subnets)
        # One BFS per router (not per subnet): hop counts between routers, and for each
        # router the next hops toward each other router, computed once and shared by every
        # route that uses them.  A subnet on several routers: the nearest ones, next hops
        # merged in adjacency order (a neighbour one hop nearer to any nearest router).
        dist: dict[str, dict[str, int]] = {}
        for src in adj:
            d = {src: 0}
            queue = deque([src])
            while queue:
                r = queue.popleft()
                for nb, _, _ in adj[r]:
                    if nb not in d:
                        d[nb] = d[r] + 1
                        queue.append(nb)
            dist[src] = d
        toward: dict[tuple[str, str], list[int]] = {}
        # (neighbour, address as an int) per adjacency entry: hashing IPv4Address objects
        # was a sixth of a 10,000-node validate
        hop_keys = {r: [(nb, int(addr)) for nb, addr, _ in adj[r]] for r in adj}

        def hop_indexes(r: str, x: str) -> list[int]:
            key = (r, x)
            found = toward.get(key)
            if found is None:
                d, dx, seen, found = dist[x][r] - 1, dist[x], set(), []
                for k, hop in enumerate(hop_keys[r]):
                    if dx.get(hop[0]) == d and hop not in seen:
                        seen.add(hop)
                        found.append(k)
                toward[key] = found
            return found

        hop_lists: dict[tuple, list[Nexthop]] = {}
        nexthop_objs: dict[int, Nexthop] = {}

        def hops_for(r: str, indexes: tuple) -> list[Nexthop]:
            key = (r, indexes)
            hops = hop_lists.get(key)
            if hops is None:
                hops = []
                for k in indexes:
                    hop = nexthop_objs.get(id(adj[r][k]))
                    if hop is None:
                        _, addr, dev = adj[r][k]
                        hop = nexthop_objs[id(adj[r][k])] = Nexthop(via=addr, dev=dev)
                    hops.append(hop)
                hop_lists[key] = hops
            return hops

        toward_hops: dict[tuple[str, str], list[Nexthop]] = {}
        merged_hops: dict[tuple[str, tuple], list[Nexthop]] = {}    # toward several equally near routers
        routes = {r: self.nodes[r].routes for r in adj}
        for net, attached in subnets.items():
            if not attached:
                continue
            if len(attached) == 1:
                (a,) = attached
                for r, d in dist[a].items():
                    if d == 0 or (declared[r] and net in declared[r]):
                        continue  # connected, or a declared route wins
                    hops = toward_hops.get((r, a))
                    if hops is None:
                        hops = toward_hops[(r, a)] = hops_for(r, tuple(hop_indexes(r, a)))
                    # shared Nexthop lists: routes are read, never changed in place
                    routes[r].append(Route(dst=net, nexthops=hops, origin="computed"))
                continue
            # each router's distance to the nearest attached routers, and which ones they are:
            # one pass over the attached routers' distance maps (a /30 between two routers is
            # most subnets of a fabric)
            nearest_of: dict[str, tuple[int, list[str]]] = {}
            for a in sorted(attached):
                for r, d in dist[a].items():
                    found = nearest_of.get(r)
                    if found is None or d < found[0]:
                        nearest_of[r] = (d, [a])
                    elif d == found[0]:
                        found[1].append(a)
            for r, (d, nearest) in nearest_of.items():
                if d == 0 or (declared[r] and net in declared[r]):
                    continue
                if len(nearest) == 1:
                    hops = toward_hops.get((r, nearest[0]))
                    if hops is None:
                        hops = toward_hops[(r, nearest[0])] = hops_for(r, tuple(hop_indexes(r, nearest[0])))
                else:
                    hops = merged_hops.get((r, tuple(nearest)))
                    if hops is None:
                        merged, seen, indexes = set(), set(), []
                        for a in nearest:
                            merged.update(hop_indexes(r, a))
                        for k in sorted(merged):
                            if hop_keys[r][k] not in seen:
                                seen.add(hop_keys[r][k])
                                indexes.append(k)
                        hops = merged_hops[(r, tuple(nearest))] = hops_for(r, tuple(indexes))
                routes[r].append(Route(dst=net, nexthops=hops, origin="computed"))


def _join_path(joins: dict[str, list[str]], start: str, goal: str) -> list[str]:
    """The segments from start to goal over the joins so far (a forest: one path)."""
    back, todo = {start: None}, deque([start])
    while todo:
        x = todo.popleft()
        for y in joins[x]:
            if y not in back:
                back[y] = x
                todo.append(y)
    path, x = [], goal
    while x is not None:
        path.append(x)
        x = back[x]
    return path[::-1]


def load(file: str, text: str | None = None, name: str | None = None, overrides: dict | None = None,
         check_limits: bool = True) -> Topology:
    """Parse and validate a topology file; raise TopologyError on the first problem.
    overrides: command-line changes (backend type) applied as if written in the file.
    check_limits=False: skip what this machine can hold (re-reading a running lab's record).

    The cyclic garbage collector is paused while the model is built: it holds hundreds of
    thousands of new objects that none of its passes can free, and each pass walks them
    again (a third of the time of a 40,000-node load).  A one-shot caller that keeps the
    topology to the end can gc.freeze() after this, so its later passes skip them too."""
    paused = gc.isenabled()
    gc.disable()
    try:
        doc = yamldoc.load(file, text)
        parser = Parser(doc, name)
        parser.overrides = overrides or {}
        parser.check_limits = check_limits
        builder = parser.parse()
        topo = builder.build()
        topo.placement = builder.placement      # compile/placement.py reads it
    finally:
        if paused:
            gc.enable()
    if parser.overrides.get("backend") and topo.cluster is None:
        raise UsageError(f"--backend {parser.overrides['backend']}: {doc.display_name} has no cluster: section, "
                         f"so there is no flannel backend to choose")
    if parser.overrides.get("proxy_mode") and topo.cluster is None:
        raise UsageError(f"--proxy-mode {parser.overrides['proxy_mode']}: {doc.display_name} has no cluster: "
                         f"section, so there is no kube-proxy to choose a mode for")
    return topo


# Sysctls known to hold one integer (proc_dointvec): their values are checked at validate.
# Any other value is the kernel's to judge at `up`, which names the file's line when it refuses.
INTEGER_SYSCTLS = {"net.ipv4.ip_forward", "net.ipv4.fib_multipath_hash_policy", "net.ipv4.fib_multipath_use_neigh",
                   "net.ipv4.ip_nonlocal_bind", "net.ipv4.ip_default_ttl", "net.ipv4.ip_no_pmtu_disc",
                   "net.ipv4.icmp_echo_ignore_all", "net.ipv4.icmp_echo_ignore_broadcasts", "net.ipv4.tcp_syncookies",
                   "net.ipv6.fib_multipath_hash_policy", "net.ipv6.conf.all.forwarding"}


def _integer_sysctl(levels: list[str]) -> bool:
    """Every key of net.ipv4.conf.<dev>.* and net.ipv4/ipv6.neigh.<dev>.* is one integer, and
    of net.ipv6.conf.<dev>.* all but stable_secret (an address); plus INTEGER_SYSCTLS."""
    if ".".join(levels) in INTEGER_SYSCTLS:
        return True
    if len(levels) != 5 or levels[0] != "net":
        return False
    return levels[1:3] in (["ipv4", "conf"], ["ipv4", "neigh"], ["ipv6", "neigh"]) or \
        (levels[1:3] == ["ipv6", "conf"] and levels[4] != "stable_secret")
