"""Hostile records (issue 18, "Also"): whatever state.json, plan.json (its digest updated in
state.json too, as anyone who can write one can write the other) and namespaces.log say,
reading them, the commands that look up a node's namespace (exec, shell, link, capture,
show, cli), ls, rewire's name check and `down` either refuse with one sentence (an
NslabError) or act on the lab's own verified objects only -- never a traceback, never
anything outside.

Property-based (hypothesis), no root: a lab's record is built in a temporary run
directory from a shipped topology; files in a temporary /run/netns stand for namespaces
(their device and inode are the identities, state._netns_facts says their file system is
nsfs); one of them is a hard link to the file standing for the host's namespace.  Beside
the lab's own stand-ins sit a foreign namespace, a lab-named one nslab did not make, a
foreign /etc/netns link and a host process.  `down` (state.destroy) runs for real on that:
it unlinks what it verified (netns.umount is a no-op here); which processes it would stop
and which containers it would remove are recorded instead of done.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nslab import lab as labmod, model, plan as P, state
from nslab.apply import containers, netns
from nslab.cli import lab_backend
from nslab.compile import compile_topology
from nslab.errors import NslabError
from nslab.runtime import agent

ROOT = Path(__file__).resolve().parent.parent
LAB = "fz"
TOPOLOGY = model.load(str(ROOT / "topologies" / "containers.yaml"), name=LAB)   # two of its nodes are containers
OWN = [n.ns for n in TOPOLOGY.nodes.values()]   # the lab's namespaces (stand-ins, recorded)
CONTAINER_NS = {op.ns for op in compile_topology(TOPOLOGY).ops if isinstance(op, P.Netns) and op.container}
FOREIGN = ["other.x", "fz.ghost", "fz.host"]    # someone else's; fz.host is the host's under a lab name
SCALE = float(os.environ.get("NSLAB_FUZZ_SCALE", "1"))

# symbolic values, replaced by each case's real identities, PIDs and paths
TOKENS = [f"@id:{ns}" for ns in OWN] + ["@id:other.x", "@id:fz.ghost", "@id:host", "@pid:outside",
          "@start:outside", "@pid:inside", "@start:inside", "@dir", "@victim"]
NAMES = OWN + ["fz.ghost", "fz.host", "other.x", "fz.ns1\n", "fz.", "fz..", "../../etc/passwd",
         "/etc/passwd", "fz.a/b", "ns1", "ns2", "fz", "", ".", "nslab.runtime.agent", "-m", "veth", "br0", "lo"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2 ** 64), 2 ** 64), st.floats(),
                    st.sampled_from(NAMES + TOKENS), st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.one_of(st.sampled_from(NAMES + TOKENS), st.text(max_size=8)),
                                                 inner, max_size=4)), max_leaves=10)
SPLICES = ["{", "}", "[", "]", ",", ":", '"', "\\", "\n", "\0", "null", "1e999", "-0", "[" * 200, "\ud800",
           "é", '"ns_ids": {"fz.host": "@id:host"}']


# ---- one lab, rebuilt for every case ------------------------------------------------------

class World:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.run, self.ns_dir, self.hosts_dir = tmp / "run", tmp / "netns", tmp / "etc-netns"
        self.host = tmp / "host-netns"                   # stands for the host's namespace
        self.victim = tmp / "victim"
        self.outside = _sleep()                          # a host process (the lab's namespaces map it nowhere)
        self.inside = _sleep()                           # lives in OWN[0] (process_namespace says so)
        self.topo_text, self.plan = TOPOLOGY.doc.text, compile_topology(TOPOLOGY)
        self.nodes = {n.name: n.ns for n in TOPOLOGY.nodes.values()}

    def close(self) -> None:
        for p in (self.outside, self.inside):
            p.kill()
            p.wait()

    def reset(self) -> None:
        for d in (self.run, self.ns_dir, self.hosts_dir):
            shutil.rmtree(d, ignore_errors=True)
        for d in (self.run, self.ns_dir, self.hosts_dir):
            d.mkdir(mode=0o755)
        self.host.write_text("")
        self.victim.write_text("keep me")
        for name in OWN + ["other.x", "fz.ghost"]:
            (self.ns_dir / name).write_text("")
        os.link(self.host, self.ns_dir / "fz.host")
        os.symlink(str(self.tmp), self.hosts_dir / OWN[0])                   # someone else's /etc/netns link
        self.ids = {name: _ident(self.ns_dir / name) for name in OWN + ["other.x", "fz.ghost"]}
        self.ids["host"] = _ident(self.host)

    def token(self, value):
        """A drawn value with its symbols made real."""
        if isinstance(value, list):
            return [self.token(v) for v in value]
        if isinstance(value, dict):              # keys stay strings (an identity is a list)
            return {k if isinstance(self.token(k), list) else self.token(k): self.token(v) for k, v in value.items()}
        if not isinstance(value, str) or not value.startswith("@"):
            return value
        kind, _, what = value[1:].partition(":")
        if kind == "id":
            return self.ids[what]
        if kind in ("pid", "start"):
            p = getattr(self, what)
            return p.pid if kind == "pid" else state.process_start_time(p.pid)
        return str(self.run / LAB) if kind == "dir" else str(self.victim)

    def build(self) -> None:
        """The record `up` leaves: claimed, planned, built, identities logged, processes."""
        state.claim(LAB, "containers.yaml")
        state.release(LAB)
        plan_json = P.to_json(self.plan)

        def facts(s):
            s.namespaces = list(self.plan.namespaces)
            s.nodes = dict(self.nodes)
            s.containers = containers.intended(self.plan, LAB)
            s.info = dict(self.plan.notes)
            s.processes = [state.Process(p.pid, state.process_start_time(p.pid), "agent")
                           for p in (self.inside, self.outside)]
            s.status = "up"
        state.update(LAB, facts)
        state.record_built(LAB, self.topo_text, plan_json)
        state.record_namespaces(LAB, {ns: self.ids[ns] for ns in OWN})

    def foreign_intact(self) -> list[str]:
        problems = [f"{n} went" for n in FOREIGN if not (self.ns_dir / n).exists()]
        problems += ["the host's identity changed"] * (_ident(self.ns_dir / "fz.host") != self.ids["host"])
        problems += ["/etc/netns link went"] * (not os.path.islink(self.hosts_dir / OWN[0]))
        problems += ["victim went"] * (self.victim.read_text() != "keep me")
        return problems


def _ident(path) -> list[int]:
    s = os.stat(path)
    return [s.st_dev, s.st_ino]


def _sleep() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = World(tmp_path_factory.mktemp("records"))
    yield w
    w.close()


@pytest.fixture
def sandbox(world, monkeypatch):
    """Everything state and lab reach, inside the world; what down would stop or remove, recorded."""
    monkeypatch.setattr(state, "RUN_DIR", str(world.run))
    monkeypatch.setattr(state, "HOSTS_DIR", str(world.hosts_dir))
    monkeypatch.setattr(state, "HOSTS_DIR_MARK", str(world.hosts_dir / ".made-by-nslab"))
    monkeypatch.setattr(netns, "NETNS_RUN_DIR", str(world.ns_dir))
    monkeypatch.setattr(netns, "umount", lambda target: None)
    monkeypatch.setattr(state, "_netns_facts", lambda: (os.stat(world.ns_dir).st_dev, [world.ids["host"]]))
    monkeypatch.setattr(state, "process_namespace",
                        lambda pid: world.ids[OWN[0]] if pid == world.inside.pid else
                        world.ids["host"] if pid == world.outside.pid else None)
    world.stopped, world.removed_containers = [], []
    monkeypatch.setattr(state, "stop_processes", lambda procs: world.stopped.extend(procs))
    monkeypatch.setattr(containers, "owned", lambda lab, run_dir, recorded: [])
    monkeypatch.setattr(containers, "remove", lambda found: world.removed_containers.extend(found))
    return world


# ---- mutations --------------------------------------------------------------------------------

def _spots(data):
    """(container, key) of every value inside a JSON document."""
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for key, value in list(items):
        yield data, key
        yield from _spots(value)


@st.composite
def edits(draw):
    """A function that changes a parsed JSON document 1-4 times (values replaced, deleted,
    inserted, keys renamed), or None to leave it."""
    ops = draw(st.lists(st.tuples(st.integers(0, 10 ** 6), st.sampled_from(["replace", "delete", "insert", "rename"]),
                                  values, st.one_of(st.sampled_from(NAMES + TOKENS), st.text(max_size=8))),
                        min_size=1, max_size=4))

    def apply(data, w: World):
        for pick, op, value, key in ops:
            spots = [(None, None)] + list(_spots(data))
            parent, last = spots[pick % len(spots)]
            value, key = w.token(value), w.token(key) if not key.startswith("@id") else key
            if parent is None:                  # the document itself
                if op == "replace":
                    data = value
                continue
            if op == "replace":
                parent[last] = value
            elif op == "delete":
                del parent[last]
            elif op == "rename" and isinstance(parent, dict) and isinstance(key, str):
                parent[key] = parent.pop(last)
            elif op == "insert" and isinstance(parent[last], dict) and isinstance(key, str):
                parent[last][key] = value
            elif op == "insert" and isinstance(parent[last], list):
                parent[last].append(value)
        return data
    return apply


@st.composite
def aimed(draw):
    """Edits aimed at what steers commands: a node's namespace, a namespace's identity, a
    process, a container, a link (state.json); an op's namespace, a node made a container,
    a veth's other end (plan.json).  Applied to whichever of the two documents it is given."""
    names = st.sampled_from(NAMES + FOREIGN)
    ops = draw(st.lists(st.one_of(
        st.tuples(st.just("nodes"), st.sampled_from(sorted(TOPOLOGY.nodes) + ["x"]), names),
        st.tuples(st.just("ns_ids"), names, st.one_of(st.sampled_from(TOKENS), values)),
        st.tuples(st.just("processes"), st.sampled_from(["outside", "inside"]), st.sampled_from(["agent", "x"])),
        st.tuples(st.just("containers"), st.sampled_from(sorted(TOPOLOGY.nodes)), st.one_of(st.none(), names)),
        st.tuples(st.just("files"), names, st.just(None)),
        st.tuples(st.just("op.ns"), st.integers(0, 10 ** 6), names),
        st.tuples(st.just("op.container"), st.integers(0, 10 ** 6), st.sampled_from(["nslab/busybox", "x"])),
        st.tuples(st.just("op.peer"), st.integers(0, 10 ** 6), names)), min_size=1, max_size=3))

    def apply(data, w: World):
        for kind, a, b in ops:
            if not isinstance(data, dict):
                break
            if kind in ("nodes", "ns_ids") and "file" in data:
                data.setdefault(kind, {})[a] = w.token(b)
            elif kind == "processes" and "file" in data:
                p = getattr(w, a)
                data.setdefault(kind, []).append({"pid": p.pid, "start_time": state.process_start_time(p.pid),
                                                  "what": b})
            elif kind == "containers" and "file" in data:
                data.setdefault(kind, []).append({"node": a, "name": f"nslab.fz.{a}", "id": b})
            elif kind == "files" and "file" in data:
                data.setdefault(kind, []).append(os.path.join(str(w.hosts_dir), a))
            elif kind.startswith("op.") and isinstance(data.get("ops"), list):
                # op.ns: only ops rewire reads (those in or reaching a container node's namespace)
                fit = {"op.ns": lambda o: o.get("ns") in CONTAINER_NS or _peer_ns(o) in CONTAINER_NS,
                       "op.container": lambda o: o.get("op") == "Netns",
                       "op.peer": lambda o: isinstance(o.get("peer"), dict)}[kind]
                candidates = [o for o in data["ops"] if isinstance(o, dict) and fit(o)]
                if not candidates:
                    continue
                op = candidates[a % len(candidates)]
                if kind == "op.ns":
                    op["ns"] = b
                elif kind == "op.container":
                    op["container"] = {"image": b}
                else:
                    op["peer"]["ns"] = b
        return data
    return apply


