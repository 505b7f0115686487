"""The pytest plugin (nslab/pytest_plugin.py), used exactly as a user would: a test file in
its own directory, run by pytest in a subprocess with the plugin found through its entry
point; and directly by this module's own tests (`lab` fixture from a module marker)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from nslab.apply import netns

REPO = Path(__file__).resolve().parent.parent.parent

# ---- this module uses the plugin itself: one spine-leaf lab shared by the module ---------
pytestmark = pytest.mark.nslab("topologies/spine-leaf.yaml", scope="module")


@pytest.fixture(scope="session")
def nslab_prefix():
    return "nt"


def test_ping_and_node_lookups(lab):
    assert lab.name.startswith(f"nt{os.getpid()}x")
    assert lab.ping("client", "web-worker3").ok
    assert lab.node("client").kind == "pod" and lab.node("spine").kind == "router"
    assert sorted(lab.pods) == ["client", "web-worker1", "web-worker2", "web-worker3"]
    assert set(lab.routers) == {"spine", "leaf01", "leaf02"}
    assert "worker3" in lab.hosts
    assert lab.address("web-worker3") == "10.244.3.2"
    assert lab.tcp("client", "web-worker3", 80).ok and not lab.tcp("client", "web-worker3", 81).ok
    with pytest.raises(KeyError):
        lab.node("nope")


def test_module_scope_shares_one_lab(lab, nslab_module_lab):
    assert lab is nslab_module_lab.get("topologies/spine-leaf.yaml")
    again = lab.attach(lab.name)                     # the same running lab, from its state
    assert again.name == lab.name and again.node("client").ns == lab.node("client").ns
    assert again.ping("client", "web-worker2").ok


def test_capture_sees_vxlan_on_the_underlay(lab):
    from scapy.layers.vxlan import VXLAN
    with lab.capture("worker1", bpf="udp port 4789") as cap:
        assert lab.ping("client", "web-worker3").ok
    assert any(p.haslayer(VXLAN) and p[VXLAN].vni == 4000 for p in cap.result)


def test_the_topologys_own_tests(lab):
    report = lab.test()
    assert report.ok, str(report)
    assert len(report.results) == 6
    assert lab.test(all_pairs=True).ok


def test_trace(lab):
    from nslab.observe import trace
    result = lab.trace("client", "web-worker3")
    assert trace.complete(result)
    assert "spine" in {h["node"] for h in result["request"]["hops"]}


@pytest.mark.nslab("topologies/diy-veth.yaml")        # the closest marker wins: a lab of its own
def test_function_scope_marker_on_one_test(lab):
    assert lab.topo.file.endswith("diy-veth.yaml")
    assert lab.ping("ns1", "ns2").ttl == 64


# ---- the plugin as users get it ------------------------------------------------------------
USER_TESTS = '''
import os, pytest

@pytest.mark.nslab("lab.yaml")
def test_overlay(lab):
    assert lab.ping("ns1", "ns2").ok
    assert lab.test().ok
    open(os.environ["NT_NAMES"], "a").write(lab.name + "\\n")

@pytest.mark.nslab("lab.yaml", scope="module")
def test_shared_a(lab):
    open(os.environ["NT_NAMES"], "a").write(lab.name + "\\n")

@pytest.mark.nslab("lab.yaml", scope="module")
def test_shared_b(lab):
    open(os.environ["NT_NAMES"], "a").write(lab.name + "\\n")

def test_factory(nslab_lab):
    a = nslab_lab("lab.yaml")
    b = nslab_lab("diy-veth")                      # bundled with nslab, by name
    assert a.name != b.name and b.ping("ns1", "ns2").ok
    open(os.environ["NT_NAMES"], "a").write(a.name + "\\n" + b.name + "\\n")

def test_ini_topology(lab):
    assert lab.topo.file.endswith("lab.yaml")
    open(os.environ["NT_NAMES"], "a").write(lab.name + "\\n")

@pytest.mark.nslab("lab.yaml")
def test_fails_but_lab_still_comes_down(lab):
    open(os.environ["NT_NAMES"], "a").write(lab.name + "\\n")
    assert not lab.ping("ns1", "ns2").ok, "fails on purpose"

@pytest.mark.nslab("missing.yaml")
def test_missing_topology(lab):
    pass
'''
USER_LAB = """\
hosts: [ns1, ns2]
links: [[{node: ns1, ip: 10.9.9.1/24}, {node: ns2, ip: 10.9.9.2/24}]]
tests:
  - {ping: [ns1, ns2], expect: {ttl: 64}}
