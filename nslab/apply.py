"""Execute a plan in the kernel, fast.

Why it is fast:
- Namespaces are created in-process (netns.create), no child per namespace.
- Each namespace gets one NETLINK_ROUTE socket opened from inside it; the socket stays
  bound to that namespace, so no setns() per operation.
- All messages for one namespace and one stage are concatenated into a single send();
  the kernel processes them in order and acknowledges each.  A few sends per namespace
  instead of one round trip per object.
- Interface indexes are chosen by us (requested in RTM_NEWLINK, per namespace), so an
  address or route can name its device in the same batch without reading anything back.
- Both ends of a veth are born in their target namespaces (IFLA_NET_NS_FD on the peer),
  so nothing ever exists in the root namespace, even for an instant.
"""
from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST
from pyroute2.netlink.rtnl import RTM_NEWADDR, RTM_NEWLINK, RTM_NEWNEIGH, RTM_NEWROUTE, RTM_SETLINK
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP, ifinfmsg
from pyroute2.netlink.rtnl.ndmsg import ndmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from . import netns
from . import plan as P
from .errors import NslabError

SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
NLMSG_ERROR = 2
NLM_F_ACK_TLVS = 0x200
NLMSGERR_ATTR_MSG = 1
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
AF_BRIDGE = 7
RTPROT_BOOT = 3          # what `ip route add` uses; `ip route` then prints no "proto"
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK, RT_SCOPE_HOST = 0, 253, 254
RTNH_F_ONLINK = 4
RT_TABLE_MAIN = 254
IFLA_BRPORT_MODE = 4
CREATE = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
CHANGE = NLM_F_REQUEST | NLM_F_ACK
SEND_CHUNK = 64 * 1024


class ApplyError(NslabError):
    pass


@dataclass
class Namespace:
    """A lab namespace as apply holds it: fd, netlink socket, and its interface indexes."""
    name: str
    fd: int
    sock: socket.socket
    ifindex: dict[str, int] = field(default_factory=dict)
    next_index: int = 2

    def allocate(self, dev: str) -> int:
        idx = self.next_index
        self.next_index += 1
        self.ifindex[dev] = idx
        return idx

    def index(self, dev: str) -> int:
        try:
            return self.ifindex[dev]
        except KeyError:
            raise ApplyError(f"namespace {self.name} has no interface {dev}") from None

    def close(self):
        self.sock.close()
        os.close(self.fd)


