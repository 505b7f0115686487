"""flannel's udp backend (pkg/backend/udp): a userspace proxy, flannel's first backend.

On each node: TUN device flannel0 (MTU = underlay - 28), address <subnet>.0/32, route
`<network> dev flannel0` (scope global, as flannel adds it), and the proxy daemon
(pkg/backend/udp/proxy_amd64.c; nslab's runs in the runtime) that carries each packet as
the payload of one UDP datagram to the port of the node whose lease holds its destination.
"""
from __future__ import annotations

from .. import plan as P
from . import Backend, Config, Dataplane, Style, Wire, port_number

DEVICE = "flannel0"
DEFAULT_PORT = 8285       # flannel's udp default


def parse(spec: dict, path: tuple, err, mtu) -> Config:
    return Config(type="udp", port=port_number(spec, path, err, DEFAULT_PORT))


def ops(cluster, node, ns_of) -> list:
    be = cluster.backend
    ns = ns_of(node.name)
    routes = ",".join(f"{peer.subnet}@{peer.ip}" for peer in cluster.nodes.values() if peer is not node)
    return [
        P.Link(ns=ns, name=DEVICE, kind="tun", mtu=node.mtu, stage=P.STAGE_DEVICE),
        P.Addr(ns, DEVICE, f"{node.subnet.network_address}/32"),
        P.Route(ns, str(cluster.network), (P.Nexthop(None, DEVICE),), scope="global"),
        P.Daemon(ns=ns, node=node.name, kind="udp", dev=DEVICE,
                 config=(("local", str(node.ip)), ("port", be.port),
                         ("address", str(node.subnet.network_address)), ("routes", routes))),
    ]


def describe(op) -> str:
    c = dict(op.config)
    return (f"flannel's udp proxy (nslab's tunnel daemon): reads {op.dev}, sends each packet as one UDP "
            f"datagram {c['local']}:{c['port']} -> <owner node>:{c['port']}, writes what arrives into {op.dev}")


BACKEND = Backend(
    name="udp", rank=3,
    keys=frozenset({"type", "port"}),
    # outer IP 20 + UDP 8
    overhead=28, overhead_source="flannel pkg/backend/udp/udp_network_amd64.go: encapOverhead = 28",
    parse=parse, device=lambda c: DEVICE, ops=ops, direct=lambda c, node, peer: False,
    style=Style("#d35400", "udp tunnel (flannel0)"),
    summary=lambda c: f"udp port {c.port}",
    edge_label=lambda c: f"udp :{c.port}",
    wire=Wire(layer="flannel-udp", ip_proto=17, inner="ip", description="UDP (flannel udp)"),
    # flanneld decrements the TTL as it reads from and as it writes into flannel0 (one each side)
    dataplane=Dataplane(kind="udp", process_name=b"flanneld", describe=describe, ttl_hops=2),
)