def _peer_ns(op: dict):
    return op["peer"].get("ns") if isinstance(op.get("peer"), dict) else None


@st.composite
def text_edits(draw):
    """Cut and splice the text itself (None: leave it)."""
    cuts = draw(st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(0, 40), st.sampled_from(SPLICES)),
                         max_size=2))

    def apply(text: str) -> str:
        for at, length, splice in cuts:
            at %= len(text) + 1
            text = text[:at] + splice + text[at + length:]
        return text
    return apply


def _write(path: Path, text: str) -> None:
    path.write_bytes(text.encode("utf-8", "surrogatepass"))


def _rewrite_json(path: Path, change, w: World) -> str:
    data = change(json.loads(path.read_text()), w)
    return json.dumps(data, ensure_ascii=False)


# ---- the property -----------------------------------------------------------------------------

COMMON = dict(deadline=None, database=None, print_blob=True, suppress_health_check=list(HealthCheck))


def _one_sentence(e: NslabError) -> None:
    text = str(e)
    assert text and "\n" not in text and "Traceback" not in text, repr(text)


def _observe(w: World) -> None:
    """What every command that reads a record does with it: refuse in one sentence, or
    use only the lab's own verified namespaces."""
    try:
        st_ = state.load(LAB)
    except NslabError as e:
        _one_sentence(e)
        return
    if st_ is None:
        return
    own = {ns: w.ids[ns] for ns in OWN}
    assert all(own.get(ns) == ident for ns, ident in state.verified_ids(st_).items()), state.verified_ids(st_)
    lab_backend(st_)
    agent.health(st_)
    for node in list(st_.nodes)[:6] + ["ns1", "nosuch"]:
        try:
            ns = labmod.node_namespace(LAB, node, st_)
        except NslabError as e:
            _one_sentence(e)
            continue
        assert ns in own and state.verified_ids(st_, [ns]) == {ns: own[ns]}, (node, ns)
    for what in (labmod.topology, labmod.applied_plan):
        try:
            what(LAB, st_)
        except NslabError as e:
            _one_sentence(e)
    try:
        plan = labmod.applied_plan(LAB, st_)
    except NslabError:
        return
    specs = [op for op in plan.ops if isinstance(op, P.Netns) and op.container is not None]
    try:
        touching = {op.ns: containers.ops_touching(plan, op.ns) for op in specs}
        labmod._check_rewire_names(st_, specs, touching)
    except NslabError as e:
        _one_sentence(e)
        return
    for op in specs:            # rewire goes ahead: only with the lab's names and namespaces
        assert state.lab_namespace(LAB, op.ns) and op.ns in st_.ns_ids and st_.nodes.get(op.node) == op.ns
        for o in touching[op.ns]:
            for ns in {o.ns, getattr(getattr(o, "peer", None), "ns", None)} - {None, op.ns}:
                assert ns in own, ns


