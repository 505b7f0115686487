"""`nslab show` on real labs: structure, rendering, and line-for-line agreement with
iproute2 (`ip route`, `ip neigh`, `bridge fdb show`) inside every node."""
from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.root


def show_json(lab, *args) -> dict:
    proc = lab.nslab("show", "-l", lab.name, "--json", *args)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def iface(data, node, name) -> dict:
    return next(i for i in data["nodes"][node]["interfaces"] if i["name"] == name)


def iproute_lines(lab, node, *cmd) -> list[str]:
    out = lab.exec(node, *cmd, check=True).stdout
    return [l.rstrip() for l in out.replace(" \n\t", "\n\t").splitlines() if l.strip()]


def without_state(line: str) -> str:
    return line.rsplit(" ", 1)[0]


def show_lines(entries) -> list[str]:
    return [l.rstrip() for e in entries for l in e["text"].splitlines()]


def test_show_bridge_lab(lab_factory):
    lab = lab_factory("diy-bridge.yaml")
    assert lab.exec("ns1", "ping", "-c1", "-W2", "10.1.1.3").returncode == 0
    data = show_json(lab)
    assert data["lab"] == lab.name and set(data["nodes"]) == {"ns1", "ns2", "br0"}
    br = iface(data, "br0", "br0")
    assert br["kind"] == "bridge" and br["mtu"] == 1500
    for port, peer in (("br-veth0", "ns1:veth0"), ("br-veth1", "ns2:veth1")):
        p = iface(data, "br0", port)
        assert p["kind"] == "veth" and p["master"] == "br0" and p["peer"] == peer
    v0 = iface(data, "ns1", "veth0")
    assert v0["peer"] == "br0:br-veth0"
    assert [a["text"] for a in v0["addresses"]] == ["inet 10.1.1.2/24 brd 10.1.1.255 scope global"]
    fdb = [e["text"] for e in data["nodes"]["br0"]["fdb"]]
    assert f"{v0['mac']} dev br-veth0 master br0" in fdb
    assert f"{iface(data, 'ns2', 'veth1')['mac']} dev br-veth1 master br0" in fdb

    text = lab.nslab("show", "-l", lab.name)
    assert text.returncode == 0, text.stderr
    for needle in ("br0", "bridge", "br-veth0", "master br0", "peer ns1:veth0", "10.1.1.2/24"):
        assert needle in text.stdout, needle


def test_show_ip_forward_router(lab_factory):
    lab = lab_factory("diy-ip-forward.yaml")
    data = show_json(lab, "router")
    assert list(data["nodes"]) == ["router"]
    routes = [r["text"] for r in data["nodes"]["router"]["routes"] if r["family"] == 4]
    assert routes == ["10.1.1.0/24 dev v1_r proto kernel scope link src 10.1.1.1",
                      "10.1.2.0/24 dev v2_r proto kernel scope link src 10.1.2.1"]
    assert iface(data, "router", "v1_r")["peer"] == "ns1:v1"
    ns1 = show_json(lab, "ns1")["nodes"]["ns1"]
    assert "10.1.2.0/24 via 10.1.1.1 dev v1" in [r["text"] for r in ns1["routes"]]


@pytest.mark.parametrize("topology", ["diy-veth.yaml", "diy-bridge.yaml", "diy-ip-forward.yaml"])
def test_show_matches_iproute2(lab_factory, topology):
    lab = lab_factory(topology)
    nodes = list(lab.state["nodes"])
    for node in nodes:          # some neighbours and learned MACs to compare
        lab.exec(node, "sh", "-c", "ping -c1 -W1 10.1.1.3; ping -c1 -W1 10.1.2.2; true")
    # the kernel may drop a FAILED neighbour (the pings to absent addresses) between two
    # reads: show's entries must be those ip neigh printed both before and after it, and
    # nothing that neither printed (NUD states may move on in between, so they are left out)
    neigh_before = {node: set(map(without_state, iproute_lines(lab, node, "ip", "neigh"))) for node in nodes}
    data = show_json(lab)
    for node in nodes:
        entry = data["nodes"][node]
        main = [l for l in iproute_lines(lab, node, "ip", "-4", "route") if l]
        assert show_lines([r for r in entry["routes"] if r["family"] == 4 and r["table"] == "main"]) == main
        shown = list(map(without_state, show_lines(entry["neighbours"])))
        before, after = neigh_before[node], set(map(without_state, iproute_lines(lab, node, "ip", "neigh")))
        assert len(shown) == len(set(shown)) and before & after <= set(shown) <= before | after, \
            (node, sorted(shown), sorted(before), sorted(after))
        fdb = iproute_lines(lab, node, "bridge", "fdb", "show")
        assert sorted(show_lines(entry["fdb"])) == sorted(fdb)


def test_show_vxlan_and_multipath_details(lab_factory):
    """Objects the cluster labs create (vxlan device, onlink route, permanent ARP and FDB
    entries, ECMP), added by hand inside this test's own lab namespace."""
    lab = lab_factory("diy-ip-forward.yaml")
    ns = lab.ns("ns1")
    cmds = [
        "ip link add flannel.1 type vxlan id 1 local 10.1.1.2 dev v1 dstport 8472 nolearning",
        "ip link set flannel.1 up",
        "ip addr add 10.244.0.0/32 dev flannel.1",
        "ip route add 10.244.1.0/24 via 10.244.1.0 dev flannel.1 onlink",
        "ip neigh add 10.244.1.0 lladdr aa:bb:cc:dd:ee:01 dev flannel.1 nud permanent",
        "bridge fdb append aa:bb:cc:dd:ee:01 dev flannel.1 dst 10.1.1.1 self permanent",
        "ip route add 10.9.0.0/16 nexthop via 10.1.1.1 dev v1 weight 1 nexthop via 10.1.1.1 dev v1 weight 2",
    ]
    for c in cmds:
        lab.exec("ns1", *c.split(), check=True)
    entry = show_json(lab, "ns1")["nodes"]["ns1"]
    vx = iface({"nodes": {"ns1": entry}}, "ns1", "flannel.1")
    assert vx["kind"] == "vxlan"
    assert vx["details"] == "vxlan id 1 local 10.1.1.2 dev v1 dstport 8472 nolearning"
    assert vx["info"]["id"] == 1 and vx["info"]["dstport"] == 8472 and vx["info"]["learning"] is False
    assert [a["text"] for a in vx["addresses"]] == ["inet 10.244.0.0/32 scope global"]
    routes = [r["text"] for r in entry["routes"]]
    assert "10.244.1.0/24 via 10.244.1.0 dev flannel.1 onlink" in routes
    assert "10.9.0.0/16\n\tnexthop via 10.1.1.1 dev v1 weight 1\n\tnexthop via 10.1.1.1 dev v1 weight 2" in routes
    assert "10.244.1.0 dev flannel.1 lladdr aa:bb:cc:dd:ee:01 PERMANENT" in [n["text"] for n in entry["neighbours"]]
    assert "aa:bb:cc:dd:ee:01 dev flannel.1 dst 10.1.1.1 self permanent" in [f["text"] for f in entry["fdb"]]
    assert show_lines(entry["routes"]) == [l for l in iproute_lines(lab, "ns1", "ip", "route") if l]


def test_show_unknown_node_is_one_line(lab_factory):
    lab = lab_factory("diy-veth.yaml")
    proc = lab.nslab("show", "-l", lab.name, "nosuchnode")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "nosuchnode" in proc.stderr
