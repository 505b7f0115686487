"""`nslab trace`: send one probe and show the path it took, hop by hop, with the kernel
table entry that decided each step (note 000's "pod eth0 -> host veth -> cni0 ->
flannel.1 -> ens33 -> ...", note 002's "how each field is found").

How it works, without a process per interface or per namespace:
1. capture: observe/sniffer.py's packet socket in every lab namespace, all read from this
   thread; each frame comes with its interface and direction (PACKET_OUTGOING or not).
2. probe: ICMP echo, a TCP connect, or a UDP datagram, sent by observe/probe.fire from
   the source's namespace.  Its ICMP id/seq or source port is the marker that finds it in
   every frame, also inside VXLAN/IPIP/flannel-UDP encapsulation and inside ICMP errors.
3. path: a node's observations are in its socket's arrival order (causal inside one
   namespace); nodes are chained by following the topology's links from the sender.
4. explain: for each step, the kernel of that namespace is asked (pyroute2, in-process):
   `ip route get fibmatch` for the route line, the neighbour entry of the next hop, the
   FDB entry of a vxlan device or of a bridge.  Nothing is recomputed from the topology.
   Where the probe stops, the same lookups say why (no route, no neighbour, TTL, ...).
Decoding (nslab/decode.py, shared with `nslab capture --decode` and `nslab test`) and
matching are pure functions (tests/observe/test_trace_format.py).
"""
from __future__ import annotations

import errno
import json
import ipaddress
import os
import random
import select
import socket
import subprocess
import time
from dataclasses import dataclass
from typing import Any

from .. import backends
from .. import console as out
from .. import lab as labmod
from .. import state
from ..apply import netns
from .decode import decode, first_layer, format_layer, format_layers, innermost_ip, ip_key, split
from ..errors import NslabError, UsageError
from ..model.tests import SVC, service_ref
from .. import spawn
from . import nat
from . import probe as probes
from .sniffer import Frame, Sniffer
from .show import format_fdb, format_neigh, format_route, norm_fdb, norm_link, norm_neigh, norm_route

RTM_F_FIB_MATCH = 0x2000       # `ip route get fibmatch`: the table entry, not a cloned result
AF_BRIDGE = 7
IFF_NOARP = 0x80
PROTOS = ("icmp", "tcp", "udp")


# --- the probe ------------------------------------------------------------------------------

@dataclass
class Probe:
    proto: str                 # icmp | tcp | udp
    src: str | None            # source address (None: the kernel picks it)
    dst: str
    port: int | None = None    # tcp/udp destination port
    ident: int = 0             # icmp id, or the tcp/udp source port
    seq: int = 0               # icmp seq
    ttl: int | None = None
    aliases: tuple = ()        # (sport, dport) of the request after NAT (observe/nat.py)

    def describe(self) -> str:
        if self.proto == "icmp":
            return f"icmp echo id {self.ident} seq {self.seq}"
        return f"{self.proto} {self.ident} > {self.port}"

    def classify(self, layers: list[dict]) -> str | None:
        """'request', 'reply', 'error' (an ICMP error quoting the request) or None."""
        ip, l4 = innermost_ip(layers)
        if ip is None or l4 is None:
            return None
        kind = self._match(l4)
        if kind:
            return kind
        if l4["layer"] == "icmp" and l4.get("quote"):
            _, ql4 = innermost_ip(l4["quote"])
            if ql4 is not None and self._match(ql4, quoted=True) == "request":
                return "error"
        return None

    def _match(self, l4: dict, quoted: bool = False) -> str | None:
        kind = l4["layer"]
        if self.proto == "icmp" and kind == "icmp" and l4.get("id") == self.ident and l4.get("seq") == self.seq:
            return {8: "request", 0: "reply"}.get(l4["type"])
        if self.proto == kind and kind in ("tcp", "udp"):
            fwd = {(self.ident, self.port), *self.aliases}
            if (l4["sport"], l4["dport"]) in fwd:
                if kind == "tcp" and not quoted and l4["flags"].replace("S", "") != "":
                    return None                           # the SYN only, not the ACK that follows
                return "request"
            if (l4["dport"], l4["sport"]) in fwd:
                if kind == "tcp" and not ("S" in l4["flags"] or "R" in l4["flags"]):
                    return None
                return "reply"
        return None


def send_probe(ns: str, probe: Probe) -> tuple[socket.socket | None, OSError | None, int]:
    """Send the probe from inside `ns` (observe/probe.fire); returns (socket to close later,
    send error, send time ns).  Fills probe.ident for tcp/udp (the source port the kernel gave)."""
    fired = probes.fire(ns, probe.proto, probe.dst, probe.port, probe.ident, probe.seq,
                        probes.new_marker("trace"), probe.src, probe.ttl)
    if probe.proto != "icmp":
        probe.ident = fired.sport
    return fired.sock, fired.error, fired.t_ns


# --- capture ---------------------------------------------------------------------------------

@dataclass
class Obs:
    """One sighting of a probe frame: node, interface, direction, headers."""
    node: str
    iface: str
    dir: str                   # in | out
    t_ns: int
    order: int                 # arrival order on the node's socket (causal inside a namespace)
    kind: str                  # request | reply | error
    layers: list[dict]


def observe(probe: Probe, encap: dict, frame: Frame) -> Obs | None:
    """The frame as a sighting of the probe, or None if it is not about it."""
    layers = decode(frame.data, frame.hatype, encap)
    kind = probe.classify(layers) or ("icmp error?" if _quote_tuple(layers) else None)
    if kind is None:
        return None
    return Obs(frame.node, frame.iface, frame.dir, frame.t_ns, frame.order, kind, layers)


# --- building the path (pure) ----------------------------------------------------------------

