"""`nslab trace` through kube-proxy's NAT in topologies/spine-leaf-services.yaml (vxlan):
the ClusterIP from the client pod (DNAT only, at the client's node) and the NodePort from
the spine (DNAT + SNAT at worker3, the endpoint's packets back through the same switches),
each named from the node's conntrack entry and its KUBE-SVC/KUBE-SEP chains, hop by hop."""
from __future__ import annotations

import json
import re

from conftest import TOPOLOGIES
from nslab.apply import iptables

ENDPOINTS = {"10.244.1.2": "testappds-worker1", "10.244.2.2": "testappds-worker2", "10.244.3.2": "testappds-worker3"}
SVC = "KUBE-SVC-QMR6LTDCBEU4U25W"


def trace(lab, *args) -> dict:
    proc = lab.nslab("trace", "-l", lab.name, *args, "--proto", "tcp", "--json", timeout=90)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    return json.loads(proc.stdout)


def nat_decisions(r: dict, path: str, kind: str) -> list[tuple[str, str, str]]:
    return [(h["node"], h["iface"], d["text"]) for h in r[path]["hops"] for d in h["decisions"] if d["kind"] == kind]


def routes_found(r: dict) -> None:
    """Every hop's route lookup answered: a NATed packet is looked up with the source and
    device the kernel routed it with, not with the rewritten header."""
    failed = [(h["node"], h["iface"], d["text"]) for p in ("request", "reply") for h in r[p]["hops"]
              for d in h["decisions"] if d["kind"] == "route" and d["text"].startswith("ip route get")]
    assert not failed, failed


def check_sep(lab, node: str, rule: str, endpoint: str) -> None:
    """The chain the trace names is the one in the node's nat table that DNATs to the endpoint."""
    m = re.match(rf"{SVC} chose (KUBE-SEP-\w+) \(.*\): DNAT to {re.escape(endpoint)}:80$", rule)
    assert m, rule
    nat = iptables.tables(f"{lab.name}.{node}")["nat"]
    assert any(f"--to-destination {endpoint}:80" in r.spec for r in nat[m.group(1)].rules), nat[m.group(1)]


def test_clusterip_trace_names_the_dnat_and_the_endpoint(root_unchanged, lab_factory):
    lab = lab_factory((TOPOLOGIES / "spine-leaf-services.yaml").read_text())
    r = trace(lab, "client", "10.111.222.68:8080")
    (n,) = r["nat"]
    assert (n["node"], n["dnat"], n["snat"]) == ("master1", True, False), n     # the client's node, no SNAT
    assert n["before"]["dst"] == "10.111.222.68" and n["before"]["dport"] == 8080
    endpoint = n["after"]["dst"]
    assert endpoint in ENDPOINTS and n["after"]["dport"] == 80 and n["after"]["src"] == r["src"]["ip"]
    check_sep(lab, "master1", n["rule"], endpoint)
    routes_found(r)
    assert r["request"]["delivered"] and r["request"]["hops"][-1]["node"] == ENDPOINTS[endpoint]
    assert r["reply"]["delivered"] and r["reply"]["hops"][-1]["node"] == "client"
    [(node, _, text)] = nat_decisions(r, "request", "nat")
    assert node == "master1" and text.startswith(f"DNAT {r['src']['ip']}:") and f"> {endpoint}:80" in text
    [(node, _, text)] = nat_decisions(r, "reply", "un-nat")
    assert node == "master1" and f"->  10.111.222.68:8080 > {r['src']['ip']}:" in text
    # the text output carries the same line, wrapped at 100 columns piped
    proc = lab.nslab("trace", "-l", lab.name, "client", "10.111.222.68:8080", "--proto", "tcp", timeout=90)
    assert proc.returncode == 0, proc.stdout
    assert re.search(r"^       nat    DNAT 10\.244\.0\.\d+:\d+ > 10\.111\.222\.68:8080  ->", proc.stdout, re.M), proc.stdout
    assert max(len(line) for line in proc.stdout.splitlines()) <= 100


def test_nodeport_trace_names_dnat_and_snat_and_follows_the_hairpin(root_unchanged, lab_factory):
    lab = lab_factory((TOPOLOGIES / "spine-leaf-services.yaml").read_text())
    seen = set()
    for _ in range(12):                        # until one endpoint on worker3 and one elsewhere
        r = trace(lab, "spine", "30.0.0.23:30080")
        (n,) = r["nat"]
        assert (n["node"], n["dnat"], n["snat"]) == ("worker3", True, True), n
        endpoint = n["after"]["dst"]
        # the source the endpoint sees: cni0's address on worker3, flannel.1's for another node
        assert n["after"]["src"] == ("10.244.3.1" if endpoint == "10.244.3.2" else "10.244.3.0"), n
        check_sep(lab, "worker3", n["rule"], endpoint)
        routes_found(r)
        req, rep = r["request"], r["reply"]
        assert req["delivered"] and req["hops"][-1]["node"] == ENDPOINTS[endpoint], req["summary"]
        assert rep["delivered"] and rep["hops"][0]["node"] == ENDPOINTS[endpoint] and rep["hops"][-1]["node"] == "spine"
        [(node, _, _)] = nat_decisions(r, "reply", "un-nat")
        assert node == "worker3"
        if endpoint != "10.244.3.2":           # encapsulated back out through rack2 and leaf02
            assert req["summary"].count("rack2(") == 2, req["summary"]
        seen.add(endpoint == "10.244.3.2")
        if seen == {True, False}:
            break
    assert seen == {True, False}, "12 NodePort traces all chose the same kind of endpoint"
