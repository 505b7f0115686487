"""`nslab generate`: every shape renders a file that the model accepts, with the nodes,
segments and links the shape promises, a header saying how it was made, and the same bytes
every time.  No root: nothing touches the kernel.

Golden files (one small file per shape) live in tests/golden/generate/; after an intended
change rewrite them with NSLAB_UPDATE_GOLDEN=1 and read the diff.
"""
from __future__ import annotations

import difflib
import os
import subprocess
import sys
from collections import Counter
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
import yaml

from nslab import generate, model
from nslab.errors import UsageError

GOLDEN = Path(__file__).parent / "golden" / "generate"
UPDATE = os.environ.get("NSLAB_UPDATE_GOLDEN") == "1"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def any_neighbour_table(monkeypatch):
    """model.load refuses a lab that overflows this machine's shared neighbour table
    (nslab/model/limits.py, tested on its own); these tests are about the files, on any machine."""
    monkeypatch.setattr("nslab.model.limits.gc_thresh3", lambda: None)


def load(tmp_path: Path, text: str, file: str = "gen.yaml") -> model.Topology:
    path = tmp_path / file
    path.write_text(text, encoding="utf-8")
    return model.load(str(path))


def kinds(topo) -> Counter:
    return Counter(n.kind for n in topo.nodes.values())


def p2p_links(topo) -> int:
    """Veth pairs that are neither a segment attachment nor a pod's eth0."""
    ends = sum(1 for n in topo.nodes.values() for i in n.ifaces
               if i.segment is None and n.kind != "pod" and i.bridge is None)
    return ends // 2


# --- every shape, small and medium ------------------------------------------------------------

CLOS = [(1, 1, 1), (2, 2, 2), (1, 3, 5), (4, 6, 20), (3, 2, 300)]


@pytest.mark.parametrize("s,l,h", CLOS, ids=[f"clos:{s},{l},{h}" for s, l, h in CLOS])
def test_clos(tmp_path, s, l, h):
    text = generate.render(f"clos:{s},{l},{h}")
    topo = load(tmp_path, text)
    assert kinds(topo) == Counter(router=s + l, host=l * h, switch=l)
    assert len(topo.nodes) == generate.node_count(generate.parse_shape(f"clos:{s},{l},{h}"))
    assert len(topo.segments) == l
    assert p2p_links(topo) == s * l                    # every leaf to every spine
    for i in range(1, l + 1):
        leaf = topo.nodes[f"leaf{i:02d}"]
        assert {x.peer_node for x in leaf.ifaces if x.segment is None} == \
            {f"spine{k}" for k in range(1, s + 1)}
        seg = topo.segments[f"rack{i:02d}"]
        assert seg.subnet.network_address == IPv4Address(f"10.{i}.0.0") and seg.gateway == leaf.name
        assert seg.subnet.num_addresses - 3 >= h     # hosts + gateway fit
    w = max(2, len(str(h)))
    first, last = f"h01-{1:0{w}d}", f"h{l:02d}-{h:0{w}d}"
    assert topo.nodes[first].addresses[0].ip == IPv4Address("10.1.0.1")
    assert topo.nodes[last].addresses[0].ip == IPv4Address(f"10.{l}.0.0") + h
    if l > 1:
        other = topo.segments[f"rack{l:02d}"].subnet
        route = next(r for r in topo.nodes["leaf01"].routes if r.dst == other)
        assert len(route.nexthops) == s                # ECMP: one nexthop per spine
        assert topo.nodes["leaf01"].sysctls.get("net.ipv4.fib_multipath_hash_policy") == ("1" if s > 1 else None)
        far = topo.tests[0]
        assert (far.kind, far.src, far.dst, far.ttl) == ("ping", first, last, 61)
    assert topo.tests, "every generated file carries a tests: section"


CLUSTER = [((1, 1, 1), "vxlan"), ((2, 2, 2), "vxlan"), ((3, 4, 3), "ipip"), ((1, 5, 2), "host-gw"),
           ((2, 3, 1), "udp"), ((2, 150, 1), "vxlan")]


