"""The probe engine's and sniffer's pure parts (no namespaces): what a check asks for, the
HTTP reader's length rule, and how trace turns a sniffed frame into a sighting.
The sockets themselves are tested on real namespaces in tests/integration/test_probe.py."""
from __future__ import annotations

import socket
import struct

import pytest

from nslab.observe import probe, trace
from nslab.observe.sniffer import Frame
from nslab.packet import checksum, echo_request


def ether_ip(proto: int, src: str, dst: str, payload: bytes, ttl: int = 64) -> bytes:
    head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0, ttl, proto, 0,
                       socket.inet_aton(src), socket.inet_aton(dst))
    head = head[:10] + struct.pack("!H", checksum(head)) + head[12:]
    return bytes.fromhex("020000000002" "020000000001" "0800") + head + payload


def test_send_refuses_unknown_kinds_and_missing_ports_before_opening_anything():
    with pytest.raises(ValueError, match="no probe kind 'sctp'"):
        probe.send("sctp", "no-such-ns", "10.0.0.1", 1, b"m", 1)
    for kind in ("tcp", "http", "udp"):
        with pytest.raises(ValueError, match=f"a {kind} probe needs a port"):
            probe.send(kind, "no-such-ns", "10.0.0.1", None, b"m", 1)
    assert probe.KINDS == ("ping", "tcp", "http", "udp")


def test_markers_are_unique_and_tagged():
    a, b = probe.new_marker("check"), probe.new_marker("check")
    assert a != b and a.startswith(b"nslab-check-") and len(a) == len(b"nslab-check-") + 16
    assert probe.marker_payload(40)[:6] == b"nslab-" and len(probe.marker_payload(40)) == 40


def test_content_length_ends_a_response_without_waiting_for_close():
    assert probe._content_length(b"HTTP/1.0 200 OK\r\nContent-Length: 15\r\nServer: x") == 15
    assert probe._content_length(b"HTTP/1.0 200 OK\r\ncontent-length:  7 ") == 7
    assert probe._content_length(b"HTTP/1.0 200 OK\r\nServer: x") is None
    assert probe._content_length(b"HTTP/1.0 200 OK\r\nContent-Length: -1") is None


def test_outcome_defaults():
    o = probe.Outcome(False, "x")
    assert (o.rtt_ms, o.ttl, o.reply, o.refused, o.error) == (None, None, b"", False, None)


def test_trace_observes_a_sniffed_frame_as_its_probe():
    p = trace.Probe("icmp", None, "10.1.1.3", ident=4242, seq=7)
    req = ether_ip(socket.IPPROTO_ICMP, "10.1.1.2", "10.1.1.3", echo_request(4242, 7, b"nslab-trace-x"))
    o = trace.observe(p, {}, Frame("ns1", "veth0", True, 1, req, 123, 5))
    assert (o.node, o.iface, o.dir, o.t_ns, o.order, o.kind) == ("ns1", "veth0", "out", 123, 5, "request")
    other = ether_ip(socket.IPPROTO_ICMP, "10.1.1.2", "10.1.1.3", echo_request(4242, 8, b"x"))
    assert trace.observe(p, {}, Frame("ns1", "veth0", True, 1, other, 1, 1)) is None     # another seq
    reply = bytearray(echo_request(4242, 7, b"y"))
    reply[0] = 0                                                    # type 0: echo reply
    got = trace.observe(p, {}, Frame("ns2", "veth1", False, 1,
                                     ether_ip(socket.IPPROTO_ICMP, "10.1.1.3", "10.1.1.2", bytes(reply)), 2, 2))
    assert got.kind == "reply" and got.dir == "in"
