"""Issue 3: the flannel labs of notes 000, 001 and 002, checked in real namespaces with
real packets.  Labs come from the pytest plugin's factories (nslab_module_lab, nslab_lab):
its names, root-skip and leftover check, as every other lab in the suite."""
from __future__ import annotations

import json
import os
import re

import pytest

from conftest import leftovers
from nslab import state
from nslab.api import Lab

TOPO = os.path.join(os.path.dirname(__file__), "..", "..", "topologies")


def down_and_check(lab: Lab) -> None:
    """nslab down, then the shared leak check (namespaces, run dir, /etc/netns, processes)."""
    processes = [vars(p) for p in lab.state.processes]
    lab.down()
    assert not leftovers(lab.name, state.RUN_DIR, processes)


@pytest.fixture(scope="module")
def spine_leaf(nslab_module_lab):
    return nslab_module_lab(os.path.join(TOPO, "spine-leaf.yaml"))     # down and checked after the module


def link(lab, node, dev) -> dict:
    return json.loads(lab.exec(node, "ip", "-d", "-j", "link", "show", "dev", dev, check=True).stdout)[0]


def lines(lab, node, *argv) -> list[str]:
    return [line.strip() for line in lab.exec(node, *argv, check=True).stdout.splitlines()]


# ---- note 001: spine/leaf, vxlan VNI 4000 port 4789 DirectRouting ----------------------
def test_vxlan_device_as_flannel_creates_it(spine_leaf):
    dev = link(spine_leaf, "worker1", "flannel.4000")
    data = dev["linkinfo"]["info_data"]
    assert dev["linkinfo"]["info_kind"] == "vxlan"
    assert (data["id"], data["local"], data["port"], data["learning"]) == (4000, "10.0.0.21", 4789, False)
    assert data["link"] == "enp0s3"
    assert dev["mtu"] == 9100                     # 9150 - 50
    assert link(spine_leaf, "worker1", "enp0s3")["mtu"] == 9150
    assert link(spine_leaf, "worker1", "cni0")["mtu"] == 9100
    addrs = lines(spine_leaf, "worker1", "ip", "-o", "-4", "addr", "show", "dev", "flannel.4000")
    assert "inet 10.244.1.0/32" in addrs[0]


def test_routes_neighbours_fdb_exactly_as_note_001(spine_leaf):
    routes = lines(spine_leaf, "worker1", "ip", "route")
    assert "10.244.2.0/24 via 10.0.0.22 dev enp0s3" in routes           # DirectRouting, same subnet
    assert "10.244.3.0/24 via 10.244.3.0 dev flannel.4000 onlink" in routes
    assert "10.244.1.0/24 dev cni0 proto kernel scope link src 10.244.1.1" in routes
    assert "default via 10.0.0.254 dev enp0s3" in routes
    vtep3 = link(spine_leaf, "worker3", "flannel.4000")["address"]
    assert lines(spine_leaf, "worker1", "ip", "neigh", "show", "dev", "flannel.4000") == \
        [f"10.244.3.0 lladdr {vtep3} PERMANENT"]
    assert lines(spine_leaf, "worker1", "bridge", "fdb", "show", "dev", "flannel.4000") == \
        [f"{vtep3} dst 30.0.0.23 self permanent"]


def test_pod_side_as_the_bridge_cni_leaves_it(spine_leaf):
    assert lines(spine_leaf, "client", "ip", "route") == [
        "default via 10.244.1.1 dev eth0",
        "10.244.0.0/16 via 10.244.1.1 dev eth0",
        "10.244.1.0/24 dev eth0 proto kernel scope link src 10.244.1.2"]
    ports = spine_leaf.exec("worker1", "bridge", "-d", "link", "show", "master", "cni0", check=True).stdout
    names = re.findall(r"^\d+: (veth[0-9a-f]{8})@", ports, re.M)
    assert len(names) == 2                        # client and web-worker1
    assert ports.count("hairpin on") == 2
    env = spine_leaf.state.info["worker1"]["subnet.env"]
    assert env == {"FLANNEL_NETWORK": "10.244.0.0/16", "FLANNEL_SUBNET": "10.244.1.1/24",
                   "FLANNEL_MTU": "9100", "FLANNEL_IPMASQ": "true"}


@pytest.mark.parametrize("dst", ["web-worker1", "web-worker2", "web-worker3"])
def test_pod_to_pod_ping_and_http(spine_leaf, dst):
    assert spine_leaf.ping("client", dst).ok
    r = spine_leaf.http_get("client", dst)
    assert r.returncode == 0 and r.stdout.startswith(dst), r.stdout + r.stderr


