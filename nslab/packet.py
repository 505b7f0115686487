"""IPv4 packet bytes shared by the tunnel daemons and the probes: the RFC 1071 checksum and
ICMP echo request/reply."""
from __future__ import annotations

import socket
import struct

ICMP_ECHO_REPLY, ICMP_ECHO = 0, 8


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of IPv4 headers and ICMP messages; the one copy in nslab."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def echo_request(ident: int, seq: int, payload: bytes) -> bytes:
    head = struct.pack("!BBHHH", ICMP_ECHO, 0, 0, ident, seq)
    return struct.pack("!BBHHH", ICMP_ECHO, 0, checksum(head + payload), ident, seq) + payload


def parse_echo_reply(packet: bytes) -> tuple[str, int, int, bytes] | None:
    """(source address, id, seq, payload) of an IPv4 echo reply as a raw socket reads it."""
    if len(packet) < 28:
        return None
    ihl = (packet[0] & 0x0F) * 4
    icmp = packet[ihl:]
    if len(icmp) < 8 or icmp[0] != ICMP_ECHO_REPLY:
        return None
    ident, seq = struct.unpack("!HH", icmp[4:8])
    return socket.inet_ntoa(packet[12:16]), ident, seq, icmp[8:]
