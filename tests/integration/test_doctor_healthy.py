"""Issue 21.4: no false alarms.  `nslab doctor` on every shipped topology, healthy, under
every flannel backend (cluster topologies), with flannel's EnableNFTables (its rules in
nftables) and, where there are services, kube-proxy's nftables mode, reports nothing and
exits 0, its probes (pod pairs, node pairs, each service from each node) answered."""
from __future__ import annotations

import json
import re

import pytest

from conftest import TOPOLOGIES, container_engine_ready, nslab
from nslab import lab as labmod
from nslab.errors import TopologyError

BACKENDS = ("vxlan", "host-gw", "ipip", "udp")


def _accepts(topology, backend: str) -> bool:
    """The topology loads with that backend (host-gw refuses nodes across L2 segments)."""
    try:
        labmod.load(str(topology), overrides={"backend": backend})
    except TopologyError:
        return False
    return True


CLUSTERS = [t for t in sorted(TOPOLOGIES.glob("*.yaml")) if "\ncluster:" in t.read_text()]
CASES = [(t.name, None) for t in sorted(TOPOLOGIES.glob("*.yaml"))]
CASES += [(t.name, b) for t in CLUSTERS for b in BACKENDS if _accepts(t, b)]
# netfilter in nftables: flannel's EnableNFTables everywhere, kube-proxy's nftables mode
# (with flannel's rules in iptables or in nftables) where there are services
NFT = {"flannel-nft": "  enableNFTables: true\n", "proxy-nft": "  kubeProxy: {mode: nftables}\n",
       "both-nft": "  kubeProxy: {mode: nftables}\n  enableNFTables: true\n"}
CASES += [(t.name, "flannel-nft") for t in CLUSTERS if "container" not in t.name]
CASES += [(t.name, m) for t in CLUSTERS if "\n  services:" in t.read_text() for m in ("proxy-nft", "both-nft")]


@pytest.mark.parametrize("topology,backend", CASES, ids=[f"{t}-{b or 'as-written'}" for t, b in CASES])
def test_doctor_on_a_healthy_lab_reports_nothing(nslab_lab, tmp_path, topology, backend):
    if "container" in topology:
        container_engine_ready(topology)
    path = TOPOLOGIES / topology
    if backend in NFT:
        path = tmp_path / topology
        text = (TOPOLOGIES / topology).read_text()
        if "kubeProxy" in NFT[backend]:     # the file's own mode (services-features.yaml) gives way
            text = re.sub(r"\n  kubeProxy: \{[^}]*\}\n", "\n", text)
        path.write_text(text.replace("\ncluster:\n", "\ncluster:\n" + NFT[backend], 1))
        backend = None
    lab = nslab_lab(str(path), backend=backend)
    r = nslab("doctor", "-l", lab.name, "--json", timeout=120)
    report = json.loads(r.stdout)
    assert r.returncode == 0 and report["findings"] == [], report["findings"]
    assert report["nodes"] >= 2
    assert report["failed_pairs"] == [] and "answered" in report["probes"]
    assert report["failed_node_pairs"] == [] and report["failed_services"] == []