def test_same_node_pods_talk_over_cni0_at_layer_2(spine_leaf):
    """Note 001: client and web-worker1 share worker1's cni0: ARP, then ICMP, bridged."""
    from scapy.layers.inet import ICMP, IP
    from scapy.layers.l2 import ARP
    spine_leaf.exec("client", "ip", "neigh", "flush", "dev", "eth0", check=True)
    with spine_leaf.capture("web-worker1", "eth0") as cap:
        assert spine_leaf.ping("client", "web-worker1").ttl == 64      # no router on the way
    kinds = ["arp" if p.haslayer(ARP) else "icmp" if p.haslayer(ICMP) else "other" for p in cap.result]
    assert kinds[:2] == ["arp", "arp"] and "icmp" in kinds[2:], kinds
    echo = next(p for p in cap.result if p.haslayer(ICMP))
    assert echo[IP].src == "10.244.1.2"
    assert echo.src == link(spine_leaf, "client", "eth0")["address"]    # the pod's own MAC, not a router's
    neigh = spine_leaf.exec("client", "ip", "neigh", "show", "10.244.1.3", check=True).stdout
    assert link(spine_leaf, "web-worker1", "eth0")["address"] in neigh


def test_host_to_remote_pod(spine_leaf):
    assert spine_leaf.ping("master1", "web-worker3").ok
    r = spine_leaf.http_get("worker1", "web-worker3")
    # a host reaches a remote pod from its VTEP address (the route's source on flannel.4000)
    assert r.returncode == 0 and "answered 10.244.1.0:" in r.stdout, r.stdout


def test_cross_rack_is_vxlan_vni_4000_on_the_wire(spine_leaf):
    from scapy.layers.inet import ICMP, IP, UDP
    from scapy.layers.l2 import Ether
    from scapy.layers.vxlan import VXLAN
    with spine_leaf.capture("worker1", "enp0s3", "udp port 4789") as cap:
        assert spine_leaf.ping("client", "web-worker3").ok
    pkts = [p for p in cap.result if p.haslayer(VXLAN)]
    assert pkts, "no VXLAN packet seen on worker1's enp0s3"
    req = next(p for p in pkts if p[IP].src == "10.0.0.21")
    leaf01_mac = link(spine_leaf, "leaf01", "eth0")["address"]
    assert (req[IP].dst, req[UDP].dport, req[VXLAN].vni) == ("30.0.0.23", 4789, 4000)
    assert req[Ether].src == link(spine_leaf, "worker1", "enp0s3")["address"]
    assert req[Ether].dst == leaf01_mac             # next hop: the rack gateway 10.0.0.254
    inner = req[VXLAN].payload
    assert inner[Ether].src == link(spine_leaf, "worker1", "flannel.4000")["address"]
    assert inner[Ether].dst == link(spine_leaf, "worker3", "flannel.4000")["address"]
    assert (inner[IP].src, inner[IP].dst, inner[ICMP].type) == ("10.244.1.2", "10.244.3.2", 8)


def test_same_rack_crosses_unencapsulated(spine_leaf):
    from scapy.layers.inet import ICMP, IP, UDP
    with spine_leaf.capture("worker1", "enp0s3", "icmp or udp") as cap:
        assert spine_leaf.ping("client", "web-worker2").ok
    assert not [p for p in cap.result if p.haslayer(UDP)]
    icmp = [p for p in cap.result if p.haslayer(ICMP)]
    assert any(p[IP].src == "10.244.1.2" and p[IP].dst == "10.244.2.2" for p in icmp)


def test_largest_unfragmented_payload(spine_leaf):
    largest = 9100 - 28                             # pod MTU - IP - ICMP headers
    assert spine_leaf.ping("client", "web-worker3", size=largest, dont_fragment=True).ok
    r = spine_leaf.ping("client", "web-worker3", size=largest + 1, dont_fragment=True)
    assert not r.ok and "message too long" in r.output, r.output


# ---- ECMP with two spines -------------------------------------------------------------
def test_ecmp_leaves_spread_vxlan_flows_over_both_spines(nslab_lab):
    lab = nslab_lab(os.path.join(TOPO, "spine-leaf-ecmp.yaml"))
    try:
        route = lab.exec("leaf01", "ip", "route", "show", "30.0.0.0/24", check=True).stdout
        assert route.count("nexthop via") == 2, route
        assert lab.exec("leaf01", "sysctl", "-n", "net.ipv4.fib_multipath_hash_policy").stdout.strip() == "1"

        def tx(dev):
            return link(lab, "leaf01", dev)
        to_spine = {}
        for iface in lab.topo.nodes["leaf01"].ifaces:
            if iface.peer_node.startswith("spine"):
                to_spine[iface.peer_node] = iface.name
        before = {s: _tx_packets(lab, "leaf01", d) for s, d in to_spine.items()}
        for _ in range(16):                        # 16 TCP flows = 16 outer UDP source ports
            assert lab.http_get("client", "web-worker3").returncode == 0
        used = {s: _tx_packets(lab, "leaf01", d) - before[s] for s, d in to_spine.items()}
        assert all(n > 0 for n in used.values()), f"flows did not spread: {used}"
    finally:
        down_and_check(lab)