@pytest.mark.parametrize("args,backend", CLUSTER, ids=[f"cluster:{','.join(map(str, a))}-{b}" for a, b in CLUSTER])
def test_cluster(tmp_path, args, backend):
    r, n, p = args
    shape = f"cluster:{r},{n},{p}"
    topo = load(tmp_path, generate.render(shape, backend=backend, serve="http"))
    total = r * n
    expected = Counter(host=total, pod=total * p, switch=r)
    if r > 1:
        expected["router"] = r + 1
    assert kinds(topo) == expected
    assert len(topo.nodes) == generate.node_count(generate.parse_shape(shape))
    c = topo.cluster
    assert c.backend.type == backend and len(c.nodes) == total and len(c.pods) == total * p
    assert c.network == IPv4Network("10.244.0.0/16" if total <= 256 else "10.128.0.0/15")
    leases = [cn.subnet for cn in c.nodes.values()]
    assert len(set(leases)) == total and all(sn.subnet_of(c.network) for sn in leases)
    assert all(pod.serve == ["http"] for pod in topo.nodes.values() if pod.kind == "pod")
    assert p2p_links(topo) == (r if r > 1 else 0)      # each leaf to the spine
    encap = {"vxlan": "vxlan", "ipip": "ipip", "udp": "udp", "host-gw": "none"}[backend]
    if total > 1:
        far = topo.tests[0]
        w = max(2, len(str(n)))
        assert (far.src, far.dst) == (f"pod1-n01-{1:0{w}d}", f"pod1-n{r:02d}-{n:0{w}d}")
        assert far.encap == encap and far.ttl == (60 if backend == "udp" else 62)   # flanneld decrements too
    if p > 1:
        assert any(t.encap == "none" and t.ttl == 64 for t in topo.tests)
    assert topo.tests


@pytest.mark.parametrize("k", [1, 2, 40, 300])
def test_single(tmp_path, k):
    topo = load(tmp_path, generate.render(f"single,{k}"))
    assert kinds(topo) == Counter(host=k, switch=1)
    assert topo.segments["s1"].subnet.network_address == IPv4Address("10.0.0.0")
    assert topo.nodes["h1"].addresses[0].ip == IPv4Address("10.0.0.1")        # as in Mininet
    assert topo.nodes[f"h{k}"].addresses[0].ip == IPv4Address("10.0.0.0") + k
    assert len(topo.tests) == (0 if k == 1 else 2)


def l2_domain(topo) -> set[str]:
    """The segments' L2 domains (one when every switch is joined to the others)."""
    return {sg.domain for sg in topo.segments.values()}


def joins(topo) -> set[frozenset]:
    """Switch-to-switch veths, as {a, b} pairs."""
    return {frozenset((n.name, i.peer_node)) for n in topo.nodes.values() if n.kind == "switch"
            for i in n.ifaces if topo.nodes[i.peer_node].kind == "switch"}


@pytest.mark.parametrize("k,m", [(1, 1), (1, 2), (3, 1), (4, 2), (60, 1), (200, 3)])
def test_linear(tmp_path, k, m):
    """Mininet's LinearTopo: k L2 switches in a chain (joined bridge to bridge), one
    subnet, hosts h<i> (or h<j>s<i>) addressed .1, .2, ... in order, tests expecting ttl 64."""
    shape = f"linear:{k},{m}" if m > 1 else f"linear,{k}"
    topo = load(tmp_path, generate.render(shape))
    assert kinds(topo) == Counter(switch=k, host=k * m)
    assert len(topo.nodes) == generate.node_count(generate.parse_shape(shape))
    assert joins(topo) == {frozenset((f"s{i - 1}", f"s{i}")) for i in range(2, k + 1)}   # the chain
    assert l2_domain(topo) == {"s1"} and p2p_links(topo) == 0
    hosts = [f"h{i}" if m == 1 else f"h{j}s{i}" for i in range(1, k + 1) for j in range(1, m + 1)]
    subnet = topo.segments["s1"].subnet
    assert all(sg.subnet == subnet for sg in topo.segments.values())
    assert [topo.nodes[h].addresses[0].ip for h in hosts] == [subnet.network_address + x for x in
                                                             range(1, len(hosts) + 1)]
    assert topo.nodes[hosts[-1]].ifaces[0].peer_node == f"s{k}"
    if len(hosts) > 1:
        assert [t.ttl for t in topo.tests] == [64, 64] and (topo.tests[0].src, topo.tests[0].dst) == (hosts[0], hosts[-1])
    else:
        assert not topo.tests


