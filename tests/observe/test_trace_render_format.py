"""`nslab trace`'s text at 80 and 120 columns and piped: lines wrapped between header parts
(the issue saw ~170-character lines), every MAC, address and kernel entry printed whole, and
the final time labelled. The result is a real `nslab trace --json` of the bundled spine-leaf
lab (client -> web-worker3 over VXLAN), with a multipath route added."""
from __future__ import annotations

import copy
import io
import json
import os
import re

import pytest

from nslab import console as out
from nslab.observe import trace

RESULT = os.path.join(os.path.dirname(__file__), "data", "trace-spine-leaf.json")
ANSI = re.compile(r"\x1b\[[0-9;?]*[a-zA-Z]")
WORD = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}|\d+\.\d+\.\d+\.\d+(?:/\d+)?|flannel\.\d+|veth[0-9a-f]{8}")


def render(r: dict, columns: int | None) -> str:
    buf = io.StringIO()
    trace.render(out.make(terminal=columns is not None, columns=columns, file=buf), r)
    return ANSI.sub("", buf.getvalue())


@pytest.mark.parametrize("columns", [80, 120, None], ids=["80", "120", "piped"])
def test_trace_lines_fit_and_nothing_is_cut(columns, monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)         # piped: PIPED_WIDTH unless COLUMNS says
    r = json.load(open(RESULT))
    text = render(r, columns)
    limit = columns or trace.PIPED_WIDTH
    assert max(len(line) for line in text.splitlines()) <= limit, text
    assert "…" not in text
    flat = " ".join(text.split())
    source = json.dumps(r)
    words = set(WORD.findall(source))
    assert len(words) > 20
    for w in words:
        assert re.search(rf"(?<![\w:.]){re.escape(w)}(?![\w:])", flat), w     # whole, never split by a wrap
    for p in ("request", "reply"):
        for h in r[p]["hops"]:
            for d in h["decisions"]:
                for part in d["text"].split("\n\t"):
                    assert " ".join(part.split()) in flat, part
    assert re.search(r"^trace took \d+ ms \(", text.splitlines()[-1])


def test_trace_drop_is_said_whole():
    r = json.load(open(RESULT))
    bad = copy.deepcopy(r)
    bad["request"]["delivered"] = False
    bad["request"]["drop"] = dict(node="leaf02", iface="eth1", reason="no route",
                                  detail="no route to 10.244.3.2 in leaf02's main table (ip route get 10.244.3.2)")
    text = render(bad, 80)
    assert "dropped at leaf02 eth1 (no route):" in " ".join(text.split())
    assert max(len(line) for line in text.splitlines()) <= 80


def test_piped_trace_honours_columns(monkeypatch):
    monkeypatch.setenv("COLUMNS", "60")
    text = render(json.load(open(RESULT)), None)
    assert max(len(line) for line in text.splitlines()) <= 60 < trace.PIPED_WIDTH, text
    assert "…" not in text


@pytest.mark.parametrize("columns", [100, None], ids=["100", "piped"])
def test_brief_trace_is_one_line_per_hop(columns, monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    r = json.load(open(RESULT))
    buf = io.StringIO()
    trace.render_brief(out.make(terminal=columns is not None, columns=columns, file=buf), r)
    lines = ANSI.sub("", buf.getvalue()).splitlines()
    hops = [line for line in lines if re.match(r"^ +\d+ ", line)]
    assert len(hops) == len(r["request"]["hops"]) + len(r["reply"]["hops"]) == 40
    assert len(lines) == 1 + 2 * 2 + 40                 # title; per direction its kind and its end
    assert max(map(len, lines)) <= (columns or trace.PIPED_WIDTH)
    assert hops[3].split()[:4] == ["4", "worker1", "flannel.4000", "out"]
    assert "route 10.244.3.0/24 via 10.244.3.0 dev flannel.4000 onlink" in hops[3]
    assert "outer ip 10.0.0.21 > 30.0.0.23 ttl 64 | udp" in hops[6] and "eth " not in hops[6]
    assert lines[22] == "  delivered to web-worker3" and lines[-1] == "  delivered to client"
    assert [line for line in lines if len(line) == (columns or trace.PIPED_WIDTH)] == \
           [line for line in lines if line.endswith("…")]      # only lines too long are cut, and marked