def open_route_socket() -> socket.socket:
    """A NETLINK_ROUTE socket in the calling thread's namespace, with extended acks (the
    kernel's own error strings) and capped acks (no echo of our message on error)."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
    sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
    sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind((0, 0))
    return sock


class Applier:
    """Applies a plan; `namespaces` holds what it opened (closed by close())."""

    def __init__(self, on_namespace_created=None):
        self.namespaces: dict[str, Namespace] = {}
        self.seq = 0
        self.on_namespace_created = on_namespace_created

    # ---- namespaces -------------------------------------------------------------------
    def create_namespace(self, name: str, sysctls: list[P.Sysctl]) -> Namespace:
        def inside():
            sock = open_route_socket()
            existing = socket.if_nameindex()   # lo, plus fallback tunnels on some kernels
            for op in sysctls:
                netns.write_sysctl(op.key, op.value)
            return sock, existing
        try:
            fd, (sock, existing) = netns.create(name, inside)
        except FileExistsError:
            raise ApplyError(f"network namespace {name} already exists (another lab or `ip netns add` made it); "
                             f"nslab will not touch it") from None
        ns = Namespace(name=name, fd=fd, sock=sock)
        for idx, dev in existing:
            ns.ifindex[dev] = idx
        ns.next_index = max(idx for idx, _ in existing) + 1 if existing else 2
        self.namespaces[name] = ns
        if self.on_namespace_created:
            self.on_namespace_created(name)
        return ns

    # ---- the plan ----------------------------------------------------------------------
    def apply(self, plan: P.Plan) -> None:
        ops = plan.staged()
        early_sysctls: dict[str, list] = {}
        for op in ops:
            if isinstance(op, P.Sysctl) and op.stage == P.STAGE_NAMESPACE:
                early_sysctls.setdefault(op.ns, []).append(op)
        for op in ops:
            if isinstance(op, P.Netns):
                self.create_namespace(op.ns, early_sysctls.get(op.ns, []))
        stages: dict[int, dict[str, list]] = {}
        for op in ops:
            if op.stage in (P.STAGE_NAMESPACE, P.STAGE_PROCESS):
                continue
            stages.setdefault(op.stage, {}).setdefault(op.ns, []).append(op)
        for stage in sorted(stages):
            for ns_name, ns_ops in stages[stage].items():
                self.run_batch(self.namespaces[ns_name], ns_ops)

    def run_batch(self, ns: Namespace, ops: list) -> None:
        messages: list[tuple[int, bytes, object]] = []
        for op in ops:
            if isinstance(op, P.Sysctl):
                with netns.Entered(ns.fd):
                    netns.write_sysctl(op.key, op.value)
                continue
            for data in self.encode(ns, op):
                self.seq += 1
                struct.pack_into("=I", data, 8, self.seq)
                messages.append((self.seq, bytes(data), op))
        if messages:
            self.send(ns, messages)

    def send(self, ns: Namespace, messages) -> None:
        pending = {seq: op for seq, _, op in messages}
        chunk = bytearray()
        for _, data, _ in messages:
            if len(chunk) + len(data) > SEND_CHUNK:
                ns.sock.send(chunk)
                chunk = bytearray()
            chunk += data
        if chunk:
            ns.sock.send(chunk)
        first_error = None
        while pending:
            buf = ns.sock.recv(1 << 20)
            offset = 0
            while offset + 16 <= len(buf):
                length, mtype, flags, seq, _pid = struct.unpack_from("=IHHII", buf, offset)
                if mtype == NLMSG_ERROR and seq in pending:
                    (code,) = struct.unpack_from("=i", buf, offset + 16)
                    op = pending.pop(seq)
                    if code != 0 and first_error is None:
                        first_error = (op, -code, _extack(buf, offset, length, flags))
                offset += (length + 3) & ~3
                if length == 0:
                    break
        if first_error:
            op, err, detail = first_error
            from .script import render_op
            cmd = "; ".join(render_op(op))
            raise ApplyError(f"the kernel refused `{cmd}`: {os.strerror(err)}" + (f" ({detail})" if detail else ""))

    # ---- encoding ------------------------------------------------------------------------
    def encode(self, ns: Namespace, op) -> list[bytearray]:
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
                         family=socket.AF_INET, ifindex=ns.index(op.dev), state=NUD_PERMANENT,
                         attrs=[("NDA_DST", op.address), ("NDA_LLADDR", op.lladdr)])]
        if isinstance(op, P.Fdb):
            return [_msg(ndmsg(), RTM_NEWNEIGH, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
                         family=AF_BRIDGE, ifindex=ns.index(op.dev), state=NUD_PERMANENT, flags=NTF_SELF,
                         attrs=[("NDA_LLADDR", op.lladdr), ("NDA_DST", op.dst)])]
        if isinstance(op, P.BridgePort):
            return [_msg(ifinfmsg(), RTM_NEWLINK, CHANGE, index=ns.index(op.dev), attrs=[
                ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_SLAVE_KIND", "bridge"),
                                             ("IFLA_INFO_SLAVE_DATA", {"attrs": [("IFLA_BRPORT_MODE", int(op.hairpin))]})]})])]
        raise ApplyError(f"cannot apply {op!r}")

    def _link(self, ns: Namespace, op: P.Link) -> bytearray:
        attrs: list = [("IFLA_IFNAME", op.name), ("IFLA_MTU", op.mtu)]
        if op.mac:
            attrs.append(("IFLA_ADDRESS", op.mac))
        if op.master:
            attrs.append(("IFLA_MASTER", ns.index(op.master)))
        info: list = [("IFLA_INFO_KIND", op.kind)]
        if op.kind == "veth":
            peer_ns = self.namespaces[op.peer.ns]
            peer_attrs = [("IFLA_IFNAME", op.peer.name), ("IFLA_MTU", op.peer.mtu),
                          ("IFLA_ADDRESS", op.peer.mac), ("IFLA_NET_NS_FD", peer_ns.fd)]
            peer_index = peer_ns.allocate(op.peer.name)
            # The peer is not brought up here: veth_open() answers ENOTCONN until the pair is
            # linked, so the plan has an Up for it in the config stage.
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

    def _route(self, ns: Namespace, op: P.Route) -> bytearray:
        dst = IPv4Network(op.dst)
        attrs: list = [("RTA_TABLE", RT_TABLE_MAIN)]
        if dst.prefixlen:
            attrs.append(("RTA_DST", str(dst.network_address)))
        flags = RTNH_F_ONLINK if op.onlink else 0
        if len(op.nexthops) == 1:
            hop = op.nexthops[0]
            attrs.append(("RTA_OIF", ns.index(hop.dev)))
            if hop.via:
                attrs.append(("RTA_GATEWAY", hop.via))
            scope = RT_SCOPE_UNIVERSE if hop.via else RT_SCOPE_LINK
        else:
            attrs.append(("RTA_MULTIPATH", [
                {"oif": ns.index(h.dev), "hops": 0, "flags": flags,
                 "attrs": [("RTA_GATEWAY", h.via)] if h.via else []} for h in op.nexthops]))
            scope = RT_SCOPE_UNIVERSE
        return _msg(rtmsg(), RTM_NEWROUTE, CREATE, family=socket.AF_INET, dst_len=dst.prefixlen,
                    table=RT_TABLE_MAIN, proto=RTPROT_BOOT, scope=scope, type=1,
                    flags=flags if len(op.nexthops) == 1 else 0, attrs=attrs)

    def close(self):
        for ns in self.namespaces.values():
            ns.close()
        self.namespaces.clear()


def _msg(msg, mtype: int, nl_flags: int, attrs=(), **fields) -> bytearray:
    for k, v in fields.items():
        msg[k] = v
    msg["attrs"] = list(attrs)
    msg["header"]["type"] = mtype
    msg["header"]["flags"] = nl_flags
    msg.encode()
    return bytearray(msg.data[: msg["header"]["length"]])


def _extack(buf: bytes, offset: int, length: int, flags: int) -> str:
    """The kernel's extended-ack error string, if it sent one."""
    if not flags & NLM_F_ACK_TLVS:
        return ""
    pos = offset + 16 + 4 + 16   # nlmsghdr, error code, echoed header (capped ack)
    end = offset + length
    while pos + 4 <= end:
        alen, atype = struct.unpack_from("=HH", buf, pos)
        if alen < 4:
            break
        if atype & 0x3FFF == NLMSGERR_ATTR_MSG:
            return buf[pos + 4: pos + alen].split(b"\0")[0].decode(errors="replace")
        pos += (alen + 3) & ~3
    return ""
