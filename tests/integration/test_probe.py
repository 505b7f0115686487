"""The one probe engine (nslab/observe/probe.py) and the one sniffer (observe/sniffer.py) on
real namespaces: two hosts joined by a veth pair (diy-veth), listeners the test opens in
ns2 with sockets of this process."""
from __future__ import annotations

import errno
import socket
import threading
import time

import pytest

from nslab.observe import probe
from nslab.observe.sniffer import Sniffer

pytestmark = pytest.mark.nslab("topologies/diy-veth.yaml", scope="module")
NS2_IP = "10.1.1.3"
BODY = b"hello from ns2\n"


@pytest.fixture
def listeners(lab):
    """In ns2: an HTTP server on 8080, a UDP echo on 5353 ("pong:" + datagram), a UDP
    socket on 5354 that never answers.  Ports 8081/5355 stay closed."""
    ns2 = lab.ns("ns2")
    http = probe.open_in(ns2, socket.AF_INET, socket.SOCK_STREAM)
    http.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    http.bind((NS2_IP, 8080))
    http.listen(8)
    echo = probe.open_in(ns2, socket.AF_INET, socket.SOCK_DGRAM)
    echo.bind((NS2_IP, 5353))
    silent = probe.open_in(ns2, socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind((NS2_IP, 5354))
    stop = threading.Event()

    def serve_http():
        http.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = http.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                conn.settimeout(2)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY)

    def serve_echo():
        echo.settimeout(0.2)
        while not stop.is_set():
            try:
                data, peer = echo.recvfrom(65535)
            except (TimeoutError, OSError):
                continue
            echo.sendto(b"pong:" + data, peer)

    threads = [threading.Thread(target=serve_http, daemon=True), threading.Thread(target=serve_echo, daemon=True)]
    for t in threads:
        t.start()
    yield
    stop.set()
    for t in threads:
        t.join(5)
    for s in (http, echo, silent):
        s.close()


def test_ping(lab):
    ns1 = lab.ns("ns1")
    marker = probe.new_marker("t")
    out = probe.ping(ns1, NS2_IP, marker, timeout=3)
    assert out.ok and out.ttl == 64 and out.rtt_ms > 0 and "ttl=64" in out.detail, out
    gone = probe.ping(ns1, "10.1.1.9", marker, timeout=1)           # on the link, nobody has it
    assert not gone.ok and gone.error is None and "no echo reply" in gone.detail
    far = probe.ping(ns1, "192.0.2.1", marker, timeout=1)           # ns1 has no default route
    assert not far.ok and far.error == "Network is unreachable", far


def test_tcp_and_http(lab, listeners):
    ns1 = lab.ns("ns1")
    marker = probe.new_marker("t")
    assert probe.tcp(ns1, NS2_IP, 8080, marker, timeout=3).ok
    refused = probe.tcp(ns1, NS2_IP, 8081, marker, timeout=3)
    assert not refused.ok and refused.refused and "Connection refused" in refused.detail
    out = probe.http(ns1, NS2_IP, 8080, marker, timeout=3)
    assert out.ok and out.detail.endswith("-> HTTP/1.0 200 OK") and out.reply.endswith(BODY), out
    assert probe.send("http", ns1, NS2_IP, 8080, marker, 3).ok
    r = lab.http_get("ns1", "ns2", port=8080)
    assert r.returncode == 0 and r.stdout == BODY.decode() and r.stderr == ""
    r = lab.http_get("ns1", "ns2", port=8081)
    assert r.returncode == 7 and "Connection refused" in r.stderr and r.stdout == ""


