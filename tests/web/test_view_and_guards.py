"""nslab web without a lab: what the page draws (view.py: the collapsed picture of a big
lab, links and the end each is read at, trace steps and their labels) and the server's
guards (Host, Origin, token, read-only), through aiohttp's own test client."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from nslab import lab as labmod
from nslab.observe import graph as graphmod
from nslab.web import server, view

TOPOLOGIES = Path(__file__).resolve().parents[2] / "topologies"


@pytest.fixture(scope="module")
def services():
    topo = labmod.load(str(TOPOLOGIES / "spine-leaf-services.yaml"))
    return topo, graphmod.build(topo)


def test_collapse_boxes_each_rack_and_keeps_full_edge_ids(services):
    topo, d = services
    shut, members = view.collapse(d, set())
    tops = {g for g, grp in d.groups.items() if grp.parent is None}
    assert {n for n in shut.nodes if n.startswith("group:")} == {"group:" + g for g in tops}
    assert "worker1" not in shut.nodes and "spine" in shut.nodes
    for k, full in members.items():                  # every drawn edge names real full edges
        assert all(0 <= f < len(d.edges) for f in full)
        e = shut.edges[k]
        assert not (e.overlay and not (e.a.startswith("group:") and e.b.startswith("group:")))
    opened, members = view.collapse(d, tops)
    assert set(opened.nodes) == set(d.nodes)
    assert view.collapse(d, None)[0] is d


def test_svg_ids_are_the_full_drawings(services):
    topo, d = services
    shut, members = view.collapse(d, {"rack1"})
    svg = view.svg(shut, members)
    for k, full in members.items():
        assert f'id="e/{full[0]}"' in svg
    assert 'id="n/worker1"' in svg and 'id="n/group:rack2"' in svg


def test_links_read_at_one_end_and_underlay_tunnel(services):
    topo, d = services
    links = {(tuple(l["a"]), tuple(l["b"])): l for l in view.links(topo, d)}
    w1 = next(l for l in links.values() if ["worker1", "enp0s3"] in (l["a"], l["b"]))
    assert w1["underlay"] == ["worker1", "enp0s3", "flannel.1"]
    assert w1[w1["read"]][0] == "rack1"                  # the rack's bridge holds every port
    pod = next(l for l in links.values() if ["client", "eth0"] in (l["a"], l["b"]))
    assert pod[pod["read"]][0] == "master1" and pod["underlay"] is None


def test_trace_steps_label_encap_decap_nat(services):
    topo, d = services
    hop = lambda node, iface, dir, outer=None, note=None, decisions=(): dict(  # noqa: E731
        node=node, iface=iface, dir=dir, outer=outer, inner="ip", note=note, decisions=list(decisions))
    result = {"request": {"hops": [
        hop("client", "eth0", "out"),
        hop("master1", "cni0", "in", decisions=[{"kind": "nat", "text": "DNAT to 10.244.2.2:80"}]),
        hop("master1", "enp0s3", "out", outer="eth a > b | ip 10.0.0.11 > 10.0.0.22 | udp 1 > 8472 | vxlan vni 1"),
        hop("worker2", "enp0s3", "in", outer="eth | ip | udp | vxlan vni 1", note="decapsulated: udp port 8472"),
        hop("worker2", "flannel.1", "in")]}, "reply": None}
    steps = view.trace_steps(result, d)
    assert [s["label"] for s in steps] == ["", "NAT DNAT to 10.244.2.2:80", "encap vxlan vni 1", "decap", ""]
    link = next(l for l in view.links(topo, d) if ["client", "eth0"] in (l["a"], l["b"]))
    assert steps[0]["edge"] == link["edge"]


def _request(app, method, path, headers):
    from aiohttp.test_utils import TestClient, TestServer

    async def go():
        async with TestClient(TestServer(app)) as client:
            r = await client.request(method, path, headers=headers, allow_redirects=False)
            return r.status, r.cookies
    return asyncio.run(go())


def test_guards_host_origin_token_read_only():
    local = {"Host": "127.0.0.1:8080"}
    app = lambda **kw: server.make_app("127.0.0.1", 8080, fixed={}, **kw)  # noqa: E731
    assert _request(app(), "GET", "/api/labs", local)[0] == 200
    assert _request(app(), "GET", "/api/labs", {"Host": "localhost:8080"})[0] == 200
    assert _request(app(), "GET", "/api/labs", {"Host": "rebind.example:8080"})[0] == 403
    assert _request(app(), "GET", "/api/labs", {**local, "Origin": "http://rebind.example"})[0] == 403
    assert _request(app(), "POST", "/api/lab/x/link", local)[0] == 403           # no Origin
    assert _request(app(), "POST", "/api/lab/x/link", {**local, "Origin": "http://127.0.0.1:8080"})[0] == 404
    wide = lambda: server.make_app("192.0.2.1", 8080, token="s3cret", fixed={})  # noqa: E731
    there = {"Host": "192.0.2.1:8080"}
    assert _request(wide(), "GET", "/api/labs", there)[0] == 401
    assert _request(wide(), "GET", "/api/labs", {"Host": "127.0.0.1:8080"})[0] == 403   # not bound there
    status, cookies = _request(wide(), "GET", "/api/labs?token=s3cret", there)
    assert status == 200 and cookies["nslab_token"].value == "s3cret"
    assert _request(wide(), "GET", "/api/labs", {**there, "Cookie": "nslab_token=s3cret"})[0] == 200
    assert _request(wide(), "GET", "/api/labs?token=wrong", there)[0] == 401


def test_lab_switcher_lists_the_labs_served():
    import json
    labs = {n: server.Lab(n, topo=labmod.load(str(TOPOLOGIES / f), name=n))
            for n, f in (("one", "diy-veth.yaml"), ("two", "diy-bridge.yaml"))}
    from aiohttp.test_utils import TestClient, TestServer

    async def go():
        async with TestClient(TestServer(server.make_app(fixed=labs))) as client:
            r = await client.get("/api/labs", headers={"Host": "127.0.0.1:8080"})
            p = await client.get("/api/lab/two/picture", headers={"Host": "127.0.0.1:8080"})
            return json.loads(await r.text()), p.status, json.loads(await p.text())
    listed, status, picture = asyncio.run(go())
    assert listed == {"labs": ["one", "two"], "changes": False}
    assert status == 200 and picture["model"]["lab"] == "two" and "<svg" in picture["svg"]


@pytest.mark.root
@pytest.mark.parametrize("args, says", [
    (["--port", "0"], "nslab: --port must be from 1 to 65535, not 0"),
    (["--bind", "not-an-address"], "nslab: --bind takes an IP address of this machine (or localhost), "
                                   "not 'not-an-address'"),
    (["--bind", "0.0.0.0"], "nslab: --bind 0.0.0.0: give the one address to serve on (the page answers only to "
                            "a Host header naming the address it is bound to: the DNS rebinding guard)"),
    (["-l", "no-such-lab-wb"], "nslab: no lab named 'no-such-lab-wb' runs (`nslab ls` lists them)"),
])
def test_bad_options_one_sentence_exit_2(args, says):
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-m", "nslab.cli", "web", *args], capture_output=True, text=True,
                          timeout=60)
    assert (proc.returncode, proc.stderr.strip(), proc.stdout) == (2, says, "")
