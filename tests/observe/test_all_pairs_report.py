"""All-pairs failure reporting without root (issue 24 item 4): probe.all_pairs over
sockets that stand in for each endpoint's raw ICMP socket (a datagram socketpair: what one
endpoint "sends" to another comes back as that one's echo reply, unless the destination is
silent), and checks.run_all_pairs' report of what went missing.  The real prober on a real
lab is tests/integration/test_allpairs_scale.py."""
from __future__ import annotations

import errno
import re
import socket
import struct

import pytest

from nslab import model
from nslab.observe import checks, probe

STAR = """\
hosts: [h1, h2, h3, h4, h5]
routers: [r]
links:
""" + "".join(f"  - [{{node: h{i}, ip: 10.1.{i}.2/24}}, {{node: r, ip: 10.1.{i}.1/24}}]\n" for i in range(1, 6))


class FakeNet:
    """Endpoints by namespace; `off`: its sends fail (ENETUNREACH) and nobody's reach it;
    `silent`: requests to it go unanswered."""

    def __init__(self, eps: list[probe.Endpoint], off=(), silent=()):
        self.ip_ns = {ep.ip: ep.ns for ep in eps}
        self.off, self.silent = set(off), set(silent) | set(off)
        self.socks: dict[str, FakeSock] = {}
        self.requests = 0

    def icmp_socket(self, ns: str, rcvbuf: int = 0) -> "FakeSock":
        self.socks[ns] = FakeSock(self, ns)
        return self.socks[ns]


class FakeSock:
    def __init__(self, net: FakeNet, ns: str):
        self.net, self.ns = net, ns
        self.inbox, self.feed = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.inbox.setblocking(False)
        self.ip = next(ip for ip, n in net.ip_ns.items() if n == ns)

    def fileno(self) -> int:
        return self.inbox.fileno()

    def recv(self, size: int) -> bytes:
        return self.inbox.recv(size)

    def sendto(self, packet: bytes, addr) -> int:
        if self.ns in self.net.off:
            raise OSError(errno.ENETUNREACH, "Network is unreachable")
        kind, _code, _sum, ident, seq = struct.unpack_from("!BBHHH", packet)
        assert kind == probe.ICMP_ECHO
        self.net.requests += 1
        dst = self.net.ip_ns[addr[0]]
        if dst not in self.net.silent:      # the reply, as the raw socket reads it: IP header first
            ip_header = bytes([0x45]) + bytes(11) + socket.inet_aton(addr[0]) + socket.inet_aton(self.ip)
            self.feed.send(ip_header + struct.pack("!BBHHH", probe.ICMP_ECHO_REPLY, 0, 0, ident, seq) + packet[8:])
        return len(packet)

    def close(self) -> None:
        self.inbox.close()
        self.feed.close()


@pytest.fixture
def star(monkeypatch):
    monkeypatch.setattr(probe, "RESEND_AT", (0.02, 0.05))      # quick rounds: nothing real to wait for
    monkeypatch.setattr(probe, "LAST_WAIT", 0.02)
    monkeypatch.setattr(probe, "neighbour_table_fulls", lambda: 7)
    topo = model.load("star.yaml", STAR)
    eps = checks.pair_endpoints(topo)
    assert [e.name for e in eps] == ["h1", "h2", "h3", "h4", "h5"]
    return topo, eps


@pytest.mark.parametrize("threads", [1, 3])
def test_an_endpoint_off_the_network_fails_exactly_its_pairs(star, monkeypatch, threads):
    topo, eps = star
    off = eps[2]
    net = FakeNet(eps, off=[off.ns])
    monkeypatch.setattr(probe, "icmp_socket", net.icmp_socket)
    r = probe.all_pairs(eps, timeout=0.05, threads=threads)
    others = [e for e in eps if e is not off]
    expected = sorted([(e.name, off.name) for e in others] + [(off.name, e.name) for e in others])
    assert sorted(r.missing) == expected and not r.ok
    assert r.reachable == 20 - 8 and r.pairs == 20
    assert r.rounds == 1 + len(probe.RESEND_AT)                       # the silent pairs were re-sent, every round
    assert net.requests == 16 + 4 * len(probe.RESEND_AT) == r.sent    # every pair once, the unanswered each round
    assert r.errors == {off.name: f"{eps[3].ip}: Network is unreachable"}      # its first send (the next diagonal)
    assert all(s.inbox.fileno() == -1 for s in net.socks.values())   # every socket closed


