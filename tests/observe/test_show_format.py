"""`nslab show` formatting, without root: each line must read exactly as iproute2 prints it
(the expected strings are real `ip route` / `ip neigh` / `bridge fdb show` output)."""
import io
import json
import os
import re

import pytest

from nslab.observe.show import (fdb_state, format_addr, format_fdb, format_link_details, format_neigh, format_route,
                        is_multicast_mac, norm_fdb, norm_neigh, norm_route, parse_subnet_env)


def route(**kw):
    base = dict(type="unicast", dst="default", gateway=None, dev=None, table="main", proto="boot",
                scope="global", src=None, metric=None, flags=[], metrics={}, nexthops=[])
    base.update(kw)
    return base


def test_route_kernel_connected():
    r = route(dst="10.1.1.0/24", dev="v1", proto="kernel", scope="link", src="10.1.1.2")
    assert format_route(r) == "10.1.1.0/24 dev v1 proto kernel scope link src 10.1.1.2"


def test_route_via_onlink_flannel():
    r = route(dst="10.244.1.0/24", gateway="10.244.1.0", dev="flannel.1", flags=["onlink"])
    assert format_route(r) == "10.244.1.0/24 via 10.244.1.0 dev flannel.1 onlink"


def test_route_default_static_metric_mtu():
    r = route(gateway="10.1.1.1", dev="v1", proto="static", metric=20, metrics={"mtu": 1400})
    assert format_route(r) == "default via 10.1.1.1 dev v1 proto static metric 20 mtu 1400"


def test_route_blackhole_and_other_table():
    assert format_route(route(type="blackhole", dst="10.7.0.0/16")) == "blackhole 10.7.0.0/16"
    r = route(dst="10.6.0.0/16", gateway="10.1.1.1", dev="v1", table=100)
    assert format_route(r, show_table=True) == "10.6.0.0/16 via 10.1.1.1 dev v1 table 100"
    assert format_route(r) == "10.6.0.0/16 via 10.1.1.1 dev v1"


def test_route_multipath():
    r = route(dst="10.9.0.0/16", nexthops=[
        dict(gateway="10.1.1.1", dev="v1", weight=1, flags=[]),
        dict(gateway="10.1.1.3", dev="v1", weight=2, flags=["onlink"])])
    assert format_route(r) == ("10.9.0.0/16\n"
                               "\tnexthop via 10.1.1.1 dev v1 weight 1\n"
                               "\tnexthop via 10.1.1.3 dev v1 weight 2 onlink")


def test_route_ipip_host_route():
    assert format_route(route(dst="10.10.200.10", dev="tunl1", proto="kernel", scope="link",
                              src="10.10.100.10")) == \
        "10.10.200.10 dev tunl1 proto kernel scope link src 10.10.100.10"


class Msg(dict):
    """A stand-in for a pyroute2 message (a dict with 'attrs')."""


def test_norm_route_from_netlink_message():
    msg = Msg(family=2, dst_len=24, table=254, proto=3, scope=0, type=1, flags=4,
              attrs=[("RTA_TABLE", 254), ("RTA_DST", "10.244.1.0"), ("RTA_GATEWAY", "10.244.1.0"),
                     ("RTA_OIF", 3)])
    r = norm_route(msg, {3: "flannel.1"})
    assert format_route(r) == "10.244.1.0/24 via 10.244.1.0 dev flannel.1 onlink"
    default = norm_route(Msg(family=2, dst_len=0, table=254, proto=3, scope=0, type=1, flags=0,
                             attrs=[("RTA_GATEWAY", "10.244.0.1"), ("RTA_OIF", 2)]), {2: "eth0"})
    assert format_route(default) == "default via 10.244.0.1 dev eth0"


