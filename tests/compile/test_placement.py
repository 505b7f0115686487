"""Placement (compile/placement.py): one plan -> a plan per machine + VXLAN stitches.

Goldens: tests/golden/placement/<name>.yaml in (its first line `# args: ...` gives the
command line's --machines/--stitch-port/--underlay-mtu), <name>.txt out: what `nslab
validate --machines` prints at 80 columns, then each machine's plan as `nslab script`
renders it.  Regenerate after an intended change with

    NSLAB_UPDATE_GOLDEN=1 python3 -m pytest -q tests/compile/test_placement.py

The properties below hold for every shipped topology spread over 2 and 3 machines: no
operation lost or duplicated, every operation on its namespace's machine, exactly the
veths that cross machines stitched, segments and racks whole, namespaces balanced, the same
answer twice.  No root: nothing touches the kernel."""
from __future__ import annotations

import difflib
import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from nslab import model
from nslab import plan as P
from nslab.compile import compile_topology
from nslab.compile import placement as pl
from nslab.compile.script import render as render_script
from nslab.errors import TopologyError, UsageError

TESTS = Path(__file__).parent.parent
GOLDEN = TESTS / "golden" / "placement"
SHIPPED = sorted((TESTS.parent / "topologies").glob("*.yaml"))
UPDATE = os.environ.get("NSLAB_UPDATE_GOLDEN") == "1"
CASES = sorted(GOLDEN.glob("*.yaml"))


def args_of(src: Path) -> dict:
    first = src.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# args:"), f"{src.name}: the first line gives the arguments (# args: ...)"
    words = shlex.split(first[len("# args:"):])
    opts = dict(zip(words[::2], words[1::2]))
    return dict(machines=pl.parse_machines(opts["--machines"], "--machines") if "--machines" in opts else None,
                port=int(opts.get("--stitch-port", pl.DEFAULT_STITCH_PORT)),
                underlay_mtu=int(opts.get("--underlay-mtu", pl.DEFAULT_UNDERLAY_MTU)))


def placed_of(src: Path) -> pl.Placed:
    topo = model.load(str(src))
    return pl.place(topo, compile_topology(topo), **args_of(src))


def rendered(src: Path) -> str:
    placed = placed_of(src)
    text = "\n".join(pl.render(placed, 80)) + "\n"
    for machine, plan in placed.plans.items():
        text += f"\n## machine {machine}\n" + render_script(plan)
    return text


@pytest.mark.parametrize("src", CASES, ids=[c.stem for c in CASES])
def test_golden(src: Path):
    got, expected = rendered(src), src.with_suffix(".txt")
    if UPDATE:
        if not expected.exists() or expected.read_text(encoding="utf-8") != got:
            expected.write_text(got, encoding="utf-8")
        return
    assert expected.exists(), f"no golden file {expected}; create it with NSLAB_UPDATE_GOLDEN=1 and review it"
    want = expected.read_text(encoding="utf-8")
    if got != want:
        diff = "".join(difflib.unified_diff(want.splitlines(True), got.splitlines(True), str(expected), "now"))
        pytest.fail(f"{src.name}: placement differs from the golden file (NSLAB_UPDATE_GOLDEN=1 rewrites it):\n{diff}")
    assert rendered(src) == got, "the same file and machines place the same way twice"


@pytest.mark.parametrize("src", CASES, ids=[c.stem for c in CASES])
def test_render_fits_80_columns(src: Path):
    lines = "\n".join(pl.render(placed_of(src), 80)).splitlines()
    assert all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]


def test_render_of_a_big_lab_stays_short(tmp_path):
    """A fabric with hundreds of stitches: a few names per machine, the count of stitches per
    pair of machines and the first STITCHES_LISTED of them, at 80 columns; --json keeps all."""
    from nslab import generate
    path = tmp_path / "big.yaml"
    path.write_text(generate.render("clos:4,60,4", name="big", file=str(path)))
    topo = model.load(str(path))
    placed = pl.place(topo, compile_topology(topo), pl.parse_machines("m1,m2,m3", "--machines"), underlay_mtu=9000)
    n = len(placed.stitches)
    assert n > pl.STITCHES_LISTED + 4
    lines = "\n".join(pl.render(placed, 80)).splitlines()
    assert all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]
    assert len(lines) < 3 * 3 + pl.STITCHES_LISTED + 6, lines
    assert sum(line.startswith("  VNI ") for line in lines) == pl.STITCHES_LISTED
    between = next(line for line in lines if line.startswith("  between "))
    assert sum(int(c.replace(",", "")) for c in re.findall(r": ([\d,]+)", between)) == n
    assert lines[-2] == f"  ... and {n - pl.STITCHES_LISTED:,} more (--json lists every stitch)"
    assert len(pl.as_dict(placed)["stitches"]) == n


