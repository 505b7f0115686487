"""kube-proxy's nftables mode (compile/kubeproxy_nft.py) and flannel's nftables masquerade
(masq.nft_rules), pure: chain names against kube-proxy's own test expectations and an
independent base32, the service blocks against kube-proxy's TestOverallNFTablesRules, the
plan's ops per mode."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from nslab import model
from nslab import plan as P
from nslab.compile import compile_topology, kubeproxy_nft as kn, masq
from nslab.compile.kubeproxy import Endpoint, Node, Service
from nslab.compile.script import render
from nslab.errors import TopologyError, UsageError

SHIPPED = Path(__file__).parent.parent.parent / "topologies" / "spine-leaf-services.yaml"
NODE = Node(name="n", ip="192.168.0.2", pod_cidr="10.0.1.0/24", cluster_cidr="10.0.0.0/8")


def b32_by_hand(data: bytes) -> str:
    """RFC 4648 base32 written out (not base64.b32encode): 5 bits per letter, '=' padding."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
    bits = "".join(f"{byte:08b}" for byte in data)
    bits += "0" * (-len(bits) % 5)
    text = "".join(alphabet[int(bits[i:i + 5], 2)] for i in range(0, len(bits), 5))
    return text + "=" * (-len(text) % 8)


def svc(ns, name, ip, eps=(), port_name="p80", node_port=None):
    return Service(name=name, namespace=ns, port=80, target_port=80, cluster_ip=ip, port_name=port_name,
                   type="NodePort" if node_port else "ClusterIP", node_port=node_port,
                   endpoints=tuple(Endpoint(ip=e, node="n") for e in eps))


# (namespace, name, endpoint ip or None) -> the chain kube-proxy's proxier_test.go expects
UPSTREAM = [
    (("ns1", "svc1", None), "service-ULMVA6XW-ns1/svc1/tcp/p80"),
    (("ns1", "svc1", "10.180.0.1"), "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"),
    (("ns2", "svc2", None), "service-42NFTM6N-ns2/svc2/tcp/p80"),
    (("ns2", "svc2", "10.180.0.2"), "endpoint-SGOXE6O3-ns2/svc2/tcp/p80__10.180.0.2/80"),
    (("ns3", "svc3", None), "service-4AT6LBPK-ns3/svc3/tcp/p80"),
    (("ns3", "svc3", "10.180.0.3"), "endpoint-UEIP74TE-ns3/svc3/tcp/p80__10.180.0.3/80"),
    (("ns4", "svc4", "10.180.0.4"), "endpoint-UNZV3OEC-ns4/svc4/tcp/p80__10.180.0.4/80"),
    (("ns4", "svc4", "10.180.0.5"), "endpoint-5RFCDDV7-ns4/svc4/tcp/p80__10.180.0.5/80"),
    (("ns5", "svc5", None), "service-HVFWP5L3-ns5/svc5/tcp/p80"),
]


@pytest.mark.parametrize("key,want", UPSTREAM, ids=[w for _, w in UPSTREAM])
def test_chain_names_are_the_ones_kube_proxys_tests_expect(key, want):
    ns, name, ep = key
    s = svc(ns, name, "172.30.0.41", eps=[ep] if ep else [])
    got = kn.endpoint_chain(s, f"{ep}:80") if ep else kn.service_chain(s)
    assert got == want


@pytest.mark.parametrize("text", ["default/testappds/tcp/", "default/testappds/tcp/__10.244.1.2/80",
                                  "kube-system/kube-dns/udp/dns", "a" * 300])
def test_hash_and_truncate_against_an_independent_base32(text):
    """8 letters of base32(sha256(text)), '-', the text; cut to 240 characters ending '...'."""
    want = b32_by_hand(hashlib.sha256(text.encode()).digest())[:8] + "-" + text
    if len(want) > 240:
        want = want[:237] + "..."
    assert kn.hash_and_truncate(text) == want
    assert len(kn.hash_and_truncate(text)) <= 240


