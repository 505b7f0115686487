"""`nslab trace` without root: decoding frames (built independently with scapy), matching
the probe in them (also inside VXLAN and inside ICMP errors), and chaining sightings
into a path."""
import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.layers.vxlan import VXLAN

from nslab.observe.decode import decode, format_layer, format_layers, split
from nslab.packet import echo_request as icmp_echo
from nslab.observe.trace import Obs, Probe, build_path, outer_errors, summary

POD1, POD3 = "10.244.1.2", "10.244.3.2"
ENCAP = {4789: "vxlan", 8285: "udp"}


def inner_icmp(typ=8, ident=4242, seq=7, ttl=63):
    return (Ether(src="5a:e9:01:80:14:18", dst="92:10:6e:69:dd:c9") / IP(src=POD1, dst=POD3, ttl=ttl)
            / ICMP(type=typ, id=ident, seq=seq) / b"nslab trace")


def vxlan_frame(inner, sport=51234):
    return bytes(Ether(src="26:9f:a2:e4:bb:18", dst="2e:0a:63:4a:5d:2d") / IP(src="10.0.0.21", dst="30.0.0.23")
                 / UDP(sport=sport, dport=4789) / VXLAN(vni=4000) / inner)


def test_decode_plain_icmp():
    layers = decode(bytes(inner_icmp()))
    assert [l["layer"] for l in layers] == ["eth", "ip", "icmp"]
    assert layers[0] == {"layer": "eth", "src": "5a:e9:01:80:14:18", "dst": "92:10:6e:69:dd:c9", "type": 0x0800}
    assert (layers[1]["src"], layers[1]["dst"], layers[1]["ttl"], layers[1]["proto"]) == (POD1, POD3, 63, 1)
    assert (layers[2]["type"], layers[2]["id"], layers[2]["seq"]) == (8, 4242, 7)
    assert split(layers) == ([], layers)


def test_decode_vxlan_outer_and_inner():
    layers = decode(vxlan_frame(inner_icmp()), encap=ENCAP)
    outer, inner = split(layers)
    assert [l["layer"] for l in outer] == ["eth", "ip", "udp", "vxlan"]
    assert outer[3]["vni"] == 4000 and outer[2]["dport"] == 4789
    assert format_layers(outer) == ("eth 26:9f:a2:e4:bb:18 > 2e:0a:63:4a:5d:2d | ip 10.0.0.21 > 30.0.0.23 ttl 64 | "
                                    "udp 51234 > 4789 | vxlan vni 4000")
    assert format_layers(inner) == ("eth 5a:e9:01:80:14:18 > 92:10:6e:69:dd:c9 | ip 10.244.1.2 > 10.244.3.2 ttl 63 | "
                                    "icmp echo request id 4242 seq 7")


def test_vxlan_only_on_configured_ports():
    layers = decode(vxlan_frame(inner_icmp()), encap={8472: "vxlan"})
    assert [l["layer"] for l in layers] == ["eth", "ip", "udp"]


def test_decode_flannel_udp_and_raw_ip_device():
    frame = bytes(Ether() / IP(src="10.0.0.21", dst="30.0.0.23") / UDP(sport=8285, dport=8285)
                  / IP(src=POD1, dst=POD3) / ICMP(id=1, seq=2))
    outer, inner = split(decode(frame, encap=ENCAP))
    assert [l["layer"] for l in outer][-1] == "flannel-udp" and inner[0]["dst"] == POD3
    tun = decode(bytes(IP(src=POD1, dst=POD3) / ICMP(id=1, seq=2)), hatype=0xFFFE)   # flannel0: no link header
    assert [l["layer"] for l in tun] == ["ip", "icmp"]


