"""Note 001's four NAT cases with kube-proxy in nftables mode (table `ip kube-proxy`), with
flannel's masquerade in iptables and in its own nftables table (EnableNFTables): the same
observable results as the iptables mode (test_services.py): pod to pod untranslated, pod to
outside masqueraded to the node, ClusterIP spread over every endpoint with the pod's source
kept and the reply un-NATed, NodePort from outside masqueraded by egress device.  Then
`nslab trace` names the map element and the nft chains that chose the endpoint, and ipvs
mode is refused on a kernel without ip_vs.
"""
from __future__ import annotations

import base64
import collections
import hashlib
import json
import os
import re
from pathlib import Path

import pytest

from conftest import TOPOLOGIES, installed, nslab, unique_lab_name
from test_services import ENDPOINTS, SHIPPED, conntrack, get, tuples
from nslab.apply import iptables, kernel, nftables


@pytest.fixture(autouse=True)
def _tools():
    installed("conntrack")
    installed("nft")


def chain(prefix: str, text: str) -> str:
    """kube-proxy's hashAndTruncate, computed here from its definition (not the module's)."""
    return f"{prefix}-{base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()[:8]}-{text}"


SERVICE = chain("service", "default/testappds/tcp/")
EXTERNAL = chain("external", "default/testappds/tcp/")


def objects(lab, node: str) -> list[dict]:
    table = nftables.table(lab.ns(node), "kube-proxy")
    assert table is not None, f"no table ip kube-proxy in {node}"
    return table


def rules_of(table: list[dict], name: str) -> list[dict]:
    return [o["rule"] for o in table if "rule" in o and o["rule"]["chain"] == name]


@pytest.mark.parametrize("flannel", ["iptables", "nftables"])
def test_the_notes_four_nat_cases_in_nftables_mode(root_unchanged, lab_factory, flannel):
    head = "cluster:\n  kubeProxy: {mode: nftables}\n" + ("  enableNFTables: true\n" if flannel == "nftables" else "")
    lab = lab_factory(SHIPPED.replace("cluster:\n", head, 1))

    # kube-proxy's rules are nftables only: no KUBE-* chain in any iptables table
    saved = iptables.tables(lab.ns("worker3"))
    assert not [c for t in saved.values() for c in t if c.startswith("KUBE-")], saved.keys()
    flannel_ipt = [r.spec for r in saved.get("nat", {}).get("POSTROUTING", iptables.Chain("", None, 0, 0)).rules
                   if "flanneld masq" in r.spec]
    flannel_nft = nftables.table(lab.ns("worker3"), "flannel-ipv4")
    if flannel == "nftables":
        assert not flannel_ipt and flannel_nft is not None
        assert rules_of(flannel_nft, "postrtg") and rules_of(flannel_nft, "forward")
    else:
        assert len(flannel_ipt) == 4 and flannel_nft is None
    table = objects(lab, "worker3")
    chains = {o["chain"]["name"] for o in table if "chain" in o}
    assert {SERVICE, EXTERNAL, "services", "masquerading", "mark-for-masquerade"} <= chains, sorted(chains)
    eps = {chain("endpoint", f"default/testappds/tcp/__{ip}/80") for ip in ENDPOINTS.values()}
    assert eps <= chains, sorted(chains - {SERVICE, EXTERNAL})
    (vmap,) = [e["vmap"] for r in rules_of(table, SERVICE) for e in r["expr"] if "vmap" in e]
    assert vmap["key"]["numgen"]["mod"] == 3
    assert {v["goto"]["target"] for _, v in vmap["data"]["set"]} == eps

    # 1. pod to pod: worker1 forwards it untranslated.
    assert lab.exec("client", "ping", "-c1", "-W5", ENDPOINTS["testappds-worker1"]).returncode == 0
    entries = [tuples(line) for line in conntrack(lab, "worker1", "-p", "icmp")]
    assert [{"src": "10.244.0.20", "dst": "10.244.1.2"}, {"src": "10.244.1.2", "dst": "10.244.0.20"}] in \
        [[{k: t[k] for k in ("src", "dst")} for t in e] for e in entries], entries

    # 2. pod to outside: flannel's masquerade on master1 rewrites the source to master1's address.
    assert lab.exec("client", "ping", "-c1", "-W5", "198.51.100.8").returncode == 0
    out = [tuples(line) for line in conntrack(lab, "master1", "-p", "icmp", "-d", "198.51.100.8")]
    assert len(out) == 1 and out[0][0]["src"] == "10.244.0.20" and out[0][1]["dst"] == "10.0.0.11", out

    # 3. ClusterIP: 300 connections spread over the three endpoints (numgen random mod 3),
    #    every answer through the reverse NAT with the pod's own source.
    answers = get(lab, "client", "10.111.222.68", 8080, 300)
    spread = collections.Counter(pod for pod, _, _ in answers)
    assert set(spread) == set(ENDPOINTS) and max(spread.values()) <= 150, spread
    assert all(ENDPOINTS[pod] == ip and peer == "10.244.0.20" for pod, ip, peer in answers)
    lines = conntrack(lab, "master1", "-p", "tcp", "--orig-dst", "10.111.222.68")
    assert {t[1]["src"] for t in map(tuples, lines)} == set(ENDPOINTS.values()), lines

    # 4. NodePort from outside (the spine): DNAT at worker3 and kube-proxy's masquerade by
    #    egress device: cni0's address for worker3's own pod, flannel.1's for the others.
    answers = get(lab, "spine", "30.0.0.23", 30080, 60)
    seen = {pod: set() for pod in ENDPOINTS}
    for pod, _, peer in answers:
        seen[pod].add(peer)
    assert seen["testappds-worker3"] == {"10.244.3.1"}, seen
    assert seen["testappds-worker1"] | seen["testappds-worker2"] == {"10.244.3.0"}, seen
    lines = conntrack(lab, "worker3", "-p", "tcp", "--orig-port-dst", "30080")
    replies = {(t[1]["src"], t[1]["dst"]) for t in map(tuples, lines) if t[0]["dst"] == "30.0.0.23"}
    assert ("10.244.3.2", "10.244.3.1") in replies, lines
    assert {("10.244.1.2", "10.244.3.0"), ("10.244.2.2", "10.244.3.0")} & replies, lines
    # nodePortAddresses "primary": worker3's NodePort answers on its own address only
    assert lab.exec("worker3", "nft", "list", "set", "ip", "kube-proxy", "nodeport-ips").stdout.count("30.0.0.23") == 1

    # trace names the element that matched and the chain whose numgen chose the endpoint,
    # the chain being the one that DNATs there
    proc = lab.nslab("trace", "-l", lab.name, "client", "10.111.222.68:8080", "--proto", "tcp", "--json", timeout=90)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
    (n,) = json.loads(proc.stdout)["nat"]
    endpoint = n["after"]["dst"]
    want = chain("endpoint", f"default/testappds/tcp/__{endpoint}/80")
    assert n["rule"].splitlines()[0] == f"@service-ips 10.111.222.68 . tcp . 8080 -> {SERVICE}", n["rule"]
    assert re.fullmatch(rf"\t{re.escape(SERVICE)} chose {re.escape(want)} \(numgen random mod 3: [012]\): "
                        rf"DNAT to {re.escape(endpoint)}:80", n["rule"].splitlines()[1]), n["rule"]
    (dnat,) = [e["dnat"] for r in rules_of(objects(lab, "master1"), want) for e in r["expr"] if "dnat" in e]
    assert (dnat["addr"], dnat["port"]) == (endpoint, 80)
    proc = lab.nslab("trace", "-l", lab.name, "spine", "30.0.0.23:30080", "--proto", "tcp", "--json", timeout=90)
    (n,) = json.loads(proc.stdout)["nat"]
    assert n["node"] == "worker3" and n["rule"].startswith(f"@service-nodeports tcp . 30080 -> {EXTERNAL}\n"), n
    # the services table names the chain
    svcs = {s["name"]: s for s in json.loads(lab.nslab("show", "-l", lab.name, "--json", check=True).stdout)["services"]}
    assert sorted(svcs) == ["kube-dns", "testappds"]           # the cluster DNS is a service too
    assert (svcs["testappds"]["proxy_mode"], svcs["testappds"]["chain"]) == ("nftables", SERVICE)
    assert svcs["kube-dns"]["chain"] == chain("service", "kube-system/kube-dns/udp/dns")
    # show NODE lists kube-proxy's nft rules (and flannel's), the tables iptables-nft manages once
    shown = json.loads(lab.nslab("show", "-l", lab.name, "master1", "--json", check=True).stdout)
    nf = shown["nodes"]["master1"]["netfilter"]
    assert not nf["errors"], nf["errors"]
    kp = nf["nftables"]["ip kube-proxy"]
    assert kp[SERVICE] and eps <= set(kp), sorted(kp)
    assert ("ip flannel-ipv4" in nf["nftables"]) == (flannel == "nftables"), sorted(nf["nftables"])
    assert not {f"ip {t}" for t in nf["iptables"]} & set(nf["nftables"]), (nf["iptables"].keys(), nf["nftables"].keys())


