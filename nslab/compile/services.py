"""Netfilter rules per cluster node: flannel's ip-masq/forward rules (masq.py) and kube-proxy's
rules for the cluster's services, as one Iptables op per node (loaded with one
iptables-restore) and, where flannel's EnableNFTables or kube-proxy's nftables mode put rules
in nftables, one Nftables op (loaded with one `nft -f`), plus the sysctl kube-proxy's
iptables mode sets (route_localnet).

kube-proxy's mode (cluster.kubeProxy.mode or --proxy-mode): iptables (kubeproxy.py),
nftables (kubeproxy_nft.py: table `ip kube-proxy`), ipvs (kubeproxy_ipvs.py: kube-ipvs0, IPVS
servers, ipsets, and its iptables rules joined to the node's; lab.plan_for_this_kernel
refuses it on a kernel without ip_vs before anything exists).

Order inside a node follows the daemons' start on a real node: flanneld appends its rules to
POSTROUTING/FORWARD, kube-proxy then inserts its jumps at the top (`iptables -I`), so
KUBE-POSTROUTING comes before flannel's MASQUERADE, as in the note's screenshots.
"""
from __future__ import annotations

from .. import plan as P
from . import kubeproxy, kubeproxy_ipvs, kubeproxy_nft, masq


def services_of(cluster) -> list[kubeproxy.Service]:
    """The model's services as kube-proxy sees them: endpoints are the selected pods' IPs.
    A headless service has no cluster IP, so kube-proxy has nothing to do for it (only the
    cluster DNS names its endpoints)."""
    out = []
    for s in cluster.services.values():
        if s.headless:
            continue
        for port in s.ports:
            # a pod without the named targetPort is no endpoint of this port (FindPort fails)
            eps = tuple(kubeproxy.Endpoint(ip=str(cluster.pods[pod].ip.ip), node=cluster.pods[pod].node)
                        for pod in s.endpoints if port.target_port is not None)
            out.append(kubeproxy.Service(name=s.name, namespace=s.namespace, port=port.port, port_name=port.name,
                                         target_port=port.target_port or port.port,
                                         cluster_ip=str(s.cluster_ip), protocol=port.protocol, type=s.type,
                                         node_port=port.node_port, endpoints=eps,
                                         external_local=s.external_policy == "Local",
                                         internal_local=s.internal_policy == "Local",
                                         affinity_timeout=s.affinity_timeout))
    return out


def chains_of(cluster) -> dict[str, list[str]]:
    """Service name -> per port, the kube-proxy chain that picks the endpoint of its cluster
    IP in the cluster's mode: KUBE-SVC-<hash>, or KUBE-SVL-<hash> with internalTrafficPolicy
    Local (iptables); service-/local-<hash>-<ns>/<name>/<proto>/<port> (nftables); the
    cluster IP's IPVS virtual server (ipvs: "persistent T" with session affinity, "local
    real servers" with internalTrafficPolicy Local).  With externalTrafficPolicy Local the
    node port's local chain follows ("nodePort: ..."), with session affinity how it sticks.
    "-" for a port without endpoints (nothing picks: kube-proxy rejects)."""
    if cluster.proxy_mode == "iptables":
        cluster_chain, local_chain, node_port_chain = kubeproxy.svc_chain, kubeproxy.svl_chain, kubeproxy.svl_chain
        sticky = " (affinity: -m recent, {} s)"
    elif cluster.proxy_mode == "nftables":
        cluster_chain, local_chain = kubeproxy_nft.service_chain, kubeproxy_nft.local_chain
        node_port_chain, sticky = local_chain, " (affinity: @affinity- sets, {} s)"
    elif cluster.proxy_mode == "ipvs":            # the virtual server names its persistence
        cluster_chain, sticky = kubeproxy_ipvs.virtual_server_name, ""
        local_chain = lambda s: f"{kubeproxy_ipvs.virtual_server_name(s)} (local real servers)"   # noqa: E731
        node_port_chain = lambda s: f"{kubeproxy_ipvs.node_port_name(s)} (local real servers)"    # noqa: E731
    else:
        return {}
    out: dict[str, list[str]] = {}
    for s in services_of(cluster):
        text = "-"
        if s.endpoints:
            text = (local_chain if s.internal_local else cluster_chain)(s)
            if s.external_local and s.node_port is not None:
                text += f"; nodePort: {node_port_chain(s)}"
            if s.affinity_timeout:
                text += sticky.format(s.affinity_timeout)
        out.setdefault(s.name, []).append(text)
    return out


def compile_services(topo, plan: P.Plan) -> None:
    cluster = topo.cluster
    if cluster is None:
        return
    # Every cluster node gets flanneld's rules, as flanneld's defaults install them:
    # --ip-masq (true unless `ipMasq: false`) and --iptables-forward-rules (always).
    # With EnableNFTables the same rules go into flannel's own nftables table instead.
    services = services_of(cluster)
    mode = cluster.proxy_mode
    for node in cluster.nodes.values():
        ns = topo.nodes[node.name].ns
        network, subnet = str(cluster.network), str(node.subnet)
        if cluster.enable_nftables:
            text, nft = "", masq.nft_rules(network, subnet, ip_masq=cluster.ip_masq)
        else:
            text, nft = masq.rules(network, subnet, ip_masq=cluster.ip_masq), ""
        kp_node = kubeproxy.Node(name=node.name, ip=str(node.ip), pod_cidr=subnet, cluster_cidr=network)
        if services and mode == "iptables":
            for key, value in kubeproxy.sysctls().items():
                plan.add(P.Sysctl(ns, key, value))
            text += kubeproxy.rules(kp_node, services)
        elif services and mode == "nftables":
            nft += kubeproxy_nft.rules(kp_node, services, service_cidr=str(cluster.service_cidr))
        elif services and mode == "ipvs":
            text += kubeproxy_ipvs.add_ops(plan, ns, kp_node, services)
        if text:
            plan.add(P.Iptables(ns, text))
        if nft:
            plan.add(P.Nftables(ns, nft))