def test_decode_tcp_flags_and_arp():
    syn = decode(bytes(Ether() / IP(src=POD1, dst=POD3) / TCP(sport=40000, dport=80, flags="S")))
    assert format_layer(syn[-1]) == "tcp 40000 > 80 [S]"
    synack = decode(bytes(Ether() / IP(src=POD3, dst=POD1) / TCP(sport=80, dport=40000, flags="SA")))
    assert synack[-1]["flags"] == "SA"
    arp = decode(bytes(Ether(dst="ff:ff:ff:ff:ff:ff") / ARP(psrc="10.1.1.2", pdst="10.1.1.1")))
    assert format_layer(arp[-1]) == "arp who-has 10.1.1.1 tell 10.1.1.2"


def test_truncated_frames_do_not_raise():
    frame = vxlan_frame(inner_icmp())
    for n in range(len(frame)):
        decode(frame[:n], encap=ENCAP)


def test_probe_icmp_request_reply_error():
    p = Probe("icmp", None, POD3, ident=4242, seq=7)
    assert p.classify(decode(bytes(inner_icmp()))) == "request"
    assert p.classify(decode(vxlan_frame(inner_icmp()), encap=ENCAP)) == "request"
    assert p.classify(decode(bytes(inner_icmp(typ=0)))) == "reply"
    assert p.classify(decode(bytes(inner_icmp(seq=8)))) is None
    assert p.classify(decode(bytes(inner_icmp(ident=1)))) is None
    quoted = bytes(IP(src=POD1, dst=POD3, ttl=1) / ICMP(id=4242, seq=7))[:28]   # header + 8 bytes, as routers quote
    err = decode(bytes(Ether() / IP(src="10.1.1.1", dst=POD1) / ICMP(type=11, code=0) / quoted))
    assert p.classify(err) == "error"
    assert format_layer(err[-1]) == ("icmp time exceeded for [ip 10.244.1.2 > 10.244.3.2 ttl 1 | "
                                     "icmp echo request id 4242 seq 7]")


def test_probe_tcp_only_syn_and_its_answer():
    p = Probe("tcp", None, POD3, port=80, ident=40000)
    pkt = lambda s, d, sp, dp, f: decode(bytes(Ether() / IP(src=s, dst=d) / TCP(sport=sp, dport=dp, flags=f)))
    assert p.classify(pkt(POD1, POD3, 40000, 80, "S")) == "request"
    assert p.classify(pkt(POD1, POD3, 40000, 80, "A")) is None          # the handshake's last ACK
    assert p.classify(pkt(POD3, POD1, 80, 40000, "SA")) == "reply"
    assert p.classify(pkt(POD3, POD1, 80, 40000, "RA")) == "reply"      # closed port
    assert p.classify(pkt(POD1, POD3, 40001, 80, "S")) is None


def test_probe_udp_port_unreachable_is_error():
    p = Probe("udp", None, POD3, port=5000, ident=33333)
    req = IP(src=POD1, dst=POD3) / UDP(sport=33333, dport=5000) / b"x"
    assert p.classify(decode(bytes(Ether() / req))) == "request"
    req = bytes(req)
    err = decode(bytes(Ether() / IP(src=POD3, dst=POD1) / ICMP(type=3, code=3) / req[:28]))
    assert p.classify(err) == "error"
    assert "port unreachable" in format_layer(err[-1])


def test_icmp_echo_checksum():
    pkt = icmp_echo(0x1234, 9, b"nslab trace 0123")
    assert pkt == bytes(ICMP(type=8, id=0x1234, seq=9) / b"nslab trace 0123")    # scapy computes the checksum
    odd = icmp_echo(1, 2, b"abc")
    assert odd == bytes(ICMP(type=8, id=1, seq=2) / b"abc")


def obs(node, iface, d, order, t, kind="request", layers=None):
    return Obs(node, iface, d, t, order, kind, layers or [])


PEERS = {("client", "eth0"): ("worker1", "vethA"), ("worker1", "vethA"): ("client", "eth0"),
         ("worker1", "enp0s3"): ("rack1", "worker1"), ("rack1", "worker1"): ("worker1", "enp0s3"),
         ("rack1", "leaf01"): ("leaf01", "eth0"), ("rack1", "worker2"): ("worker2", "enp0s3"),
         ("leaf01", "eth0"): ("rack1", "leaf01")}


