"""Validation at size (issue 12): refusals that come before the expensive work, error
messages that stay one sentence, and the fast address helpers that must equal ipaddress's."""
from __future__ import annotations

import pytest

from nslab import model
from nslab.errors import TopologyError
from nslab.model import parser


def mixed_router_lab(n: int) -> str:
    """Routers on links (pool, explicit subnet, explicit ends), on a numbered segment with a
    gateway and hosts, and on an unnumbered segment whose routers give their own addresses."""
    routers = [f"r{i}" for i in range(n)]
    lines = [f"routers: [{', '.join(routers)}]", "hosts: [h0, h1]", "segments:",
             "  lan:", "    subnet: 10.9.0.0/24", "    gateway: r0", "    members: [h0, h1, r1, r2]",
             "  bare:", "    members:"]
    lines += [f"      - r{i}: {{ip: 10.8.{i}.1/24}}" for i in (3, 4)] + ["      - r5"]
    lines.append("links:")
    for i in range(n - 1):
        if i % 3 == 0:
            lines.append(f"  - [r{i}, r{i + 1}]")
        elif i % 3 == 1:
            lines.append(f"  - {{ends: [r{i}, r{i + 1}], subnet: 10.{100 + i // 250}.{i % 250}.0/29}}")
        else:
            lines.append(f"  - {{ends: [{{node: r{i}, ip: 10.7.{i}.1/30}}, {{node: r{i + 1}, ip: 10.7.{i}.2/30}}]}}")
    lines.append("  - [h0, r7]")
    return "\n".join(lines) + "\n"


def test_route_count_is_refused_before_addresses_with_the_full_checks_number(monkeypatch):
    text = mixed_router_lab(60)
    full = model.load("mix.yaml", text=text)
    need = sum(1 for n in full.nodes.values() if n.kind == "router" for r in n.routes if r.origin == "computed")
    monkeypatch.setattr(parser, "MAX_COMPUTED_ROUTES", need - 1)
    with pytest.raises(TopologyError) as late:
        monkeypatch.setattr(parser.Builder, "_early_route_count", lambda self: None)
        model.load("mix.yaml", text=text)
    monkeypatch.undo()
    monkeypatch.setattr(parser, "MAX_COMPUTED_ROUTES", need - 1)

    def no_allocation(self):
        raise AssertionError("addresses allocated before the route count refused the lab")
    monkeypatch.setattr(parser.Builder, "_allocate_link_subnets", no_allocation)
    with pytest.raises(TopologyError) as early:
        model.load("mix.yaml", text=text)
    assert str(early.value) == str(late.value)
    assert f"would need {need:,} routes" in str(early.value)
    monkeypatch.setattr(parser, "MAX_COMPUTED_ROUTES", need)
    with pytest.raises(AssertionError, match="allocated before"):
        model.load("mix.yaml", text=text)     # at the cap: not refused, goes on to addresses


def test_unknown_names_list_a_few_then_how_many_more():
    routers = ", ".join(f"r{i}" for i in range(3000))
    with pytest.raises(TopologyError) as info:
        model.load("many.yaml", text=f"routers: [{routers}]\nlinks:\n  - [r0, x0a]\n")
    msg = str(info.value)
    assert msg.endswith("unknown node 'x0a' (nodes: r0, r1, r10, r100, r1000, r1001, r1002, r1003, r1004, r1005 "
                        "and 2,990 more)")
    assert "\n" not in msg and len(msg) < 200
    with pytest.raises(TopologyError) as info:
        model.load("few.yaml", text="hosts: [a, b]\nlinks:\n  - [a, c]\n")
    assert str(info.value).endswith("unknown node 'c' (nodes: a, b)")


def test_name_list():
    from nslab.model.types import name_list
    assert name_list([]) == "none"
    assert name_list(iter(["a", "b"])) == "a, b"
    assert name_list(range(12)) == "0, 1, 2, 3, 4, 5, 6, 7, 8, 9 and 2 more"
    assert name_list((f"n{i}" for i in range(10))) == ", ".join(f"n{i}" for i in range(10))


