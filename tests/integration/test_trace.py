"""`nslab trace` on real labs: the path a real probe took, hop by hop, with the kernel's own
table entries (compared with iproute2 inside the lab), the reply path, and drops."""
from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.root

def trace(lab, *args, rc=0) -> dict:
    proc = lab.nslab("trace", "-l", lab.name, "--json", *args)
    assert proc.returncode == rc, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


def hops(result, direction) -> list[tuple[str, str]]:
    return [(h["node"], h["iface"]) for h in result[direction]["hops"]]


def step(result, direction, node, iface) -> dict:
    return next(h for h in result[direction]["hops"] if (h["node"], h["iface"]) == (node, iface))


def decisions(h, kind) -> list[str]:
    return [d["text"] for d in h["decisions"] if d["kind"] == kind]


def link(lab, node, name) -> dict:
    return json.loads(lab.exec(node, "ip", "-j", "link", "show", name, check=True).stdout)[0]


def host_veth(lab, node, pod) -> str:
    """The cni0 port of `pod` on `node`, read from the kernel (the veth whose peer is the pod's eth0)."""
    links = json.loads(lab.exec(node, "ip", "-j", "link", "show", "master", "cni0", check=True).stdout)
    pod_eth0 = link(lab, pod, "eth0")
    return next(l["ifname"] for l in links if l.get("link_index") == pod_eth0["ifindex"])


@pytest.fixture
def spine_leaf(lab_factory):
    return lab_factory("spine-leaf.yaml")


def test_trace_vxlan_across_racks(spine_leaf):
    lab = spine_leaf
    r = trace(lab, "client", "web-worker3")
    v1, v3 = host_veth(lab, "worker1", "client"), host_veth(lab, "worker3", "web-worker3")
    path = [("client", "eth0"), ("worker1", v1), ("worker1", "cni0"), ("worker1", "flannel.4000"),
            ("worker1", "enp0s3"), ("rack1", "worker1"), ("rack1", "leaf01"), ("leaf01", "eth0"),
            ("leaf01", "eth1"), ("spine", "eth0"), ("spine", "eth1"), ("leaf02", "eth1"), ("leaf02", "eth0"),
            ("rack2", "leaf02"), ("rack2", "worker3"), ("worker3", "enp0s3"), ("worker3", "flannel.4000"),
            ("worker3", "cni0"), ("worker3", v3), ("web-worker3", "eth0")]
    assert hops(r, "request") == path
    assert [h["dir"] for h in r["request"]["hops"]][:5] == ["out", "in", "in", "out", "out"]
    assert r["request"]["delivered"] and r["request"]["drop"] is None
    # the reply comes back the same way (one spine, symmetric routes)
    assert hops(r, "reply") == path[::-1]
    assert r["reply"]["delivered"] and not r["reply"]["icmp_error"]
    assert r["reply"]["kind"].startswith("icmp echo reply")

    # note 002's "how each field is found", at worker1, from worker1's own kernel
    w3_vtep = link(lab, "worker3", "flannel.4000")["address"]
    w1_vtep = link(lab, "worker1", "flannel.4000")["address"]
    fl = step(r, "request", "worker1", "flannel.4000")
    assert decisions(fl, "route") == ["10.244.3.0/24 via 10.244.3.0 dev flannel.4000 onlink"]
    assert decisions(fl, "neigh") == [f"10.244.3.0 dev flannel.4000 lladdr {w3_vtep} PERMANENT"]
    assert decisions(fl, "fdb") == [f"{w3_vtep} dev flannel.4000 dst 30.0.0.23 self permanent"]
    # the same lines iproute2 prints inside the node
    assert lab.exec("worker1", "ip", "route", "get", "fibmatch", "10.244.3.2",
                    check=True).stdout.split() == decisions(fl, "route")[0].split()
    assert decisions(fl, "fdb")[0] in lab.exec("worker1", "bridge", "fdb", "show", check=True).stdout.splitlines()
    assert fl["outer"] is None and f"eth {w1_vtep} > {w3_vtep}" in fl["inner"]

    wire = step(r, "request", "worker1", "enp0s3")
    leaf01_mac = link(lab, "leaf01", "eth0")["address"]
    enp = link(lab, "worker1", "enp0s3")["address"]
    assert wire["outer"].startswith(f"eth {enp} > {leaf01_mac} | ip 10.0.0.21 > 30.0.0.23 ttl 64 | udp ")
    assert wire["outer"].endswith(" > 4789 | vxlan vni 4000")
    assert wire["inner"].startswith(f"eth {w1_vtep} > {w3_vtep} | ip 10.244.1.2 > 10.244.3.2 ttl 63 | icmp echo request")
    assert decisions(wire, "route") == ["default via 10.0.0.254 dev enp0s3"]
    assert decisions(wire, "neigh")[0].startswith(f"10.0.0.254 dev enp0s3 lladdr {leaf01_mac} ")
    # the bridges: rack1 sends the frame to leaf01's port, worker1's cni0 takes it up to be routed
    assert decisions(step(r, "request", "rack1", "worker1"), "bridge")[0].startswith(f"{leaf01_mac} dev leaf01 master br0")
    assert decisions(step(r, "request", "worker1", v1), "bridge")[0].startswith(
        f"{link(lab, 'worker1', 'cni0')['address']} dev cni0 master cni0 permanent")
    # decapsulated at worker3, delivered to the pod
    assert "vxlan device flannel.4000" in step(r, "request", "worker3", "enp0s3")["note"]
    assert step(r, "request", "web-worker3", "eth0")["note"] == "delivered"

    times = [h["t_ms"] for h in r["request"]["hops"] + r["reply"]["hops"]]
    # hop times are offsets from the probe, in order of the path's clock; how long a trace
    # takes is bench's business (a shared machine runs 2-5x slower), not a test's
    assert all(t >= 0 for t in times) and r["elapsed_ms"] > 0, (times, r["elapsed_ms"])

    text = lab.nslab("trace", "-l", lab.name, "client", "web-worker3")
    assert text.returncode == 0, text.stderr
    assert f"client(eth0) -> worker1({v1} cni0 flannel.4000 enp0s3) -> rack1(worker1 leaf01)" in text.stdout
    for needle in ("10.244.3.0/24 via 10.244.3.0 dev flannel.4000 onlink", "dst 30.0.0.23 self permanent",
                   "vxlan vni 4000", "delivered to web-worker3", "delivered to client"):
        assert needle in text.stdout, needle


