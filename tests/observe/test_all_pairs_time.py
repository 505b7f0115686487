"""`nslab test --all-pairs` reports its real time (issue 19.6): the check's whole wall-clock
time, not only the probing (sockets opened to last reply) that probe.all_pairs measures."""
from __future__ import annotations

import time
from pathlib import Path

from nslab import model
from nslab.observe import checks, probe

TOPOLOGIES = Path(__file__).resolve().parent.parent.parent / "topologies"


def test_all_pairs_reports_the_time_the_whole_check_took(monkeypatch):
    topo = model.load(str(TOPOLOGIES / "diy-veth.yaml"))
    eps = checks.pair_endpoints(topo)

    def slow_table_read():          # reading the kernel's neighbour statistics, made slow here
        time.sleep(0.3)
        return 0
    monkeypatch.setattr(probe, "neighbour_table_fulls", slow_table_read)
    monkeypatch.setattr(probe, "all_pairs", lambda endpoints, timeout: probe.AllPairs(
        endpoints, len(endpoints) * (len(endpoints) - 1), [], 2, elapsed=0.01))
    started = time.monotonic()
    report = checks.run_all_pairs(topo)
    wall = time.monotonic() - started
    assert len(eps) == 2
    assert 0.6 <= report.seconds <= wall                     # both reads of the table, and the probing
    res, = report.results
    assert res.seconds == report.seconds and res.observed == f"2/2 reachable in {report.seconds:.2f} s"
    assert res.details[0] == f"2/2 pairs answered in {report.seconds:.2f} s (2 echo requests, 1 round; probing " \
                             f"0.01 s of it)"