@pytest.mark.parametrize("text", ["10.0.0.1/30", "10.0.0.2/30", "172.31.255.254/31", "192.168.7.9/32",
                                  "10.1.2.3/8", "0.0.0.1/0", "255.255.255.254/24", "10.0.0.0/31"])
def test_fast_interface_equals_ipaddress(text):
    """ipv4_interface replaces IPv4Interface(f"{ip}/{len}") in allocation: same value, text,
    hash, equality and network (shared between the ends of a link)."""
    from ipaddress import IPv4Interface
    from nslab.model.types import ipv4_interface
    slow = IPv4Interface(text)
    fast = ipv4_interface(int(slow.ip), slow.network.prefixlen)
    assert fast == slow and slow == fast and hash(fast) == hash(slow)
    assert str(fast) == str(slow) and repr(fast) == repr(slow) and fast.with_prefixlen == slow.with_prefixlen
    assert fast.ip == slow.ip and fast.network == slow.network and fast.netmask == slow.netmask
    assert fast.network.broadcast_address == slow.network.broadcast_address
    if slow.network.prefixlen >= 24:
        assert list(fast.network.hosts()) == list(slow.network.hosts())
    assert {fast: 1}[slow] == 1 and fast.network.prefixlen == slow.network.prefixlen
    from nslab.model.types import interface_text, ip_text
    assert ip_text(fast) == ip_text(slow) == str(slow.ip) and ip_text(slow.ip) == str(slow.ip)
    assert interface_text(fast) == interface_text(slow) == str(slow)
    assert fast != IPv4Interface(f"{slow.ip}/{max(slow.network.prefixlen - 1, 0)}") or slow.network.prefixlen == 0


@pytest.mark.parametrize("cidr", ["10.0.0.0/24", "10.0.0.0/30", "10.0.0.0/31", "10.0.0.7/32", "0.0.0.0/0"])
def test_host_range_is_hosts_first_and_last(cidr):
    from ipaddress import IPv4Network
    from nslab.model.types import host_range, network_bounds
    net = IPv4Network(cidr)
    first, last = host_range(net)
    hosts = net.hosts()
    assert first == int(next(iter(hosts)))
    if net.prefixlen >= 24:
        assert last == int(list(net.hosts())[-1])
    assert network_bounds(net) == (int(net.network_address), int(net.broadcast_address))


def test_free_blocks_skip_used_ranges_and_equal_free_subnets():
    from ipaddress import IPv4Network
    from nslab.model.types import free_blocks, free_subnets
    pool = IPv4Network("10.0.0.0/26")
    used = [IPv4Network("10.0.0.4/30"), IPv4Network("10.0.0.16/28"), IPv4Network("10.0.0.9/32")]
    blocks = list(free_blocks(pool, 30, used))
    assert [str(IPv4Network((b, 30))) for b in blocks] == [str(n) for n in free_subnets(pool, 30, used)]
    assert [b - int(pool.network_address) for b in blocks] == [0, 12, 32, 36, 40, 44, 48, 52, 56, 60]


