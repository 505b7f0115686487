"""Cluster DNS in the model and the plan (pure): kube-dns as kubeadm makes it, the coredns
pod after the file's pods, kubelet's resolv.conf for pods, and what the server answers
(nslab/runtime/dns.py's Zone on real DNS messages, built by dnslib)."""
from __future__ import annotations

from ipaddress import IPv4Address

from dnslib import QTYPE, RCODE, DNSRecord

from nslab import model
from nslab import plan as P
from nslab.compile import compile_topology
from nslab.compile.dns import resolv_conf
from nslab.runtime import dns as server

from test_services_model import SHIPPED, load     # the same small cluster: client, web on node1/node2


def test_kube_dns_is_kubeadms_service_on_the_cidrs_tenth_address():
    topo = load("services: {web: {selector: web, port: 80}}\n")
    dns = topo.cluster.services["kube-dns"]
    assert (dns.namespace, dns.cluster_ip, dns.port, dns.protocol, dns.port_name, dns.endpoints) == \
        ("kube-system", IPv4Address("10.96.0.10"), 53, "UDP", "dns", ("coredns",))
    # the file's service still gets the lowest free address (.1 is `kubernetes`'s)
    assert topo.cluster.services["web"].cluster_ip == IPv4Address("10.96.0.2")
    pod = topo.cluster.pods["coredns"]
    assert (pod.node, pod.namespace, str(pod.ip)) == ("node1", "kube-system", "10.244.0.4/24")
    # after the file's pods: theirs are what they were without DNS
    off = load("services: {web: {selector: web, port: 80}}\ndns: false\n")
    assert "coredns" not in off.cluster.pods and "kube-dns" not in off.cluster.services
    assert {n: p.ip for n, p in off.cluster.pods.items()} == \
        {n: p.ip for n, p in topo.cluster.pods.items() if n != "coredns"}
    # no service network, no DNS
    assert load("").cluster.dns is None


def test_dns_follows_the_service_cidr_or_what_the_file_says():
    topo = load("serviceCIDR: 10.100.0.0/16\nservices: {web: {selector: web, port: 80}}\ndns: {node: node2}\n")
    assert topo.cluster.services["kube-dns"].cluster_ip == IPv4Address("10.100.0.10")
    assert topo.cluster.pods["coredns"].node == "node2"
    topo = load("services: {web: {selector: web, port: 80}}\ndns: {ip: 10.96.0.53}\n")
    assert topo.cluster.services["kube-dns"].cluster_ip == IPv4Address("10.96.0.53")


def test_kube_proxy_compiles_kube_dns_as_any_service_and_skips_a_headless_one():
    topo = load("services:\n  web: {selector: web, port: 80}\n  web-pods: {selector: web, port: 80, "
                "clusterIP: None}\n")
    assert topo.cluster.services["web-pods"].cluster_ip is None
    plan = compile_topology(topo)
    rules = next(op.text for op in plan.ops if isinstance(op, P.Iptables))
    # the chain every kubeadm cluster has for kube-system/kube-dns:dns (udp)
    assert '-A KUBE-SERVICES -m comment --comment "kube-system/kube-dns:dns cluster IP" -m udp -p udp ' \
           '-d 10.96.0.10 --dport 53 -j KUBE-SVC-TCOU7JCQXEZGVUNU' in rules
    assert "DNAT --to-destination 10.244.0.4:53" in rules
    assert "web-pods" not in rules
    daemon = next(op for op in plan.ops if isinstance(op, P.Daemon))
    assert (daemon.node, daemon.kind, daemon.module, daemon.what) == \
        ("coredns", "dns", "nslab.runtime.dns", "dns server on coredns")
    assert ("headless", "web-pods.default=10.244.0.3,10.244.1.2") in daemon.config
    assert ("a", "kube-dns.kube-system=10.96.0.10") in daemon.config
    # kubelet's resolv.conf for every pod but coredns (dnsPolicy Default: the lab's)
    assert plan.notes["client"]["resolv.conf"] == resolv_conf("10.96.0.10", "default") == \
        "search default.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
    assert "resolv.conf" not in plan.notes.get("coredns", {}) and "resolv.conf" not in plan.notes["node1"]


def test_the_shipped_topology_puts_coredns_off_the_clients_node():
    topo = model.load(str(SHIPPED))
    assert topo.cluster.pods["coredns"].node == "worker1" != topo.cluster.pods["client"].node


def ask(zone, name: str, qtype: str = "A") -> DNSRecord:
    return DNSRecord.parse(zone.answer(DNSRecord.question(name, qtype).pack()))


def test_the_server_answers_as_coredns_kubernetes_plugin():
    zone = server.parse_config(["domain=cluster.local", "address=10.244.0.3", "a=web.default=10.96.0.2",
                                "headless=web-pods.default=10.244.0.2,10.244.1.2"])
    r = ask(zone, "web.default.svc.cluster.local")
    assert r.header.rcode == RCODE.NOERROR and r.header.aa and [str(a.rdata) for a in r.rr] == ["10.96.0.2"]
    assert [a.ttl for a in r.rr] == [5]
    r = ask(zone, "WEB-PODS.default.svc.cluster.local.")          # names are case-insensitive
    assert [str(a.rdata) for a in r.rr] == ["10.244.0.2", "10.244.1.2"]
    r = ask(zone, "2.0.96.10.in-addr.arpa", "PTR")
    assert [str(a.rdata) for a in r.rr] == ["web.default.svc.cluster.local."]
    for name, qtype in (("web.default.svc.cluster.local", "AAAA"), ("default.svc.cluster.local", "A"),
                        ("svc.cluster.local", "A")):
        r = ask(zone, name, qtype)                                 # the name exists: NODATA, with the SOA
        assert r.header.rcode == RCODE.NOERROR and not r.rr and r.auth[0].rtype == QTYPE.SOA, name
    for name in ("nosuch.default.svc.cluster.local", "web.other.svc.cluster.local", "cluster.local.example"):
        r = ask(zone, name)
        assert r.header.rcode == RCODE.NXDOMAIN and not r.rr, name
    r = ask(zone, "example.org")
    assert r.header.rcode == RCODE.NXDOMAIN and not r.header.aa and not r.auth   # no upstream
    assert zone.answer(b"\x00\x01garbage") is None                               # not a query: no answer


def test_the_server_refuses_arguments_it_cannot_trust():
    for bad in (["a=web.default=10.96.0.2"], ["domain=cluster.local", "a=../x=10.0.0.1"],
                ["domain=cluster.local", "a=web.default=10.0.0.999"], ["domain=cluster.local", "x=1"],
                ["domain=cluster.local", "a=web.default=10.0.0.1", "a=web.default=10.0.0.2"]):
        try:
            server.parse_config(bad)
        except ValueError:
            continue
        raise AssertionError(f"accepted {bad}")
