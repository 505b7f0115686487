"""`nslab up FILE` on a lab that runs converges it (nslab/converge.py): after each edit the
lab's kernel objects equal those of a fresh `up` of the edited file (names, kinds, MTUs,
masters, addresses, routes, permanent neighbours and FDB entries, root qdiscs; MACs and
interface indexes aside), traffic crosses the new parts, namespaces the edit does not
concern keep their identity, --dry-run changes nothing and the same file is "no changes"."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO, ROUTED_HOSTS, nslab, unique_lab_name

ROUTED = ROUTED_HOSTS     # the diff tests' topology (conftest), without a name: the test names the lab


def _j(argv: list[str]) -> list:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, (argv, r.stderr)
    return json.loads(r.stdout or "[]")


def _n(name) -> str:
    return re.sub(r"veth[0-9a-f]{8}", "veth*", name or "")


def kernel(ns: str) -> dict:
    """What a namespace holds, lab-independent (no MACs, indexes or hashed veth names)."""
    links = _j(["ip", "-j", "-d", "-n", ns, "link", "show"])
    addrs = _j(["ip", "-j", "-n", ns, "addr", "show"])
    info = lambda link: link.get("linkinfo", {})     # noqa: E731
    return {
        "links": sorted((_n(k["ifname"]), info(k).get("info_kind", ""), k["mtu"], _n(k.get("master")),
                         "UP" in k["flags"], str(info(k).get("info_data", {}).get("id", "")),
                         str(info(k).get("info_data", {}).get("port", ""))) for k in links),
        "addrs": sorted((_n(a["ifname"]), i["local"], i["prefixlen"]) for a in addrs for i in a["addr_info"]
                        if i["family"] == "inet"),
        "routes": sorted((r["dst"], r.get("gateway", ""), _n(r.get("dev")), r.get("scope", ""),
                          str(sorted((h.get("gateway"), _n(h.get("dev"))) for h in r.get("nexthops", []))))
                         for r in _j(["ip", "-j", "-n", ns, "route", "show"])),
        "neigh": sorted((n["dst"], _n(n["dev"])) for n in _j(["ip", "-j", "-n", ns, "neigh", "show", "nud",
                                                                "permanent"])),
        "fdb": sorted((f["ifname"], f["dst"]) for f in _j(["bridge", "-j", "-n", ns, "fdb", "show"]) if "dst" in f),
        "iptables": sorted(re.sub(r"\[\d+:\d+\]", "", line) for line in subprocess.run(
            ["ip", "netns", "exec", ns, "iptables-save"], capture_output=True, text=True).stdout.splitlines()
            if not line.startswith("#")),
        "qdisc": sorted((_n(q["dev"]), q["kind"]) for q in _j(["tc", "-j", "-n", ns, "qdisc", "show"])
                        if q.get("root") and q["kind"] not in ("noqueue", "noop")),
    }


def lab_kernel(lab) -> dict:
    return {node: kernel(ns) for node, ns in lab.state["nodes"].items()}


def converge_to(lab, text: str, tmp_path, name: str = "edit.yaml") -> subprocess.CompletedProcess:
    path = tmp_path / name
    path.write_text(text)
    r = lab.nslab("up", path, "--name", lab.name, timeout=180)
    assert r.returncode == 0, r
    return r


def assert_as_fresh(lab, text: str, lab_factory):
    """The converged lab equals a fresh lab of the same file, and says `no changes` to it."""
    fresh = lab_factory(text)
    try:
        assert lab_kernel(lab) == lab_kernel(fresh)
        assert lab.state["status"] == "up" and set(lab.state["nodes"]) == set(fresh.state["nodes"])
    finally:
        fresh.down()


def ids(lab) -> dict:
    return dict(lab.state["ns_ids"])


MARK = "net.ipv4.icmp_msgs_burst"      # default 50: a namespace made afresh has it again


def mark(lab) -> None:
    """Tag every namespace of the lab (namespace inodes are reused: an identity may repeat)."""
    for ns in lab.state["nodes"].values():
        subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", f"{MARK}=49"], check=True)


def kept(lab) -> set:
    """The nodes whose namespace is the one mark() tagged."""
    return {node for node, ns in lab.state["nodes"].items()
            if subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-n", MARK], capture_output=True,
                              text=True).stdout.strip() == "49"}


def test_routed_lab_edits_converge_in_place(root_unchanged, lab_factory, tmp_path):
    lab = lab_factory(ROUTED)
    same = lab.nslab("up", lab.file, "--name", lab.name)
    assert (same.returncode, same.stdout) == (0, f"lab {lab.name}: no changes\n"), same
    before = ids(lab)

    # a route and an address changed, a sysctl added: in place, nothing recreated
    edit = ROUTED.replace("10.9.0.0/24", "10.8.0.0/24").replace("  h2: {}\n",
                                                               "  h2:\n    sysctls: {net.ipv4.icmp_ratelimit: 500}\n")
    edit = edit.replace("10.2.0.2/24", "10.2.0.7/24")
    path = tmp_path / "e1.yaml"
    path.write_text(edit)
    state_before = open(os.path.join(lab.run_dir, lab.name, "state.json")).read()
    kernel_before = lab_kernel(lab)
    dry = lab.nslab("up", path, "--name", lab.name, "--dry-run")
    assert dry.returncode == 0, dry
    assert "~ h1: changed in place" in dry.stdout and "  - route add 10.9.0.0/24 via 10.1.0.1 dev eth0" in dry.stdout
    assert "  + addr add 10.2.0.7/24 brd + dev eth0" in dry.stdout
    as_json = json.loads(lab.nslab("up", path, "--name", lab.name, "--dry-run", "--json").stdout)
    assert as_json["nodes"]["h1"] == {"added": ["route add 10.8.0.0/24 via 10.1.0.1 dev eth0"],
                                      "removed": ["route add 10.9.0.0/24 via 10.1.0.1 dev eth0"]}
    assert (as_json["dry_run"], as_json["changed"], as_json["recreated"]) == (True, True, {})
    assert open(os.path.join(lab.run_dir, lab.name, "state.json")).read() == state_before   # dry: untouched
    assert lab_kernel(lab) == kernel_before
    mark(lab)
    r = converge_to(lab, edit, tmp_path)
    assert "recreated" not in r.stdout, r.stdout
    assert ids(lab) == before and kept(lab) == {"h1", "h2", "r1"}     # every namespace kept
    assert lab.exec("r1", "ping", "-c1", "-W2", "10.2.0.7").returncode == 0
    assert lab.exec("h2", "cat", "/proc/sys/net/ipv4/icmp_ratelimit").stdout.strip() == "500"
    assert_as_fresh(lab, edit, lab_factory)

    # a node and its link added, the link's MTU changed, a link added between kept nodes
    edit2 = edit.replace("  h2:\n", "  h3: {}\n  h2:\n") + \
        "  - [{node: r1, ip: 10.3.0.1/24}, {node: h3, ip: 10.3.0.2/24, mtu: 1400}]\n" \
        "  - [{node: h1, ip: 10.5.0.1/24}, {node: h2, ip: 10.5.0.2/24}]\n"
    r = converge_to(lab, edit2, tmp_path)
    assert r.stdout.startswith("+ h3: new node"), r.stdout
    assert kept(lab) == {"h1", "h2", "r1"}
    assert ids(lab) == {**before, lab.ns("h3"): ids(lab)[lab.ns("h3")]}
    assert lab.exec("h3", "ping", "-c1", "-W2", "10.3.0.1").returncode == 0
    assert lab.exec("h1", "ping", "-c1", "-W2", "10.5.0.2").returncode == 0
    assert lab.exec("h3", "hostname").stdout.strip() == "h3"
    assert lab.exec("h1", "getent", "hosts", "h3").stdout.split()[:1] == ["10.3.0.2"]
    assert_as_fresh(lab, edit2, lab_factory)

    # the node removed again, and h1's second link: h3 goes, nothing else is recreated
    edit3 = edit2.replace("  h3: {}\n", "").replace(
        "  - [{node: r1, ip: 10.3.0.1/24}, {node: h3, ip: 10.3.0.2/24, mtu: 1400}]\n", "").replace(
        "  - [{node: h1, ip: 10.5.0.1/24}, {node: h2, ip: 10.5.0.2/24}]\n", "")
    gone = lab.ns("h3")
    r = converge_to(lab, edit3, tmp_path)
    assert "- h3: removed" in r.stdout, r.stdout
    assert not os.path.exists(f"/run/netns/{gone}") and not os.path.lexists(f"/etc/netns/{gone}")
    assert ids(lab) == before
    assert_as_fresh(lab, edit3, lab_factory)
    assert lab.nslab("up", tmp_path / "edit.yaml", "--name", lab.name).stdout == f"lab {lab.name}: no changes\n"


def test_link_rate_changed_in_place_and_link_set_reported(lab_factory, tmp_path):
    text = ROUTED.replace("{node: h2, ip: 10.2.0.2/24}]", "{node: h2, ip: 10.2.0.2/24, conditions: {rate: 20mbit}}]")
    lab = lab_factory(text)
    before = ids(lab)
    assert lab.nslab("link", "set", "-l", lab.name, "h1:eth0", "--rate", "5mbit").returncode == 0
    edit = text.replace("20mbit", "30mbit")
    r = converge_to(lab, edit, tmp_path)
    assert ids(lab) == before
    assert "30Mbit" in subprocess.run(["tc", "-n", lab.ns("h2"), "qdisc", "show", "dev", "eth0"],
                                      capture_output=True, text=True).stdout
    # h1:eth0's `link set` was on a device this converge did not touch: kept in the kernel and the record
    assert "5Mbit" in subprocess.run(["tc", "-n", lab.ns("h1"), "qdisc", "show", "dev", "eth0"],
                                     capture_output=True, text=True).stdout
    assert "h1:eth0" in lab.state["info"].get("_conditions", {})
    # the rate removed from the file: the root qdisc goes
    converge_to(lab, ROUTED, tmp_path)
    assert "tbf" not in subprocess.run(["tc", "-n", lab.ns("h2"), "qdisc", "show", "dev", "eth0"],
                                       capture_output=True, text=True).stdout
    # h1:eth0 replaced (its link's MTU changes): the `link set` change is reported and dropped
    r = converge_to(lab, ROUTED.replace("{node: h1, ip: 10.1.0.2/24}", "{node: h1, ip: 10.1.0.2/24, mtu: 1400}"),
                    tmp_path)
    assert "note: link conditions set with `nslab link set` on h1:eth0 are replaced by the file's" in r.stdout
    assert "h1:eth0" not in lab.state["info"].get("_conditions", {})


def cluster(edit=lambda s: s) -> str:
    text = (REPO / "topologies" / "flannel-vxlan.yaml").read_text().split("\ntests:")[0] + "\n"
    return edit(text.replace("name: flannel-vxlan\n", ""))


def test_cluster_pod_and_service_added_then_vni_changed(root_unchanged, lab_factory, tmp_path):
    lab = lab_factory(cluster())
    before = ids(lab)
    mark(lab)
    edit = cluster(lambda s: s.replace("    nginx: {node: node1",
                                       "    web2: {node: node1, serve: http}\n    nginx: {node: node1"))
    r = converge_to(lab, edit, tmp_path)
    assert r.stdout.startswith("+ web2: new node"), r.stdout
    assert "the lab agent restarts" in r.stdout
    assert {k: v for k, v in ids(lab).items() if k in before} == before       # nothing recreated
    assert kept(lab) == set(lab.state["nodes"]) - {"web2"}
    web2 = lab.exec("client", "curl", "-s", "-m5", "http://web2")
    assert web2.returncode == 0 and web2.stdout.startswith("web2 "), web2
    assert lab.exec("client", "curl", "-s", "-m5", "http://nginx").stdout.startswith("nginx ")
    assert lab.nslab("show", "-l", lab.name).returncode == 0
    assert "degraded" not in lab.nslab("ls").stdout
    assert_as_fresh(lab, edit, lab_factory)

    # a Service: kube-proxy's rules in every node replaced in place, nothing recreated
    # (dns: false: no coredns pod, whose namespace would be new; the DNS test below adds it)
    edit = edit.replace("  pods:\n", "  dns: false\n  services:\n    web: {selector: nginx, port: 8080, "
                                      "targetPort: 80, clusterIP: 10.96.0.10}\n  pods:\n")
    mark(lab)
    converge_to(lab, edit, tmp_path)
    assert kept(lab) == set(lab.state["nodes"])
    svc = lab.exec("client", "curl", "-s", "-m5", "http://10.96.0.10:8080")
    assert svc.returncode == 0 and svc.stdout.startswith("nginx "), svc
    assert_as_fresh(lab, edit, lab_factory)

    vni = edit.replace("vni: 1,", "vni: 7,")
    (tmp_path / "vni.yaml").write_text(vni)
    dry = lab.nslab("up", tmp_path / "vni.yaml", "--name", lab.name, "--dry-run")
    assert "~ master: recreated: vxlan device flannel.1 changed or went" in dry.stdout, dry
    assert "~ node1: recreated: vxlan device flannel.1 changed or went" in dry.stdout
    mark(lab)
    r = converge_to(lab, vni, tmp_path)
    assert kept(lab) == {"lan", "client", "nginx", "web2"}       # master and node1 made afresh
    assert lab.exec("client", "curl", "-s", "-m5", "http://web2").stdout.startswith("web2 ")
    assert "vxlan id 7 " in lab.exec("master", "ip", "-d", "link", "show", "flannel.7").stdout
    assert_as_fresh(lab, vni, lab_factory)


def test_cluster_dns_added_by_converge_reaches_old_and_new_pods_and_goes_again(root_unchanged, lab_factory,
                                                                              tmp_path):
    """A Service with cluster DNS added to a running lab: the coredns pod is new, the pods
    that ran before get kubelet's resolv.conf from their next exec on, a pod added later
    gets it at once; with the services gone, every pod has the lab's resolv.conf again."""
    lab = lab_factory(cluster())
    services = ("  services:\n    web: {selector: nginx, port: 8080, targetPort: 80, "
                "clusterIP: 10.96.0.20}\n  pods:\n")
    edit = cluster(lambda s: s.replace("  pods:\n", services, 1))
    mark(lab)
    converge_to(lab, edit, tmp_path)
    assert kept(lab) == set(lab.state["nodes"]) - {"coredns"}, lab.state["nodes"]

    def resolv(node):
        return lab.exec(node, "cat", "/etc/resolv.conf", check=True).stdout

    assert "nameserver 10.96.0.10" in resolv("client") and "ndots:5" in resolv("client")
    assert "10.96.0.10" not in resolv("master")                 # a node keeps the lab's
    got = lab.exec("client", "getent", "hosts", "web")
    assert got.returncode == 0 and got.stdout.split()[0] == "10.96.0.20", got
    assert lab.exec("client", "curl", "-s", "-m5", "http://web:8080").stdout.startswith("nginx ")

    edit = edit.replace("    nginx: {node: node1", "    web3: {node: node1, serve: http}\n    nginx: {node: node1")
    converge_to(lab, edit, tmp_path)
    assert "nameserver 10.96.0.10" in resolv("web3")
    assert lab.exec("web3", "getent", "hosts", "web.default.svc.cluster.local").returncode == 0
    assert_as_fresh(lab, edit, lab_factory)

    plain = cluster(lambda s: s.replace("    nginx: {node: node1", "    web3: {node: node1, serve: http}\n"
                                                                  "    nginx: {node: node1"))
    converge_to(lab, plain, tmp_path)
    assert "coredns" not in lab.state["nodes"]
    assert not os.path.lexists(f"/etc/netns/{lab.name}.coredns")
    assert "10.96.0.10" not in resolv("client") and "10.96.0.10" not in resolv("web3")
    assert lab.exec("client", "getent", "hosts", "web").returncode != 0
    assert_as_fresh(lab, plain, lab_factory)


