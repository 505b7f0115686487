"""kube-proxy's nftables mode, computed for one node: the `nft -f` transaction it runs.

Mirrors kube-proxy's nftables proxier of its GA releases (`pkg/proxy/nftables/proxier.go` as
of the ServiceCIDR-aware cluster-ips-check and the nftElementStorage maps): setupNFTables, then syncProxyRules' loop over the service
ports and writeServiceToEndpointRules, written as knftables writes a Transaction (one
"add/flush/delete ..." line per operation, base chain priorities as numbers).  This is the
first, full sync of a fresh kube-proxy (proxier.flushed is false: each base chain is added and
deleted once before it is created, as kube-proxy does to reset their properties).

Settings, as for the iptables mode (kubeproxy.py): masqueradeBit 14, masqueradeAll false,
detectLocalMode ClusterCIDR (flannel's Network), and nftables mode's default
nodePortAddresses "primary": the node's own address is the only element of @nodeport-ips,
so NodePorts answer on the node's address (not on every local address, as the iptables mode's
`--dst-type LOCAL` does).  The service CIDR is the cluster's (a ServiceCIDR object, GA in
v1.33): traffic to an unallocated cluster IP is dropped, to a wrong port of one rejected.

Chain names (the functions are kube-proxy's; tests check them against the names in kube-proxy's
own proxier_test.go):
- servicePortChainNameBase: "<ns>/<name>/<proto>/<portname>" behind hashAndTruncate, i.e. 8
  characters of base32(sha256(that text)), "-", the text (cut to 240 with "..."); the chains
  are "service-" (Cluster policy), "external-" (NodePort) + that base;
- servicePortEndpointChainNameBase: the same with "__<ip>/<port>" appended, chain
  "endpoint-" + base.
Endpoints are in the EndpointSliceCache's order (sorted by "ip:port"), the index of each in
`numgen random mod N vmap { 0 : goto ..., 1 : ... }`.  Services, visited by kube-proxy in
Go map order, are sorted by service port name so the text is stable.

Later proxier.go versions (read beside it) rename the filter base chains
(filter-prerouting-pre-dnat, filter-output-pre-dnat), hook filter-input/forward/output at
priority 0 and match the clusterIP masquerade rule without its port; the nat side, the sets
and maps and every chain name are the same.

Not mirrored (as in kubeproxy.py): session affinity, Local traffic policies, load balancers
and their source ranges (the firewall map stays empty), externalIPs, IPv6, partial syncs.

Pure: standard library only; the output is one text for `nft -f -` in the node's namespace.
"""
from __future__ import annotations

import base64
import functools
import hashlib
import ipaddress

from .kubeproxy import Node, Service, check_services, endpoint_string, endpoints_in_order, masquerade_mark

TABLE = "kube-proxy"                       # kubeProxyTable
FAMILY = "ip"                              # knftables.IPv4Family
NAME_LENGTH_MAX = 256                      # knftables.NameLengthMax
CHAIN_PREFIX_LENGTH_MAX = 16               # chainNamePrefixLengthMax
CHAIN_BASE_LENGTH_MAX = NAME_LENGTH_MAX - CHAIN_PREFIX_LENGTH_MAX

# nftablesBaseChains: (name, type, hook, priority); knftables writes the priority as a number
# (ParsePriority: dstnat = -100, srcnat = 100).
BASE_CHAINS = (
    ("filter-prerouting", "filter", "prerouting", -110),
    ("filter-input", "filter", "input", -110),
    ("filter-forward", "filter", "forward", -110),
    ("filter-output", "filter", "output", -110),
    ("filter-output-post-dnat", "filter", "output", -90),
    ("nat-prerouting", "nat", "prerouting", -100),
    ("nat-output", "nat", "output", -100),
    ("nat-postrouting", "nat", "postrouting", 100),
)

# nftablesJumpChains: (destination chain, source chain, extra match)
JUMP_CHAINS = (
    ("nodeport-endpoints-check", "filter-input", "ct state new"),
    ("service-endpoints-check", "filter-input", "ct state new"),
    ("service-endpoints-check", "filter-forward", "ct state new"),
    ("service-endpoints-check", "filter-output", "ct state new"),
    ("firewall-check", "filter-prerouting", "ct state new"),
    ("firewall-check", "filter-output", "ct state new"),
    ("services", "nat-output", ""),
    ("services", "nat-prerouting", ""),
    ("masquerading", "nat-postrouting", ""),
    ("cluster-ips-check", "filter-forward", "ct state new"),
    ("cluster-ips-check", "filter-output-post-dnat", "ct state new"),
)


# --- chain names ------------------------------------------------------------------------------

def hash_and_truncate(name: str) -> str:
    """hashAndTruncate: base32(sha256(name))[:8] + "-" + name, cut to 240 characters."""
    h = base64.b32encode(hashlib.sha256(name.encode()).digest()).decode()[:8]
    name = f"{h}-{name}"
    if len(name) > CHAIN_BASE_LENGTH_MAX:
        name = name[:CHAIN_BASE_LENGTH_MAX - 3] + "..."
    return name