@pytest.mark.parametrize("depth,fanout", [(1, 1), (1, 3), (2, 2), (3, 1), (3, 3), (4, 4), (2, 100)])
def test_tree(tmp_path, depth, fanout):
    """Mininet's TreeTopo: switches numbered depth-first, joined to their parent, one L2
    domain; the subnet holds every host (a /22 for 10,000 hosts)."""
    topo = load(tmp_path, generate.render(f"tree:{depth},{fanout}"))
    switches = sum(fanout ** i for i in range(depth))
    hosts = fanout ** depth
    assert kinds(topo) == Counter(host=hosts, switch=switches)
    assert len(joins(topo)) == switches - 1 and l2_domain(topo) == {"s1"}
    assert topo.segments["s1"].subnet.num_addresses >= hosts + 2
    assert topo.nodes[f"h{hosts}"].addresses[0].ip == IPv4Address("10.0.0.0") + hosts
    if depth == 2 and fanout == 2:          # Mininet's numbering: s1 the root, s2 and s3 below it
        assert joins(topo) == {frozenset(("s1", "s2")), frozenset(("s1", "s3"))}
        assert topo.nodes["h1"].ifaces[0].peer_node == "s2" and topo.nodes["h4"].ifaces[0].peer_node == "s3"
    if depth == 3 and fanout == 2:
        assert frozenset(("s2", "s3")) in joins(topo) and frozenset(("s1", "s5")) in joins(topo)
    assert all(t.ttl == 64 for t in topo.tests) and len(topo.tests) == (0 if hosts == 1 else 2)


def test_big_l2_shapes_fit_a_bridge_and_a_subnet(tmp_path):
    """A switch's ports (hosts, children, parent) stay within a Linux bridge's 1,023, and
    the one subnet holds every host."""
    topo = load(tmp_path, generate.render("tree:1,1022"))
    assert len(topo.nodes["s1"].ifaces) == 1022 and topo.segments["s1"].subnet.prefixlen == 22
    text = generate.render("linear:3,1021")
    assert "10.0.0.0/20" in text
    assert len(load(tmp_path, text).nodes["s2"].ifaces) == 1023


@pytest.mark.parametrize("k,m", [(1, 1), (1, 2), (3, 1), (4, 2), (60, 1)])
def test_linear_routed(tmp_path, k, m):
    shape = f"linear-routed:{k},{m}" if m > 1 else f"linear-routed,{k}"
    topo = load(tmp_path, generate.render(shape))
    assert kinds(topo) == Counter(router=k, host=k * m)
    assert p2p_links(topo) == (k - 1) + k * m
    for i in range(2, k + 1):          # the chain
        assert any(x.peer_node == f"s{i - 1}" for x in topo.nodes[f"s{i}"].ifaces)
    if k > 1:
        assert topo.tests[0].ttl == 64 - k        # one router per switch on the way
    assert all(a.ip in IPv4Network("10.0.0.0/16") for n in topo.nodes.values() for a in n.addresses)


@pytest.mark.parametrize("depth,fanout", [(1, 1), (1, 3), (2, 2), (3, 1), (3, 3), (4, 4)])
def test_tree_routed(tmp_path, depth, fanout):
    topo = load(tmp_path, generate.render(f"tree-routed:{depth},{fanout}"))
    switches = sum(fanout ** i for i in range(depth))
    bottom = fanout ** (depth - 1)
    assert kinds(topo) == Counter(host=fanout ** depth, switch=bottom, router=switches - bottom)
    assert len(topo.segments) == bottom
    # Mininet's numbering: switches depth-first from s1, hosts left to right from h1
    if depth == 2 and fanout == 2:
        assert topo.segments.keys() == {"s2", "s3"} and topo.segments["s2"].gateway == "s1"
        assert topo.nodes["h1"].ifaces[0].peer_node == "s2" and topo.nodes["h4"].ifaces[0].peer_node == "s3"
    if depth == 3 and fanout == 3:
        assert topo.tests[0].ttl == 61 and topo.tests[0].via == "s1"       # up two levels, down two


