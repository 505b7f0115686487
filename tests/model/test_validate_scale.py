"""Validation at size (issue 12): refusals that come before the expensive work, error
messages that stay one sentence, and the fast address helpers that must equal ipaddress's."""
from __future__ import annotations

import pytest

from nslab import model
from nslab.errors import TopologyError
from nslab.model import parser


def mixed_router_lab(n: int) -> str:
    """Routers on links (pool, explicit subnet, explicit ends), on a numbered segment with a
    gateway and hosts, and on an unnumbered segment whose routers give their own addresses."""
    routers = [f"r{i}" for i in range(n)]
    lines = [f"routers: [{', '.join(routers)}]", "hosts: [h0, h1]", "segments:",
             "  lan:", "    subnet: 10.9.0.0/24", "    gateway: r0", "    members: [h0, h1, r1, r2]",
             "  bare:", "    members:"]
    lines += [f"      - r{i}: {{ip: 10.8.{i}.1/24}}" for i in (3, 4)] + ["      - r5"]
    lines.append("links:")
    for i in range(n - 1):
        if i % 3 == 0:
            lines.append(f"  - [r{i}, r{i + 1}]")
        elif i % 3 == 1:
            lines.append(f"  - {{ends: [r{i}, r{i + 1}], subnet: 10.{100 + i // 250}.{i % 250}.0/29}}")
        else:
            lines.append(f"  - {{ends: [{{node: r{i}, ip: 10.7.{i}.1/30}}, {{node: r{i + 1}, ip: 10.7.{i}.2/30}}]}}")
    lines.append("  - [h0, r7]")
    return "\n".join(lines) + "\n"


def test_route_count_is_refused_before_addresses_with_the_full_checks_number(monkeypatch):
    text = mixed_router_lab(60)
    full = model.load("mix.yaml", text=text)
    need = sum(1 for n in full.nodes.values() if n.kind == "router" for r in n.routes if r.origin == "computed")
    monkeypatch.setattr(parser, "MAX_COMPUTED_ROUTES", need - 1)
    with pytest.raises(TopologyError) as late:
        monkeypatch.setattr(parser.Builder, "_early_route_count", lambda self: None)
        model.load("mix.yaml", text=text)
    monkeypatch.undo()
    monkeypatch.setattr(parser, "MAX_COMPUTED_ROUTES", need - 1)

    def no_allocation(self):
        raise AssertionError("addresses allocated before the route count refused the lab")
    monkeypatch.setattr(parser.Builder, "_allocate_link_subnets", no_allocation)
    with pytest.raises(TopologyError) as early:
        model.load("mix.yaml", text=text)
    assert str(early.value) == str(late.value)
    assert f"would need {need:,} routes" in str(early.value)
    monkeypatch.setattr(parser, "MAX_COMPUTED_ROUTES", need)
    with pytest.raises(AssertionError, match="allocated before"):
        model.load("mix.yaml", text=text)     # at the cap: not refused, goes on to addresses


def test_unknown_names_list_a_few_then_how_many_more():
    routers = ", ".join(f"r{i}" for i in range(3000))
    with pytest.raises(TopologyError) as info:
        model.load("many.yaml", text=f"routers: [{routers}]\nlinks:\n  - [r0, x0a]\n")
    msg = str(info.value)
    assert msg.endswith("unknown node 'x0a' (nodes: r0, r1, r10, r100, r1000, r1001, r1002, r1003, r1004, r1005 "
                        "and 2,990 more)")
    assert "\n" not in msg and len(msg) < 200
    with pytest.raises(TopologyError) as info:
        model.load("few.yaml", text="hosts: [a, b]\nlinks:\n  - [a, c]\n")
    assert str(info.value).endswith("unknown node 'c' (nodes: a, b)")


def test_name_list():
    from nslab.model.types import name_list
    assert name_list([]) == "none"
    assert name_list(iter(["a", "b"])) == "a, b"
    assert name_list(range(12)) == "0, 1, 2, 3, 4, 5, 6, 7, 8, 9 and 2 more"
    assert name_list((f"n{i}" for i in range(10))) == ", ".join(f"n{i}" for i in range(10))
