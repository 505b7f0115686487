"""Issue 21, the faults of services and userspace dataplanes: endpoint-gone, stale-conntrack,
bridge-nf-call-off (spine-leaf-services, kube-proxy's iptables mode), daemon-dead (udp and
userspace ipip), and doctor reading nftables (kube-proxy's nftables mode, flannel's
EnableNFTables).  Each fault: break -> real packets fail -> doctor names node, object, key
-> undo -> the kernel as before, doctor healthy, every pair answers; the same fault made
with plain commands (ip, sysctl, conntrack, nft, kill) is found the same way and doctor's
fixes repair it."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, TOPOLOGIES, installed, nslab
from test_break_doctor import doctor, found
from nslab import state

SERVICES = (TOPOLOGIES / "spine-leaf-services.yaml").read_text()
PODS = "    testappds: {daemonset: [worker1, worker2, worker3], serve: http}\n"
WITH_CLIENT3 = SERVICES.replace(PODS, PODS + "    client3: {node: worker3}\n")   # a client beside an endpoint
VXLAN = str(REPO / "topologies" / "flannel-vxlan.yaml")
DNS, SVC = ("10.96.0.10", 53), ("10.111.222.68", 8080)
STALE = "udp 10.244.0.20:41053 > 10.96.0.10:53"

# fault, node -> the finding doctor must report: (node, object, key fragment)
EXPECTED = {
    ("endpoint-gone", "worker3"): ("testappds-worker3", "link", "eth0"),
    ("stale-conntrack", "master1"): ("master1", "conntrack", STALE),
    ("bridge-nf-call-off", "worker3"): ("worker3", "sysctl", "net.bridge.bridge-nf-call-iptables"),
}

# A DNS query from a fixed source port (a resolver that keeps its socket), and N tcp
# connections to a service: each prints ok or no answer.
DNS_FROM = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("", int(sys.argv[3])))
s.settimeout(1.5)
s.sendto(bytes.fromhex("123401000001000000000000057465737473000001 0001".replace(" ", "")), (sys.argv[1], int(sys.argv[2])))
try:
    s.recv(512)
    print("ok")
except OSError:
    print("no answer")
"""
TCP_N = r"""
import socket, sys
for _ in range(int(sys.argv[3])):
    try:
        socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1).close()
        print("ok")
    except OSError:
        print("no answer")
        break
"""


@pytest.fixture(autouse=True)
def _tools():
    installed("conntrack")


def run(*argv) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def snapshot(lab, nodes) -> dict:
    """What these faults may change: links, routes, the sysctl, UDP conntrack to the DNS."""
    snap = {}
    for node in nodes:
        ns = lab.ns(node)
        snap[node] = (sorted((x["ifname"], x["mtu"], "UP" in x["flags"])
                             for x in json.loads(run("ip", "-j", "-n", ns, "link", "show"))),
                      run("ip", "-n", ns, "route"),
                      run("ip", "netns", "exec", ns, "sysctl", "net.bridge.bridge-nf-call-iptables"),
                      sorted(line.split()[3:] for line in run("ip", "netns", "exec", ns, "conntrack", "-L", "-p", "udp",
                                                              "--orig-dst", DNS[0]).splitlines() if "41053" in line))
    return snap


def cut(lab, fault: str) -> bool:
    """The fault's effect, with real packets: True when the traffic it breaks fails."""
    if fault == "endpoint-gone":
        return not lab.ping("client", "testappds-worker3").ok
    if fault == "stale-conntrack":
        stale = lab.exec("client", sys.executable, "-c", DNS_FROM, DNS[0], str(DNS[1]), "41053", timeout=30)
        other = lab.exec("client", sys.executable, "-c", DNS_FROM, DNS[0], str(DNS[1]), "41054", timeout=30)
        return stale.stdout.splitlines() == ["no answer"] and other.stdout.splitlines() == ["ok"]
    if fault == "bridge-nf-call-off":     # client3 beside worker3's endpoint: its replies miss the un-DNAT
        got = lab.exec("client3", sys.executable, "-c", TCP_N, SVC[0], str(SVC[1]), "40", timeout=120)
        return "no answer" in got.stdout.splitlines()
    raise AssertionError(fault)


