"""kube-proxy's iptables mode, computed for one node: the iptables-restore text it installs.

Mirrors Kubernetes v1.27 (release-1.27 `pkg/proxy/iptables/proxier.go`: syncProxyRules,
writeServiceToEndpointRules, the chain-name functions).  The note's chapter is from April
2023 (v1.27.0 came out on 11 April 2023) and its screenshots show what v1.24+ writes:
KUBE-EXT-* chains, and the clusterIP KUBE-MARK-MASQ rule inside KUBE-SVC-* instead of
KUBE-SERVICES.  Settings are kubeadm's
defaults for a flannel cluster: masqueradeBit 14, masqueradeAll false, detectLocalMode
ClusterCIDR (clusterCIDR = flannel's Network), nodePortAddresses empty, localhostNodePorts
true, iptables with --random-fully.

What is mirrored exactly:
- chain names: "KUBE-SVC-"/"KUBE-EXT-"/... + the first 16 characters of
  base32(sha256(servicePortName + protocol)), KUBE-SEP- with the endpoint "ip:port"
  appended to the hashed text (portProtoHash / servicePortEndpointChainName);
  servicePortName is "namespace/name" or "namespace/name:portname", protocol lowercase;
- probabilities as kube-proxy writes them: fmt "%0.10f" of 1/n (computeProbability), e.g.
  0.3333333333, which iptables stores as a 32-bit fraction and prints back as 0.33333333349;
- the mark: fmt "%#08x" of 1<<14 = "0x00004000" (iptables-save prints 0x4000);
- rule text and order: the restore payload is written buffer by buffer as kube-proxy does
  (filter chains, filter rules, nat chains, nat rules; per service: KUBE-SERVICES,
  KUBE-NODEPORTS, KUBE-SVC masquerade, KUBE-EXT, KUBE-SVC -> KUBE-SEP, KUBE-SEP); endpoints
  sorted by their "ip:port" string (the EndpointSliceCache sorts them so); services, which
  kube-proxy visits in Go map order, sorted by service port name so the text is stable.
- the jump rules kube-proxy adds with `iptables -I` (EnsureRule Prepend) before each
  restore, including its copies of kubelet's KUBE-FIREWALL jumps, and the empty
  KUBE-PROXY-CANARY chains its monitor creates in mangle, nat and filter.  They are written
  as `-I` lines in the same call order, which leaves the built-in chains in the same order.

Traffic policies and session affinity are syncProxyRules' as of v1.27 (issue 23):
CategorizeEndpoints (every endpoint ready, no topology hints) splits the endpoints into
cluster and local (on this node) ones; internalTrafficPolicy Local sends the clusterIP to
KUBE-SVL-<hash> (or, with no local endpoint, a filter DROP "has no local endpoints");
externalTrafficPolicy Local makes KUBE-EXT keep the client's source (no KUBE-MARK-MASQ),
short-circuit pod and node traffic to KUBE-SVC, and send the rest to KUBE-SVL (no local
endpoint: a KUBE-EXTERNAL-SERVICES DROP); sessionAffinity ClientIP adds
writeServiceToEndpointRules' `-m recent --rcheck --seconds T --reap` rules and the SEP
chains' `-m recent --set`.  With a Local policy the text depends on the node (its local
endpoints); without one, every node of a cluster shares it.

Not mirrored (not in the notes): load balancers (KUBE-FW-*), externalIPs, IPv6,
partial syncs and large-cluster mode (over 1000 endpoints kube-proxy drops comments),
terminating endpoints and topology hints.

Pure: standard library only, no kernel access.  Input is plain dataclasses; the output is
text for `iptables-restore --noflush` in the node's namespace (nslab/iptables.py applies it).
"""
from __future__ import annotations

import base64
import functools
import hashlib
import ipaddress
from dataclasses import dataclass

