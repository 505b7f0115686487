"""The backend registry (nslab/backends/): one module per flannel backend.

Unit tests, no root.  Three kinds:
- the registry's own promises: discovery (a backend is one new file), order, errors;
- each backend's facts pinned independently: keys, defaults, overheads, device names, the
  ops for one node in flannel's order (a synthetic 3-node cluster), wire signatures;
- agreement with what the rest of nslab did before it used the registry (the flannel ops
  for every shipped topology x every --backend, decode's ports, tunnel's daemon lines,
  graph's styles, the model's parsed backend and the messages in tests/errors/).  Those
  import the old tables defensively (before and after the package restructure) and skip
  once they are gone: by then the golden files and tests/errors/ pin the same behaviour.
"""
from __future__ import annotations

import ast
import importlib
import re
import sys
import textwrap
import uuid
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from nslab import backends
from nslab import plan as P
from nslab.backends import Config, UnknownBackend
from nslab.errors import UsageError

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "nslab" / "backends"
TOPOLOGIES = REPO / "nslab" / "topologies"
ERRORS = REPO / "tests" / "errors"
OVERRIDES = [None, "vxlan", "host-gw", "ipip", "udp", "udp:8282", "vxlan:4789"]


class Bad(Exception):
    """What the err callback makes: the path and the message, as the model would show them."""

    def __init__(self, path, message):
        super().__init__(f"{'.'.join(map(str, path))}: {message}")


def err(path, message):
    return Bad(path, message)


def mtu(value, path):
    # the model's Parser.mtu, as far as these tests need it
    if isinstance(value, bool) or not isinstance(value, int) or not 68 <= value <= 65535:
        raise Bad(path, f"bad MTU {value!r}")
    return value


def parse(spec, override=None):
    return backends.parse(spec, ("cluster", "backend"), err, mtu, override)


def _old(*modules: str, attr: str):
    """attr of the first importable module (the pre- and post-restructure locations), or skip."""
    for name in modules:
        try:
            value = getattr(importlib.import_module(name), attr, None)
        except ImportError:
            continue
        if value is not None:
            return value
    pytest.skip(f"{attr} is no longer in {' / '.join(modules)}: the registry is wired in")


# --- the registry ---------------------------------------------------------------------------

def test_registry_has_flannels_four_backends_in_the_order_users_see():
    assert backends.names() == ["vxlan", "host-gw", "ipip", "udp"]
    assert [b.name for b in backends.all()] == backends.names()
    assert backends.get("ipip").name == "ipip"
    for bad in ("geneve", ["vxlan"], None):
        with pytest.raises(UnknownBackend, match=r"flannel backends: vxlan, host-gw, ipip, udp"):
            backends.get(bad)
    assert UnknownBackend("x").exit_code == 2           # a user-facing error, never a traceback


def test_every_module_in_the_folder_is_a_backend():
    modules = sorted(p.stem for p in PACKAGE.glob("*.py") if not p.stem.startswith("_"))
    assert sorted(b.name.replace("-", "_") for b in backends.all()) == modules


def _package(tmp_path, files: dict[str, str]) -> str:
    name = f"extra_backends_{uuid.uuid4().hex}"          # unique: sys.modules outlives tmp_path
    pkg = tmp_path / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for fname, text in files.items():
        (pkg / fname).write_text(textwrap.dedent(text))
    return name


ALLOC = """
    # flannel's alloc backend (pkg/backend/alloc): leases subnets, moves no packets
    from nslab.backends import Backend, Config, Style

    BACKEND = Backend(
        name="alloc", rank=9, keys=frozenset({"type"}), overhead=0,
        overhead_source="flannel pkg/backend/alloc/alloc.go: no data path",
        parse=lambda spec, path, err, mtu: Config(type="alloc"), device=lambda c: None,
        ops=lambda cluster, node, ns_of: [], direct=lambda c, node, peer: False,
        style=Style("#999999", "no data path"), summary=lambda c: "alloc", edge_label=lambda c: "")
"""


