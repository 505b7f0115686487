"""flannel's ipip backend (pkg/backend/ipip).

On each node: device flannel.ipip (local = node IP, remote any, nopmtudisc and ttl inherit
as its netlink library leaves them, MTU = underlay - 20), address <subnet>.0/32; per peer
`<their subnet> via <their IP> dev flannel.ipip onlink`, or via the underlay with
DirectRouting, as for vxlan.  Where the kernel has no ipip, the compile step swaps the
device for a TUN plus the userspace encapsulator below (same name and routes); node
`tunnels:` in ipip mode use the same dataplane.
"""
from __future__ import annotations

from .. import plan as P
from . import Backend, Config, Dataplane, Style, Wire, direct_route, flag

DEVICE = "flannel.ipip"


def parse(spec: dict, path: tuple, err, mtu) -> Config:
    return Config(type="ipip", mtu=mtu(spec["mtu"], path + ("mtu",)) if "mtu" in spec else None,
                  direct_routing=flag(spec, "directRouting", path, err))


def ops(cluster, node, ns_of) -> list:
    ns = ns_of(node.name)
    out: list = [
        P.Link(ns=ns, name=DEVICE, kind="ipip", mtu=node.mtu, stage=P.STAGE_DEVICE,
               ipip=(("local", str(node.ip)), ("remote", None), ("pmtudisc", False))),
        P.Addr(ns, DEVICE, f"{node.subnet.network_address}/32"),
    ]
    for peer in cluster.nodes.values():
        if peer is node:
            continue
        if direct_route(cluster.backend, node, peer):
            out.append(P.Route(ns, str(peer.subnet), (P.Nexthop(str(peer.ip), node.underlay),)))
        else:
            out.append(P.Route(ns, str(peer.subnet), (P.Nexthop(str(peer.ip), DEVICE),), onlink=True))
    return out


def describe(op) -> str:
    c = dict(op.config)
    return (f"userspace ipip on TUN {op.dev} (this kernel has no ipip): outer IP {c['local']} -> "
            f"{c['remote'] if c['remote'] != 'any' else 'the route gateway'}, protocol 4")


BACKEND = Backend(
    name="ipip", rank=2,
    keys=frozenset({"type", "directRouting", "mtu"}),
    overhead=20, overhead_source="flannel pkg/backend/ipip/ipip.go: expectMTU := extIface MTU - 20",
    parse=parse, device=lambda c: DEVICE, ops=ops, direct=direct_route,
    style=Style("#8e44ad", "ipip tunnel"),
    summary=lambda c: "ipip",
    edge_label=lambda c: "ipip",
    wire=Wire(layer="ipip", ip_proto=4, inner="ip", description="IPIP (IP proto 4)"),
    dataplane=Dataplane(kind="ipip", process_name=b"nslab-ipip", describe=describe),
)