def test_clos_10k_plan_without_loading():
    """The issue's 10,208-node fabric: rendering is fast and the address plan is disjoint
    (the file's own validation at this size is measured, not unit-tested)."""
    text = generate.render("clos:8,100,100")
    subnets = [IPv4Network(line.split(":", 1)[1].strip()) for line in text.splitlines()
               if line.startswith("    subnet:")]
    assert len(subnets) == 100 and all(not a.overlaps(b) for i, a in enumerate(subnets) for b in subnets[i + 1:])
    assert not any(s.overlaps(IPv4Network(generate.LINK_POOL)) for s in subnets)
    assert text.count("\n      - h") == 10_000 and text.count("\n  - [leaf") == 800


# --- the file itself: header, readability, determinism, goldens ------------------------------

SMALL = {"clos": "clos:2,2,2", "cluster": "cluster:2,2,2", "single": "single,3", "linear": "linear:3",
         "tree": "tree,2,2", "linear-routed": "linear-routed:3", "tree-routed": "tree-routed,2,2"}


@pytest.mark.parametrize("kind", SMALL)
def test_header_and_readability(kind):
    cmd = f"nslab generate {SMALL[kind]} -o lab.yaml"
    text = generate.render(SMALL[kind], command=cmd, file="lab.yaml")
    head = text.splitlines()[:3]
    assert head[0] == "# Generated by nslab generate:" and head[1] == f"#   {cmd}"
    assert "nslab test lab.yaml" in text
    assert all(len(line) <= 120 for line in text.splitlines()), "no giant inline lines"


@pytest.mark.parametrize("shape", ["clos:3,5,40", "cluster:2,3,2", "single:200", "linear:5,2", "tree:3,3"])
def test_deterministic(shape):
    assert generate.render(shape) == generate.render(shape)


@pytest.mark.parametrize("kind", SMALL)
def test_golden(kind):
    got = generate.render(SMALL[kind], command=f"nslab generate {SMALL[kind]}")
    golden = GOLDEN / f"{kind}.yaml"
    if UPDATE:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(got, encoding="utf-8")
        return
    want = golden.read_text(encoding="utf-8")
    if got != want:
        pytest.fail("generated file differs from the golden one (NSLAB_UPDATE_GOLDEN=1 rewrites it):\n" +
                    "".join(difflib.unified_diff(want.splitlines(True), got.splitlines(True), str(golden), "now")))


def test_golden_files_load():
    for kind in SMALL:
        assert model.load(str(GOLDEN / f"{kind}.yaml")).tests


@pytest.mark.parametrize("name", ["0", "123", "1_000", "0x1f", "0o17", "no", "on", "off", "yes", "null",
                                  "2024-01-02", "1e3"])
def test_name_option_that_yaml_reads_as_something_else(tmp_path, name):
    """Lab names YAML would read as a number, a boolean, null or a date are written quoted
    (found by tests/test_generate_fuzz.py: `--name 0` wrote `name: 0`, a file nslab refused)."""
    assert load(tmp_path, generate.render("single:2", name=name)).name == name


def test_name_option(tmp_path):
    topo = load(tmp_path, generate.render("clos:1,2,1", name="fab_1"))
    assert topo.name == "fab_1"
    assert generate.default_name(generate.parse_shape("tree,2,3")) == "tree-2-3"
    assert generate.default_name(generate.parse_shape("linear:4")) == "linear-4"


# --- arguments -------------------------------------------------------------------------------

@pytest.mark.parametrize("text,shape", [
    ("clos:2,4,10", ("clos", (2, 4, 10))), ("clos,2,4,10", ("clos", (2, 4, 10))),
    ("single,5", ("single", (5,))), ("single:5", ("single", (5,))),
    ("linear:4", ("linear", (4, 1))), ("linear,4,2", ("linear", (4, 2))),
    ("tree,2,3", ("tree", (2, 3))), ("tree:2", ("tree", (2, 2))), ("cluster:1,2,3", ("cluster", (1, 2, 3))),
    ("linear-routed:4", ("linear-routed", (4, 1))), ("tree-routed,2,3", ("tree-routed", (2, 3))),
])
def test_parse_shape(text, shape):
    got = generate.parse_shape(text)
    assert (got.kind, got.args) == shape