def test_the_labs_service_chains():
    """The shipped services lab's names: unnamed port (empty after the last '/'), hashed
    independently of the module."""
    s = svc("default", "testappds", "10.111.222.68", eps=["10.244.1.2"], port_name="")
    base = "default/testappds/tcp/"
    assert kn.service_chain(s) == "service-" + b32_by_hand(hashlib.sha256(base.encode()).digest())[:8] + "-" + base
    ep = base + "__10.244.1.2/80"
    assert kn.endpoint_chain(s, "10.244.1.2:80") == \
        "endpoint-" + b32_by_hand(hashlib.sha256(ep.encode()).digest())[:8] + "-" + ep


def _lines(text: str) -> set[str]:
    """The transaction's lines without the flushes and the add+delete pairs of a first sync
    (kube-proxy's fake dumps the resulting objects, not the operations)."""
    lines = [line for line in text.splitlines() if not line.startswith(("flush ", "delete "))]
    deleted = {line.replace("delete ", "add ", 1) for line in text.splitlines() if line.startswith("delete ")}
    return {line for line in lines if line not in deleted or "{" in line}


def test_service_blocks_match_kube_proxys_overall_rules_test():
    """TestOverallNFTablesRules' svc1 (ClusterIP), svc3 (NodePort, Cluster policy), svc4 (two
    endpoints: numgen order and spacing) and svc6 (no endpoints: reject), line for line, but
    for the clusterIP masquerade rule, which the proxier.go mirrored matches with its port
    (`tcp dport 80`; the test's later version dropped it)."""
    services = [svc("ns1", "svc1", "172.30.0.41", ["10.180.0.1"]),
                svc("ns3", "svc3", "172.30.0.43", ["10.180.0.3"], node_port=30003),
                svc("ns4", "svc4", "172.30.0.44", ["10.180.0.4", "10.180.0.5"]),
                svc("ns6", "svc6", "172.30.0.46")]
    got = _lines(kn.rules(NODE, services, service_cidr="172.30.0.0/16"))
    k = "add rule ip kube-proxy "
    expected = {
        "add chain ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80",
        k + "service-ULMVA6XW-ns1/svc1/tcp/p80 ip daddr 172.30.0.41 tcp dport 80 ip saddr != 10.0.0.0/8 "
            "jump mark-for-masquerade",
        k + "service-ULMVA6XW-ns1/svc1/tcp/p80 numgen random mod 1 vmap { 0 : goto "
            "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 }",
        "add chain ip kube-proxy endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80",
        k + "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 ip saddr 10.180.0.1 jump mark-for-masquerade",
        k + "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 meta l4proto tcp dnat to 10.180.0.1:80",
        "add element ip kube-proxy cluster-ips { 172.30.0.41 }",
        "add element ip kube-proxy service-ips { 172.30.0.41 . tcp . 80 : goto service-ULMVA6XW-ns1/svc1/tcp/p80 }",
        # svc3
        "add chain ip kube-proxy service-4AT6LBPK-ns3/svc3/tcp/p80",
        k + "service-4AT6LBPK-ns3/svc3/tcp/p80 ip daddr 172.30.0.43 tcp dport 80 ip saddr != 10.0.0.0/8 "
            "jump mark-for-masquerade",
        k + "service-4AT6LBPK-ns3/svc3/tcp/p80 numgen random mod 1 vmap { 0 : goto "
            "endpoint-UEIP74TE-ns3/svc3/tcp/p80__10.180.0.3/80 }",
        "add chain ip kube-proxy external-4AT6LBPK-ns3/svc3/tcp/p80",
        k + "external-4AT6LBPK-ns3/svc3/tcp/p80 jump mark-for-masquerade",
        k + "external-4AT6LBPK-ns3/svc3/tcp/p80 goto service-4AT6LBPK-ns3/svc3/tcp/p80",
        "add chain ip kube-proxy endpoint-UEIP74TE-ns3/svc3/tcp/p80__10.180.0.3/80",
        k + "endpoint-UEIP74TE-ns3/svc3/tcp/p80__10.180.0.3/80 ip saddr 10.180.0.3 jump mark-for-masquerade",
        k + "endpoint-UEIP74TE-ns3/svc3/tcp/p80__10.180.0.3/80 meta l4proto tcp dnat to 10.180.0.3:80",
        "add element ip kube-proxy cluster-ips { 172.30.0.43 }",
        "add element ip kube-proxy service-ips { 172.30.0.43 . tcp . 80 : goto service-4AT6LBPK-ns3/svc3/tcp/p80 }",
        "add element ip kube-proxy service-nodeports { tcp . 30003 : goto external-4AT6LBPK-ns3/svc3/tcp/p80 }",
        # svc4
        "add chain ip kube-proxy service-LAUZTJTB-ns4/svc4/tcp/p80",
        k + "service-LAUZTJTB-ns4/svc4/tcp/p80 ip daddr 172.30.0.44 tcp dport 80 ip saddr != 10.0.0.0/8 "
            "jump mark-for-masquerade",
        k + "service-LAUZTJTB-ns4/svc4/tcp/p80 numgen random mod 2 vmap { 0 : goto "
            "endpoint-UNZV3OEC-ns4/svc4/tcp/p80__10.180.0.4/80 , 1 : goto "
            "endpoint-5RFCDDV7-ns4/svc4/tcp/p80__10.180.0.5/80 }",
        "add chain ip kube-proxy endpoint-5RFCDDV7-ns4/svc4/tcp/p80__10.180.0.5/80",
        k + "endpoint-5RFCDDV7-ns4/svc4/tcp/p80__10.180.0.5/80 ip saddr 10.180.0.5 jump mark-for-masquerade",
        k + "endpoint-5RFCDDV7-ns4/svc4/tcp/p80__10.180.0.5/80 meta l4proto tcp dnat to 10.180.0.5:80",
        "add chain ip kube-proxy endpoint-UNZV3OEC-ns4/svc4/tcp/p80__10.180.0.4/80",
        k + "endpoint-UNZV3OEC-ns4/svc4/tcp/p80__10.180.0.4/80 ip saddr 10.180.0.4 jump mark-for-masquerade",
        k + "endpoint-UNZV3OEC-ns4/svc4/tcp/p80__10.180.0.4/80 meta l4proto tcp dnat to 10.180.0.4:80",
        "add element ip kube-proxy cluster-ips { 172.30.0.44 }",
        "add element ip kube-proxy service-ips { 172.30.0.44 . tcp . 80 : goto service-LAUZTJTB-ns4/svc4/tcp/p80 }",
        # svc6
        "add element ip kube-proxy cluster-ips { 172.30.0.46 }",
        'add element ip kube-proxy no-endpoint-services { 172.30.0.46 . tcp . 80 comment "ns6/svc6:p80" : '
        "goto reject-chain }",
    }
    missing = expected - got
    assert not missing, sorted(missing)
    per_service = {line for line in got if "/svc" in line or ("element" in line and "nodeport-ips" not in line)}
    assert per_service == expected, sorted(per_service - expected)


