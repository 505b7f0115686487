"""flannel's vxlan backend (pkg/backend/vxlan), the default.

On each node: device flannel.<VNI> (local = node IP, dev = the underlay interface, dstport,
nolearning, MTU = underlay - 50), address <subnet>.0/32; then for every other node, as
handleSubnetEvents does: neighbour `<their subnet>.0 lladdr <their VTEP MAC>`, FDB
`<their VTEP MAC> dst <their IP>`, route `<their subnet> via <their subnet>.0 dev
flannel.<VNI> onlink`.  With DirectRouting, a peer reached without a gateway (flannel's
ip.DirectRouting: a single route with no gateway) gets `<their subnet> via <their IP> dev
<underlay>` instead, and no neighbour or FDB entry.
"""
from __future__ import annotations

from .. import plan as P
from . import IFNAMSIZ, Backend, Config, Style, Wire, direct_route, flag, port_number

DEFAULT_PORT = 8472      # flannel passes port 0 and Linux's vxlan then uses its legacy 8472
IANA_PORT = 4789


def parse(spec: dict, path: tuple, err, mtu) -> Config:
    vni = spec.get("vni", 1)
    if isinstance(vni, bool) or not isinstance(vni, int) or not 0 <= vni <= 0xFFFFFF:
        raise err(path + ("vni",), f"VNI {vni!r} is out of range: a VXLAN network identifier is 24 bits "
                                   f"(0 to 16777215)")
    name = f"flannel.{vni}"
    if len(name) >= IFNAMSIZ:
        raise err(path + ("vni",), f"VNI {vni} makes flannel's device name, {name}, {len(name)} characters "
                                   f"long; Linux allows at most {IFNAMSIZ - 1} (use a VNI below 10000000)")
    port = port_number(spec, path, err, DEFAULT_PORT)
    return Config(type="vxlan", vni=vni, port=port, mtu=mtu(spec["mtu"], path + ("mtu",)) if "mtu" in spec else None,
                  direct_routing=flag(spec, "directRouting", path, err), gbp=flag(spec, "gbp", path, err))


def device(config: Config) -> str:
    return f"flannel.{config.vni}"


def ops(cluster, node, ns_of) -> list:
    be = cluster.backend
    dev = device(be)
    ns = ns_of(node.name)
    out: list = [
        P.Link(ns=ns, name=dev, kind="vxlan", mtu=node.mtu, mac=node.vtep_mac, stage=P.STAGE_DEVICE,
               vxlan=(("id", be.vni), ("local", str(node.ip)), ("port", be.port), ("dev", node.underlay),
                      ("learning", False), ("gbp", be.gbp))),
        P.Addr(ns, dev, f"{node.subnet.network_address}/32"),
    ]
    for peer in cluster.nodes.values():
        if peer is node:
            continue
        if direct_route(be, node, peer):
            out.append(P.Route(ns, str(peer.subnet), (P.Nexthop(str(peer.ip), node.underlay),)))
            continue
        vtep = str(peer.subnet.network_address)
        out += [P.Neigh(ns, dev, vtep, peer.vtep_mac),
                P.Fdb(ns, dev, peer.vtep_mac, str(peer.ip)),
                P.Route(ns, str(peer.subnet), (P.Nexthop(vtep, dev),), onlink=True)]
    return out


BACKEND = Backend(
    name="vxlan", rank=0,
    keys=frozenset({"type", "vni", "port", "mtu", "directRouting", "gbp"}),
    # outer Ethernet 14 + IP 20 + UDP 8 + VXLAN 8
    overhead=50, overhead_source="flannel pkg/backend/vxlan/vxlan_network.go: encapOverhead = 50",
    parse=parse, device=device, ops=ops, direct=direct_route,
    style=Style("#c0392b", "vxlan tunnel"),
    summary=lambda c: f"vxlan VNI {c.vni} port {c.port}",
    edge_label=lambda c: f"vxlan VNI {c.vni}",
    wire=Wire(layer="vxlan", ip_proto=17, inner="eth", description="UDP/VXLAN",
              default_ports=(IANA_PORT, DEFAULT_PORT),     # IANA's and Linux's: VXLAN in any lab
              header_len=8, fields=lambda h: {"vni": int.from_bytes(h[4:7], "big")},   # RFC 7348 header
              decap_note="decapsulated: udp port {port} is vxlan device {device} (id {id})"),
)