PROTOCOLS = ("TCP", "UDP")
TYPES = ("ClusterIP", "NodePort")
NODE_PORT_RANGE = (30000, 32767)        # the apiserver's default --service-node-port-range
MASQUERADE_BIT = 14                     # kube-proxy's default --iptables-masquerade-bit


@dataclass(frozen=True)
class Endpoint:
    ip: str              # the pod's IP
    node: str            # the node the pod runs on (what a Local traffic policy keeps)


@dataclass(frozen=True)
class Service:
    """One port of a Service (a Service with two ports is two of these, with port names)."""
    name: str
    port: int
    target_port: int
    cluster_ip: str
    namespace: str = "default"
    port_name: str = ""
    protocol: str = "TCP"
    type: str = "ClusterIP"
    node_port: int | None = None
    endpoints: tuple[Endpoint, ...] = ()
    external_local: bool = False            # externalTrafficPolicy: Local
    internal_local: bool = False            # internalTrafficPolicy: Local
    affinity_timeout: int | None = None     # sessionAffinity ClientIP: StickyMaxAgeSeconds

    def __post_init__(self):
        problem = _service_problem(self)
        if problem:
            raise ValueError(f"service {self.namespace}/{self.name}: {problem}")

    @property
    def port_name_string(self) -> str:
        """proxy.ServicePortName.String(): "ns/name", or "ns/name:port" for a named port."""
        return f"{self.namespace}/{self.name}" + (f":{self.port_name}" if self.port_name else "")

    @property
    def proto(self) -> str:
        return self.protocol.lower()

    @property
    def local_policy(self) -> bool:
        return self.external_local or self.internal_local

    def uses_cluster_endpoints(self) -> bool:
        """BaseServicePortInfo.UsesClusterEndpoints: even with externalTrafficPolicy Local,
        an externally accessible service needs its cluster endpoints (short-circuiting)."""
        return not self.internal_local or self.node_port is not None

    def uses_local_endpoints(self) -> bool:
        """BaseServicePortInfo.UsesLocalEndpoints."""
        return self.internal_local or (self.external_local and self.node_port is not None)


@dataclass(frozen=True)
class Node:
    name: str
    ip: str              # the node's address (kube-proxy needs it only for load balancers)
    pod_cidr: str        # its flannel subnet (detectLocalMode NodeCIDR would use it; not the default)
    cluster_cidr: str    # flannel's Network: what "local" (pod) traffic is


def _port_ok(p) -> bool:
    return isinstance(p, int) and not isinstance(p, bool) and 0 < p < 65536


def _service_problem(s: Service) -> str | None:
    if s.protocol not in PROTOCOLS:
        return f"protocol must be one of {', '.join(PROTOCOLS)}, not {s.protocol!r}"
    if s.type not in TYPES:
        return f"type must be one of {', '.join(TYPES)}, not {s.type!r}"
    for what, p in (("port", s.port), ("targetPort", s.target_port)):
        if not _port_ok(p):
            return f"{what} must be 1..65535, not {p!r}"
    if s.type == "NodePort":
        lo, hi = NODE_PORT_RANGE
        if not (isinstance(s.node_port, int) and lo <= s.node_port <= hi):
            return f"nodePort must be {lo}..{hi} for a NodePort service, not {s.node_port!r}"
    elif s.node_port is not None:
        return "nodePort is only for type NodePort"
    try:
        ipaddress.IPv4Address(s.cluster_ip)
        for ep in s.endpoints:
            ipaddress.IPv4Address(ep.ip)
    except ValueError as e:
        return str(e)
    if len({ep.ip for ep in s.endpoints}) != len(s.endpoints):
        return "an endpoint IP is listed twice"
    if s.affinity_timeout is not None and not (_port_ok(s.affinity_timeout) and s.affinity_timeout <= 86400):
        return f"the session affinity timeout must be 1..86400 seconds, not {s.affinity_timeout!r}"
    return None


# --- chain names (pkg/proxy/iptables/proxier.go) ------------------------------------------------