@pytest.mark.skipif(kernel.module_state("ip_vs") != "absent", reason="this kernel has ip_vs")
def test_ipvs_mode_is_refused_without_ip_vs_and_leaves_nothing(root_unchanged):
    name = unique_lab_name()
    proc = nslab("up", "-q", TOPOLOGIES / "spine-leaf-services.yaml", "--name", name, "--proxy-mode", "ipvs",
                 timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert re.fullmatch(r"nslab: kube-proxy's ipvs mode needs the kernel's ip_vs module, which this kernel \(\S+\) "
                        r"does not have: use --proxy-mode iptables or nftables here, or a kernel with ip_vs\n",
                        proc.stderr), proc.stderr
    assert not [n for n in os.listdir("/run/netns") if n.startswith(name + ".")]
    assert not (Path("/run/nslab") / name).exists()


def test_proxy_mode_option_is_recorded_and_kept(root_unchanged, tmp_path):
    """`up --proxy-mode nftables` on a file that says iptables: the record keeps the
    override, so observers re-reading the lab see nftables."""
    name = unique_lab_name()
    run = {"NSLAB_RUN_DIR": str(tmp_path)}
    proc = nslab("up", "-q", TOPOLOGIES / "spine-leaf-services.yaml", "--name", name, "--proxy-mode", "nftables",
                 env=run, timeout=180)
    try:
        assert proc.returncode == 0, proc.stderr
        state = json.loads((tmp_path / name / "state.json").read_text())
        assert state["overrides"] == {"proxy_mode": "nftables"}
        shown = nslab("show", "-l", name, "--json", env=run, timeout=60)
        svcs = {s["name"]: s for s in json.loads(shown.stdout)["services"]}
        assert svcs["testappds"]["chain"] == SERVICE
        assert nftables.table(f"{name}.worker1", "kube-proxy") is not None
    finally:
        assert nslab("down", name, env=run, timeout=120).returncode == 0
