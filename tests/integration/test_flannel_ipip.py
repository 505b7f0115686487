"""Note 003 §6: topologies/flannel-ipip.yaml, built for real and read the way the note reads it
(its tests: section runs in test_nslab_test.py with every shipped topology).

On this project's machines the kernel has no ipip: flannel.ipip is a TUN device with nslab's
userspace encapsulator and the wire is checked here; the kernel device itself (`ipip remote
any local 172.12.1.11`) is checked by the kernel_ipip test in the VM stage."""
from __future__ import annotations

import json

import pytest
from scapy.layers.inet import ICMP, IP

from nslab.observe.capture import Capture

from conftest import TIMEOUT_SCALE

pytestmark = pytest.mark.root


def link(lab, node, dev) -> dict:
    return json.loads(lab.exec(node, "ip", "-d", "-j", "link", "show", "dev", dev, check=True).stdout)[0]


def routes(lab, node) -> list[str]:
    return [r.strip() for r in lab.exec(node, "ip", "route", check=True).stdout.splitlines()]


def ping(lab, src, dst, *opts) -> str:
    proc = lab.exec(src, "ping", "-n", "-c", "2", "-i", "0.2", "-W", str(2 * TIMEOUT_SCALE), *opts, dst, timeout=20)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_note_003_6_devices_routes_and_wire(lab_factory):
    lab = lab_factory("flannel-ipip.yaml")
    for node, ip, subnet, peer_subnet, peer_ip in (("k8s-1", "172.12.1.11", "10.244.0", "10.244.1", "172.12.1.12"),
                                                  ("k8s-2", "172.12.1.12", "10.244.1", "10.244.0", "172.12.1.11")):
        assert link(lab, node, "ens33")["mtu"] == 1500
        assert link(lab, node, "flannel.ipip")["mtu"] == 1480 == link(lab, node, "cni0")["mtu"]
        addr = lab.exec(node, "ip", "-o", "addr", "show", "dev", "flannel.ipip", check=True).stdout
        assert f"inet {subnet}.0/32" in addr and f"inet {ip}/24" in lab.exec(node, "ip", "-o", "addr").stdout
        assert f"{peer_subnet}.0/24 via {peer_ip} dev flannel.ipip onlink" in routes(lab, node)
    assert link(lab, "cni-8v2vj", "eth0")["mtu"] == 1480
    assert routes(lab, "cni-8v2vj") == ["default via 10.244.0.1 dev eth0",
                                        "10.244.0.0/24 dev eth0 proto kernel scope link src 10.244.0.3",
                                        "10.244.0.0/16 via 10.244.0.1 dev eth0"]

    assert "ttl=62" in ping(lab, "cni-8v2vj", "10.244.1.7")
    ping(lab, "cni-8v2vj", "10.244.1.7", "-M", "do", "-s", "1452")        # 1480 fits
    too_big = lab.exec("cni-8v2vj", "ping", "-c", "1", "-M", "do", "-s", "1453", "10.244.1.7", timeout=20)
    assert too_big.returncode != 0 and "mtu=1480" in too_big.stdout + too_big.stderr

    with Capture(lab.ns("k8s-1"), "ens33", "ip proto 4") as cap:
        ping(lab, "cni-8v2vj", "10.244.1.7")
    req = next(p for p in cap.result if p[IP].src == "172.12.1.11")
    outer, inner = req[IP], req[IP].payload
    assert len(req) == 118                                      # the note's frame: 14 + 20 + 20 + 8 + 56
    assert (outer.dst, outer.proto) == ("172.12.1.12", 4)       # the route's gateway is the outer destination
    assert (inner.src, inner.dst, inner[ICMP].type) == ("10.244.0.3", "10.244.1.7", 8)
    assert outer.ttl == inner.ttl == 63                         # ttl inherit, after k8s-1 routed it
    reply = next(p for p in cap.result if p[IP].src == "172.12.1.12")
    assert (reply[IP].payload.src, reply[IP].payload.dst) == ("10.244.1.7", "10.244.0.3")


@pytest.mark.kernel_ipip
def test_kernel_flannel_ipip_is_the_notes_device(lab_factory, monkeypatch):
    monkeypatch.setenv("NSLAB_IPIP", "kernel")
    lab = lab_factory("flannel-ipip.yaml")
    shown = lab.exec("k8s-1", "ip", "-d", "link", "show", "flannel.ipip", check=True).stdout
    assert "ipip remote any local 172.12.1.11" in shown and "nopmtudisc" in shown, shown
    assert "ttl=62" in ping(lab, "cni-8v2vj", "10.244.1.7")
