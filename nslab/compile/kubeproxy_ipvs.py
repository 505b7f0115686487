"""kube-proxy's ipvs mode, computed for one node: the plan ops its sync leaves in the node.

Mirrors kube-proxy's `pkg/proxy/ipvs/proxier.go` (Kubernetes v1.30: syncProxyRules,
writeIptablesRules, acceptIPVSTraffic, createAndLinkKubeChain, syncService, syncEndpoint,
NewProxier's sysctls) and `pkg/proxy/ipvs/ipset.go` (the set names, types and comments),
with kubeadm's defaults for a flannel cluster: scheduler rr, masqueradeBit 14,
masqueradeAll false, detectLocalMode ClusterCIDR (flannel's Network), nodePortAddresses
empty (every node address), strictARP false.  What a node gets:

- the dummy device kube-ipvs0 (EnsureDummyDevice: created, never brought up) holding every
  cluster IP as a /32 (syncService with bindAddr: EnsureAddressBind).  An address on a down
  device still gets its `local` route (the kernel adds it before looking at IFF_UP), so the
  node accepts packets for the cluster IPs and IPVS picks them up in LOCAL_IN;
- IPVS virtual servers, scheduler rr, masquerading (NAT) real servers of weight 1: one per
  clusterIP:port, and for a NodePort service one per node address and nodePort (the node's
  addresses but kube-ipvs0's and loopback: GetAllLocalAddressesExcept / isValidForSet),
  loaded with one `ipvsadm-restore` (rendered by ipvsadm_text);
- kube-proxy's ipsets (ipsetInfo: all of them created, filled as syncProxyRules fills
  them), loaded with one `ipset restore`;
- the iptables rules ipvs mode keeps (writeIptablesRules): KUBE-SERVICES (masquerade
  off-cluster sources to a cluster IP, the KUBE-NODE-PORT jump, ACCEPT of cluster IPs),
  KUBE-NODE-PORT (mark NodePort traffic for masquerade), KUBE-POSTROUTING (hairpin
  KUBE-LOOP-BACK, then MASQUERADE --random-fully of marked packets), KUBE-MARK-MASQ, the
  filter table's KUBE-FORWARD and KUBE-IPVS-FILTER, and the jump rules
  (createAndLinkKubeChain: EnsureRule Prepend, written as `-I` lines);
- the sysctls NewProxier sets: net.ipv4.vs.conntrack=1 (IPVS connections go through
  conntrack, so the masquerade above applies to them), expire_nodest_conn=1,
  expire_quiescent_template=1, ip_forward=1; conn_reuse_mode is left as it is (kernels from
  5.9 on, which every kernel with this ip_vs is in practice; kube-proxy sets it to 0 before).

Session affinity and traffic policies are syncProxyRules' (issue 23):
- sessionAffinity ClientIP makes every virtual server of the service persistent
  (`serv.Flags |= FlagPersistent; serv.Timeout = StickyMaxAgeSeconds`: ipvsadm's `-p T`).
  IPVS keeps a client's template while a connection it controls lives (a closed TCP
  connection stays in IPVS's TIME_WAIT for 2 minutes, a reset one in CLOSE for 10 s), so the
  affinity lasts at least the timeout after the client's last connection has gone from
  IPVS's table.  A template that times out while a connection it controls lives is armed
  again for 60 s (ip_vs_conn_expire; kubernetes/kubernetes#89358, "ipvs session affinity
  is always sticky"), and each new connection in those 60 s is controlled by it: a client
  that connects more often than once a minute stays on its endpoint however short the
  timeout (the VM stage: a probe every 15 s, timeout 3 s, the same endpoint for 3 minutes);
- syncEndpoint(onlyNodeLocalEndpoints) picks the real servers: the cluster IP's with
  internalTrafficPolicy Local, the NodePorts' with externalTrafficPolicy Local, get the
  node's local endpoints (CategorizeEndpoints) -- and, where the node has none, the cluster
  endpoints (kubernetes PR 97081: pods on the node still reach the service).  A cluster
  IP-only service with internalTrafficPolicy Local has no cluster endpoints: its virtual
  server has no real server, and IPVS answers a new connection with ICMP port unreachable
  (ip_vs_leave), as for a service without endpoints;
- externalTrafficPolicy Local puts the NodePort in KUBE-NODE-PORT-LOCAL-TCP/UDP, whose
  KUBE-NODE-PORT rule RETURNs before the KUBE-MARK-MASQ one (ipsetWithIptablesChain): the
  client's source is kept.  On a node without a local endpoint IPVS sends the packet, source
  kept, to an endpoint on another node, which answers the client directly from the pod's
  address: the client's connection never completes (dropped, as seen from the client).

Not mirrored: externalIPs, load balancers (their sets exist, empty, as kube-proxy creates
them), IPv6, the "mh" scheduler's source-hash flag, graceful termination.
Teardown relies on the namespace: the dummy device, the sets, the IPVS tables, the rules
and the vs sysctls all belong to the node's network namespace and go when it is deleted.

Pure: standard library only, no kernel access.
"""
from __future__ import annotations

