"""The observers across machines in the sandbox (issue 20, items 4 and 8): issue 20's CI
lab (spine-leaf, rack1 on m1, rack2 on m2, the spine and the leaves on m3) traced from the
host with the stitches between machines as hops, its tests run by `nslab test FILE` (up,
tests, down), a pcap of a node on another machine written on the host, and
spine-leaf-services' cluster IP and NodePort across machines.

Every command runs on the host with NSLAB_ETCD set, as a user runs it; what is checked
against it is read independently (the stitch's VNI from the VXLAN device in the machine,
the machines' namespaces with `docker exec`).  One sandbox for the module.
NSLAB_TEST_SANDBOX=NAME:PORT picks its name and etcd port (a shared box's own range).
"""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from conftest import NSLAB, REPO, nslab, unique_lab_name
from test_sandbox import docker_exec, started_sandbox

pytestmark = pytest.mark.root

RACKS = str(REPO / "tests" / "golden" / "placement" / "spine-leaf-racks.yaml")
PLACEMENT = "\nplacement:\n  rack1: m1\n  rack2: m2\n  spine: m3\n  leaf01: m3\n  leaf02: m3\n"
MACHINES = ("m1", "m2", "m3")


class Box:
    def __init__(self, name: str, port: int):
        self.name, self.env = name, {"NSLAB_ETCD": f"http://127.0.0.1:{port}"}

    def nslab(self, *args, env=None, timeout=240):
        return nslab(*args, env={**self.env, **(env or {})}, timeout=timeout)

    def etcd(self):
        from nslab import coord
        return coord.Etcd(self.env["NSLAB_ETCD"])

    def left(self, lab: str) -> list[str]:
        """What of lab `lab` any machine or etcd still holds."""
        found = [f"{m}: {n}" for m in MACHINES for n in docker_exec(f"{self.name}.{m}", "ip", "netns").stdout.split()
                 if n.startswith(lab + ".")]
        kvs, _ = self.etcd().get_prefix("/nslab/")
        return found + [kv.key for kv in kvs if lab in kv.key or kv.value.decode(errors="replace").startswith(f"{lab}/")]

    def vni(self, machine: str, lab: str, node: str, dev: str) -> int:
        """The VNI of a stitch end, from its VXLAN device in the machine (not from nslab)."""
        link = docker_exec(f"{self.name}.{machine}", "ip", "-n", f"{lab}.{node}", "-d", "link", "show", dev).stdout
        assert "vxlan id " in link, link
        return int(link.split("vxlan id ")[1].split()[0])


@pytest.fixture(scope="module")
def box():
    with started_sandbox(3) as (name, port, _):
        yield Box(name, port)


@pytest.fixture
def racks(box):
    """Issue 20's CI lab up over the three machines; down (and nothing left) after."""
    lab = unique_lab_name()
    up = box.nslab("up", RACKS, "--name", lab)
    try:
        assert up.returncode == 0, up.stderr
        yield lab
    finally:
        down = box.nslab("down", lab)
        assert down.returncode == 0, down.stderr
        assert box.left(lab) == []


def stitches(path: dict) -> list[dict]:
    return [h["stitch"] for h in path["hops"] if h.get("stitch")]


