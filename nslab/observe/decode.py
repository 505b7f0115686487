"""Captured frames as headers, for `nslab trace`, `nslab test` and `nslab capture --decode`.

`decode(frame, hatype, encap)` turns one frame into a list of header dicts, outermost
first: eth, arp, ip, icmp (with the packet an ICMP error quotes), tcp, udp, and the
tunnels of the lab: each flannel backend's header as its module's `wire` describes it
(vxlan, ipip, flannel-udp).  It reads the bytes itself rather than with
scapy, whose import alone costs ~0.2 s at every start of `nslab capture --decode`,
`nslab trace` and `nslab test`.  A tunnel is known by the lab's configuration, not by the packet: the one classifier in
nslab/backends/ gives the UDP ports (`encap`, backends.encap_ports: vxlan on 4789 and
8472 in any lab, the lab's backend on its port) and the IP protocols (ipip = 4).

`rows(layers, backend, port)` gives note 002's outer and inner rows (src IP, src MAC,
dst IP, dst MAC, protocol, VNI, UDP ports) of a packet of the lab's tunnel; `summary`
is the one line for any other packet.  `Names` maps the MACs and addresses of a lab to
what a person calls them (`worker3 flannel.4000`, `leaf01 eth0`, `web-worker3`).
"""
from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field
from typing import Any

from .. import backends

ARPHRD_ETHER, ARPHRD_LOOPBACK = 1, 772                    # packet socket link types
LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2 = 1, 113, 276   # pcap link types
ICMP_NAMES = {0: "echo reply", 8: "echo request", 3: "destination unreachable", 11: "time exceeded",
              12: "parameter problem"}
MAX_TUNNELS = 8          # tunnels decoded inside one another (the lab nests at most 2: a pod's IPIP in VXLAN)
UNREACH_CODES = {0: "net unreachable", 1: "host unreachable", 2: "protocol unreachable",
                 3: "port unreachable", 4: "fragmentation needed", 9: "net prohibited",
                 10: "host prohibited", 13: "communication administratively prohibited"}


# --- frames into layers (pure) ---------------------------------------------------------------