def build_path(obs: list[Obs], start: str | None, peers: dict[tuple[str, str], tuple[str, str]]) -> tuple[list[Obs], list[Obs]]:
    """(path, also_seen): the start node's sightings in order, then the node on the other end
    of the link it left by, and so on.  First sighting per (node, iface, dir) counts (a
    retransmission is not a new hop); sightings off the path (a flooded copy) are returned
    apart, in time order."""
    by_node: dict[str, list[Obs]] = {}
    firsts: set = set()
    for o in sorted(obs, key=lambda o: o.order):
        key = (o.node, o.iface, o.dir)
        if key not in firsts:
            firsts.add(key)
            by_node.setdefault(o.node, []).append(o)
    # a node can be passed twice (a NodePort's DNATed packet goes back out through the
    # switches it came in by, encapsulated): its sightings split into visits, in...out each
    visits: dict[str, list[list[Obs]]] = {}
    for n, seen in by_node.items():
        groups: list[list[Obs]] = []
        for o in seen:
            if not groups or (o.dir == "in" and groups[-1][-1].dir == "out"):
                groups.append([])
            groups[-1].append(o)
        visits[n] = groups
    path: list[Obs] = []
    node = start if start in by_node else None
    if node is None and by_node:
        # No known start (an ICMP error): the node that made the packet is the one whose
        # first sighting is outgoing (every other node receives it first); time breaks ties.
        # Not time alone: sightings on different sockets are read in poll order, and a
        # frame without a kernel timestamp gets the time it was read.
        node = min(by_node, key=lambda n: (by_node[n][0].dir != "out", by_node[n][0].t_ns))
    while node is not None and visits[node]:
        steps = visits[node].pop(0)
        path += steps
        node = None
        for o in steps:
            peer = peers.get((o.node, o.iface)) if o.dir == "out" else None
            if peer and peer[0] in visits and visits[peer[0]]:
                node = peer[0]
                break
    rest = sorted((o for groups in visits.values() for g in groups for o in g), key=lambda o: o.t_ns)
    return path, rest


def _quote_tuple(layers: list[dict]) -> tuple | None:
    """(src, dst, sport, dport) of the packet an ICMP error quotes, if it quotes UDP."""
    _, l4 = innermost_ip(layers)
    quote = (l4 or {}).get("quote") or []
    ip, udp = first_layer(quote, "ip"), first_layer(quote, "udp")
    return (ip["src"], ip["dst"], udp["sport"], udp["dport"]) if ip and udp else None


def outer_errors(obs: list[Obs]) -> list[Obs]:
    """ICMP errors about the *outer* packet carrying the probe (a router on the underlay
    without a route answers the VXLAN sender): they quote only the outer IP/UDP headers,
    so they are matched against the outer headers the probe was seen with."""
    outer = set()
    for o in obs:
        if o.kind == "request":
            head, _ = split(o.layers)
            ip, udp = first_layer(head, "ip"), first_layer(head, "udp")
            if ip and udp:
                outer.add((ip["src"], ip["dst"], udp["sport"], udp["dport"]))
    found = [o for o in obs if o.kind == "icmp error?" and _quote_tuple(o.layers) in outer]
    for o in found:
        o.kind = "error"
    return found


def summary(path: list[dict]) -> str:
    """`client(eth0) -> worker1(veth0120afb2 cni0 flannel.4000 enp0s3) -> rack1(worker1 leaf01)`"""
    groups: list[tuple[str, list[str]]] = []
    for s in path:
        if s.get("stitch"):             # across machines: `[m1 to m3: vxlan 5001]`
            groups.append((f"[{s['stitch']['from']} to {s['stitch']['to']}: vxlan {s['stitch']['vni']}]", []))
        elif groups and groups[-1][0] == s["node"]:
            if s["iface"] not in groups[-1][1]:
                groups[-1][1].append(s["iface"])
        else:
            groups.append((s["node"], [s["iface"]]))
    return " -> ".join(f"{node}({' '.join(ifaces)})" if ifaces else node for node, ifaces in groups)


# --- asking the kernel -------------------------------------------------------------------------

class Kernel:
    """Lookups in one namespace over an IPRoute socket opened (and used) inside it."""

    def __init__(self, ipr):
        self.ipr = ipr
        msgs = list(ipr.get_links())
        self.names = {m.get("index"): m.get_attr("IFLA_IFNAME") for m in msgs}
        self.index = {v: k for k, v in self.names.items()}
        self.links = {}
        for m in msgs:
            link = norm_link(m, self.names)
            link["noarp"] = bool(m.get("flags", 0) & IFF_NOARP)
            self.links[link["name"]] = link
        self._neigh: list[dict] | None = None
        self._fdb: list[dict] | None = None

    def route(self, dst: str, src: str | None = None, iif: str | None = None, fibmatch: bool = False) -> dict:
        """`ip route get [fibmatch] DST [from SRC] [iif IIF]`; raises OSError like the kernel answers."""
        from pyroute2.netlink.exceptions import NetlinkError  # lazy: start-up
        kw: dict[str, Any] = {"dst": dst}
        if src:
            kw["src"] = src
        if iif:
            kw["iif"] = self.index[iif]
        if fibmatch:
            kw["flags"] = RTM_F_FIB_MATCH
        try:
            reply = self.ipr.route("get", **kw)
        except NetlinkError as e:
            raise OSError(e.code, os.strerror(e.code)) from None
        return norm_route(reply[0], self.names)

    def neigh(self, dev: str, ip: str) -> dict | None:
        if self._neigh is None:
            self._neigh = [norm_neigh(m, self.names) for m in self.ipr.get_neighbours(family=socket.AF_INET)]
        return next((n for n in self._neigh if n["dev"] == dev and n["dst"] == ip), None)

    def fdb(self, mac: str, dev: str | None = None, master: str | None = None) -> dict | None:
        if self._fdb is None:
            self._fdb = [norm_fdb(m, self.names) for m in self.ipr.neigh("dump", family=AF_BRIDGE)]
        for f in self._fdb:
            if f["mac"] == mac and (dev is None or f["dev"] == dev) and (master is None or f["master"] == master):
                return f
        return None

    def link_for_port(self, port: int) -> dict | None:
        """The device that takes in UDP datagrams to `port` (a vxlan device's dstport)."""
        return next((l for l in self.links.values() if l["info"].get("dstport") == port), None)


def _is_port(link: dict | None) -> bool:
    return bool(link and link.get("slave_kind") == "bridge" and link.get("master"))


def _route_text(r: dict) -> str:
    return format_route(r, show_table=r.get("table") != "main")


