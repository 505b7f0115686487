"""cluster.services: parsed as the apiserver would accept them (no root, no kernel)."""
from __future__ import annotations

import textwrap
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from nslab import model
from nslab.errors import TopologyError

SHIPPED = Path(__file__).parent.parent.parent / "topologies" / "spine-leaf-services.yaml"
BASE = """\
segments:
  lan: {subnet: 192.168.0.0/24}
cluster:
  nodes:
    node1: {segment: lan, ip: 192.168.0.11}
    node2: {segment: lan, ip: 192.168.0.12}
  pods:
    client: {node: node1}
    web: {daemonset: true, serve: http}
"""


def load(services: str, extra: str = "") -> model.Topology:
    return model.load("lab.yaml", text=BASE + extra + textwrap.indent(textwrap.dedent(services), "  "))


def test_the_notes_service():
    topo = model.load(str(SHIPPED))
    svc = topo.cluster.services["testappds"]
    assert (svc.namespace, svc.port, svc.target_port, svc.protocol, svc.type, svc.node_port) == \
        ("default", 8080, 80, "TCP", "NodePort", 30080)
    assert svc.cluster_ip == IPv4Address("10.111.222.68")
    assert svc.endpoints == ("testappds-worker1", "testappds-worker2", "testappds-worker3")
    assert topo.cluster.service_cidr == IPv4Network("10.96.0.0/12")
    assert topo.cluster.ip_masq


def test_selector_takes_a_single_pod_too_and_defaults():
    topo = load("""\
        services:
          one: {selector: client, port: 8080}
          two: {selector: web, port: 80, type: NodePort, protocol: UDP}
        """)
    one, two = topo.cluster.services["one"], topo.cluster.services["two"]
    assert one.endpoints == ("client",) and one.target_port == 8080 and one.type == "ClusterIP"
    assert one.node_port is None
    # allocated: the lowest free addresses after .1 (the `kubernetes` service), the lowest free node port
    assert (one.cluster_ip, two.cluster_ip) == (IPv4Address("10.96.0.2"), IPv4Address("10.96.0.3"))
    assert two.node_port == 30000 and two.endpoints == ("web-node1", "web-node2")


def test_allocation_skips_pinned_ones():
    topo = load("""\
        services:
          a: {selector: web, port: 80, type: NodePort}
          b: {selector: web, port: 81, type: NodePort, nodePort: 30000, clusterIP: 10.96.0.2}
        """)
    a = topo.cluster.services["a"]
    assert (a.cluster_ip, a.node_port) == (IPv4Address("10.96.0.3"), 30001)


def test_service_cidr_is_settable():
    topo = load("services:\n  a: {selector: web, port: 80}\n", extra="  serviceCIDR: 172.20.0.0/24\n")
    assert topo.cluster.services["a"].cluster_ip == IPv4Address("172.20.0.2")


def test_ip_masq_defaults_to_true_as_flannels_does():
    """flanneld's --ip-masq is on unless turned off: a cluster that does not write ipMasq
    gets it (compile/services.py then installs flannel's masquerade rules)."""
    assert model.load("lab.yaml", text=BASE).cluster.ip_masq is True
    assert model.load("lab.yaml", text=BASE + "  ipMasq: false\n").cluster.ip_masq is False


@pytest.mark.parametrize("services,message", [
    ("services:\n  Web: {selector: web, port: 80}\n", "must be a DNS label"),
    ("services:\n  a: {selector: nope, port: 80}\n", "matches no pod"),
    ("services:\n  a: {selector: web, port: true}\n", "port True is not a port"),
    ("services:\n  a: {selector: web, port: 80, type: LoadBalancer}\n", "type must be one of ClusterIP, NodePort"),
    ("services:\n  a: {selector: web, port: 80, clusterIP: 10.96.0.0}\n", "not a usable address"),
    ("services:\n  a: {selector: web, port: 80, type: NodePort, nodePort: 32768}\n", "node port range"),
])
def test_refusals(services, message):
    with pytest.raises(TopologyError) as e:
        load(services)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_probes_may_target_a_service():
    topo = model.load("lab.yaml", text=BASE + textwrap.dedent("""\
          services:
            web: {selector: web, port: 8080, targetPort: 80, clusterIP: 10.96.0.50}
        tests:
          - {http: [client, svc/web], expect: {source: 10.244.0.2, endpoint: web@node2}}
          - {tcp: [client, svc/web], port: 8081, expect: failure}
        """))
    http, tcp = topo.tests
    assert (http.dst_ip, http.port, http.dst_node) == ("10.96.0.50", 8080, None)
    assert (http.source, http.endpoint) == ("10.244.0.2", "web-node2")
    assert (tcp.dst_ip, tcp.port) == ("10.96.0.50", 8081)


@pytest.mark.parametrize("test,message", [
    ("{ping: [client, svc/web]}", "not ping"),
    ("{http: [client, svc/nope]}", "no service 'nope'"),
    ("{tcp: [client, svc/web], expect: {source: 10.244.0.2}}", "http tests that expect success only"),
    ("{http: [client, svc/web], expect: {result: failure, endpoint: web@node1}}", "expect success only"),
])
def test_service_probe_refusals(test, message):
    text = BASE + "  services:\n    web: {selector: web, port: 8080}\ntests:\n  - " + test + "\n"
    with pytest.raises(TopologyError) as e:
        model.load("lab.yaml", text=text)
    assert message in str(e.value), str(e.value)