def test_no_orphan_goldens():
    orphans = [p.name for p in GOLDEN.glob("*.txt") if not p.with_suffix(".yaml").exists()]
    assert not orphans, f"golden files without an input: {orphans}"


# ---- properties, over every shipped topology -------------------------------------------------

def check_split(topo, plan: P.Plan, placed: pl.Placed) -> None:
    machine_of = {n.ns: placed.where[n.name] for n in topo.nodes.values()}
    assert set(placed.where) == set(topo.nodes), "every node is placed"
    stitched = [s for s in placed.stitches]
    crossing = [op for op in plan.ops if isinstance(op, P.Link) and op.peer is not None
                and machine_of[op.ns] != machine_of[op.peer.ns]]
    assert [(s.a.ns, s.a.dev, s.b.ns, s.b.dev) for s in stitched] == \
        [(op.ns, op.name, op.peer.ns, op.peer.name) for op in crossing]
    for s, op in zip(stitched, crossing):
        assert (s.a.mac, s.a.mtu, s.a.master, s.b.mac, s.b.mtu) == (op.mac, op.mtu, op.master, op.peer.mac, op.peer.mtu)
        assert (s.a.machine, s.b.machine) == (machine_of[op.ns], machine_of[op.peer.ns])
        assert s.a.machine != s.b.machine
    kept = [op for op in plan.ops if op not in crossing]
    shards = [op for p in placed.plans.values() for op in p.ops]
    assert sorted(map(repr, shards)) == sorted(map(repr, kept)), "no operation lost, none duplicated"
    for machine, shard in placed.plans.items():
        assert all(machine_of[op.ns] == machine for op in shard.ops)
        # plan order is kept within a shard (flannel's neighbour -> FDB -> route order)
        positions = [kept.index(op) for op in shard.ops]
        assert positions == sorted(positions)
    vnis = [s.vni for s in stitched]
    assert len(set(vnis)) == len(vnis) and all(1 <= v <= pl.MAX_VNI for v in vnis)


@pytest.mark.parametrize("machines", ["m1,m2", "m1,m2,m3"])
@pytest.mark.parametrize("src", SHIPPED + [TESTS / "golden" / "placement" / "clos-spread.yaml"],
                         ids=lambda p: getattr(p, "stem", p))
def test_spread_properties(src: Path, machines: str):
    topo = model.load(str(src))
    plan = compile_topology(topo)
    ms = pl.parse_machines(machines, "--machines")
    placed = pl.place(topo, plan, ms, underlay_mtu=65535)
    check_split(topo, plan, placed)
    where = placed.where
    for node in topo.nodes.values():          # segments and racks whole; pods with their node
        for iface in node.ifaces:
            if iface.segment or node.kind == "pod" or topo.nodes[iface.peer_node].kind == "pod":
                assert where[node.name] == where[iface.peer_node], (node.name, iface.name)
    # a machine holds at most an even share + 5 %, unless a group fitting nowhere went to
    # the least loaded machine (which then held at most an even share)
    biggest = max(len(g) for g in pl.groups(topo))
    cap = math.ceil(len(topo.nodes) * pl.BALANCE_SLACK / len(ms))
    for m in ms:
        load = sum(1 for w in where.values() if w == m.name)
        assert load <= max(cap, math.ceil(len(topo.nodes) / len(ms)) + biggest), f"{m.name}: {load}"
    assert pl.spread(topo, ms) == where, "deterministic"