def service_chain_base(s: Service) -> str:
    """servicePortChainNameBase: "HASH-namespace/name/protocol/portName"."""
    return hash_and_truncate(f"{s.namespace}/{s.name}/{s.proto}/{s.port_name}")


def service_chain(s: Service) -> str:
    """clusterPolicyChainName: service-<base>."""
    return "service-" + service_chain_base(s)


def external_chain(s: Service) -> str:
    """externalChainName: external-<base>."""
    return "external-" + service_chain_base(s)


def endpoint_chain(s: Service, endpoint: str) -> str:
    """newEndpointInfo's chainName: endpoint-<servicePortEndpointChainNameBase>, the
    endpoint "ip:port" written "ip/port" after "__"."""
    ip, port = endpoint.rsplit(":", 1)
    return "endpoint-" + hash_and_truncate(f"{s.namespace}/{s.name}/{s.proto}/{s.port_name}__{ip}/{port}")


# --- the transaction, as knftables writes it ----------------------------------------------------

class _Tx:
    """knftables.Transaction's text: each operation one line, "<verb> <type> ip kube-proxy ..."."""

    def __init__(self, table: str = TABLE):
        self.prefix = f"{FAMILY} {table}"
        self.lines: list[str] = []
        self.chains: set[str] = set()      # ensureChain's createdChains

    def add(self, line: str) -> None:
        self.lines.append(line)

    def table(self, comment: str) -> None:
        self.add(f'add table {self.prefix} {{ comment "{comment}" ; }}')

    def chain(self, name: str, *, type_hook_prio: tuple | None = None, comment: str | None = None) -> None:
        spec = []
        if type_hook_prio:
            t, hook, prio = type_hook_prio
            spec.append(f"type {t} hook {hook} priority {prio} ;")
        if comment:
            spec.append(f'comment "{comment}" ;')
        self.add(f"add chain {self.prefix} {name}" + (" { " + " ".join(spec) + " }" if spec else ""))

    def ensure_chain(self, name: str) -> None:
        """ensureChain: add and flush a chain once per transaction."""
        if name in self.chains:
            return
        self.chains.add(name)
        self.chain(name)
        self.flush("chain", name)

    def flush(self, kind: str, name: str) -> None:
        self.add(f"flush {kind} {self.prefix} {name}")

    def delete(self, kind: str, name: str) -> None:
        self.add(f"delete {kind} {self.prefix} {name}")

    def rule(self, chain: str, rule: str, comment: str | None = None) -> None:
        self.add(f"add rule {self.prefix} {chain} {rule}" + (f' comment "{comment}"' if comment else ""))

    def collection(self, kind: str, name: str, type_: str, comment: str) -> None:
        self.add(f'add {kind} {self.prefix} {name} {{ type {type_} ; comment "{comment}" ; }}')

    def element(self, name: str, key: tuple, value: str | None = None, comment: str | None = None) -> None:
        text = " . ".join(str(k) for k in key)
        if comment:
            text += f' comment "{comment}"'
        if value is not None:
            text += f" : {value}"
        self.add(f"add element {self.prefix} {name} {{ {text} }}")


def _setup(tx: _Tx, node: Node, mark: str, service_cidr: str | None) -> None:
    """setupNFTables (IPv4, nodePortAddresses "primary": not MatchAll)."""
    tx.table("rules for kube-proxy")
    for name, *_ in BASE_CHAINS:                      # !proxier.flushed: add+delete once
        tx.chain(name)
        tx.delete("chain", name)
    for name, t, hook, prio in BASE_CHAINS:
        tx.chain(name, type_hook_prio=(t, hook, prio))
        tx.flush("chain", name)
    for dst, src, extra in JUMP_CHAINS:
        tx.ensure_chain(dst)
        tx.rule(src, " ".join(w for w in (extra, "jump", dst) if w))
    for name in ("services", "cluster-ips-check", "masquerading", "mark-for-masquerade"):
        tx.ensure_chain(name)
    tx.rule("mark-for-masquerade", f"mark set mark or {mark}")
    tx.rule("masquerading", f"mark and {mark} == 0 return")
    tx.rule("masquerading", f"mark set mark xor {mark}")
    tx.rule("masquerading", "masquerade fully-random")
    tx.collection("set", "cluster-ips", "ipv4_addr", "Active ClusterIPs")
    tx.rule("cluster-ips-check", "ip daddr @cluster-ips reject", comment="Reject traffic to invalid ports of ClusterIPs")
    if service_cidr:
        tx.rule("cluster-ips-check", f"ip daddr {{ {service_cidr} }} drop",
                comment="Drop traffic to unallocated ClusterIPs")
    tx.collection("set", "nodeport-ips", "ipv4_addr", "IPs that accept NodePort traffic")
    tx.flush("set", "nodeport-ips")
    tx.element("nodeport-ips", (node.ip,))
    tx.collection("map", "no-endpoint-services", "ipv4_addr . inet_proto . inet_service : verdict",
                  "vmap to drop or reject packets to services with no endpoints")
    tx.collection("map", "no-endpoint-nodeports", "inet_proto . inet_service : verdict",
                  "vmap to drop or reject packets to service nodeports with no endpoints")
    tx.chain("reject-chain", comment="helper for @no-endpoint-services / @no-endpoint-nodeports")
    tx.flush("chain", "reject-chain")
    tx.rule("reject-chain", "reject")
    tx.rule("service-endpoints-check", "ip daddr . meta l4proto . th dport vmap @no-endpoint-services")
    tx.rule("nodeport-endpoints-check", "ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports")
    tx.collection("map", "firewall-ips", "ipv4_addr . inet_proto . inet_service : verdict",
                  "destinations that are subject to LoadBalancerSourceRanges")
    tx.ensure_chain("firewall-check")
    tx.rule("firewall-check", "ip daddr . meta l4proto . th dport vmap @firewall-ips")
    tx.collection("map", "service-ips", "ipv4_addr . inet_proto . inet_service : verdict",
                  "ClusterIP, ExternalIP and LoadBalancer IP traffic")
    tx.collection("map", "service-nodeports", "inet_proto . inet_service : verdict", "NodePort traffic")
    tx.rule("services", "ip daddr . meta l4proto . th dport vmap @service-ips")
    tx.rule("services", "ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports")
    # the element storages' reset: each set and map flushed
    for kind, name in (("set", "cluster-ips"), ("map", "service-ips"), ("map", "firewall-ips"),
                       ("map", "no-endpoint-services"), ("map", "no-endpoint-nodeports"),
                       ("map", "service-nodeports")):
        tx.flush(kind, name)


