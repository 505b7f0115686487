"""trace through NAT, the pure parts: conntrack tuples followed across nodes (observe/nat.follow),
a probe found again by its translated ports, a path that passes a switch twice."""
from __future__ import annotations

from nslab.observe.nat import Tuple, follow
from nslab.observe.trace import Obs, Probe, build_path


def test_follow_chains_translations_and_skips_plain_entries():
    start = Tuple("172.31.0.6", "30.0.0.23", 40000, 30080)
    tables = {
        "leaf02": [(start, Tuple("30.0.0.23", "172.31.0.6", 30080, 40000))],          # forwarded: no NAT
        "worker3": [(start, Tuple("10.244.1.2", "10.244.3.0", 80, 5555))],            # DNAT + SNAT
        "worker1": [(Tuple("10.244.3.0", "10.244.1.2", 5555, 80), Tuple("10.244.1.2", "10.244.3.0", 80, 5555))],
    }
    assert follow(start, tables) == [("worker3", start, Tuple("10.244.3.0", "10.244.1.2", 5555, 80))]
    assert follow(Tuple("1.1.1.1", "2.2.2.2", 1, 2), tables) == []


def test_probe_matches_its_translated_ports_both_ways():
    p = Probe("tcp", None, "10.111.222.68", port=8080, ident=40000)
    syn, synack = {"layer": "tcp", "flags": "S"}, {"layer": "tcp", "flags": "SA"}
    assert p._match({**syn, "sport": 40000, "dport": 80}) is None
    p.aliases = ((40000, 80),)
    assert p._match({**syn, "sport": 40000, "dport": 80}) == "request"
    assert p._match({**synack, "sport": 80, "dport": 40000}) == "reply"
    assert p._match({**synack, "sport": 8080, "dport": 40000}) == "reply"


def test_build_path_passes_a_switch_twice():
    """NodePort: spine -> rack2 -> worker3, DNATed and encapsulated back out by rack2 to rack1."""
    peers = {("spine", "eth2"): ("rack2", "spine"), ("rack2", "spine"): ("spine", "eth2"),
             ("rack2", "worker3"): ("worker3", "enp0s3"), ("worker3", "enp0s3"): ("rack2", "worker3"),
             ("rack2", "rack1"): ("rack1", "rack2"), ("rack1", "worker1"): ("worker1", "enp0s3")}
    seen = [Obs(*o, t_ns=0, order=i, kind="request", layers=[]) for i, o in enumerate([
        ("spine", "eth2", "out"), ("rack2", "spine", "in"), ("rack2", "worker3", "out"),
        ("worker3", "enp0s3", "in"), ("worker3", "enp0s3", "out"), ("rack2", "worker3", "in"),
        ("rack2", "rack1", "out"), ("rack1", "rack2", "in"), ("rack1", "worker1", "out"),
        ("worker1", "enp0s3", "in")])]
    path, rest = build_path(seen, "spine", peers)
    assert [(o.node, o.iface) for o in path] == [(o.node, o.iface) for o in seen] and rest == []