def test_build_path_follows_links_not_clock():
    # kernel timestamps can tie or even disagree across namespaces; the path follows the links
    seen = [obs("leaf01", "eth0", "in", 9, 100), obs("rack1", "leaf01", "out", 8, 100),
            obs("rack1", "worker1", "in", 7, 100), obs("worker1", "enp0s3", "out", 5, 100),
            obs("worker1", "cni0", "in", 3, 101), obs("worker1", "vethA", "in", 2, 101),
            obs("worker1", "flannel.4000", "out", 4, 99), obs("client", "eth0", "out", 1, 100),
            obs("worker2", "enp0s3", "in", 10, 100)]                    # a flooded copy
    path, rest = build_path(seen, "client", PEERS)
    assert [(o.node, o.iface) for o in path] == [
        ("client", "eth0"), ("worker1", "vethA"), ("worker1", "cni0"), ("worker1", "flannel.4000"),
        ("worker1", "enp0s3"), ("rack1", "worker1"), ("rack1", "leaf01"), ("leaf01", "eth0")]
    assert [(o.node, o.iface) for o in rest] == [("worker2", "enp0s3")]
    steps = [{"node": o.node, "iface": o.iface} for o in path]
    assert summary(steps) == ("client(eth0) -> worker1(vethA cni0 flannel.4000 enp0s3) -> rack1(worker1 leaf01) "
                              "-> leaf01(eth0)")


def test_build_path_first_sighting_counts_and_unknown_start():
    seen = [obs("client", "eth0", "out", 1, 10), obs("client", "eth0", "out", 5, 50),   # retransmission
            obs("worker1", "vethA", "in", 2, 11)]
    path, rest = build_path(seen, "client", PEERS)
    assert [(o.node, o.order) for o in path] == [("client", 1), ("worker1", 2)] and rest == []
    path, _ = build_path(seen, None, PEERS)            # an ICMP error: start where it was first sent
    assert path[0].node == "client"
    assert build_path([], "client", PEERS) == ([], [])


def test_outer_errors_match_the_vxlan_carrier():
    carrier = decode(vxlan_frame(inner_icmp(), sport=51234), encap=ENCAP)
    quote = bytes(IP(src="10.0.0.21", dst="30.0.0.23") / UDP(sport=51234, dport=4789) / (b"x" * 8))[:28]
    err = decode(bytes(Ether() / IP(src="172.31.0.2", dst="10.0.0.21") / ICMP(type=3, code=0) / quote))
    other = decode(bytes(Ether() / IP(src="172.31.0.2", dst="10.0.0.21") / ICMP(type=3, code=0)
                         / bytes(IP(src="10.0.0.21", dst="30.0.0.23") / UDP(sport=1, dport=4789))[:28]))
    seen = [obs("worker1", "enp0s3", "out", 1, 1, layers=carrier),
            obs("spine", "eth0", "out", 2, 2, kind="icmp error?", layers=err),
            obs("spine", "eth0", "out", 3, 3, kind="icmp error?", layers=other)]
    assert [o.order for o in outer_errors(seen)] == [2]
    assert [o.kind for o in seen] == ["request", "error", "icmp error?"]


@pytest.mark.parametrize("layer,text", [
    ({"layer": "udp", "sport": 1, "dport": 2}, "udp 1 > 2"),
    ({"layer": "icmp", "type": 3, "code": 1}, "icmp destination unreachable (host unreachable)"),
    ({"layer": "arp", "op": "reply", "sender": "10.1.1.1", "sender_mac": "aa:bb:cc:dd:ee:ff", "target": "x"},
     "arp 10.1.1.1 is-at aa:bb:cc:dd:ee:ff"),
])
def test_format_layer(layer, text):
    assert format_layer(layer) == text