def _service(tx: _Tx, s: Service, cluster_cidr: str) -> None:
    """One service port of syncProxyRules (Cluster traffic policies, no affinity)."""
    proto, name = s.proto, s.port_name_string
    eps = endpoints_in_order(s)
    has_endpoints = bool(eps)
    svc, ext = service_chain(s), external_chain(s)
    for ep in eps:                                   # "Note the endpoint chains that will be used"
        tx.ensure_chain(endpoint_chain(s, endpoint_string(s, ep)))
    if has_endpoints:                                # usesClusterPolicyChain
        tx.ensure_chain(svc)
    uses_ext = has_endpoints and s.node_port is not None      # ExternallyAccessible: a NodePort
    if uses_ext:
        tx.ensure_chain(ext)
    # Capture the clusterIP.
    tx.element("cluster-ips", (s.cluster_ip,))
    if has_endpoints:
        tx.element("service-ips", (s.cluster_ip, proto, s.port), f"goto {svc}")
    else:
        tx.element("no-endpoint-services", (s.cluster_ip, proto, s.port), "goto reject-chain", comment=name)
    # Capture nodeports.
    if s.node_port is not None:
        if has_endpoints:
            tx.element("service-nodeports", (proto, s.node_port), f"goto {ext}")
        else:
            tx.element("no-endpoint-nodeports", (proto, s.node_port), "goto reject-chain", comment=name)
    if not has_endpoints:
        return
    # internal traffic: off-cluster sources to the clusterIP are masqueraded (IfNotLocalNFT)
    tx.rule(svc, f"ip daddr {s.cluster_ip} {proto} dport {s.port} ip saddr != {cluster_cidr} jump mark-for-masquerade")
    if uses_ext:                                     # Cluster external policy: masquerade, then the service
        tx.rule(ext, "jump mark-for-masquerade")
        tx.rule(ext, f"goto {svc}")
    # writeServiceToEndpointRules
    chains = [endpoint_chain(s, endpoint_string(s, ep)) for ep in eps]
    vmap = " , ".join(f"{i} : goto {c}" for i, c in enumerate(chains))     # knftables.Concat's spacing
    tx.rule(svc, f"numgen random mod {len(eps)} vmap {{ {vmap} }}")
    for ep, chain in zip(eps, chains):               # the per-endpoint chains
        tx.rule(chain, f"ip saddr {ep.ip} jump mark-for-masquerade")      # hairpin
        tx.rule(chain, f"meta l4proto {proto} dnat to {endpoint_string(s, ep)}")


def rules(node: Node, services, *, service_cidr: str | None = None, mark: str | None = None) -> str:
    """The `nft -f` text of kube-proxy's first full sync in `node`: one transaction.  Only
    setupNFTables names the node (its address in @nodeport-ips); the services' part is the
    same on every node of a cluster and computed once (_services_text, cached)."""
    if service_cidr is not None:
        service_cidr = str(ipaddress.IPv4Network(service_cidr, strict=True))
    mark = mark or masquerade_mark()
    tx = _Tx()
    _setup(tx, node, mark, service_cidr)
    return "\n".join(tx.lines) + "\n" + _services_text(tuple(services), node.cluster_cidr)


@functools.lru_cache(maxsize=8)
def _services_text(services: tuple, cluster_cidr: str) -> str:
    services = sorted(services, key=lambda s: (s.port_name_string, s.proto))
    check_services(services)
    tx = _Tx()
    for s in services:
        _service(tx, s, cluster_cidr)
    return "".join(line + "\n" for line in tx.lines)