def test_adding_a_backend_is_one_new_file(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    name = _package(tmp_path, {"alloc.py": ALLOC, "_helpers.py": "X = 1\n"})
    found = backends.discover([str(tmp_path / name)], name)
    assert list(found) == ["alloc"] and found["alloc"].ops(None, None, None) == []


def test_discovery_refuses_a_module_without_backend_and_a_name_twice(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    name = _package(tmp_path, {"stray.py": "X = 1\n"})
    with pytest.raises(TypeError, match=r"stray defines no BACKEND"):
        backends.discover([str(tmp_path / name)], name)
    name = _package(tmp_path, {"alloc.py": ALLOC, "alloc2.py": ALLOC})
    with pytest.raises(TypeError, match=r"both define backend 'alloc'"):
        backends.discover([str(tmp_path / name)], name)


def test_the_package_imports_only_plan_errors_and_the_standard_library():
    """It sits below the model: nothing else of nslab, nothing outside the standard library,
    and every import at the top of its module."""
    allowed = {"nslab.plan", "nslab.errors", "nslab.backends"}
    for path in PACKAGE.glob("*.py"):
        tree = ast.parse(path.read_text())
        top = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                # every module here is in package nslab.backends: `.` is it, `..` is nslab
                base = ["nslab.backends", "nslab"][node.level - 1] if node.level else None
                if not node.level:
                    targets = [node.module]
                elif node.module:
                    targets = [f"{base}.{node.module}"]
                else:       # `from . import Backend` (the package), `from .. import plan` (nslab.plan)
                    targets = [base] if node.level == 1 else [f"{base}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            assert id(node) in top, f"{path.name}:{node.lineno}: an import inside a function"
            for t in targets:
                ok = t in allowed or (t.split(".")[0] != "nslab" and t.split(".")[0] in sys.stdlib_module_names)
                assert ok, f"{path.name} imports {t}"


# --- facts per backend ---------------------------------------------------------------------

def test_overheads_are_flannels():
    got = {b.name: b.overhead for b in backends.all()}
    assert got == {"vxlan": 50, "host-gw": 0, "ipip": 20, "udp": 28}
    assert all(b.overhead_source.startswith("flannel pkg/backend/") for b in backends.all())


def test_defaults_devices_and_keys():
    assert parse(None) == Config(type="vxlan", vni=1, port=8472)
    assert parse({}).device == "flannel.1"
    assert parse({"type": "vxlan", "vni": 4000, "port": 4789, "directRouting": True, "gbp": True}) == \
        Config(type="vxlan", vni=4000, port=4789, direct_routing=True, gbp=True)
    assert parse({"type": "udp"}) == Config(type="udp", port=8285)
    assert parse({"type": "udp"}).device == "flannel0"
    assert parse({"type": "ipip", "mtu": 1400, "directRouting": True}) == \
        Config(type="ipip", mtu=1400, direct_routing=True)
    assert parse({"type": "ipip"}).device == "flannel.ipip"
    assert parse({"type": "host-gw"}).device is None
    assert {b.name: set(b.keys) for b in backends.all()} == {
        "vxlan": {"type", "vni", "port", "mtu", "directRouting", "gbp"}, "host-gw": {"type"},
        "ipip": {"type", "directRouting", "mtu"}, "udp": {"type", "port"}}


@pytest.mark.parametrize("spec, override, message", [
    ([1], None, "cluster.backend: expected a mapping for this backend, got list [1]"),
    ({"type": "vxlan", "vni": True}, None, "cluster.backend.vni: VNI True is out of range"),
    ({"type": "vxlan", "vni": 10000000}, None, "flannel.10000000, 16 characters long"),
    ({"type": "vxlan", "gbp": "yes"}, None, "cluster.backend.gbp: gbp must be true or false, got 'yes'"),
    ({"type": "ipip", "directRouting": 1}, None, "cluster.backend.directRouting: directRouting must be true"),
    ({"type": "udp", "port": True}, None, "cluster.backend.port: port True is not a UDP port"),
    ({"type": "udp", "mtu": 1400}, None, "cluster.backend.mtu: unknown key 'mtu' (expected one of: port, type)"),
    ({"type": "ipip", "mtu": 20}, None, "cluster.backend.mtu: bad MTU 20"),
])
def test_bad_sections_name_the_key(spec, override, message):
    with pytest.raises(Bad) as info:
        parse(spec, override)
    assert message in str(info.value)


@pytest.mark.parametrize("override, message", [
    ("geneve", "--backend geneve: unknown backend 'geneve' (flannel backends: vxlan, host-gw, ipip, udp)"),
    ("ipip:99", "--backend ipip:99: only vxlan and udp take a port (--backend udp:8282)"),
    ("udp:²", "--backend udp:²: '²' is not a UDP port (1 to 65535)"),
    ("udp:" + "9" * 5000, "is not a UDP port (1 to 65535)"),
    ("udp:0", "--backend udp:0: '0' is not a UDP port (1 to 65535)"),
    ("vxlan:99999", "--backend vxlan:99999: '99999' is not a UDP port (1 to 65535)"),
])
def test_bad_override_names_the_option_not_the_file(override, message):
    with pytest.raises(UsageError) as info:
        parse({"type": "vxlan", "vni": 4000}, override)
    assert message in str(info.value)


def test_backend_override_keeps_only_what_means_the_same():
    spine = {"type": "vxlan", "vni": 4000, "port": 4789, "directRouting": True, "mtu": 1400}
    assert parse(spine, "udp") == Config(type="udp", port=8285)
    assert parse(spine, "udp:8282") == Config(type="udp", port=8282)
    assert parse(spine, "ipip") == Config(type="ipip", mtu=1400, direct_routing=True)
    assert parse(spine, "host-gw") == Config(type="host-gw")
    assert parse(spine, "vxlan") == Config(type="vxlan", vni=4000, port=4789, mtu=1400, direct_routing=True)
    assert parse(spine, "vxlan:8472").port == 8472


def test_flannel_mtu():
    vx = Config(type="vxlan", port=8472)
    assert backends.flannel_mtu(vx, 1500, "lan", ("cluster", "backend"), err) == 1450
    assert backends.flannel_mtu(Config(type="udp", port=8285), 9000, "lan", (), err) == 8972
    assert backends.flannel_mtu(Config(type="host-gw"), 1500, "lan", (), err) == 1500
    assert backends.flannel_mtu(Config(type="ipip", mtu=1300), 1500, "lan", (), err) == 1300
    with pytest.raises(Bad, match=r"^mtu: backend MTU 1481 does not fit .* minus 20 bytes of ipip .*at most 1480"):
        backends.flannel_mtu(Config(type="ipip", mtu=1481), 1500, "lan", (), err)


def _error_case(name: str):
    """(backend section, segment MTU, cluster nodes) of a file in tests/errors/."""
    doc = yaml.safe_load((ERRORS / f"{name}.yaml").read_text())
    cluster, segments = doc["cluster"], doc["segments"]
    nodes = {n: SimpleNamespace(name=n, segment=s["segment"], ip=IPv4Address(s["ip"]),
                                path=("cluster", "nodes", n)) for n, s in cluster["nodes"].items()}
    return cluster.get("backend"), segments, nodes


@pytest.mark.parametrize("name", [
    "cluster-backend-key-for-other-type", "cluster-backend-mtu-too-big", "cluster-backend-type-is-list",
    "cluster-port-out-of-range", "cluster-unknown-backend", "cluster-vni-device-name-too-long",
    "cluster-vni-out-of-range", "ipip-backend-vni", "udp-port-out-of-range", "cluster-mtu-too-small-for-vxlan",
    "cluster-host-gw-across-segments"])
def test_messages_of_tests_errors(name):
    """The registry gives the exact path and message the CLI shows for these files."""
    expected = (ERRORS / f"{name}.expected").read_text().strip().split(" ", 1)[1]
    spec, segments, nodes = _error_case(name)
    with pytest.raises(Bad) as info:
        config = parse(spec)
        for node in nodes.values():
            backends.flannel_mtu(config, segments[node.segment].get("mtu", 1500), node.segment,
                                 ("cluster", "backend"), err)
        backends.check_cluster(SimpleNamespace(backend=config, nodes=nodes), err)
    assert str(info.value) == expected


# --- ops in flannel's order (independent of nslab.flannel) ---------------------------------

def _cluster(config: Config):
    """a and b share underlay 30.0.0.0/24, c is on 30.0.1.0/24 (another rack)."""
    def node(name, ip, net, n):
        return SimpleNamespace(name=name, ip=IPv4Address(ip), subnet=IPv4Network(f"10.244.{n}.0/24"),
                               underlay="eth0", underlay_net=IPv4Network(net), mtu=1450,
                               vtep_mac=f"02:00:00:00:00:0{n}", segment=net, path=("cluster", "nodes", name))
    nodes = {n.name: n for n in (node("a", "30.0.0.1", "30.0.0.0/24", 1), node("b", "30.0.0.2", "30.0.0.0/24", 2),
                                 node("c", "30.0.1.3", "30.0.1.0/24", 3))}
    return SimpleNamespace(backend=config, nodes=nodes, network=IPv4Network("10.244.0.0/16"))


def _ops(config: Config, node="a"):
    cluster = _cluster(config)
    return backends.get(config.type).ops(cluster, cluster.nodes[node], lambda name: f"lab.{name}")


def test_vxlan_ops_direct_routing_in_flannels_order():
    got = _ops(Config(type="vxlan", vni=4000, port=4789, direct_routing=True))
    assert got == [
        P.Link(ns="lab.a", name="flannel.4000", kind="vxlan", mtu=1450, mac="02:00:00:00:00:01",
               stage=P.STAGE_DEVICE, vxlan=(("id", 4000), ("local", "30.0.0.1"), ("port", 4789), ("dev", "eth0"),
                                            ("learning", False), ("gbp", False))),
        P.Addr("lab.a", "flannel.4000", "10.244.1.0/32"),
        P.Route("lab.a", "10.244.2.0/24", (P.Nexthop("30.0.0.2", "eth0"),)),           # same rack: direct
        P.Neigh("lab.a", "flannel.4000", "10.244.3.0", "02:00:00:00:00:03"),           # neighbour, FDB, route
        P.Fdb("lab.a", "flannel.4000", "02:00:00:00:00:03", "30.0.1.3"),
        P.Route("lab.a", "10.244.3.0/24", (P.Nexthop("10.244.3.0", "flannel.4000"),), onlink=True)]
    plain = _ops(Config(type="vxlan", port=8472))
    assert [type(op).__name__ for op in plain] == ["Link", "Addr"] + ["Neigh", "Fdb", "Route"] * 2


def test_ipip_and_udp_ops():
    assert _ops(Config(type="ipip", direct_routing=True)) == [
        P.Link(ns="lab.a", name="flannel.ipip", kind="ipip", mtu=1450, stage=P.STAGE_DEVICE,
               ipip=(("local", "30.0.0.1"), ("remote", None), ("pmtudisc", False))),
        P.Addr("lab.a", "flannel.ipip", "10.244.1.0/32"),
        P.Route("lab.a", "10.244.2.0/24", (P.Nexthop("30.0.0.2", "eth0"),)),
        P.Route("lab.a", "10.244.3.0/24", (P.Nexthop("30.0.1.3", "flannel.ipip"),), onlink=True)]
    assert _ops(Config(type="udp", port=8285), node="c") == [
        P.Link(ns="lab.c", name="flannel0", kind="tun", mtu=1450, stage=P.STAGE_DEVICE),
        P.Addr("lab.c", "flannel0", "10.244.3.0/32"),
        P.Route("lab.c", "10.244.0.0/16", (P.Nexthop(None, "flannel0"),), scope="global"),
        P.Daemon(ns="lab.c", node="c", kind="udp", dev="flannel0",
                 config=(("local", "30.0.1.3"), ("port", 8285), ("address", "10.244.3.0"),
                         ("routes", "10.244.1.0/24@30.0.0.1,10.244.2.0/24@30.0.0.2")))]


def test_host_gw_routes_each_pod_subnet_via_its_node():
    assert _ops(Config(type="host-gw"), node="b") == [
        P.Route("lab.b", "10.244.1.0/24", (P.Nexthop("30.0.0.1", "eth0"),)),
        P.Route("lab.b", "10.244.3.0/24", (P.Nexthop("30.0.1.3", "eth0"),))]


def test_direct_decides_per_peer():
    cluster = _cluster(Config(type="vxlan", direct_routing=True))
    a, b, c = cluster.nodes.values()
    vx = backends.get("vxlan")
    assert vx.direct(cluster.backend, a, b) and not vx.direct(cluster.backend, a, c)
    assert not vx.direct(Config(type="vxlan"), a, b)
    assert backends.get("host-gw").direct(Config(type="host-gw"), a, c)
    assert not backends.get("udp").direct(Config(type="udp", direct_routing=True), a, b)


# --- agreement with the tables the registry replaces ----------------------------------------

def _shipped_clusters():
    """(file, override, topology) for every shipped topology with a cluster x every override."""
    from nslab.model import load
    from nslab.errors import TopologyError
    out = []
    for path in sorted(TOPOLOGIES.glob("*.yaml")):
        if "cluster:" not in path.read_text():
            continue
        for override in OVERRIDES:
            try:
                topo = load(str(path), overrides={"backend": override} if override else None)
            except TopologyError as e:
                assert override == "host-gw" and "one L2 segment" in str(e), e   # spine-leaf across racks
                continue
            out.append((path.name, override, topo))
    return out


def test_ops_are_flannels_for_every_shipped_topology_and_backend():
    old = _old("nslab.compile.cluster", "nslab.flannel", attr="BACKENDS")
    cases = _shipped_clusters()
    assert len(cases) >= 25 and {t.cluster.backend.type for _, _, t in cases} == set(backends.names())
    compared = 0
    for name, override, topo in cases:
        cluster = topo.cluster
        btype = cluster.backend.type
        for node in cluster.nodes.values():
            ns_of = lambda n: topo.nodes[n].ns      # noqa: E731
            want = old[btype](cluster, node, ns_of)
            got = backends.get(btype).ops(cluster, node, ns_of)
            assert got == want, (name, override, node.name)
            compared += len(got)
    assert compared > 200


def test_parsed_backend_is_the_models_for_every_shipped_topology():
    overhead = _old("nslab.model.cluster", "nslab.cluster", attr="OVERHEAD")
    keys = _old("nslab.model.cluster", "nslab.cluster", attr="BACKEND_KEYS")
    assert overhead == {b.name: b.overhead for b in backends.all()}
    assert keys == {b.name: set(b.keys) for b in backends.all()} and list(keys) == backends.names()
    for name, override, topo in _shipped_clusters():
        doc = yaml.safe_load((TOPOLOGIES / name).read_text())
        got = parse(doc["cluster"].get("backend"), override)
        old = topo.cluster.backend
        assert (got.type, got.vni if got.type == "vxlan" else old.vni, got.mtu, got.direct_routing, got.gbp) == \
            (old.type, old.vni, old.mtu, old.direct_routing, old.gbp), (name, override)
        assert got.device == old.device
        if got.type in ("vxlan", "udp"):
            assert got.port == old.port
        for node in topo.cluster.nodes.values():
            seg = topo.segments[node.segment]
            assert backends.flannel_mtu(got, seg.mtu, seg.name, (), err) == node.mtu


# --- the wire: one classifier ----------------------------------------------------------------

def test_encap_ports_know_vxlan_everywhere_and_the_labs_own_port():
    assert backends.encap_ports() == {4789: "vxlan", 8472: "vxlan"}
    assert backends.encap_ports(Config(type="vxlan", port=4790)) == {4789: "vxlan", 8472: "vxlan", 4790: "vxlan"}
    assert backends.encap_ports(Config(type="udp", port=8285)) == {4789: "vxlan", 8472: "vxlan", 8285: "udp"}
    assert backends.encap_ports(Config(type="udp", port=8472))[8472] == "udp"       # the lab's own wins
    assert backends.encap_ports(Config(type="ipip")) == backends.encap_ports(Config(type="host-gw")) == \
        backends.encap_ports()
    assert backends.ip_protocols() == {4: "ipip"}
    assert backends.encap_layers() == {"vxlan": "vxlan", "ipip": "ipip", "flannel-udp": "udp"}


def test_encap_ports_are_decodes():
    old = _old("nslab.observe.decode", "nslab.decode", attr="encap_ports")
    try:
        old("udp", 8285)
    except TypeError:
        pytest.skip("decode.encap_ports takes the registry's Config now")
    for config in (None, Config(type="vxlan", port=4789), Config(type="vxlan", port=9999),
                   Config(type="udp", port=8285), Config(type="udp", port=8472), Config(type="ipip"),
                   Config(type="host-gw")):
        want = old(config.type, config.port) if config else old()
        assert backends.encap_ports(config) == want


def test_wire_signatures():
    vx = backends.get("vxlan").wire
    header = bytes([0x08, 0, 0, 0]) + (4000).to_bytes(3, "big") + b"\x00"       # RFC 7348: flags I, VNI
    assert vx.header_len == len(header) and vx.fields(header) == {"vni": 4000}
    assert vx.signature == ("udp", "vxlan", "eth") and vx.description == "UDP/VXLAN"
    assert backends.get("udp").wire.signature == ("udp", "flannel-udp", "ip")
    assert backends.get("ipip").wire.signature == ("ipip", "ip")
    assert backends.get("host-gw").wire is None
    note = vx.decap_note.format(port=4789, device="flannel.4000", id=4000)
    assert note == "decapsulated: udp port 4789 is vxlan device flannel.4000 (id 4000)"


def test_classify_names_the_outermost_encapsulation():
    eth = {"layer": "eth"}
    ip = {"layer": "ip", "proto": 17}
    assert backends.classify([eth, ip, {"layer": "udp"}, {"layer": "vxlan", "vni": 1}, eth, ip]) == "vxlan"
    assert backends.classify([ip, {"layer": "ipip"}, ip, {"layer": "udp"}, {"layer": "flannel-udp"}, ip]) == "ipip"
    assert backends.classify([eth, ip, {"layer": "udp"}, {"layer": "flannel-udp"}, ip]) == "udp"
    assert backends.classify([eth, ip, {"layer": "icmp"}]) is None and backends.classify([]) is None


# --- graph, script, runtime ------------------------------------------------------------------

def test_titles_and_edge_labels():
    assert backends.title(Config(type="vxlan", vni=4000, port=4789, direct_routing=True)) == \
        "vxlan VNI 4000 port 4789, DirectRouting"
    assert backends.title(Config(type="udp", port=8285, direct_routing=True)) == "udp port 8285"
    assert backends.title(Config(type="ipip", direct_routing=True)) == "ipip, DirectRouting"
    assert backends.title(Config(type="host-gw")) == "host-gw"
    labels = {b.name: b.edge_label(Config(type=b.name, vni=4, port=8285)) for b in backends.all()}
    assert labels == {"vxlan": "vxlan VNI 4", "host-gw": "direct", "ipip": "ipip", "udp": "udp :8285"}


def test_graph_styles_are_graphs():
    overlay = _old("nslab.observe.graph", "nslab.graph", attr="OVERLAY")
    for b in backends.all():
        key = "direct" if b.wire is None else b.name
        assert overlay[key] == (b.style.colour, b.style.legend), b.name
    assert all(re.fullmatch(r"#[0-9a-f]{6}", b.style.colour) for b in backends.all())


UDP_OP = P.Daemon(ns="lab.a", node="a", kind="udp", dev="flannel0",
                  config=(("local", "30.0.0.1"), ("port", 8285), ("address", "10.244.1.0"), ("routes", "")))
IPIP_OP = P.Daemon(ns="lab.a", node="a", kind="ipip", dev="flannel.ipip",
                   config=(("local", "30.0.0.1"), ("remote", "any"), ("pmtudisc", 0)))


def test_dataplanes_and_their_script_lines():
    assert backends.dataplane("udp").process_name == b"flanneld"
    assert backends.dataplane("ipip").process_name == b"nslab-ipip"
    assert backends.describe_daemon(UDP_OP).startswith("flannel's udp proxy (nslab's tunnel daemon): reads flannel0")
    assert "30.0.0.1:8285 -> <owner node>:8285" in backends.describe_daemon(UDP_OP)
    assert backends.describe_daemon(IPIP_OP) == ("userspace ipip on TUN flannel.ipip (this kernel has no ipip): "
                                                 "outer IP 30.0.0.1 -> the route gateway, protocol 4")
    tunnel = P.Daemon(ns="lab.r", node="r", kind="ipip", dev="tunl1",
                      config=(("local", "10.10.10.2"), ("remote", "10.10.20.2"), ("pmtudisc", 1)))
    assert "outer IP 10.10.10.2 -> 10.10.20.2" in backends.describe_daemon(tunnel)   # node tunnels too
    with pytest.raises(UnknownBackend, match=r"dataplanes: ipip, udp"):
        backends.dataplane("wireguard")


def test_dataplanes_are_the_runtimes():
    describe = _old("nslab.compile.script", "nslab.runtime.tunnels", "nslab.tunnel", attr="describe")
    names = _old("nslab.runtime.tunnels", "nslab.tunnel", attr="PROCESS_NAMES")
    for op in (UDP_OP, IPIP_OP):
        assert backends.describe_daemon(op) == describe(op)
    assert names == {k: backends.dataplane(k).process_name for k in names}


# --- the guide --------------------------------------------------------------------------------

def test_the_guides_worked_example_is_the_shipped_file():
    """docs/adding-a-backend.md quotes host_gw.py whole: it cannot drift from the code."""
    guide = (REPO / "docs" / "adding-a-backend.md").read_text()
    blocks = re.findall(r"```python\n# nslab/backends/host_gw\.py\n(.*?)```", guide, re.S)
    assert blocks and blocks[0] == (PACKAGE / "host_gw.py").read_text()
    example = re.search(r"```python\n(def test_host_gw.*?)```", guide, re.S).group(1)
    assert example in Path(__file__).read_text()                  # and its test is this file's
