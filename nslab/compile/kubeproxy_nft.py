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

Traffic policies and session affinity as syncProxyRules writes them (the decisions are
kubeproxy.policy's, shared with the iptables mode): internalTrafficPolicy Local sends the
clusterIP to "local-<base>" (no local endpoint: @no-endpoint-services' verdict drop),
externalTrafficPolicy Local keeps the client's source in "external-<base>" (pod traffic
and `fib saddr type local` short-circuited to the service- chain, the rest to local-; no
local endpoint: @no-endpoint-nodeports' drop); sessionAffinity ClientIP gives each endpoint
a set "affinity-<endpoint base>" (flags dynamic,timeout, timeout StickyMaxAgeSeconds), an
`ip saddr @affinity-X goto endpoint-X` rule before the numgen one and an
`update @affinity-X { ip saddr }` in the endpoint chain.

Not mirrored (as in kubeproxy.py): load balancers and their source ranges (the firewall map
stays empty), externalIPs, IPv6, partial syncs, terminating endpoints and topology hints.

Pure: standard library only; the output is one text for `nft -f -` in the node's namespace.
"""
from __future__ import annotations

import base64
import functools
import hashlib
import ipaddress

from .kubeproxy import Node, Service, check_services, endpoint_string, masquerade_mark, policy

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

@functools.lru_cache(maxsize=1 << 16)      # every node of a cluster asks for the same names
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


def local_chain(s: Service) -> str:
    """localPolicyChainName: local-<base>."""
    return "local-" + service_chain_base(s)


def _endpoint_base(s: Service, endpoint: str) -> str:
    """servicePortEndpointChainNameBase: the endpoint "ip:port" written "ip/port" after "__"."""
    ip, port = endpoint.rsplit(":", 1)
    return hash_and_truncate(f"{s.namespace}/{s.name}/{s.proto}/{s.port_name}__{ip}/{port}")


def endpoint_chain(s: Service, endpoint: str) -> str:
    """newEndpointInfo's chainName: endpoint-<servicePortEndpointChainNameBase>."""
    return "endpoint-" + _endpoint_base(s, endpoint)


def affinity_set(s: Service, endpoint: str) -> str:
    """newEndpointInfo's affinitySetName: affinity-<servicePortEndpointChainNameBase>."""
    return "affinity-" + _endpoint_base(s, endpoint)


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

    def collection(self, kind: str, name: str, type_: str, comment: str | None = None, *, flags: str = "",
                   timeout: int | None = None) -> None:
        """knftables' Set/Map: type, flags, timeout, comment, in that order."""
        spec = [f"type {type_} ;"] + ([f"flags {flags} ;"] if flags else []) + \
            ([f"timeout {timeout}s ;"] if timeout is not None else []) + ([f'comment "{comment}" ;'] if comment else [])
        self.add(f"add {kind} {self.prefix} {name} {{ {' '.join(spec)} }}")

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


def _service(tx: _Tx, s: Service, node: str, cluster_cidr: str) -> None:
    """One service port of syncProxyRules on `node` (its local endpoints)."""
    proto, name = s.proto, s.port_name_string
    p = policy(s, node)
    svc, loc, ext = service_chain(s), local_chain(s), external_chain(s)
    internal = loc if s.internal_local else svc          # internalTrafficChain
    external = loc if s.external_local else svc          # externalPolicyChain
    for ep in p.reachable:                           # "Note the endpoint chains that will be used"
        tx.ensure_chain(endpoint_chain(s, endpoint_string(s, ep)))
    if p.uses_cluster_chain:
        tx.ensure_chain(svc)
    if p.uses_local_chain:
        tx.ensure_chain(loc)
    if p.uses_ext:                                   # usesExternalTrafficChain
        tx.ensure_chain(ext)
    # the filter verdicts: reject a service without endpoints, drop one whose Local policy
    # finds none on this node
    internal_verdict = "drop" if p.internal_drop else "goto reject-chain"
    external_verdict = "drop" if p.external_drop else "goto reject-chain"
    # Capture the clusterIP.
    tx.element("cluster-ips", (s.cluster_ip,))
    if p.has_internal:
        tx.element("service-ips", (s.cluster_ip, proto, s.port), f"goto {internal}")
    else:
        tx.element("no-endpoint-services", (s.cluster_ip, proto, s.port), internal_verdict, comment=name)
    # Capture nodeports.
    if s.node_port is not None:
        if p.has_endpoints:
            tx.element("service-nodeports", (proto, s.node_port), f"goto {ext}")
        if not p.has_external:
            tx.element("no-endpoint-nodeports", (proto, s.node_port), external_verdict, comment=name)
    # internal traffic: off-cluster sources to the clusterIP are masqueraded (IfNotLocalNFT)
    if p.has_internal:
        tx.rule(internal, f"ip daddr {s.cluster_ip} {proto} dport {s.port} ip saddr != {cluster_cidr} "
                          f"jump mark-for-masquerade")
    if p.uses_ext:
        if not s.external_local:                     # Cluster external policy: masquerade
            tx.rule(ext, "jump mark-for-masquerade")
        else:                                        # Local: keep the source; short-circuit pods and the node
            tx.rule(ext, f"ip saddr {cluster_cidr} goto {svc}", comment="short-circuit pod traffic")
            tx.rule(ext, "fib saddr type local jump mark-for-masquerade", comment="masquerade local traffic")
            tx.rule(ext, f"fib saddr type local goto {svc}", comment="short-circuit local traffic")
        if p.has_external:
            tx.rule(ext, f"goto {external}")
    if s.affinity_timeout:                           # the per-endpoint affinity sets
        for ep in p.reachable:
            tx.collection("set", affinity_set(s, endpoint_string(s, ep)), "ipv4_addr", flags="dynamic,timeout",
                          timeout=s.affinity_timeout)
    if p.uses_cluster_chain:
        _to_endpoints(tx, s, svc, p.cluster)
    if p.uses_local_chain:
        _to_endpoints(tx, s, loc, p.local)
    for ep in p.reachable:                           # the per-endpoint chains
        target = endpoint_string(s, ep)
        chain = endpoint_chain(s, target)
        tx.rule(chain, f"ip saddr {ep.ip} jump mark-for-masquerade")      # hairpin
        if s.affinity_timeout:
            tx.rule(chain, f"update @{affinity_set(s, target)} {{ ip saddr }}")
        tx.rule(chain, f"meta l4proto {proto} dnat to {target}")


def _to_endpoints(tx: _Tx, s: Service, chain: str, eps) -> None:
    """writeServiceToEndpointRules: the affinity rules first, then `numgen random mod N vmap`."""
    chains = [endpoint_chain(s, endpoint_string(s, ep)) for ep in eps]
    for ep, target in zip(eps, chains) if s.affinity_timeout else ():
        tx.rule(chain, f"ip saddr @{affinity_set(s, endpoint_string(s, ep))} goto {target}")
    vmap = " , ".join(f"{i} : goto {c}" for i, c in enumerate(chains))     # knftables.Concat's spacing
    tx.rule(chain, f"numgen random mod {len(eps)} vmap {{ {vmap} }}")


def rules(node: Node, services, *, service_cidr: str | None = None, mark: str | None = None) -> str:
    """The `nft -f` text of kube-proxy's first full sync in `node`: one transaction.  Only
    setupNFTables names the node (its address in @nodeport-ips); the services' part is the
    same on every node of a cluster, unless a Local traffic policy makes it the node's, and
    computed once (_services_text, cached)."""
    if service_cidr is not None:
        service_cidr = str(ipaddress.IPv4Network(service_cidr, strict=True))
    mark = mark or masquerade_mark()
    tx = _Tx()
    _setup(tx, node, mark, service_cidr)
    services = tuple(services)
    local = node.name if any(s.local_policy for s in services) else ""
    return "\n".join(tx.lines) + "\n" + _services_text(services, local, node.cluster_cidr)


@functools.lru_cache(maxsize=8)
def _services_text(services: tuple, node: str, cluster_cidr: str) -> str:
    services = sorted(services, key=lambda s: (s.port_name_string, s.proto))
    check_services(services)
    tx = _Tx()
    for s in services:
        _service(tx, s, node, cluster_cidr)
    return "".join(line + "\n" for line in tx.lines)
