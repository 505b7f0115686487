"""The loader keeps its documented memory bound whatever the file does (issue 18, hole 8).

A 2.3 KB file of nested anchors and aliases, expanding to ~420,000 values 60 levels deep
(both within the loader's limits), took 315 MB and 1.8 s before validation: the loader kept
the full YAML path of every expanded value to find its line later.  The bound is the one
nslab/model/yamldoc.py documents (MAX_LOAD_MB); measured in a fresh process (max RSS, the
interpreter and nslab's imports included), through the code path of `nslab validate`.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from nslab.model import yamldoc

REPO = Path(__file__).resolve().parent.parent.parent
DEPTH = 55          # with the 9 levels around it, MAX_DEPTH (64)


def deep_aliases() -> str:
    """A valid lab whose `description:` (free text nslab ignores) holds the expansion: a0 is
    10 values, each a<i> 8 x a<i-1>, and the deep end 8 x a4 under DEPTH mappings."""
    lab = textwrap.dedent("""\
        # issue 18, hole 8: anchors expanded 60 levels deep
        name: deep-aliases
        hosts: [h1, h2, h3, h4]
        routers: [r1]
        segments:
          lan1: {subnet: 10.0.1.0/24, members: [h1, h2], gateway: r1}
          lan2: {subnet: 10.0.2.0/24, members: [h3, h4], gateway: r1}
        tests:
          - {name: across the router, ping: [h1, h4], expect: {ttl: 63}}
        description:
        """)
    lines = ["  a0: &a0 [" + ", ".join(["value"] * 10) + "]"]
    lines += [f"  a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 8) + "]" for i in range(1, 5)]
    deep = "{k: " * DEPTH + "[" + ", ".join(["*a4"] * 8) + "]" + "}" * DEPTH
    lines += ["  deep: " + "\n    ".join(textwrap.wrap(deep, 90, break_on_hyphens=False))]
    return lab + "\n".join(lines) + "\n"


CHILD = """
import json, sys, time
from nslab import lab
from nslab.compile import compile_topology
from nslab.errors import NslabError
start = time.monotonic()
try:
    compile_topology(lab.load(sys.argv[1]))
    outcome = "ok"
except NslabError as e:
    outcome = str(e)
# VmHWM, not getrusage's ru_maxrss: Linux carries the parent's peak into that across exec
# (a child of a 180 MB pytest reports 180 MB); VmHWM is this program's own memory
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"outcome": outcome, "seconds": time.monotonic() - start, "max_rss_mb": peak / 1024}))
"""


def test_deep_aliases_stay_within_the_documented_memory(tmp_path):
    path = tmp_path / "deep-aliases.yaml"
    path.write_text(deep_aliases())
    assert path.stat().st_size < 3000
    proc = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, timeout=300,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["outcome"] == "ok", got
    assert got["max_rss_mb"] <= yamldoc.MAX_LOAD_MB, got


def test_lines_are_found_through_aliases_and_merges():
    """Doc.line walks the composed nodes instead of a table of every path: the same lines
    as before -- a key's line for a mapping entry, the anchored value's lines through an
    alias, explicit keys over merged ones, earlier merge sources over later ones."""
    doc = yamldoc.load("x.yaml", textwrap.dedent("""\
        base: &b
          x: 1
          y: [1, {z: 3}]
        more: &m {x: 5, w: 4, y: 7}
        use:
          <<: [*b, *m]
          x: 2
        list: [*b,
          *m]
        """))
    assert doc.data["use"] == {"x": 2, "y": [1, {"z": 3}], "w": 4}
    assert doc.line(()) == 1
    assert doc.line(("use", "x")) == 7                 # written here
    assert doc.line(("use", "y", 1, "z")) == 3         # merged from base (through the alias)
    assert doc.line(("use", "w")) == 4                 # from the second source
    assert doc.line(("use", "y")) == 3                 # in both: the first source's
    assert doc.line(("list", 1, "w")) == 4
    assert doc.line(("list", 0, "y", 5)) == 3          # no item 5: the deepest that exists
    assert doc.line(("use", "nosuch", "deeper")) == 5
    assert doc.line(("list", "x")) == 8                # a list has no key 'x'
    assert yamldoc.load("e.yaml", "").line(("a",)) is None