def test_udp(lab, listeners):
    ns1 = lab.ns("ns1")
    marker = probe.new_marker("t")
    out = probe.udp(ns1, NS2_IP, 5353, marker, timeout=3)
    assert out.ok and out.reply == b"pong:" + marker and not out.refused, out
    refused = probe.udp(ns1, NS2_IP, 5355, marker, timeout=3)       # nothing bound: ICMP port unreachable
    assert not refused.ok and refused.refused and "refused" in refused.detail, refused
    t0 = time.monotonic()
    silent = probe.udp(ns1, NS2_IP, 5354, marker, timeout=1)        # bound, never answers
    assert not silent.ok and not silent.refused and "no answer within 1 s" in silent.detail
    assert time.monotonic() - t0 >= 0.9
    assert probe.send("udp", ns1, NS2_IP, 5353, marker, 3).ok
    assert lab.udp("ns1", "ns2", 5353, timeout=3).ok and lab.udp("ns1", "ns2", 5355, timeout=3).refused
    with pytest.raises(ValueError):
        probe.send("sctp", ns1, NS2_IP, 1, marker, 1)
    with pytest.raises(ValueError):
        probe.send("udp", ns1, NS2_IP, None, marker, 1)


def test_api_ping_keeps_its_results(lab):
    r = lab.ping("ns1", "ns2")
    assert r.ok and r.returncode == 0 and r.ttl == 64, r.output
    assert lab.ping("ns1", "ns2", size=1472, dont_fragment=True).ok      # 1472 + 28 = the veth's 1500
    big = lab.ping("ns1", "ns2", size=1473, dont_fragment=True)
    assert not big.ok and big.returncode == 2 and "message too long" in big.output, big.output
    assert lab.ping("ns1", "ns2", size=3000).ok                          # fragmented without DF
    none = lab.ping("ns1", "10.1.1.9", count=2, timeout=0.5)
    assert not none.ok and none.returncode == 1 and none.ttl is None


def test_sniffer_sees_a_probe_and_its_icmp_error_on_both_sides(lab):
    ns1, ns2 = lab.ns("ns1"), lab.ns("ns2")
    marker = probe.new_marker("t")
    with Sniffer({"a": ns1, "b": (ns2, "veth1")}) as sn:
        probe.ping(ns1, NS2_IP, probe.new_marker("other"), timeout=2)   # traffic without the marker
        sn.drain()
        assert probe.udp(ns1, NS2_IP, 5399, marker, timeout=2).refused
        frames = sn.frames(marker, wait=0.2)
    seen = {(f.node, f.iface, f.dir) for f in frames}
    # the datagram leaves ns1 and reaches ns2; the port unreachable (quoting it) goes back
    assert seen == {("a", "veth0", "out"), ("b", "veth1", "in"), ("b", "veth1", "out"), ("a", "veth0", "in")}, seen
    assert all(marker in f.data for f in frames)
    first = {(f.node, f.dir): f for f in reversed(frames)}
    assert first[("a", "out")].t_ns <= first[("b", "in")].t_ns <= first[("b", "out")].t_ns <= first[("a", "in")].t_ns
    assert [f.order for f in frames] == sorted(f.order for f in frames)
    assert abs(first[("a", "out")].t_ns - time.time_ns()) < 30e9        # kernel timestamps, real time


def test_fire_sends_without_waiting(lab):
    ns1, ns2 = lab.ns("ns1"), lab.ns("ns2")
    with Sniffer({"b": ns2}) as sn:
        sn.drain()
        fired = probe.fire(ns1, "icmp", NS2_IP, ident=4242, seq=7, payload=b"nslab-fire-x", ttl=9)
        fired.sock.close()
        assert fired.error is None and fired.sport == 0
        tcp = probe.fire(ns1, "tcp", NS2_IP, 8099, src="10.1.1.2")
        try:
            assert tcp.error is None and tcp.sport > 0
            frames = sn.read(lambda f: f, time.monotonic() + 0.5)
        finally:
            tcp.sock.close()
    echo = [f for f in frames if b"nslab-fire-x" in f.data and f.dir == "in"]
    assert echo and echo[0].data[14 + 8] == 9                          # IP TTL as asked
    syn = [f for f in frames if f.dir == "in" and f.data[14 + 9] == 6 and
           int.from_bytes(f.data[34:36], "big") == tcp.sport]
    assert syn, "the SYN from the port the kernel gave"
    far = probe.fire(ns1, "udp", "192.0.2.1", 9, payload=b"x")
    far.sock.close()
    assert far.error is not None and far.error.errno == errno.ENETUNREACH
