"""The `cluster.services:` section: Kubernetes Services, as the apiserver would accept them.

    services:
      testappds: {selector: testappds, port: 8080, targetPort: 80, type: NodePort,
                  nodePort: 30080, clusterIP: 10.111.222.68}

A selector names a pod or a daemonset of `cluster.pods` (nslab's pods have no labels; the
note's Service selects its daemonset's pods).  What the apiserver refuses is refused here,
with file:line path: ports 1..65535, nodePort in 30000..32767 (its default
--service-node-port-range) and not taken twice, clusterIP inside the service CIDR (default
10.96.0.0/12, kubeadm's) and not taken twice.  A clusterIP left out is allocated from the
CIDR, a nodePort from the range: the lowest free one (the apiserver picks at random; a lab
wants the same address every run).  `clusterIP: None` is a headless service: no cluster IP,
no kube-proxy rules; its DNS name lists its endpoints.  kube-proxy's rules are compiled by
compile/services.py.

Cluster DNS (`cluster.dns:`, on wherever the cluster has a service network): as kubeadm
deploys it, the Service kube-system/kube-dns (port 53/UDP named "dns") on the service CIDR's
tenth address (kubeadm's GetDNSIP: 10.96.0.10 for the default CIDR; `dns: {ip: A}` says
otherwise), selecting the pod `coredns` (kube-system, on the first cluster node unless
`dns: {node: N}`); `dns: false` leaves both out.  Its answers are compile/dns.py's.

A Service's spec beyond one port, as the apiserver validates it (pkg/apis/core/validation's
ValidateService): `ports: [{name, port, targetPort, protocol, nodePort}]` (names DNS labels,
required and distinct when there are two or more; a port/protocol once) instead of the
single port's keys; a targetPort by name (an IANA_SVC_NAME) is looked up in the selected pods'
`ports: {NAME: containerPort}` (the EndpointSlice controller's FindPort; a pod without it is
no endpoint of that port); `externalTrafficPolicy: Cluster | Local` (only for type
NodePort), `internalTrafficPolicy: Cluster | Local`, `sessionAffinity: None | ClientIP` with
`sessionAffinityConfig: {clientIP: {timeoutSeconds: 1..86400}}` (default 10800).  A Service
without `selector:` has no endpoints (Kubernetes' "Service without selectors": nslab writes no
EndpointSlices for it), which kube-proxy rejects.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from itertools import islice

from .limits import MAX_SERVICE_ENDPOINT_RULES
from .types import name_list

DEFAULT_SERVICE_CIDR = "10.96.0.0/12"
NODE_PORT_RANGE = (30000, 32767)
PROTOCOLS = ("TCP", "UDP")
TYPES = ("ClusterIP", "NodePort")
DNS_KEYS = {"node", "ip"}
DNS_POD, DNS_SERVICE, DNS_NAMESPACE = "coredns", "kube-dns", "kube-system"
DNS_IP_INDEX = 10           # kubeadm's GetDNSIP: the service subnet's 10th address
PORT_KEYS = {"name", "port", "targetPort", "protocol", "nodePort"}
SERVICE_KEYS = PORT_KEYS - {"name"} | {"namespace", "selector", "type", "clusterIP", "ports", "externalTrafficPolicy",
                                      "internalTrafficPolicy", "sessionAffinity", "sessionAffinityConfig"}
POLICIES = ("Cluster", "Local")
AFFINITIES = ("None", "ClientIP")
AFFINITY_TIMEOUT = 10800            # v1.DefaultClientIPServiceAffinitySeconds
AFFINITY_TIMEOUT_MAX = 86400        # core.MaxClientIPServiceAffinitySeconds
IANA_SVC_NAME = re.compile(r"(?=.*[a-z])(?!.*--)[a-z0-9]([-a-z0-9]{0,13}[a-z0-9])?")   # validation.IsValidPortName
DNS_LABEL = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")      # a Service name is an RFC 1035 label


@dataclass
class Port:
    """One entry of a Service's ports (a ServicePort)."""
    port: int
    target_port: int | None         # None: resolved per endpoint pod from target_name
    protocol: str = "TCP"
    node_port: int | None = None
    name: str = ""                  # part of kube-proxy's servicePortName ("ns/name:portname")
    target_name: str = ""           # a named targetPort (the pods' `ports:`)