def test_spread_cuts_few_links():
    """The CLOS: 4 racks of 4 namespaces + 2 spines over 3 machines.  Racks stay whole (one
    machine holds two), each spine goes to a machine with a rack that fits it, and only
    leaf-spine links are cut: 6 of 8 (putting both spines with the two racks would cut 4
    but hold 10 of 18 namespaces on one machine)."""
    src = GOLDEN / "clos-spread.yaml"
    placed = placed_of(src)
    assert len(placed.stitches) == 6
    for spine in ("spine1", "spine2"):
        assert any(placed.where[leaf] == placed.where[spine] for leaf in ("leaf01", "leaf02", "leaf03", "leaf04"))
    assert all(s.a.node.startswith(("spine", "leaf")) and s.b.node.startswith(("spine", "leaf"))
               for s in placed.stitches)
    loads = sorted(sum(1 for w in placed.where.values() if w == m.name) for m in placed.machines)
    assert loads[-1] - loads[0] <= 4, loads        # within one rack of each other


def test_one_machine_has_no_stitches():
    topo = model.load(str(TESTS.parent / "topologies" / "spine-leaf.yaml"))
    plan = compile_topology(topo)
    placed = pl.place(topo, plan, [pl.Machine("m1")])
    assert placed.stitches == [] and len(placed.plans["m1"].ops) == len(plan.ops)
    assert pl.render(placed)[-1] == "cross-machine links: none"


# ---- the MTU (item 4) -------------------------------------------------------------------------

def test_underlay_mtu_refused_in_one_sentence():
    src = GOLDEN / "spine-leaf-racks.yaml"
    topo = model.load(str(src))
    with pytest.raises(UsageError) as info:
        pl.place(topo, compile_topology(topo), None, underlay_mtu=9199)
    assert str(info.value) == (
        "--underlay-mtu 9199: the stitch rack1:leaf01 -- leaf01:eth0 (m1 -> m3) carries frames of 9200 bytes (its "
        "MTU 9150 + 50 of VXLAN; a pod's packet under flannel vxlan carries 100 bytes of headers across it); give "
        "the lab's links an MTU of at most 9149, or an underlay that carries 9200")
    assert info.value.exit_code == 2
    assert pl.place(topo, compile_topology(topo), None, underlay_mtu=9200).stitches   # exactly enough


def test_stitch_overhead_is_vxlans():
    assert pl.STITCH_OVERHEAD == 50     # outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14


# ---- bad input ------------------------------------------------------------------------------

def lab(tmp_path: Path, text: str) -> Path:
    f = tmp_path / "lab.yaml"
    f.write_text(text, encoding="utf-8")
    return f


TWO_SEGMENTS = """name: t
routers: [r]
hosts: [h1, h2]
segments:
  a: {subnet: 192.0.2.0/25, gateway: r, members: [h1]}
  b: {subnet: 192.0.2.128/25, gateway: r, members: [h2]}
placement:
  a: m1
  b: m2
"""


@pytest.mark.parametrize("text,machines,message", [
    (TWO_SEGMENTS, None,
     "lab.yaml:9 placement.b: r is a member of segments a (m1) and b (m2); give r an entry of its own"),
    (TWO_SEGMENTS.replace("  b: m2\n", ""), None,
     "lab.yaml:7 placement: 2 node(s) have no machine: h2, b (give each node or its segment an entry, or drop "
     "placement: and use --spread)"),
    (TWO_SEGMENTS, "m1,m3",
     "lab.yaml:9 placement.b: machine m2 is not one of --machines m1, m3"),
], ids=["member-of-two", "incomplete", "unknown-machine"])
def test_placement_errors(tmp_path, text, machines, message):
    topo = model.load(str(lab(tmp_path, text)))
    ms = pl.parse_machines(machines, "--machines") if machines else None
    with pytest.raises(TopologyError) as info:
        pl.place(topo, compile_topology(topo), ms)
    assert str(info.value) == message and info.value.exit_code == 2


def test_own_entry_settles_two_segments(tmp_path):
    topo = model.load(str(lab(tmp_path, TWO_SEGMENTS + "  r: m2\n")))
    placed = pl.place(topo, compile_topology(topo), None, underlay_mtu=1550)
    assert placed.where == {"r": "m2", "h1": "m1", "h2": "m2", "a": "m1", "b": "m2"}
    assert [describe for describe in map(pl.describe, placed.stitches)] == ["a:r -- r:eth0 (m1 -> m2)"]