def test_norm_route_multipath_message():
    nh1 = Msg(oif=2, hops=0, flags=0, attrs=[("RTA_GATEWAY", "10.0.1.1")])
    nh2 = Msg(oif=3, hops=0, flags=0, attrs=[("RTA_GATEWAY", "10.0.2.1")])
    msg = Msg(family=2, dst_len=24, table=254, proto=3, scope=0, type=1, flags=0,
              attrs=[("RTA_DST", "30.0.0.0"), ("RTA_MULTIPATH", [nh1, nh2])])
    assert format_route(norm_route(msg, {2: "eth1", 3: "eth2"})) == (
        "30.0.0.0/24\n\tnexthop via 10.0.1.1 dev eth1 weight 1\n\tnexthop via 10.0.2.1 dev eth2 weight 1")


def test_neigh_permanent_flannel():
    n = dict(dst="10.244.3.0", dev="flannel.4000", lladdr="aa:bb:cc:dd:ee:ff", flags=[], state=["PERMANENT"])
    assert format_neigh(n) == "10.244.3.0 dev flannel.4000 lladdr aa:bb:cc:dd:ee:ff PERMANENT"


def test_neigh_from_message_router_and_incomplete():
    msg = Msg(family=2, ifindex=2, state=0x02, flags=0x80,
              attrs=[("NDA_DST", "10.1.1.1"), ("NDA_LLADDR", "c6:38:ae:8c:a6:c8")])
    assert format_neigh(norm_neigh(msg, {2: "v1"})) == "10.1.1.1 dev v1 lladdr c6:38:ae:8c:a6:c8 router REACHABLE"
    msg = Msg(family=2, ifindex=2, state=0x01, flags=0, attrs=[("NDA_DST", "10.1.1.9")])
    assert format_neigh(norm_neigh(msg, {2: "v1"})) == "10.1.1.9 dev v1 INCOMPLETE"


def test_fdb_vxlan_self_permanent():
    f = dict(mac="aa:bb:cc:dd:ee:ff", dev="flannel.4000", dst="30.0.0.23", flags=["self"], state="permanent")
    assert format_fdb(f) == "aa:bb:cc:dd:ee:ff dev flannel.4000 dst 30.0.0.23 self permanent"


def test_fdb_learned_on_bridge_port():
    f = dict(mac="f6:6d:38:ff:7b:fd", dev="br-veth0", flags=[], master="br0", state="")
    assert format_fdb(f) == "f6:6d:38:ff:7b:fd dev br-veth0 master br0"


def test_fdb_from_messages():
    learned = Msg(ifindex=3, state=0x02, flags=0, attrs=[("NDA_LLADDR", "f6:6d:38:ff:7b:fd"), ("NDA_MASTER", 2)])
    names = {2: "br0", 3: "br-veth0", 5: "flannel.4000"}
    assert format_fdb(norm_fdb(learned, names)) == "f6:6d:38:ff:7b:fd dev br-veth0 master br0"
    local = Msg(ifindex=2, state=0x80, flags=0, attrs=[("NDA_LLADDR", "fe:2d:ff:4b:52:f1"), ("NDA_MASTER", 2)])
    assert format_fdb(norm_fdb(local, names)) == "fe:2d:ff:4b:52:f1 dev br0 master br0 permanent"
    vx = Msg(ifindex=5, state=0x80, flags=0x02, attrs=[("NDA_LLADDR", "aa:bb:cc:dd:ee:01"), ("NDA_DST", "10.1.1.1")])
    assert format_fdb(norm_fdb(vx, names)) == "aa:bb:cc:dd:ee:01 dev flannel.4000 dst 10.1.1.1 self permanent"


def test_fdb_state_names():
    assert fdb_state(0x80) == "permanent"
    assert fdb_state(0x40) == "static"
    assert fdb_state(0x04) == "stale"
    assert fdb_state(0x02) == ""
    assert fdb_state(0x01) == "state=0x1"


def test_addr_lines():
    assert format_addr(dict(family=4, local="10.1.1.2", prefixlen=24, broadcast="10.1.1.255", scope="global",
                            dev="v1", label="v1")) == "inet 10.1.1.2/24 brd 10.1.1.255 scope global"
    assert format_addr(dict(family=4, local="10.10.100.10", peer="10.10.200.10", prefixlen=32, scope="global",
                            dev="tunl1", label="tunl1")) == "inet 10.10.100.10 peer 10.10.200.10/32 scope global"


