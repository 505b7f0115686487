"""nslab.observe.decode on packets built with scapy (bytes read as `nslab capture --decode` reads them): note 002's outer/inner rows for vxlan (on any
port, not only the ones scapy knows), ipip (protocol 4, no inner MAC) and flannel's udp
backend (raw IP in UDP), and the names a lab gives its MACs and addresses."""
from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest
from rich.console import Console
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.layers.vxlan import VXLAN

from nslab import backends, model
from nslab.backends import Config
from nslab.observe.capture import table
from nslab.observe.decode import Names, decode_pcap, describe, first_layer, rows, summary

TOPO = os.path.join(os.path.dirname(__file__), "..", "..", "topologies")


def load(name: str, backend: str | None = None, text: str | None = None):
    return model.load(os.path.join(TOPO, name), text=text, overrides={"backend": backend} if backend else None)


def mac(topo, node, iface):
    return topo.nodes[node].iface(iface).mac


def wire(pkt):
    """What a capture hands back: bytes re-dissected from Ethernet."""
    return Ether(bytes(pkt))


def encap_ports(backend: str = "", port: int | None = None) -> dict[int, str]:
    """The one classifier's ports for a lab with this backend on this port (capture's call)."""
    return backends.encap_ports(Config(type=backend, port=port) if backend else None)


def layers(pkt, backend: str = "", port: int | None = None) -> list[dict]:
    """An Ethernet record decoded for a lab with this backend, as the capture loop does."""
    return decode_pcap(bytes(pkt), 1, encap_ports(backend, port))


def decode(pkt, backend: str, port: int | None):
    """The outer/inner rows `nslab capture --decode` prints for pkt (None: a summary line)."""
    return rows(layers(pkt, backend, port), backend, port)


def vxlan_packet(topo, port: int, vni: int, src=("worker1", "enp0s3"), dst=("worker3", "leaf01", "eth0"),
                 sport: int = 51234):
    """src node's underlay -> next hop (dst[1]:dst[2]) carrying src's VTEP -> dst[0]'s VTEP."""
    c = topo.cluster
    return wire(Ether(src=mac(topo, *src), dst=mac(topo, dst[1], dst[2])) /
                IP(src=str(c.nodes[src[0]].ip), dst=str(c.nodes[dst[0]].ip)) / UDP(sport=sport, dport=port) /
                VXLAN(vni=vni, flags=0x08) /
                Ether(src=c.nodes[src[0]].vtep_mac, dst=c.nodes[dst[0]].vtep_mac) /
                IP(src=str(c.nodes[src[0]].subnet[2]), dst=str(c.nodes[dst[0]].subnet[2])) / ICMP(type=8))


def test_vxlan_4789_rows_as_note_002():
    topo = load("spine-leaf.yaml")
    d = decode(vxlan_packet(topo, 4789, 4000), "vxlan", 4789)
    assert d is not None and d.kind == "vxlan"
    assert (d.outer.src_ip, d.outer.dst_ip) == ("10.0.0.21", "30.0.0.23")
    assert (d.outer.src_mac, d.outer.dst_mac) == (mac(topo, "worker1", "enp0s3"), mac(topo, "leaf01", "eth0"))
    assert (d.outer.vni, d.outer.ports) == (4000, "51234 > 4789")
    c = topo.cluster
    assert (d.inner.src_ip, d.inner.dst_ip) == ("10.244.1.2", "10.244.3.2")
    assert (d.inner.src_mac, d.inner.dst_mac) == (c.nodes["worker1"].vtep_mac, c.nodes["worker3"].vtep_mac)
    assert d.inner.proto == "ICMP echo-request" and d.inner.vni is None


def test_vxlan_on_8472_and_on_a_port_scapy_does_not_know():
    topo = load("vxlan-3node.yaml")
    assert topo.cluster.backend.port == 8472
    d = decode(vxlan_packet(topo, 8472, 1, src=("node1", "eth0"), dst=("node2", "node2", "eth0")), "vxlan", 8472)
    assert (d.outer.src_ip, d.outer.dst_ip, d.outer.vni) == ("192.168.0.12", "192.168.0.13", 1)
    assert (d.inner.src_ip, d.inner.dst_ip) == ("10.244.1.2", "10.244.2.2")
    assert d.inner.dst_mac == topo.cluster.nodes["node2"].vtep_mac

    text = open(os.path.join(TOPO, "spine-leaf.yaml")).read().replace("port: 4789", "port: 9999")
    odd = load("spine-leaf.yaml", text=text)
    assert odd.cluster.backend.port == 9999
    pkt = vxlan_packet(odd, 9999, 4000)
    assert not pkt.haslayer(VXLAN)                  # scapy alone would not see the tunnel
    d = decode(pkt, "vxlan", 9999)
    assert d.outer.vni == 4000 and d.outer.ports == "51234 > 9999"
    assert d.inner.dst_ip == "10.244.3.2" and d.inner.dst_mac == odd.cluster.nodes["worker3"].vtep_mac
    assert decode(pkt, "vxlan", 4789) is None       # the lab's port decides, not the packet


