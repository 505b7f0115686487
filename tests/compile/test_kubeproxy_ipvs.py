"""kube-proxy's ipvs mode (compile/kubeproxy_ipvs.py), pure: the IPVS servers, ipsets and
iptables rules a node gets, the plan's ops for ipvs mode, and the kernel probe that refuses
it where the kernel has no ip_vs (read from the module tree, not a flag).  The packets are
tests/integration/test_services_ipvs.py's, in the VM stage."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from nslab import model
from nslab import plan as P
from nslab.apply import kernel
from nslab.apply.qdisc import KernelFeatureError
from nslab.compile import compile_topology, kubeproxy_ipvs as kv
from nslab.compile.kubeproxy import Endpoint, Node, Service

SHIPPED = Path(__file__).parent.parent.parent / "topologies" / "spine-leaf-services.yaml"
NODE = Node(name="n1", ip="10.0.0.1", pod_cidr="10.244.0.0/24", cluster_cidr="10.244.0.0/16")
WEB = Service(name="web", port=8080, target_port=80, cluster_ip="10.96.0.80", type="NodePort", node_port=30080,
              endpoints=(Endpoint("10.244.1.2", "n2"), Endpoint("10.244.0.2", "n1")))
DNS = Service(name="dns", port=53, target_port=53, cluster_ip="10.96.0.53", protocol="UDP",
              endpoints=(Endpoint("10.244.1.3", "n2"),))


def test_virtual_servers_rr_with_masquerading_real_servers_per_cluster_ip_and_node_address():
    assert kv.ipvsadm_text([WEB, DNS], ["10.0.0.1", "10.244.0.1"]) == (
        "-A -t 10.96.0.80:8080 -s rr\n"
        "-a -t 10.96.0.80:8080 -r 10.244.0.2:80 -m -w 1\n"
        "-a -t 10.96.0.80:8080 -r 10.244.1.2:80 -m -w 1\n"
        "-A -t 10.0.0.1:30080 -s rr\n"
        "-a -t 10.0.0.1:30080 -r 10.244.0.2:80 -m -w 1\n"
        "-a -t 10.0.0.1:30080 -r 10.244.1.2:80 -m -w 1\n"
        "-A -t 10.244.0.1:30080 -s rr\n"
        "-a -t 10.244.0.1:30080 -r 10.244.0.2:80 -m -w 1\n"
        "-a -t 10.244.0.1:30080 -r 10.244.1.2:80 -m -w 1\n"
        "-A -u 10.96.0.53:53 -s rr\n"
        "-a -u 10.96.0.53:53 -r 10.244.1.3:53 -m -w 1\n")


def test_ipsets_hold_what_sync_proxy_rules_puts_there():
    entries = kv.ipset_entries(NODE, [WEB, DNS])
    assert entries["KUBE-CLUSTER-IP"] == ["10.96.0.53,udp:53", "10.96.0.80,tcp:8080"]
    assert entries["KUBE-LOOP-BACK"] == ["10.244.0.2,tcp:80,10.244.0.2"]     # the local endpoint only
    assert entries["KUBE-NODE-PORT-TCP"] == ["30080"] and entries["KUBE-NODE-PORT-UDP"] == []
    assert entries["KUBE-IPVS-IPS"] == ["10.96.0.53", "10.96.0.80"]
    text = kv.ipset_text(entries)
    # every set of ipsetInfo is created, even the empty ones, before any entry is added
    creates = [line.split()[1] for line in text.splitlines() if line.startswith("create ")]
    assert creates == [name for name, _, _ in kv.IPSETS] and len(creates) == 17
    assert text.index("add ") > text.rindex("create ")
    assert "create KUBE-NODE-PORT-TCP bitmap:port range 0-65535\n" in text


def test_iptables_rules_ipvs_mode_keeps():
    text = kv.iptables_text(NODE, kv.ipset_entries(NODE, [WEB]))
    assert text.index("*nat") < text.index("*filter") and text.count("COMMIT") == 2
    lines = text.splitlines()
    assert ('-A KUBE-SERVICES -m comment --comment "Kubernetes service cluster ip + port for masquerade purpose" '
            "-m set --match-set KUBE-CLUSTER-IP dst,dst ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ") in lines
    # the ACCEPT of cluster IPs comes after the NodePort jump (acceptIPVSTraffic: "must be in the end")
    assert lines.index("-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT") < \
        lines.index("-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT")
    assert "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" " \
           "-j MASQUERADE --random-fully" in lines
    assert '-I PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES' in lines
    assert not [line for line in lines if "KUBE-SVC-" in line or "KUBE-SEP-" in line]
    # no NodePort service: no KUBE-NODE-PORT mark rule (its set is empty)
    assert "KUBE-NODE-PORT-TCP dst" not in kv.iptables_text(NODE, kv.ipset_entries(NODE, [DNS]))


def test_plan_of_the_shipped_lab_in_ipvs_mode():
    topo = model.load(str(SHIPPED), overrides={"proxy_mode": "ipvs"})
    plan = compile_topology(topo)
    ns = topo.nodes["worker3"].ns
    ops = [op for op in plan.ops if getattr(op, "ns", None) == ns]
    (dummy,) = [op for op in ops if isinstance(op, P.Link) and op.kind == "dummy"]
    assert (dummy.name, dummy.up) == ("kube-ipvs0", False)
    assert {op.address for op in ops if isinstance(op, P.Addr) and op.dev == "kube-ipvs0"} == \
        {"10.111.222.68/32", "10.96.0.10/32"}
    (servers,) = [op.text for op in ops if isinstance(op, P.Ipvs)]
    # the NodePort on every node address but kube-ipvs0's: enp0s3, cni0, flannel.1
    for address in ("30.0.0.23", "10.244.3.1", "10.244.3.0"):
        assert f"-A -t {address}:30080 -s rr\n" in servers
    assert len([op for op in ops if isinstance(op, P.Ipset)]) == 1
    assert len([op for op in ops if isinstance(op, P.Iptables)]) == 1         # with flannel's: one restore
    assert {op.key for op in ops if isinstance(op, P.Sysctl) and op.key.startswith("net.ipv4.vs.")} == \
        {"net.ipv4.vs.conntrack", "net.ipv4.vs.expire_nodest_conn", "net.ipv4.vs.expire_quiescent_template"}
    # the plan round-trips through its record
    assert P.from_json(P.to_json(plan)).ops == plan.ops


def fake_modules(root: Path, monkeypatch, dep: list[str]) -> None:
    tree = root / "lib-modules" / os.uname().release
    tree.mkdir(parents=True)
    (tree / "modules.dep").write_text("\n".join(dep) + "\n")
    (tree / "modules.builtin").write_text("")
    (root / "sys-module").mkdir()
    monkeypatch.setattr(kernel, "SYS_MODULE", str(root / "sys-module"))
    monkeypatch.setattr(kernel, "LIB_MODULES", str(root / "lib-modules"))


def test_ipvs_mode_is_refused_by_what_the_module_tree_says(tmp_path, monkeypatch):
    fake_modules(tmp_path, monkeypatch, ["kernel/drivers/net/dummy.ko.xz:"])
    with pytest.raises(KernelFeatureError, match=r"^kube-proxy's ipvs mode needs the kernel's ip_vs module, "
                                                 r"which this kernel \(\S+\) does not have"):
        kernel.require_ip_vs()


def test_ipvs_mode_is_allowed_where_the_modules_exist(tmp_path, monkeypatch):
    fake_modules(tmp_path, monkeypatch, ["kernel/net/netfilter/ipvs/ip_vs.ko.xz: kernel/net/netfilter/nf_conntrack.ko.xz",
                                         "kernel/drivers/net/dummy.ko.xz:"])
    kernel.require_ip_vs()


def test_ipvs_mode_needs_the_dummy_module_too(tmp_path, monkeypatch):
    fake_modules(tmp_path, monkeypatch, ["kernel/net/netfilter/ipvs/ip_vs.ko.xz:"])
    with pytest.raises(KernelFeatureError, match=r"dummy device module \(kube-ipvs0\)"):
        kernel.require_ip_vs()


# issue 23's features in ipvs mode: web runs on n1 only (the features lab's layout)
ONE = (Endpoint("10.244.0.2", "n1"),)
TWO = (Endpoint("10.244.1.2", "n2"), Endpoint("10.244.0.3", "n1"))


def servers(services, node: str) -> dict[str, tuple[str, list[str]]]:
    """vip:port -> (flags, real servers) of ipvsadm_text's virtual servers on `node`."""
    return {vip: (flags, reals) for _, vip, flags, reals in kv.virtual_servers(services, ["10.0.0.2"], node)}


