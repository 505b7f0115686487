"""Netlink (NETLINK_ROUTE) wire encoding: constants, struct layouts and message builders.

Public so that every part of nslab that speaks rtnetlink by hand (apply's batches, the
userspace ipip daemon's route lookups) shares one encoding."""
from __future__ import annotations

import socket
import struct

NLM_F_REQUEST, NLM_F_ACK, NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x100, 0x200, 0x400
RTM_NEWLINK, RTM_NEWADDR, RTM_NEWROUTE, RTM_NEWNEIGH = 16, 20, 24, 28
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK = 0, 253
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
NLMSG_ERROR = 2
NLM_F_ACK_TLVS = 0x200
NLMSGERR_ATTR_MSG = 1
RTM_DELLINK = 17
RTM_DELADDR, RTM_DELROUTE, RTM_DELNEIGH = 21, 25, 29     # the inverses (a converge's undo)
RTM_GETLINK = 18
RTM_NEWQDISC, RTM_DELQDISC, RTM_GETQDISC = 36, 37, 38
NLMSG_DONE = 3
NLM_F_DUMP = 0x300
IFF_UP = 0x1
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
AF_BRIDGE = 7
RTPROT_BOOT = 3          # what `ip route add` uses; `ip route` then prints no "proto"
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
IFLA_VXLAN_GROUP = 2
IFLA_IPTUN_LOCAL, IFLA_IPTUN_REMOTE, IFLA_IPTUN_TTL, IFLA_IPTUN_TOS, IFLA_IPTUN_PMTUDISC = 2, 3, 4, 5, 10
IFA_ADDRESS, IFA_LOCAL, IFA_BROADCAST = 1, 2, 4
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_MULTIPATH, RTA_TABLE = 1, 4, 5, 9, 15
NDA_DST, NDA_LLADDR = 1, 2
CREATE = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
CHANGE = NLM_F_REQUEST | NLM_F_ACK
REPLACE = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
SEND_CHUNK = 64 * 1024


def open_route_socket() -> socket.socket:
    """A NETLINK_ROUTE socket in the calling thread's namespace, with extended acks (the
    kernel's own error strings) and capped acks (no echo of our message on error)."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
    sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
    sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind((0, 0))
    return sock

NLMSGHDR = struct.Struct("=IHHII")     # length, type, flags, seq, pid
IFINFOMSG = struct.Struct("=BxHiII")   # family, type, index, flags, change
IFADDRMSG = struct.Struct("=BBBBI")    # family, prefixlen, flags, scope, index
RTMSG = struct.Struct("=BBBBBBBBI")    # family, dst_len, src_len, tos, table, protocol, scope, type, flags
NDMSG = struct.Struct("=BxxxiHBB")     # family, ifindex, state, flags, type
RTNEXTHOP = struct.Struct("=HBBi")     # length, flags, hops, ifindex
RTATTR = struct.Struct("=HH")          # length, type
TCMSG = struct.Struct("=BxxxiIII")     # family, ifindex, handle, parent, info
U32 = struct.Struct("=I")
U8 = struct.Struct("=B")


def message(mtype: int, nl_flags: int, header: bytes, *attrs: bytes) -> bytearray:
    """nlmsghdr + fixed header + attributes (seq is filled in when the batch is sent)."""
    body = header + b"".join(attrs)
    return bytearray(NLMSGHDR.pack(NLMSGHDR.size + len(body), mtype, nl_flags, 0, 0) + body)


def attr(atype: int, payload: bytes) -> bytes:
    """One rtattr, padded to 4 bytes; a nested attribute is an attr whose payload is attrs."""
    length = RTATTR.size + len(payload)
    return RTATTR.pack(length, atype) + payload + b"\0" * (-length & 3)


def ifinfomsg(index: int, flags: int = 0, change: int = 0) -> bytes:
    return IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, flags, change)


def str_attr(text: str) -> bytes:
    return text.encode() + b"\0"


def ip4(address: str) -> bytes:
    return socket.inet_pton(socket.AF_INET, address)


def mac(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def extack(buf: bytes, offset: int, length: int, flags: int) -> str:
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


def attrs(buf: bytes, pos: int, end: int) -> dict[int, bytes]:
    """{type: payload} of the attributes in buf[pos:end] (the nested flag masked off)."""
    out = {}
    while pos + 4 <= end:
        alen, atype = RTATTR.unpack_from(buf, pos)
        if alen < 4:
            break
        out[atype & 0x3FFF] = bytes(buf[pos + 4: pos + alen])
        pos += (alen + 3) & ~3
    return out


def messages(buf: bytes):
    """(type, flags, seq, offset, length) of each netlink message in one received buffer."""
    pos = 0
    while pos + 16 <= len(buf):
        length, mtype, flags, seq, _pid = NLMSGHDR.unpack_from(buf, pos)
        if length < 16:
            break
        yield mtype, flags, seq, pos, length
        pos += (length + 3) & ~3
