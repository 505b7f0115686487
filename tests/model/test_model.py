"""Model behaviour: how a topology file becomes a resolved lab (no root, no kernel)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from itertools import islice
from pathlib import Path

import pytest

from nslab import model
from nslab.errors import TopologyError, UsageError

GOLDEN = Path(__file__).parent.parent / "golden"


def load(text: str, file: str = "lab.yaml", **kw) -> model.Topology:
    return model.load(file, text=textwrap.dedent(text), **kw)


def addr(topo, node, iface) -> str:
    return str(topo.nodes[node].iface(iface).ip)


def routes(topo, node) -> dict[str, list[tuple[str, str]]]:
    return {str(r.dst): [(str(h.via), h.dev) for h in r.nexthops] for r in topo.nodes[node].routes}


# ---- address allocation ------------------------------------------------------------------

def test_segment_members_get_next_free_address_in_member_order():
    topo = load("""
        hosts: [a, b, c, d]
        segments:
          lan:
            subnet: 10.0.0.0/24
            members:
              a: {}
              b: {ip: 10.0.0.1}
              c: {}
              d: {ip: 10.0.0.3}
    """)
    # .1 and .3 are taken by hand, wherever they are listed; the others fill the gaps in order
    assert [addr(topo, n, "eth0") for n in "abcd"] == ["10.0.0.2/24", "10.0.0.1/24", "10.0.0.4/24", "10.0.0.3/24"]


def test_link_subnets_come_from_the_pool_in_link_order():
    topo = load("""
        hosts: [a, b, c]
        links: [[a, b], [b, c], [c, a]]
    """)
    # each link a /30 from 172.31.0.0/16; the first-written end gets the first host address
    assert addr(topo, "a", "eth0") == "172.31.0.1/30" and addr(topo, "b", "eth0") == "172.31.0.2/30"
    assert addr(topo, "b", "eth1") == "172.31.0.5/30" and addr(topo, "c", "eth0") == "172.31.0.6/30"
    assert addr(topo, "c", "eth1") == "172.31.0.9/30" and addr(topo, "a", "eth1") == "172.31.0.10/30"


def test_link_pool_skips_subnets_used_by_hand():
    topo = load("""
        pools: {links: 10.9.0.0/24}
        hosts: [a, b, c]
        segments:
          lan: {subnet: 10.9.0.0/29, members: [a]}
        links:
          - [{node: b, ip: 10.9.0.9/30}, {node: c, ip: 10.9.0.10/30}]
          - [b, c]
    """)
    assert addr(topo, "b", "eth1") == "10.9.0.13/30"      # not .0/29 (lan) nor .8/30 (the first link)


def test_link_subnet_key_addresses_both_ends():
    topo = load("""
        hosts: [a, b]
        links:
          - {ends: [a, b], subnet: 192.0.2.8/29}
    """)
    assert (addr(topo, "a", "eth0"), addr(topo, "b", "eth0")) == ("192.0.2.9/29", "192.0.2.10/29")


def test_interface_names_follow_declaration_order_and_given_names():
    topo = load("""
        hosts: [a, b, c]
        links:
          - [a, b]
          - ["a:uplink", c]
          - [a, "c:toa"]
    """)
    assert [i.name for i in topo.nodes["a"].ifaces] == ["eth0", "uplink", "eth1"]
    assert [i.name for i in topo.nodes["c"].ifaces] == ["eth0", "toa"]
    peer = topo.nodes["a"].iface("uplink")
    assert (peer.peer_node, peer.peer_name) == ("c", "eth0")


# ---- gateways and default routes -----------------------------------------------------------

def test_segment_gateway_defaults_to_254_on_a_24():
    topo = load("""
        hosts: [h1]
        routers: [leaf01]
        segments:
          rack1: {subnet: 10.0.0.0/24, gateway: leaf01, members: [h1]}
    """)
    seg = topo.segments["rack1"]
    assert seg.gateway == "leaf01" and seg.gateway_ip == IPv4Address("10.0.0.254")
    assert topo.nodes["leaf01"].addresses == [IPv4Interface("10.0.0.254/24")]
    assert addr(topo, "h1", "eth0") == "10.0.0.1/24"
    assert routes(topo, "h1") == {"0.0.0.0/0": [("10.0.0.254", "eth0")]}


def test_segment_gateway_is_last_host_address_on_other_prefixes_and_gateway_ip_overrides():
    topo = load("""
        hosts: [h1, h2]
        routers: [r1, r2]
        segments:
          small: {subnet: 10.1.0.0/28, gateway: r1, members: [h1]}
          other: {subnet: 10.2.0.0/24, gateway: r2, gateway_ip: 10.2.0.1, members: [h2]}
    """)
    assert topo.segments["small"].gateway_ip == IPv4Address("10.1.0.14")
    assert topo.segments["other"].gateway_ip == IPv4Address("10.2.0.1")
    assert addr(topo, "h2", "eth0") == "10.2.0.2/24"       # the gateway's address is not handed out again
    assert routes(topo, "h2") == {"0.0.0.0/0": [("10.2.0.1", "eth0")]}


def test_host_behind_a_router_link_gets_a_default_route_unless_it_has_static_routes():
    topo = load("""
        hosts:
          a: {}
          b:
            routes: [{to: 10.9.0.0/16, via: 172.31.0.5}]
        routers: [r]
        links: [[a, r], [b, r]]
    """)
    assert routes(topo, "a") == {"0.0.0.0/0": [("172.31.0.2", "eth0")]}
    assert routes(topo, "b") == {"10.9.0.0/16": [("172.31.0.5", "eth0")]}


def test_routers_get_ip_forward_and_hosts_do_not():
    topo = load("""
        hosts: [h]
        routers: [r, r0: {sysctls: {net.ipv4.ip_forward: 0}}]
        links: [[h, r], [r, r0]]
    """)
    assert topo.nodes["r"].sysctls == {"net.ipv4.ip_forward": "1"}
    assert topo.nodes["r0"].sysctls == {"net.ipv4.ip_forward": "0"}
    assert "net.ipv4.ip_forward" not in topo.nodes["h"].sysctls


# ---- computed routes -----------------------------------------------------------------------

def test_router_routes_shortest_path_with_ecmp():
    topo = model.load(str(GOLDEN / "routers-ecmp.yaml"))
    r1 = routes(topo, "r1")
    # two equal paths to r4's rack: one multipath route, nexthops in adjacency order
    assert r1["10.0.4.0/24"] == [("172.31.0.2", "eth1"), ("172.31.0.6", "eth2")]
    # a transit subnet reached through only one neighbour: a single nexthop
    assert r1["172.31.0.8/30"] == [("172.31.0.2", "eth1")]
    # no routes to connected subnets
    assert "10.0.1.0/24" not in r1 and "172.31.0.0/30" not in r1
    assert all(r.origin == "computed" for r in topo.nodes["r1"].routes)
    # routers that are neighbours through a segment (a bridge) learn from each other
    assert routes(topo, "r5")["10.0.1.0/24"] == [("10.0.99.1", "eth0")]
    assert routes(topo, "r4")["172.31.0.16/30"] == [("10.0.99.2", "eth1")]
    # every router reaches every subnet
    subnets = {str(i.ip.network) for n in topo.nodes.values() for i in n.ifaces if i.ip}
    for name, node in topo.nodes.items():
        if node.kind == "router":
            connected = {str(i.ip.network) for i in node.ifaces if i.ip}
            assert set(routes(topo, name)) == subnets - connected, name


def test_ecmp_in_spine_leaf_with_two_spines():
    topo = load("""
        routers: [spine1, spine2, leaf01, leaf02]
        segments:
          rack1: {subnet: 10.0.0.0/24, gateway: leaf01}
          rack2: {subnet: 30.0.0.0/24, gateway: leaf02}
        links: [[leaf01, spine1], [leaf01, spine2], [leaf02, spine1], [leaf02, spine2]]
    """)
    hops = routes(topo, "leaf01")["30.0.0.0/24"]
    assert len(hops) == 2 and {dev for _, dev in hops} == {"eth1", "eth2"}
    assert len(routes(topo, "spine1")["30.0.0.0/24"]) == 1


def test_declared_router_route_wins_over_computed():
    topo = model.load(str(GOLDEN / "static-routes.yaml"))
    r1 = {str(r.dst): r for r in topo.nodes["r1"].routes}
    assert r1["10.2.0.0/24"].origin == "static"
    assert [(h.via, h.dev) for h in r1["10.2.0.0/24"].nexthops] == [(None, "eth1")]
    assert sum(1 for r in topo.nodes["r1"].routes if str(r.dst) == "10.2.0.0/24") == 1


def test_static_route_fills_in_dev_from_the_gateway():
    topo = load("""
        hosts:
          a: {routes: [{to: default, via: 10.1.0.1}]}
          b: {}
        links: [[{node: a, ip: 10.1.0.2/24}, {node: b, ip: 10.1.0.1/24}]]
    """)
    assert routes(topo, "a") == {"0.0.0.0/0": [("10.1.0.1", "eth0")]}


# ---- MACs and names ------------------------------------------------------------------------

def _macs(topo) -> dict[str, str]:
    return {f"{n.name}/{i.name}": i.mac for n in topo.nodes.values() for i in n.ifaces}


def test_macs_are_locally_administered_unicast_and_unique():
    topo = model.load(str(GOLDEN / "routers-ecmp.yaml"))
    macs = _macs(topo)
    for mac in macs.values():
        first = int(mac.split(":")[0], 16)
        assert first & 0x02 and not first & 0x01, mac
    assert len(set(macs.values())) == len(macs)


def test_macs_are_stable_across_runs():
    """Same lab, same MACs: in another interpreter with another hash seed, too."""
    path = str(GOLDEN / "routers-ecmp.yaml")
    here = _macs(model.load(path))
    code = ("import json, sys; from nslab import model; t = model.load(sys.argv[1]); "
            "print(json.dumps({f'{n.name}/{i.name}': i.mac for n in t.nodes.values() for i in n.ifaces}))")
    for seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONHASHSEED": seed}).stdout
        assert json.loads(out) == here
    assert model.stable_mac("lab", "ns1", "eth0") == model.stable_mac("lab", "ns1", "eth0")


def test_macs_differ_between_labs_and_given_macs_are_kept():
    a = load("hosts: [x, y]\nlinks: [[x, y]]\n", file="one.yaml")
    b = load("hosts: [x, y]\nlinks: [[x, y]]\n", file="two.yaml")
    assert not set(_macs(a).values()) & set(_macs(b).values())
    c = load("hosts: [x, y]\nlinks: [[{node: x, mac: '02:AA:00:00:00:01'}, y]]\n")
    assert c.nodes["x"].iface("eth0").mac == "02:aa:00:00:00:01"


def test_short_ifname():
    assert model.short_ifname("eth0") == "eth0"
    assert model.short_ifname("a" * 15) == "a" * 15
    long = model.short_ifname("rack1", "a-rather-long-node-name")
    assert len(long) <= 15 and long == model.short_ifname("rack1", "a-rather-long-node-name")
    others = {model.short_ifname("averyverylongname" + str(i)) for i in range(50)}
    assert len(others) == 50 and all(len(n) <= 15 for n in others)
    assert all(model.ifname_problem(n) is None for n in others)


def test_switch_ports_for_long_node_names_fit_ifnamsiz():
    names = [f"worker-node-number-{i:02d}" for i in range(12)]
    topo = load(f"""
        hosts: [{', '.join(names)}]
        segments:
          lan: {{subnet: 10.0.0.0/24, members: [{', '.join(names)}]}}
    """)
    ports = [i.name for i in topo.nodes["lan"].ifaces]
    assert len(ports) == len(set(ports)) == 12
    assert all(len(p) <= 15 and model.ifname_problem(p) is None for p in ports)
    for node in topo.nodes.values():
        for iface in node.ifaces:
            assert len(iface.name) < model.IFNAMSIZ


def test_every_interface_name_in_shipped_labs_fits():
    for path in sorted((Path(__file__).parent.parent.parent / "topologies").glob("*.yaml")):
        topo = model.load(str(path))
        for node in topo.nodes.values():
            names = [i.name for i in node.ifaces] + [b.name for b in getattr(node, "bridges", [])]
            assert len(names) == len(set(names)), (path.name, node.name, names)
            for name in names:
                assert model.ifname_problem(name) is None, (path.name, node.name, name)


# ---- lab names -----------------------------------------------------------------------------

@pytest.mark.parametrize("file,lab", [
    ("topologies/spine-leaf.yaml", "spine-leaf"),
    ("/tmp/My Lab.v2.yaml", "my-lab-v2"),
    ("__weird__.yml", "weird"),
    ("___.yaml", "lab"),
    ("x" * 50 + ".yaml", "x" * model.MAX_LAB_NAME),
])
def test_lab_name_from_file(file, lab):
    assert model.lab_name_from_file(file) == lab
    assert model.LAB_NAME_RE.fullmatch(lab)


def test_lab_name_comes_from_the_file_name_when_not_given():
    topo = load("hosts: [a]\n", file="/some/dir/Rack-Test.yaml")
    assert topo.name == "rack-test"
    assert topo.nodes["a"].ns == "rack-test.a"


def test_name_key_wins_over_the_file_name_and_override_wins_over_both():
    text = "name: from-key\nhosts: [a]\n"
    assert load(text, file="from-file.yaml").name == "from-key"
    topo = load(text, file="from-file.yaml", name="from-cli")
    assert topo.name == "from-cli"
    assert {n.ns for n in topo.nodes.values()} == {"from-cli.a"}


@pytest.mark.parametrize("bad", ["Upper", "has space", "dot.ted", "-leading", "", "x" * (model.MAX_LAB_NAME + 1)])
def test_name_override_is_validated(bad):
    with pytest.raises(TopologyError) as info:
        load("hosts: [a]\n", file="ok.yaml", name=bad)
    err = info.value
    assert err.exit_code == 2
    assert str(err) == (f"ok.yaml --name: lab name {bad!r} must be lowercase letters, digits, '-' or '_' "
                        f"(at most {model.MAX_LAB_NAME} characters)")


def test_name_override_makes_two_labs_side_by_side():
    path = str(GOLDEN / "bridge-auto.yaml")
    one, two = model.load(path, name="one"), model.load(path, name="two")
    assert not {n.ns for n in one.nodes.values()} & {n.ns for n in two.nodes.values()}
    # same addresses, different MACs (two labs' captures are told apart by MAC)
    assert [i.ip for n in one.nodes.values() for i in n.ifaces] == [i.ip for n in two.nodes.values() for i in n.ifaces]
    assert not set(_macs(one).values()) & set(_macs(two).values())


# ---- MTU -----------------------------------------------------------------------------------

def test_mtu_precedence():
    topo = model.load(str(GOLDEN / "mtu.yaml"))
    mtu = {f"{n.name}/{i.name}": i.mtu for n in topo.nodes.values() for i in n.ifaces}
    assert mtu["a/eth0"] == mtu["b/eth1"] == 1400          # node a's 1400 wins over b's lab 9000
    assert mtu["b/eth2"] == mtu["c/eth1"] == 8000          # the link's mtu
    assert (mtu["a/eth1"], mtu["c/eth2"]) == (1280, 1400)  # one end's own mtu; the other end keeps min(nodes)
    assert mtu["b/eth0"] == 1500 and mtu["c/eth0"] == 1450  # segment mtu, a member's own mtu
    assert mtu["d/eth0"] == mtu["b/eth3"] == 9000          # the lab's mtu
    assert topo.segments["lan"].mtu == 1500 and topo.segments["lan2"].mtu == 9000


def test_validation_happens_before_anything_is_returned():
    """An error late in the file still fails the whole load (nothing half-built escapes)."""
    with pytest.raises(TopologyError):
        load("""
            hosts: [a, b]
            links:
              - [a, b]
              - [a, nosuch]
        """)


def test_node_mtu_applies_to_its_segment_interface():
    topo = load("""
        hosts: {a: {mtu: 1400}, b: {}}
        segments:
          s: {subnet: 10.9.0.0/24, members: [a, b]}
    """)
    assert topo.nodes["a"].iface("eth0").mtu == 1400     # the node said so
    assert topo.nodes["b"].iface("eth0").mtu == 1500     # the segment's (lab default)


# ---- hostile and unusual input (issue 9) ----------------------------------------------------

def test_merge_key_fills_in_what_the_mapping_does_not_say():
    topo = load("""
        hosts:
          h1: &small {mtu: 1400, sysctls: {net.ipv4.conf.all.rp_filter: 0}}
          h2:
            <<: *small
            mtu: 1300
          h3: {<<: [*small]}
        segments:
          lan: {subnet: 10.0.0.0/24, members: [h1, h2, h3]}
    """)
    assert [topo.nodes[h].mtu for h in ("h1", "h2", "h3")] == [1400, 1300, 1400]   # explicit wins
    assert topo.nodes["h3"].sysctls["net.ipv4.conf.all.rp_filter"] == "0"
    assert topo.doc.line(("hosts", "h3", "mtu")) == 3       # a merged key points at its definition


def test_dates_and_base60_numbers_stay_text():
    topo = load("""
        name: 2024-01-02
        hosts: [h1, h2]
        links:
          - ends: [{node: h1, mac: 12:34:56:12:34:56}, h2]
    """)
    assert topo.name == "2024-01-02"
    assert topo.nodes["h1"].ifaces[0].mac == "12:34:56:12:34:56"   # YAML 1.1 would read 1:30 as 90


def test_quoted_keys_that_look_like_other_types_are_names():
    topo = load("""
        hosts: {"1": {}, "no": {}}
        segments:
          lan: {subnet: 10.0.0.0/24, members: ["1", "no"]}
    """)
    assert set(topo.nodes) == {"1", "no", "lan"}


def test_aliases_within_the_limit_are_expanded():
    topo = load("""
        hosts: &hs [h1, h2, h3]
        segments:
          lan: {subnet: 10.0.0.0/24, members: *hs}
    """)
    assert len(topo.segments) == 1 and len(topo.nodes["lan"].ifaces) == 3


@pytest.mark.parametrize("text", [
    "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi")),
    "hosts: " + "[" * 100_000 + "]" * 100_000,
    "hosts:\n" + "".join("  " * (i + 1) + "k:\n" for i in range(2000)),
], ids=["alias-bomb", "100000-nested-flow", "2000-nested-block"])
def test_bombs_are_refused_fast(text):
    import time
    t0 = time.perf_counter()
    with pytest.raises(TopologyError) as info:
        model.load("bomb.yaml", text=text)
    elapsed = time.perf_counter() - t0
    assert elapsed < 0.5, f"refused after {elapsed:.2f} s"
    assert str(info.value).startswith("bomb.yaml:") and "\n" not in str(info.value)


def test_huge_leases_and_pools_are_not_enumerated():
    """A /2 lease has a billion addresses; a /8 link pool four million /30s.  Both used to be
    listed (MemoryError, or minutes); allocation must jump, not walk."""
    import time
    t0 = time.perf_counter()
    topo = load("""
        segments:
          lan: {subnet: 192.168.0.0/24}
        cluster:
          network: 0.0.0.0/1
          subnetLen: 2
          nodes:
            master: {segment: lan, ip: 192.168.0.11}
          pods:
            web: {node: master}
    """)
    assert str(topo.cluster.pods["web"].ip) == "0.0.0.2/2"
    topo = load("""
        pools: {links: 10.0.0.0/8}
        hosts: [h1, h2, h3]
        segments:
          big: {subnet: 10.0.0.0/9, members: [h1]}
          lan: {subnet: 10.128.0.0/10, members: [h2]}
        links: [[h1, h3]]
    """)
    assert addr(topo, "h1", "eth1") == "10.192.0.1/30"
    assert time.perf_counter() - t0 < 2


def test_free_subnets_skip_used_ranges():
    used = [IPv4Network("10.0.0.0/30"), IPv4Network("10.0.0.8/29"), IPv4Network("10.0.0.8/30")]
    got = list(islice(model.free_subnets(IPv4Network("10.0.0.0/27"), 30, used), 3))
    assert [str(n) for n in got] == ["10.0.0.4/30", "10.0.0.16/30", "10.0.0.20/30"]
    assert list(model.free_subnets(IPv4Network("10.0.0.0/30"), 30, [IPv4Network("0.0.0.0/0")])) == []


def test_short_ifname_counts_bytes():
    name = model.short_ifname("é" * 10)      # 10 characters, 20 bytes
    assert len(name.encode()) <= 15 and name.startswith("éé")
    assert model.short_ifname("short") == "short"


def test_backend_override_port_must_be_ascii_digits():
    text = """
        segments:
          lan: {subnet: 192.168.0.0/24}
        cluster:
          nodes:
            master: {segment: lan, ip: 192.168.0.11}
    """
    for bad in ("udp:²", "udp:" + "9" * 5000):
        with pytest.raises(UsageError, match=f"--backend {bad[:10]}.*is not a UDP port"):
            load(text, overrides={"backend": bad})


def test_error_messages_are_one_line_and_bounded():
    with pytest.raises(TopologyError) as info:
        load('hosts: {"a\\nb\\u2028c": {}}\n')
    assert "\n" not in str(info.value) and len(str(info.value).splitlines()) == 1
    with pytest.raises(TopologyError) as info:
        load("hosts: [h1]\nmtu: " + "x" * 100_000 + "\n")
    assert len(str(info.value)) <= 1020


# ---- size limits ---------------------------------------------------------------------------

def single_switch(n: int, gateway: bool = True, neighbours: str | None = None) -> str:
    hosts = ", ".join(f"h{i}" for i in range(n))
    return ((f"neighbours: {neighbours}\n" if neighbours else "") + ("routers: [gw]\n" if gateway else "")
            + f"hosts: [{hosts}]\nsegments:\n  lan:\n"
            f"    subnet: 10.0.0.0/16\n" + ("    gateway: gw\n" if gateway else "") + f"    members: [{hosts}]\n")


def test_neighbour_floor_counts_gateway_pairs_and_link_ends():
    from nslab.model import limits
    dyn = dict(neighbours="dynamic")
    assert limits.minimum_dynamic_neighbours(model.load("s.yaml", text=single_switch(200, **dyn))) == 400
    assert limits.minimum_dynamic_neighbours(model.load("s.yaml", text=single_switch(200, False, **dyn))) == 0
    assert limits.possible_dynamic_neighbours(model.load("s.yaml", text=single_switch(200, **dyn))) == 201 * 200
    topo = load("""
        routers: [r1, r2]
        hosts: [h1]
        links: [[r1, r2], [r1, h1]]
    """)
    assert limits.minimum_dynamic_neighbours(topo) == 4
    topo = model.load(str(Path(__file__).parent.parent.parent / "topologies" / "flannel-vxlan.yaml"))
    pods = len(topo.cluster.pods)
    assert limits.minimum_dynamic_neighbours(topo) == 2 * pods    # pod <-> cni0; no gateway on the underlay


def test_neighbour_table_limit_refuses_dynamic_at_validate(monkeypatch):
    """`neighbours: dynamic` written in the file is kept: a lab whose floor does not fit is refused."""
    from nslab.model import limits
    monkeypatch.setattr(limits, "gc_thresh3", lambda: 1024)
    model.load("s.yaml", text=single_switch(200, neighbours="dynamic"))     # 400 entries: fine
    with pytest.raises(TopologyError) as info:
        model.load("s.yaml", text=single_switch(600, neighbours="dynamic"))  # 1,200 > 1,024
    assert str(info.value).startswith("s.yaml: the lab needs at least 1200 dynamic neighbour")
    assert "1024" in str(info.value) and "neighbours: static" in str(info.value)


def test_too_many_dynamic_neighbours_switch_to_static(monkeypatch):
    """Unsaid, a lab whose peers could need more dynamic entries than gc_thresh3 gets permanent
    ones: each host <-> its gateway, as Neigh ops with the peers' own MACs, and a notice."""
    from nslab.compile import compile_topology
    from nslab.model import limits
    from nslab.plan import Neigh
    monkeypatch.setattr(limits, "gc_thresh3", lambda: 1024)
    small = model.load("s.yaml", text=single_switch(20))          # 21 x 20 = 420: dynamic
    assert small.neighbours == "dynamic" and small.neighbours_auto is None
    assert not [op for op in compile_topology(small).ops if isinstance(op, Neigh)]
    topo = model.load("s.yaml", text=single_switch(600))          # 601 x 600 possible
    assert topo.neighbours == "static" and "360,600" in topo.neighbours_auto and "1,024" in topo.neighbours_auto
    assert limits.minimum_dynamic_neighbours(topo) == 0
    plan = compile_topology(topo)
    neigh = [op for op in plan.ops if isinstance(op, Neigh)]
    assert len(neigh) == 1200 and topo.neighbours_auto in plan.notes["_notices"]
    gw, h7 = topo.nodes["gw"], topo.nodes["h7"]
    assert Neigh(h7.ns, "eth0", str(gw.ifaces[0].ip.ip), gw.ifaces[0].mac) in neigh
    assert Neigh(gw.ns, gw.ifaces[0].name, str(h7.ifaces[0].ip.ip), h7.ifaces[0].mac) in neigh
    assert not [op for op in neigh if op.ns == h7.ns and op.address != str(gw.ifaces[0].ip.ip)]


