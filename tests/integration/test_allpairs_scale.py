"""The all-pairs prober (observe/probe.py all_pairs) on a generated cluster: split between
worker threads, answered-flags per pair, packets built as they are sent.  A pod taken off
the network fails exactly its own pairs (both directions) and nothing else; everything
else answers with no false failure.
"""
from __future__ import annotations

import os
import subprocess
import threading

import pytest

from conftest import unique_lab_name
from nslab import generate, lab, model
from nslab.observe import checks, probe
from nslab.packet import echo_request

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (real namespaces)")


def test_packets_built_per_pair_match_echo_request():
    """The checksum all_pairs folds from the payload's precomputed sum is echo_request's."""
    payload = b"nslab all-pairs " + bytes(range(250, 256)) + b"\x01\x02"
    head = probe._echo_head_sum(payload)
    for ident, seq in [(0, 0), (0xFFFF, 0xFFFF), (0x1234, 999), (0xFFFE, 1)]:
        c = head + ident + seq
        c = (c >> 16) + (c & 0xFFFF)
        c += c >> 16
        assert (~c & 0xFFFF).to_bytes(2, "big") == echo_request(ident, seq, payload)[2:4], (ident, seq)


def test_zeros_lists_the_unanswered_destinations():
    assert list(probe._zeros(bytearray(b"\x01\x00\x01\x00\x00"))) == [1, 3, 4]
    assert list(probe._zeros(bytearray(b"\x01\x01"))) == []


@pytest.mark.parametrize("threads", [1, 3])
def test_one_pod_off_the_network_fails_exactly_its_pairs(tmp_path, root_unchanged, threads):
    name = unique_lab_name()
    path = tmp_path / "cluster.yaml"
    path.write_text(generate.render("cluster:2,2,3", name=name, file=str(path)))
    topo = model.load(str(path))
    eps = checks.pair_endpoints(topo)
    n = len(eps)
    assert n == 12
    try:
        lab.up(topo)
        before = probe.neighbour_table_fulls()
        r = probe.all_pairs(eps, threads=threads)
        assert r.ok and r.reachable == r.pairs == n * (n - 1), r.missing[:5]
        assert r.sent >= n * (n - 1) and not r.errors
        assert probe.neighbour_table_fulls() == before

        off = eps[5]
        subprocess.run(["ip", "-n", off.ns, "link", "set", "eth0", "down"], check=True)
        r = probe.all_pairs(eps, timeout=1.0, threads=threads)
        expected = sorted([(e.name, off.name) for e in eps if e is not off] +
                          [(off.name, e.name) for e in eps if e is not off])
        assert sorted(r.missing) == expected
        assert r.reachable == n * (n - 1) - 2 * (n - 1)
        assert r.rounds == 1 + len(probe.RESEND_AT)          # the silent pairs were re-sent, every round
        assert off.name in r.errors and "unreachable" in r.errors[off.name].lower()   # its own sends fail at once
    finally:
        lab.down(name)


def test_re_sends_go_on_while_the_arp_table_overflows_and_answers_still_come(tmp_path, root_unchanged, monkeypatch):
    """A lab with more dynamic neighbours than the kernel's shared ARP table holds loses
    requests until entries can be reclaimed: while the table overflows, all_pairs re-sends
    every ARP_GRACE seconds as long as a round brings new answers, and stops at the first
    round that brings none.  (The overflow counter is simulated; the silence is real: a
    pod that ignores echo requests, answering again later.)"""
    name = unique_lab_name()
    path = tmp_path / "cluster.yaml"
    path.write_text(generate.render("cluster:1,2,3", name=name, file=str(path)))
    topo = model.load(str(path))
    eps = checks.pair_endpoints(topo)
    quiet = eps[2]
    fulls = iter(range(10**6))
    monkeypatch.setattr(probe, "neighbour_table_fulls", lambda: next(fulls))
    monkeypatch.setattr(probe, "ARP_GRACE", 0.5)
    ignore = ["ip", "netns", "exec", quiet.ns, "sysctl", "-q", "-w"]
    try:
        lab.up(topo)
        subprocess.run(ignore + ["net.ipv4.icmp_echo_ignore_all=1"], check=True)
        r = probe.all_pairs(eps, timeout=1.0)
        assert sorted(r.missing) == sorted((e.name, quiet.name) for e in eps if e is not quiet)
        assert r.rounds == 1 + len(probe.RESEND_AT) + 1         # one grace round, no new answer: done

        back = threading.Timer(2.5, subprocess.run, [ignore + ["net.ipv4.icmp_echo_ignore_all=0"]])
        back.start()
        try:
            r = probe.all_pairs(eps, timeout=1.0)
        finally:
            back.join()
        assert r.ok and r.rounds > 1 + len(probe.RESEND_AT), (r.rounds, r.missing[:3])
    finally:
        lab.down(name)