@dataclass
class Service:
    name: str
    namespace: str
    selector: str | None            # None: a Service without selector (no endpoints)
    type: str
    cluster_ip: IPv4Address
    ports: tuple[Port, ...]
    endpoints: tuple[str, ...]      # pod names, in pod order
    path: tuple = ()
    headless: bool = False          # clusterIP: None (cluster_ip stays None)
    external_policy: str = "Cluster"      # externalTrafficPolicy
    internal_policy: str = "Cluster"      # internalTrafficPolicy
    affinity_timeout: int | None = None   # sessionAffinity ClientIP's timeoutSeconds (None: no affinity)

    # the first port, which one-port services and the observers that show one port use
    @property
    def port(self) -> int:
        return self.ports[0].port

    @property
    def target_port(self) -> int | None:
        return self.ports[0].target_port

    @property
    def protocol(self) -> str:
        return self.ports[0].protocol

    @property
    def node_port(self) -> int | None:
        return self.ports[0].node_port

    @property
    def port_name(self) -> str:
        return self.ports[0].name

    def port_named(self, text: str) -> Port | None:
        """The port `svc/NAME:PORT` names: by its name, or by its number (port:)."""
        for p in self.ports:
            if text == p.name or (text.isascii() and text.isdigit() and len(text) <= 5 and int(text) == p.port):
                return p
        return None

    def port_list(self) -> str:
        """Its ports as an error message lists them: "main (80/TCP), 8081/TCP"."""
        return ", ".join(f"{p.name} ({p.port}/{p.protocol})" if p.name else f"{p.port}/{p.protocol}"
                         for p in self.ports)


def container_ports(p, spec, path) -> dict[str, int]:
    """A pod's `ports: {NAME: containerPort}`: its containers' named ports, which a Service's
    targetPort may name (names as validation.IsValidPortName wants them)."""
    if spec is None:
        return {}
    spec = p.mapping(spec, path, what="ports")
    for name in spec:
        if not isinstance(name, str) or not IANA_SVC_NAME.fullmatch(name):
            raise p.err(path + (name,), f"port name {name!r} must be 1-15 lowercase letters, digits and '-' "
                                        f"with a letter (an IANA service name)")
        _port(p, spec, name, path)
    return dict(spec)


def _port(p, spec, key, path, lo=1, hi=65535) -> int | None:
    if key not in spec:
        return None
    value = spec[key]
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        if key == "nodePort":
            raise p.err(path + (key,), f"nodePort {value!r} is outside the node port range {lo}-{hi} (the "
                                       f"apiserver's default --service-node-port-range)")
        raise p.err(path + (key,), f"{key} {value!r} is not a port ({lo} to {hi})")
    return value


def _choice(p, spec, key, path, choices, default) -> str:
    value = spec.get(key, default)
    if value not in choices:
        raise p.err(path + (key,), f"{key} must be one of {', '.join(choices)}, not {value!r}")
    return value


def _ports(p, sspec, spath, stype, pods) -> tuple[Port, ...]:
    """The service's ports: `ports: [...]`, or the one port written in the service itself."""
    if "ports" not in sspec:
        if "port" not in sspec:
            raise p.err(spath, f"service {spath[-1]} needs port: N (the port of its cluster IP)")
        return (_one_port(p, sspec, spath, stype, pods),)
    clash = sorted(PORT_KEYS & set(sspec))
    if clash:
        raise p.err(spath + (clash[0],), f"{clash[0]} goes inside ports: [...] when the service lists ports:")
    spec = sspec["ports"]
    if not isinstance(spec, list) or not spec:
        raise p.err(spath + ("ports",), "ports must be a list of {name, port, targetPort, protocol, nodePort}")
    out: list[Port] = []
    seen: dict = {}
    for i, pspec in enumerate(spec):
        ppath = spath + ("ports", i)
        pspec = p.mapping(pspec, ppath, PORT_KEYS, what="service port")
        port = _one_port(p, pspec, ppath, stype, pods)
        if len(spec) > 1 and not port.name:
            raise p.err(ppath, "a service with two or more ports names each: name: NAME")
        for key, what in (((port.name,), f"port name {port.name}"),
                          ((port.port, port.protocol), f"port {port.port}/{port.protocol}")):
            if key in seen:
                raise p.err(ppath, f"{what} is already this service's ports[{seen[key]}]")
            seen[key] = i
        out.append(port)
    return tuple(out)