def test_ipip_protocol_4_has_no_inner_mac():
    topo = load("spine-leaf.yaml", backend="ipip")
    pkt = wire(Ether(src=mac(topo, "worker1", "enp0s3"), dst=mac(topo, "leaf01", "eth0")) /
               IP(src="10.0.0.21", dst="30.0.0.23", proto=4) / IP(src="10.244.1.2", dst="10.244.3.2") /
               TCP(sport=41000, dport=80, flags="S"))
    d = decode(pkt, "ipip", None)
    assert d.kind == "ipip" and d.outer.proto.startswith("IPIP")
    assert (d.outer.src_ip, d.outer.dst_ip, d.outer.vni, d.outer.ports) == ("10.0.0.21", "30.0.0.23", None, "")
    assert (d.inner.src_ip, d.inner.dst_ip) == ("10.244.1.2", "10.244.3.2")
    assert d.inner.src_mac is None and d.inner.dst_mac is None
    assert d.inner.proto == "TCP 41000 > 80 [S]"
    assert decode(pkt, "vxlan", 4789) is None


def test_a_frame_of_500_nested_ipip_headers_is_decoded_to_a_bound():
    """~10 KB of IPv4-in-IPv4 headers sent inside a lab recursed past Python's limit in
    capture --decode, trace and test (RecursionError); now: the first MAX_TUNNELS, and a note."""
    from nslab.observe.decode import MAX_TUNNELS, format_layers
    pkt = bytes(IP(src="10.244.1.2", dst="10.244.3.2") / ICMP(type=8))
    outer = bytes(IP(src="10.0.0.21", dst="30.0.0.23", proto=4))       # one header; scapy recurses too
    for _ in range(500):                                                # so the bytes are nested here
        pkt = outer[:2] + (20 + len(pkt)).to_bytes(2, "big") + outer[4:] + pkt
    frame = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02", type=0x0800)) + pkt
    assert len(frame) > 10_000
    got = layers(frame, "ipip")
    assert [l["layer"] for l in got] == ["eth"] + ["ip", "ipip"] * MAX_TUNNELS + ["ip", "nested"]
    assert format_layers(got).endswith(f"| ip 10.0.0.21 > 30.0.0.23 ttl 64 | more tunnels nested inside; "
                                       f"decoded the first {MAX_TUNNELS}")
    d = decode(frame, "ipip", None)                          # capture --decode's rows of it
    assert d.kind == "ipip" and (d.outer.src_ip, d.outer.dst_ip) == ("10.0.0.21", "30.0.0.23")
    summary(got, Names())                                    # trace's and test's one line


@pytest.mark.parametrize("backend,port", [("udp", 8285), ("udp:8282", 8282)])
def test_udp_backend_raw_ip_in_udp(backend, port):
    topo = load("spine-leaf.yaml", backend=backend)
    assert topo.cluster.backend.port == port
    pkt = wire(Ether(src=mac(topo, "worker1", "enp0s3"), dst=mac(topo, "leaf01", "eth0")) /
               IP(src="10.0.0.21", dst="30.0.0.23") / UDP(sport=port, dport=port) /
               IP(src="10.244.1.2", dst="10.244.3.2") / ICMP(type=0))
    d = decode(pkt, "udp", port)
    assert d.kind == "udp" and d.outer.ports == f"{port} > {port}" and d.outer.vni is None
    assert (d.inner.src_ip, d.inner.dst_ip, d.inner.proto) == ("10.244.1.2", "10.244.3.2", "ICMP echo-reply")
    assert d.inner.src_mac is None
    assert decode(pkt, "udp", 8285 if port != 8285 else 8282) is None


def test_plain_packets_are_not_encapsulated():
    topo = load("spine-leaf.yaml")
    names = Names.from_topology(topo)
    icmp = wire(Ether() / IP(src="10.244.1.2", dst="10.244.2.2") / ICMP(type=8))
    assert decode(icmp, "vxlan", 4789) is None
    dns = wire(Ether() / IP(src="10.0.0.21", dst="10.0.0.22") / UDP(sport=5353, dport=53))
    assert decode(dns, "vxlan", 4789) is None
    assert summary(layers(icmp), names) == "10.244.1.2 (client) > 10.244.2.2 (web-worker2): ICMP echo-request"
    arp = wire(Ether(src=mac(topo, "worker1", "enp0s3"), dst="ff:ff:ff:ff:ff:ff") / ARP(pdst="10.0.0.254"))
    assert summary(layers(arp), names).endswith("(broadcast): ARP who-has 10.0.0.254")
    assert "(worker1 enp0s3)" in summary(layers(arp), names)


