"""Issue 5: `nslab test` against real labs.  This is also how CI runs the shipped
topologies' own tests: sections (every file in topologies/ must pass).

Labs are named as every lab of the suite (the plugin's scheme, t<pid>x<n>: conftest's
unique_lab_name and nslab_prefix) and every test checks that its namespaces are gone afterwards.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from conftest import leftovers, unique_lab_name
from nslab import model, state

REPO = Path(__file__).resolve().parent.parent.parent
SHIPPED = sorted((REPO / "topologies").glob("*.yaml"))
lab_name = unique_lab_name


def nslab(*args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nslab.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env={**os.environ, "COLUMNS": "200"})


def assert_gone(name: str) -> None:
    """`nslab test FILE` took its lab down: the shared leak check finds nothing."""
    assert not leftovers(name, state.RUN_DIR, [])


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_topology_passes_its_own_tests(path: Path, tmp_path):
    name = lab_name()
    junit = tmp_path / "junit.xml"
    proc = nslab("test", path, "--name", name, "--junit", junit, "--json")
    assert_gone(name)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    declared = model.load(str(path)).tests
    assert report["ok"] and report["failed"] == 0
    assert [r["name"] for r in report["results"]] == [c.name for c in declared]
    suite = ET.parse(junit).getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("failures")) == (str(len(declared)), "0")


BAD = """\
name: {name}
segments:
  lan: {{subnet: 192.168.56.0/24}}
cluster:
  iface: ens33
  backend: {{type: vxlan, vni: 1, port: 8472}}
  nodes:
    master: {{segment: lan, ip: 192.168.56.133}}
    node1: {{segment: lan, ip: 192.168.56.134}}
  pods:
    client: {{node: master}}
    nginx: {{node: node1, serve: http}}
    quiet: {{node: node1}}
tests:
  - {{name: good, ping: [client, nginx], expect: {{encap: vxlan, ttl: 62}}}}
  - {{name: wrong ttl, ping: [client, nginx], expect: {{ttl: 63}}}}
  - {{name: wrong encap, ping: [client, nginx], expect: {{encap: none}}}}
  - {{name: wrong via, ping: [client, nginx], expect: {{via: quiet}}}}
  - {{name: wrong mtu, ping: [client, nginx], expect: {{mtu: 1500}}}}
  - {{name: no server, http: [client, quiet]}}
  - {{name: wrongly expected to fail, tcp: [client, nginx], port: 80, expect: failure}}
  - {{name: unreachable address, ping: [client, 10.244.9.9], timeout: 0.3}}
  - {{name: good http, http: [master, nginx]}}
"""


def test_failing_expectations_exit_1_with_fail_rows(tmp_path):
    """Every kind of expectation can fail: a check that cannot fail is no check."""
    name = lab_name()
    topo = tmp_path / "bad.yaml"
    topo.write_text(BAD.format(name=name))
    junit = tmp_path / "out.xml"
    proc = nslab("test", topo, "--junit", junit)
    assert_gone(name)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    # the table as printed when piped: status, test, probe, ... columns two or more spaces apart
    cells = [re.split(r"\s{2,}", line.strip()) for line in proc.stdout.splitlines()]
    rows = {c[1]: c[0] for c in cells if len(c) >= 4 and c[0] in ("PASS", "FAIL", "SKIP")}
    assert rows == {"good": "PASS", "wrong ttl": "FAIL", "wrong encap": "FAIL", "wrong via": "FAIL",
                    "wrong mtu": "FAIL", "no server": "FAIL", "wrongly expected to fail": "FAIL",
                    "unreachable address": "FAIL", "good http": "PASS"}
    assert "7 passed" not in proc.stdout and "2 passed, 7 failed" in proc.stdout
    assert "ttl at nginx: 62" in proc.stdout                       # the details say what was seen
    assert "left ens33 as eth" in proc.stdout and "vxlan vni 1" in proc.stdout
    assert "payload 1472 with DF" in proc.stdout
    cases = {c.get("name"): c for c in ET.parse(junit).getroot().iter("testcase")}
    assert len(cases) == 9
    assert cases["good"].find("failure") is None
    assert "expected success, ttl 63; observed reached, ttl 62" == cases["wrong ttl"].find("failure").get("message")


def test_running_lab_json_and_all_pairs(nslab_lab):
    lab = nslab_lab("topologies/spine-leaf.yaml")
    proc = nslab("test", "-l", lab.name, "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["lab"] == lab.name and report["passed"] == len(lab.topo.tests) == 6
    by_name = {r["name"]: r for r in report["results"]}
    assert by_name["other rack over vxlan"]["observed"] == "reached, encap vxlan, ttl 62, via spine"
    assert any("udp" in d and "> 4789" in d and "vxlan vni 4000" in d
               for d in by_name["other rack over vxlan"]["details"])

    proc = nslab("test", "-l", lab.name, "--all-pairs", "--json")
    assert proc.returncode == 0, proc.stderr
    result, = json.loads(proc.stdout)["results"]
    assert result["name"] == "all pairs of 4 pods" and result["observed"].startswith("12/12 reachable")
    proc = nslab("test", "-l", lab.name, "--all-pairs", "--hosts", "--json")
    result, = json.loads(proc.stdout)["results"]
    assert result["ok"] and result["observed"].startswith("56/56 reachable")    # + master1, worker1..3

    # take one pod off the network: every pair with it fails, the rest still pass
    lab.exec("web-worker3", "ip", "link", "set", "eth0", "down", check=True)
    proc = nslab("test", "-l", lab.name, "--all-pairs", "--json")
    assert proc.returncode == 1
    result, = json.loads(proc.stdout)["results"]
    assert not result["ok"] and result["observed"].startswith("6/12 reachable")
    missing = [d for d in result["details"] if d.startswith("no answer:")]
    assert len(missing) == 6 and all("web-worker3" in d for d in missing)


def test_usage_errors_are_one_line():
    for args, words in [
        (["test", REPO / "topologies/diy-veth.yaml", "-l", "x"], "not both"),
        (["test", "-l", "nt-not-running-here"], "no lab named 'nt-not-running-here' is running"),
        (["test", "-l", "nt-x", "--backend", "host-gw"], "apply when testing a FILE"),
    ]:
        proc = nslab(*args)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.count("\n") == 1 and words in proc.stderr and "Traceback" not in proc.stderr


def test_a_file_without_tests_is_refused_before_anything_is_built(tmp_path):
    name = lab_name()
    topo = tmp_path / "none.yaml"
    topo.write_text(f"name: {name}\nhosts: [a, b]\nlinks: [[a, b]]\n")
    proc = nslab("test", topo)
    assert proc.returncode == 2 and "declares no tests" in proc.stderr
    assert_gone(name)
    proc = nslab("test", topo, "--all-pairs", "--json")     # hosts, when there are no pods
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["results"][0]["observed"].startswith("2/2 reachable")
    assert_gone(name)
