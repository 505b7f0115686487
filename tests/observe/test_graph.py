"""nslab.graph: DOT and mermaid text for the shipped topologies, and `dot` renders them."""
from __future__ import annotations

import glob
import os
import re
import subprocess
import sys

import pytest

from nslab import model
from nslab.observe import graph

from conftest import installed

REPO = os.path.join(os.path.dirname(__file__), "..", "..")
TOPO = os.path.join(REPO, "topologies")
SHIPPED = sorted(os.path.basename(p) for p in glob.glob(os.path.join(TOPO, "*.yaml")))


def drawing(name: str, backend: str | None = None):
    return graph.build(model.load(os.path.join(TOPO, name), overrides={"backend": backend} if backend else None))


def edges(dot: str) -> list[str]:
    return [line.strip().rstrip(";") for line in dot.splitlines() if " -- " in line]


def overlay(d, kind: str) -> set[frozenset]:
    return {frozenset([e.a, e.b]) for e in d.edges if e.overlay == kind}


def test_spine_leaf_dot():
    d = drawing("spine-leaf.yaml")
    dot = graph.to_dot(d)
    # racks are clusters holding their bridge, their leaf and their nodes; pods sit in their node's group
    rack1 = dot[dot.index('subgraph "cluster_rack1"'):dot.index('subgraph "cluster_rack2"')]
    for name in ('"leaf01"', '"rack1"', '"master1"', '"worker1"', '"worker2"', '"client"', '"web-worker1"',
                 'subgraph "cluster_node:worker1"', "rack1  10.0.0.0/24"):
        assert name in rack1, name
    assert '"worker3"' not in rack1 and '"spine"' not in rack1
    assert dot.index('"spine" [') < dot.index('subgraph "cluster_rack1"')       # the spine is in no rack
    # links end on interface cells that carry names and addresses
    assert '"spine":"p_eth0":s -- "leaf01":"p_eth1":n' in edges(dot)
    assert '"leaf01":"p_eth0":s -- "rack1"' in edges(dot)
    assert '"rack1" -- "worker1":"p_enp0s3":n' in edges(dot)
    assert '"worker1":"p_veth0120afb2":s -- "client":"p_eth0":n' in edges(dot)
    for label in ("eth0 172.31.0.2/30", "eth1 172.31.0.1/30", "eth0 10.0.0.254/24", "enp0s3 30.0.0.23/24",
                  "eth0 10.244.1.2/24", "flannel.4000 10.244.3.0/32", "cni0 10.244.3.1/24", "veth0120afb2"):
        assert label in dot, label
    # overlay: DirectRouting inside rack1, vxlan across racks, dashed/dotted and coloured
    assert overlay(d, "direct") == {frozenset(p) for p in
                                    [("master1", "worker1"), ("master1", "worker2"), ("worker1", "worker2")]}
    assert overlay(d, "vxlan") == {frozenset([n, "worker3"]) for n in ("master1", "worker1", "worker2")}
    vx = next(e for e in edges(dot) if e.startswith('"worker1":title -- "worker3":title'))
    assert 'style="dashed"' in vx and graph.OVERLAY["vxlan"][0] in vx and "constraint=false" in vx
    direct = next(e for e in edges(dot) if e.startswith('"worker1":title -- "worker2":title'))
    assert 'style="dotted"' in direct
    assert "vxlan VNI 4000 port 4789, DirectRouting" in dot and "vxlan tunnel" in dot
    # each veth pair once
    assert len([e for e in d.edges if not e.overlay]) == 12


def test_routers_hosts_pods_switches_look_different():
    d = drawing("spine-leaf.yaml")
    kinds = {n.kind for n in d.nodes.values()}
    assert kinds == {"router", "switch", "host", "pod"}
    dot = graph.to_dot(d)
    attrs = {}
    for kind, name in (("router", "spine"), ("switch", "rack1"), ("host", "master1"), ("pod", "client")):
        line = next(line for line in dot.splitlines() if line.strip().startswith(f'"{name}" ['))
        attrs[kind] = re.search(r'bgcolor="([^"]+)"', line).group(1), 'style="rounded"' in line, 'border="2"' in line
    assert len(set(attrs.values())) == 4


