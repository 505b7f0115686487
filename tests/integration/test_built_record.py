"""A lab remembers what it built: `up` records the topology text it loaded and the plan it
applied (fitted to this kernel) in its run directory, and show, trace, capture, graph,
test, script --lab and rewire read that record, never the topology file again.  Edit the
file after `up`, or delete it, and they still describe the lab as built; a damaged record
is refused in one sentence and never stops `down`."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time

import pytest

from conftest import TOPOLOGIES, nslab

pytestmark = pytest.mark.root

FORWARD = (TOPOLOGIES / "diy-ip-forward.yaml").read_text()
# The edit: ns2's address and ns1's interface name change in the file after `up`.
EDITED = FORWARD.replace("10.1.2.2/24", "10.1.2.9/24").replace("iface: v1,", "iface: w1,")


def one_line(proc: subprocess.CompletedProcess) -> str:
    err = proc.stderr.strip()
    assert err.count("\n") == 0 and err.startswith("nslab: "), proc.stderr
    return err


def test_observers_describe_the_lab_as_built_after_the_file_changes(root_unchanged, lab_factory, tmp_path):
    assert EDITED != FORWARD and "10.1.2.9" in EDITED and "w1" in EDITED
    path = tmp_path / "forward.yaml"
    path.write_text(FORWARD)
    lab = lab_factory(str(path))
    applied = lab.nslab("script", "--lab", lab.name, check=True).stdout
    assert applied == nslab("script", str(path), "--name", lab.name, check=True).stdout
    path.write_text(EDITED)                    # the file now says 10.1.2.9 and w1: the lab does not

    for gone in (False, True):
        if gone:
            path.unlink()                      # and now there is no file at all
        # script --lab: the recorded plan, unchanged
        assert lab.nslab("script", "--lab", lab.name, check=True).stdout == applied
        assert "10.1.2.9" not in applied and "w1" not in applied
        # show: the kernel's view of the recorded nodes
        shown = json.loads(lab.nslab("show", "-l", lab.name, "--json", check=True).stdout)
        assert "10.1.2.2/24" in json.dumps(shown["nodes"]["ns2"]) and "10.1.2.9" not in json.dumps(shown)
        # trace by name resolves ns2 to the address it was built with, and gets there
        traced = json.loads(lab.nslab("trace", "-l", lab.name, "ns1", "ns2", "--json", timeout=60).stdout)
        assert traced["dst"]["ip"] == "10.1.2.2" and traced["request"]["delivered"], traced
        # test: the tests: section as built (ping ns1 -> ns2 at 10.1.2.2, one router on the way)
        tested = lab.nslab("test", "-l", lab.name, "--json", timeout=120)
        assert tested.returncode == 0, tested.stdout + tested.stderr
        assert all(r["ok"] for r in json.loads(tested.stdout)["results"])
        # graph: the built addresses and interface names
        drawn = lab.nslab("graph", "-l", lab.name, "--format", "mermaid", check=True).stdout
        assert "10.1.2.2" in drawn and "10.1.2.9" not in drawn and "v1" in drawn and "w1" not in drawn
        # capture: the default interface of ns1 is v1 (as built), not the file's w1
        pinger = lab.popen("ns1", "ping", "-n", "-c", "40", "-i", "0.2", "10.1.2.2",
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            cap = lab.nslab("capture", "-l", lab.name, "ns1", "-c", "2", timeout=60)
        finally:
            pinger.kill()
            pinger.wait()
        assert cap.returncode == 0, cap.stderr
        assert "listening on v1" in cap.stderr and "10.1.2.2" in cap.stdout
        # rewire: works from the recorded plan (no containers here: nothing to do)
        assert "every container is wired" in lab.nslab("rewire", "-l", lab.name, check=True).stdout


def _rewrite(lab, name: str, data: bytes, digest: bool) -> None:
    """Replace a recorded file; digest=True also records its new SHA-256 (a consistent but
    invalid record: what only the plan's own validation can refuse)."""
    d = os.path.join(lab.run_dir, lab.name)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)
    if digest:
        st = lab.state
        st["built"][name] = hashlib.sha256(data).hexdigest()
        with open(os.path.join(d, "state.json"), "w") as f:
            json.dump(st, f)