import ipaddress

from .. import plan as P
from .kubeproxy import MASQUERADE_BIT, Node, check_services, endpoint_string, masquerade_mark, policy

DUMMY = "kube-ipvs0"                    # defaultDummyDevice
SCHEDULER = "rr"                        # defaultScheduler
HASH_SIZE, MAX_ELEM, PORT_RANGE = 1024, 65536, "0-65535"    # util/ipset defaults

# ipsetInfo: (name, type, comment), in kube-proxy's order
IPSETS = (
    ("KUBE-LOOP-BACK", "hash:ip,port,ip", "Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose"),
    ("KUBE-CLUSTER-IP", "hash:ip,port", "Kubernetes service cluster ip + port for masquerade purpose"),
    ("KUBE-EXTERNAL-IP", "hash:ip,port", "Kubernetes service external ip + port for masquerade and filter purpose"),
    ("KUBE-EXTERNAL-IP-LOCAL", "hash:ip,port", "Kubernetes service external ip + port with externalTrafficPolicy=local"),
    ("KUBE-LOAD-BALANCER", "hash:ip,port", "Kubernetes service lb portal"),
    ("KUBE-LOAD-BALANCER-FW", "hash:ip,port",
     "Kubernetes service load balancer ip + port for load balancer with sourceRange"),
    ("KUBE-LOAD-BALANCER-LOCAL", "hash:ip,port",
     "Kubernetes service load balancer ip + port with externalTrafficPolicy=local"),
    ("KUBE-LOAD-BALANCER-SOURCE-IP", "hash:ip,port,ip",
     "Kubernetes service load balancer ip + port + source IP for packet filter purpose"),
    ("KUBE-LOAD-BALANCER-SOURCE-CIDR", "hash:ip,port,net",
     "Kubernetes service load balancer ip + port + source cidr for packet filter purpose"),
    ("KUBE-NODE-PORT-TCP", "bitmap:port", "Kubernetes nodeport TCP port for masquerade purpose"),
    ("KUBE-NODE-PORT-LOCAL-TCP", "bitmap:port", "Kubernetes nodeport TCP port with externalTrafficPolicy=local"),
    ("KUBE-NODE-PORT-UDP", "bitmap:port", "Kubernetes nodeport UDP port for masquerade purpose"),
    ("KUBE-NODE-PORT-LOCAL-UDP", "bitmap:port", "Kubernetes nodeport UDP port with externalTrafficPolicy=local"),
    ("KUBE-NODE-PORT-SCTP-HASH", "hash:ip,port",
     "Kubernetes nodeport SCTP port for masquerade purpose with type 'hash ip:port'"),
    ("KUBE-NODE-PORT-LOCAL-SCTP-HASH", "hash:ip,port",
     "Kubernetes nodeport SCTP port with externalTrafficPolicy=local with type 'hash ip:port'"),
    ("KUBE-HEALTH-CHECK-NODE-PORT", "bitmap:port", "Kubernetes health check node port"),
    ("KUBE-IPVS-IPS", "hash:ip", "Addresses on the ipvs interface"),
)
COMMENT = {name: comment for name, _, comment in IPSETS}