def _one_port(p, spec, path, stype, pods) -> Port:
    port = _port(p, spec, "port", path)
    if port is None:
        raise p.err(path, "a service port needs port: N")
    name = spec.get("name", "")
    if name and (not isinstance(name, str) or not DNS_LABEL.fullmatch(name)):
        raise p.err(path + ("name",), f"port name {name!r} must be a DNS label")
    protocol = _choice(p, spec, "protocol", path, PROTOCOLS, "TCP")
    node_port = _port(p, spec, "nodePort", path, *NODE_PORT_RANGE)
    if node_port is not None and stype != "NodePort":
        raise p.err(path + ("nodePort",), "nodePort is only for type: NodePort")
    target, target_name = spec.get("targetPort", port), ""
    if isinstance(target, str):
        if not IANA_SVC_NAME.fullmatch(target):
            raise p.err(path + ("targetPort",), f"targetPort {target!r} is neither a port (1 to 65535) nor a "
                                                f"port name (1-15 lowercase letters, digits and '-')")
        # FindPort: each endpoint pod's container port of that name
        found = {pod.ports[target] for pod in pods if target in pod.ports}
        if len(found) > 1:
            raise p.err(path + ("targetPort",), f"targetPort {target} names ports {sorted(found)} in the selected "
                                                f"pods; nslab gives a service port one target port")
        if pods and not found:
            raise p.err(path + ("targetPort",), f"targetPort {target} is not a named port of the selected pods "
                                                f"(give them ports: {{{target}: N}})")
        target, target_name = next(iter(found), None), target
    else:
        target = _port(p, spec, "targetPort", path) or port
    return Port(port=port, target_port=target, protocol=protocol, node_port=node_port, name=name,
                target_name=target_name)


def _affinity(p, spec, path) -> int | None:
    """sessionAffinity ClientIP's timeout in seconds, None for sessionAffinity None."""
    affinity = _choice(p, spec, "sessionAffinity", path, AFFINITIES, "None")
    config = spec.get("sessionAffinityConfig")
    cpath = path + ("sessionAffinityConfig",)
    if config is None:
        return AFFINITY_TIMEOUT if affinity == "ClientIP" else None
    if affinity != "ClientIP":
        raise p.err(cpath, "sessionAffinityConfig is only for sessionAffinity: ClientIP")
    client = p.mapping(config, cpath, {"clientIP"}, what="sessionAffinityConfig").get("clientIP")
    timeout = p.mapping(client, cpath + ("clientIP",), {"timeoutSeconds"}, what="clientIP").get(
        "timeoutSeconds", AFFINITY_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, int) or not 0 < timeout <= AFFINITY_TIMEOUT_MAX:
        raise p.err(cpath + ("clientIP", "timeoutSeconds"), f"timeoutSeconds {timeout!r} must be 1 to "
                                                            f"{AFFINITY_TIMEOUT_MAX} (seconds)")
    return timeout


def has_network(spec: dict) -> bool:
    """The cluster section models a service network (services, or a serviceCIDR)."""
    return spec.get("services") is not None or spec.get("serviceCIDR") is not None


def parse_dns(p, cluster, spec: dict, path) -> tuple[str, object] | None:
    """`cluster.dns:` -> (the node of the coredns pod, the ip as written or None), or None
    when the cluster has no DNS (no service network, or `dns: false`)."""
    value = spec.get("dns")
    if value is False or not has_network(spec):
        if value not in (None, False):
            raise p.err(path + ("dns",), "dns needs a service network: add services: (or serviceCIDR:) "
                                         "to the cluster")
        return None
    dspec = p.mapping(value if value is not True else None, path + ("dns",), DNS_KEYS, what="dns")
    node = dspec.get("node", next(iter(cluster.nodes)))
    if not isinstance(node, str) or node not in cluster.nodes:
        raise p.err(path + ("dns", "node"), f"unknown cluster node {node!r} (nodes: {name_list(cluster.nodes)})")
    return node, dspec.get("ip")


