"""Issue 21: `nslab break` makes the faults flannel clusters hit, `nslab doctor` names them
from the kernel alone (node, object, key), and the undo puts back exactly what was there:
real namespaces, real packets (doctor's own all-pairs probes and pings between pods)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from conftest import REPO, nslab
from nslab import state

VXLAN = str(REPO / "topologies" / "flannel-vxlan.yaml")      # master (client pod) and node1 (nginx pod), flannel.1, NIC ens33

# fault -> the findings doctor must report for it on node1: (node, object, key fragment)
EXPECTED = {
    "vtep-mac-changed": [("master", "neigh", "10.244.1.0 dev flannel.1"), ("node1", "link", "flannel.1 address")],
    "fdb-missing": [("node1", "fdb", "dev flannel.1")],
    "neigh-missing": [("node1", "neigh", "10.244.0.0 dev flannel.1")],
    "route-missing": [("node1", "route", "10.244.0.0/24")],
    "blackhole-route": [("node1", "route", "10.244.0.0/24")],
    "mtu-mismatch": [("node1", "mtu", "ens33")],
    "ip-forward-off": [("node1", "sysctl", "net.ipv4.ip_forward")],
    "forward-drop": [("node1", "policy", "filter FORWARD")],
    "link-down": [("node1", "link", "flannel.1")],
    "rp-filter": [("node1", "sysctl", "net.ipv4.conf.all.rp_filter")],
    "masq-missing": [("node1", "rule", "nat POSTROUTING")],
}
# faults after which a pod on master no longer reaches the pod on node1 (the others break
# other traffic: big packets, traffic to the outside, asymmetric paths)
CUTS_PODS = {"vtep-mac-changed", "fdb-missing", "neigh-missing", "route-missing", "blackhole-route",
             "ip-forward-off", "link-down"}


def doctor(lab, *args) -> tuple[int, dict]:
    r = nslab("doctor", "-l", lab.name, "--json", *args, timeout=120)
    assert r.returncode in (0, 1), r.stderr
    return r.returncode, json.loads(r.stdout)


def found(report: dict, node: str, obj: str, key: str) -> bool:
    return any(f["node"] == node and f["object"] == obj and key in f["key"] for f in report["findings"])


def kernel_snapshot(lab) -> dict:
    """What break may change, node by node: routes, neighbours, FDB, links, sysctls, iptables."""
    snap = {}
    for node in ("master", "node1"):
        ns = lab.ns(node)
        run = lambda *a: subprocess.run(a, capture_output=True, text=True, check=True).stdout  # noqa: E731
        links = json.loads(run("ip", "-j", "-n", ns, "link", "show"))
        snap[node] = {
            "routes": run("ip", "-n", ns, "route"),
            "neigh": sorted(line for line in run("ip", "-n", ns, "neigh").splitlines() if "PERMANENT" in line),
            "fdb": run("bridge", "-n", ns, "fdb", "show", "dev", "flannel.1"),
            "links": sorted((x["ifname"], x["mtu"], x.get("address"), "UP" in x["flags"]) for x in links),
            "sysctl": run("ip", "netns", "exec", ns, "sysctl", "net.ipv4.ip_forward", "net.ipv4.conf.all.rp_filter"),
            "iptables": "\n".join(x for x in run("ip", "netns", "exec", ns, "iptables-save").splitlines()
                                  if not x.startswith("#")),
        }
    return snap


@pytest.fixture(scope="module")
def vxlan(nslab_module_lab):
    return nslab_module_lab(VXLAN)


def test_the_healthy_lab_reports_nothing_and_exit_0(vxlan):
    rc, report = doctor(vxlan)
    assert rc == 0 and report["healthy"] and report["findings"] == []
    assert report["probes"].startswith("2/2 pairs")


@pytest.mark.parametrize("fault", sorted(EXPECTED))
def test_break_is_named_by_doctor_and_undone_exactly(vxlan, fault):
    before = kernel_snapshot(vxlan)
    r = nslab("break", "-l", vxlan.name, fault, "node1", check=True)
    ident = int(r.stdout.split()[1].rstrip(":"))
    rec = [b for b in state.load(vxlan.name).breaks if b["id"] == ident]
    assert rec and rec[0]["status"] == "made" and rec[0]["fault"] == fault and rec[0]["changes"]
    try:
        if fault in CUTS_PODS:
            assert not vxlan.ping("client", "nginx").ok, f"{fault}: client still reaches nginx"
        rc, report = doctor(vxlan)
        assert rc == 1
        for node, obj, key in EXPECTED[fault]:
            assert found(report, node, obj, key), (fault, node, obj, key, report["findings"])
        for f in report["findings"]:
            assert {"node", "object", "key", "expected", "actual", "fix"} <= set(f) and f["fix"]
    finally:
        nslab("break", "-l", vxlan.name, "--undo", ident, check=True)
    assert state.load(vxlan.name).breaks == []
    assert kernel_snapshot(vxlan) == before
    rc, report = doctor(vxlan)
    assert rc == 0, report["findings"]
    assert report["probes"].startswith("2/2 pairs")
    assert vxlan.ping("client", "nginx").ok


HAND_MADE = [   # (argv run in node1's namespace, expected finding on node1)
    (["ip", "route", "del", "10.244.0.0/24"], ("node1", "route", "10.244.0.0/24")),
    (["ip", "neigh", "del", "10.244.0.0", "dev", "flannel.1"], ("node1", "neigh", "10.244.0.0 dev flannel.1")),
    (["sysctl", "-qw", "net.ipv4.ip_forward=0"], ("node1", "sysctl", "net.ipv4.ip_forward")),
    (["iptables", "-P", "FORWARD", "DROP"], ("node1", "policy", "filter FORWARD")),
    (["iptables", "-I", "FORWARD", "-d", "10.244.1.6", "-j", "DROP"], ("node1", "rule", "filter FORWARD")),
    (["ip", "link", "set", "dev", "ens33", "mtu", "1400"], ("node1", "mtu", "ens33")),
    (["ip", "route", "add", "blackhole", "10.244.0.2/32"], ("node1", "route", "10.244.0.2")),
    (["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=1"], ("node1", "sysctl", "rp_filter")),
]


def test_faults_made_by_hand_are_found_and_doctor_s_fixes_repair_them(vxlan):
    before = kernel_snapshot(vxlan)
    ns = vxlan.ns("node1")
    for argv, _ in HAND_MADE:
        subprocess.run(["ip", "netns", "exec", ns, *argv], check=True)
    subprocess.run(["bridge", "-n", vxlan.ns("master"), "fdb", "del",
                    json.loads(subprocess.run(["ip", "-j", "-n", ns, "link", "show", "dev", "flannel.1"],
                                              capture_output=True, text=True).stdout)[0]["address"],
                    "dev", "flannel.1", "dst", "192.168.56.134", "self"], check=True)
    rc, report = doctor(vxlan)
    assert rc == 1
    for _, (node, obj, key) in HAND_MADE:
        assert found(report, node, obj, key), (node, obj, key, report["findings"])
    assert found(report, "master", "fdb", "dev flannel.1")
    # every fix doctor prints is a command that puts its entry back
    for f in report["findings"]:
        subprocess.run(f["fix"], shell=True, check=True, cwd="/")
    rc, report = doctor(vxlan)
    assert rc == 0, report["findings"]
    after = kernel_snapshot(vxlan)
    assert after["master"]["routes"] == before["master"]["routes"]
    assert after["node1"]["routes"] == before["node1"]["routes"]
    assert after["node1"]["sysctl"] == before["node1"]["sysctl"]


def test_bad_input_exits_2(vxlan):
    assert nslab("doctor", "-l", "no-such-lab").returncode == 2
    assert nslab("doctor", "-l", vxlan.name, "client").returncode == 2
    assert nslab("doctor", "-l", vxlan.name, "client", "nginx", "--proto", "sctp").returncode == 2
    r = nslab("break", "-l", vxlan.name, "no-such-fault", "node1")
    assert r.returncode == 2 and "no-such-fault" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = nslab("break", "-l", vxlan.name, "ip-forward-off", "client")       # a pod does not forward
    assert r.returncode == 2 and "does not forward" in r.stderr
    assert nslab("break", "-l", vxlan.name, "--undo", "99").returncode == 2
    assert state.load(vxlan.name).breaks == []


def test_doctor_probes_one_pair(vxlan):
    rc, report = doctor(vxlan, "client", "nginx")
    assert rc == 0 and report["probes"] == "ping client -> nginx: answered"
    nslab("break", "-l", vxlan.name, "route-missing", "master", check=True)
    try:
        rc, report = doctor(vxlan, "client", "nginx")
        assert rc == 1 and report["failed_pairs"] == [["client", "nginx"]]
        assert found(report, "master", "route", "10.244.1.0/24")
    finally:
        nslab("break", "-l", vxlan.name, "--undo-all", check=True)


def test_a_hostile_break_record_is_refused_and_nothing_changes(vxlan):
    before = kernel_snapshot(vxlan)
    hostile = [{"kind": "sysctl", "ns": "other.lab", "key": "net.ipv4.ip_forward", "before": "0", "after": "1"},
               {"kind": "sysctl", "ns": vxlan.ns("node1"), "key": "kernel.core_pattern", "before": "x", "after": "y"},
               {"kind": "link", "ns": vxlan.ns("node1"), "dev": "eth9", "attr": "mtu", "before": 1, "after": 2},
               {"kind": "del", "ns": vxlan.ns("node1"), "op": 10 ** 6},
               {"kind": "rm -rf /", "ns": vxlan.ns("node1")}]
    for i, change in enumerate(hostile, 1):
        state.update(vxlan.name, lambda s: s.breaks.append({"id": i, "fault": "x", "node": "node1", "status": "made",
                                                            "changes": [change]}))
        r = nslab("break", "-l", vxlan.name, "--undo", i)
        assert r.returncode != 0 and "will not act on it" in r.stderr, (change, r.stderr)
        state.update(vxlan.name, lambda s: s.breaks.clear())
    assert kernel_snapshot(vxlan) == before


KILLER = """
import os, signal, sys
from nslab import faults
real, calls = faults._change, []
def change(*a, **kw):
    calls.append(1)
    if len(calls) == 2:
        os.kill(os.getpid(), signal.SIGKILL)      # between the two changes of the break (or undo)
    return real(*a, **kw)
