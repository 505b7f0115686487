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
SERVICE_KEYS = {"namespace", "selector", "port", "targetPort", "protocol", "type", "nodePort", "clusterIP"}
DNS_LABEL = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")      # a Service name is an RFC 1035 label


@dataclass
class Service:
    name: str
    namespace: str
    selector: str
    port: int
    target_port: int
    protocol: str
    type: str
    cluster_ip: IPv4Address
    node_port: int | None
    endpoints: tuple[str, ...]      # pod names, in pod order
    path: tuple = ()
    port_name: str = ""             # kube-dns's "dns": part of kube-proxy's servicePortName
    headless: bool = False          # clusterIP: None (cluster_ip stays None)


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
        if selector is None:
            raise p.err(spath, f"service {name} needs selector: POD_OR_DAEMONSET (the pods it sends to)")
        if not isinstance(selector, str) or selector not in groups:
            raise p.err(spath + ("selector",), f"selector {selector!r} matches no pod or daemonset "
                                               f"(pods and daemonsets: {name_list(groups)})")
        port = _port(p, sspec, "port", spath)
        if port is None:
            raise p.err(spath, f"service {name} needs port: N (the port of its cluster IP)")
        target = _port(p, sspec, "targetPort", spath)
        protocol = _choice(p, sspec, "protocol", spath, PROTOCOLS, "TCP")
        stype = _choice(p, sspec, "type", spath, TYPES, "ClusterIP")
        node_port = _port(p, sspec, "nodePort", spath, *NODE_PORT_RANGE)
        if node_port is not None and stype != "NodePort":
            raise p.err(spath + ("nodePort",), "nodePort is only for type: NodePort")
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
        services[name] = Service(name=name, namespace=namespace, selector=selector, port=port,
                                 target_port=target if target is not None else port, protocol=protocol,
                                 type=stype, cluster_ip=cluster_ip, node_port=node_port,
                                 endpoints=tuple(groups[selector]), path=spath, headless=headless)
        # kube-proxy's rules are nodes x endpoints of every service: counted as they come, so a
        # 1 MB file of 2,000 services over 50-pod daemonsets is refused here, not after minutes
        endpoint_rules += len(cluster.nodes) * len(groups[selector])
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
    return Service(name=DNS_SERVICE, namespace=DNS_NAMESPACE, selector=DNS_POD, port=53, target_port=53,
                   protocol="UDP", type="ClusterIP", cluster_ip=ip, node_port=None, endpoints=(DNS_POD,),
                   path=ipath, port_name="dns")


def _check_unique(p, services: dict[str, Service]) -> None:
    ips: dict = {}
    ports: dict = {}
    for s in services.values():
        if s.cluster_ip is not None:
            if s.cluster_ip in ips:
                raise p.err(s.path + ("clusterIP",), f"clusterIP {s.cluster_ip} is already the address of "
                                                     f"service {ips[s.cluster_ip]}")
            ips[s.cluster_ip] = s.name
        if s.node_port is not None:
            key = (s.node_port, s.protocol)
            if key in ports:
                raise p.err(s.path + ("nodePort",), f"nodePort {s.node_port}/{s.protocol} is already taken by "
                                                    f"service {ports[key]}")
            ports[key] = s.name


def _allocate(p, cidr: IPv4Network, services: dict[str, Service], path) -> None:
    used_ips = {s.cluster_ip for s in services.values() if s.cluster_ip is not None}
    # .1 is the `kubernetes` service's address in every cluster: never hand it out.
    free_ips = (a for a in islice(cidr.hosts(), 1, None) if a not in used_ips)
    used_ports = {s.node_port for s in services.values() if s.node_port is not None}
    free_ports = (n for n in range(NODE_PORT_RANGE[0], NODE_PORT_RANGE[1] + 1) if n not in used_ports)
    for s in services.values():
        if s.cluster_ip is None and not s.headless:
            s.cluster_ip = next(free_ips, None)
            if s.cluster_ip is None:
                raise p.err(path + ("serviceCIDR",), f"service CIDR {cidr} has no address left for {s.name}")
        if s.type == "NodePort" and s.node_port is None:
            s.node_port = next(free_ports, None)
            if s.node_port is None:
                raise p.err(s.path, f"no node port left in {NODE_PORT_RANGE[0]}..{NODE_PORT_RANGE[1]}")
