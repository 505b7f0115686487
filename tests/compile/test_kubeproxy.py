"""kube-proxy's iptables rules (nslab/compile/kubeproxy.py), computed without root.

The golden file is the note's Service as seen from worker3; regenerate after an intended
change with NSLAB_UPDATE_GOLDEN=1 and read the diff.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from nslab.compile import kubeproxy as kp

GOLDEN = Path(__file__).parent.parent / "golden" / "services"
UPDATE = os.environ.get("NSLAB_UPDATE_GOLDEN") == "1"

# The note's test.yaml: daemonset testappds on worker1..3, Service port 8080 -> 80, NodePort 30080.
ENDPOINTS = (kp.Endpoint("10.244.1.23", "worker1"), kp.Endpoint("10.244.2.16", "worker2"),
             kp.Endpoint("10.244.3.19", "worker3"))
TESTAPPDS = kp.Service("testappds", port=8080, target_port=80, cluster_ip="10.111.222.68", type="NodePort",
                       node_port=30080, endpoints=ENDPOINTS)
WORKER3 = kp.Node("worker3", "30.0.0.23", pod_cidr="10.244.3.0/24", cluster_cidr="10.244.0.0/16")


def golden(name: str, got: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(got, encoding="utf-8")
        return
    assert path.exists(), f"no golden file {path}; create it with NSLAB_UPDATE_GOLDEN=1 and review it"
    assert got == path.read_text(encoding="utf-8"), f"{name} differs (NSLAB_UPDATE_GOLDEN=1 rewrites it)"


def test_note_chain_name():
    # The chain the note lists with `iptables -t nat -vnL KUBE-SVC-QMR6LTDCBEU4U25W`.
    assert kp.svc_chain(TESTAPPDS) == "KUBE-SVC-QMR6LTDCBEU4U25W"
    assert kp.ext_chain(TESTAPPDS) == "KUBE-EXT-QMR6LTDCBEU4U25W"


@pytest.mark.parametrize("text,want", [
    # Chain names seen on real clusters: every kubeadm cluster's API and DNS services ...
    ("default/kubernetes:https" "tcp", "NPX46M4PTMTKRN6Y"),
    ("kube-system/kube-dns:dns" "udp", "TCOU7JCQXEZGVUNU"),
    # ... and two endpoint chains from an iptables-save in flannel issue #1702 (name+proto+ip:port).
    ("cattle-system/rancher-webhook:https" "tcp" "10.233.66.58:9443", "2CGKZLTJ3FLW3FSU"),
    ("kube-system/kube-dns:metrics" "tcp" "10.233.65.48:9153", "47DFFSOXHPCJZCQX"),
])
def test_hash_matches_real_clusters(text, want):
    assert kp._hash16(text) == want


def test_named_port_and_protocol_change_the_name():
    named = kp.Service("testappds", 8080, 80, "10.111.222.68", port_name="http", endpoints=ENDPOINTS)
    udp = kp.Service("testappds", 8080, 80, "10.111.222.68", protocol="UDP", endpoints=ENDPOINTS)
    assert named.port_name_string == "default/testappds:http"
    names = {kp.svc_chain(TESTAPPDS), kp.svc_chain(named), kp.svc_chain(udp)}
    assert len(names) == 3
    assert kp.sep_chain(TESTAPPDS, "10.244.1.23:80") != kp.sep_chain(udp, "10.244.1.23:80")


def test_golden_worker3():
    golden("worker3.kube-proxy.rules", kp.rules(WORKER3, [TESTAPPDS]))


def test_formatting_as_kube_proxy_writes_it():
    assert kp.probability(3) == "0.3333333333"      # iptables-save prints it back as 0.33333333349
    assert kp.probability(2) == "0.5000000000"
    assert kp.masquerade_mark() == "0x00004000"     # Go "%#08x" of 1<<14


def test_chain_walk_of_the_note():
    text = kp.rules(WORKER3, [TESTAPPDS])
    svc, ext = "KUBE-SVC-QMR6LTDCBEU4U25W", "KUBE-EXT-QMR6LTDCBEU4U25W"
    lines = text.splitlines()
    nat = lines[lines.index("*nat"):]
    # KUBE-SERVICES: the clusterIP first, the NodePort catch-all last
    services = [ln for ln in nat if ln.startswith("-A KUBE-SERVICES ")]
    assert services[0].endswith(f"-d 10.111.222.68 --dport 8080 -j {svc}")
    assert "NOTE: this must be the last rule" in services[-1] and services[-1].endswith("-j KUBE-NODEPORTS")
    assert f"-A KUBE-NODEPORTS -m comment --comment default/testappds -m tcp -p tcp --dport 30080 -j {ext}" in nat
    # KUBE-SVC: mark-masq for off-cluster sources, then 1/3, 1/2, the rest in endpoint order
    svc_rules = [ln for ln in nat if ln.startswith(f"-A {svc} ")]
    assert "! -s 10.244.0.0/16 -j KUBE-MARK-MASQ" in svc_rules[0]
    assert [re.search(r"-> (\S+)\"", r).group(1) for r in svc_rules[1:]] == \
        ["10.244.1.23:80", "10.244.2.16:80", "10.244.3.19:80"]
    assert [re.search(r"--probability (\S+)", r).group(1) if "statistic" in r else None for r in svc_rules[1:]] == \
        ["0.3333333333", "0.5000000000", None]
    # KUBE-SEP: hairpin mark for the endpoint itself, then DNAT
    sep = kp.sep_chain(TESTAPPDS, "10.244.2.16:80")
    assert [ln for ln in nat if ln.startswith(f"-A {sep} ")] == [
        f"-A {sep} -m comment --comment default/testappds -s 10.244.2.16 -j KUBE-MARK-MASQ",
        f"-A {sep} -m comment --comment default/testappds -m tcp -p tcp -j DNAT --to-destination 10.244.2.16:80"]
    assert "-A KUBE-POSTROUTING -j MARK --xor-mark 0x00004000" in nat
    assert nat.index(f":{ext} - [0:0]") < nat.index(f":{svc} - [0:0]") < nat.index(f":{sep} - [0:0]")


@pytest.mark.parametrize("n", range(1, 12))
def test_probabilities_spread_evenly(n):
    """The cascade of 1/n, 1/(n-1), ... gives every endpoint the same share."""
    eps = tuple(kp.Endpoint(f"10.244.{i}.5", f"w{i}") for i in range(1, n + 1))
    s = kp.Service("spread", 80, 8080, "10.96.0.20", endpoints=eps)
    rules = [ln for ln in kp.rules(WORKER3, [s]).splitlines() if ln.startswith(f"-A {kp.svc_chain(s)} -m comment")
             and "->" in ln]
    assert len(rules) == n
    left, shares = 1.0, []
    for r in rules:
        m = re.search(r"--probability (\S+)", r)
        p = float(m.group(1)) if m else 1.0
        shares.append(left * p)
        left -= left * p
    assert all(abs(x - 1 / n) < 1e-9 for x in shares), shares
    assert left == pytest.approx(0.0, abs=1e-12)


def test_endpoints_sorted_as_strings():
    eps = (kp.Endpoint("10.244.2.16", "worker2"), kp.Endpoint("10.244.10.5", "worker10"))
    s = kp.Service("x", 80, 80, "10.96.0.30", endpoints=eps)
    assert [e.ip for e in kp.endpoints_in_order(s)] == ["10.244.10.5", "10.244.2.16"]


def test_cluster_ip_service_has_no_nodeport_rules():
    s = kp.Service("testappds", 8080, 80, "10.111.222.68", endpoints=ENDPOINTS)
    text = kp.rules(WORKER3, [s])
    assert "KUBE-EXT-" not in text
    assert "-A KUBE-NODEPORTS" not in text
    assert f"-A KUBE-SERVICES -m comment --comment \"default/testappds cluster IP\"" in text


def test_service_without_endpoints_is_rejected_in_filter():
    s = kp.Service("lonely", 80, 8080, "10.96.0.40", type="NodePort", node_port=30999)
    text = kp.rules(WORKER3, [s])
    assert "KUBE-SVC-" not in text and "KUBE-SEP-" not in text
    assert ('-A KUBE-SERVICES -m comment --comment "default/lonely has no endpoints" -m tcp -p tcp '
            '-d 10.96.0.40 --dport 80 -j REJECT') in text
    assert ('-A KUBE-EXTERNAL-SERVICES -m comment --comment "default/lonely has no endpoints" -m addrtype '
            '--dst-type LOCAL -m tcp -p tcp --dport 30999 -j REJECT') in text


def test_services_in_stable_order():
    other = kp.Service("alpha", 53, 53, "10.96.0.10", namespace="kube-system", protocol="UDP",
                       endpoints=(kp.Endpoint("10.244.1.2", "worker1"),))
    assert kp.rules(WORKER3, [TESTAPPDS, other]) == kp.rules(WORKER3, [other, TESTAPPDS])
    assert "-m udp -p udp -d 10.96.0.10 --dport 53" in kp.rules(WORKER3, [other])


@pytest.mark.parametrize("kwargs,message", [
    ({"protocol": "SCTP"}, "protocol must be one of TCP, UDP"),
    ({"type": "LoadBalancer"}, "type must be one of ClusterIP, NodePort"),
    ({"type": "NodePort", "node_port": 29999}, "nodePort must be 30000..32767"),
    ({"type": "NodePort"}, "nodePort must be 30000..32767"),
    ({"node_port": 30080}, "nodePort is only for type NodePort"),
    ({"port": 0}, "port must be 1..65535"),
    ({"target_port": 70000}, "targetPort must be 1..65535"),
    ({"cluster_ip": "10.111.222"}, "10.111.222"),
    ({"endpoints": ENDPOINTS + ENDPOINTS[:1]}, "listed twice"),
])
def test_bad_service(kwargs, message):
    args = {"name": "testappds", "port": 8080, "target_port": 80, "cluster_ip": "10.111.222.68", **kwargs}
    with pytest.raises(ValueError, match=re.escape(message)):
        kp.Service(**args)


@pytest.mark.parametrize("other,clash", [
    (kp.Service("other", 8080, 80, "10.111.222.68"), "clusterIP:port 10.111.222.68/8080/tcp"),
    (kp.Service("other", 80, 80, "10.96.0.99", type="NodePort", node_port=30080), "nodePort 30080/tcp"),
    (kp.Service("testappds", 9090, 80, "10.96.0.98"), "service port default/testappds/tcp"),
])
def test_clashing_services(other, clash):
    with pytest.raises(ValueError, match=re.escape(clash)):
        kp.rules(WORKER3, [TESTAPPDS, other])


def test_udp_nodeport_may_share_the_number_with_tcp():
    udp = kp.Service("dns", 53, 53, "10.96.0.10", protocol="UDP", type="NodePort", node_port=30080,
                     endpoints=ENDPOINTS)
    assert "-m udp -p udp --dport 30080" in kp.rules(WORKER3, [TESTAPPDS, udp])
