"""The `cluster:` section: Kubernetes nodes running flannel + the bridge CNI, emulated
statically (no etcd, no API server).

Parsing turns cluster nodes into hosts on underlay segments and pods into namespaces
whose eth0 is a veth on their node's cni0; it assigns flannel's subnet leases in node
order.  What flannel then writes to each node's kernel (VTEP devices, neighbours, FDB,
routes) is compiled by nslab/compile/cluster.py from the backend's module (nslab/backends/).
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from itertools import islice
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from .. import backends
from ..backends import Config
from ..errors import UsageError
from . import services as services_model
from .types import DEFAULT_ROUTE, Bridge, Nexthop, Route, host_range, ipv4_interface, name_list, stable_mac

# A backend's keys, defaults, MTU overhead, device and rules are its module's, in nslab/backends/.
DEFAULT_NETWORK = "10.244.0.0/16"
CLUSTER_KEYS = {"network", "subnetLen", "iface", "ipMasq", "enableNFTables", "backend", "kubeProxy", "nodes", "pods",
                "services", "serviceCIDR", "dns"}
KUBE_PROXY_KEYS = {"mode"}
# kube-proxy's --proxy-mode values on Linux (iptables is its default; nslab's too)
PROXY_MODES = ("iptables", "nftables", "ipvs")
NODE_KEYS = {"segment", "ip", "subnet"}
POD_KEYS = {"node", "daemonset", "ip", "serve", "image", "command", "env", "cap_add", "containers", "ports"}
MEMBER_KEYS = {"name", "serve", "port"}


@dataclass(frozen=True)
class Member:
    """One container of a pod (note 003 §1): a process in the pod's network namespace, as a
    Kubernetes pod's containers share one; `serve: http` on `port` is answered by the lab
    agent's listener in that namespace, so the other members reach it on 127.0.0.1 over lo."""
    name: str
    serve: str | None = None
    port: int | None = None


def _members(p, spec, path, pspec) -> list[Member]:
    if not isinstance(spec, list) or not spec:
        raise p.err(path, "containers must be a list of {name: NAME, serve: http, port: PORT}")
    for key in ("serve", "image"):
        if key in pspec:
            raise p.err(path, f"a pod with containers: gives each member its own serve:/port:, not the pod {key}:")
    out: list[Member] = []
    for i, m in enumerate(spec):
        mpath = path + (i,)
        m = p.mapping(m, mpath, MEMBER_KEYS, what="container")
        name = m.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", name):
            raise p.err(mpath + ("name",), f"container name {name!r} must be a DNS label (a-z, 0-9, -)")
        if any(o.name == name for o in out):
            raise p.err(mpath + ("name",), f"container {name} is named twice in this pod")
        serve, port = m.get("serve"), m.get("port")
        if serve is not None and serve != "http":
            raise p.err(mpath + ("serve",), f"unknown service {serve!r} (nslab can serve: http)")
        if port is not None and (serve is None or isinstance(port, bool) or not isinstance(port, int)
                                 or not 0 < port < 65536):
            raise p.err(mpath + ("port",), f"port {port!r} must be 1..65535, with serve: http")
        if serve is not None:
            port = port or 80
            clash = next((o.name for o in out if o.port == port), None)
            if clash:
                raise p.err(mpath + ("port",), f"port {port} is already {clash}'s: members share one network "
                                               f"namespace, so one port has one listener")
        out.append(Member(name, serve, port))
    return out
HOST_VETH_RE = re.compile(r"veth[0-9a-f]{8}")     # host_veth_name's names


@dataclass
class ClusterNode:
    name: str
    segment: str
    ip: IPv4Address
    subnet: IPv4Network
    underlay: str            # interface name on the underlay (eth0, ens33, enp0s3)
    underlay_net: IPv4Network
    mtu: int                 # FLANNEL_MTU: underlay MTU - backend overhead (or backend.mtu)
    vtep_mac: str
    path: tuple = ()
    pods: list[str] = field(default_factory=list)