def test_neighbours_written_per_segment_and_lab_wide():
    from nslab.compile import compile_topology
    from nslab.plan import Neigh
    text = """
        neighbours: {lab}
        routers: [r1]
        hosts: [a, b, c]
        segments:
          one: {{subnet: 10.0.1.0/24, gateway: r1, members: [a]{seg}}}
          two: {{subnet: 10.0.2.0/24, gateway: r1, members: [b]}}
        links: [[r1, c]]
    """
    def neighs(lab, seg=""):
        topo = load(text.format(lab=lab, seg=seg))
        return sorted((op.ns.split(".")[-1], op.address) for op in compile_topology(topo).ops if isinstance(op, Neigh))
    assert neighs("dynamic") == []
    assert neighs("dynamic", ", neighbours: static") == [("a", "10.0.1.254"), ("r1", "10.0.1.1")]
    every = neighs("static")
    assert len(every) == 6 and ("c", "172.31.0.1") in every and ("r1", "172.31.0.2") in every
    assert neighs("static", ", neighbours: dynamic") == [x for x in every if not x[1].startswith("10.0.1.")]
    with pytest.raises(TopologyError, match="neighbours must be static .* or dynamic"):
        load(text.format(lab="permanent", seg=""))


def test_seed_labs_stay_dynamic():
    """The notes show ARP: no shipped topology gets permanent entries for its peers."""
    for f in sorted((Path(__file__).parent.parent.parent / "topologies").glob("*.yaml")):
        topo = model.load(str(f))
        assert topo.neighbours == "dynamic" and topo.neighbours_auto is None, f.name