def _down(w: World) -> None:
    out = state.destroy(LAB)
    assert set(out.removed) <= set(OWN), out.removed
    assert all("\n" not in k for k in out.kept), out.kept
    assert w.outside.pid not in [p.pid for p in w.stopped], "down would stop a host process"
    assert not w.removed_containers
    assert w.foreign_intact() == []
    assert not (w.run / LAB).exists()


def _case(w: World, state_edit, plan_edit, log_lines, text_edit, fix_digest: bool) -> None:
    w.reset()
    w.build()
    d = w.run / LAB
    if plan_edit is not None:
        text = _rewrite_json(d / state.PLAN, plan_edit, w)
        _write(d / state.PLAN, text)
        if fix_digest:
            data = json.loads((d / state.STATE).read_text())
            data["built"][state.PLAN] = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
            _write(d / state.STATE, json.dumps(data))
    if state_edit is not None:
        _write(d / state.STATE, _rewrite_json(d / state.STATE, state_edit, w))
    if text_edit is not None:
        _write(d / state.STATE, text_edit((d / state.STATE).read_text()))
    if log_lines is not None:
        _write(d / state.NS_LOG, "".join(json.dumps(w.token(line)) + "\n" for line in log_lines))
    _observe(w)
    _down(w)


@settings(max_examples=int(150 * SCALE), **COMMON)
@given(state_edit=edits() | aimed(), plan_edit=st.none() | edits() | aimed(), fix_digest=st.booleans())
def test_edited_state_and_plan_steer_nothing_outside(sandbox, state_edit, plan_edit, fix_digest):
    _case(sandbox, state_edit, plan_edit, None, None, fix_digest)