def test_segment_and_link_addresses_as_before():
    """Auto addresses skip the ones members gave; /31 and /29 link subnets give their first two hosts."""
    topo = model.load("a.yaml", text="hosts: [a, b, c, d]\nrouters: [r]\nsegments:\n  lan:\n"
                                     "    subnet: 10.0.0.0/29\n    gateway: r\n"
                                     "    members: [a, {b: {ip: 10.0.0.2}}, c]\n"
                                     "links:\n  - {ends: [d, r], subnet: 10.5.0.0/31}\n"
                                     "  - {ends: [c, d], subnet: 10.6.0.8/29}\n  - [a, d]\n")
    ips = {(n.name, i.name): str(i.ip) for n in topo.nodes.values() for i in n.ifaces if i.ip is not None}
    assert ips[("a", "eth0")] == "10.0.0.1/29" and ips[("b", "eth0")] == "10.0.0.2/29"
    assert ips[("c", "eth0")] == "10.0.0.3/29" and ips[("r", "eth0")] == "10.0.0.6/29"
    assert ips[("d", "eth0")] == "10.5.0.0/31" and ips[("r", "eth1")] == "10.5.0.1/31"
    assert ips[("c", "eth1")] == "10.6.0.9/29" and ips[("d", "eth1")] == "10.6.0.10/29"
    assert ips[("a", "eth1")] == "172.31.0.1/30" and ips[("d", "eth2")] == "172.31.0.2/30"
    with pytest.raises(TopologyError, match="has no free address left"):
        model.load("f.yaml", text="hosts: [a, b, c]\nsegments:\n  lan:\n    subnet: 10.0.0.0/31\n"
                                  "    members: [a, b, c]\n")
    with pytest.raises(TopologyError, match="fewer than two addresses"):
        model.load("f.yaml", text="hosts: [a, b]\nlinks:\n  - {ends: [a, b], subnet: 10.0.0.0/32}\n")


def cluster_text(pods: str, services: str = "", subnet_len: int = 24) -> str:
    return ("segments:\n  rack: {subnet: 192.168.0.0/24}\ncluster:\n  network: 10.244.0.0/16\n"
            f"  subnetLen: {subnet_len}\n  backend: {{type: vxlan}}\n  nodes:\n"
            "    n1: {segment: rack, ip: 192.168.0.1}\n    n2: {segment: rack, ip: 192.168.0.2}\n"
            "  pods:\n" + pods + services)


def test_pod_addresses_lowest_free_from_two_around_pinned_ones():
    pods = ("    a: {node: n1}\n    b: {node: n1, ip: 10.244.0.3}\n    c: {node: n1}\n    d: {node: n1}\n"
            "    e: {node: n1, ip: 10.244.0.2}\n    ds: {daemonset: true}\n")
    topo = model.load("c.yaml", text=cluster_text(pods))
    got = {name: str(pod.ip) for name, pod in topo.cluster.pods.items()}
    assert got == {"a": "10.244.0.4/24", "b": "10.244.0.3/24", "c": "10.244.0.5/24", "d": "10.244.0.6/24",
                   "e": "10.244.0.2/24", "ds-n1": "10.244.0.7/24", "ds-n2": "10.244.1.2/24"}
    full = "".join(f"    p{i}: {{node: n1}}\n" for i in range(2))      # a /30 holds one pod (.2)
    with pytest.raises(TopologyError, match=r"pods.p1: n1's subnet 10.244.0.0/30 has no free pod address left"):
        model.load("c.yaml", text=cluster_text(full, subnet_len=30))
    one = model.load("c.yaml", text=cluster_text("    p0: {node: n1}\n", subnet_len=30))
    assert str(one.cluster.pods["p0"].ip) == "10.244.0.2/30"


def test_service_endpoint_rules_are_capped_before_compile(monkeypatch):
    from nslab.model import services
    pods = "    web: {daemonset: true, serve: http}\n"
    svcs = "  services:\n" + "".join(f"    s{i}: {{selector: web, port: {80 + i}}}\n" for i in range(3))
    model.load("s.yaml", text=cluster_text(pods, svcs))          # 2 nodes x 2 endpoints x 3 = 12
    monkeypatch.setattr(services, "MAX_SERVICE_ENDPOINT_RULES", 11)
    with pytest.raises(TopologyError) as info:
        model.load("s.yaml", text=cluster_text(pods, svcs))
    msg = str(info.value)
    assert "cluster.services.s2:" in msg and "would need 12 endpoint rules" in msg and "at most 11" in msg


def test_a_node_on_a_segment_twice_is_refused():
    text = ("segments:\n  rack: {subnet: 192.168.0.0/24, members: [n1]}\ncluster:\n  network: 10.244.0.0/16\n"
            "  backend: {type: vxlan}\n  nodes:\n    n1: {segment: rack, ip: 192.168.0.1}\n")
    with pytest.raises(TopologyError, match="n1 is attached to segment rack twice"):
        model.load("t.yaml", text=text)