@dataclass
class Pod:
    name: str
    node: str
    ip: IPv4Interface
    group: str = ""          # the pods: key it came from (a daemonset's name): what a Service selects
    namespace: str = "default"   # its Kubernetes namespace (the DNS search path kubelet writes)
    ports: dict = field(default_factory=dict)   # named container ports (name -> containerPort): a
                                                 # Service's targetPort may name one (services.py)


@dataclass
class Cluster:
    network: IPv4Network
    subnet_len: int
    iface: str
    ip_masq: bool
    backend: Config
    nodes: dict[str, ClusterNode]
    pods: dict[str, Pod]
    service_cidr: IPv4Network | None = None
    services: dict = field(default_factory=dict)    # name -> model.services.Service
    dns: str | None = None       # the cluster DNS's pod (services_model.DNS_POD), None: no DNS
    proxy_mode: str = "iptables"      # kube-proxy's mode (cluster.kubeProxy.mode, or --proxy-mode)
    enable_nftables: bool = False     # flannel's EnableNFTables (net-conf.json): its masquerade in nftables

    def owner(self, address: IPv4Address) -> ClusterNode | None:
        """The node whose lease holds address (what flannel's subnet lookup answers)."""
        return next((n for n in self.nodes.values() if address in n.subnet), None)

    def subnet_env(self, node: ClusterNode) -> dict[str, str]:
        """What flanneld writes to /run/flannel/subnet.env on `node`."""
        return {"FLANNEL_NETWORK": str(self.network),
                "FLANNEL_SUBNET": f"{node.subnet.network_address + 1}/{node.subnet.prefixlen}",
                "FLANNEL_MTU": str(node.mtu),
                "FLANNEL_IPMASQ": "true" if self.ip_masq else "false"}


def host_veth_name(node: str, pod: str) -> str:
    """`vethXXXXXXXX`: 8 hex characters like the bridge CNI's, but stable across runs."""
    return "veth" + hashlib.sha256(f"{node}/{pod}".encode()).hexdigest()[:8]


