"""Issue 23's service features compiled (no root): the model's fields, and the chains, sets
and verdicts both kube-proxy modes write for them, names checked against an independent
computation of kube-proxy's hashes (portProtoHash, hashAndTruncate)."""
from __future__ import annotations

import base64
import hashlib
from pathlib import Path

from nslab import model
from nslab.compile import kubeproxy, kubeproxy_nft
from nslab.compile.services import chains_of, services_of

REPO = Path(__file__).parent.parent.parent
LAB = REPO / "topologies" / "services-features.yaml"


def b32(text: str, n: int) -> str:
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()[:n]


def node_rules(mode: str, name: str) -> str:
    topo = model.load(str(LAB))
    c = topo.cluster
    n = c.nodes[name]
    node = kubeproxy.Node(name=n.name, ip=str(n.ip), pod_cidr=str(n.subnet), cluster_cidr=str(c.network))
    if mode == "iptables":
        return kubeproxy.rules(node, services_of(c))
    return kubeproxy_nft.rules(node, services_of(c), service_cidr=str(c.service_cidr))


def test_the_model_reads_ports_policies_affinity_and_no_selector():
    svcs = model.load(str(LAB)).cluster.services
    multi = svcs["multi"]
    assert [(p.name, p.port, p.target_port, p.protocol, p.target_name) for p in multi.ports] == \
        [("main", 80, 80, "TCP", "main"), ("alt", 8081, 8081, "TCP", "alt"), ("echo", 5353, 5353, "UDP", "")]
    assert (svcs["local"].external_policy, svcs["local"].target_port) == ("Local", 80)      # targetPort: http
    assert svcs["internal"].internal_policy == "Local"
    assert svcs["sticky"].affinity_timeout == 3
    assert svcs["empty"].endpoints == () and svcs["empty"].selector is None


def test_iptables_local_policies_depend_on_the_node():
    svl = "KUBE-SVL-" + b32("default/local" + "tcp", 16)
    n1, n2 = node_rules("iptables", "n1"), node_rules("iptables", "n2")
    assert f"-A KUBE-EXT-{b32('default/localtcp', 16)} -j {svl}" in n1
    assert svl not in n2      # no local endpoint on n2: no KUBE-SVL, a DROP instead
    assert ('-A KUBE-EXTERNAL-SERVICES -m comment --comment "default/local has no local endpoints" '
            "-m addrtype --dst-type LOCAL -m tcp -p tcp --dport 30080 -j DROP") in n2
    assert ('-A KUBE-SERVICES -m comment --comment "default/internal has no local endpoints" -m tcp -p tcp '
            "-d 10.96.0.82 --dport 8080 -j DROP") in n2
    assert "masquerade traffic for default/local" not in n1       # Local: the source is kept
    assert "-m recent --name KUBE-SEP-" in n1 and "--rcheck --seconds 3 --reap" in n1


def test_nftables_local_chains_affinity_sets_and_drop_verdicts():
    local = f"local-{b32('default/local/tcp/', 8)}-default/local/tcp/"
    affinity = f"affinity-{b32('default/sticky/tcp/__10.244.0.3/80', 8)}-default/sticky/tcp/__10.244.0.3/80"
    n1, n2 = node_rules("nftables", "n1"), node_rules("nftables", "n2")
    assert f"goto {local}" in n1 and local not in n2
    assert f"add set ip kube-proxy {affinity} {{ type ipv4_addr ; flags dynamic,timeout ; timeout 3s ; }}" in n1
    assert f"update @{affinity} {{ ip saddr }}" in n1
    assert 'add element ip kube-proxy no-endpoint-nodeports { tcp . 30080 comment "default/local" : drop }' in n2
    assert ('add element ip kube-proxy no-endpoint-services { 10.96.0.84 . tcp . 80 comment "default/empty" : '
            "goto reject-chain }") in n1


def test_the_services_table_names_each_ports_chain():
    cluster = model.load(str(LAB)).cluster
    chains = chains_of(cluster)
    assert chains["internal"] == ["KUBE-SVL-" + b32("default/internaltcp", 16)]
    assert chains["empty"] == ["-"] and len(chains["multi"]) == 3
    assert chains["sticky"][0].endswith("(affinity: -m recent, 3 s)")


def test_a_headless_service_without_endpoints_has_no_dns_record():
    """Its record would be "name.ns=" (no address), which the DNS daemon refuses as input."""
    from nslab.compile.dns import records
    text = LAB.read_text().replace("  dns: false\n", "    bare: {port: 80, clusterIP: None}\n")
    topo = model.load("lab.yaml", text=text)
    recs = records(topo.cluster)
    assert topo.cluster.services["bare"].headless and not [v for _, v in recs if v.startswith("bare.")]
    assert ("a", "local.default=10.96.0.80") in recs


def test_a_probe_names_a_service_port_by_name_or_number(tmp_path):
    (check,) = [c for c in model.load(str(LAB)).tests if c.dst == "svc/multi:alt"]
    assert (check.dst_ip, check.port) == ("10.96.0.85", 8081)
    by_number = tmp_path / "services-features.yaml"
    by_number.write_text(LAB.read_text().replace("svc/multi:alt", "svc/multi:8081"))
    (check,) = [c for c in model.load(str(by_number)).tests if c.dst.startswith("svc/multi")]
    assert (check.dst_ip, check.port) == ("10.96.0.85", 8081)