def test_backends_change_the_overlay_edges():
    assert overlay(drawing("flannel-vxlan.yaml"), "vxlan") == {frozenset(["master", "node1"])}
    hg = drawing("flannel-vxlan.yaml", "host-gw")
    assert overlay(hg, "direct") == {frozenset(["master", "node1"])} and not overlay(hg, "vxlan")
    udp = drawing("spine-leaf.yaml", "udp:8282")
    assert len(overlay(udp, "udp")) == 6 and not overlay(udp, "direct")   # the udp backend has no DirectRouting
    assert "udp port 8282" in graph.to_dot(udp)
    ipip = drawing("spine-leaf.yaml", "ipip")
    assert overlay(ipip, "ipip") == {frozenset([n, "worker3"]) for n in ("master1", "worker1", "worker2")}
    assert "flannel.ipip 10.244.1.0/32" in graph.to_dot(ipip)


def test_diy_labs():
    dot = graph.to_dot(drawing("diy-ip-forward.yaml"))
    assert '"router":"p_v1_r":s -- "ns1":"p_v1":n' in edges(dot)
    assert "v1_r 10.1.1.1/24" in dot and "v2 10.1.2.2/24" in dot and "cluster_" not in dot
    bridge = graph.to_dot(drawing("diy-bridge.yaml"))
    assert '"br0":"p_br-veth0":s -- "ns1":"p_veth0":n' in edges(bridge)
    ipip = drawing("diy-ipip.yaml")
    assert [(e.label, e.overlay) for e in ipip.edges if e.overlay] == [("ipip tunl1 - tunl2", "ipip")]
    assert "tunl1 10.10.100.10" in graph.to_dot(ipip)


def test_mermaid():
    text = graph.to_mermaid(drawing("spine-leaf.yaml"))
    lines = text.splitlines()
    assert lines[:4] == ["---", 'title: "lab spine-leaf: flannel vxlan VNI 4000 port 4789, DirectRouting, pod network '
                                '10.244.0.0/16"', "---", "flowchart TB"]
    assert '  subgraph g_rack1["rack1  10.0.0.0/24"]' in lines
    assert '  n_spine{{"<b>spine</b>"}}' in lines
    assert '  n_spine ---|"eth0 172.31.0.2/30<br/>eth1 172.31.0.1/30"| n_leaf01' in lines
    assert '  n_worker1 -.-|"vxlan VNI 4000 10.0.0.21 - 30.0.0.23"| n_worker3' in lines
    assert '  n_worker1 -.-|"direct 10.0.0.21 - 10.0.0.22"| n_worker2' in lines
    k = next(i for i, line in enumerate(ln for ln in lines if " --" in ln or " -.-" in ln) if "n_worker1 -.-" in line
             and "n_worker3" in line)
    assert f"  linkStyle {k} stroke:{graph.OVERLAY['vxlan'][0]},stroke-width:2px,color:{graph.OVERLAY['vxlan'][0]}" in lines
    assert sum(ln.strip().startswith("subgraph ") for ln in lines) == sum(ln.strip() == "end" for ln in lines) == 5
    # ids are plain words (mermaid chokes on dots, dashes and the keyword `end`)
    for line in lines:
        m = re.match(r"\s+(n_\S+?)[\[({]", line)
        if m:
            assert re.fullmatch(r"n_\w+", m.group(1)), line


@pytest.mark.parametrize("name", SHIPPED)
def test_dot_renders_every_shipped_topology(name, tmp_path):
    installed("dot")
    out = tmp_path / "g.svg"
    graph.write(drawing(name), str(out), None)
    svg = out.read_text().replace("&#45;", "-")
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    for node in model.load(os.path.join(TOPO, name)).nodes.values():
        title = node.bridges[0].name if node.kind == "switch" and node.bridges else node.name
        assert f">{title}<" in svg, title