def parse(p, b, spec, path) -> None:
    """Validate the cluster section and add its nodes, pods and attachments to builder b."""
    spec = p.mapping(spec, path, CLUSTER_KEYS, what="cluster")
    network = p.network(spec.get("network", DEFAULT_NETWORK), path + ("network",))
    subnet_len = spec.get("subnetLen", 24)
    if isinstance(subnet_len, bool) or not isinstance(subnet_len, int) or \
            not network.prefixlen < subnet_len <= 30:
        raise p.err(path + ("subnetLen",), f"subnetLen {subnet_len!r} does not fit network {network}: it must be "
                                           f"longer than /{network.prefixlen} and at most /30")
    iface = p.ifname(spec.get("iface", "eth0"), path + ("iface",))
    ip_masq = spec.get("ipMasq", True)
    if not isinstance(ip_masq, bool):
        raise p.err(path + ("ipMasq",), f"ipMasq must be true or false, got {ip_masq!r}")
    enable_nftables = spec.get("enableNFTables", False)
    if not isinstance(enable_nftables, bool):
        raise p.err(path + ("enableNFTables",), f"enableNFTables must be true or false, got {enable_nftables!r}")
    proxy_mode = _proxy_mode(p, spec, path)
    backend = backends.parse(p.mapping(spec.get("backend"), path + ("backend",), what="backend"),
                             path + ("backend",), p.err, p.mtu, override=p.overrides.get("backend"))
    # the underlay interface shares each node's namespace with what flannel and the bridge
    # CNI create there
    if iface in (backend.device, "cni0") or HOST_VETH_RE.fullmatch(iface):
        made = f"the {backend.type} backend's device" if iface == backend.device else \
            "the bridge CNI's bridge" if iface == "cni0" else "the bridge CNI's pod veths (vethXXXXXXXX)"
        raise p.err(path + ("iface",), f"iface {iface} is the name of {made} on every node; pick another "
                                       f"underlay interface name (eth0, ens3)")

    for seg in b.segments.values():
        if seg.subnet and seg.subnet.overlaps(network):
            raise p.err(path + ("network",), f"pod network {network} overlaps the underlay segment {seg.name} "
                                             f"({seg.subnet})")

    nodes_spec = p.mapping(spec.get("nodes"), path + ("nodes",), what="nodes")
    if not nodes_spec:
        raise p.err(path + ("nodes",), "a cluster needs at least one node (nodes: {NAME: {segment: S, ip: A}})")
    cluster = Cluster(network=network, subnet_len=subnet_len, iface=iface, ip_masq=ip_masq, backend=backend,
                      nodes={}, pods={}, proxy_mode=proxy_mode, enable_nftables=enable_nftables)
    pinned: dict[IPv4Network, str] = {}
    for name, nspec in nodes_spec.items():
        npath = path + ("nodes", name)
        p.node_name(name, npath)
        nspec = p.mapping(nspec, npath, NODE_KEYS, what="cluster node")
        if "subnet" in nspec:
            sn = p.network(nspec["subnet"], npath + ("subnet",))
            if not sn.subnet_of(network) or sn.prefixlen != subnet_len:
                raise p.err(npath + ("subnet",), f"subnet {sn} must be a /{subnet_len} inside the pod network {network}")
            if sn in pinned:
                raise p.err(npath + ("subnet",), f"subnet {sn} is already leased to {pinned[sn]}")
            pinned[sn] = name
    leases = (sn for sn in network.subnets(new_prefix=subnet_len) if sn not in pinned)

    for name, nspec in nodes_spec.items():
        npath = path + ("nodes", name)
        nspec = nspec or {}
        seg_name = nspec.get("segment")
        if seg_name is None:
            raise p.err(npath, f"cluster node {name} needs segment: NAME (the underlay L2 segment it sits on)")
        if not isinstance(seg_name, str):
            raise p.err(npath + ("segment",), f"segment must be the name of a segment, got "
                                              f"{type(seg_name).__name__} {seg_name!r}")
        seg = b.segments.get(seg_name)
        if seg is None:
            raise p.err(npath + ("segment",), f"unknown segment {seg_name!r} (segments: "
                                              f"{name_list(b.segments)})")
        if seg.subnet is None:
            raise p.err(npath + ("segment",), f"segment {seg_name} needs a subnet to place cluster nodes on")
        if "ip" not in nspec:
            raise p.err(npath, f"cluster node {name} needs ip: ADDRESS on segment {seg_name}")
        ip = p.address(nspec["ip"], npath + ("ip",))
        if ip not in seg.subnet:
            raise p.err(npath + ("ip",), f"{ip} is not inside segment {seg_name} {seg.subnet}")
        subnet = p.network(nspec["subnet"], npath + ("subnet",)) if "subnet" in nspec else next(leases, None)
        if subnet is None:
            raise p.err(npath, f"the pod network {network} has no /{subnet_len} left for {name}: "
                               f"more nodes than subnets")
        node_mtu = backends.flannel_mtu(backend, seg.mtu, seg_name, path + ("backend",), p.err)
        host = b.add_node(name, "host", {}, npath, mtu=seg.mtu)
        host.sysctls["net.ipv4.ip_forward"] = "1"   # kubelet/flannel nodes forward pod traffic
        b.attach(seg.name, name, iface=iface, ip=IPv4Interface(f"{ip}/{seg.subnet.prefixlen}"), path=npath)
        cluster.nodes[name] = ClusterNode(
            name=name, segment=seg.name, ip=ip, subnet=subnet, underlay=iface, underlay_net=seg.subnet,
            mtu=node_mtu, vtep_mac=stable_mac(b.lab, name, backend.device or "vtep"), path=npath)

    dns = services_model.parse_dns(p, cluster, spec, path)
    _pods(p, b, cluster, spec.get("pods"), path + ("pods",), dns_node=dns[0] if dns else None)
    cluster.service_cidr, cluster.services = services_model.parse(p, cluster, spec.get("services"),
                                                                  spec.get("serviceCIDR"), path,
                                                                  dns_ip=dns[1] if dns else None)
    b.cluster = cluster
    b.extensions.append(lambda builder: _check_underlay(builder, cluster, path))