def explain_step(k: Kernel, s: dict, path: list[dict]) -> None:
    """Attach to step `s` (in k's namespace) the table entries that decided what came next:
    bridge FDB where a frame enters a bridge port, route + neighbour (+ vxlan FDB, + bridge
    FDB) where an IP packet leaves by a routed device, the local route where it ends
    (`terminal`: nothing later at this node carried the same IP header on)."""
    link = k.links.get(s["iface"])
    eth = first_layer(s["layers"], "eth")
    ip = first_layer(s["layers"], "ip")
    dec = s["decisions"]
    if s["dir"] == "in" and _is_port(link):
        if eth:
            dec.append(_bridge_decision(k, eth["dst"], link["master"]))
    elif s["dir"] == "out" and not _is_port(link) and ip:
        iif = _iif(s, path)
        if iif is None and "_route_src" in s:     # a NATed reply in by a bridge port: routed from its bridge
            i = next(n for n, x in enumerate(path) if x is s)
            prev = next((x for x in reversed(path[:i]) if x["node"] == s["node"] and x["dir"] == "in"), None)
            plink = k.links.get(prev["iface"]) if prev else None
            iif = plink["master"] if _is_port(plink) else None
        try:
            r = k.route(ip["dst"], s.get("_route_src", ip["src"]), iif, fibmatch=True)
            dec.append({"kind": "route", "text": _route_text(r)})
        except OSError as e:
            dec.append({"kind": "route", "text": f"ip route get {ip['dst']}: {e.strerror}"})
            r = None
        gw = _gateway(k, ip, s["iface"], iif, r)
        if link and not link["noarp"] and link["kind"] not in ("loopback",):
            n = k.neigh(s["iface"], gw)
            dec.append({"kind": "neigh", "text": format_neigh(n) if n else f"{gw} dev {s['iface']}: no entry"})
        if link and link["kind"] == "vxlan" and eth:
            f = k.fdb(eth["dst"], dev=s["iface"])
            dec.append({"kind": "fdb", "text": format_fdb(f) if f else
                        f"{eth['dst']} dev {s['iface']}: no FDB entry (no remote VTEP known)"})
        if link and link["kind"] == "bridge" and eth:
            dec.append(_bridge_decision(k, eth["dst"], s["iface"]))
    elif s["dir"] == "in" and s.get("terminal") and ip:
        try:
            r = k.route(ip["dst"], ip["src"], s["iface"], fibmatch=True)
        except OSError:
            return                                     # a drop: explained by explain_drop
        if r["type"] == "local":
            dec.append({"kind": "route", "text": _route_text(r)})
            s["note"] = _decap_note(k, s["layers"]) or "delivered"


def _decap_note(k: Kernel, layers: list[dict]) -> str | None:
    """Where a kernel device takes in an encapsulated packet: its backend's note (vxlan:
    `decapsulated: udp port 8472 is vxlan device flannel.1 (id 1)`), None elsewhere."""
    kind, udp = backends.classify(layers), first_layer(layers, "udp")
    wire = backends.get(kind).wire if kind else None
    if wire is None or not wire.decap_note or not (wire.udp and udp):
        return None
    link = k.link_for_port(udp["dport"])
    return wire.decap_note.format(port=udp["dport"], device=link["name"], id=link["info"].get("id")) if link else None


def _bridge_decision(k: Kernel, mac: str, bridge: str) -> dict:
    if int(mac.split(":")[0], 16) & 1:
        return {"kind": "bridge", "text": f"{mac}: broadcast/multicast, flooded on {bridge}"}
    f = k.fdb(mac, master=bridge)
    if f is None:
        return {"kind": "bridge", "text": f"{mac}: no FDB entry on {bridge}, flooded to every port"}
    text = format_fdb(f)
    if f["dev"] == bridge:
        text += f"  (to {bridge} itself: routed by this node)"
    return {"kind": "bridge", "text": text}


def _iif(step: dict, path: list[dict]) -> str | None:
    """The routed device the packet came in by at this node (None: sent by this node)."""
    i = next(n for n, x in enumerate(path) if x is step)
    key = ip_key(step["layers"])
    for prev in reversed(path[:i]):
        if prev["node"] != step["node"]:
            break
        # a NATed packet's header differs from how it came in: the device it came in by
        same = ip_key(prev["layers"]) == key or "_route_src" in step
        if prev["dir"] == "in" and same and not prev.get("_port"):
            return prev["iface"]
    return None


def _gateway(k: Kernel, ip: dict, dev: str, iif: str | None, fib: dict | None) -> str:
    """The next hop the kernel chose on `dev`: its gateway, else the destination itself."""
    try:
        r = k.route(ip["dst"], ip["src"], iif)
        if r.get("dev") == dev and r.get("gateway"):
            return r["gateway"]
    except OSError:
        pass
    for nh in (fib or {}).get("nexthops") or []:
        if nh.get("dev") == dev and nh.get("gateway"):
            return nh["gateway"]
    if fib and fib.get("dev") == dev and fib.get("gateway"):
        return fib["gateway"]
    return ip["dst"]


def explain_drop(k: Kernel, ns: str, s: dict) -> dict:
    """Why a packet that arrived on s['iface'] went no further here, from this kernel."""
    ip = first_layer(s["layers"], "ip")
    where = {"node": s["node"], "iface": s["iface"]}
    link = k.links.get(s["iface"])
    if ip is None:
        return {**where, "reason": "unknown", "detail": "not an IP packet"}
    if _is_port(link):
        eth = first_layer(s["layers"], "eth")
        dec = _bridge_decision(k, eth["dst"], link["master"]) if eth else {"text": "?"}
        return {**where, "reason": "bridge", "detail": f"bridge {link['master']} did not forward it: {dec['text']}"}
    try:
        r = k.route(ip["dst"], ip["src"], s["iface"], fibmatch=True)
    except OSError as e:
        try:
            plain = k.route(ip["dst"])
        except OSError as e2:
            return {**where, "reason": "no route", "detail": f"{s['node']} has no route to {ip['dst']} "
                    f"(ip route get {ip['dst']}: {e2.strerror})"}
        if e.errno == errno.EXDEV:
            return {**where, "reason": "rp_filter", "detail": f"{s['node']} would not answer "
                    f"{ip['src']} by {s['iface']} (its route to it: {_route_text(k.route(ip['src']))})"}
        fwd = _sysctl(f"net.ipv4.conf.{s['iface'].replace('.', '/')}.forwarding")
        if fwd == "0":
            return {**where, "reason": "forwarding off", "detail": f"{s['node']} does not forward: "
                    f"net.ipv4.conf.{s['iface']}.forwarding = 0"}
        return {**where, "reason": "no route", "detail": f"ip route get {ip['dst']} from {ip['src']} iif "
                f"{s['iface']}: {e.strerror} (without iif: {_route_text(plain)})"}
    line = _route_text(r)
    if r["type"] in ("unreachable", "blackhole", "prohibit"):
        return {**where, "reason": "no route", "detail": f"route `{line}` discards it ({r['type']})"}
    if r["type"] == "local":
        return {**where, "reason": "not answered", "detail": f"delivered locally (`{line}`) but not answered"}
    if ip["ttl"] <= 1:
        return {**where, "reason": "TTL", "detail": f"it arrived with ttl {ip['ttl']} and "
                f"would be forwarded by `{line}`"}
    out = r.get("dev")
    gw = _gateway(k, ip, out, s["iface"], r) if out else ip["dst"]
    n = k.neigh(out, gw) if out else None
    if n and set(n["state"]) & {"FAILED", "INCOMPLETE"}:
        return {**where, "reason": "no neighbour", "detail": f"ARP for {gw} on {out} got no answer "
                f"(`{format_neigh(n)}`); route `{line}`"}
    olink = k.links.get(out or "")
    if olink and olink["state"] not in ("UP", "UNKNOWN"):
        return {**where, "reason": "link down", "detail": f"{out} is {olink['state']}; route `{line}`"}
    rules = firewall_drops(ns)
    if rules:
        return {**where, "reason": "firewall", "detail": f"iptables in {s['node']}: " + "; ".join(rules)}
    return {**where, "reason": "unknown", "detail": f"the kernel has a route (`{line}`) but it went no further"}