# iptablesChains (table, chain) and iptablesJumpChain (table, from, to, comment), in order
CHAINS = (("nat", "KUBE-SERVICES"), ("nat", "KUBE-POSTROUTING"), ("nat", "KUBE-NODE-PORT"),
          ("nat", "KUBE-LOAD-BALANCER"), ("nat", "KUBE-MARK-MASQ"), ("filter", "KUBE-FORWARD"),
          ("filter", "KUBE-NODE-PORT"), ("filter", "KUBE-PROXY-FIREWALL"),
          ("filter", "KUBE-SOURCE-RANGES-FIREWALL"), ("filter", "KUBE-IPVS-FILTER"),
          ("filter", "KUBE-IPVS-OUT-FILTER"))
JUMPS = (("nat", "OUTPUT", "KUBE-SERVICES", "kubernetes service portals"),
         ("nat", "PREROUTING", "KUBE-SERVICES", "kubernetes service portals"),
         ("nat", "POSTROUTING", "KUBE-POSTROUTING", "kubernetes postrouting rules"),
         ("filter", "FORWARD", "KUBE-FORWARD", "kubernetes forwarding rules"),
         ("filter", "INPUT", "KUBE-NODE-PORT", "kubernetes health check rules"),
         ("filter", "INPUT", "KUBE-PROXY-FIREWALL", "kube-proxy firewall rules"),
         ("filter", "FORWARD", "KUBE-PROXY-FIREWALL", "kube-proxy firewall rules"),
         ("filter", "INPUT", "KUBE-IPVS-FILTER", "kubernetes ipvs access filter"),
         ("filter", "OUTPUT", "KUBE-IPVS-OUT-FILTER", "kubernetes ipvs access filter"))


def sysctls() -> dict[str, str]:
    """NewProxier's sysctls for ipvs mode (strictARP false: no arp_ignore/arp_announce)."""
    return {"net.ipv4.vs.conntrack": "1", "net.ipv4.vs.expire_nodest_conn": "1",
            "net.ipv4.vs.expire_quiescent_template": "1", "net.ipv4.ip_forward": "1"}


def node_addresses(plan: P.Plan, ns: str) -> list[str]:
    """The node addresses NodePorts answer on with nodePortAddresses empty: every IPv4 address
    of the node's namespace but kube-ipvs0's and loopback ones (GetAllLocalAddressesExcept
    with isValidForSet), from the plan's Addr ops (in address order, for a stable text)."""
    found = set()
    for op in plan.ops:
        if isinstance(op, P.Addr) and op.ns == ns and op.dev not in (DUMMY, "lo"):
            ip = ipaddress.IPv4Interface(op.address).ip
            if not ip.is_loopback:
                found.add(ip)
    return [str(ip) for ip in sorted(found)]


def persistence(s) -> str:
    """How ipvsadm writes a virtual server's flags: `-p TIMEOUT` for sessionAffinity ClientIP
    (FlagPersistent, Timeout StickyMaxAgeSeconds), nothing otherwise."""
    return f" -p {s.affinity_timeout}" if s.affinity_timeout else ""


def virtual_server_name(s) -> str:
    """How show names what picks a service's endpoint in ipvs mode: its cluster IP's virtual
    server, in ipvsadm -Ln's words ("TCP  10.96.0.1:443 rr", "... rr persistent 3")."""
    sticky = f" persistent {s.affinity_timeout}" if s.affinity_timeout else ""
    return f"IPVS {s.protocol} {s.cluster_ip}:{s.port} {SCHEDULER}{sticky}"


def node_port_name(s) -> str:
    """The NodePort's virtual servers (one per node address), as show names them."""
    sticky = f" persistent {s.affinity_timeout}" if s.affinity_timeout else ""
    return f"IPVS {s.protocol} <node address>:{s.node_port} {SCHEDULER}{sticky}"


def real_servers(s, node: str, only_local: bool) -> list[str]:
    """syncEndpoint: the "ip:port" of each real server of one of the service's virtual
    servers on `node`.  CategorizeEndpoints' cluster endpoints, or with onlyNodeLocalEndpoints
    its local ones -- the cluster ones where the node has none (PR 97081).  Sorted by their
    "ip:port" as the endpoints cache keeps them."""
    p = policy(s, node)
    eps = (p.local or p.cluster) if only_local else p.cluster
    return sorted(endpoint_string(s, ep) for ep in eps)


