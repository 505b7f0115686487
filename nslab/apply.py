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
from ipaddress import IPv4Interface, IPv4Network

from . import netns
from . import plan as P
from .errors import NslabError

SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK, NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x100, 0x200, 0x400
NLM_F_ACK_TLVS = 0x200
NLMSGERR_ATTR_MSG = 1
RTM_NEWLINK, RTM_NEWADDR, RTM_NEWROUTE, RTM_NEWNEIGH = 16, 20, 24, 28
RTM_DELLINK = 17
IFF_UP = 0x1
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
AF_BRIDGE = 7
RTPROT_BOOT = 3          # what `ip route add` uses; `ip route` then prints no "proto"
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK = 0, 253
RTN_UNICAST = 1
RTNH_F_ONLINK = 4
RT_TABLE_MAIN = 254
# attribute types (linux/if_link.h, if_addr.h, rtnetlink.h, neighbour.h)
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_MASTER, IFLA_LINKINFO, IFLA_NET_NS_FD = 1, 3, 4, 10, 18, 28
IFLA_INFO_KIND, IFLA_INFO_DATA, IFLA_INFO_SLAVE_KIND, IFLA_INFO_SLAVE_DATA = 1, 2, 4, 5
VETH_INFO_PEER = 1
IFLA_BR_STP_STATE = 5
IFLA_BRPORT_MODE = 4
IFLA_VXLAN_ID, IFLA_VXLAN_LINK, IFLA_VXLAN_LOCAL, IFLA_VXLAN_LEARNING = 1, 3, 4, 7
IFLA_VXLAN_PORT, IFLA_VXLAN_GBP = 15, 23
IFLA_IPTUN_LOCAL, IFLA_IPTUN_REMOTE, IFLA_IPTUN_TTL, IFLA_IPTUN_TOS, IFLA_IPTUN_PMTUDISC = 2, 3, 4, 5, 10
IFA_ADDRESS, IFA_LOCAL, IFA_BROADCAST = 1, 2, 4
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_MULTIPATH, RTA_TABLE = 1, 4, 5, 9, 15
NDA_DST, NDA_LLADDR = 1, 2
CREATE = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
CHANGE = NLM_F_REQUEST | NLM_F_ACK
REPLACE = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
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

    def __init__(self, on_namespace_created=None, start_container=None):
        self.namespaces: dict[str, Namespace] = {}
        self.seq = 0
        self.on_namespace_created = on_namespace_created
        self.start_container = start_container    # Netns op with a container -> its PID (lab.py)

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

    def adopt_namespace(self, name: str, pid: int, sysctls: list[P.Sysctl]) -> Namespace:
        """A container's namespace: name it (netns.adopt) and open its socket from inside."""
        try:
            fd = netns.adopt(name, pid)
        except FileExistsError:
            raise ApplyError(f"network namespace {name} already exists (another lab or `ip netns add` made it); "
                             f"nslab will not touch it") from None
        try:
            return self._attach(name, fd, sysctls)
        except BaseException:
            os.close(fd)
            netns.remove(name)
            raise

    def open_namespace(self, name: str) -> Namespace:
        """An existing lab namespace (nslab rewire), with the indexes of what is in it."""
        return self._attach(name, os.open(netns.path(name), os.O_RDONLY | os.O_CLOEXEC), [])

    def _attach(self, name: str, fd: int, sysctls: list[P.Sysctl]) -> Namespace:
        with netns.Entered(fd):
            sock = open_route_socket()
            existing = socket.if_nameindex()
            for op in sysctls:
                netns.write_sysctl(op.key, op.value)
        ns = Namespace(name=name, fd=fd, sock=sock)
        for idx, dev in existing:
            ns.ifindex[dev] = idx
        ns.next_index = max(idx for idx, _ in existing) + 1 if existing else 2
        self.namespaces[name] = ns
        return ns

    def delete_links(self, ns: Namespace, names: list[str]) -> None:
        """Delete devices (a veth takes its peer with it, at once)."""
        msgs = []
        for dev in names:
            if dev in ns.ifindex:
                self.seq += 1
                data = _message(RTM_DELLINK, CHANGE, _ifinfomsg(ns.ifindex.pop(dev)))
                struct.pack_into("=I", data, 8, self.seq)
                msgs.append((self.seq, bytes(data), P.Up(ns.name, dev)))
        if msgs:
            self.send(ns, msgs)

    # ---- the plan ----------------------------------------------------------------------
    def apply(self, plan: P.Plan) -> None:
        ops = plan.staged()
        early_sysctls: dict[str, list] = {}
        for op in ops:
            if isinstance(op, P.Sysctl) and op.stage == P.STAGE_NAMESPACE:
                early_sysctls.setdefault(op.ns, []).append(op)
        for op in ops:
            if isinstance(op, P.Netns) and op.container is not None:
                self.adopt_namespace(op.ns, self.start_container(op), early_sysctls.get(op.ns, []))
            elif isinstance(op, P.Netns):
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
            if isinstance(op, P.TxChecksum):
                with netns.Entered(ns.fd):
                    set_tx_checksum(op.dev, op.on)
                continue
            if isinstance(op, P.Sysctl):
                with netns.Entered(ns.fd):
                    netns.write_sysctl(op.key, op.value)
                continue
            if isinstance(op, P.Link) and op.kind == "tun":
                # TUN devices come from an ioctl, not netlink, and the kernel picks their
                # index: send what is queued (it may hold indexes we chose), then create it.
                if messages:
                    self.send(ns, messages)
                    messages = []
                self._create_tun(ns, op)
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
    # Messages are packed with struct (helpers at the end of this file): pyroute2's generic
    # encoder costs about 150 us per message, more than the kernel's own work for a 200-host
    # lab.  tests/test_netlink_encoding.py checks every shape byte for byte against pyroute2.
    def encode(self, ns: Namespace, op) -> list[bytearray]:
        if isinstance(op, P.Link):
            return [self._link(ns, op)]
        if isinstance(op, P.Up):
            return [_message(RTM_NEWLINK, CHANGE, _ifinfomsg(ns.index(op.dev), IFF_UP, IFF_UP))]
        if isinstance(op, P.Addr):
            ifc = IPv4Interface(op.address)
            local = ifc.ip.packed
            if op.peer:
                peer = op.peer.split("/")[0]
                prefixlen = IPv4Interface(op.peer).network.prefixlen if "/" in op.peer else 32
                attrs = [_attr(IFA_LOCAL, local), _attr(IFA_ADDRESS, _ip4(peer))]
            else:
                prefixlen = ifc.network.prefixlen
                attrs = [_attr(IFA_LOCAL, local), _attr(IFA_ADDRESS, local)]
                if prefixlen < 31:
                    attrs.append(_attr(IFA_BROADCAST, ifc.network.broadcast_address.packed))
            return [_message(RTM_NEWADDR, CREATE,
                             _IFADDRMSG.pack(socket.AF_INET, prefixlen, 0, RT_SCOPE_UNIVERSE, ns.index(op.dev)),
                             *attrs)]
        if isinstance(op, P.Route):
            return [self._route(ns, op)]
        if isinstance(op, P.Neigh):
            return [_message(RTM_NEWNEIGH, REPLACE, _NDMSG.pack(socket.AF_INET, ns.index(op.dev), NUD_PERMANENT, 0, 0),
                             _attr(NDA_DST, _ip4(op.address)), _attr(NDA_LLADDR, _mac(op.lladdr)))]
        if isinstance(op, P.Fdb):
            return [_message(RTM_NEWNEIGH, REPLACE, _NDMSG.pack(AF_BRIDGE, ns.index(op.dev), NUD_PERMANENT, NTF_SELF, 0),
                             _attr(NDA_LLADDR, _mac(op.lladdr)), _attr(NDA_DST, _ip4(op.dst)))]
        if isinstance(op, P.BridgePort):
            return [_message(RTM_NEWLINK, CHANGE, _ifinfomsg(ns.index(op.dev)),
                             _attr(IFLA_LINKINFO, _attr(IFLA_INFO_SLAVE_KIND, b"bridge\0")
                                   + _attr(IFLA_INFO_SLAVE_DATA, _attr(IFLA_BRPORT_MODE, _U8.pack(int(op.hairpin))))))]
        raise ApplyError(f"cannot apply {op!r}")

    def _create_tun(self, ns: Namespace, op: P.Link) -> None:
        from .tunnel import open_tun
        with netns.Entered(ns.fd):
            try:
                os.close(open_tun(op.name, persist=True))
            except OSError as e:
                raise ApplyError(f"cannot create TUN device {op.name} in {ns.name}: {e.strerror}") from None
            idx = socket.if_nametoindex(op.name)
        ns.ifindex[op.name] = idx
        ns.next_index = max(ns.next_index, idx + 1)

    def _link(self, ns: Namespace, op: P.Link) -> bytearray:
        if op.kind == "tun":        # already created by _create_tun: set its MTU and bring it up
            return _message(RTM_NEWLINK, CHANGE, _ifinfomsg(ns.index(op.name), IFF_UP, IFF_UP),
                            _attr(IFLA_MTU, _U32.pack(op.mtu)))
        attrs = [_attr(IFLA_IFNAME, _str(op.name)), _attr(IFLA_MTU, _U32.pack(op.mtu))]
        if op.mac:
            attrs.append(_attr(IFLA_ADDRESS, _mac(op.mac)))
        if op.master:
            attrs.append(_attr(IFLA_MASTER, _U32.pack(ns.index(op.master))))
        info = _attr(IFLA_INFO_KIND, _str(op.kind))
        if op.kind == "veth":
            peer_ns = self.namespaces[op.peer.ns]
            peer = (_attr(IFLA_IFNAME, _str(op.peer.name)) + _attr(IFLA_MTU, _U32.pack(op.peer.mtu))
                    + _attr(IFLA_ADDRESS, _mac(op.peer.mac)) + _attr(IFLA_NET_NS_FD, _U32.pack(peer_ns.fd)))
            peer_index = peer_ns.allocate(op.peer.name)
            # The peer is not brought up here: veth_open() answers ENOTCONN until the pair is
            # linked, so the plan has an Up for it in the config stage.
            info += _attr(IFLA_INFO_DATA, _attr(VETH_INFO_PEER, _ifinfomsg(peer_index) + peer))
        elif op.kind == "vxlan":
            opts = dict(op.vxlan)
            data = (_attr(IFLA_VXLAN_ID, _U32.pack(opts["id"])) + _attr(IFLA_VXLAN_LOCAL, _ip4(opts["local"]))
                    + _attr(IFLA_VXLAN_PORT, struct.pack("!H", opts["port"]))
                    + _attr(IFLA_VXLAN_LEARNING, _U8.pack(int(opts.get("learning", False)))))
            if opts.get("dev"):
                data += _attr(IFLA_VXLAN_LINK, _U32.pack(ns.index(opts["dev"])))
            if opts.get("gbp"):
                data += _attr(IFLA_VXLAN_GBP, b"")
            info += _attr(IFLA_INFO_DATA, data)
        elif op.kind == "ipip":
            # The attributes flannel's netlink library sends: local, remote if any, pmtudisc,
            # ttl 0 (inherit), tos 0.
            opts = dict(op.ipip)
            data = _attr(IFLA_IPTUN_LOCAL, _ip4(opts["local"]))
            if opts.get("remote"):
                data += _attr(IFLA_IPTUN_REMOTE, _ip4(opts["remote"]))
            data += (_attr(IFLA_IPTUN_PMTUDISC, _U8.pack(int(opts.get("pmtudisc", True))))
                     + _attr(IFLA_IPTUN_TTL, _U8.pack(0)) + _attr(IFLA_IPTUN_TOS, _U8.pack(0)))
            info += _attr(IFLA_INFO_DATA, data)
        elif op.kind == "bridge":
            info += _attr(IFLA_INFO_DATA, _attr(IFLA_BR_STP_STATE, _U32.pack(0)))
        attrs.append(_attr(IFLA_LINKINFO, info))
        return _message(RTM_NEWLINK, CREATE, _ifinfomsg(ns.allocate(op.name), IFF_UP, IFF_UP), *attrs)

    def _route(self, ns: Namespace, op: P.Route) -> bytearray:
        dst = IPv4Network(op.dst)
        attrs = [_attr(RTA_TABLE, _U32.pack(RT_TABLE_MAIN))]
        if dst.prefixlen:
            attrs.append(_attr(RTA_DST, dst.network_address.packed))
        flags = RTNH_F_ONLINK if op.onlink else 0
        if len(op.nexthops) == 1:
            hop = op.nexthops[0]
            attrs.append(_attr(RTA_OIF, _U32.pack(ns.index(hop.dev))))
            if hop.via:
                attrs.append(_attr(RTA_GATEWAY, _ip4(hop.via)))
            scope = RT_SCOPE_UNIVERSE if hop.via or op.scope == "global" else RT_SCOPE_LINK
            rtm_flags = flags
        else:
            hops = b""
            for h in op.nexthops:
                gw = _attr(RTA_GATEWAY, _ip4(h.via)) if h.via else b""
                hops += _RTNEXTHOP.pack(_RTNEXTHOP.size + len(gw), flags, 0, ns.index(h.dev)) + gw
            attrs.append(_attr(RTA_MULTIPATH, hops))
            scope, rtm_flags = RT_SCOPE_UNIVERSE, 0
        return _message(RTM_NEWROUTE, CREATE,
                        _RTMSG.pack(socket.AF_INET, dst.prefixlen, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, scope,
                                    RTN_UNICAST, rtm_flags),
                        *attrs)

    def close(self):
        for ns in self.namespaces.values():
            ns.close()
        self.namespaces.clear()


