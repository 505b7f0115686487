"""apply.py packs its netlink messages by hand (struct) for speed.  These tests hold every
message shape the plan can produce byte for byte against pyroute2's own encoder, which is
what apply.py used before (the reference below is that code, unchanged).  TUN devices are
not made by netlink (an ioctl creates them), so they are not compared here."""
from __future__ import annotations

import socket

import pytest

from nslab.apply import applier as A
from nslab import plan as P

from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST  # noqa: E402
from pyroute2.netlink.rtnl import RTM_NEWADDR, RTM_NEWLINK, RTM_NEWNEIGH, RTM_NEWROUTE  # noqa: E402
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg  # noqa: E402
from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP, ifinfmsg  # noqa: E402
from pyroute2.netlink.rtnl.ndmsg import ndmsg  # noqa: E402
from pyroute2.netlink.rtnl.rtmsg import rtmsg  # noqa: E402
from ipaddress import IPv4Interface, IPv4Network  # noqa: E402

CREATE, CHANGE = A.CREATE, A.CHANGE


def _msg(msg, mtype, nl_flags, attrs=(), **fields):
    for k, v in fields.items():
        msg[k] = v
    msg["attrs"] = list(attrs)
    msg["header"]["type"] = mtype
    msg["header"]["flags"] = nl_flags
    msg.encode()
    return bytearray(msg.data[: msg["header"]["length"]])