def test_trace_across_machines_shows_each_stitch_as_a_hop_with_its_vni(box, racks):
    lab = racks
    m1_m3 = box.vni("m3", lab, "leaf01", "eth0")        # leaf01's end of rack1's link, on m3
    m3_m2 = box.vni("m3", lab, "leaf02", "eth0")
    assert box.vni("m1", lab, "rack1", "leaf01") == m1_m3 and m1_m3 != m3_m2
    got = box.nslab("trace", "-l", lab, "client", "web-worker3", "--json")
    assert got.returncode == 0, got.stderr
    r = json.loads(got.stdout)
    assert r["request"]["delivered"] and r["reply"]["delivered"]
    assert [(s["from"], s["to"], s["vni"]) for s in stitches(r["request"])] == [("m1", "m3", m1_m3),
                                                                                 ("m3", "m2", m3_m2)]
    assert [(s["from"], s["to"], s["vni"]) for s in stitches(r["reply"])] == [("m2", "m3", m3_m2),
                                                                               ("m3", "m1", m1_m3)]
    hops = [(h["node"], h["iface"], h["dir"]) for h in r["request"]["hops"]]
    stitch = hops.index(("m1 -> m3", "stitch", ""))
    assert hops[stitch - 1] == ("rack1", "leaf01", "out") and hops[stitch + 1] == ("leaf01", "eth0", "in")
    # each machine explained its own nodes' hops from its own kernel
    spine = next(h for h in r["request"]["hops"] if h["node"] == "spine" and h["dir"] == "out")
    assert [d["text"] for d in spine["decisions"] if d["kind"] == "route"] == ["30.0.0.0/24 via 172.31.0.5 dev eth1"]
    brief = box.nslab("trace", "-l", lab, "web-worker3", "client", "--brief")
    assert brief.returncode == 0, brief.stderr
    assert f"m2 -> m3: vxlan stitch VNI {m3_m2} (198.18.1.2 > 198.18.1.3 udp 4789)" in brief.stdout
    assert f"m3 -> m1: vxlan stitch VNI {m1_m3}" in brief.stdout
    text = box.nslab("trace", "-l", lab, "client", "web-worker3", env={**box.env, "COLUMNS": "80"})
    assert f"m1 -> m3: vxlan stitch VNI {m1_m3}" in text.stdout and "delivered to web-worker3" in text.stdout
    # a probe lost on another machine: exit 1, the drop explained by that machine (leaf02 on m3)
    lost = box.nslab("trace", "-l", lab, "worker1", "30.0.0.99", "--json")
    assert lost.returncode == 1, lost.stderr
    drop = json.loads(lost.stdout)["request"]["drop"]
    assert (drop["node"], drop["reason"]) == ("leaf02", "no neighbour"), drop


