"""Note 001's four NAT cases with real packets in topologies/spine-leaf-services.yaml:
pod to pod (no NAT), pod to outside (flannel's MASQUERADE), ClusterIP (kube-proxy's random
DNAT) and NodePort from outside the cluster (DNAT + KUBE-POSTROUTING's MASQUERADE by egress
device), checked with conntrack, the rules' counters and the address the endpoint saw (the
lab's HTTP server answers "<pod> <its address> answered <peer>").  vxlan and host-gw.
"""
from __future__ import annotations

import collections
import json
import os
import re
import sys
from pathlib import Path

import pytest

from conftest import TOPOLOGIES, installed, nslab, unique_lab_name
from test_refusals import path_without
from nslab.apply import iptables

SHIPPED = (TOPOLOGIES / "spine-leaf-services.yaml").read_text()
SVC = "KUBE-SVC-QMR6LTDCBEU4U25W"      # kube-proxy's name for default/testappds tcp, as in the note
ENDPOINTS = {"testappds-worker1": "10.244.1.2", "testappds-worker2": "10.244.2.2", "testappds-worker3": "10.244.3.2"}

# N HTTP requests, one connection each, from inside a lab namespace; prints each answer's body.
GET = r"""
import socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for _ in range(n):
    s = socket.create_connection((host, port), timeout=20)
    s.sendall(b"GET / HTTP/1.0\r\n\r\n")
    data = b""
    while chunk := s.recv(4096):
        data += chunk
    s.close()
    print(data.split(b"\r\n\r\n", 1)[1].decode().strip())
"""

@pytest.fixture(autouse=True)
def _tools():
    installed("conntrack")


def topology(backend: str) -> tuple[str, str, str]:
    """(yaml, worker3's address, the source a pod on another node sees for a NodePort
    connection that arrived at worker3: the address of worker3's egress device)."""
    if backend != "host-gw":
        # flannel.1, flannel.ipip or flannel0: each holds <subnet>.0/32
        return SHIPPED.replace("backend: {type: vxlan}", f"backend: {{type: {backend}}}"), "30.0.0.23", "10.244.3.0"
    # host-gw routes pod subnets via node IPs: every node on one segment
    text = SHIPPED.replace("worker3: {segment: rack2, ip: 30.0.0.23}", "worker3: {segment: rack1, ip: 10.0.0.23}")
    text = text.replace("backend: {type: vxlan}", f"backend: {{type: {backend}}}")
    assert text.count("10.0.0.23") == 1 and f"type: {backend}" in text
    return text, "10.0.0.23", "10.0.0.23"                   # enp0s3's address


def get(lab, node: str, host: str, port: int, n: int) -> list[tuple[str, str, str]]:
    """[(answering pod, its address, the peer address it saw)] for n requests."""
    proc = lab.exec(node, sys.executable, "-c", GET, host, str(port), str(n), timeout=180)
    assert proc.returncode == 0, proc.stderr
    out = []
    for line in proc.stdout.splitlines():
        m = re.fullmatch(r"(\S+) ([\d.]+):\d+ answered ([\d.]+):\d+", line)
        assert m, line
        out.append(m.groups())
    assert len(out) == n
    return out