class Pyroute2Reference(A.Applier):
    """The pyroute2-based encoder apply.py had before hand-packing."""

    def encode(self, ns, op):
        if isinstance(op, P.Link):
            return [self._link(ns, op)]
        if isinstance(op, P.Up):
            return [_msg(ifinfmsg(), RTM_NEWLINK, CHANGE, index=ns.index(op.dev), flags=IFF_UP, change=IFF_UP)]
        if isinstance(op, P.Addr):
            ifc = IPv4Interface(op.address)
            attrs = [("IFA_LOCAL", str(ifc.ip)), ("IFA_ADDRESS", op.peer.split("/")[0] if op.peer else str(ifc.ip))]
            prefixlen = IPv4Interface(op.peer).network.prefixlen if op.peer and "/" in op.peer else \
                (32 if op.peer else ifc.network.prefixlen)
            if not op.peer and prefixlen < 31:
                attrs.append(("IFA_BROADCAST", str(ifc.network.broadcast_address)))
            return [_msg(ifaddrmsg(), RTM_NEWADDR, CREATE, family=socket.AF_INET, prefixlen=prefixlen,
                         index=ns.index(op.dev), scope=0, attrs=attrs)]
        if isinstance(op, P.Route):
            return [self._route(ns, op)]
        if isinstance(op, P.Neigh):
            return [_msg(ndmsg(), RTM_NEWNEIGH, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
                         family=socket.AF_INET, ifindex=ns.index(op.dev), state=A.NUD_PERMANENT,
                         attrs=[("NDA_DST", op.address), ("NDA_LLADDR", op.lladdr)])]
        if isinstance(op, P.Fdb):
            return [_msg(ndmsg(), RTM_NEWNEIGH, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
                         family=A.AF_BRIDGE, ifindex=ns.index(op.dev), state=A.NUD_PERMANENT, flags=A.NTF_SELF,
                         attrs=[("NDA_LLADDR", op.lladdr), ("NDA_DST", op.dst)])]
        if isinstance(op, P.BridgePort) and op.master:
            return [_msg(ifinfmsg(), RTM_NEWLINK, CHANGE, index=ns.index(op.dev),
                         attrs=[("IFLA_MASTER", ns.index(op.master))])]
        if isinstance(op, P.BridgePort):
            return [_msg(ifinfmsg(), RTM_NEWLINK, CHANGE, index=ns.index(op.dev), attrs=[
                ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_SLAVE_KIND", "bridge"),
                                             ("IFLA_INFO_SLAVE_DATA", {"attrs": [("IFLA_BRPORT_MODE", int(op.hairpin))]})]})])]
        raise A.ApplyError(f"cannot apply {op!r}")

    def _link(self, ns, op):
        attrs = [("IFLA_IFNAME", op.name), ("IFLA_MTU", op.mtu)]
        if op.mac:
            attrs.append(("IFLA_ADDRESS", op.mac))
        if op.master:
            attrs.append(("IFLA_MASTER", ns.index(op.master)))
        info = [("IFLA_INFO_KIND", op.kind)]
        if op.kind == "veth":
            peer_ns = self.namespaces[op.peer.ns]
            attrs += [("IFLA_NUM_TX_QUEUES", 1), ("IFLA_NUM_RX_QUEUES", 1)]
            peer_attrs = [("IFLA_IFNAME", op.peer.name), ("IFLA_MTU", op.peer.mtu),
                          ("IFLA_ADDRESS", op.peer.mac), ("IFLA_NET_NS_FD", peer_ns.fd),
                          ("IFLA_NUM_TX_QUEUES", 1), ("IFLA_NUM_RX_QUEUES", 1)]
            peer_index = peer_ns.allocate(op.peer.name)
            info.append(("IFLA_INFO_DATA", {"attrs": [("VETH_INFO_PEER", {
                "index": peer_index, "attrs": peer_attrs})]}))
        elif op.kind == "vxlan":
            opts = dict(op.vxlan)
            data = [("IFLA_VXLAN_ID", opts["id"]), ("IFLA_VXLAN_LOCAL", opts["local"]),
                    ("IFLA_VXLAN_PORT", opts["port"]), ("IFLA_VXLAN_LEARNING", int(opts.get("learning", False)))]
            if opts.get("dev"):
                data.append(("IFLA_VXLAN_LINK", ns.index(opts["dev"])))
            if opts.get("gbp"):
                data.append(("IFLA_VXLAN_GBP", True))
            info.append(("IFLA_INFO_DATA", {"attrs": data}))
        elif op.kind == "bridge":
            info.append(("IFLA_INFO_DATA", {"attrs": [("IFLA_BR_STP_STATE", 0)]}))
        return _msg(ifinfmsg(), RTM_NEWLINK, CREATE, index=ns.allocate(op.name), flags=IFF_UP, change=IFF_UP,
                    attrs=attrs + [("IFLA_LINKINFO", {"attrs": info})])

    def _route(self, ns, op):
        dst = IPv4Network(op.dst)
        attrs = [("RTA_TABLE", A.RT_TABLE_MAIN)]
        if dst.prefixlen:
            attrs.append(("RTA_DST", str(dst.network_address)))
        flags = A.RTNH_F_ONLINK if op.onlink else 0
        if len(op.nexthops) == 1:
            hop = op.nexthops[0]
            attrs.append(("RTA_OIF", ns.index(hop.dev)))
            if hop.via:
                attrs.append(("RTA_GATEWAY", hop.via))
            scope = A.RT_SCOPE_UNIVERSE if hop.via else A.RT_SCOPE_LINK
        else:
            attrs.append(("RTA_MULTIPATH", [
                {"oif": ns.index(h.dev), "hops": 0, "flags": flags,
                 "attrs": [("RTA_GATEWAY", h.via)] if h.via else []} for h in op.nexthops]))
            scope = A.RT_SCOPE_UNIVERSE
        return _msg(rtmsg(), RTM_NEWROUTE, CREATE, family=socket.AF_INET, dst_len=dst.prefixlen,
                    table=A.RT_TABLE_MAIN, proto=A.RTPROT_BOOT, scope=scope, type=1,
                    flags=flags if len(op.nexthops) == 1 else 0, attrs=attrs)