def _sysctl(key: str) -> str | None:
    try:
        return netns.read_sysctl(key)
    except OSError:
        return None


def firewall_drops(ns: str) -> list[str]:
    """DROP/REJECT rules and DROP policies of the namespace's iptables (forks iptables-save:
    only ever called for a dropped probe)."""
    ip, save = spawn.tool("ip"), spawn.tool("iptables-save")
    if ip is None or save is None:
        return []
    proc = subprocess.run([ip, "netns", "exec", ns, save, "-c"], capture_output=True, text=True, timeout=10,
                          cwd=spawn.CWD, env=spawn.env())
    hits = []
    for line in proc.stdout.splitlines():
        if line.startswith(":") and " DROP " in line and not line.endswith("[0:0]"):
            hits.append(f"chain policy {line[1:].split()[0]} DROP {line.split()[-1]}")
        elif line.startswith("[") and ("-j DROP" in line or "-j REJECT" in line):
            counts, rule = line.split(" ", 1)
            hits.append(f"`{rule}` {counts}")
    return hits


# --- the whole trace ----------------------------------------------------------------------------

@dataclass
class Endpoint:
    name: str                  # as the user gave it
    node: str | None           # the lab node holding the address (None: not in the lab)
    ip: str | None


def resolve(topo, text: str) -> Endpoint:
    if text in topo.nodes:
        addr = topo.address_of(text)
        return Endpoint(text, text, str(addr) if addr else None)
    try:
        addr = ipaddress.IPv4Address(text)
    except ValueError:
        raise UsageError(f"lab {topo.name} has no node {text!r} and it is not an IPv4 address "
                         f"(nodes: {', '.join(topo.nodes)})") from None
    owner = next((n.name for n in topo.nodes.values() if any(a.ip == addr for a in n.addresses)), None)
    if owner is None:
        owner = next((n.name for n in topo.nodes.values() for b in n.bridges if b.ip and b.ip.ip == addr), None)
    return Endpoint(text, owner, str(addr))


def _service_target(topo, dst: str, proto: str, port: int | None) -> tuple[dict, str, str, int]:
    """svc/NAME[:PORT] -> (the service as the trace names it, its cluster IP, the protocol: the
    port's unless --proto says tcp/udp, the port: the one PORT names (by name or number) or
    the service's first, unless --port says)."""
    lab = topo.name
    services = topo.cluster.services if topo.cluster is not None else {}
    name, named = service_ref(dst)
    if name not in services:
        raise UsageError(f"lab {lab} has no service {name!r} (services: {', '.join(services) or 'none'})")
    svc = services[name]
    if svc.headless:
        raise UsageError(f"service {name} is headless (clusterIP: None): no address to trace; trace to one of "
                         f"its pods")
    chosen = svc.ports[0] if named is None else svc.port_named(named)
    if chosen is None:
        raise UsageError(f"service {name} has no port {named!r} (its ports: {svc.port_list()})")
    if named is not None and port is not None and port != chosen.port:
        raise UsageError(f"{dst} is port {chosen.port}, not --port {port}")
    if proto == "icmp":                 # kube-proxy rewrites the service's port only: no ping
        proto = chosen.protocol.lower()
    return ({"name": svc.name, "type": svc.type, "cluster_ip": str(svc.cluster_ip), "port": chosen.port,
             "port_name": chosen.name, "node_port": chosen.node_port}, str(svc.cluster_ip), proto,
            port if port is not None else chosen.port)


def _peers(topo) -> dict[tuple[str, str], tuple[str, str]]:
    return {(n.name, i.name): (i.peer_node, i.peer_name) for n in topo.nodes.values() for i in n.ifaces}


@dataclass
class Setup:
    """A trace's arguments checked and resolved against the lab as built here."""
    lab: str
    topo: Any
    service: dict | None
    s: Endpoint
    d: Endpoint
    probe: Probe
    timeout: float
    namespaces: dict[str, str]          # node -> namespace, the nodes this machine holds
    encap: dict


def arguments(topo, src: str, dst: str, proto: str, port: int | None, ttl: int | None,
              timeout: float) -> tuple[dict | None, Endpoint, Endpoint, str, int | None]:
    """A trace's arguments checked against the lab's topology: (the service traced to, or
    None; source; destination; protocol; port), or UsageError in one sentence."""
    service, dst_text = None, dst
    if dst.startswith(SVC):             # svc/NAME[:PORT], as in a topology's tests: its cluster IP and port
        service, dst, proto, port = _service_target(topo, dst, proto, port)
    if ":" in dst:                      # ADDRESS:PORT, as the note writes a service (10.111.222.68:8080)
        dst, _, text = dst.rpartition(":")
        # ASCII digits only: str.isdigit() takes '²', which int() refuses; 5 digits bound int()'s work
        if not (text.isascii() and text.isdigit() and len(text) <= 5) or (port is not None and port != int(text)):
            raise UsageError(f"{dst}:{text}: the port after ':' must be a number (and agree with --port)")
        port = int(text)
    if proto not in PROTOS:
        raise UsageError(f"--proto must be one of {', '.join(PROTOS)}, not {proto!r}")
    if proto == "icmp" and port is not None:
        raise UsageError("--port applies to --proto tcp or udp, not icmp")
    if proto != "icmp" and port is None:
        port = 80 if proto == "tcp" else 33434
    if port is not None and not 0 < port < 65536:
        raise UsageError(f"--port must be 1..65535, not {port}")
    if ttl is not None and not 0 < ttl < 256:
        raise UsageError(f"--ttl must be 1..255, not {ttl}")
    if not 0 < timeout <= 30:
        raise UsageError(f"--timeout must be more than 0 and at most 30 seconds, not {timeout}")
    s, d = resolve(topo, src), resolve(topo, dst)
    if s.node is None:
        raise UsageError(f"the source must be a node of lab {topo.name} (or one of its addresses): {src} is neither")
    if d.ip is None:
        raise UsageError(f"{dst} has no address to send to")
    if service is not None:
        d.name = dst_text if ":" in dst_text else f"svc/{service['name']}"
    return service, s, d, proto, port