def _proxy_mode(p, spec, path) -> str:
    """cluster.kubeProxy.mode, or `--proxy-mode` (an override, as if written in the file)."""
    kp = p.mapping(spec.get("kubeProxy"), path + ("kubeProxy",), KUBE_PROXY_KEYS, what="kubeProxy")
    override = p.overrides.get("proxy_mode")
    if override is not None:
        if override not in PROXY_MODES:
            raise UsageError(f"--proxy-mode {override!r}: kube-proxy's modes are {', '.join(PROXY_MODES)}")
        return override
    mode = kp.get("mode", "iptables")
    if mode not in PROXY_MODES:
        raise p.err(path + ("kubeProxy", "mode"), f"kubeProxy mode must be one of {', '.join(PROXY_MODES)}, "
                                                  f"not {mode!r}")
    return mode


def _pods(p, b, cluster: Cluster, spec, path, dns_node: str | None = None) -> None:
    """dns_node: where the cluster DNS's pod runs (None: no DNS).  It comes after the file's
    pods, so that it takes the next free address and theirs stay what they were."""
    pods_spec = p.mapping(spec, path, what="pods")
    wanted: list[tuple[str, str, dict, tuple]] = []      # (pod, node, spec, path)
    for name, pspec in pods_spec.items():
        ppath = path + (name,)
        p.node_name(name, ppath)
        pspec = p.mapping(pspec, ppath, POD_KEYS, what="pod")
        ds = pspec.get("daemonset")
        if ds and "node" in pspec:
            raise p.err(ppath, f"pod {name} has both node: and daemonset:; a daemonset runs on every node")
        if ds:
            if ds is True:
                on = list(cluster.nodes)
            elif isinstance(ds, list):
                on = ds
            else:
                raise p.err(ppath + ("daemonset",), "daemonset must be true (every node) or a list of node names")
            if "ip" in pspec:
                raise p.err(ppath + ("ip",), "a daemonset's pods get their addresses from each node's subnet; "
                                             "pin addresses on single pods only")
            for i, node in enumerate(on):
                if not isinstance(node, str) or node not in cluster.nodes:
                    raise p.err(ppath + ("daemonset", i) if isinstance(ds, list) else ppath,
                                f"unknown cluster node {node!r} (nodes: {name_list(cluster.nodes)})")
                wanted.append((f"{name}-{node}", node, pspec, ppath))
        else:
            node = pspec.get("node")
            if node is None:
                raise p.err(ppath, f"pod {name} needs node: NAME (or daemonset: true)")
            if not isinstance(node, str) or node not in cluster.nodes:
                raise p.err(ppath + ("node",), f"unknown cluster node {node!r} (nodes: {name_list(cluster.nodes)})")
            wanted.append((name, node, pspec, ppath))
    if dns_node is not None:
        dns_pod = services_model.DNS_POD
        clash = next((w[3] for w in wanted if w[0] == dns_pod), None) or \
            (b.nodes[dns_pod].path if dns_pod in b.nodes else None)
        if clash is not None:
            raise p.err(clash, f"{dns_pod} is the name of the cluster DNS's pod "
                               f"({services_model.DNS_NAMESPACE}/{dns_pod}); rename this one or set dns: false")
        wanted.append((dns_pod, dns_node, {}, path[:-1] + ("dns",)))
    taken: dict[str, set] = {n: set() for n in cluster.nodes}
    for pod, node, pspec, ppath in wanted:
        if "ip" in pspec:
            sn = cluster.nodes[node].subnet
            ip = p.address(pspec["ip"], ppath + ("ip",))
            if ip not in sn or ip in (sn.network_address, sn.network_address + 1, sn.broadcast_address):
                raise p.err(ppath + ("ip",), f"{ip} is not a pod address of {node}'s subnet {sn} "
                                             f"(.0 is the VTEP, .1 is cni0)")
            if int(ip) in taken[node]:
                raise p.err(ppath + ("ip",), f"{ip} is already used by another pod on {node}")
            taken[node].add(int(ip))
    cursor: dict[str, int] = {}     # per node: no free address below it (pinned ones are all taken)
    gateways: dict[str, IPv4Address] = {}
    for pod, node, pspec, ppath in wanted:
        cn = cluster.nodes[node]
        if "ip" in pspec:
            ip = int(IPv4Address(str(pspec["ip"])))
        else:   # host-local IPAM: the lowest free address from .2 up (the second of hosts())
            # as ints from where the last pod's search stopped: never hosts() again per pod
            first, last = host_range(cn.subnet)
            addr = cursor.get(node, first + 1)
            while addr in taken[node]:
                addr += 1
            if addr > last:
                raise p.err(ppath, f"{node}'s subnet {cn.subnet} has no free pod address left")
            taken[node].add(addr)
            cursor[node] = addr + 1
            ip = addr          # an int: ipv4_interface takes it as it is
        node_spec = {k: pspec[k] for k in ("serve", "image", "command", "env", "cap_add") if pspec.get(k) is not None}
        pod_node = b.add_node(pod, "pod", node_spec, ppath, mtu=cn.mtu)
        if "containers" in pspec:
            pod_node.members = _members(p, pspec["containers"], ppath + ("containers",), pspec)
        gw = gateways.get(node)
        if gw is None:              # cni0's address, one object per node (not one per pod)
            gw = gateways[node] = cn.subnet.network_address + 1
        veth = host_veth_name(node, pod)
        dns = pod == services_model.DNS_POD and dns_node is not None
        cluster.pods[pod] = Pod(name=pod, node=node, ip=ipv4_interface(ip, cn.subnet.prefixlen),
                                group=pod if dns else ppath[-1],
                                namespace=services_model.DNS_NAMESPACE if dns else "default",
                                ports=services_model.container_ports(p, pspec.get("ports"), ppath + ("ports",)))
        if dns:
            cluster.dns = pod
        cn.pods.append(pod)
        host = b.nodes[node]
        if not host.bridges:   # the bridge CNI creates cni0 with the first pod on a node
            host.bridges.append(Bridge(name="cni0", mtu=cn.mtu, mac=stable_mac(b.lab, node, "cni0"),
                                       ip=IPv4Interface(f"{gw}/{cn.subnet.prefixlen}")))
        b.attachments.append(dict(
            kind="cni", segment=None, path=ppath, mtu=cn.mtu, subnet=None,
            a=dict(node=pod, iface="eth0", ip=cluster.pods[pod].ip, mac=None, mtu=cn.mtu, path=ppath,
                   iface_path=ppath, auto_ip=False),
            b=dict(node=node, iface=veth, ip=None, mac=None, mtu=cn.mtu, path=ppath, iface_path=ppath,
                   bridge="cni0", hairpin=True, auto_ip=False)))
        # The pod's routes as the bridge CNI (isDefaultGateway) and flannel's CNI config
        # leave them: default via cni0's address, and the whole pod network via it too.
        pod_node.routes = [Route(dst=DEFAULT_ROUTE, nexthops=[Nexthop(via=gw, dev="eth0")], origin="cni"),
                           Route(dst=cluster.network, nexthops=[Nexthop(via=gw, dev="eth0")], origin="cni")]


def _check_underlay(b, cluster: Cluster, path) -> None:
    """Checks that need every address resolved (link subnets are allocated late)."""
    for node in b.nodes.values():
        for iface in node.ifaces:
            if iface.ip is not None and node.kind != "pod" and iface.ip.network.overlaps(cluster.network):
                raise b.err(node.path, f"{node.name}'s address {iface.ip} on {iface.name} is inside the pod "
                                       f"network {cluster.network}; the underlay and the pod network must not "
                                       f"overlap")
    backends.check_cluster(cluster, b.err)