def test_cli_graph_from_a_file(tmp_path):
    installed("dot")
    png = tmp_path / "sl.png"
    cli = [sys.executable, "-m", "nslab.cli", "graph"]
    r = subprocess.run(cli + [os.path.join(TOPO, "spine-leaf.yaml"), "-o", str(png)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = subprocess.run(cli + [os.path.join(TOPO, "flannel-vxlan.yaml"), "--format", "mermaid"], capture_output=True,
                       text=True)
    assert r.returncode == 0 and "flowchart TB" in r.stdout and "n_nginx" in r.stdout
    r = subprocess.run(cli + [os.path.join(TOPO, "flannel-vxlan.yaml"), "-o", str(tmp_path / "x.jpg")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_each_tunnel_is_one_labelled_edge_per_node_pair():
    """Every vxlan tunnel told apart in the picture: one edge per pair of cluster nodes, named
    by its two underlay addresses (dot and mermaid alike; the legend names the backend once)."""
    d = drawing("spine-leaf.yaml")
    tunnels = [e for e in d.edges if e.overlay == "vxlan"]
    assert len(tunnels) == len({frozenset([e.a, e.b]) for e in tunnels}) == 3
    assert sorted(e.ends for e in tunnels) == ["10.0.0.11 - 30.0.0.23", "10.0.0.21 - 30.0.0.23", "10.0.0.22 - 30.0.0.23"]
    dot = graph.to_dot(d)
    for e in tunnels:
        assert f'xlabel="{e.ends}"' in dot, e.ends         # the cluster's own backend was left unlabelled
    assert 'xlabel="10.0.0.21 - 10.0.0.22"' in dot         # DirectRouting inside rack1, by its ends too


def test_services_are_drawn_with_their_endpoints():
    d = drawing("spine-leaf-services.yaml")
    svc = d.nodes["svc/testappds"]
    assert (svc.kind, svc.title, svc.lines) == ("service", "service testappds",
                                                ["NodePort 10.111.222.68:8080/TCP", "nodePort 30080"])
    assert sorted(e.b for e in d.edges if e.service and e.a == "svc/testappds") == \
        ["testappds-worker1", "testappds-worker2", "testappds-worker3"]
    dot = graph.to_dot(d)
    assert '"svc/testappds":title -- "testappds-worker3":title [color="#8e24aa"' in dot
    assert 'n_svc_testappds(["<b>service testappds</b><br/>NodePort 10.111.222.68:8080/TCP<br/>nodePort 30080"])' \
        in graph.to_mermaid(d)


def test_a_spine_that_is_also_a_gateway_stays_out_of_the_segment_box():
    d = drawing("spine-leaf-services.yaml")
    assert d.nodes["spine"].group is None                 # was inside `internet` (it is its gateway)
    assert d.nodes["leaf01"].group == "rack1" and d.nodes["outside"].group == "internet"


def test_a_generated_cluster_with_racks_renders_with_every_tunnel(tmp_path):
    """`nslab generate cluster:2,10,4` (20 nodes over 2 racks, 190 labelled tunnels between
    node clusters) used to make graphviz fail ("trouble in init_rank") while ranking the
    tunnels' labels; their labels are xlabels now, placed after the layout."""
    installed("dot")
    from nslab import generate
    path = tmp_path / "c.yaml"
    path.write_text(generate.render("cluster:2,10,4", name="gc"))
    d = graph.build(model.load(str(path)))
    tunnels = [e for e in d.edges if e.overlay == "vxlan"]
    assert len(tunnels) == 20 * 19 // 2
    out = tmp_path / "g.svg"
    graph.write(d, str(out), None)
    svg = out.read_text().replace("&#45;", "-")
    assert "<svg" in svg and "10.1.0.1 - 10.2.0.10" in svg