def setup(lab: str, src: str, dst: str, proto: str = "icmp", port: int | None = None, ttl: int | None = None,
          timeout: float = 1.0, local_source: bool = True) -> Setup:
    labmod.require_root()
    st = state.load(lab)
    topo = labmod.topology(lab, st)     # the lab as built (its record), not its file now
    service, s, d, proto, port = arguments(topo, src, dst, proto, port, ttl, timeout)
    probe = Probe(proto, s.ip if s.name != s.node else None, d.ip, port, random.randint(1, 0xFFFF),
                  random.randint(1, 0xFFFF), ttl)
    encap = backends.encap_ports(topo.cluster.backend if topo.cluster is not None else None)
    owned = state.verified_ids(st, st.nodes.values())     # the record's names, checked
    namespaces = {node: ns for node, ns in st.nodes.items() if ns in owned}
    if local_source and s.node not in namespaces:
        raise NslabError(state.namespace_problem(st, st.nodes.get(s.node), s.node))
    return Setup(lab, topo, service, s, d, probe, timeout, namespaces, encap)


def trace(lab: str, src: str, dst: str, proto: str = "icmp", port: int | None = None, ttl: int | None = None,
          timeout: float = 1.0) -> dict:
    t_start = time.perf_counter()
    t = setup(lab, src, dst, proto, port, ttl, timeout)
    probe, s = t.probe, t.s
    sniffer = Sniffer(t.namespaces)
    sock = None
    try:
        sniffer.drain()
        sock, send_error, t0 = send_probe(t.namespaces[s.node], probe)

        def answered(seen: list[Obs]) -> bool:
            return any(o.kind in ("reply", "error") and o.node == s.node and o.dir == "in" for o in seen)

        unmatched: list[Frame] = []     # tcp/udp: frames NAT may have rewritten, matched again below

        def match(f: Frame) -> Obs | None:
            o = observe(probe, t.encap, f)
            if o is None and probe.proto != "icmp":
                unmatched.append(f)
            return o

        deadline = time.monotonic() + (0 if send_error else timeout)
        obs = sniffer.read(match, deadline, answered)
        sniffer.close()
        # The translations are read while the probe's socket is still open: closing it sends
        # RST, after which conntrack (and IPVS, which drops its conntrack entry with its own
        # connection) keeps the entry only ~10 s: less than a slow machine may take to get here.
        nats: list[nat.Nat] = []
        if send_error is None:
            nats = _translations(t, _source_address(obs, probe))
            obs += [o for o in (observe(probe, t.encap, f) for f in unmatched) if o is not None]
    finally:
        sniffer.close()
        if sock is not None:
            sock.close()
    result = assemble(t, obs, nats, t0)
    explain(result, t.namespaces, t.topo)
    finish(result, send_error.strerror if send_error is not None else None, t_start)
    return result


def _translations(t: Setup, src_ip: str | None) -> list[nat.Nat]:
    """The probe's NAT in this machine's namespaces (t.probe matches what they rewrote)."""
    if t.probe.proto == "icmp" or t.topo.cluster is None or not src_ip:
        return []
    nats = nat.find(t.namespaces, t.probe.proto, nat.Tuple(src_ip, t.probe.dst, t.probe.ident, t.probe.port))
    t.probe.aliases = tuple((n.after.sport, n.after.dport) for n in nats)
    return nats


def assemble(t: Setup, obs: list[Obs], nats: list[nat.Nat], t0: int) -> dict:
    """The sightings chained into the request's and the reply's paths (pure: no kernel)."""
    probe, proto, port = t.probe, t.probe.proto, t.probe.port
    dnats = [n for n in nats if n.dnat]
    target = resolve(t.topo, dnats[-1].after.dst).node if dnats else t.d.node     # the endpoint DNAT chose
    peers = _peers(t.topo)
    result: dict[str, Any] = {
        "lab": t.lab, "src": vars(t.s), "dst": vars(t.d), "service": t.service, "target": target,
        "probe": {"proto": proto, "src": probe.src, "dst": probe.dst, "port": port, "ident": probe.ident,
                  "seq": probe.seq if proto == "icmp" else None, "ttl": probe.ttl, "text": probe.describe()},
    }
    outer_errors(obs)
    paths: dict[str, dict] = {}
    req, req_rest = build_path([o for o in obs if o.kind == "request"], t.s.node, peers)
    replies = [o for o in obs if o.kind == "reply"] or [o for o in obs if o.kind == "error"]
    rep, rep_rest = build_path(replies, target if replies and replies[0].kind == "reply" else None, peers)
    for name, path, rest in (("request", req, req_rest), ("reply", rep, rep_rest)):
        steps = [_step(o, t0) for o in path]
        paths[name] = {"kind": _kind_text(path), "hops": steps, "also_seen": [_step(o, t0) for o in rest],
                       "summary": summary(steps), "delivered": False, "drop": None}
    # mark where a packet's layer ends at a node (nothing later there carries the same IP header)
    for p in paths.values():
        hops = p["hops"]
        for i, h in enumerate(hops):
            later = [x for x in hops[i + 1:] if x["node"] == h["node"]]
            h["terminal"] = h["dir"] == "in" and not any(ip_key(x["layers"]) == ip_key(h["layers"]) for x in later)
    nat.mark_routing(paths, nats, _ports)
    result.update(paths)
    result["nat"] = [{"node": n.node, "dnat": n.dnat, "snat": n.snat, "before": vars(n.before),
                      "after": vars(n.after), "rule": n.rule} for n in nats]
    result["icmp_error"] = bool(replies) and replies[0].kind == "error"
    return result