def test_dry_run_of_a_lab_that_does_not_run_lists_everything(tmp_path):
    name = unique_lab_name()
    path = tmp_path / "x.yaml"
    path.write_text(ROUTED)
    r = nslab("up", path, "--name", name, "--dry-run")
    assert r.returncode == 0, r
    assert r.stdout.splitlines()[:3] == ["+ h1: new node (6 objects)", "+ h2: new node (6 objects)",
                                         "+ r1: new node (8 objects)"], r.stdout
    assert not os.path.exists(f"/run/nslab/{name}") and not os.path.exists(f"/run/netns/{name}.h1")


# ---- a converge killed part-way (os._exit: no cleanup runs, as with kill -9) ----------------

KILLED = """
import os, sys
from nslab import cli, converge, state
point = sys.argv.pop(1)
def after(owner, name):
    original = getattr(owner, name)
    def wrapper(*a, **kw):
        result = original(*a, **kw)
        os._exit(137)
    setattr(owner, name, wrapper)
after(*{"drop": (converge, "_drop"), "create": (converge.L.RecordingApplier, "create_namespace"),
        "applied": (converge.L.RecordingApplier, "apply"), "built": (state, "record_built")}[point])
sys.argv[0] = "nslab"
cli.main()
"""
EDITED = ROUTED.replace("  h2: {}\n", "  h3: {}\n").replace("10.9.0.0/24", "10.8.0.0/24").replace(
    "{node: h2, ip: 10.2.0.2/24}", "{node: h3, ip: 10.2.0.3/24}")