def test_descriptor_limit_refuses_at_validate(monkeypatch):
    """Apply's window of open namespaces shrinks to the hard limit; validate refuses only when
    not even limits.MIN_OPEN_NAMESPACES fit."""
    from nslab.model import limits
    monkeypatch.setattr(limits, "OPEN_NAMESPACES", 100)
    monkeypatch.setattr(limits, "FDS_PER_NAMESPACE", 3)     # the figures below (apply's count may change)
    monkeypatch.setattr(limits, "MIN_OPEN_NAMESPACES", 20)
    monkeypatch.setattr(limits, "nofile_hard_limit", lambda: 400)
    model.load("s.yaml", text=single_switch(1000))      # the window: 100 of 1002 namespaces open
    monkeypatch.setattr(limits, "nofile_hard_limit", lambda: 130)
    model.load("s.yaml", text=single_switch(150))       # a window of (130 - 64) // 3 = 22
    monkeypatch.setattr(limits, "nofile_hard_limit", lambda: 120)
    model.load("s.yaml", text=single_switch(16))        # 18 namespaces: 3 x 18 + 64 = 118
    with pytest.raises(TopologyError) as info:
        model.load("s.yaml", text=single_switch(150))   # a window of 20 needs 20 x 3 + 64 = 124 > 120
    msg = str(info.value)
    assert "152 namespaces needs about 124 open files" in msg and "at least 20 namespaces" in msg, msg
    assert "at most 120" in msg and "ulimit -Hn 364" in msg, msg


