"""`nslab generate` files really work: generate, `nslab up`, `nslab test` (the file's own
tests: section, real pings and HTTP across the farthest racks), `nslab down`, and nothing
left behind (the shared leak check).  Unique lab names from conftest.
"""
from __future__ import annotations

import json

import pytest

from conftest import leftovers, nslab, unique_lab_name
from nslab import model, state


def generate(tmp_path, shape: str, name: str, *opts: str) -> str:
    path = tmp_path / "gen.yaml"
    proc = nslab("generate", shape, "-o", path, "--name", name, *opts, check=True)
    assert f"wrote {path}" in proc.stderr
    return str(path)


def run_tests(lab) -> dict:
    proc = lab.nslab("test", "-l", lab.name, "--json", timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    declared = model.load(lab.file, name=lab.name).tests
    assert report["ok"] and report["failed"] == 0
    assert [r["name"] for r in report["results"]] == [c.name for c in declared] and declared
    return report


def down_clean(lab) -> None:
    processes = lab.state.get("processes", [])
    lab.down()
    assert not leftovers(lab.name, lab.run_dir, processes)


def test_clos_up_test_down(tmp_path, lab_factory, root_unchanged):
    name = unique_lab_name()
    lab = lab_factory(generate(tmp_path, "clos:2,2,2", name), name=name)
    run_tests(lab)
    # ECMP across both spines, as the header promises
    route = lab.exec("leaf01", "ip", "route", "show", "10.2.0.0/24", check=True).stdout
    assert route.count("nexthop via") == 2, route
    assert lab.exec("leaf01", "sysctl", "-n", "net.ipv4.fib_multipath_hash_policy", check=True).stdout.strip() == "1"
    down_clean(lab)


def test_cluster_vxlan_up_test_down(tmp_path, lab_factory, root_unchanged):
    name = unique_lab_name()
    lab = lab_factory(generate(tmp_path, "cluster:2,2,2", name, "--backend", "vxlan", "--serve", "http"), name=name)
    report = run_tests(lab)
    kinds = {r["name"]: r["observed"] for r in report["results"]}
    assert any("HTTP/1.1 200" in o for o in kinds.values()), kinds
    assert len(lab.state["nodes"]) == 17          # 2 racks, 2 leaves, spine, 4 nodes, 8 pods
    down_clean(lab)


@pytest.mark.parametrize("shape,opts", [("single:3", ()), ("linear:3", ()), ("tree,2,2", ()),
                                        ("linear-routed:3", ()), ("tree-routed,2,2", ()),
                                        ("cluster:1,2,2", ("--backend", "host-gw")),
                                        ("cluster:2,1,1", ("--backend", "udp"))],
                         ids=["single", "linear", "tree", "linear-routed", "tree-routed", "cluster-host-gw",
                              "cluster-udp"])
def test_every_shape_passes_its_own_tests(tmp_path, shape, opts, root_unchanged):
    """`nslab test FILE`: up, tests, down in one command (the way a user proves a file)."""
    name = unique_lab_name()
    path = generate(tmp_path, shape, name, *opts)
    proc = nslab("test", path, "--json", timeout=120)
    problems = leftovers(name, state.RUN_DIR, [])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["ok"]
    assert not problems


def test_up_a_shape_straight_away(lab_factory, root_unchanged):
    """`nslab up single:3`: no file; the record names the shape and keeps the text."""
    name = unique_lab_name()
    lab = lab_factory("single:3", name=name)
    row = next(r for r in json.loads(lab.nslab("ls", "--json", check=True).stdout) if r["lab"] == name)
    assert row["file"] == "single:3", row
    assert "nslab generate single:3" in state.read_built(name, state.TOPOLOGY)
    assert lab.nslab("exec", "-l", name, "h1", "--", "ping", "-c1", "-W5", "h3").returncode == 0
    down_clean(lab)