def test_capture_on_another_machine_writes_the_pcap_here_and_rewire_asks_each_machine(box, racks, tmp_path):
    from scapy.all import rdpcap
    from scapy.layers.vxlan import VXLAN
    lab, pcap = racks, tmp_path / "leaf01.pcap"
    cap = subprocess.Popen([*NSLAB, "capture", "-l", lab, "leaf01:eth0", "-w", str(pcap), "-c", "2",
                            "--filter", "udp port 4789"], env={**os.environ, **box.env}, cwd=REPO,
                           stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(30):         # until the capture runs: pings over the stitch, then it has its 2 frames
            ping = box.nslab("exec", "-l", lab, "client", "--", "ping", "-c1", "-W2", "web-worker3")
            assert ping.returncode == 0, ping.stdout + ping.stderr
            try:
                cap.wait(timeout=1)
                break
            except subprocess.TimeoutExpired:
                pass
        assert cap.wait(timeout=60) == 0, cap.stderr.read()
    finally:
        if cap.poll() is None:
            cap.kill()
            cap.wait()
    frames = rdpcap(str(pcap))
    assert len(frames) == 2
    assert all(f.haslayer(VXLAN) and f[VXLAN].vni == 4000 for f in frames)    # flannel's, the lab's frames
    assert {frames[0]["IP"].src, frames[0]["IP"].dst} == {"10.0.0.21", "30.0.0.23"}
    refused = box.nslab("capture", "-l", lab, "leaf01:eth0", "-w", str(tmp_path / "x.pcap"), "--decode")
    assert refused.returncode == 2 and "--decode" in refused.stderr
    rewire = box.nslab("rewire", "-l", lab)
    assert rewire.returncode == 0, rewire.stderr
    assert [line for line in rewire.stdout.splitlines() if line.startswith("machine ")] == \
        ["machine m1:", "machine m2:", "machine m3:"]


def test_test_file_across_machines_passes_and_a_broken_expectation_fails(box, tmp_path):
    text = (REPO / "topologies" / "spine-leaf.yaml").read_text() + PLACEMENT
    good = tmp_path / "spine-leaf.yaml"
    good.write_text(text)
    lab = unique_lab_name()
    got = box.nslab("test", str(good), "--name", lab, "--json")
    assert got.returncode == 0, got.stdout + got.stderr
    results = {r["name"]: r for r in json.loads(got.stdout)["results"]}
    assert len(results) == 6 and all(r["ok"] for r in results.values()), results
    # client on m1, web-worker3 on m2, the spine on m3: watched where they are
    assert results["other rack over vxlan"]["observed"] == "reached, encap vxlan, ttl 62, via spine"
    assert box.left(lab) == []
    broken = tmp_path / "broken.yaml"
    assert "ttl: 62, via: spine" in text
    broken.write_text(text.replace("ttl: 62, via: spine", "ttl: 61, via: spine"))
    got = box.nslab("test", str(broken), "--name", lab)
    assert got.returncode == 1, got.stdout + got.stderr
    failed = [line for line in got.stdout.splitlines() if line.startswith("FAIL  ")]      # the table's rows
    assert len(failed) == 1 and "other rack over vxlan" in failed[0] and "ttl 62" in failed[0], got.stdout
    assert box.left(lab) == []
    # a file without placement:, spread by nslab (three nodes, three machines): its ttl/via watched elsewhere
    got = box.nslab("test", "diy-ip-forward", "--name", lab, "--spread", "m1,m2,m3", "--json")
    assert got.returncode == 0, got.stdout + got.stderr
    assert [r["observed"] for r in json.loads(got.stdout)["results"]] == ["reached, ttl 63, via router"] * 2
    assert box.left(lab) == []


def test_services_across_machines_cluster_ip_and_node_port(box, tmp_path):
    text = (REPO / "topologies" / "spine-leaf-services.yaml").read_text() + PLACEMENT + "  internet: m3\n"
    file = tmp_path / "services.yaml"
    file.write_text(text)
    lab = unique_lab_name()
    up = box.nslab("up", str(file), "--name", lab)
    try:
        assert up.returncode == 0, up.stderr
        tests = box.nslab("test", "-l", lab)
        assert tests.returncode == 0, tests.stdout + tests.stderr
        assert "4 passed, 0 failed" in tests.stdout
        # the NodePort on worker3 (m2) from outside (m3), DNATed to a pod on m1 (2 of 3 endpoints):
        # m3 -> m2 -> m3 -> m1 and back, the NAT on m2 followed by every machine
        hit = None
        for _ in range(8):
            got = box.nslab("trace", "-l", lab, "outside", "30.0.0.23:30080", "--proto", "tcp", "--json")
            assert got.returncode == 0, got.stdout + got.stderr
            r = json.loads(got.stdout)
            if r["request"]["hops"][-1]["node"] in ("testappds-worker1", "testappds-worker2"):
                hit = r
                break
        assert hit is not None, "no NodePort connection went to a pod on m1 in 8 tries"
        assert [(s["from"], s["to"]) for s in stitches(hit["request"])] == [("m3", "m2"), ("m2", "m3"), ("m3", "m1")]
        assert any(n["node"] == "worker3" and n["dnat"] for n in hit["nat"])
        # the cluster IP from a pod on m2, to a pod on m1
        hit = None
        for _ in range(8):
            got = box.nslab("trace", "-l", lab, "testappds-worker3", "svc/testappds", "--json")
            assert got.returncode == 0, got.stdout + got.stderr
            r = json.loads(got.stdout)
            if r["request"]["hops"][-1]["node"] != "testappds-worker3":
                hit = r
                break
        assert hit is not None, "no cluster IP connection went to a pod on m1 in 8 tries"
        assert [(s["from"], s["to"]) for s in stitches(hit["request"])] == [("m2", "m3"), ("m3", "m1")]
    finally:
        down = box.nslab("down", lab)
    assert down.returncode == 0, down.stderr
    assert box.left(lab) == []