@pytest.fixture(scope="module")
def services(nslab_module_lab, tmp_path_factory):
    path = tmp_path_factory.mktemp("topo") / "services.yaml"
    path.write_text(WITH_CLIENT3)
    return nslab_module_lab(str(path))


@pytest.mark.parametrize("fault,node", sorted(EXPECTED))
def test_service_faults_are_named_and_undone_exactly(services, fault, node):
    lab = services
    nodes = ("master1", "worker3", "testappds-worker3")
    if fault == "bridge-nf-call-off" and \
            lab.exec("worker3", "cat", "/proc/sys/net/bridge/bridge-nf-call-iptables").returncode:
        pytest.skip("this kernel has no br_netfilter in lab namespaces (nslab never loads the module)")
    before = snapshot(lab, nodes)
    if fault != "stale-conntrack":      # (a query from port 41053 now would make the entry the break makes)
        assert not cut(lab, fault), f"{fault}: the traffic fails before the break"
    out = nslab("break", "-l", lab.name, fault, node, check=True).stdout
    ident = int(out.split()[1].rstrip(":"))
    try:
        assert cut(lab, fault), f"{fault}: the traffic it breaks still flows"
        rc, report = doctor(lab)
        assert rc == 1 and found(report, *EXPECTED[(fault, node)]), report["findings"]
        for f in report["findings"]:
            assert f["fix"] and f["expected"] and f["actual"]
    finally:
        nslab("break", "-l", lab.name, "--undo", ident, check=True)
    assert state.load(lab.name).breaks == []
    assert snapshot(lab, nodes) == before
    rc, report = doctor(lab)
    assert rc == 0, report["findings"]
    assert report["probes"].startswith("30/30 pairs") and "12/12 node pairs" in report["probes"], report["probes"]
    assert "8/8 service probes" in report["probes"], report["probes"]


def apply_fixes(lab, rounds: int = 3) -> dict:
    """Run every fix doctor prints until it reports nothing (a link's fix brings back the
    device; the routes the kernel dropped with it are the next round's)."""
    for _ in range(rounds):
        rc, report = doctor(lab, "--no-probe")
        if rc == 0:
            return report
        for f in report["findings"]:
            subprocess.run(f["fix"], shell=True, check=True, cwd="/")
    rc, report = doctor(lab)
    assert rc == 0, report["findings"]
    return report


def test_service_faults_made_by_hand_are_found_and_fixed(services):
    lab = services
    bnf = lab.exec("worker3", "cat", "/proc/sys/net/bridge/bridge-nf-call-iptables").returncode == 0
    subprocess.run(["ip", "-n", lab.ns("testappds-worker3"), "link", "set", "dev", "eth0", "down"], check=True)
    subprocess.run(["ip", "netns", "exec", lab.ns("master1"), "conntrack", "-I", "-p", "udp", "-s", "10.244.0.20",
                    "-d", DNS[0], "--sport", "41053", "--dport", "53", "-r", "10.244.2.77", "-q", "10.244.0.20",
                    "--reply-port-src", "53", "--reply-port-dst", "41053", "-t", "300", "-u", "SEEN_REPLY"],
                   check=True, capture_output=True)
    if bnf:
        subprocess.run(["ip", "netns", "exec", lab.ns("worker3"), "sysctl", "-qw",
                        "net.bridge.bridge-nf-call-iptables=0"], check=True)
    rc, report = doctor(lab)
    assert rc == 1
    for (fault, _), (node, obj, key) in EXPECTED.items():
        if fault != "bridge-nf-call-off" or bnf:
            assert found(report, node, obj, key), (node, obj, key, report["findings"])
    [ct] = [f for f in report["findings"] if f["object"] == "conntrack"]
    assert "10.244.2.77:53" in ct["actual"] and "10.244.1.3:53" in ct["expected"]
    report = apply_fixes(lab)
    assert report["findings"] == [] and lab.ping("client", "testappds-worker3").ok