def test_setup_has_kube_proxys_base_objects():
    text = kn.rules(NODE, [], service_cidr="172.30.0.0/16")
    got = _lines(text)
    for line in [
        'add table ip kube-proxy { comment "rules for kube-proxy" ; }',
        'add set ip kube-proxy cluster-ips { type ipv4_addr ; comment "Active ClusterIPs" ; }',
        "add map ip kube-proxy service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; "
        'comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ; }',
        "add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority -100 ; }",
        "add chain ip kube-proxy nat-postrouting { type nat hook postrouting priority 100 ; }",
        "add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips",
        "add rule ip kube-proxy services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports",
        "add rule ip kube-proxy masquerading mark and 0x00004000 == 0 return",
        "add rule ip kube-proxy masquerading masquerade fully-random",
        'add rule ip kube-proxy cluster-ips-check ip daddr { 172.30.0.0/16 } drop comment '
        '"Drop traffic to unallocated ClusterIPs"',
        "add element ip kube-proxy nodeport-ips { 192.168.0.2 }",        # nodePortAddresses "primary"
    ]:
        assert line in got, line
    # a first sync resets the base chains: each added and deleted before it is created
    lines = text.splitlines()
    first = lines.index("add chain ip kube-proxy nat-prerouting")
    assert lines[first + 1] == "delete chain ip kube-proxy nat-prerouting"


