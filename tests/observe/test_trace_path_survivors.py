"""trace's pure path code where mutation testing found nothing watching (tests/README.md):
a given start wins over the ICMP-error rule, sightings off the path come back in time
order, summary() merges a node's interfaces only into its own group, and packets
without UDP (an ICMP error quoting ICMP, an IPIP-encapsulated request) are no outer
error's quote; observe() turns a frame into a sighting with all its fields."""
from __future__ import annotations

from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.vxlan import VXLAN
from scapy.layers.l2 import Ether

from nslab.observe.decode import decode
from nslab.observe.sniffer import Frame
from nslab.observe.trace import Obs, Probe, _quote_tuple, build_path, observe, outer_errors, summary

ARPHRD_ETHER = 1


def obs(node, iface, d, order, t, kind="request", layers=None):
    return Obs(node, iface, d, t, order, kind, layers or [])


PEERS = {("client", "eth0"): ("r1", "a"), ("r1", "a"): ("client", "eth0"),
         ("r1", "b"): ("lb", "eth0"), ("lb", "eth0"): ("r1", "b")}


def test_a_given_start_wins_and_the_rest_is_in_time_order():
    # r1 is where the trace starts (its probe), although the client was first seen sending;
    # the client's and two flooded copies are off the path, listed by time, not as read.
    seen = [obs("client", "eth0", "out", 1, 10), obs("r1", "a", "in", 1, 20), obs("r1", "b", "out", 2, 30),
            obs("lb", "eth0", "in", 1, 40), obs("w2", "eth0", "in", 1, 90), obs("w3", "eth0", "in", 1, 5)]
    path, rest = build_path(seen, "r1", PEERS)
    assert [(o.node, o.iface) for o in path] == [("r1", "a"), ("r1", "b"), ("lb", "eth0")]
    assert [(o.node, o.t_ns) for o in rest] == [("w3", 5), ("client", 10), ("w2", 90)]


def test_summary_groups_interfaces_by_the_node_they_belong_to():
    steps = [{"node": "a", "iface": "e0"}, {"node": "b", "iface": "y"}, {"node": "c", "iface": "x"},
             {"node": "c", "iface": "y"}, {"node": "c", "iface": "x"}]
    assert summary(steps) == "a(e0) -> b(y) -> c(x y)"


def test_no_udp_no_quote_tuple_and_no_outer_error():
    quoted_icmp = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / ICMP(type=8, id=1, seq=1))[:28]
    err = decode(bytes(Ether() / IP(src="10.0.0.254", dst="10.0.0.1") / ICMP(type=3, code=1) / quoted_icmp))
    assert _quote_tuple(err) is None
    ipip = decode(bytes(Ether() / IP(src="192.168.56.10", dst="192.168.56.11", proto=4)
                        / IP(src="10.244.0.2", dst="10.244.1.2") / ICMP(type=8, id=7, seq=1)))
    assert [l["layer"] for l in ipip][:2] == ["eth", "ip"]
    seen = [obs("node1", "ens33", "out", 1, 1, layers=ipip), obs("r", "eth0", "out", 1, 2, kind="icmp error?", layers=err)]
    assert outer_errors(seen) == [] and seen[1].kind == "icmp error?"


def test_observe_keeps_every_field_of_the_frame():
    probe = Probe("icmp", None, "10.0.0.2", ident=4242, seq=7)
    mine = bytes(Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / ICMP(type=8, id=4242, seq=7))
    o = observe(probe, {}, Frame("h1", "eth0", True, ARPHRD_ETHER, mine, 123, 4))
    assert (o.node, o.iface, o.dir, o.t_ns, o.order, o.kind) == ("h1", "eth0", "out", 123, 4, "request")
    assert o.layers == decode(mine)
    reply = bytes(Ether() / IP(src="10.0.0.2", dst="10.0.0.1") / ICMP(type=0, id=4242, seq=7))
    assert observe(probe, {}, Frame("h1", "eth0", False, ARPHRD_ETHER, reply, 9, 5)).kind == "reply"
    carried = bytes(Ether() / IP(src="192.168.56.10", dst="192.168.56.11") / UDP(sport=40000, dport=4789)
                    / VXLAN(vni=1) / Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / ICMP(type=8, id=4242, seq=7))
    assert observe(probe, {4789: "vxlan"}, Frame("n1", "ens33", True, ARPHRD_ETHER, carried, 3, 3)).kind == "request"
    other = bytes(Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / ICMP(type=8, id=1, seq=7))
    assert observe(probe, {}, Frame("h1", "eth0", True, ARPHRD_ETHER, other, 1, 1)) is None
    # an ICMP error about some UDP packet: maybe about the probe's carrier (outer_errors decides)
    quoted = bytes(IP(src="10.0.0.1", dst="10.0.0.9") / UDP(sport=1, dport=4789))[:28]
    err = bytes(Ether() / IP(src="10.0.0.254", dst="10.0.0.1") / ICMP(type=3, code=1) / quoted)
    assert observe(probe, {}, Frame("r", "eth1", False, ARPHRD_ETHER, err, 2, 2)).kind == "icmp error?"