@pytest.mark.parametrize("backend", ["udp", "ipip"])
def test_daemon_dead_is_named_on_its_node_and_the_undo_brings_it_back(nslab_lab, backend):
    lab = nslab_lab(VXLAN, backend=backend)
    what = f"{backend} dataplane on node1"
    [old] = [p for p in state.load(lab.name).processes if p.what == what]
    nslab("break", "-l", lab.name, "daemon-dead", "node1", check=True)
    time.sleep(1.5)                                   # the agent would have restarted it by now
    assert not state.is_ours(old)
    assert not any(p.what == what and state.is_ours(p) for p in state.load(lab.name).processes)
    assert not lab.ping("client", "nginx").ok
    rc, report = doctor(lab)
    assert rc == 1 and found(report, "node1", "daemon", what), report["findings"]
    nslab("break", "-l", lab.name, "--undo-all", check=True)
    assert any(p.what == what and state.is_ours(p) for p in state.load(lab.name).processes)
    rc, report = doctor(lab)
    assert rc == 0 and report["probes"].startswith("2/2 pairs"), report
    assert lab.ping("client", "nginx").ok


def test_daemon_killed_by_hand_while_its_supervisors_are_stopped_is_found(nslab_lab):
    lab = nslab_lab(VXLAN, backend="udp")
    procs = state.load(lab.name).processes
    supervisors = [p.pid for p in procs if p.what.startswith(("agent:", "warden:"))]
    [daemon] = [p.pid for p in procs if p.what == "udp dataplane on node1"]
    for pid in supervisors:
        os.kill(pid, signal.SIGSTOP)
    try:
        os.kill(daemon, signal.SIGKILL)
        time.sleep(0.5)
        rc, report = doctor(lab, "--no-probe")
        assert rc == 1 and found(report, "node1", "daemon", "udp dataplane on node1"), report["findings"]
    finally:
        for pid in supervisors:
            os.kill(pid, signal.SIGCONT)
    for _ in range(100):                          # the agent restarts it once it runs again
        if doctor(lab, "--no-probe")[0] == 0:
            break
        time.sleep(0.2)
    rc, report = doctor(lab)
    assert rc == 0 and report["failed_pairs"] == [], report


@pytest.mark.parametrize("flannel", ["iptables", "nftables"])
def test_nftables_chains_maps_and_flannel_rules_flushed_by_hand_are_found(nslab_lab, tmp_path, flannel):
    head = "cluster:\n  kubeProxy: {mode: nftables}\n" + ("  enableNFTables: true\n" if flannel == "nftables" else "")
    path = tmp_path / "nft.yaml"
    path.write_text(SERVICES.replace("cluster:\n", head, 1))
    lab = nslab_lab(str(path))
    rc, report = doctor(lab)
    assert rc == 0, report["findings"]
    ns = lab.ns("worker1")
    nft = lambda *a: subprocess.run(["ip", "netns", "exec", ns, "nft", *a], check=True)  # noqa: E731
    nft("flush", "chain", "ip", "kube-proxy", "services")
    nft("flush", "map", "ip", "kube-proxy", "service-ips")
    want = [("worker1", "rule", "kube-proxy/services"), ("worker1", "rule", "kube-proxy/service-ips")]
    if flannel == "nftables":
        nft("flush", "chain", "ip", "flannel-ipv4", "postrtg")
        want.append(("worker1", "rule", "flannel-ipv4/postrtg"))
    rc, report = doctor(lab)
    assert rc == 1
    for node, obj, key in want:
        assert found(report, node, obj, key), (key, report["findings"])
    report = apply_fixes(lab)
    assert report["failed_services"] == [] and report["failed_pairs"] == []