def _tx_packets(lab, node, dev) -> int:
    out = json.loads(lab.exec(node, "ip", "-s", "-j", "link", "show", "dev", dev, check=True).stdout)[0]
    return out["stats64"]["tx"]["packets"]


# ---- note 000: two nodes, vxlan VNI 1 port 8472, then host-gw ------------------------
def test_note_000_two_node_vxlan(nslab_lab):
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.l2 import Ether
    from scapy.layers.vxlan import VXLAN
    lab = nslab_lab(os.path.join(TOPO, "flannel-vxlan.yaml"))
    try:
        routes = lines(lab, "master", "ip", "route")
        assert "10.244.0.0/24 dev cni0 proto kernel scope link src 10.244.0.1" in routes
        assert "10.244.1.0/24 via 10.244.1.0 dev flannel.1 onlink" in routes
        assert link(lab, "master", "flannel.1")["mtu"] == 1450
        assert link(lab, "master", "cni0")["mtu"] == 1450
        assert link(lab, "node1", "cni0")["mtu"] == 1450
        assert lab.http_get("master", "10.244.1.6").returncode == 0          # host to remote pod
        with lab.capture("master", "ens33", "udp port 8472") as cap:
            r = lab.http_get("client", "nginx")                              # pod to remote pod
        assert r.returncode == 0 and r.stdout.startswith("nginx")
        syn = next(p for p in cap.result if p.haslayer(TCP) and p[TCP].flags == "S")
        assert syn[IP].src == "192.168.56.133" and syn[IP].dst == "192.168.56.134" and syn[UDP].dport == 8472
        assert syn[VXLAN].vni == 1
        assert syn[Ether].src == link(lab, "master", "ens33")["address"]
        assert syn[Ether].dst == link(lab, "node1", "ens33")["address"]
        inner = syn[VXLAN].payload
        assert inner[Ether].src == link(lab, "master", "flannel.1")["address"]
        assert inner[Ether].dst == link(lab, "node1", "flannel.1")["address"]
        assert dict(o for o in inner[TCP].options if o[0] == "MSS")["MSS"] == 1410   # 1450 - 40
    finally:
        down_and_check(lab)


def test_note_000_host_gw_has_no_encapsulation(nslab_lab):
    from scapy.layers.inet import ICMP, IP, UDP
    lab = nslab_lab(os.path.join(TOPO, "flannel-vxlan.yaml"), backend="host-gw")
    try:
        routes = lines(lab, "master", "ip", "route")
        assert "10.244.1.0/24 via 192.168.56.134 dev ens33" in routes
        assert lab.exec("master", "ip", "link", "show", "flannel.1").returncode != 0
        assert link(lab, "master", "cni0")["mtu"] == 1500
        with lab.capture("master", "ens33", "icmp or udp") as cap:
            assert lab.ping("client", "nginx").ok
        assert not [p for p in cap.result if p.haslayer(UDP)]
        assert any(p.haslayer(ICMP) and p[IP].dst == "10.244.1.6" for p in cap.result)
        assert lab.ping("client", "nginx", size=1472, dont_fragment=True).ok
        r = lab.ping("client", "nginx", size=1473, dont_fragment=True)
        assert not r.ok and "message too long" in r.output
    finally:
        down_and_check(lab)


# ---- note 002: the outer/inner header table --------------------------------------------
def test_note_002_header_table(nslab_lab):
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether
    from scapy.layers.vxlan import VXLAN
    lab = nslab_lab(os.path.join(TOPO, "vxlan-3node.yaml"))
    try:
        vtep2 = link(lab, "node2", "flannel.1")["address"]
        assert set(lines(lab, "node1", "ip", "neigh", "show", "dev", "flannel.1")) == {
            f"10.244.0.0 lladdr {link(lab, 'master', 'flannel.1')['address']} PERMANENT",
            f"10.244.2.0 lladdr {vtep2} PERMANENT"}
        assert f"{vtep2} dst 192.168.0.13 self permanent" in lines(lab, "node1", "bridge", "fdb", "show",
                                                                    "dev", "flannel.1")
        with lab.capture("node1", "eth0", "host 192.168.0.12 and host 192.168.0.13") as cap:
            assert lab.http_get("client", "web").returncode == 0
        pkt = next(p for p in cap.result if p.haslayer(VXLAN) and p[IP].src == "192.168.0.12")
        inner = pkt[VXLAN].payload
        table = {"outer": (pkt[IP].src, pkt[Ether].src, pkt[IP].dst, pkt[Ether].dst),
                 "inner": (inner[IP].src, inner[Ether].src, inner[IP].dst, inner[Ether].dst)}
        assert table == {
            "outer": ("192.168.0.12", link(lab, "node1", "eth0")["address"],
                      "192.168.0.13", link(lab, "node2", "eth0")["address"]),
            "inner": ("10.244.1.178", link(lab, "node1", "flannel.1")["address"], "10.244.2.101", vtep2)}
        assert inner.haslayer(TCP)
    finally:
        down_and_check(lab)
