"""limits.check and choose_neighbours at exactly their limits, and the error's first words
(what mutation testing found unwatched, tests/README.md): a lab that needs exactly the hard
limit of descriptors fits, one more does not; a lab whose peers could need exactly
gc_thresh3 entries keeps ARP, one more switches to static entries."""
from __future__ import annotations

import pytest

from nslab import model
from nslab.errors import TopologyError
from nslab.model import limits


def single_switch(n: int) -> str:
    hosts = ", ".join(f"h{i}" for i in range(n))
    return f"routers: [gw]\nhosts: [{hosts}]\nsegments:\n  lan:\n    subnet: 10.0.0.0/16\n    gateway: gw\n    members: [{hosts}]\n"


def test_exactly_the_hard_limit_of_descriptors_fits(monkeypatch):
    """The window of open namespaces shrinks to the hard limit (hole 9 of issue 18): a lab is
    refused only when even MIN_OPEN_NAMESPACES of them do not fit beside the reserve."""
    monkeypatch.setattr(limits, "MIN_OPEN_NAMESPACES", 10)
    monkeypatch.setattr(limits, "FDS_PER_NAMESPACE", 3)
    monkeypatch.setattr(limits, "nofile_hard_limit", lambda: 94)       # 10 x 3 + 64
    model.load("s.yaml", text=single_switch(150))
    assert limits.open_namespaces(94) == 10
    monkeypatch.setattr(limits, "nofile_hard_limit", lambda: 93)
    with pytest.raises(TopologyError) as info:
        model.load("s.yaml", text=single_switch(150))
    assert str(info.value).startswith("s.yaml: building 152 namespaces needs about 94 open files "), str(info.value)


@pytest.mark.parametrize("thresh,chosen", [(420, "dynamic"), (419, "static")])
def test_exactly_gc_thresh3_possible_entries_keeps_arp(monkeypatch, thresh, chosen):
    monkeypatch.setattr(limits, "gc_thresh3", lambda: thresh)
    topo = model.load("s.yaml", text=single_switch(20))                 # 21 x 20 = 420 possible
    assert topo.neighbours == chosen