def test_link_details():
    assert format_link_details("vxlan", dict(id=4000, local="10.0.0.21", dev="eth0", dstport=4789,
                                             learning=False)) == \
        "vxlan id 4000 local 10.0.0.21 dev eth0 dstport 4789 nolearning"
    assert format_link_details("vxlan", dict(id=1, local="172.12.1.11", dev="ens33", dstport=8472,
                                             learning=True)) == \
        "vxlan id 1 local 172.12.1.11 dev ens33 dstport 8472 learning"
    assert format_link_details("ipip", dict(remote=None, local="172.12.1.11")) == "ipip remote any local 172.12.1.11"
    assert format_link_details("tun", dict(type="tun")) == "tun type tun"
    assert format_link_details(None, {}) == ""


def test_multicast_mac_and_subnet_env():
    assert is_multicast_mac("33:33:00:00:00:01") and is_multicast_mac("01:00:5e:00:00:01")
    assert not is_multicast_mac("f6:6d:38:ff:7b:fd")
    text = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
    assert parse_subnet_env(text) == {"FLANNEL_NETWORK": "10.244.0.0/16", "FLANNEL_SUBNET": "10.244.1.1/24",
                                      "FLANNEL_MTU": "1450", "FLANNEL_IPMASQ": "true"}
    assert parse_subnet_env({"FLANNEL_MTU": 1450}) == {"FLANNEL_MTU": "1450"}


def test_render_sections_and_subnet_env():
    import io

    from rich.console import Console

    from nslab.observe.show import render
    link = dict(index=2, name="flannel.1", kind="vxlan", slave_kind=None, mtu=1450, mac="aa:bb:cc:dd:ee:01",
                state="UNKNOWN", flags=["UP"], master=None, link=None, peer=None, info={},
                details="vxlan id 1 local 172.12.1.11 dev ens33 dstport 8472 nolearning",
                addresses=[dict(text="inet 10.244.0.0/32 scope global", local="10.244.0.0")])
    data = {"lab": "x", "nodes": {"worker1": {
        "namespace": "x.worker1", "interfaces": [link],
        "routes": [dict(text="10.244.1.0/24 via 10.244.1.0 dev flannel.1 onlink")],
        "neighbours": [], "fdb": [dict(text="33:33:00:00:00:01 dev flannel.1 self permanent",
                                       mac="33:33:00:00:00:01", flags=["self"])],
        "subnet_env": {"FLANNEL_SUBNET": "10.244.0.1/24", "FLANNEL_MTU": "1450"}}}}
    out = io.StringIO()
    render(Console(file=out, width=120, color_system=None), None, data)
    text = out.getvalue()
    for needle in ("worker1", "x.worker1", "flannel.1", "vxlan id 1 local 172.12.1.11", "inet 10.244.0.0/32",
                   "10.244.1.0/24 via 10.244.1.0 dev flannel.1 onlink", "subnet.env", "FLANNEL_SUBNET=10.244.0.1/24"):
        assert needle in text, needle
    assert "33:33:00:00:00:01" not in text      # multicast self entries are hidden in the rendering


# --- the rendered text: whole at 80 and 120 columns and piped ------------------------------

SHOWN = os.path.join(os.path.dirname(__file__), "data", "show-spine-leaf.json")   # `nslab show --json`, 3 nodes
ANSI = re.compile(r"\x1b\[[0-9;?]*[a-zA-Z]")
WORD = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}|\d+\.\d+\.\d+\.\d+(?:/\d+)?|flannel\.\d+|veth[0-9a-f]{8}")


