"""Daily use of a running lab (issue 19): what a node resolves, how nodes are named on the
command line, what a path that does not exist means."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from conftest import REPO, nslab, unique_lab_name


def test_a_node_has_its_own_resolv_conf_and_an_unknown_name_fails_at_once(root_unchanged, lab_factory):
    lab = lab_factory("diy-ip-forward.yaml")
    conf = lab.exec("ns1", "cat", "/etc/resolv.conf", check=True).stdout
    assert conf.startswith("# nslab: this lab has no DNS server"), conf      # not the host's
    assert "nameserver 127.0.0.1\n" in conf
    # node names still resolve (hosts), anything else is refused by the node's own loopback
    assert lab.exec("ns1", "getent", "hosts", "ns2", check=True).stdout.split() == ["10.1.2.2", "ns2"]
    started = time.monotonic()
    r = lab.exec("ns1", "getent", "hosts", "nosuch-name.example")
    took = time.monotonic() - started
    assert r.returncode == 2, r                     # getent: key not found
    # the host's resolver would be asked with 5 s timeouts; a generous bound, far below them
    assert took < 4, f"an unknown name took {took:.1f} s to fail"


def test_nodes_named_as_printed_and_the_default_lab(root_unchanged, lab_factory):
    """LAB.NODE (the namespace name nslab prints) names the lab too: no -l with two labs
    running; NSLAB_LAB sets the default lab; -l and a LAB.NODE of another lab disagree."""
    a, b = lab_factory("diy-veth.yaml"), lab_factory("diy-bridge.yaml")
    env = {"NSLAB_RUN_DIR": a.run_dir}
    r = nslab("exec", f"{a.name}.ns1", "--", "hostname", env=env)
    assert (r.returncode, r.stdout) == (0, "ns1\n"), r
    r = nslab("exec", "ns1", "--", "ip", "-o", "link", "show", "br-veth0", env=env)
    assert r.returncode == 2 and "several labs are running" in r.stderr and "LAB.NODE" in r.stderr, r
    r = nslab("exec", "ns1", "--", "ip", "-o", "link", "show", "veth0", env={**env, "NSLAB_LAB": a.name})
    assert r.returncode == 0 and ": veth0@" in r.stdout, r
    r = nslab("link", "show", f"{b.name}.br0:br-veth0", "--json", env={**env, "NSLAB_LAB": a.name})
    assert r.returncode == 0 and json.loads(r.stdout)[0]["node"] == "br0", r     # the prefix wins over NSLAB_LAB
    r = nslab("show", f"{b.name}.ns1", "-l", a.name, env=env)
    assert (r.returncode, r.stderr) == (2, f"nslab: nodes of two labs given ({a.name} and {b.name}): one command "
                                           f"works on one lab\n"), r
    r = nslab("exec", "ns1", "--", "true", env={**env, "NSLAB_LAB": "nosuchlab"})
    assert r.returncode == 2 and r.stderr.startswith("nslab: NSLAB_LAB=nosuchlab: no lab of that name is running"), r
    r = nslab("trace", f"{a.name}.ns1", f"{a.name}.ns2", env=env)
    assert r.returncode == 0 and "ns1" in r.stdout and "ns2" in r.stdout, r


def _complete(words: str, env: dict) -> list[str]:
    """What bash completion offers for the last word of `words` (typer's protocol)."""
    parts = words.split(" ")
    full = {**os.environ, **env, "_NSLAB_COMPLETE": "complete_bash", "COMP_WORDS": words,
            "COMP_CWORD": str(len(parts) - 1)}
    # as the console script `nslab` (completion is keyed on the program's name), this checkout's code
    argv = [sys.executable, "-c", "import sys; sys.argv[0] = 'nslab'; from nslab.cli import main; main()"]
    r = subprocess.run(argv, capture_output=True, text=True, env=full, timeout=60, cwd=REPO)
    assert r.returncode == 0, r
    return r.stdout.split()


def test_completion_of_labs_nodes_and_interfaces(root_unchanged, lab_factory):
    lab = lab_factory("diy-bridge.yaml")
    env = {"NSLAB_RUN_DIR": lab.run_dir}
    assert _complete(f"nslab exec -l {lab.name} n", env) == ["ns1", "ns2"]
    assert _complete(f"nslab exec {lab.name}.", env) == [f"{lab.name}.br0", f"{lab.name}.ns1", f"{lab.name}.ns2"]
    assert _complete(f"nslab link show -l {lab.name} br0:br-", env) == ["br0:br-veth0", "br0:br-veth1"]
    assert _complete(f"nslab capture {lab.name}.ns1:", env) == [f"{lab.name}.ns1:veth0"]
    assert lab.name in _complete(f"nslab show -l {lab.name[:3]}", env)


def test_link_show_lists_shaped_interfaces_unless_all(root_unchanged, lab_factory):
    lab = lab_factory("diy-veth.yaml")
    r = lab.nslab("link", "show", "-l", lab.name, check=True)
    assert r.stdout == "no shaped interfaces (`nslab link show --all` lists every interface and its queue)\n"
    lab.nslab("link", "set", "-l", lab.name, "ns1:veth0", "--rate", "10mbit", check=True)
    shaped = lab.nslab("link", "show", "-l", lab.name, check=True).stdout
    assert "veth0" in shaped and "rate 10Mbit" in shaped and "veth1" not in shaped, shaped
    every = lab.nslab("link", "show", "-l", lab.name, "--all", check=True).stdout
    assert "veth0" in every and "veth1" in every, every
    one = lab.nslab("link", "show", "-l", lab.name, "ns2:veth1", check=True).stdout    # asked for: shown
    assert "veth1" in one, one
    assert len(json.loads(lab.nslab("link", "show", "-l", lab.name, "--json", check=True).stdout)) == 2


def test_flannel_vxlan_tests_under_host_gw_skip_what_is_vxlan_only(root_unchanged):
    """The bundled file's MTU test assumes vxlan (1500 - 50): under --backend host-gw it is
    skipped with its reason, not failed; the rest pass."""
    r = nslab("test", "flannel-vxlan", "--name", unique_lab_name(), "--backend", "host-gw", "--json", timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    results = {t["name"]: t for t in json.loads(r.stdout)["results"]}
    mtu = results["pod MTU 1450 under vxlan (1500 - 50)"]
    assert mtu.get("skipped"), mtu
    assert all(t["ok"] for name, t in results.items() if not t.get("skipped")), results


def test_show_says_what_a_node_is_and_trace_reaches_a_service_by_name(root_unchanged, lab_factory):
    lab = lab_factory("spine-leaf-services.yaml")
    master = json.loads(lab.nslab("show", "-l", lab.name, "master1", "--json", check=True).stdout)
    about = master["nodes"]["master1"]["about"]
    assert about["kind"] == "host" and about["role"] == "flannel node (vxlan)" and about["pod_cidr"] == "10.244.0.0/24"
    assert about["vtep"].startswith("flannel.1 10.244.0.0/32 ") and "client" in about["pods"], about
    vtep_mac = about["vtep"].split()[-1]
    link = next(i for i in master["nodes"]["master1"]["interfaces"] if i["name"] == "flannel.1")
    assert link["mac"] == vtep_mac                       # what show says is what the kernel holds
    text = lab.nslab("show", "-l", lab.name, "client", check=True).stdout
    assert "on node master1" in text and "kind pod" in text, text
    rows = json.loads(lab.nslab("show", "-l", lab.name, "--brief", "--json", check=True).stdout)
    by = {r["node"]: r for r in rows}
    assert len(rows) == len(lab.state["nodes"])
    assert by["client"]["role"] == "pod on master1" and by["client"]["status"] == "up"
    assert by["worker3"]["role"] == "flannel node (vxlan)" and "30.0.0.23/24" in by["worker3"]["addresses"]
    r = lab.nslab("trace", "-l", lab.name, "client", "svc/testappds", "--json")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    t = json.loads(r.stdout)
    assert t["service"]["name"] == "testappds" and t["probe"]["dst"] == "10.111.222.68" and t["probe"]["port"] == 8080
    assert t["probe"]["proto"] == "tcp" and t["request"]["delivered"]
    assert t["request"]["hops"][-1]["node"].startswith("testappds-")      # an endpoint DNAT chose
    head = lab.nslab("trace", "-l", lab.name, "client", "svc/testappds", env={"COLUMNS": "200"}).stdout.splitlines()[0]
    assert "-> service testappds (NodePort 10.111.222.68:8080)" in head, head
    listed = next(r for r in json.loads(lab.nslab("ls", "--json", check=True).stdout) if r["lab"] == lab.name)
    svc, dns = listed["services"]            # the note's, and the cluster DNS (kubeadm's kube-dns)
    assert (dns["name"], dns["namespace"], dns["cluster_ip"], dns["port"], dns["protocol"]) == \
        ("kube-dns", "kube-system", "10.96.0.10", 53, "UDP")
    assert (svc["name"], svc["type"], svc["cluster_ip"], svc["port"], svc["node_port"]) == \
        ("testappds", "NodePort", "10.111.222.68", 8080, 30080)
    assert svc["endpoints"] == ["testappds-worker1 10.244.1.2:80", "testappds-worker2 10.244.2.2:80",
                                "testappds-worker3 10.244.3.2:80"]
    whole = lab.nslab("show", "-l", lab.name, check=True).stdout.splitlines()
    assert whole[-3].split() == ["service", "type", "cluster", "IP", "port", "node", "port", "endpoints", "chosen",
                                 "by"]
    assert whole[-1].split() == ["kube-dns", "ClusterIP", "10.96.0.10", "53/UDP", "(dns)", "-", "coredns",
                                 "10.244.1.3:53", "KUBE-SVC-TCOU7JCQXEZGVUNU"]     # a named port: its name
    assert whole[-2].split(None, 5) == ["testappds", "NodePort", "10.111.222.68", "8080/TCP", "30080",
                                        "testappds-worker1 10.244.1.2:80, testappds-worker2 10.244.2.2:80, "
                                        "testappds-worker3 10.244.3.2:80  KUBE-SVC-QMR6LTDCBEU4U25W"]
    assert svc["proxy_mode"] == "iptables" and svc["chain"] == "KUBE-SVC-QMR6LTDCBEU4U25W"
    r = lab.nslab("trace", "-l", lab.name, "client", "svc/nosuch")
    assert (r.returncode, r.stderr) == (2, f"nslab: lab {lab.name} has no service 'nosuch' (services: testappds, kube-dns)\n")


def test_down_file_finds_the_lab_brought_up_from_it_under_another_name(root_unchanged, tmp_path):
    """`nslab down FILE` takes down the lab `up FILE --name X` made (it looked for the file's
    own lab name, which does not run); with two such labs it names both and removes neither."""
    topo = tmp_path / "mine.yaml"
    topo.write_text((REPO / "topologies" / "diy-veth.yaml").read_text())
    a, b = unique_lab_name(), unique_lab_name()
    try:
        for name in (a, b):
            nslab("up", "-q", str(topo), "--name", name, check=True)
        r = nslab("down", str(topo))
        assert (r.returncode, r.stdout) == (2, ""), r
        assert r.stderr == f"nslab: {topo} runs as 2 labs ({a}, {b}): say which, `nslab down NAME`, or `nslab down " \
                           f"--all`\n", r.stderr
        nslab("down", b, check=True)
        r = nslab("down", str(topo))
        assert (r.returncode, r.stdout) == (0, f"lab {a} removed (2 namespaces)\n"), r
    finally:
        for name in (a, b):
            nslab("down", name)