MAC1, MAC2 = "02:11:22:33:44:55", "0a:bc:de:f0:12:34"
NH = P.Nexthop
OPS = [
    P.Link(ns="a", name="br0", kind="bridge", mtu=1500, mac=MAC1),
    P.Link(ns="a", name="br-veth0", kind="veth", mtu=1500, mac=MAC2, master="br0",
           peer=P.Peer(ns="b", name="veth0", mtu=1450, mac=MAC1)),
    P.Link(ns="a", name="v1_r", kind="veth", mtu=9000, mac=MAC2,
           peer=P.Peer(ns="b", name="a-very-long-nm", mtu=1500, mac=MAC1)),
    P.Link(ns="a", name="flannel.1", kind="vxlan", mtu=1450, mac=MAC1,
           vxlan=(("id", 1), ("local", "10.0.0.1"), ("port", 8472), ("dev", "v1_r"), ("learning", False))),
    P.Link(ns="a", name="vx2", kind="vxlan", mtu=1450,
           vxlan=(("id", 4096), ("local", "192.168.1.254"), ("port", 4789), ("learning", True), ("gbp", True))),
    P.Up(ns="a", dev="br0"), P.Up(ns="b", dev="lo"),
    P.Addr(ns="b", dev="veth0", address="10.1.1.2/24"),
    P.Addr(ns="b", dev="veth0", address="10.0.200.7/16"),
    P.Addr(ns="a", dev="v1_r", address="172.31.0.1/30"),
    P.Addr(ns="a", dev="v1_r", address="172.31.0.5/31"),
    P.Addr(ns="a", dev="v1_r", address="10.9.9.9/32"),
    P.Addr(ns="a", dev="flannel.1", address="10.244.1.0/32", peer="10.244.2.0"),
    P.Addr(ns="a", dev="flannel.1", address="10.244.1.0/32", peer="10.244.0.0/16"),
    P.Route(ns="b", dst="0.0.0.0/0", nexthops=(NH(via="10.1.1.1", dev="veth0"),)),
    P.Route(ns="b", dst="10.1.2.0/24", nexthops=(NH(via="10.1.1.1", dev="veth0"),)),
    P.Route(ns="a", dst="10.244.2.0/24", nexthops=(NH(via="10.244.2.0", dev="flannel.1"),), onlink=True),
    P.Route(ns="a", dst="10.3.0.0/16", nexthops=(NH(via=None, dev="v1_r"),)),
    P.Route(ns="a", dst="10.4.0.0/16", nexthops=(NH(via="172.31.0.2", dev="v1_r"), NH(via="172.31.0.6", dev="br0"))),
    P.Route(ns="a", dst="10.5.0.0/16", nexthops=(NH(via="172.31.0.2", dev="v1_r"), NH(via=None, dev="br0")),
            onlink=True),
    P.Neigh(ns="a", dev="flannel.1", address="10.244.2.0", lladdr=MAC2),
    P.Fdb(ns="a", dev="flannel.1", lladdr=MAC2, dst="192.168.1.3"),
    P.BridgePort(ns="a", dev="br-veth0", hairpin=True),
    P.BridgePort(ns="a", dev="br-veth0", hairpin=False),
    P.BridgePort(ns="a", dev="br-veth0", master="br0"),    # a join's far end enslaved to its bridge
]


def _applier(cls):
    ap = cls()
    for name, fd in (("a", 7), ("b", 9)):
        ap.namespaces[name] = A.Namespace(name=name, fd=fd, sock=None, ifindex={"lo": 1})
    return ap


def test_every_shape_matches_pyroute2():
    ours, ref = _applier(A.Applier), _applier(Pyroute2Reference)
    for op in OPS:
        got = [bytes(m) for m in ours.encode(ours.namespaces[op.ns], op)]
        want = [bytes(m) for m in ref.encode(ref.namespaces[op.ns], op)]
        assert got == want, op
    assert ours.namespaces["a"].ifindex == ref.namespaces["a"].ifindex
    assert ours.namespaces["b"].ifindex == ref.namespaces["b"].ifindex


def test_unknown_device_is_an_apply_error():
    ours = _applier(A.Applier)
    with pytest.raises(A.ApplyError, match="namespace a has no interface nope"):
        ours.encode(ours.namespaces["a"], P.Up(ns="a", dev="nope"))