def test_one_gateway_of_many_segments_is_linear():
    """A router as the gateway of 3,000 segments: each attachment used to scan its interfaces."""
    import time
    n = 3000
    text = ("routers: [r0]\nhosts: [" + ", ".join(f"h{i}" for i in range(n)) + "]\nsegments:\n"
            + "".join(f"  s{i}: {{subnet: 10.{i // 256}.{i % 256}.0/24, gateway: r0, members: [h{i}]}}\n"
                      for i in range(n)))
    t0 = time.perf_counter()
    topo = model.load("gw.yaml", text=text)
    assert len(topo.nodes["r0"].ifaces) == n and time.perf_counter() - t0 < 10


def test_static_routes_pick_the_first_interface_holding_the_gateway_and_stay_linear():
    import time
    n = 3000
    text = ("hosts: [a, b, c]\nrouters: [r]\nlinks:\n  - {ends: [a, r], subnet: 10.0.0.0/24}\n"
            "  - {ends: [b, r], subnet: 10.1.0.0/16}\n  - {ends: [c, r], subnet: 10.2.0.0/30}\n"
            + "".join(f"  - [r, h{i}]\n" for i in range(n))
            + "hosts: [" + ", ".join(f"h{i}" for i in range(n)) + "]\n")
    text = text.replace("hosts: [a, b, c]\n", "").replace("hosts: [h", "hosts: [a, b, c, h", 1)
    routes = ["{to: 192.%d.%d.0/24, via: 10.1.%d.9}" % (168 + i // 256, i % 256, i // 256) for i in range(n)]
    routes += ["{to: 172.16.0.0/12, via: 10.0.0.1}", "{to: default, via: 10.2.0.1, dev: eth2}"]
    body = text.replace("routers: [r]\n", "routers:\n  r:\n    routes: [" + ", ".join(routes) + "]\n")
    t0 = time.perf_counter()
    topo = model.load("r.yaml", text=body)
    assert time.perf_counter() - t0 < 10
    got = {str(r.dst): (str(r.nexthops[0].via), r.nexthops[0].dev) for r in topo.nodes["r"].routes
           if r.origin == "static"}
    assert got["192.168.5.0/24"] == ("10.1.0.9", "eth1") and got["172.16.0.0/12"] == ("10.0.0.1", "eth0")
    assert got["0.0.0.0/0"] == ("10.2.0.1", "eth2") and len(got) == n + 2
    with pytest.raises(TopologyError, match="gateway 10.1.0.9 is not on any subnet connected to r"):
        model.load("r.yaml", text=body.replace("via: 10.1.0.9}", "via: 10.1.0.9, dev: eth0}", 1))
    with pytest.raises(TopologyError, match="r already has a route to 192.168.0.0/24"):
        model.load("r.yaml", text=body.replace("{to: 192.168.1.0/24", "{to: 192.168.0.0/24", 1))


def test_a_segment_holds_what_one_linux_bridge_holds():
    """A Linux bridge numbers its ports 1..1023: the 1,024th member failed in `up` with
    'Exchange full' (single:1500); now validate says so (single:1023 is built for real in
    tests/integration/test_scale_limits.py)."""
    from nslab.errors import TopologyError
    from nslab.model.types import BRIDGE_PORTS

    def text(n):
        names = ", ".join(f"h{i}" for i in range(n))
        return f"hosts: [{names}]\nsegments:\n  big:\n    subnet: 10.0.0.0/16\n    members: [{names}]\n"
    assert len(model.load("big.yaml", text=text(BRIDGE_PORTS)).nodes) == BRIDGE_PORTS + 1
    with pytest.raises(TopologyError, match=r"big.yaml:3 segments.big: segment big would have 1,024 ports; "
                                            r"a Linux bridge holds at most 1,023"):
        model.load("big.yaml", text=text(BRIDGE_PORTS + 1))