@settings(max_examples=int(100 * SCALE), **COMMON)
@given(plan_edit=edits() | aimed())
def test_an_edited_plan_with_its_digest_steers_nothing_outside(sandbox, plan_edit):
    _case(sandbox, None, plan_edit, None, None, True)


@settings(max_examples=int(100 * SCALE), **COMMON)
@given(log_lines=st.lists(values, min_size=1, max_size=3), text_edit=st.none() | text_edits())
def test_a_hostile_namespaces_log_or_cut_record_steers_nothing_outside(sandbox, log_lines, text_edit):
    _case(sandbox, None, None, log_lines, text_edit, False)


def test_the_fuzzed_record_is_a_working_one(sandbox):
    """The seed the cases mutate: its own namespaces verify, its nodes resolve, and down
    removes them and stops the process inside, not the one outside."""
    w = sandbox
    w.reset()
    w.build()
    st_ = state.load(LAB)
    assert state.verified_ids(st_) == {ns: w.ids[ns] for ns in OWN}
    assert labmod.node_namespace(LAB, "client", st_) == "fz.client"
    _observe(w)
    out = state.destroy(LAB)
    assert sorted(out.removed) == sorted(OWN) and [p.pid for p in w.stopped] == [w.inside.pid]
    assert w.foreign_intact() == []


# ---- what the cases above found, kept --------------------------------------------------------

def test_found_ls_with_a_backend_that_is_not_a_name():
    """`nslab ls` on a record whose info holds a list as a backend: TypeError (unhashable)."""
    st_ = state.LabState(lab=LAB, file="x", info={"master": {"backend": ["vxlan"]}, "node1": {"backend": "udp"}})
    assert lab_backend(st_) == "udp"


def test_found_rewire_with_a_veth_without_its_other_end(sandbox):
    """A recorded plan (digest updated) with a veth whose peer is null: rewire's
    containers.ops_touching raised AttributeError."""
    w = sandbox

    def no_peer(data, _w):
        next(op for op in data["ops"] if _peer_ns(op) in CONTAINER_NS)["peer"] = None
        return data
    _case(w, None, no_peer, None, None, True)