def parse(p, cluster, spec, cidr_spec, path, dns_ip=None) -> tuple[IPv4Network, dict[str, Service]]:
    """(service CIDR, {name: Service}); `path` is the cluster section's path.  dns_ip: the
    written `dns: {ip:}` (None: kubeadm's), given when the cluster has DNS."""
    if spec is None and cidr_spec is None:
        return None, {}            # no services: the default CIDR may overlap nothing it need not
    cidr = p.network(cidr_spec if cidr_spec is not None else DEFAULT_SERVICE_CIDR, path + ("serviceCIDR",))
    if cidr.overlaps(cluster.network):
        raise p.err(path + ("serviceCIDR",), f"service CIDR {cidr} overlaps the pod network {cluster.network}")
    services: dict[str, Service] = {}
    spec = p.mapping(spec, path + ("services",), what="services")
    groups: dict[str, list[str]] = {}
    for pod in cluster.pods.values():
        groups.setdefault(pod.group, []).append(pod.name)
    endpoint_rules = 0
    for name, sspec in spec.items():
        spath = path + ("services", name)
        if not isinstance(name, str) or not DNS_LABEL.fullmatch(name):
            raise p.err(spath, f"service name {name!r} must be a DNS label: lowercase letters, digits and '-', "
                               f"starting with a letter, at most 63 characters")
        sspec = p.mapping(sspec, spath, SERVICE_KEYS, what="service")
        namespace = sspec.get("namespace", "default")
        if not isinstance(namespace, str) or not DNS_LABEL.fullmatch(namespace):
            raise p.err(spath + ("namespace",), f"namespace {namespace!r} must be a DNS label")
        selector = sspec.get("selector")
        if selector is not None and (not isinstance(selector, str) or selector not in groups):
            raise p.err(spath + ("selector",), f"selector {selector!r} matches no pod or daemonset "
                                               f"(pods and daemonsets: {name_list(groups)})")
        stype = _choice(p, sspec, "type", spath, TYPES, "ClusterIP")
        pods = [cluster.pods[n] for n in groups[selector]] if selector is not None else []
        ports = _ports(p, sspec, spath, stype, pods)
        cluster_ip = None
        headless = sspec.get("clusterIP") == "None"      # as the apiserver spells it
        if headless and stype != "ClusterIP":
            raise p.err(spath + ("clusterIP",), f"a headless service (clusterIP: None) must be type ClusterIP, "
                                                f"not {stype}")
        if "clusterIP" in sspec and not headless:
            cluster_ip = p.address(sspec["clusterIP"], spath + ("clusterIP",))
            if cluster_ip not in cidr or cluster_ip in (cidr.network_address, cidr.broadcast_address):
                raise p.err(spath + ("clusterIP",), f"clusterIP {cluster_ip} is not a usable address of the "
                                                    f"service CIDR {cidr} (cluster.serviceCIDR)")
        external = _choice(p, sspec, "externalTrafficPolicy", spath, POLICIES, "Cluster")
        if "externalTrafficPolicy" in sspec and stype != "NodePort":
            raise p.err(spath + ("externalTrafficPolicy",), "externalTrafficPolicy may only be set when type is "
                                                            "NodePort (traffic from outside the cluster)")
        services[name] = Service(name=name, namespace=namespace, selector=selector, type=stype,
                                 cluster_ip=cluster_ip, ports=ports, endpoints=tuple(n.name for n in pods),
                                 path=spath, headless=headless, external_policy=external,
                                 internal_policy=_choice(p, sspec, "internalTrafficPolicy", spath, POLICIES,
                                                         "Cluster"),
                                 affinity_timeout=_affinity(p, sspec, spath))
        # kube-proxy's rules are nodes x endpoints of every service: counted as they come, so a
        # 1 MB file of 2,000 services over 50-pod daemonsets is refused here, not after minutes
        endpoint_rules += len(cluster.nodes) * len(pods) * len(ports)
        if endpoint_rules > MAX_SERVICE_ENDPOINT_RULES:
            raise p.err(spath, f"kube-proxy on the {len(cluster.nodes):,} cluster nodes would need "
                               f"{endpoint_rules:,} endpoint rules by this service (one per node for each "
                               f"endpoint of each service); nslab writes at most {MAX_SERVICE_ENDPOINT_RULES:,}: "
                               f"use fewer services, endpoints or nodes")
    if DNS_POD in cluster.pods:
        services[DNS_SERVICE] = _kube_dns(p, cluster, cidr, services, dns_ip, path)
    _check_unique(p, services)
    _allocate(p, cidr, services, path)
    return cidr, services


