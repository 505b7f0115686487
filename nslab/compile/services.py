"""Netfilter rules per cluster node: flannel's ip-masq/forward rules (masq.py) and kube-proxy's
iptables mode for the cluster's services (kubeproxy.py), as one Iptables op per node (loaded
with one iptables-restore), plus the sysctl kube-proxy sets (route_localnet).

Order inside a node follows the daemons' start on a real node: flanneld appends its rules to
POSTROUTING/FORWARD, kube-proxy then inserts its jumps at the top (`iptables -I`), so
KUBE-POSTROUTING comes before flannel's MASQUERADE, as in the note's screenshots.
"""
from __future__ import annotations

from .. import plan as P
from . import kubeproxy, masq


def services_of(cluster) -> list[kubeproxy.Service]:
    """The model's services as kube-proxy sees them: endpoints are the selected pods' IPs.
    A headless service has no cluster IP, so kube-proxy has nothing to do for it (only the
    cluster DNS names its endpoints)."""
    out = []
    for s in cluster.services.values():
        if s.headless:
            continue
        eps = tuple(kubeproxy.Endpoint(ip=str(cluster.pods[pod].ip.ip), node=cluster.pods[pod].node)
                    for pod in s.endpoints)
        out.append(kubeproxy.Service(name=s.name, namespace=s.namespace, port=s.port, port_name=s.port_name,
                                     target_port=s.target_port,
                                     cluster_ip=str(s.cluster_ip), protocol=s.protocol, type=s.type,
                                     node_port=s.node_port, endpoints=eps))
    return out


def compile_services(topo, plan: P.Plan) -> None:
    cluster = topo.cluster
    if cluster is None:
        return
    # Every cluster node gets flanneld's rules, as flanneld's defaults install them:
    # --ip-masq (true unless `ipMasq: false`) and --iptables-forward-rules (always).
    services = services_of(cluster)
    for node in cluster.nodes.values():
        ns = topo.nodes[node.name].ns
        text = masq.rules(str(cluster.network), str(node.subnet), ip_masq=cluster.ip_masq)
        if services:
            for key, value in kubeproxy.sysctls().items():
                plan.add(P.Sysctl(ns, key, value))
            text += kubeproxy.rules(kubeproxy.Node(name=node.name, ip=str(node.ip), pod_cidr=str(node.subnet),
                                                   cluster_cidr=str(cluster.network)), services)
        plan.add(P.Iptables(ns, text))
