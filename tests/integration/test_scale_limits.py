"""Scale limits on real namespaces (issue 12): apply keeps a bounded number of descriptors
open whatever the lab's size, and `neighbours: static` installs permanent entries that carry
the traffic (every host reaches every other one, no ARP to the gateway).
"""
from __future__ import annotations

import os
import subprocess

import pytest

from conftest import unique_lab_name
from nslab import generate, lab, model
from nslab.apply.applier import Applier
from nslab.model import limits
from nslab.observe import probe

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (real namespaces)")


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_bounded_descriptors_and_static_neighbours(tmp_path, monkeypatch, root_unchanged):
    name = unique_lab_name()
    path = tmp_path / "clos.yaml"
    path.write_text("neighbours: static\n" + generate.render("clos:2,3,4", name=name, file=str(path)))
    topo = model.load(str(path))
    assert len(topo.nodes) == 20 and topo.neighbours == "static"
    monkeypatch.setattr(limits, "OPEN_NAMESPACES", 4)
    peak, use = [0], Applier._use

    def counting(self, ns, with_socket=True):
        found = use(self, ns, with_socket)
        peak[0] = max(peak[0], _open_fds())
        return found
    monkeypatch.setattr(Applier, "_use", counting)
    base = _open_fds()
    try:
        lab.up(topo)
        # 4 open (handle + socket) + pinned peers + 4 anonymous waiting (handle + socket): not 2 x 20
        assert 0 < peak[0] - base <= 24, (base, peak[0])
        assert _open_fds() <= base + 2
        hosts = [n for n in topo.nodes.values() if n.kind == "host"]
        result = probe.all_pairs([probe.Endpoint(h.name, h.ns, str(h.ifaces[0].ip.ip)) for h in hosts])
        assert result.ok, result.missing[:5]
        h, gw = topo.nodes["h01-01"], topo.nodes["leaf01"]
        neigh = subprocess.run(["ip", "-n", h.ns, "neigh", "show", "dev", "eth0"], capture_output=True,
                               text=True, check=True).stdout
        gw_ip = str(topo.segments["rack01"].gateway_ip)
        assert any(line.startswith(gw_ip + " ") and "PERMANENT" in line for line in neigh.splitlines()), neigh
        mates = {str(i.ip.ip) for n in hosts for i in n.ifaces if i.segment == "rack01" and n is not h}
        assert len(mates) == 3 and mates <= {line.split()[0] for line in neigh.splitlines() if "PERMANENT" in line}, \
            neigh                                            # a rack of 5: the full mesh
        gw_iface = next(i for i in gw.ifaces if i.segment == "rack01")
        neigh = subprocess.run(["ip", "-n", gw.ns, "neigh", "show", "dev", gw_iface.name, "nud", "permanent"],
                               capture_output=True, text=True, check=True).stdout
        assert {line.split()[0] for line in neigh.splitlines()} == \
            {str(i.ip.ip) for n in topo.nodes.values() for i in n.ifaces if i.segment == "rack01" and i.ip is not None and n is not gw}
    finally:
        lab.down(name)


def test_dynamic_lab_has_no_permanent_peer_entries(tmp_path, root_unchanged):
    """The notes' labs keep ARP: after a ping the gateway's entry is learnt (REACHABLE), not PERMANENT."""
    name = unique_lab_name()
    path = tmp_path / "clos.yaml"
    path.write_text(generate.render("clos:1,2,2", name=name, file=str(path)))
    topo = model.load(str(path))
    assert topo.neighbours == "dynamic"
    try:
        lab.up(topo)
        h = topo.nodes["h01-01"]
        gw_ip = str(topo.segments["rack01"].gateway_ip)
        subprocess.run(["ip", "netns", "exec", h.ns, "ping", "-c1", "-W2", gw_ip], check=True, capture_output=True)
        neigh = subprocess.run(["ip", "-n", h.ns, "neigh", "show", gw_ip], capture_output=True, text=True,
                               check=True).stdout
        assert neigh.strip() and "PERMANENT" not in neigh, neigh
    finally:
        lab.down(name)


def test_a_full_bridge_is_built(tmp_path, root_unchanged):
    """single:1023: 1,023 ports on one Linux bridge, the most it numbers (validate refuses
    the 1,024th); the last host answers the first."""
    name = unique_lab_name()
    topo = lab.load("single:1023", name=name)
    try:
        lab.up(topo)
        last = str(topo.nodes["h1023"].ifaces[0].ip.ip)
        out = probe.ping(topo.nodes["h1"].ns, last, probe.marker_payload(56), 10, 5)
        assert out.ok, out
    finally:
        lab.down(name)
