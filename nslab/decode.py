"""Outer/inner header tables for overlay packets (note 002), as pure functions.

`decode(pkt, backend)` splits one captured packet (a scapy packet, from Ether or from IP
for TUN devices) into an outer row and an inner row: src IP, src MAC, dst IP, dst MAC,
plus protocol, VNI and UDP ports.  The lab's backend says what to look for, because
scapy only recognises VXLAN on its well-known ports and knows nothing of flannel's udp
proxy: vxlan = UDP to the lab's port carrying VXLAN, ipip = IP protocol 4 (no inner MAC),
udp = a raw IPv4 packet as the payload of UDP to the lab's port.

`Names` maps the MACs and addresses of a lab to what a person calls them
(`worker3 flannel.4000`, `leaf01 eth0`, `web-worker3`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.layers.vxlan import VXLAN

IPPROTO_IPIP = 4


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
    kind: str                # vxlan | ipip | udp
    outer: Row
    inner: Row


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
                if device and cluster.backend.type == "vxlan":
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


def to_packet(data: bytes, linktype: int = 1):
    """Bytes of one capture record as a scapy packet (Ethernet, or raw IP on a TUN)."""
    from scapy.config import conf
    cls = conf.l2types.get(linktype)
    if cls is None or linktype in (12, 101, 228):     # DLT_RAW variants: the packet starts at IP
        return IP(data)
    return cls(data)


def decode(pkt, backend_type: str, port: int | None) -> Decoded | None:
    """The outer/inner rows of an encapsulated packet, or None if pkt is not one."""
    ip = pkt.getlayer(IP)
    if ip is None or ip.frag or ip.flags.MF:
        return None
    outer = Row(ip.src, _mac(pkt, "src"), ip.dst, _mac(pkt, "dst"))
    if backend_type == "ipip" and ip.proto == IPPROTO_IPIP:
        inner_ip = IP(bytes(ip.payload))
        outer.proto = "IPIP (IP proto 4)"
        return Decoded("ipip", outer, _inner(inner_ip))
    if ip.proto != 17 or backend_type not in ("vxlan", "udp"):
        return None
    udp = ip[UDP]
    if port not in (udp.dport, udp.sport):
        return None
    outer.ports = f"{udp.sport} > {udp.dport}"
    payload = bytes(udp.payload)
    if backend_type == "vxlan":
        if len(payload) < 8 + 14:
            return None
        vx = VXLAN(payload)              # by the lab's port: scapy binds only the well-known ones
        outer.proto, outer.vni = "UDP/VXLAN", vx.vni
        return Decoded("vxlan", outer, _inner(Ether(bytes(vx.payload))))
    if not payload or payload[0] >> 4 != 4:
        return None
    outer.proto = "UDP (flannel udp)"
    return Decoded("udp", outer, _inner(IP(payload)))


def _mac(pkt, which: str) -> str | None:
    eth = pkt.getlayer(Ether)
    return getattr(eth, which) if eth is not None else None


def _inner(pkt) -> Row:
    ip = pkt.getlayer(IP)
    row = Row(src_mac=_mac(pkt, "src"), dst_mac=_mac(pkt, "dst"))
    if ip is not None:
        row.src_ip, row.dst_ip = ip.src, ip.dst
    row.proto = describe(pkt)
    return row


def describe(pkt) -> str:
    """The protocol of a packet in a few words: `ICMP echo-request`, `TCP 80 > 41234 [SA]`."""
    if pkt.haslayer(ARP):
        a = pkt[ARP]
        return f"ARP who-has {a.pdst}" if a.op == 1 else f"ARP {a.psrc} is-at {a.hwsrc}"
    if pkt.haslayer(ICMP):
        icmp = pkt[ICMP]
        kind = {0: "echo-reply", 8: "echo-request", 3: "unreachable", 11: "time-exceeded"}.get(icmp.type, f"type {icmp.type}")
        return f"ICMP {kind}"
    if pkt.haslayer(TCP):
        t = pkt[TCP]
        return f"TCP {t.sport} > {t.dport} [{t.flags}]"
    if pkt.haslayer(UDP):
        u = pkt[UDP]
        return f"UDP {u.sport} > {u.dport}"
    ip = pkt.getlayer(IP)
    if ip is not None:
        return {2: "IGMP", IPPROTO_IPIP: "IPIP", 47: "GRE"}.get(ip.proto, f"IP proto {ip.proto}")
    eth = pkt.getlayer(Ether)
    return f"ethertype 0x{eth.type:04x}" if eth is not None else pkt.summary()


def summary(pkt, names: Names) -> str:
    """One line for a packet that is not encapsulated: `client > web-worker1 ICMP echo-request`."""
    ip, eth = pkt.getlayer(IP), pkt.getlayer(Ether)
    if ip is not None:
        src, dst = _named(ip.src, names.of_ip(ip.src)), _named(ip.dst, names.of_ip(ip.dst))
    elif eth is not None:
        src, dst = _named(eth.src, names.of_mac(eth.src)), _named(eth.dst, names.of_mac(eth.dst))
    else:
        return pkt.summary()
    return f"{src} > {dst}: {describe(pkt)}"


def _named(value: str, name: str) -> str:
    return f"{value} ({name})" if name else value
