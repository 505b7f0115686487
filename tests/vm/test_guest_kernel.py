"""Kernel IPIP on a real kernel: proves the VM stage (tests/vm/run) end to end.

These tests need the kernel's ipip module, which this project's development machines lack;
they skip there and run in the VM stage on Debian's stock kernel (`tests/vm/run`), or on any
machine whose kernel has ipip (`pytest -m kernel_ipip`).
"""
from __future__ import annotations

import subprocess

import pytest

from nslab.observe.capture import Capture

from conftest import TIMEOUT_SCALE


pytestmark = [
    pytest.mark.kernel_ipip,
    pytest.mark.root,
]


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30 * TIMEOUT_SCALE)
    if check and proc.returncode != 0:
        raise AssertionError(f"ip {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def test_ipip_is_a_known_link_type():
    # This machine's kernel answers "Unknown device type"; a stock kernel creates the link.
    proc = subprocess.run(["unshare", "--net", "sh", "-c",
                           "ip link add name t1 type ipip local 10.9.9.1 remote 10.9.9.2 && ip -d -o link show t1"],
                          capture_output=True, text=True, timeout=30 * TIMEOUT_SCALE)
    assert proc.returncode == 0, proc.stderr
    assert "link/ipip 10.9.9.1 peer 10.9.9.2" in proc.stdout, proc.stdout


def test_ping_over_kernel_ipip_between_lab_namespaces(lab_factory):
    lab = lab_factory("diy-veth.yaml")
    ns1, ns2 = lab.ns("ns1"), lab.ns("ns2")

    # With ipip loaded, every new namespace gets its fallback device tunl0.
    for ns in (ns1, ns2):
        assert "link/ipip 0.0.0.0" in ip("-n", ns, "-o", "link", "show", "tunl0").stdout

    # `name t1`: a bare `t1` would be parsed as the abbreviation of txqueuelen.
    for ns, local, remote, inner in ((ns1, "10.1.1.2", "10.1.1.3", "192.168.100.1/30"),
                                     (ns2, "10.1.1.3", "10.1.1.2", "192.168.100.2/30")):
        ip("-n", ns, "link", "add", "name", "t1", "type", "ipip", "local", local, "remote", remote)
        ip("-n", ns, "addr", "add", inner, "dev", "t1")
        ip("-n", ns, "link", "set", "t1", "up")

    with Capture(ns2, "veth1", "ip proto 4") as cap:
        ping = lab.exec("ns1", "ping", "-n", "-c", "2", "-i", "0.2", "-W", str(2 * TIMEOUT_SCALE),
                        "192.168.100.2")
    assert ping.returncode == 0, ping.stdout + ping.stderr

    from scapy.layers.inet import ICMP, IP
    outer = [(p[IP].src, p[IP].dst, p[IP].proto, p[IP].payload[IP].src, p[IP].payload[IP].dst,
              p[IP].payload[ICMP].type) for p in cap.result if IP in p and IP in p[IP].payload]
    # Requests 10.1.1.2 -> 10.1.1.3 and replies back, IP protocol 4 carrying the inner ICMP.
    assert ("10.1.1.2", "10.1.1.3", 4, "192.168.100.1", "192.168.100.2", 8) in outer, outer
    assert ("10.1.1.3", "10.1.1.2", 4, "192.168.100.2", "192.168.100.1", 0) in outer, outer
    assert len(outer) == len(cap.result) >= 4