def virtual_servers(services, node_ips, node: str = "") -> list[tuple[str, str, str, list[str]]]:
    """[(protocol flag, "vip:port", flags, ["ip:port" of each real server])] in service order,
    each service's cluster IP first (its real servers per internalTrafficPolicy), then its
    NodePort on each node address (per externalTrafficPolicy), as syncProxyRules builds them."""
    out = []
    for s in services:
        flag, flags = ("-t" if s.protocol == "TCP" else "-u"), persistence(s)
        out.append((flag, f"{s.cluster_ip}:{s.port}", flags, real_servers(s, node, s.internal_local)))
        if s.node_port:
            reals = real_servers(s, node, s.external_local)
            out += [(flag, f"{ip}:{s.node_port}", flags, reals) for ip in node_ips]
    return out


def ipvsadm_text(services, node_ips, node: str = "") -> str:
    """`ipvsadm-restore` input: each virtual server (AddVirtualServer, scheduler rr, persistent
    with sessionAffinity ClientIP) then its real servers (AddRealServer: masquerading,
    weight 1).  `node` names the node whose endpoints are local (traffic policies Local)."""
    lines = []
    for flag, vip, flags, reals in virtual_servers(services, node_ips, node):
        lines.append(f"-A {flag} {vip} -s {SCHEDULER}{flags}")
        lines += [f"-a {flag} {vip} -r {real} -m -w 1" for real in reals]
    return "\n".join(lines) + "\n"


def ipset_entries(node: Node, services) -> dict[str, list[str]]:
    """Each set's entries as syncProxyRules fills them (utilipset.Entry.String forms)."""
    entries: dict[str, list[str]] = {name: [] for name, _, _ in IPSETS}
    for s in services:
        proto = s.proto
        for ep in s.endpoints:                          # hairpin: local endpoints only
            if ep.node == node.name:
                entries["KUBE-LOOP-BACK"].append(f"{ep.ip},{proto}:{s.target_port},{ep.ip}")
        entries["KUBE-CLUSTER-IP"].append(f"{s.cluster_ip},{proto}:{s.port}")
        if s.node_port:
            entries[f"KUBE-NODE-PORT-{s.protocol}"].append(str(s.node_port))
            if s.external_local:            # "Add externaltrafficpolicy=local type nodeport entry"
                entries[f"KUBE-NODE-PORT-LOCAL-{s.protocol}"].append(str(s.node_port))
        entries["KUBE-IPVS-IPS"].append(s.cluster_ip)   # activeBindAddrs
    return {name: sorted(set(values)) for name, values in entries.items()}


def ipset_text(entries: dict[str, list[str]]) -> str:
    """`ipset restore` input: every set of ipsetInfo (createSet's arguments), then entries."""
    lines = []
    for name, kind, _ in IPSETS:
        extra = f"range {PORT_RANGE}" if kind == "bitmap:port" else \
            f"family inet hashsize {HASH_SIZE} maxelem {MAX_ELEM}"
        lines.append(f"create {name} {kind} {extra}")
    for name, _, _ in IPSETS:
        lines += [f"add {name} {e}" for e in entries[name]]
    return "\n".join(lines) + "\n"