@pytest.mark.parametrize("point,then", [("drop", "up"), ("create", "up"), ("built", "up"), ("create", "down"),
                                        ("applied", "other")])
def test_a_converge_killed_part_way_is_finished_by_up_or_removed_by_down(root_unchanged, lab_factory, tmp_path,
                                                                          point, then):
    lab = lab_factory(ROUTED)
    path = tmp_path / "edited.yaml"
    path.write_text(EDITED)
    killed = subprocess.run([sys.executable, "-c", KILLED, point, "up", str(path), "--name", lab.name],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert killed.returncode == 137, killed
    assert lab.state["status"] == "converging"
    if then == "down":
        lab.down()                 # lab_factory's leftover check: nothing of it (old or new) is left
        assert not any(n.startswith(lab.name + ".") for n in os.listdir("/run/netns"))
        return
    target = EDITED
    if then == "other":           # edited again meanwhile: what the killed one half-did must not stay
        target = EDITED.replace("10.8.0.0/24", "10.7.0.0/24")
        path.write_text(target)
    r = lab.nslab("up", path, "--name", lab.name, timeout=180)
    assert r.returncode == 0, r
    assert lab.state["status"] == "up" and sorted(lab.state["nodes"]) == ["h1", "h3", "r1"]
    assert not os.path.exists(f"/run/netns/{lab.name}.h2") and not os.path.lexists(f"/etc/netns/{lab.name}.h2")
    assert lab.nslab("up", path, "--name", lab.name).stdout == f"lab {lab.name}: no changes\n"
    assert lab.exec("h3", "ping", "-c1", "-W2", "10.2.0.1").returncode == 0
    assert lab.exec("h3", "hostname").stdout.strip() == "h3"
    assert_as_fresh(lab, target, lab_factory)


def test_container_nodes_added_removed_and_recreated(root_unchanged, lab_factory, tmp_path):
    from nslab import model
    from nslab.apply import containers
    from nslab.compile import compile_topology
    why = containers.unavailable(compile_topology(model.load(str(REPO / "topologies" / "containers.yaml"))))
    if why:
        pytest.skip(f"needs the Docker engine and nslab's images: {why}")
    import docker
    text = (REPO / "topologies" / "containers.yaml").read_text().split("\ntests:")[0].replace(
        "name: containers\n", "") + "\n"
    lab = lab_factory(text)
    mark(lab)
    old_nginx = docker.from_env().containers.get(f"nslab.{lab.name}.nginx").id
    # nginx's command changed (recreated), client removed, a container pod web2 added
    edit = text.replace("command: httpd -f -p 80 -h /www", "command: httpd -f -p 80 -h /").replace(
        "    client: {node: master, image: nslab/debian}", "    web2: {node: master, image: nslab/busybox, "
        "command: httpd -f -p 80 -h /www}\n   ")
    r = converge_to(lab, edit, tmp_path)
    assert "~ nginx: recreated: its container changed" in r.stdout and "- client: removed" in r.stdout, r.stdout
    assert kept(lab) == {"lan", "master", "node1"}
    names = sorted(c.name for c in docker.from_env().containers.list(all=True,
                                                                      filters={"label": f"nslab.lab={lab.name}"}))
    assert names == [f"nslab.{lab.name}.nginx", f"nslab.{lab.name}.web2"]
    assert docker.from_env().containers.get(f"nslab.{lab.name}.nginx").id != old_nginx
    assert {c["node"] for c in lab.state["containers"]} == {"nginx", "web2"}
    code = ["curl", "-s", "-m5", "-o", "/dev/null", "-w", "%{http_code}"]
    assert lab.exec("master", *code, "http://web2").stdout == "200"
    assert lab.exec("master", *code, "http://nginx/").stdout == "404"       # its new document root: /
    assert lab.nslab("up", tmp_path / "edit.yaml", "--name", lab.name).stdout == f"lab {lab.name}: no changes\n"