def explain(result: dict, namespaces: dict[str, str], topo) -> None:
    """The kernel entries behind each hop at a node this machine holds (`namespaces`), and
    why a path ends short where its last hop is one of them."""
    paths = {name: result[name] for name in ("request", "reply")}
    _explain(paths, namespaces)
    _flanneld_notes(paths, topo, set(namespaces))
    for p, to in ((paths["request"], result["target"]), (paths["reply"], None)):
        last = p["hops"][-1] if p["hops"] else None      # an ICMP error goes to whoever sent the packet
        if last is None or last["node"] not in namespaces:
            continue
        p["delivered"] = last.get("note") == "delivered" and to in (None, last["node"])
        if not p["delivered"]:
            p["drop"] = _drop(p, namespaces, topo)


def finish(result: dict, send_error: str | None, t_start: float) -> None:
    """The notes that need only the topology, the NAT seen, and the verdict."""
    paths = {name: result[name] for name in ("request", "reply")}
    nats = [nat.Nat(n["node"], "", nat.Tuple(**n["before"]), nat.Tuple(**n["after"]), n["dnat"], n["snat"],
                    n["rule"]) for n in result["nat"]]
    nat.annotate(paths, nats, _ports)
    req_p, rep_p = paths["request"], paths["reply"]
    s, d = result["src"], result["dst"]
    if send_error is not None and not req_p["hops"]:
        req_p["drop"] = {"node": s["node"], "iface": None, "reason": "not sent",
                         "detail": f"{s['node']} could not send to {d['ip']}: {send_error}"}
    rep_p["icmp_error"] = result.pop("icmp_error")
    result.pop("target", None)
    _, l4 = innermost_ip(rep_p["hops"][0]["layers"]) if rep_p["hops"] else (None, None)
    # a TCP connect answered with RST: the path works, the port does not (exit 1, said so)
    result["refused"] = result["probe"]["proto"] == "tcp" and bool(l4) and l4["layer"] == "tcp" and "R" in l4["flags"]
    result["elapsed_ms"] = round((time.perf_counter() - t_start) * 1000, 1)
    for p in paths.values():
        for h in p["hops"] + p["also_seen"]:
            h.pop("_port", None)
            h.pop("_route_src", None)


def _source_address(obs: list[Obs], probe: Probe) -> str | None:
    """The source address the kernel gave the probe (its first sighting)."""
    first = min((o for o in obs if o.kind == "request"), key=lambda o: o.order, default=None)
    ip, _ = innermost_ip(first.layers) if first else (None, None)
    return ip["src"] if ip else None


def _ports(hop: dict) -> tuple | None:
    _, l4 = innermost_ip(hop["layers"])
    return (l4.get("sport"), l4.get("dport")) if l4 else None


def complete(result: dict) -> bool:
    """The probe reached its destination and its reply came back."""
    return result["request"]["delivered"] and result["reply"]["delivered"] and not result["reply"]["icmp_error"] \
        and not result.get("refused")


def _flanneld_notes(paths: dict, topo, nodes: set[str]) -> None:
    """flannel's udp backend has no kernel device that encapsulates: flanneld does, in user
    space.  Name its steps where they happen: it reads the packet from flannel0 and sends it
    in UDP to the node whose subnet holds the destination; on that node it takes the datagram
    in and writes the inner packet to flannel0, where the kernel routes it on."""
    cluster = topo.cluster
    if cluster is None or cluster.backend.type != "udp":
        return
    for p in paths.values():
        for h in p["hops"]:
            ip, _ = innermost_ip(h["layers"])
            if ip is None or h["node"] not in nodes:
                continue
            if h["dir"] == "out" and h["iface"] == cluster.backend.device and h["node"] in cluster.nodes:
                dst = ipaddress.ip_address(ip["dst"])
                owner = next((n for n in cluster.nodes.values() if dst in n.subnet), None)
                h["decisions"].append({"kind": "lease", "text": (      # the table flanneld looks up
                    f"flanneld read it from flannel0: {dst} is in {owner.subnet}, {owner.name}'s subnet: sent in "
                    f"UDP to {owner.ip}:{cluster.backend.port}" if owner else
                    f"flanneld read it from flannel0: no node's subnet holds {dst}: dropped")})
            elif h["dir"] == "in" and h.get("terminal") and backends.classify(h["layers"]) == "udp":
                udp = first_layer(h["layers"], "udp")
                h["note"] = (f"flanneld takes it in on udp port {udp['dport']} and writes the inner packet "
                             f"({ip['src']} > {ip['dst']}) to flannel0")


def _kind_text(path: list[Obs]) -> str | None:
    if not path:
        return None
    _, l4 = innermost_ip(path[0].layers)
    return format_layer(l4) if l4 else None


def _step(o: Obs, t0: int) -> dict:
    outer, inner = split(o.layers)
    return {"node": o.node, "iface": o.iface, "dir": o.dir, "t_ms": round((o.t_ns - t0) / 1e6, 3),
            "outer": format_layers(outer) if outer else None, "inner": format_layers(inner),
            "layers": o.layers, "decisions": [], "note": None}


def _explain(paths: dict, namespaces: dict[str, str]) -> None:
    """One namespace entry and one IPRoute socket per node on either path."""
    from pyroute2 import IPRoute  # lazy: start-up
    by_node: dict[str, list[tuple[dict, list]]] = {}
    for p in paths.values():
        for h in p["hops"]:
            if h["node"] in namespaces:          # across machines: the nodes this one holds
                by_node.setdefault(h["node"], []).append((h, p["hops"]))
    for node, items in by_node.items():
        with netns.enter(namespaces[node]), IPRoute() as ipr:
            k = Kernel(ipr)
            for h, _ in items:
                h["_port"] = _is_port(k.links.get(h["iface"]))
            for h, hops in items:
                explain_step(k, h, hops)