def test_raw_ip_records_from_a_tun_device():
    raw = bytes(IP(src="10.244.1.2", dst="10.244.3.2") / ICMP(type=8))
    tun = decode_pcap(raw, 101)                      # LINKTYPE_RAW: flannel0, flannel.ipip
    assert first_layer(tun, "ip")["dst"] == "10.244.3.2" and describe(tun) == "ICMP echo-request"
    assert decode_pcap(bytes(Ether() / IP()), 1)[0]["layer"] == "eth"


def test_names_of_a_lab():
    topo = load("spine-leaf.yaml")
    n = Names.from_topology(topo)
    c = topo.cluster
    assert n.of_mac(c.nodes["worker3"].vtep_mac) == "worker3 flannel.4000"
    assert n.of_mac(mac(topo, "leaf01", "eth0")) == "leaf01 eth0"
    assert n.of_mac(topo.nodes["worker3"].bridges[0].mac) == "worker3 cni0"
    assert n.of_mac(mac(topo, "client", "eth0")) == "client eth0"
    assert n.of_ip("30.0.0.23") == "worker3"
    assert n.of_ip("10.244.3.0") == "worker3 flannel.4000"
    assert n.of_ip("10.244.3.1") == "worker3 cni0"
    assert n.of_ip("10.244.3.2") == "web-worker3"
    assert n.of_ip("10.0.0.254") == "leaf01" and n.of_ip("172.31.0.1") == "leaf01 eth1"
    assert n.of_ip("198.51.100.1") == "" and n.of_mac("02:00:00:00:00:99") == ""
    udp = Names.from_topology(load("spine-leaf.yaml", backend="udp"))
    assert udp.of_ip("10.244.3.0") == "worker3 flannel0"


def test_table_has_the_note_002_columns_and_names():
    topo = load("spine-leaf.yaml")
    d = decode(vxlan_packet(topo, 4789, 4000), "vxlan", 4789)
    out = io.StringIO()
    Console(file=out, width=200, color_system=None).print(table(d, Names.from_topology(topo)))
    text = out.getvalue()
    for word in ("src IP", "src MAC", "dst IP", "dst MAC", "protocol", "VNI", "UDP ports", "outer", "inner",
                 "UDP/VXLAN", "4000", "51234 > 4789", "worker1 enp0s3", "leaf01 eth0", "worker3 flannel.4000",
                 "worker1 flannel.4000", "client", "web-worker3", "ICMP echo-request"):
        assert word in text, word
    outer = next(line for line in text.splitlines() if line.startswith("outer"))
    assert outer.split()[:5] == ["outer", "10.0.0.21", mac(topo, "worker1", "enp0s3"), "30.0.0.23",
                                 mac(topo, "leaf01", "eth0")]


def test_linux_cooked_records_of_any_interface():
    """`nslab capture NODE:any` gets Linux cooked headers (SLL, SLL2): no MACs, the same rows."""
    from scapy.layers.l2 import CookedLinux, CookedLinuxV2
    topo = load("spine-leaf.yaml")
    vx = vxlan_packet(topo, 4789, 4000)
    for cooked, linktype in ((CookedLinux, 113), (CookedLinuxV2, 276)):
        got = rows(decode_pcap(bytes(cooked(proto=0x0800) / vx[IP]), linktype, encap_ports("vxlan", 4789)), "vxlan", 4789)
        assert (got.outer.src_ip, got.outer.src_mac, got.outer.vni) == ("10.0.0.21", None, 4000)
        assert got.inner.dst_mac == topo.cluster.nodes["worker3"].vtep_mac     # the inner frame keeps its MACs
        arp = decode_pcap(bytes(cooked(proto=0x0806) / ARP(pdst="10.0.0.254")), linktype)
        assert summary(arp, Names()) == "ARP who-has 10.0.0.254"


def test_tcp_flags_and_vxlan_on_the_other_usual_port():
    topo = load("spine-leaf.yaml")
    fin = wire(Ether() / IP(src="10.244.1.2", dst="10.244.3.2") / TCP(sport=80, dport=41000, flags="FA"))
    assert describe(layers(fin)) == "TCP 80 > 41000 [FA]"       # FIN first, as tcpdump writes them
    other = vxlan_packet(load("vxlan-3node.yaml"), 8472, 1, src=("node1", "eth0"), dst=("node2", "node2", "eth0"))
    assert decode(other, "vxlan", 4789) is None                  # not the lab's tunnel: one line that says
    assert summary(layers(other, "vxlan", 4789), Names()).endswith(": ICMP echo-request")   # what it carries


def test_capture_decode_does_not_import_scapy():
    code = "import sys, nslab.observe.capture, nslab.observe.decode, nslab.observe.trace; print(any(m.startswith('scapy') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