"""


def test_users_test_file_in_its_own_repository(tmp_path):
    (tmp_path / "pytest.ini").write_text("[pytest]\nnslab_topology = lab.yaml\n")
    (tmp_path / "lab.yaml").write_text(USER_LAB)
    (tmp_path / "test_user.py").write_text(USER_TESTS)
    names = tmp_path / "names.txt"
    prefix = f"nt{os.getpid()}u"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nslab-prefix", prefix,
                           "-rfE", str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "NT_NAMES": str(names)})
    out = proc.stdout + proc.stderr
    assert re.search(r"1 failed, 5 passed, 1 error", out), out
    assert "fails on purpose" in out
    assert "nslab: no topology 'missing.yaml'" in out
    made = names.read_text().split()
    assert len(made) == 7 and all(n.startswith(prefix) for n in made)
    assert made[1] == made[2], "scope='module' shares one lab"
    assert len(set(made)) == 6
    left = [n for n in netns.list_names() if n.startswith(prefix)]
    assert not left, f"the plugin left namespaces behind: {left}"


# ---- one factory, one naming scheme, one root-skip for users and nslab's own tests ----------

def test_one_naming_scheme_for_users_and_our_own_tests(lab_factory):
    from conftest import LAB_PREFIX, unique_lab_name
    from nslab.pytest_plugin import lab_name, lab_prefix
    assert LAB_PREFIX == lab_prefix("t") == f"t{os.getpid()}x"
    a, b = unique_lab_name(), lab_name("t")
    assert a.startswith(LAB_PREFIX) and b.startswith(LAB_PREFIX) and a != b     # one counter
    lab = lab_factory("diy-veth.yaml")
    assert lab.name.startswith(LAB_PREFIX) and lab.ns("ns1") == f"{lab.name}.ns1"


def test_factory_teardown_fails_on_anything_left_behind(tmp_path):
    """LabFactory.close: down for every lab it named (also one whose up failed), then
    namespaces, run directory and processes of the record are checked."""
    from nslab.pytest_plugin import LabFactory, lab_prefix
    made: list[str] = []
    downs: list[str] = []
    sleeper = subprocess.Popen(["sleep", "60"])

    def up(path, name, backend=None, run_dir=None):
        subprocess.run(["ip", "netns", "add", f"{name}.n1"], check=True)
        made.append(f"{name}.n1")
        os.makedirs(os.path.join(run_dir, name))
        with open(os.path.join(run_dir, name, "state.json"), "w") as f:
            f.write('{"processes": [{"pid": %d, "what": "sleeper"}]}' % sleeper.pid)
        if len(made) == 2:
            raise RuntimeError("up failed half-way")
        return name

    factory = LabFactory("nt", [REPO / "topologies"], up=up, down=lambda name, run_dir: downs.append(name))
    try:
        first = factory("diy-veth.yaml", run_dir=str(tmp_path))
        with pytest.raises(RuntimeError):
            factory("diy-veth.yaml", run_dir=str(tmp_path))
        with pytest.raises(pytest.fail.Exception) as failed:
            factory.close()
        msg = str(failed.value)
        second = made[1].split(".")[0]
        assert first.startswith(lab_prefix("nt")) and downs == [second, first]
        for name in (first, second):
            assert f"lab {name}: namespaces left in /run/netns: ['{name}.n1']" in msg, msg
            assert f"lab {name}: {tmp_path / name} left behind" in msg
            assert f"lab {name}: process {sleeper.pid} (sleeper) still alive" in msg
    finally:
        sleeper.kill()
        sleeper.wait()
        for ns in made:
            subprocess.run(["ip", "netns", "delete", ns], check=False)
    assert not [n for n in netns.list_names() if n in made]
