"""Cluster DNS, as a kubeadm cluster runs it: what the coredns pod answers, and the
resolv.conf kubelet gives every other pod.

The design (issue 23.4), faithful where a cluster's parts show:
- kube-system/kube-dns is a Service like any other (model/services.py adds it): kube-proxy's
  rules on every node DNAT its cluster IP, 10.96.0.10:53/UDP, to the coredns pod's address
  (compile/services.py compiles it with the others; no special case in kubeproxy.py);
- the coredns pod is a pod like any other, on one node's cni0 (the first node's, as
  kubeadm's CoreDNS lands on the control plane, unless `dns: {node: N}`);
- the server in it is one process, nslab/runtime/dns.py (a plan Daemon op of kind "dns",
  started by the lab agent through nslab/spawn.py, recorded before it acts, restarted if it
  dies, stopped by `down`), named `coredns` in `ps` and `ss -ulpn`.  It answers what
  CoreDNS's kubernetes plugin answers for services (plugin/kubernetes: A for
  NAME.NAMESPACE.svc.cluster.local, the cluster IP, or a headless service's endpoints; PTR
  for a cluster IP), and NXDOMAIN at once for anything else: a lab has no upstream to
  forward to (kubeadm's Corefile forwards to the node's resolv.conf);
- kubelet writes each pod's /etc/resolv.conf for dnsPolicy ClusterFirst
  (pkg/kubelet/network/dns: nameserver the cluster DNS, search NS.svc.DOMAIN svc.DOMAIN
  DOMAIN, options ndots:5); the coredns pod itself has dnsPolicy Default: the node's, here
  the lab's own (lab.RESOLV_CONF).  nslab bind-mounts it as `ip netns exec` does the lab's.
Not modelled: kube-dns's dns-tcp and metrics ports, pod records (A-B-C-D.NS.pod), SRV
records, a second coredns replica.
"""
from __future__ import annotations

from .. import plan as P
from ..model.services import DNS_NAMESPACE

DOMAIN = "cluster.local"       # kubelet's default clusterDomain
NDOTS = 5                      # kubelet's ndots for ClusterFirst pods


def records(cluster) -> list[tuple[str, str]]:
    """("a", "NAME.NAMESPACE=IP") per service, its cluster IP; ("headless",
    "NAME.NAMESPACE=IP,IP...") per headless service, its endpoints in pod order."""
    out = []
    for s in cluster.services.values():
        ips = [str(cluster.pods[p].ip.ip) for p in s.endpoints] if s.headless else [str(s.cluster_ip)]
        if not ips:                     # headless without endpoints (no selector): no record,
            continue                    # NXDOMAIN (CoreDNS has no address to give either)
        out.append(("headless" if s.headless else "a", f"{s.name}.{s.namespace}={','.join(ips)}"))
    return out


def resolv_conf(dns_ip: str, namespace: str) -> str:
    """The /etc/resolv.conf kubelet writes for a ClusterFirst pod in `namespace`."""
    search = f"{namespace}.svc.{DOMAIN} svc.{DOMAIN} {DOMAIN}"
    return f"search {search}\nnameserver {dns_ip}\noptions ndots:{NDOTS}\n"


def compile_dns(topo, plan: P.Plan) -> None:
    cluster = topo.cluster
    if cluster is None or cluster.dns is None:
        return
    pod = cluster.pods[cluster.dns]
    dns_ip = next(str(s.cluster_ip) for s in cluster.services.values()
                  if s.namespace == DNS_NAMESPACE and s.selector == cluster.dns)
    plan.add(P.Daemon(ns=topo.nodes[pod.name].ns, node=pod.name, kind="dns", dev="",
                      config=(("domain", DOMAIN), ("address", str(pod.ip.ip)), *records(cluster))))
    for other in cluster.pods.values():
        if other.name != pod.name:       # coredns: dnsPolicy Default, the node's (the lab's)
            plan.notes.setdefault(other.name, {})["resolv.conf"] = resolv_conf(dns_ip, other.namespace)