def _kube_dns(p, cluster, cidr: IPv4Network, services: dict, ip, path) -> Service:
    """kubeadm's kube-system/kube-dns (its CoreDNS addon manifest), with its first port,
    "dns" 53/UDP (the answers of a lab's names fit in a UDP datagram: dns-tcp and metrics
    are not modelled)."""
    ipath = path + ("dns", "ip")
    if DNS_SERVICE in services:
        raise p.err(services[DNS_SERVICE].path, f"{DNS_SERVICE} is the name of the cluster's DNS service "
                                                f"({DNS_NAMESPACE}/{DNS_SERVICE}); rename this one or set dns: false")
    if ip is None:
        if cidr.num_addresses <= DNS_IP_INDEX + 1:
            raise p.err(path + ("serviceCIDR",), f"service CIDR {cidr} has no tenth address for the cluster DNS "
                                                 f"(kubeadm's); give dns: {{ip: A}} or a larger CIDR")
        ip, ipath = cidr.network_address + DNS_IP_INDEX, path + ("serviceCIDR",)
    else:
        ip = p.address(ip, ipath)
        if ip not in cidr or ip in (cidr.network_address, cidr.broadcast_address):
            raise p.err(ipath, f"dns ip {ip} is not a usable address of the service CIDR {cidr}")
    taken = next((o for o in services.values() if o.cluster_ip == ip), None)
    if taken is not None:
        raise p.err(taken.path + ("clusterIP",), f"clusterIP {ip} is the cluster DNS's ({DNS_NAMESPACE}/"
                                                 f"{DNS_SERVICE}, the service CIDR's tenth address as kubeadm "
                                                 f"gives it); pick another, or move it with dns: {{ip: A}}")
    return Service(name=DNS_SERVICE, namespace=DNS_NAMESPACE, selector=DNS_POD, type="ClusterIP", cluster_ip=ip,
                   ports=(Port(port=53, target_port=53, protocol="UDP", name="dns"),), endpoints=(DNS_POD,),
                   path=ipath)


def _check_unique(p, services: dict[str, Service]) -> None:
    ips: dict = {}
    ports: dict = {}
    for s in services.values():
        if s.cluster_ip is not None:
            if s.cluster_ip in ips:
                raise p.err(s.path + ("clusterIP",), f"clusterIP {s.cluster_ip} is already the address of "
                                                     f"service {ips[s.cluster_ip]}")
            ips[s.cluster_ip] = s.name
        for port in s.ports:
            if port.node_port is not None:
                key = (port.node_port, port.protocol)
                if key in ports:
                    raise p.err(s.path + ("nodePort",), f"nodePort {port.node_port}/{port.protocol} is already "
                                                        f"taken by service {ports[key]}")
                ports[key] = s.name


def _allocate(p, cidr: IPv4Network, services: dict[str, Service], path) -> None:
    used_ips = {s.cluster_ip for s in services.values() if s.cluster_ip is not None}
    # .1 is the `kubernetes` service's address in every cluster: never hand it out.
    free_ips = (a for a in islice(cidr.hosts(), 1, None) if a not in used_ips)
    used_ports = {port.node_port for s in services.values() for port in s.ports if port.node_port is not None}
    free_ports = (n for n in range(NODE_PORT_RANGE[0], NODE_PORT_RANGE[1] + 1) if n not in used_ports)
    for s in services.values():
        if s.cluster_ip is None and not s.headless:
            s.cluster_ip = next(free_ips, None)
            if s.cluster_ip is None:
                raise p.err(path + ("serviceCIDR",), f"service CIDR {cidr} has no address left for {s.name}")
        for port in s.ports if s.type == "NodePort" else ():
            if port.node_port is None:
                port.node_port = next(free_ports, None)
                if port.node_port is None:
                    raise p.err(s.path, f"no node port left in {NODE_PORT_RANGE[0]}..{NODE_PORT_RANGE[1]}")