def test_the_window_of_open_namespaces_is_sized_to_the_hard_limit():
    from nslab.model import limits
    import resource
    per, reserve = limits.FDS_PER_NAMESPACE, limits.FDS_RESERVE
    assert limits.open_namespaces(resource.RLIM_INFINITY) == limits.OPEN_NAMESPACES
    assert limits.open_namespaces(1 << 20) == limits.OPEN_NAMESPACES
    assert limits.open_namespaces(1024) == (1024 - reserve) // per == 240       # `ulimit -n 1024`
    assert limits.open_namespaces(reserve + per * limits.MIN_OPEN_NAMESPACES) == limits.MIN_OPEN_NAMESPACES
    assert limits.open_namespaces(reserve + 3) == 0 and limits.open_namespaces(10) == 0
    for hard in (100, 128, 500, 1024, 4096):                 # what it sizes fits under the limit
        assert per * limits.open_namespaces(hard) + reserve <= hard
    # apply's window is the same sizing (a child: this process keeps its hard limit)
    code = ("import resource; resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024)); "
            "from nslab.apply.applier import Applier; print(Applier().max_open, Applier(max_open=256).max_open, "
            "Applier(max_open=8).max_open)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["240", "240", "8"], out.stderr


def test_raise_nofile_soft_limit_in_a_child():
    """Soft -> hard for the process only (a child, so this test process keeps its limits)."""
    code = ("import resource; from nslab.model.limits import raise_nofile_soft_limit as r; "
            "s, h = resource.getrlimit(resource.RLIMIT_NOFILE); resource.setrlimit(resource.RLIMIT_NOFILE, (64, h)); "
            "print(r() == (h, h) and resource.getrlimit(resource.RLIMIT_NOFILE) == (h, h))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "True", out.stderr


def test_quadratic_route_computation_is_refused_before_it_starts(monkeypatch):
    """A 40 KB chain of 800 routers needs 637,602 computed routes (799 links x 798 routers not on each) (minutes and gigabytes
    before the cap): refused by counting first."""
    import time
    from nslab.model import limits
    monkeypatch.setattr(limits, "gc_thresh3", lambda: 10 ** 6)
    n = 800
    text = "routers: [" + ", ".join(f"r{i}" for i in range(n)) + "]\nlinks:\n" + \
        "".join(f"  - [r{i}, r{i + 1}]\n" for i in range(n - 1))
    t0 = time.perf_counter()
    with pytest.raises(TopologyError, match=r"the routers would need 637,602 routes .* at most 500,000"):
        model.load("chain.yaml", text=text)
    assert time.perf_counter() - t0 < 10
    short = "routers: [" + ", ".join(f"r{i}" for i in range(300)) + "]\nlinks:\n" + \
        "".join(f"  - [r{i}, r{i + 1}]\n" for i in range(299))
    assert len(model.load("chain.yaml", text=short).nodes["r0"].routes) == 298    # 89,402 in all: fine