@functools.lru_cache(maxsize=1 << 16)      # every node of a cluster asks for the same names
def _hash16(text: str) -> str:
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()[:16]


def port_proto_hash(service_port_name: str, protocol: str) -> str:
    """portProtoHash: 16 characters of base32(sha256(servicePortName + protocol))."""
    return _hash16(service_port_name + protocol)


def svc_chain(s: Service) -> str:
    """servicePortPolicyClusterChain: KUBE-SVC-<hash>."""
    return "KUBE-SVC-" + port_proto_hash(s.port_name_string, s.proto)


def ext_chain(s: Service) -> str:
    """serviceExternalChainName: KUBE-EXT-<hash> (same hash as the KUBE-SVC chain)."""
    return "KUBE-EXT-" + port_proto_hash(s.port_name_string, s.proto)


def svl_chain(s: Service) -> str:
    """servicePortPolicyLocalChainName: KUBE-SVL-<hash>."""
    return "KUBE-SVL-" + port_proto_hash(s.port_name_string, s.proto)


def sep_chain(s: Service, endpoint: str) -> str:
    """servicePortEndpointChainName: KUBE-SEP-<hash of name + protocol + "ip:port">."""
    return "KUBE-SEP-" + _hash16(s.port_name_string + s.proto + endpoint)


def probability(n: int) -> str:
    """computeProbability: Go's fmt "%0.10f" of 1/n."""
    return "%0.10f" % (1.0 / n)


def masquerade_mark(bit: int = MASQUERADE_BIT) -> str:
    """Go's fmt "%#08x" of 1<<bit: eight digits after the 0x ("0x00004000")."""
    return "0x%08x" % (1 << bit)


def endpoint_string(s: Service, ep: Endpoint) -> str:
    return f"{ep.ip}:{s.target_port}"


def endpoints_in_order(s: Service) -> list[Endpoint]:
    """As the EndpointSliceCache hands them to the proxier: sorted by their "ip:port" string
    (a string sort: 10.244.10.5 comes before 10.244.2.16)."""
    return sorted(s.endpoints, key=lambda ep: endpoint_string(s, ep))


@dataclass(frozen=True)
class Policy:
    """syncProxyRules' per-service-port decisions on one node (both proxiers compute them
    alike): the endpoints CategorizeEndpoints hands out and which chains and filter verdicts
    follow from them."""
    cluster: tuple          # clusterEndpoints (sorted as endpoints_in_order)
    local: tuple            # localEndpoints
    reachable: tuple        # allLocallyReachableEndpoints
    has_endpoints: bool     # any endpoint anywhere
    has_internal: bool      # hasInternalEndpoints
    has_external: bool      # hasExternalEndpoints
    uses_cluster_chain: bool
    uses_local_chain: bool
    uses_ext: bool          # usesExternalTrafficChain
    internal_drop: bool     # no internal endpoints: DROP ("has no local endpoints"), else REJECT
    external_drop: bool


@functools.lru_cache(maxsize=1 << 14)      # asked for by the filter and the nat part alike
def policy(s: Service, node: str) -> Policy:
    """CategorizeEndpoints (all endpoints ready, no topology) and syncProxyRules' variables."""
    eps = tuple(endpoints_in_order(s))
    cluster = eps if s.uses_cluster_endpoints() else ()
    local = tuple(ep for ep in eps if ep.node == node) if s.uses_local_endpoints() else ()
    keep = set(cluster) | set(local)           # their union, in endpoint order
    reachable = tuple(ep for ep in eps if ep in keep)
    has = bool(eps)
    has_internal = has and (bool(local) if s.internal_local else True)
    has_external = has and (bool(local) if s.external_local else True)
    return Policy(cluster=cluster, local=local, reachable=reachable, has_endpoints=has, has_internal=has_internal,
                  has_external=has_external, uses_cluster_chain=bool(cluster), uses_local_chain=bool(local),
                  uses_ext=has and s.node_port is not None, internal_drop=has and not has_internal,
                  external_drop=has and not has_external)


