"""The TxChecksum op (ethtool -K DEV tx off) as apply performs it: an ioctl inside the
node's namespace; the kernel then also drops TSO on the device."""
from __future__ import annotations

import os
import subprocess

import pytest

from nslab.apply import netns
from nslab.apply.kernel import set_tx_checksum

TOPO = os.path.join(os.path.dirname(__file__), "..", "..", "topologies")


def features(lab, node, dev) -> dict[str, str]:
    out = lab.exec(node, "ethtool", "-k", dev, check=True).stdout
    return {k.strip(): v.split()[0] for k, _, v in (line.partition(":") for line in out.splitlines()[1:])
            if v.strip()}


def test_tx_checksum_off_and_on_inside_a_node(nslab_lab):
    lab = nslab_lab(os.path.join(TOPO, "diy-veth.yaml"))
    try:
        assert features(lab, "ns1", "veth0")["tx-checksumming"] == "on"
        with netns.enter(lab.ns("ns1")):
            set_tx_checksum("veth0", False)
        f = features(lab, "ns1", "veth0")
        assert f["tx-checksumming"] == "off" and f["tx-tcp-segmentation"] == "off"   # TSO dropped with it
        assert features(lab, "ns2", "veth1")["tx-checksumming"] == "on"      # only that device
        assert lab.ping("ns1", "10.1.1.3").ok
        with netns.enter(lab.ns("ns1")):
            set_tx_checksum("veth0", True)
        assert features(lab, "ns1", "veth0")["tx-checksumming"] == "on"
    finally:
        lab.down()