def test_every_pair_answered_is_a_pass(star, monkeypatch):
    topo, eps = star
    monkeypatch.setattr(probe, "icmp_socket", FakeNet(eps).icmp_socket)
    res = checks.run_all_pairs(topo, timeout=0.05).results[0]
    assert res.ok and res.name == "all pairs of 5 hosts" and res.observed.startswith("20/20 reachable in ")
    assert re.fullmatch(r"20/20 pairs answered in \d+\.\d\d s \(20 echo requests, 1 round; probing \d+\.\d\d s "
                        r"of it\)", res.details[0]), res.details[0]
    assert res.details[1:] == []


def test_the_report_names_every_unanswered_pair_and_each_send_error(star, monkeypatch):
    topo, eps = star
    monkeypatch.setattr(probe, "icmp_socket", FakeNet(eps, off=["star.h3"], silent=["star.h5"]).icmp_socket)
    res = checks.run_all_pairs(topo, timeout=0.05).results[0]
    assert not res.ok and res.observed.startswith("9/20 reachable in ")
    assert re.search(r" s \(30 echo requests, 3 rounds; probing \d+\.\d\d s of it\)$", res.details[0]), res.details[0]
    assert res.details[1:] == ["no answer: h1 -> h3", "no answer: h1 -> h5", "no answer: h2 -> h3",
                               "no answer: h2 -> h5", "no answer: h3 -> h1", "no answer: h3 -> h2",
                               "no answer: h3 -> h4", "no answer: h3 -> h5", "no answer: h4 -> h3",
                               "no answer: h4 -> h5", "no answer: h5 -> h3",
                               "send error from h3: 10.1.4.2: Network is unreachable"]


def test_more_than_fifty_unanswered_pairs_are_counted_not_listed(monkeypatch):
    eps = [probe.Endpoint(f"p{i}", f"x.p{i}", f"10.2.0.{i}") for i in range(1, 9)]     # 56 pairs
    report = probe.AllPairs(eps, 0, [(s.name, d.name) for s in eps for d in eps if s is not d], 56, 0.5, 3)
    monkeypatch.setattr(probe, "all_pairs", lambda endpoints, timeout: report)
    fulls = iter([10, 12])                      # the ARP table overflowed twice meanwhile
    monkeypatch.setattr(probe, "neighbour_table_fulls", lambda: next(fulls))
    monkeypatch.setattr(probe, "gc_thresh3", lambda: "1024")
    monkeypatch.setattr(checks, "pair_endpoints", lambda topo, hosts=False: eps)
    topo = model.load("star.yaml", STAR)
    res = checks.run_all_pairs(topo).results[0]
    # the check's own wall-clock time (issue 19.6); the probing's 0.5 s is named in the details
    assert not res.ok and re.fullmatch(r"0/56 reachable in \d+\.\d\d s", res.observed), res.observed
    assert res.details[0] == f"0/56 pairs answered in {res.seconds:.2f} s (56 echo requests, 3 rounds; probing 0.50 s " \
                             f"of it)"
    assert res.details[1].startswith("the kernel's ARP table overflowed 2 times meanwhile: it is shared by every "
                                     "namespace on this machine and holds 1024 entries")
    assert res.details[2:52] == [f"no answer: {s} -> {d}" for s, d in report.missing[:50]]
    assert res.details[52:] == ["... and 6 more pairs"]