faults._change = change
if sys.argv[2] == "undo":
    faults.undo(sys.argv[1], None)
else:
    faults.inject(sys.argv[1], "blackhole-route", "node1", [])
"""


def test_kill_9_during_break_and_undo_leaves_a_lab_undo_and_down_clean(vxlan, lab_factory):
    before = kernel_snapshot(vxlan)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", KILLER, vxlan.name, "break"], env=env, cwd="/")
    assert r.returncode == -signal.SIGKILL
    [b] = state.load(vxlan.name).breaks
    assert b["status"] == "breaking"                     # recorded before the kernel changed
    r = subprocess.run([sys.executable, "-c", KILLER, vxlan.name, "undo"], env=env, cwd="/")
    assert r.returncode == -signal.SIGKILL
    assert state.load(vxlan.name).breaks[0]["status"] == "undoing"
    nslab("break", "-l", vxlan.name, "--undo-all", check=True)
    assert kernel_snapshot(vxlan) == before and state.load(vxlan.name).breaks == []
    # a lab broken (and a break killed half-way) goes down like any other: lab_factory checks
    other = lab_factory(VXLAN)
    nslab("break", "-l", other.name, "vtep-mac-changed", "node1", check=True)
    nslab("break", "-l", other.name, "forward-drop", "master", check=True)
    subprocess.run([sys.executable, "-c", KILLER, other.name, "break"], env=env, cwd="/")
    assert len(state.load(other.name).breaks) == 3
    other.down()


@pytest.mark.parametrize("backend", ["host-gw", "ipip", "udp"])
def test_other_backends_route_forward_and_mtu_faults(nslab_lab, backend):
    lab = nslab_lab(VXLAN, backend=backend)
    r = nslab("doctor", "-l", lab.name, "--json")
    assert r.returncode == 0, r.stdout
    for fault, obj in (("route-missing", "route"), ("ip-forward-off", "sysctl"), ("mtu-mismatch", "mtu"),
                       ("forward-drop", "policy"), ("link-down", "link")):
        out = nslab("break", "-l", lab.name, fault, "node1", check=True).stdout
        ident = out.split()[1].rstrip(":")
        report = json.loads(nslab("doctor", "-l", lab.name, "--json", "--no-probe").stdout)
        assert any(f["node"] == "node1" and f["object"] == obj for f in report["findings"]), (fault, report)
        nslab("break", "-l", lab.name, "--undo", ident, check=True)
    r = nslab("doctor", "-l", lab.name, "--json")
    assert r.returncode == 0, r.stdout
    assert lab.ping("client", "nginx").ok


def test_host_gw_across_racks_is_named_on_the_node_that_routes(nslab_lab):
    lab = nslab_lab(str(REPO / "topologies" / "spine-leaf.yaml"))
    assert lab.ping("client", "web-worker3").ok
    nslab("break", "-l", lab.name, "host-gw-across-subnets", "worker1", check=True)
    assert not lab.ping("client", "web-worker3").ok
    rc, report = doctor(lab)
    assert rc == 1 and found(report, "worker1", "route", "10.244.3.0/24")
    [f] = [f for f in report["findings"] if f["node"] == "worker1"]
    assert f["actual"] == "10.244.3.0/24 via 30.0.0.23 dev enp0s3" and "host-gw" in f["why"]
    nslab("break", "-l", lab.name, "--undo-all", check=True)
    rc, report = doctor(lab)
    assert rc == 0 and report["probes"].startswith("12/12 pairs")
