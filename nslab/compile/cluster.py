"""What flanneld writes into each node's kernel, per backend, in flannel's own order.

One function per backend, each (cluster, node, topo) -> operations for that node:
- vxlan (flannel pkg/backend/vxlan): device flannel.<VNI> (local = node IP, dev = the
  underlay interface, dstport, nolearning, MTU = underlay - 50), address <subnet>.0/32;
  then for every other node, as handleSubnetEvents does: neighbour
  `<their subnet>.0 lladdr <their VTEP MAC>`, FDB `<their VTEP MAC> dst <their IP>`,
  route `<their subnet> via <their subnet>.0 dev flannel.<VNI> onlink`.  With
  DirectRouting, a peer reached without a gateway (flannel's ip.DirectRouting: a single
  route with no gateway) gets `<their subnet> via <their IP> dev <underlay>` instead, and
  no neighbour or FDB entry.
- host-gw (flannel pkg/backend/hostgw): `<their subnet> via <their IP> dev <underlay>`.
- ipip (flannel pkg/backend/ipip): device flannel.ipip (local = node IP, remote any,
  nopmtudisc and ttl inherit as its netlink library leaves them, MTU = underlay - 20),
  address <subnet>.0/32; per peer `<their subnet> via <their IP> dev flannel.ipip onlink`,
  or via the underlay with DirectRouting, as for vxlan.  Where the kernel has no ipip,
  nslab/tunnel.py swaps the device for a TUN plus an encapsulator (same name and routes).
- udp (flannel pkg/backend/udp): TUN device flannel0 (MTU = underlay - 28), address
  <subnet>.0/32, route `<network> dev flannel0` (scope global, as flannel adds it), and
  the proxy daemon that carries each packet as one UDP datagram to the owner's port.
"""
from __future__ import annotations


from .. import plan as P
from ..model.cluster import Cluster, ClusterNode
from .services import compile_services


def vxlan(cluster: Cluster, node: ClusterNode, ns_of) -> list:
    be = cluster.backend
    dev = be.device
    ns = ns_of(node.name)
    ops: list = [
        P.Link(ns=ns, name=dev, kind="vxlan", mtu=node.mtu, mac=node.vtep_mac, stage=P.STAGE_DEVICE,
               vxlan=(("id", be.vni), ("local", str(node.ip)), ("port", be.port), ("dev", node.underlay),
                      ("learning", False), ("gbp", be.gbp))),
        P.Addr(ns, dev, f"{node.subnet.network_address}/32"),
    ]
    for peer in cluster.nodes.values():
        if peer is node:
            continue
        if be.direct_routing and peer.ip in node.underlay_net:
            ops.append(P.Route(ns, str(peer.subnet), (P.Nexthop(str(peer.ip), node.underlay),)))
            continue
        vtep = str(peer.subnet.network_address)
        ops += [P.Neigh(ns, dev, vtep, peer.vtep_mac),
                P.Fdb(ns, dev, peer.vtep_mac, str(peer.ip)),
                P.Route(ns, str(peer.subnet), (P.Nexthop(vtep, dev),), onlink=True)]
    return ops


def host_gw(cluster: Cluster, node: ClusterNode, ns_of) -> list:
    return [P.Route(ns_of(node.name), str(peer.subnet), (P.Nexthop(str(peer.ip), node.underlay),))
            for peer in cluster.nodes.values() if peer is not node]


def ipip(cluster: Cluster, node: ClusterNode, ns_of) -> list:
    dev = cluster.backend.device
    ns = ns_of(node.name)
    ops: list = [
        P.Link(ns=ns, name=dev, kind="ipip", mtu=node.mtu, stage=P.STAGE_DEVICE,
               ipip=(("local", str(node.ip)), ("remote", None), ("pmtudisc", False))),
        P.Addr(ns, dev, f"{node.subnet.network_address}/32"),
    ]
    for peer in cluster.nodes.values():
        if peer is node:
            continue
        if cluster.backend.direct_routing and peer.ip in node.underlay_net:
            ops.append(P.Route(ns, str(peer.subnet), (P.Nexthop(str(peer.ip), node.underlay),)))
        else:
            ops.append(P.Route(ns, str(peer.subnet), (P.Nexthop(str(peer.ip), dev),), onlink=True))
    return ops


def udp(cluster: Cluster, node: ClusterNode, ns_of) -> list:
    be = cluster.backend
    dev = be.device
    ns = ns_of(node.name)
    routes = ",".join(f"{peer.subnet}@{peer.ip}" for peer in cluster.nodes.values() if peer is not node)
    return [
        P.Link(ns=ns, name=dev, kind="tun", mtu=node.mtu, stage=P.STAGE_DEVICE),
        P.Addr(ns, dev, f"{node.subnet.network_address}/32"),
        P.Route(ns, str(cluster.network), (P.Nexthop(None, dev),), scope="global"),
        P.Daemon(ns=ns, node=node.name, kind="udp", dev=dev,
                 config=(("local", str(node.ip)), ("port", be.port),
                         ("address", str(node.subnet.network_address)), ("routes", routes))),
    ]


BACKENDS = {"vxlan": vxlan, "host-gw": host_gw, "ipip": ipip, "udp": udp}


def compile_cluster(topo, plan: P.Plan) -> None:
    cluster: Cluster = topo.cluster
    build = BACKENDS[cluster.backend.type]
    for node in cluster.nodes.values():
        for op in build(cluster, node, lambda name: topo.nodes[name].ns):
            plan.add(op)
        plan.notes[node.name] = {
            "subnet.env": cluster.subnet_env(node),
            "backend": cluster.backend.type,
            "device": cluster.backend.device,
        }
    compile_services(topo, plan)      # flannel's ip-masq and kube-proxy's rules, per node