# ---- netlink wire format ------------------------------------------------------------------
_NLMSGHDR = struct.Struct("=IHHII")     # length, type, flags, seq, pid
_IFINFOMSG = struct.Struct("=BxHiII")   # family, type, index, flags, change
_IFADDRMSG = struct.Struct("=BBBBI")    # family, prefixlen, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")    # family, dst_len, src_len, tos, table, protocol, scope, type, flags
_NDMSG = struct.Struct("=BxxxiHBB")     # family, ifindex, state, flags, type
_RTNEXTHOP = struct.Struct("=HBBi")     # length, flags, hops, ifindex
_RTATTR = struct.Struct("=HH")          # length, type
_U32 = struct.Struct("=I")
_U8 = struct.Struct("=B")


def _message(mtype: int, nl_flags: int, header: bytes, *attrs: bytes) -> bytearray:
    """nlmsghdr + fixed header + attributes (seq is filled in when the batch is sent)."""
    body = header + b"".join(attrs)
    return bytearray(_NLMSGHDR.pack(_NLMSGHDR.size + len(body), mtype, nl_flags, 0, 0) + body)


def _attr(atype: int, payload: bytes) -> bytes:
    """One rtattr, padded to 4 bytes; a nested attribute is an attr whose payload is attrs."""
    length = _RTATTR.size + len(payload)
    return _RTATTR.pack(length, atype) + payload + b"\0" * (-length & 3)


def _ifinfomsg(index: int, flags: int = 0, change: int = 0) -> bytes:
    return _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, flags, change)


def _str(text: str) -> bytes:
    return text.encode() + b"\0"


def _ip4(address: str) -> bytes:
    return socket.inet_pton(socket.AF_INET, address)


def _mac(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


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


SIOCETHTOOL, ETHTOOL_STXCSUM = 0x8946, 0x17


def set_tx_checksum(dev: str, on: bool) -> None:
    """ethtool's ETHTOOL_STXCSUM on `dev` in the calling thread's namespace.  Turning it off
    also makes the kernel drop TSO (netdev_fix_features), so GSO packets are segmented in
    software before the device."""
    import ctypes
    import fcntl
    value = ctypes.create_string_buffer(struct.pack("=II", ETHTOOL_STXCSUM, int(on)))
    ifreq = struct.pack("@16sP16x", dev.encode(), ctypes.addressof(value))   # struct ifreq: name, ifr_data
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        try:
            fcntl.ioctl(s.fileno(), SIOCETHTOOL, ifreq)
        except OSError as e:
            raise ApplyError(f"cannot set tx checksumming {'on' if on else 'off'} on {dev}: {e.strerror}") from None