def test_flannels_nftables_masquerade_mirrors_add_masq_rules():
    text = masq.nft_rules("10.244.0.0/16", "10.244.3.0/24")
    rules = [line.split("postrtg ", 1)[1] for line in text.splitlines() if line.startswith("add rule ip flannel-ipv4 postrtg")]
    assert rules == ["meta mark 0x4000 return",
                     "ip saddr 10.244.3.0/24 ip daddr 10.244.0.0/16 return",
                     "ip saddr 10.244.0.0/16 ip daddr 10.244.3.0/24 return",
                     "ip saddr != 10.244.3.0/24 ip daddr 10.244.0.0/16 return",
                     "ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random",
                     "ip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random"]
    assert "add rule ip flannel-ipv4 forward ip saddr 10.244.0.0/16 accept" in text
    assert "postrtg" not in masq.nft_rules("10.244.0.0/16", "10.244.3.0/24", ip_masq=False)
    with pytest.raises(ValueError):
        masq.nft_rules("10.244.0.0/16", "10.245.3.0/24")


def _plan(text: str, **overrides):
    return compile_topology(model.load(str(SHIPPED), text=text, overrides=overrides or None))


def test_modes_in_the_plan():
    """iptables: one Iptables op per node, no Nftables; nftables: flannel's rules stay in
    iptables, kube-proxy's go to one Nftables op per node, no route_localnet; with
    enableNFTables as well, no iptables at all."""
    text = SHIPPED.read_text()
    plain = _plan(text)
    assert not [op for op in plain.ops if isinstance(op, P.Nftables)]
    nft = _plan(text, proxy_mode="nftables")
    ipt = {op.ns: op.text for op in nft.ops if isinstance(op, P.Iptables)}
    tables = {op.ns: op.text for op in nft.ops if isinstance(op, P.Nftables)}
    assert sorted(ipt) == sorted(tables) and len(tables) == 4
    assert all("KUBE-" not in t and "flanneld masq" in t for t in ipt.values())
    assert all(t.startswith("add table ip kube-proxy") for t in tables.values())
    assert not [op for op in nft.ops if isinstance(op, P.Sysctl) and op.key.endswith("route_localnet")]
    w3 = next(t for ns, t in tables.items() if ns.endswith(".worker3"))
    assert "add element ip kube-proxy nodeport-ips { 30.0.0.23 }" in w3
    both = _plan(text.replace("cluster:\n", "cluster:\n  enableNFTables: true\n  kubeProxy: {mode: nftables}\n", 1))
    assert not [op for op in both.ops if isinstance(op, P.Iptables)]
    t = next(op.text for op in both.ops if isinstance(op, P.Nftables) and op.ns.endswith(".worker3"))
    assert t.index("table ip flannel-ipv4") < t.index("table ip kube-proxy")     # flanneld first, as on a node
    script = render(both)
    assert script.count("nft -f - <<'EOF'") == 4 and "iptables-restore" not in script
    assert P.from_json(P.to_json(both)).ops == both.ops


@pytest.mark.parametrize("snippet,message", [
    ("  kubeProxy: {mode: userspace}\n", "cluster.kubeProxy.mode: kubeProxy mode must be one of iptables, "
                                          "nftables, ipvs, not 'userspace'"),
    ("  kubeProxy: {mod: nftables}\n", "cluster.kubeProxy.mod: unknown key 'mod'"),
    ("  enableNFTables: yes please\n", "cluster.enableNFTables: enableNFTables must be true or false"),
])
def test_bad_settings_name_file_line_and_path(snippet, message):
    text = SHIPPED.read_text().replace("cluster:\n", "cluster:\n" + snippet, 1)
    with pytest.raises(TopologyError) as e:
        model.load(str(SHIPPED), text=text)
    assert message in str(e.value)
    assert f"{SHIPPED.name}:" in str(e.value)


def test_bad_proxy_mode_option_is_one_sentence():
    with pytest.raises(UsageError, match=r"^--proxy-mode 'kernelspace': kube-proxy's modes are iptables, "
                                         r"nftables, ipvs$"):
        model.load(str(SHIPPED), overrides={"proxy_mode": "kernelspace"})
    with pytest.raises(UsageError, match="has no cluster: section"):
        model.load(str(SHIPPED.parent / "diy-veth.yaml"), overrides={"proxy_mode": "nftables"})