@pytest.mark.parametrize("text,says", [
    ("clos:2,2", "clos takes SPINES,LEAVES,HOSTS"), ("clos:0,1,1", "SPINES must be at least 1"),
    ("clos:1,255,1", "LEAVES is at most 254"), ("clos:1,1,1001", "HOSTS is at most 1000"),
    ("clos:8,100,1000", "namespaces; nslab generates at most"), ("tree:x,2", "DEPTH must be a whole number"),
    ("tree:20,2", "namespaces"), ("linear-routed:61", "N is at most 60"),
    ("linear:2,1022", "M is at most 1021 (a switch's hosts and its two neighbours are ports of one Linux bridge"),
    ("tree:1,1023", "FANOUT is at most 1022"), ("linear:12501", "N is at most 12500"), ("linear:13000,1", "N is at most"),
    ("tree-routed:1,254", "FANOUT is at most 253"), ("linear-bridged:3", "unknown shape"), ("single", "single takes N"),
    ("mesh:3", "unknown shape"), ("", "unknown shape"), ("cluster:128,1,1", "RACKS is at most 127"),
    ("cluster:1,1,251", "PODS is at most 250"), ("single:-1", "whole number"), ("linear:1,2,3", "linear takes N[,M]"),
    # issue 18, hole 7: int() and isdigit() take other digits ('²' then failed in int(): a traceback)
    ("single:\u00b2", "N must be a whole number"), ("single:\u0663", "N must be a whole number"),
    ("tree:\uff12", "DEPTH must be a whole number"), pytest.param("single:" + "9" * 5000, "N is at most 1023", id="5000-digits"),
    ("single:0000000004", None), ("single:4\n", "contains a control character (\\n)"),
])
def test_bad_shapes(text, says):
    if says is None:            # leading zeros: still a number
        assert generate.parse_shape(text).args == (4,)
        return
    with pytest.raises(UsageError) as e:
        generate.parse_shape(text)
    assert says in str(e.value) and "\n" not in str(e.value) and e.value.exit_code == 2


@pytest.mark.parametrize("kw,says", [
    (dict(shape="cluster:2,2,2", backend="host-gw"), "every node must be on one L2 segment; use one rack "
                                                     "(cluster:1,4,2)"),
    (dict(shape="cluster:1,2,2", backend="flannel"), "use one of vxlan, host-gw, ipip, udp"),
    (dict(shape="clos:1,1,1", backend="vxlan"), "--backend applies to cluster shapes"),
    (dict(shape="single:2", serve="http"), "--serve applies to cluster shapes"),
    (dict(shape="cluster:1,1,1", serve="ftp"), "nslab can serve http"),
    (dict(shape="single:2", name="Big"), "a lab name is lowercase"),
    (dict(shape="single:2", name="x" * 33), "at most 32"),
])
def test_bad_options(kw, says):
    with pytest.raises(UsageError) as e:
        generate.render(**kw)
    assert says in str(e.value)


