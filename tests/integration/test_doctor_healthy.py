"""Issue 21.4: no false alarms.  `nslab doctor` on every shipped topology, healthy, under
every flannel backend (cluster topologies), reports nothing and exits 0, its probes
answered."""
from __future__ import annotations

import json

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


CASES = [(t.name, None) for t in sorted(TOPOLOGIES.glob("*.yaml"))]
CASES += [(t.name, b) for t in sorted(TOPOLOGIES.glob("*.yaml")) if "\ncluster:" in t.read_text()
          for b in BACKENDS if _accepts(t, b)]


@pytest.mark.parametrize("topology,backend", CASES, ids=[f"{t}-{b or 'as-written'}" for t, b in CASES])
def test_doctor_on_a_healthy_lab_reports_nothing(nslab_lab, topology, backend):
    if "container" in topology:
        container_engine_ready(topology)
    lab = nslab_lab(str(TOPOLOGIES / topology), backend=backend)
    r = nslab("doctor", "-l", lab.name, "--json", timeout=120)
    report = json.loads(r.stdout)
    assert r.returncode == 0 and report["findings"] == [], report["findings"]
    assert report["nodes"] >= 2
    assert report["failed_pairs"] == [] and "answered" in report["probes"]