def _drop(p: dict, namespaces: dict[str, str], topo) -> dict:
    """Where and why the path ends short of its target."""
    from pyroute2 import IPRoute  # lazy: start-up
    last = p["hops"][-1]
    if last["dir"] == "out":
        peer = _peers(topo).get((last["node"], last["iface"]))
        if peer is None:
            return {"node": last["node"], "iface": last["iface"], "reason": "left the lab",
                    "detail": f"it left by {last['iface']}, which has no peer in the lab"}
        if peer[0] not in namespaces:           # across machines: a stitch to another machine
            return {"node": last["node"], "iface": last["iface"], "reason": "lost on the link",
                    "detail": f"it left {last['node']} by {last['iface']} but {peer[0]}:{peer[1]}, on another "
                              f"machine, never received it"}
        with netns.enter(namespaces[peer[0]]), IPRoute() as ipr:
            link = Kernel(ipr).links.get(peer[1])
        state_text = link["state"] if link else "missing"
        return {"node": last["node"], "iface": last["iface"], "reason": "lost on the link",
                "detail": f"it left {last['node']} by {last['iface']} but {peer[0]}:{peer[1]} never received it "
                          f"({peer[1]} is {state_text})"}
    with netns.enter(namespaces[last["node"]]), IPRoute() as ipr:
        return explain_drop(Kernel(ipr), namespaces[last["node"]], last)


# --- rendering ------------------------------------------------------------------------------------

PIPED_WIDTH = 100     # piped, trace still wraps (at parts, words whole): its packet lines run to ~170


def _width(console) -> int:
    """The terminal's width; piped, COLUMNS when set (`COLUMNS=200 nslab trace ... | less`),
    else PIPED_WIDTH."""
    cols = os.environ.get("COLUMNS", "")
    piped = int(cols) if cols.isascii() and cols.isdigit() and int(cols) >= 40 else PIPED_WIDTH
    return out.fits(console) or piped


def render_brief(console, r: dict) -> None:
    """`trace --brief`: one line per hop (node, interface, direction, time, and the entry that
    chose the step, or the encapsulation seen), cut to the width with '…'."""
    from rich.text import Text  # lazy: start-up
    limit = _width(console)

    def line(text: str, style: str = "") -> None:
        console.print(Text(text if len(text) <= limit else text[:limit - 1] + "…", style=style), soft_wrap=True)
    s, d = r["src"], r["dst"]
    line(f"trace {s['name']} -> {_destination(r)}  {r['probe']['text']}  lab {r['lab']}", "bold")
    hops = [h for name in ("request", "reply") for h in r[name]["hops"] if not h.get("stitch")]
    nw, iw = (max([len(h[k]) for h in hops] + [4]) for k in ("node", "iface"))
    for name in ("request", "reply"):
        p = r[name]
        line(f"{name}  {p['kind'] or ''}".rstrip(), "bold magenta")
        for i, h in enumerate(p["hops"], 1):
            if h.get("stitch"):         # across machines: `m1 -> m3: vxlan stitch VNI 5001`
                line(f"  {i:>2} {h['note']} ({h['stitch']['local']} > {h['stitch']['remote']} udp "
                     f"{h['stitch']['port']})")
                continue
            line(f"  {i:>2} {h['node']:<{nw}} {h['iface']:<{iw}} {h['dir']:<3} {_brief_what(h)}".rstrip())
        if p["delivered"]:
            line(f"  delivered to {p['hops'][-1]['node']}", "green")
        elif p["drop"]:
            dr = p["drop"]
            line(f"  dropped at {dr['node']} {dr.get('iface') or ''} ({dr['reason']}): {dr['detail']}", "red")
        elif not p["hops"]:
            line("  not seen anywhere" if name == "request" else "  no reply seen", "red")


def _destination(r: dict) -> str:
    """The trace's destination as its header names it: a service by name, type, IP and port."""
    svc, d = r.get("service"), r["dst"]
    return f"service {svc['name']} ({svc['type']} {d['ip']}:{svc['port']})" if svc else f"{d['name']} ({d['ip']})"


def _brief_what(h: dict) -> str:
    """A hop in a few words: the entry that chose the step, else the outer headers seen
    (their Ethernet part left out), else its note."""
    if h["decisions"]:
        d = h["decisions"][0]
        return f"{d['kind']} {d['text'].split(chr(10))[0]}"
    if h["outer"]:
        return "outer " + " | ".join(part for part in h["outer"].split(" | ") if not part.startswith("eth "))
    return h.get("note") or ""


def render(console, r: dict) -> None:
    """The trace as text: a hop's header, then its packet and the kernel entries that chose
    the step on lines of their own, each wrapped to the terminal's width (piped: COLUMNS if
    set, else PIPED_WIDTH) between header parts, so no address or name is split or cut."""
    from rich.text import Text  # lazy: start-up
    limit = _width(console)

    def emit(text: str, indent: int, style: str | None = None, sep: str = " | ") -> None:
        line = Text(out.wrap(text, limit, indent, sep), style=style or "")
        line.highlight_regex(r"(?m)^ *(outer|inner) ", "dim")
        console.print(line, soft_wrap=True)
    s, d = r["src"], r["dst"]
    probe = r["probe"]["text"] + (f"  ttl {r['probe']['ttl']}" if r["probe"]["ttl"] else "")
    emit(f"trace {s['name']} ({s['ip'] or s['node']}) -> {_destination(r)}  {probe}  lab {r['lab']}", 6, "bold",
         sep=" ")
    for name in ("request", "reply"):
        p = r[name]
        console.print()
        console.print(Text.assemble((name, "bold magenta"), f"  {p['kind'] or ''}"))
        if not p["hops"]:
            console.print(Text("  not seen anywhere" if name == "request" else "  no reply seen", style="red"))
        else:
            emit("  " + p["summary"], 4, "bold", sep=" -> ")
        last_node = None
        for i, h in enumerate(p["hops"], 1):
            if h.get("stitch"):         # across machines: the stitch between two machines, a hop
                console.print(Text.assemble(f"  {i:>2} ", (h["note"], "bold cyan"), f"  +{h['t_ms']:.3f} ms"))
                emit(f"       outer {h['outer']}", 13)
                last_node = None
                continue
            node = h["node"] if h["node"] != last_node else ""
            last_node = h["node"]
            console.print(Text.assemble(f"  {i:>2} ", (f"{node:<14}", "bold"),
                                        f" {h['iface']:<14} {h['dir']:<3}  +{h['t_ms']:.3f} ms"))
            if h["outer"]:
                emit(f"       outer {h['outer']}", 13)
                emit(f"       inner {h['inner']}", 13)
            else:
                emit(f"       {h['inner']}", 9)
            for dec in h["decisions"]:
                for n, part in enumerate(dec["text"].split("\n\t")):     # multipath: one nexthop a line
                    emit(f"       {dec['kind'] if n == 0 else '':<7}{part}", 16, None, sep=" ")
            if h.get("note"):
                emit(f"       {h['note']}", 9, "green", sep=" ")
        for h in p["also_seen"]:
            emit(f"      also seen at {h['node']} {h['iface']} {h['dir']} (+{h['t_ms']:.3f} ms)", 8, "dim", sep=" ")
        if p["delivered"]:
            console.print(Text(f"  delivered to {p['hops'][-1]['node']}", style="green"))
        elif p["drop"]:
            dr = p["drop"]
            where = f"{dr['node']} {dr['iface']}" if dr.get("iface") else dr["node"]
            emit(f"  dropped at {where} ({dr['reason']}): {dr['detail']}", 4, "red", sep=" ")
    if r.get("refused"):
        emit(f"  connection refused: {d['name']} answered the SYN with RST (nothing listens on port "
             f"{r['probe']['port']})", 4, "red", sep=" ")
    console.print()
    emit(f"trace took {r['elapsed_ms']:.0f} ms (probe, captures on every interface, kernel lookups)", 2, "dim",
         sep=" ")