def _mac(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


def decode(frame: bytes, hatype: int = ARPHRD_ETHER, encap: dict[int, str] | None = None) -> list[dict]:
    """A frame as a list of header dicts, outermost first.  `encap` maps UDP destination
    ports to the backend type they carry (backends.encap_ports);
    devices without a link header (TUN, IPIP) start at the IP header."""
    layers: list[dict] = []
    if hatype in (ARPHRD_ETHER, ARPHRD_LOOPBACK):
        _eth(frame, layers, encap or {})
    else:
        _ip(frame, layers, encap or {})
    return layers


def decode_pcap(data: bytes, linktype: int, encap: dict[int, str] | None = None) -> list[dict]:
    """A pcap record (tcpdump's link type) as layers: Ethernet (also `lo`), Linux cooked
    (`-i any`: no MACs), else raw IP (TUN and ipip devices)."""
    if linktype in (LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2):
        layers: list[dict] = []
        etype, off = (data[14:16], 16) if linktype == LINKTYPE_LINUX_SLL else (data[0:2], 20)
        if len(data) >= off:
            _payload(int.from_bytes(etype, "big"), data[off:], layers, encap or {})
        return layers
    return decode(data, ARPHRD_ETHER if linktype == LINKTYPE_ETHERNET else 0, encap)   # 0: starts at IP


def _eth(data: bytes, layers: list, encap: dict) -> None:
    if len(data) < 14:
        return
    etype = struct.unpack("!H", data[12:14])[0]
    off = 14
    if etype == 0x8100 and len(data) >= 18:          # 802.1Q tag: skip it
        etype, off = struct.unpack("!H", data[16:18])[0], 18
    layers.append({"layer": "eth", "src": _mac(data[6:12]), "dst": _mac(data[0:6]), "type": etype})
    _payload(etype, data[off:], layers, encap)


def _payload(etype: int, data: bytes, layers: list, encap: dict) -> None:
    """What follows a link header of this ethertype (IPv4 or ARP; nothing else is read)."""
    if etype == 0x0800:
        _ip(data, layers, encap)
    elif etype == 0x0806 and len(data) >= 28:
        a = data[:28]
        layers.append({"layer": "arp", "op": "request" if a[7] == 1 else "reply",
                       "sender": socket.inet_ntoa(a[14:18]), "sender_mac": _mac(a[8:14]),
                       "target": socket.inet_ntoa(a[24:28])})


def _ip(data: bytes, layers: list, encap: dict, quoted: bool = False) -> None:
    if len(data) < 20 or data[0] >> 4 != 4:
        return
    ihl = (data[0] & 0x0F) * 4
    total, ident, frag, ttl, proto = struct.unpack("!HHHBB", data[2:10])
    layers.append({"layer": "ip", "src": socket.inet_ntoa(data[12:16]), "dst": socket.inet_ntoa(data[16:20]),
                   "ttl": ttl, "proto": proto, "id": ident, "len": total})
    if frag & 0x1FFF:                                  # a later fragment has no L4 header
        return
    payload = data[ihl:total] if not quoted and total >= ihl else data[ihl:]
    if proto == 1:
        _icmp(payload, layers, encap, quoted)
    elif proto == 6 and len(payload) >= 4:
        sport, dport = struct.unpack("!HH", payload[:4])
        flags = payload[13] if len(payload) >= 14 else 0
        names = "".join(c for bit, c in ((2, "S"), (16, "A"), (1, "F"), (4, "R"), (8, "P")) if flags & bit)
        layers.append({"layer": "tcp", "sport": sport, "dport": dport, "flags": names})
    elif proto == 17 and len(payload) >= 8:
        sport, dport = struct.unpack("!HH", payload[:4])
        layers.append({"layer": "udp", "sport": sport, "dport": dport})
        kind = None if quoted else encap.get(dport)
        if kind is not None:
            _tunnel(backends.get(kind).wire, payload[8:], layers, encap)
    elif not quoted and proto in (tunnels := backends.ip_protocols()):     # 4: ipip
        _tunnel(backends.get(tunnels[proto]).wire, payload, layers, encap)


def _tunnel(wire, data: bytes, layers: list, encap: dict) -> None:
    """A backend's own header (wire.header_len bytes, read by wire.fields), then what it carries,
    up to MAX_TUNNELS deep (a 10 KB frame of IPv4-in-IPv4 headers would recurse 500 levels)."""
    if len(data) < wire.header_len:
        return
    if sum(l["layer"] in backends.encap_layers() for l in layers) >= MAX_TUNNELS:
        layers.append({"layer": "nested", "note": f"more tunnels nested inside; decoded the first {MAX_TUNNELS}"})
        return
    header = data[:wire.header_len]
    layers.append({"layer": wire.layer, **(wire.fields(header) if wire.fields else {})})
    (_eth if wire.inner == "eth" else _ip)(data[wire.header_len:], layers, encap)


def _icmp(payload: bytes, layers: list, encap: dict, quoted: bool) -> None:
    if len(payload) < 8:
        return
    typ, code = payload[0], payload[1]
    icmp: dict[str, Any] = {"layer": "icmp", "type": typ, "code": code}
    if typ in (0, 8):
        icmp["id"], icmp["seq"] = struct.unpack("!HH", payload[4:8])
    elif typ in (3, 11, 12) and not quoted:
        quote: list[dict] = []
        _ip(payload[8:], quote, encap, quoted=True)
        icmp["quote"] = quote
    layers.append(icmp)



# --- reading layers ------------------------------------------------------------------------

def split(layers: list[dict]) -> tuple[list[dict], list[dict]]:
    """(outer, inner): inner starts after the last encapsulation header (vxlan, ipip,
    flannel-udp: backends.encap_layers); outer is empty when the frame is not encapsulated."""
    kinds = backends.encap_layers()
    cut = max((i + 1 for i, l in enumerate(layers) if l["layer"] in kinds), default=0)
    return layers[:cut], layers[cut:]


def format_layer(l: dict) -> str:
    kind = l["layer"]
    if kind == "eth":
        return f"eth {l['src']} > {l['dst']}"
    if kind == "ip":
        return f"ip {l['src']} > {l['dst']} ttl {l['ttl']}"
    if kind == "tcp":
        return f"tcp {l['sport']} > {l['dport']} [{l['flags'] or '.'}]"
    if kind == "udp":
        return f"udp {l['sport']} > {l['dport']}"
    if kind == "icmp":
        text = f"icmp {ICMP_NAMES.get(l['type'], 'type ' + str(l['type']))}"
        if "id" in l:
            text += f" id {l['id']} seq {l['seq']}"
        if l["type"] == 3:
            text += f" ({UNREACH_CODES.get(l['code'], 'code ' + str(l['code']))})"
        if l.get("quote"):
            text += " for [" + " | ".join(format_layer(q) for q in l["quote"]) + "]"
        return text
    if kind == "nested":
        return l["note"]
    if kind == "arp":
        return (f"arp who-has {l['target']} tell {l['sender']}" if l["op"] == "request"
                else f"arp {l['sender']} is-at {l['sender_mac']}")
    # a backend's header, with the fields its wire reads (`vxlan vni 4000`, `ipip`)
    return " ".join([kind, *(f"{k} {v}" for k, v in l.items() if k != "layer")])


def format_layers(layers: list[dict]) -> str:
    return " | ".join(format_layer(l) for l in layers)


def first_layer(layers: list[dict], kind: str) -> dict | None:
    return next((l for l in layers if l["layer"] == kind), None)


def innermost_ip(layers: list[dict]) -> tuple[dict | None, dict | None]:
    """The innermost IP header and the header after it (ICMP/TCP/UDP), if any."""
    for i in range(len(layers) - 1, -1, -1):
        if layers[i]["layer"] == "ip":
            return layers[i], layers[i + 1] if i + 1 < len(layers) else None
    return None, None


def ip_key(layers: list[dict]) -> tuple[str, str] | None:
    ip = first_layer(layers, "ip")
    return (ip["src"], ip["dst"]) if ip else None


# --- note 002's outer/inner rows -------------------------------------------------------------

@dataclass
class Row:
    src_ip: str | None = None
    src_mac: str | None = None
    dst_ip: str | None = None
    dst_mac: str | None = None
    proto: str = ""
    vni: int | None = None
    ports: str = ""          # "51234 > 4789"


@dataclass
class Decoded:
    kind: str                # the backend type: vxlan | ipip | udp
    outer: Row
    inner: Row


def rows(layers: list[dict], backend_type: str, port: int | None) -> Decoded | None:
    """The outer/inner rows of a packet of the lab's tunnel (its backend type, on its port),
    or None for any other packet.  `layers` come from `decode` with the lab's
    backends.encap_ports."""
    i = next((n for n, l in enumerate(layers) if l["layer"] == "ip"), None)
    wire = backends.get(backend_type).wire if backend_type in backends.names() else None
    if i is None or wire is None:
        return None
    outer, rest = _row(layers[:i + 1]), layers[i + 1:]    # the outer IP and the link header before it
    # the header after the outer IP must be the backend's, and carry the inner header it names
    if [l["layer"] for l in rest[:len(wire.signature)]] != list(wire.signature):
        return None
    if wire.udp:
        if rest[0]["dport"] != port:
            return None
        outer.ports = f"{rest[0]['sport']} > {rest[0]['dport']}"
    outer.proto = wire.description
    outer.vni = rest[len(wire.signature) - 2].get("vni")
    return Decoded(backend_type, outer, _inner(rest[len(wire.signature) - 1:]))


def _row(layers: list[dict]) -> Row:
    """The first IP header's addresses and the first Ethernet header's MACs."""
    ip, eth = first_layer(layers, "ip"), first_layer(layers, "eth")
    return Row(ip and ip["src"], eth and eth["src"], ip and ip["dst"], eth and eth["dst"])


def _inner(layers: list[dict]) -> Row:
    row = _row(layers)
    row.proto = describe(layers)
    return row


def describe(layers: list[dict]) -> str:
    """The protocol of a packet in a few words: `ICMP echo-request`, `TCP 80 > 41234 [SA]`.
    ARP, then ICMP, TCP, UDP at any depth name it, so a line for a tunnel packet that is not
    the lab's (VXLAN on another port) says what it carries."""
    arp, icmp, tcp, udp = (first_layer(layers, k) for k in ("arp", "icmp", "tcp", "udp"))
    if arp:
        return f"ARP who-has {arp['target']}" if arp["op"] == "request" else f"ARP {arp['sender']} is-at {arp['sender_mac']}"
    if icmp:
        kind = {0: "echo-reply", 8: "echo-request", 3: "unreachable", 11: "time-exceeded"}.get(icmp["type"])
        return f"ICMP {kind or 'type ' + str(icmp['type'])}"
    if tcp:   # flags in tcpdump's and Wireshark's order (FIN first), as this table always showed them
        return f"TCP {tcp['sport']} > {tcp['dport']} [{''.join(c for c in 'FSRPA' if c in tcp['flags'])}]"
    if udp:
        return f"UDP {udp['sport']} > {udp['dport']}"
    ip, eth = first_layer(layers, "ip"), first_layer(layers, "eth")
    if ip:
        return {2: "IGMP", 4: "IPIP", 47: "GRE"}.get(ip["proto"], f"IP proto {ip['proto']}")
    return f"ethertype 0x{eth['type']:04x}" if eth else "not IPv4 or ARP"


def summary(layers: list[dict], names: Names) -> str:
    """One line for a packet that is not encapsulated: `client > web-worker1 ICMP echo-request`."""
    ip, eth = first_layer(layers, "ip"), first_layer(layers, "eth")
    if ip is not None:
        src, dst = _named(ip["src"], names.of_ip(ip["src"])), _named(ip["dst"], names.of_ip(ip["dst"]))
    elif eth is not None:
        src, dst = _named(eth["src"], names.of_mac(eth["src"])), _named(eth["dst"], names.of_mac(eth["dst"]))
    else:
        return describe(layers)
    return f"{src} > {dst}: {describe(layers)}"


def _named(value: str, name: str) -> str:
    return f"{value} ({name})" if name else value


# --- names ---------------------------------------------------------------------------------------

@dataclass
class Names:
    mac: dict[str, str] = field(default_factory=dict)
    ip: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_topology(cls, topo) -> "Names":
        names = cls()
        for node in topo.nodes.values():
            first = topo.address_of(node.name)
            for i in node.ifaces:
                names.mac[i.mac.lower()] = f"{node.name} {i.name}"
                if i.ip is not None:
                    names.ip[str(i.ip.ip)] = node.name if i.ip.ip == first else f"{node.name} {i.name}"
            for b in node.bridges:
                names.mac[b.mac.lower()] = f"{node.name} {b.name}"
                if b.ip is not None:
                    names.ip[str(b.ip.ip)] = f"{node.name} {b.name}"
            for t in node.tunnels:
                if t.ip is not None:
                    names.ip[str(t.ip.ip)] = f"{node.name} {t.name}"
        cluster = topo.cluster
        if cluster is not None:
            device = cluster.backend.device
            for cn in cluster.nodes.values():
                wire = backends.get(cluster.backend.type).wire
                if device and wire is not None and wire.inner == "eth":    # a VTEP: the device has a MAC
                    names.mac[cn.vtep_mac.lower()] = f"{cn.name} {device}"
                if device:   # flannel gives its device the lease's .0 address
                    names.ip[str(cn.subnet.network_address)] = f"{cn.name} {device}"
        return names

    def of_mac(self, mac: str | None) -> str:
        if mac and mac.lower() == "ff:ff:ff:ff:ff:ff":
            return "broadcast"
        return self.mac.get((mac or "").lower(), "")

    def of_ip(self, ip: str | None) -> str:
        return self.ip.get(ip or "", "")
