"""`nslab test --all-pairs` across machines in the sandbox (issue 20, item 8: "every
topology test and all-pairs pass"): issue 20's CI lab (spine-leaf, rack1 on m1, rack2 on
m2, the spine and the leaves on m3) tested from the host with NSLAB_ETCD set, each
machine pinging from its own pods to every pod (one request per machine), the parts
merged into the one result, table, JSON and JUnit a local run gives, with its exit code.

The number of pairs is counted here from the topology's text (its pods: a daemonset's
nodes one pod each), not from nslab; a pair broken on purpose (a blackhole route in a pod
on m2 to a pod on m1, set from the host) must fail the run naming exactly that pair.
One sandbox for the module; NSLAB_TEST_SANDBOX=NAME:PORT picks its name and etcd port.
"""
from __future__ import annotations

import json
from xml.etree import ElementTree as ET

import pytest
import yaml

from conftest import REPO, unique_lab_name
from test_sandbox import started_sandbox
from test_sandbox_observe import RACKS, Box

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def box():
    with started_sandbox(3) as (name, port, _):
        yield Box(name, port)


def pods_of(path: str) -> list[str]:
    """The pods a topology file declares, read from its text: NAME, or NAME-NODE per
    daemonset node."""
    pods = yaml.safe_load(open(path))["cluster"]["pods"]
    return sorted(n for name, p in pods.items()
                  for n in ([f"{name}-{node}" for node in p["daemonset"]] if "daemonset" in p else [name]))


def test_all_pairs_across_three_machines_counts_every_pair_and_names_a_broken_one(box, tmp_path):
    pods = pods_of(RACKS)
    assert len(pods) == 4 and "client" in pods and "web-worker3" in pods
    pairs = len(pods) * (len(pods) - 1)
    lab = unique_lab_name()
    up = box.nslab("up", RACKS, "--name", lab)
    try:
        assert up.returncode == 0, up.stderr
        junit = tmp_path / "pairs.xml"
        got = box.nslab("test", "-l", lab, "--all-pairs", "--json", "--junit", str(junit))
        assert got.returncode == 0, got.stdout + got.stderr
        report = json.loads(got.stdout)
        assert (report["lab"], report["ok"], report["passed"], report["failed"]) == (lab, True, 1, 0), report
        res, = report["results"]
        assert res["name"] == f"all pairs of {len(pods)} pods" and res["ok"], res
        assert res["observed"].startswith(f"{pairs}/{pairs} reachable in "), res
        assert res["details"][0].startswith(f"{pairs}/{pairs} pairs answered in "), res
        case, = ET.parse(junit).getroot().iter("testcase")
        assert case.get("name") == res["name"] and case.find("failure") is None
        # the table, as a local run prints it
        text = box.nslab("test", "-l", lab, "--all-pairs", env={"COLUMNS": "80"})
        assert text.returncode == 0, text.stdout + text.stderr
        assert f"all pairs of {len(pods)} pods" in text.stdout and "1 passed, 0 failed" in text.stdout
        # web-worker3 (on m2) drops what it sends to client (on m1): a blackhole route in its own
        # namespace, set from the host; that pair both ways, and only it, fails
        addr = box.nslab("exec", "-l", lab, "client", "--", "ip", "-4", "-o", "addr", "show", "dev", "eth0")
        assert addr.returncode == 0, addr.stdout + addr.stderr
        client_ip = addr.stdout.split(" inet ")[1].split("/")[0]
        off = box.nslab("exec", "-l", lab, "web-worker3", "--", "ip", "route", "add", "blackhole", client_ip)
        assert off.returncode == 0, off.stdout + off.stderr
        bad = box.nslab("test", "-l", lab, "--all-pairs", "--json")
        assert bad.returncode == 1, bad.stdout + bad.stderr
        res, = json.loads(bad.stdout)["results"]
        broken = ["no answer: client -> web-worker3", "no answer: web-worker3 -> client"]
        assert not res["ok"] and res["observed"].startswith(f"{pairs - len(broken)}/{pairs} reachable"), res
        assert sorted(d for d in res["details"] if d.startswith("no answer: ")) == broken, res["details"]
        text = box.nslab("test", "-l", lab, "--all-pairs", env={"COLUMNS": "80"})
        assert text.returncode == 1 and "no answer: client -> web-worker3" in text.stdout, text.stdout
        on = box.nslab("exec", "-l", lab, "web-worker3", "--", "ip", "route", "del", "blackhole", client_ip)
        assert on.returncode == 0, on.stdout + on.stderr
        again = box.nslab("test", "-l", lab, "--all-pairs")
        assert again.returncode == 0, again.stdout + again.stderr
    finally:
        down = box.nslab("down", lab)
        assert down.returncode == 0, down.stderr
        assert box.left(lab) == []


def test_all_pairs_of_a_file_spread_over_machines(box):
    # no pods: its hosts, as locally; three nodes over three machines, so the pair crosses
    hosts = sorted(yaml.safe_load(open(REPO / "topologies" / "diy-ip-forward.yaml"))["hosts"])
    lab = unique_lab_name()
    got = box.nslab("test", "diy-ip-forward", "--name", lab, "--spread", "m1,m2,m3", "--all-pairs", "--json")
    assert got.returncode == 0, got.stdout + got.stderr
    res, = json.loads(got.stdout)["results"]
    assert res["name"] == f"all pairs of {len(hosts)} hosts" and res["ok"], res
    pairs = len(hosts) * (len(hosts) - 1)
    assert res["observed"].startswith(f"{pairs}/{pairs} reachable"), res
    assert box.left(lab) == []