def test_trace_direct_routing_same_rack_and_tcp(spine_leaf):
    lab = spine_leaf
    r = trace(lab, "client", "web-worker2")
    nodes = [n for n, _ in hops(r, "request")]
    assert list(dict.fromkeys(nodes)) == ["client", "worker1", "rack1", "worker2", "web-worker2"]
    assert all(h["outer"] is None for h in r["request"]["hops"] + r["reply"]["hops"])     # no encapsulation
    assert ("worker1", "flannel.4000") not in hops(r, "request")
    wire = step(r, "request", "worker1", "enp0s3")
    assert decisions(wire, "route") == ["10.244.2.0/24 via 10.0.0.22 dev enp0s3"]
    assert decisions(wire, "neigh")[0].startswith(f"10.0.0.22 dev enp0s3 lladdr {link(lab, 'worker2', 'enp0s3')['address']}")
    assert r["reply"]["delivered"]

    tcp = trace(lab, "client", "web-worker3", "--proto", "tcp", "--port", "80")
    assert tcp["request"]["kind"].endswith("> 80 [S]") and tcp["reply"]["kind"].startswith("tcp 80 > ")
    assert "[SA]" in tcp["reply"]["kind"] and tcp["request"]["delivered"] and tcp["reply"]["delivered"]
    assert ("worker3", "flannel.4000") in hops(tcp, "request")


def test_trace_ip_forward_router_ttl_and_no_neighbour(lab_factory):
    lab = lab_factory("diy-ip-forward.yaml")
    r = trace(lab, "ns1", "ns2")
    assert hops(r, "request") == [("ns1", "v1"), ("router", "v1_r"), ("router", "v2_r"), ("ns2", "v2")]
    assert hops(r, "reply") == [("ns2", "v2"), ("router", "v2_r"), ("router", "v1_r"), ("ns1", "v1")]
    first, out = r["request"]["hops"][0], step(r, "request", "router", "v2_r")
    assert decisions(first, "route") == ["10.1.2.0/24 via 10.1.1.1 dev v1"]
    assert decisions(out, "route") == ["10.1.2.0/24 dev v2_r proto kernel scope link src 10.1.2.1"]
    assert " ttl 64 " in first["inner"] and " ttl 63 " in out["inner"]      # one router on the way

    ttl = trace(lab, "ns1", "ns2", "--ttl", "1", rc=1)
    assert hops(ttl, "request") == [("ns1", "v1"), ("router", "v1_r")]
    drop = ttl["request"]["drop"]
    assert (drop["node"], drop["iface"], drop["reason"]) == ("router", "v1_r", "TTL")
    assert ttl["reply"]["icmp_error"] and ttl["reply"]["kind"].startswith("icmp time exceeded")
    assert hops(ttl, "reply") == [("router", "v1_r"), ("ns1", "v1")]

    nn = trace(lab, "ns1", "10.1.2.9", rc=1)                # on the router's subnet, but nobody has it
    drop = nn["request"]["drop"]
    assert (drop["node"], drop["reason"]) == ("router", "no neighbour")
    assert "10.1.2.9 dev v2_r" in drop["detail"] and ("INCOMPLETE" in drop["detail"] or "FAILED" in drop["detail"])


def test_trace_names_the_router_without_a_route(spine_leaf):
    lab = spine_leaf
    lab.exec("spine", "ip", "route", "del", "30.0.0.0/24", check=True)     # inside the lab's spine only
    r = trace(lab, "client", "web-worker3", rc=1)
    assert hops(r, "request")[-1] == ("spine", "eth0")
    drop = r["request"]["drop"]
    assert (drop["node"], drop["iface"], drop["reason"]) == ("spine", "eth0", "no route")
    assert "30.0.0.23" in drop["detail"]
    # the spine's ICMP error quotes only the outer VXLAN headers; it is still recognised
    assert r["reply"]["icmp_error"] and "net unreachable" in r["reply"]["kind"]
    assert hops(r, "reply")[0] == ("spine", "eth0") and hops(r, "reply")[-1] == ("worker1", "enp0s3")

    text = lab.nslab("trace", "-l", lab.name, "client", "web-worker3")
    assert text.returncode == 1
    assert "dropped at spine eth0 (no route)" in text.stdout


def test_trace_bad_input(spine_leaf):
    lab = spine_leaf
    for args, needle in ((["client", "nosuch"], "has no node 'nosuch'"),
                         (["client", "web-worker3", "--proto", "sctp"], "--proto must be one of"),
                         (["client", "web-worker3", "--port", "80"], "--port applies to"),
                         (["client", "web-worker3", "--ttl", "0"], "--ttl must be")):
        proc = lab.nslab("trace", "-l", lab.name, *args)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert needle in proc.stderr and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