# --- one machine's part of a trace across machines (nslab/across.py drives it) -------------------

MAX_PART_FRAMES = 200_000       # frames a part keeps while it waits for the probe's marker


def _message(read_line) -> dict:
    line = read_line()
    if not line:
        raise NslabError("trace: the host closed the channel")
    try:
        msg = json.loads(line)
    except ValueError:
        raise NslabError("trace: the host sent no JSON") from None
    if not isinstance(msg, dict):
        raise NslabError("trace: the host sent no JSON object")
    return msg


def _obs_from(d: dict) -> Obs:
    return Obs(str(d["node"]), str(d["iface"]), str(d["dir"]), int(d["t_ns"]), int(d["order"]), str(d["kind"]),
               list(d["layers"]))


def part(lab: str, src: str, dst: str, proto: str = "icmp", port: int | None = None, ttl: int | None = None,
         timeout: float = 1.0, send: bool = False, stdin=None, stdout=None) -> None:
    """`nslab trace-part`: this machine's part of `nslab trace` across machines, JSON lines
    with the host (across.trace): every frame in this machine's namespaces of the lab is kept
    from `{"ready"}` on; the source's machine (`send`) fires the probe on `{"fire": {ident,
    seq}}` and answers `{"fired"}` once the reply is back (or the timeout); on `{"nat":
    {ident, seq, src}}` each part answers the probe's translations in its namespaces, and on
    `{"aliases"}` (every machine's) it matches its frames and answers its sightings (NAT on
    one machine rewrites what another sees); on `{"paths"}` (the paths the host chained) it explains the hops at its own
    nodes (explain()) and answers them.  The kernel of a node is asked only on its machine."""
    import sys                      # lazy: only here
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    t = setup(lab, src, dst, proto, port, ttl, timeout, local_source=send)
    probe = t.probe
    buf = b""

    def ready_line(wait: float) -> bytes | None:
        nonlocal buf
        while b"\n" not in buf:
            r, _, _ = select.select([stdin.fileno()], [], [], wait)
            if not r:
                return None
            chunk = os.read(stdin.fileno(), 1 << 20)
            if not chunk:
                return b""
            buf += chunk
        line, _, buf = buf.partition(b"\n")
        return line

    def say(msg: dict) -> None:
        stdout.write(json.dumps(msg) + "\n")
        stdout.flush()

    frames: list[Frame] = []

    def keep(f: Frame) -> None:
        if len(frames) < MAX_PART_FRAMES:
            frames.append(f)

    def wait_message() -> dict:
        while True:
            sniffer.read(keep, time.monotonic() + 0.05)
            line = ready_line(0)
            if line is not None:
                return _message(lambda: line)

    sniffer = Sniffer(t.namespaces)
    sock = None
    try:
        sniffer.drain()
        say({"ready": True, "setup": {"src": vars(t.s), "dst": vars(t.d), "service": t.service, "probe": {
            "proto": probe.proto, "src": probe.src, "dst": probe.dst, "port": probe.port, "ttl": probe.ttl}}})
        msg = wait_message()
        fired = None
        if send and "fire" in msg:
            probe.ident, probe.seq = int(msg["fire"]["ident"]), int(msg["fire"]["seq"])
            sock, send_error, t0 = send_probe(t.namespaces[t.s.node], probe)
            fired = {"ident": probe.ident, "seq": probe.seq, "t0": t0,
                     "error": send_error.strerror if send_error is not None else None}

            def answered(seen: list) -> bool:
                return any(o.node == t.s.node and o.dir == "in" and o.kind in ("reply", "error") for o in seen)

            deadline = time.monotonic() + (0 if send_error else timeout)
            seen = sniffer.read(lambda f: keep(f) or observe(probe, t.encap, f), deadline, answered)
            fired["src"] = _source_address(seen, probe) or probe.src
            say({"fired": fired})
            msg = wait_message()
        # the probe's translations here (the probe's socket still open: conntrack keeps them)
        p = msg.get("nat")
        if not isinstance(p, dict):
            raise NslabError("trace: the host sent no probe")
        probe.ident, probe.seq = int(p["ident"]), int(p["seq"])
        nats = _translations(t, p.get("src"))
        say({"nat": [{"node": n.node, "dnat": n.dnat, "snat": n.snat, "before": vars(n.before),
                      "after": vars(n.after), "rule": n.rule} for n in nats]})
        # every machine's translations known: the frames this one kept, matched
        msg = wait_message()
        sniffer.read(keep, time.monotonic() + 0.02)
        sniffer.close()
        probe.aliases = tuple(tuple(a) for a in msg.get("aliases") or [])
        obs = [o for o in (observe(probe, t.encap, f) for f in frames) if o is not None]
        say({"obs": [vars(o) for o in obs]})
        result = _message(lambda: ready_line(None)).get("paths")
        if not isinstance(result, dict):
            raise NslabError("trace: the host sent no paths")
        explain(result, t.namespaces, t.topo)
        mine = {name: {"hops": {i: {k: h.get(k) for k in ("decisions", "note", "_port")}
                                for i, h in enumerate(result[name]["hops"]) if h["node"] in t.namespaces},
                       "delivered": result[name]["delivered"], "drop": result[name]["drop"]}
                for name in ("request", "reply")}
        say({"explained": mine})
    finally:
        sniffer.close()
        if sock is not None:
            sock.close()