def test_session_affinity_makes_every_virtual_server_persistent_with_its_timeout():
    sticky = Service(name="sticky", port=80, target_port=80, cluster_ip="10.96.0.83", type="NodePort",
                     node_port=30083, endpoints=TWO, affinity_timeout=3)
    text = kv.ipvsadm_text([sticky], ["10.0.0.2"], "n2")
    assert "-A -t 10.96.0.83:80 -s rr -p 3\n" in text and "-A -t 10.0.0.2:30083 -s rr -p 3\n" in text
    assert text.count("-r ") == 4                 # both endpoints behind both virtual servers
    assert kv.virtual_server_name(sticky) == "IPVS TCP 10.96.0.83:80 rr persistent 3"
    assert " -p " not in kv.ipvsadm_text([WEB], ["10.0.0.2"], "n2")


def test_external_local_nodeport_gets_local_real_servers_or_the_cluster_ones_where_there_are_none():
    local = Service(name="local", port=8080, target_port=80, cluster_ip="10.96.0.80", type="NodePort",
                    node_port=30080, endpoints=TWO, external_local=True)
    # n1: the NodePort's real servers are n1's endpoint only; the cluster IP keeps both
    on_n1 = servers([local], "n1")
    assert on_n1["10.0.0.2:30080"] == ("", ["10.244.0.3:80"])
    assert on_n1["10.96.0.80:8080"] == ("", ["10.244.0.3:80", "10.244.1.2:80"])
    # a node without a local endpoint: syncEndpoint falls back to the cluster endpoints (PR 97081)
    only_n1 = Service(name="local", port=8080, target_port=80, cluster_ip="10.96.0.80", type="NodePort",
                      node_port=30080, endpoints=ONE, external_local=True)
    assert servers([only_n1], "n2")["10.0.0.2:30080"] == ("", ["10.244.0.2:80"])
    # the LOCAL set, and its RETURN before the masquerade mark of KUBE-NODE-PORT-TCP
    entries = kv.ipset_entries(NODE, [local])
    assert entries["KUBE-NODE-PORT-LOCAL-TCP"] == ["30080"] and entries["KUBE-NODE-PORT-TCP"] == ["30080"]
    lines = kv.iptables_text(NODE, entries).splitlines()
    ret = ('-A KUBE-NODE-PORT -p tcp -m comment --comment "Kubernetes nodeport TCP port with '
           'externalTrafficPolicy=local" -m set --match-set KUBE-NODE-PORT-LOCAL-TCP dst -j RETURN')
    masq = ('-A KUBE-NODE-PORT -p tcp -m comment --comment "Kubernetes nodeport TCP port for masquerade purpose" '
            "-m set --match-set KUBE-NODE-PORT-TCP dst -j KUBE-MARK-MASQ")
    assert lines.index(ret) == lines.index(masq) - 1
    # no Local NodePort: no LOCAL rule (its set is empty)
    assert "KUBE-NODE-PORT-LOCAL-TCP dst" not in kv.iptables_text(NODE, kv.ipset_entries(NODE, [WEB]))


def test_internal_local_cluster_ip_gets_local_real_servers_only():
    internal = Service(name="internal", port=8080, target_port=80, cluster_ip="10.96.0.82", endpoints=TWO,
                       internal_local=True)
    assert servers([internal], "n1")["10.96.0.82:8080"] == ("", ["10.244.0.3:80"])
    # a ClusterIP service has no cluster endpoints with internalTrafficPolicy Local: a node
    # without a local one gets a virtual server with no real server (IPVS: port unreachable)
    lone = Service(name="internal", port=8080, target_port=80, cluster_ip="10.96.0.82", endpoints=ONE,
                   internal_local=True)
    assert servers([lone], "n2")["10.96.0.82:8080"] == ("", [])
    assert "-A -t 10.96.0.82:8080 -s rr\n-A" in kv.ipvsadm_text([lone, WEB], [], "n2")
