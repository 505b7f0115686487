"""All pairs across machines, without root (issue 20): each machine's part sends from its
own endpoints only (probe.all_pairs' sources) to every endpoint, and the parts merged
(checks.pairs_report) give the result a whole run gives: every pair counted once, the
unanswered ones named.  The same stand-in sockets as test_all_pairs_report.py; the real
thing over sandbox machines is tests/integration/test_sandbox_allpairs.py."""
from __future__ import annotations

import pytest

from nslab.observe import checks, probe
from test_all_pairs_report import FakeNet, star  # noqa: F401 (a fixture)


@pytest.mark.parametrize("threads", [1, 2])
def test_machines_parts_merge_into_the_whole_runs_result(star, monkeypatch, threads):  # noqa: F811
    topo, eps = star
    silent = eps[4]                                 # on the second machine; answers nobody
    net = FakeNet(eps, silent=[silent.ns])
    monkeypatch.setattr(probe, "icmp_socket", net.icmp_socket)
    machines = [{"h1", "h2"}, {"h3", "h4", "h5"}]
    parts = []
    for here in machines:
        opened = set(net.socks)
        parts.append(checks.pairs_part(topo, here=here, timeout=0.05))
        # sockets only in this machine's namespaces
        assert {ns for ns in net.socks if ns not in opened} == {e.ns for e in eps if e.name in here}
    assert [p["pairs"] for p in parts] == [2 * 4, 3 * 4]
    assert sorted(m for p in parts for m in map(tuple, p["missing"])) == \
        sorted((e.name, silent.name) for e in eps if e is not silent)
    res, = checks.pairs_report(topo, False, parts, 0.5).results
    assert not res.ok and res.observed == "16/20 reachable in 0.50 s"
    assert res.name == "all pairs of 5 hosts"
    # a part missing (a machine whose sources never sent) cannot pass: its pairs are not counted
    whole = dict(parts[0], missing=[], reachable=parts[0]["pairs"])
    res, = checks.pairs_report(topo, False, [whole], 0.5).results
    assert not res.ok and res.observed == "8/8 reachable in 0.50 s"