# --- the restore text ---------------------------------------------------------------------------

def _q(text: str) -> str:
    """kube-proxy quotes multi-word comments itself (`"%s cluster IP"`); one-word ones not."""
    return f'"{text}"' if " " in text else text


def _chain_line(chain: str) -> str:
    return f":{chain} - [0:0]"                       # utiliptables.MakeChainLine


# iptablesJumpChains then iptablesKubeletJumpChains, in the order kube-proxy ensures them
# (each with EnsureRule(Prepend, ...), i.e. `iptables -I`): (table, dst chain, src chain,
# comment, extra args).
_JUMPS = (
    ("filter", "KUBE-EXTERNAL-SERVICES", "INPUT", "kubernetes externally-visible service portals",
     "-m conntrack --ctstate NEW"),
    ("filter", "KUBE-EXTERNAL-SERVICES", "FORWARD", "kubernetes externally-visible service portals",
     "-m conntrack --ctstate NEW"),
    ("filter", "KUBE-NODEPORTS", "INPUT", "kubernetes health check service ports", ""),
    ("filter", "KUBE-SERVICES", "FORWARD", "kubernetes service portals", "-m conntrack --ctstate NEW"),
    ("filter", "KUBE-SERVICES", "OUTPUT", "kubernetes service portals", "-m conntrack --ctstate NEW"),
    ("filter", "KUBE-FORWARD", "FORWARD", "kubernetes forwarding rules", ""),
    ("filter", "KUBE-PROXY-FIREWALL", "INPUT", "kubernetes load balancer firewall", "-m conntrack --ctstate NEW"),
    ("filter", "KUBE-PROXY-FIREWALL", "OUTPUT", "kubernetes load balancer firewall", "-m conntrack --ctstate NEW"),
    ("filter", "KUBE-PROXY-FIREWALL", "FORWARD", "kubernetes load balancer firewall", "-m conntrack --ctstate NEW"),
    ("nat", "KUBE-SERVICES", "OUTPUT", "kubernetes service portals", ""),
    ("nat", "KUBE-SERVICES", "PREROUTING", "kubernetes service portals", ""),
    ("nat", "KUBE-POSTROUTING", "POSTROUTING", "kubernetes postrouting rules", ""),
    ("filter", "KUBE-FIREWALL", "INPUT", "", ""),      # kubelet's, duplicated by kube-proxy
    ("filter", "KUBE-FIREWALL", "OUTPUT", "", ""),
)

CANARY = "KUBE-PROXY-CANARY"                        # ipt.Monitor's canary, in mangle, nat, filter


def _jumps(table: str) -> list[str]:
    lines = []
    for t, dst, src, comment, extra in _JUMPS:
        if t != table:
            continue
        args = [a for a in (extra, f"-m comment --comment {_q(comment)}" if comment else "") if a]
        lines.append(" ".join(["-I", src, *args, "-j", dst]))
    return lines


def _filter(services: list[Service], mark: str, node: str) -> list[str]:
    chains = [_chain_line(c) for c in ("KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-FORWARD",
                                       "KUBE-NODEPORTS", "KUBE-PROXY-FIREWALL")]
    # localhostNodePorts (default true, IPv4): kube-proxy writes kubelet's anti-martian rule
    # itself (v1.27; with route_localnet=1 it is what keeps 127/8 NodePorts from outside).
    chains.append(_chain_line("KUBE-FIREWALL"))
    rules = ['-A KUBE-FIREWALL -m comment --comment "block incoming localnet connections" -d 127.0.0.0/8 '
             '! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP']
    for s in services:
        p = policy(s, node)
        # internalTrafficFilterTarget/Comment and the external ones: REJECT a service without
        # endpoints, DROP one whose Local policy finds none on this node
        no_eps = f'"{s.port_name_string} has no endpoints"'
        no_local = f'"{s.port_name_string} has no local endpoints"'
        if not p.has_internal:
            rules.append(f"-A KUBE-SERVICES -m comment --comment {no_local if p.internal_drop else no_eps} "
                         f"-m {s.proto} -p {s.proto} -d {s.cluster_ip} --dport {s.port} "
                         f"-j {'DROP' if p.internal_drop else 'REJECT'}")
        if s.node_port and not p.has_external:
            rules.append(f"-A KUBE-EXTERNAL-SERVICES -m comment --comment {no_local if p.external_drop else no_eps} "
                         f"-m addrtype --dst-type LOCAL -m {s.proto} -p {s.proto} --dport {s.node_port} "
                         f"-j {'DROP' if p.external_drop else 'REJECT'}")
    rules += ["-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP",
              f'-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark {mark}/{mark} '
              f"-j ACCEPT",
              '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack '
              "--ctstate RELATED,ESTABLISHED -j ACCEPT"]
    return ["*filter", *chains, _chain_line(CANARY), *_jumps("filter"), *rules, "COMMIT"]