def conntrack(lab, node: str, *filters: str) -> list[str]:
    proc = lab.exec(node, "conntrack", "-L", *filters, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return [line for line in proc.stdout.splitlines() if line.strip()]


def tuples(line: str) -> list[dict]:
    """A conntrack line's original and reply tuples: [{src, dst, sport, dport}, {...}]."""
    fields = re.findall(r"(src|dst|sport|dport)=(\S+)", line)
    half = len(fields) // 2
    return [dict(fields[:half]), dict(fields[half:])]


def counters(lab, node: str, table: str, chain: str) -> list[tuple[str, int]]:
    return [(r.spec, r.packets) for r in iptables.tables(lab.ns(node))[table][chain].rules]


def rule_packets(lab, node, table, chain, needle) -> int:
    hits = [pk for spec, pk in counters(lab, node, table, chain) if needle in spec]
    assert len(hits) == 1, (needle, counters(lab, node, table, chain))
    return hits[0]


@pytest.mark.parametrize("backend", ["vxlan", "host-gw", "ipip", "udp"])
def test_the_notes_four_nat_cases(root_unchanged, lab_factory, backend):
    text, worker3, remote_source = topology(backend)
    lab = lab_factory(text)

    # 1. pod to pod: worker1 forwards it and its conntrack entry is the plain tuple both ways.
    assert lab.exec("client", "ping", "-c1", "-W5", ENDPOINTS["testappds-worker1"]).returncode == 0
    entries = [tuples(line) for line in conntrack(lab, "worker1", "-p", "icmp")]
    assert [{"src": "10.244.0.20", "dst": "10.244.1.2"}, {"src": "10.244.1.2", "dst": "10.244.0.20"}] in \
        [[{k: t[k] for k in ("src", "dst")} for t in e] for e in entries], entries

    # 2. pod to outside: flannel's MASQUERADE on master1 rewrites the source to master1's address.
    masq = "-s 10.244.0.0/16 ! -d 224.0.0.0/4"
    before = rule_packets(lab, "master1", "nat", "POSTROUTING", masq)
    assert lab.exec("client", "ping", "-c1", "-W5", "198.51.100.8").returncode == 0
    assert rule_packets(lab, "master1", "nat", "POSTROUTING", masq) == before + 1
    out = [tuples(line) for line in conntrack(lab, "master1", "-p", "icmp", "-d", "198.51.100.8")]
    assert len(out) == 1 and out[0][0]["src"] == "10.244.0.20" and out[0][1]["dst"] == "10.0.0.11", out

    # 3. ClusterIP: 300 connections from client spread over the three endpoints at random,
    #    each answered through the reverse NAT (the source the endpoint saw is the pod's).
    svc_rule = "-d 10.111.222.68/32 -p tcp -m comment"
    seps_before = [pk for spec, pk in counters(lab, "master1", "nat", SVC) if "KUBE-SEP-" in spec]
    answers = get(lab, "client", "10.111.222.68", 8080, 300)
    spread = collections.Counter(pod for pod, _, _ in answers)
    assert set(spread) == set(ENDPOINTS) and max(spread.values()) <= 150, spread
    assert all(ENDPOINTS[pod] == ip and peer == "10.244.0.20" for pod, ip, peer in answers)
    seps = [pk for spec, pk in counters(lab, "master1", "nat", SVC) if "KUBE-SEP-" in spec]
    # KUBE-SVC walks 1/3, then 1/2 of the rest, then the rest: each connection takes one jump
    assert sum(seps) - sum(seps_before) == 300 and len(seps) == 3, seps
    assert [n - b for n, b in zip(seps, seps_before)] == [spread[p] for p in sorted(ENDPOINTS)]
    assert any(svc_rule in spec or ("10.111.222.68" in spec and SVC in spec)
               for spec, pk in counters(lab, "master1", "nat", "KUBE-SERVICES") if pk >= 300)

    # 4. NodePort from outside the cluster (the spine): DNAT, then KUBE-POSTROUTING's
    #    MASQUERADE by egress device: cni0's address for worker3's own pod, worker3's
    #    egress device's address for the others; the answer comes back through the reverse NAT.
    ext = "KUBE-EXT-QMR6LTDCBEU4U25W"
    ext_before = rule_packets(lab, "worker3", "nat", "KUBE-NODEPORTS", ext)
    answers = get(lab, "spine", worker3, 30080, 60)
    seen = {pod: set() for pod in ENDPOINTS}
    for pod, _, peer in answers:
        seen[pod].add(peer)
    assert seen["testappds-worker3"] == {"10.244.3.1"}, seen
    assert seen["testappds-worker1"] | seen["testappds-worker2"] == {remote_source}, seen
    assert rule_packets(lab, "worker3", "nat", "KUBE-NODEPORTS", ext) == ext_before + 60
    lines = conntrack(lab, "worker3", "-p", "tcp", "--orig-port-dst", "30080")
    replies = {(t[1]["src"], t[1]["dst"]) for t in map(tuples, lines) if t[0]["dst"] == worker3}
    assert ("10.244.3.2", "10.244.3.1") in replies, lines           # DNAT and SNAT both in one entry
    assert {(ENDPOINTS["testappds-worker1"], remote_source), (ENDPOINTS["testappds-worker2"], remote_source)} \
        & replies, lines


def test_ip_masq_false_leaves_pod_traffic_unmasqueraded(root_unchanged, lab_factory):
    lab = lab_factory(SHIPPED.replace("ipMasq: true", "ipMasq: false"))
    assert not [spec for spec, _ in counters(lab, "master1", "nat", "POSTROUTING") if "flanneld masq" in spec]
    # the outside host has no route back to the pod network: the ping goes out with the
    # pod's own address and its answer never arrives
    assert lab.exec("client", "ping", "-c1", "-W2", "198.51.100.8").returncode != 0
    out = [tuples(line) for line in conntrack(lab, "master1", "-p", "icmp", "-d", "198.51.100.8")]
    assert len(out) == 1 and out[0][1]["dst"] == "10.244.0.20", out
    # services still work: kube-proxy's own masquerade is independent of flannel's
    assert {pod for pod, _, _ in get(lab, "spine", "30.0.0.23", 30080, 30)} <= set(ENDPOINTS)


def test_nslab_test_reads_the_source_and_endpoint_a_service_probe_reached(root_unchanged, lab_factory):
    """`http: [client, svc/testappds]` probes the cluster IP; source/endpoint expectations are
    checked against what the answering server saw, and a wrong one fails."""
    text = SHIPPED.replace("tests:\n", "tests:\n  - {name: wrong source, http: [client, svc/testappds], "
                                       "expect: {source: 10.244.0.99}}\n"
                                       "  - {name: no such endpoint, http: [client, svc/testappds], "
                                       "expect: {endpoint: client}}\n", 1)
    lab = lab_factory(text)
    proc = lab.nslab("test", "-l", lab.name, "--json", timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    results = {r["name"]: r for r in json.loads(proc.stdout)["results"]}
    failed = sorted(name for name, r in results.items() if not r["ok"])
    assert failed == ["no such endpoint", "wrong source"], results
    assert "source 10.244.0.20" in results["wrong source"]["observed"]
    assert re.search(r"endpoint testappds-worker[123]", results["no such endpoint"]["observed"])
    assert results["ClusterIP keeps the pod's source"]["ok"] and results["NodePort from outside"]["ok"]


TRY = r"""
import socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for _ in range(n):
    try:
        s = socket.create_connection((host, port), timeout=1)
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
        s.close()
        print(data.split(b"\r\n\r\n", 1)[1].decode().split()[0])
    except OSError:
        print("no answer")
"""


def test_same_node_clusterip_reply_needs_bridge_netfilter(root_unchanged, lab_factory):
    """Why client sits on master1: a pod on worker3 reaches worker3's own endpoint through the
    ClusterIP only while bridged frames pass iptables (net.bridge.bridge-nf-call-iptables=1,
    br_netfilter: built into some kernels, a host-wide module nslab never loads on others).
    The reply 10.244.3.2 -> the pod is bridged on cni0; without that hook it is never
    un-DNATed, the client gets no answer and conntrack keeps the entry [UNREPLIED].  The
    sysctl is per namespace: turning it off in worker3 touches nothing else."""
    pods = "    testappds: {daemonset: [worker1, worker2, worker3], serve: http}\n"
    lab = lab_factory(SHIPPED.replace(pods, pods + "    client3: {node: worker3}\n"))   # after: .3
    knob = lab.exec("worker3", "cat", "/proc/sys/net/bridge/bridge-nf-call-iptables")

    def attempts() -> collections.Counter:
        proc = lab.exec("client3", sys.executable, "-c", TRY, "10.111.222.68", "8080", "20", timeout=120)
        assert proc.returncode == 0, proc.stderr
        return collections.Counter(proc.stdout.split("\n")[:-1])

    if knob.returncode == 0:            # the kernel has br_netfilter: on by default in a new namespace
        assert knob.stdout.strip() == "1"
        got = attempts()
        assert set(got) == set(ENDPOINTS), got           # worker3's own endpoint answers too
        assert lab.exec("worker3", "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0").returncode == 0
    got = attempts()
    assert set(got) <= {"testappds-worker1", "testappds-worker2", "no answer"} and got["no answer"] >= 1, got
    lines = conntrack(lab, "worker3", "-p", "tcp", "--orig-dst", "10.111.222.68")
    assert any("UNREPLIED" in line and tuples(line)[1]["src"] == "10.244.3.2" for line in lines), lines


@pytest.mark.parametrize("topology", ["spine-leaf-services.yaml", "flannel-vxlan.yaml"])
def test_up_without_iptables_restore_is_one_sentence_and_leaves_nothing(root_unchanged, tmp_path, topology):
    """The rules are applied mid-up: a missing iptables-restore rolls the whole lab back.
    A cluster without services needs it too: flannel's ip-masq is on by default."""
    name = unique_lab_name()
    path = path_without(tmp_path, "iptables-restore", "iptables-legacy-restore", "iptables-nft-restore")
    proc = nslab("up", "-q", TOPOLOGIES / topology, "--name", name, env={"PATH": path}, timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.strip() == "nslab: iptables-restore is not installed (apt-get install iptables)", proc.stderr
    assert not [n for n in os.listdir("/run/netns") if n.startswith(name + ".")]
    assert not (Path("/run/nslab") / name).exists()


def test_lab_without_a_cluster_needs_no_iptables(root_unchanged, tmp_path):
    """No cluster, no netfilter rules: such a lab comes up without iptables-restore."""
    name = unique_lab_name()
    path = path_without(tmp_path, "iptables-restore", "iptables-legacy-restore", "iptables-nft-restore")
    proc = nslab("up", "-q", TOPOLOGIES / "diy-veth.yaml", "--name", name, env={"PATH": path}, timeout=120)
    try:
        assert proc.returncode == 0, proc.stderr
    finally:
        assert nslab("down", name, timeout=120).returncode == 0