@pytest.mark.parametrize("text,message", [
    ("m1,,m2", "--machines m1,,m2: machine name '' must be letters, digits, '-' or '_' (starting with a letter "
               "or digit, at most 63 characters)"),
    ("m1,m1", "--machines m1,m1: machine m1 is named twice"),
    ("m1=10.0.0.300", "--machines m1=10.0.0.300: '10.0.0.300' is not an IPv4 address (NAME=ADDRESS)"),
    ("m1,m\n2", "--machines m1,m\\n2: machine name 'm\\n2' must be letters, digits, '-' or '_' (starting with a "
                 "letter or digit, at most 63 characters)"),
    ("m1/../x", "--machines m1/../x: machine name 'm1/../x' must be letters, digits, '-' or '_' (starting with a "
                "letter or digit, at most 63 characters)"),
])
def test_machines_option_errors(text, message):
    with pytest.raises(UsageError) as info:
        pl.parse_machines(text, "--machines")
    assert str(info.value) == message


@pytest.mark.parametrize("kwargs,message", [
    (dict(port=0), "--stitch-port 0: a UDP port is 1 to 65535"),
    (dict(port=65536), "--stitch-port 65536: a UDP port is 1 to 65535"),
    (dict(underlay_mtu=67), "--underlay-mtu 67: an MTU is 68 to 65535"),
    (dict(underlay_mtu=65536), "--underlay-mtu 65536: an MTU is 68 to 65535"),
])
def test_option_ranges(kwargs, message):
    topo = model.load(str(GOLDEN / "segment-split.yaml"))
    with pytest.raises(UsageError) as info:
        pl.place(topo, compile_topology(topo), None, **kwargs)
    assert str(info.value) == message


def test_no_placement_no_machines():
    topo = model.load(str(TESTS.parent / "topologies" / "diy-veth.yaml"))
    with pytest.raises(UsageError, match="no placement: section"):
        pl.place(topo, compile_topology(topo), None)


# ---- the command line ---------------------------------------------------------------------

def nslab(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(TESTS.parent), **(env or {})}
    env.pop("COLUMNS", None)
    return subprocess.run([sys.executable, "-m", "nslab.cli", *args], capture_output=True, text=True, env=env,
                          cwd=str(cwd), timeout=120)


def test_cli_validate_and_dry_run(tmp_path):
    src = GOLDEN / "segment-split.yaml"
    r = nslab("validate", src.name, "--machines", "m1,m2", "--stitch-port", "14789", cwd=GOLDEN)
    assert r.returncode == 0, r.stderr
    want = "\n".join(pl.render(placed_of(src), None))      # piped: whole lines
    assert r.stdout == want + "\nsegment-split.yaml: ok (lab split: 4 nodes, 22 operations)\n"
    # up --dry-run: the same placement, no root needed, nothing created
    r = nslab("up", src.name, "--spread", "m1,m2", "--stitch-port", "14789", "--dry-run", cwd=GOLDEN)
    assert r.returncode == 0, r.stderr
    assert r.stdout == want + "\n"
    r = nslab("up", src.name, "--spread", "m1,m2", "--dry-run", "--json", cwd=GOLDEN)
    import json
    got = json.loads(r.stdout)
    assert [s["ends"] for s in got["stitches"]] == [[dict(machine="m1", node="lan", dev="h3"),
                                                     dict(machine="m2", node="h3", dev="eth0")]]


def test_cli_refusals(tmp_path):
    src = GOLDEN / "segment-split.yaml"
    r = nslab("up", src.name, "--spread", "m1,m2", cwd=GOLDEN, env={"NSLAB_ETCD": ""})
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == ("nslab: no etcd named: give --etcd URL or export NSLAB_ETCD=URL (`nslab sandbox up` "
                        "prints it)\n")
    r = nslab("up", src.name, "--spread", "m1,m2", "--etcd", "http://127.0.0.1:1", cwd=GOLDEN)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.startswith("nslab: etcd at http://127.0.0.1:1 does not answer (")
    r = nslab("validate", src.name, "--machines", "m2,m3", cwd=GOLDEN)
    assert r.returncode == 2
    assert r.stderr == "nslab: segment-split.yaml:10 placement.lan: machine m1 is not one of --machines m2, m3\n"