def _nat(node: Node, services: list[Service], mark: str) -> list[str]:
    chains = [_chain_line(c) for c in ("KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ")]
    rules = [f"-A KUBE-POSTROUTING -m mark ! --mark {mark}/{mark} -j RETURN",
             # clear the mark so a packet that re-traverses the stack is not masqueraded twice
             f"-A KUBE-POSTROUTING -j MARK --xor-mark {mark}",
             '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" '
             "-j MASQUERADE --random-fully",
             f"-A KUBE-MARK-MASQ -j MARK --or-mark {mark}"]
    not_local = f"! -s {node.cluster_cidr}"          # LocalTrafficDetector (ClusterCIDR).IfNotLocal()
    is_local = f"-s {node.cluster_cidr}"            # LocalTrafficDetector (ClusterCIDR).IfLocal()
    for s in services:
        p = policy(s, node.name)
        name, proto, svc, svl, ext = s.port_name_string, s.proto, svc_chain(s), svl_chain(s), ext_chain(s)
        internal = svl if s.internal_local else svc          # internalTrafficChain
        external = svl if s.external_local else svc          # externalPolicyChain
        match = f"-m {proto} -p {proto} -d {s.cluster_ip} --dport {s.port}"
        cluster_ip = f'-m comment --comment "{name} cluster IP" {match}'
        # Capture the clusterIP, then the nodePort.
        if p.has_internal:
            rules.append(f"-A KUBE-SERVICES {cluster_ip} -j {internal}")
        if s.node_port and p.has_endpoints:
            rules.append(f"-A KUBE-NODEPORTS -m comment --comment {_q(name)} -m {proto} -p {proto} "
                         f"--dport {s.node_port} -j {ext}")
        # Off-cluster sources to the clusterIP get masqueraded (they may bounce off-node).
        if p.has_internal:
            rules.append(f"-A {internal} {cluster_ip} {not_local} -j KUBE-MARK-MASQ")
        if p.uses_ext:                             # externally accessible: the EXT chain
            chains.append(_chain_line(ext))
            if not s.external_local:
                rules.append(f'-A {ext} -m comment --comment "masquerade traffic for {name} external destinations" '
                             "-j KUBE-MARK-MASQ")
            else:                                  # keep the client's source; short-circuit pods and the node
                rules += [f'-A {ext} -m comment --comment "pod traffic for {name} external destinations" '
                          f"{is_local} -j {svc}",
                          f'-A {ext} -m comment --comment "masquerade LOCAL traffic for {name} external destinations" '
                          "-m addrtype --src-type LOCAL -j KUBE-MARK-MASQ",
                          f'-A {ext} -m comment --comment "route LOCAL traffic for {name} external destinations" '
                          f"-m addrtype --src-type LOCAL -j {svc}"]
            if p.has_external:
                rules.append(f"-A {ext} -j {external}")
        for chain, eps in ((svc, p.cluster if p.uses_cluster_chain else ()),
                           (svl, p.local if p.uses_local_chain else ())):
            if eps:
                chains.append(_chain_line(chain))
                rules += _to_endpoints(s, chain, eps)
        for ep in p.reachable:                      # the per-endpoint chains
            target = endpoint_string(s, ep)
            sep = sep_chain(s, target)
            chains.append(_chain_line(sep))
            recent = f" -m recent --name {sep} --set" if s.affinity_timeout else ""     # client-affinity lists
            rules += [f"-A {sep} -m comment --comment {_q(name)} -s {ep.ip} -j KUBE-MARK-MASQ",   # hairpin
                      f"-A {sep} -m comment --comment {_q(name)}{recent} -m {proto} -p {proto} -j DNAT "
                      f"--to-destination {target}"]
    rules.append('-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the '
                 'last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS')
    return ["*nat", *chains, _chain_line(CANARY), *_jumps("nat"), *rules, "COMMIT"]