def test_a_damaged_record_is_refused_in_one_sentence_and_down_still_works(root_unchanged, lab_factory):
    lab = lab_factory("diy-ip-forward.yaml")
    d = os.path.join(lab.run_dir, lab.name)
    plan = open(os.path.join(d, "plan.json"), "rb").read()
    topology = open(os.path.join(d, "topology.yaml"), "rb").read()
    assert topology == (TOPOLOGIES / "diy-ip-forward.yaml").read_bytes()

    observers = [("script", "--lab", lab.name), ("rewire", "-l", lab.name)]
    readers = [("graph", "-l", lab.name), ("test", "-l", lab.name), ("trace", "-l", lab.name, "ns1", "ns2"),
               ("capture", "-l", lab.name, "ns1", "-c", "1")]

    # a changed byte: the digest in state.json no longer matches
    _rewrite(lab, "plan.json", plan.replace(b"10.1.2.2", b"10.1.2.3"), digest=False)
    for args in observers:
        proc = lab.nslab(*args)
        assert proc.returncode == 1 and "plan.json was changed after `up`" in one_line(proc), proc.stderr
    # consistent digest, but not a plan this nslab wrote: the plan's own validation refuses it
    bad = json.loads(plan)
    bad["ops"][0] = {"op": "Reboot", "ns": bad["ops"][0]["ns"]}
    _rewrite(lab, "plan.json", json.dumps(bad).encode(), digest=True)
    for args in observers:
        proc = lab.nslab(*args)
        assert proc.returncode == 1 and "op 1 is of an unknown type 'Reboot'" in one_line(proc), proc.stderr
    bad["ops"][0] = {**json.loads(plan)["ops"][0], "ns": 7}
    _rewrite(lab, "plan.json", json.dumps(bad).encode(), digest=True)
    proc = lab.nslab("script", "--lab", lab.name)
    assert proc.returncode == 1 and "op 1 (Netns).ns is a number, not str" in one_line(proc)

    # the topology snapshot: changed, then consistent but no longer a topology
    _rewrite(lab, "topology.yaml", topology + b"\n# edited\n", digest=False)
    for args in readers:
        proc = lab.nslab(*args, timeout=60)
        assert proc.returncode == 1 and "topology.yaml was changed after `up`" in one_line(proc), (args, proc.stderr)
    _rewrite(lab, "topology.yaml", b"hosts: [a]\nlinks: [[a]]\n", digest=True)
    proc = lab.nslab("graph", "-l", lab.name)
    assert proc.returncode == 1 and "its recorded topology" in one_line(proc) and "no longer loads" in proc.stderr

    # a record without them (an older nslab, or up killed before it wrote them)
    st = lab.state
    del st["built"]
    with open(os.path.join(d, "state.json"), "w") as f:
        json.dump(st, f)
    proc = lab.nslab("script", "--lab", lab.name)
    assert proc.returncode == 1 and "its record holds no plan" in one_line(proc)

    # none of it stops down (lab_factory then checks that nothing is left)
    start = time.monotonic()
    lab.down()
    assert time.monotonic() - start < 60


import docker  # noqa: E402

CONTAINERS = (TOPOLOGIES / "containers.yaml").read_text()


@pytest.mark.usefixtures("container_engine")      # conftest: fails without the engine or images
def test_rewire_uses_the_plan_as_applied_not_the_edited_file(lab_factory, tmp_path):
    path = tmp_path / "containers.yaml"
    path.write_text(CONTAINERS)
    lab = lab_factory(str(path))
    path.write_text(CONTAINERS.replace("ip: 10.244.1.6", "ip: 10.244.1.9"))   # after up: not what was built
    docker.from_env().containers.get(f"nslab.{lab.name}.nginx").restart(timeout=0)
    out = lab.nslab("rewire", "-l", lab.name, check=True, timeout=120)
    assert f"lab {lab.name}: re-wired nginx" in out.stdout
    got = lab.exec("client", "curl", "-s", "--max-time", "3", "http://10.244.1.6")
    assert got.returncode == 0 and got.stdout.startswith("nginx answered"), got.stdout + got.stderr
    addrs = lab.exec("nginx", "ip", "-4", "-o", "addr", "show", "dev", "eth0", check=True).stdout
    assert "10.244.1.6/" in addrs and "10.244.1.9" not in addrs
    path.unlink()
    tested = lab.nslab("test", "-l", lab.name, timeout=120)
    assert tested.returncode == 0, tested.stdout + tested.stderr