@pytest.mark.parametrize("columns", [80, 120, None], ids=["80", "120", "piped"])
def test_show_text_whole_at_any_width(columns):
    from nslab import console as out
    from nslab.observe.show import render
    data = json.load(open(SHOWN))
    buf = io.StringIO()
    render(out.make(terminal=columns is not None, columns=columns, file=buf), None, data)
    text = ANSI.sub("", buf.getvalue())
    assert "…" not in text
    if columns:
        assert max(len(line) for line in text.splitlines()) <= columns, text
    else:                                  # piped: no rule drawn across a 10,000-column "width"
        assert max(len(line) for line in text.splitlines()) < 200
    flat = " ".join(text.split())
    shown = {n: {**e, "fdb": [x for x in e["fdb"] if not ("self" in x["flags"] and is_multicast_mac(x["mac"] or ""))],
                 "interfaces": [x for x in e["interfaces"] if x["kind"] != "loopback"]}
             for n, e in data["nodes"].items()}      # render leaves out lo and the kernel's own multicast entries
    words = set(WORD.findall(json.dumps(shown)))
    assert len(words) > 20
    for w in words:
        assert re.search(rf"(?<![\w:.]){re.escape(w)}(?![\w:])", flat), w
    for node, entry in data["nodes"].items():
        assert f"{node} namespace {entry['namespace']}" in flat
        for r in entry["routes"]:
            assert " ".join(r["text"].split()) in flat


# --- netfilter counters -----------------------------------------------------------------------

NFT_RULESET = """table ip nat { # handle 1
\tchain POSTROUTING { # handle 1
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\t counter packets 1 bytes 40 jump KUBE-POSTROUTING # handle 22
\t}
}
table ip flannel-ipv4 { # handle 3
\tset ips { # handle 2
\t\ttype ipv4_addr
\t\telements = { 10.0.0.1 }
\t}

\tchain postrtg { # handle 4
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tip saddr 10.244.0.0/16 ip daddr 10.244.0.0/16  counter packets 3 bytes 252 return # handle 5
\t\tip saddr 10.244.0.0/16 masquerade fully-random # handle 6
\t}
}
"""
NFT_STDERR = "# Warning: table ip nat is managed by iptables-nft, do not touch!\n"


def test_parse_nft_rules_counters_and_iptables_nft_tables_left_out():
    """Real `nft -a list ruleset` shape: a rule's text without its counter, None where it has
    none; set lines are no rules; the table nft says iptables-nft manages is iptables-save's."""
    from nslab.observe.show import parse_nft
    t = parse_nft(NFT_RULESET, NFT_STDERR)
    assert list(t) == ["ip flannel-ipv4"]
    assert t["ip flannel-ipv4"] == {"postrtg": [
        {"rule": "ip saddr 10.244.0.0/16 ip daddr 10.244.0.0/16 return", "handle": 5, "packets": 3, "bytes": 252},
        {"rule": "ip saddr 10.244.0.0/16 masquerade fully-random", "handle": 6, "packets": None, "bytes": None}]}
    assert "ip nat" in parse_nft(NFT_RULESET)       # no warning: nothing is left out


def test_netfilter_lines_only_what_counted_unless_every():
    from nslab.apply.iptables import parse_save
    from nslab.observe.show import iptables_counters, netfilter_lines, netfilter_summary, parse_nft
    saved = parse_save("*nat\n:POSTROUTING ACCEPT [2:120]\n:KUBE-SVC-X - [0:0]\n"
                       "[5:300] -A KUBE-SVC-X -j KUBE-SEP-Y\n[0:0] -A POSTROUTING -j RETURN\nCOMMIT\n")
    nf = {"iptables": iptables_counters(saved),
          "nftables": parse_nft(NFT_RULESET, NFT_STDERR)}
    assert netfilter_lines(nf) == ["[2:120] -t nat -P POSTROUTING ACCEPT", "[5:300] -t nat -A KUBE-SVC-X -j KUBE-SEP-Y",
                                   "[3:252] ip flannel-ipv4 postrtg: ip saddr 10.244.0.0/16 ip daddr 10.244.0.0/16 "
                                   "return"]
    every = netfilter_lines(nf, every=True)
    assert "[0:0] -t nat -A POSTROUTING -j RETURN" in every
    assert "[-] ip flannel-ipv4 postrtg: ip saddr 10.244.0.0/16 masquerade fully-random" in every
    assert netfilter_summary(nf).startswith("2 of 4 rules (iptables 2, nft 2) counted no packet (1 nft rule carries")
    assert netfilter_summary({"iptables": {}, "nftables": {}, "errors": []}) == "no iptables or nft rules"