def iptables_text(node: Node, entries: dict[str, list[str]], mark: str | None = None) -> str:
    """writeIptablesRules' restore payload: nat chains, nat rules, filter chains, filter
    rules, with createAndLinkKubeChain's jump rules as `-I` lines after each table's chains."""
    mark = mark or masquerade_mark(MASQUERADE_BIT)
    masq = f"{mark}/{mark}"

    def comment(name):
        return f'-m comment --comment "{COMMENT[name]}"'

    nat = ["-A KUBE-SERVICES -s 127.0.0.0/8 -j RETURN"]
    filt = []
    # ipsetWithIptablesChain, each only when its set has entries
    if entries["KUBE-LOOP-BACK"]:
        nat.append(f"-A KUBE-POSTROUTING {comment('KUBE-LOOP-BACK')} -m set --match-set KUBE-LOOP-BACK "
                   f"dst,dst,src -j MASQUERADE")
    # ipsetWithIptablesChain: "kubeNodePortLocalSetTCP must be prior to kubeNodePortSetTCP":
    # an externalTrafficPolicy Local NodePort RETURNs before it is marked for masquerade
    for proto in ("TCP", "UDP"):
        for name, target in ((f"KUBE-NODE-PORT-LOCAL-{proto}", "RETURN"), (f"KUBE-NODE-PORT-{proto}", "KUBE-MARK-MASQ")):
            if entries[name]:
                nat.append(f"-A KUBE-NODE-PORT -p {proto.lower()} {comment(name)} "
                           f"-m set --match-set {name} dst -j {target}")
    if entries["KUBE-CLUSTER-IP"]:
        # off-cluster sources to a service VIP are masqueraded (localDetector.IfNotLocal)
        nat.append(f"-A KUBE-SERVICES {comment('KUBE-CLUSTER-IP')} -m set --match-set KUBE-CLUSTER-IP dst,dst "
                   f"! -s {node.cluster_cidr} -j KUBE-MARK-MASQ")
    nat += ["-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT",
            "-A KUBE-LOAD-BALANCER -j KUBE-MARK-MASQ"]
    filt.append("-A KUBE-SOURCE-RANGES-FIREWALL -j DROP")
    if entries["KUBE-CLUSTER-IP"]:                       # acceptIPVSTraffic
        nat.append("-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT")
    filt += [f'-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark {masq} -j ACCEPT',
             '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack '
             "--ctstate RELATED,ESTABLISHED -j ACCEPT",
             f"-A KUBE-NODE-PORT {comment('KUBE-HEALTH-CHECK-NODE-PORT')} -m set --match-set "
             "KUBE-HEALTH-CHECK-NODE-PORT dst -j ACCEPT"]
    filt += [f"-A KUBE-IPVS-FILTER -m set --match-set {name} {match} -j RETURN"
             for name, match in (("KUBE-LOAD-BALANCER", "dst,dst"), ("KUBE-CLUSTER-IP", "dst,dst"),
                                 ("KUBE-EXTERNAL-IP", "dst,dst"), ("KUBE-EXTERNAL-IP-LOCAL", "dst,dst"),
                                 ("KUBE-HEALTH-CHECK-NODE-PORT", "dst"))]
    filt.append("-A KUBE-IPVS-FILTER -m conntrack --ctstate NEW -m set --match-set KUBE-IPVS-IPS dst -j REJECT")
    nat += [f"-A KUBE-POSTROUTING -m mark ! --mark {masq} -j RETURN",
            f"-A KUBE-POSTROUTING -j MARK --xor-mark {mark}",
            '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" '
            "-j MASQUERADE --random-fully",
            f"-A KUBE-MARK-MASQ -j MARK --or-mark {mark}"]

    def head(table):
        chains = [f":{chain} - [0:0]" for t, chain in CHAINS if t == table]
        jumps = [f'-I {src} -m comment --comment "{text}" -j {dst}' for t, src, dst, text in JUMPS if t == table]
        return [f"*{table}", *chains, *jumps]

    return "\n".join([*head("nat"), *nat, "COMMIT", *head("filter"), *filt, "COMMIT"]) + "\n"


def add_ops(plan: P.Plan, ns: str, node: Node, services) -> str:
    """Add the node's ipvs-mode ops to the plan (kube-ipvs0 and its addresses, the sysctls,
    the ipsets, the IPVS servers); return its iptables-restore text, which the caller loads
    with the node's other rules in one iptables-restore."""
    services = sorted(services, key=lambda s: (s.port_name_string, s.proto))
    check_services(services)
    node_ips = node_addresses(plan, ns) if any(s.node_port for s in services) else []
    plan.add(P.Link(ns, DUMMY, "dummy", 1500, up=False))
    for ip in dict.fromkeys(s.cluster_ip for s in services):
        plan.add(P.Addr(ns, DUMMY, f"{ip}/32"))
    plan.add(P.Ipvs(ns, ipvsadm_text(services, node_ips, node.name)))     # loads ip_vs: before its sysctls
    have = {op.key for op in plan.ops if isinstance(op, P.Sysctl) and op.ns == ns}
    for key, value in sysctls().items():
        if key in have:             # ip_forward: a router node has it already
            continue
        # in the batch of the ipvsadm-restore, which the applier runs first: net.ipv4.vs
        # exists once ip_vs is loaded
        plan.add(P.Sysctl(ns, key, value, stage=P.STAGE_ROUTE))
    entries = ipset_entries(node, services)
    plan.add(P.Ipset(ns, ipset_text(entries)))
    return iptables_text(node, entries)