def _to_endpoints(s: Service, chain: str, eps) -> list[str]:
    """writeServiceToEndpointRules: the affinity rules first (sessionAffinity ClientIP),
    then one probabilistic rule per endpoint, the last one certain."""
    name, rules = s.port_name_string, []
    for ep in eps if s.affinity_timeout else ():
        target = endpoint_string(s, ep)
        rules.append(f'-A {chain} -m comment --comment "{name} -> {target}" -m recent --name {sep_chain(s, target)} '
                     f"--rcheck --seconds {s.affinity_timeout} --reap -j {sep_chain(s, target)}")
    for i, ep in enumerate(eps):
        target = endpoint_string(s, ep)
        stat = (f" -m statistic --mode random --probability {probability(len(eps) - i)}"
                if i < len(eps) - 1 else "")
        rules.append(f'-A {chain} -m comment --comment "{name} -> {target}"{stat} -j {sep_chain(s, target)}')
    return rules


def check_services(services) -> None:
    """What the apiserver would refuse across services: two services on one clusterIP:port/
    protocol, or on one nodePort/protocol, or the same service port twice."""
    seen: dict = {}
    for s in services:
        keys = [("service port", s.port_name_string, s.proto), ("clusterIP:port", s.cluster_ip, s.port, s.proto)]
        if s.node_port:
            keys.append(("nodePort", s.node_port, s.proto))
        for key in keys:
            if key in seen:
                raise ValueError(f"services {seen[key]} and {s.port_name_string} use the same {key[0]} "
                                 f"{'/'.join(map(str, key[1:]))}")
            seen[key] = s.port_name_string


def rules(node: Node, services, *, mark: str | None = None) -> str:
    """The iptables-restore text kube-proxy's sync leaves in `node`: filter, then nat, as in
    its RestoreAll payload, with the jump rules and canary chains it adds outside it.
    Of the node only its cluster CIDR (the local-traffic detector) and, where a service has a
    Local traffic policy, its name (which endpoints are local) shape the text, so a cluster's
    nodes share one computation otherwise (_rules, cached)."""
    services = tuple(services)
    local = node.name if any(s.local_policy for s in services) else ""
    return _rules(services, node.cluster_cidr, mark or masquerade_mark(), local)


@functools.lru_cache(maxsize=8)
def _rules(services: tuple, cluster_cidr: str, mark: str, node_name: str) -> str:
    node = Node(name=node_name, ip="", pod_cidr="", cluster_cidr=cluster_cidr)
    services = sorted(services, key=lambda s: (s.port_name_string, s.proto))
    check_services(services)
    lines = ["*mangle", _chain_line(CANARY), "COMMIT",
             *_filter(services, mark, node_name), *_nat(node, services, mark)]
    return "\n".join(lines) + "\n"


def sysctls() -> dict[str, str]:
    """What kube-proxy sets in the node besides rules (localhostNodePorts: NodePorts on
    127.0.0.1 need route_localnet)."""
    return {"net.ipv4.conf.all.route_localnet": "1"}