def nslab(*args, cwd):
    return subprocess.run([sys.executable, "-m", "nslab.cli", *args], capture_output=True, text=True, timeout=60,
                          cwd=cwd, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_cli_writes_file_with_the_exact_command(tmp_path):
    proc = nslab("generate", "tree,2,3", "--name", "t1", "-o", "t.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "t.yaml").read_text()
    assert text.splitlines()[1] == "#   nslab generate tree,2,3 --name t1 -o t.yaml"
    assert "wrote t.yaml" in proc.stderr and proc.stdout == ""
    assert model.load(str(tmp_path / "t.yaml")).name == "t1"
    out = nslab("generate", "single:2", cwd=tmp_path)           # no -o: standard output
    assert out.returncode == 0 and out.stdout.startswith("# Generated by nslab generate:")


@pytest.mark.parametrize("args", [["clos:2,2"], ["cluster:3,1,1", "--backend", "host-gw"], ["nope"],
                                  ["single:2", "-o", "no/such/dir/x.yaml"]])
def test_cli_errors_are_one_line(tmp_path, args):
    proc = nslab("generate", *args, cwd=tmp_path)
    assert proc.returncode == (1 if "-o" in args else 2)
    assert proc.stderr.startswith("nslab: ") and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert not list(tmp_path.iterdir())


def test_templates_ship_with_the_package():
    text = (REPO / "pyproject.toml").read_text()
    assert '"templates/*.yaml.j2"' in text
    shipped = {p.name for p in (REPO / "nslab" / "templates").glob("*.yaml.j2")}
    assert {f"{generate.TEMPLATES.get(k, k)}.yaml.j2" for k in generate.SHAPES} <= shipped


def test_a_shape_stands_for_a_file_wherever_a_topology_is_loaded(tmp_path):
    """`nslab up clos:2,2,2` (and validate, script, test): generated in memory, as
    `nslab generate` would write it; a file of that name still wins."""
    from nslab import lab
    topo = lab.load("clos:1,2,2")
    assert topo.name == "clos-1-2-2" and topo.file == "clos:1,2,2" and len(topo.nodes) == 9
    assert topo.doc.text == generate.render("clos:1,2,2")             # the text the run directory records
    assert lab.load("single:3", name="mine").name == "mine"
    with pytest.raises(UsageError, match="N is at most 1023"):
        lab.load("single:1024")
    with pytest.raises(UsageError, match="N must be a whole number"):      # validate, script, up: hole 7
        lab.load("single:\u00b2")
    with pytest.raises(UsageError, match="or a generated fabric: clos:2,4,10"):
        lab.load("nosuch")
    (tmp_path / "single:2").write_text("name: afile\nhosts: [a]\n")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert lab.load("single:2").name == "afile"
    finally:
        os.chdir(cwd)
    r = nslab("script", "single:2", cwd=tmp_path.parent)
    assert r.returncode == 0 and "ip netns add single-2.h1" in r.stdout, r.stderr


# --- what reaches the file is one line of text (issue 18, hole 4) -------------------------------

INJECTED = "\n<<: {routers: {evil: {image: busybox, command: 'touch pwned'}}}\n#"


@pytest.mark.parametrize("args,option", [
    (["single:2", "-o", f"d{INJECTED}/x.yaml"], "-o"),
    (["single:2", "-o", "d\u2028x.yaml"], "-o"),
    (["single:2", "--name", "lab\n"], "--name"),
    (["single:2\n"], "shape"),
    (["single:2", "-o", "x.yaml", "--name=lab\x1b[2J"], "--name"),
    (["cluster:1,1,1", "--backend", "udp\x85", "--backend", "udp", "-o", "x.yaml"], "argument"),  # the last wins
])
def test_cli_refuses_control_characters(tmp_path, args, option):
    """Issue 18: a newline in -o ended the header's comment line, and the YAML after it (a
    merge key adding a router that runs a command) validated.  Now: exit 2, one line naming
    the option, nothing written (the directory the path names exists: only the refusal
    stops the write)."""
    (tmp_path / f"d{INJECTED}").mkdir()
    proc = nslab("generate", *args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"nslab: {option} ") and proc.stderr.count("\n") == 1
    assert "control character" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.rglob("*")) == [f"d{INJECTED}"]


@pytest.mark.parametrize("bad", ["\n", "\r", "\r\n", "\x85", "\u2028", "\u2029", "\x0b", "\x0c", "\x1b", "\0",
                                 "\ufeff", "\udcff"])
def test_comment_values_stay_on_one_line(tmp_path, bad):
    """Defence in depth: whatever reaches the header (the command and the file name are
    printed inside comments) is one line there, even when no check refused it first."""
    neutral = generate.render("clos:1,2,2")
    evil = f"a{bad}{INJECTED}"
    text = generate.render("clos:1,2,2", command=f"nslab generate {evil}", file=evil)
    assert len(text.splitlines()) == len(neutral.splitlines())
    for got, want in zip(text.splitlines(), neutral.splitlines()):
        assert got.startswith("#") == want.startswith("#"), got
    path = tmp_path / "gen.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    from nslab.model import yamldoc
    assert yamldoc.load(str(path)).data == yamldoc.load("n.yaml", neutral).data


@pytest.mark.parametrize("shape, first, last", [("clos:2,12,2", "rack01", "rack12"), ("cluster:3,2,1", "rack01", "rack03")])
def test_the_header_names_racks_as_the_file_does(shape, first, last):
    """The comment said `segment rackN` where the file's segments are rack01..rack12."""
    text = generate.render(shape)
    header = " ".join(line[2:] for line in text.splitlines() if line.startswith("# "))
    assert f"Rack N is segment {first}..{last}, " in header, header
    segments = yaml.safe_load(text)["segments"]
    assert first in segments and last in segments
