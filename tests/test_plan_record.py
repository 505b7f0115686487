"""plan.to_json / plan.from_json: the plan `up` records in a lab's run directory.

Round trips over every op of every shipped topology's plan (as applied with and without
kernel ipip), a generated instance of every op type plan.py defines (so an op added there is
covered without an edit here), and refusals: a record read back from disk is input.
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path

import pytest

from nslab import model
from nslab import plan as P
from nslab.compile import compile_topology
from nslab.compile.kernel import fit_to_kernel

REPO = Path(__file__).resolve().parent.parent
SHIPPED = sorted((REPO / "topologies").glob("*.yaml")) + sorted((REPO / "tests" / "golden").glob("*.yaml"))


@pytest.fixture(autouse=True)
def _no_ipip_override(monkeypatch):
    monkeypatch.delenv("NSLAB_IPIP", raising=False)


def applied(path: Path, ipip: str) -> P.Plan:
    plan = compile_topology(model.load(str(path)))
    fit_to_kernel(plan, ipip)
    return plan


def same(a: P.Plan, b: P.Plan) -> None:
    assert (b.lab, b.hosts, b.notes) == (a.lab, a.hosts, a.notes)
    assert len(b.ops) == len(a.ops)
    for x, y in zip(a.ops, b.ops):
        assert type(y) is type(x) and y == x
        assert hash(y) == hash(x)          # tuples again, not lists: frozen ops stay hashable


@pytest.mark.parametrize("ipip", ["absent", "loaded"])
@pytest.mark.parametrize("path", SHIPPED, ids=[f"{p.parent.name}/{p.stem}" for p in SHIPPED])
def test_round_trip_of_shipped_plans(path: Path, ipip: str):
    plan = applied(path, ipip)
    text = P.to_json(plan)
    same(plan, P.from_json(text))
    assert P.to_json(P.from_json(text)) == text          # and the text is stable


def test_shipped_plans_cover_the_ops_they_can_produce(monkeypatch):
    """The shipped labs (with a mixed kernel/userspace ipip lab for TxChecksum) produce these
    op types; each round-trips above.  An op type none of them produces is covered by
    test_every_op_type_round_trips."""
    seen = {type(op).__name__ for p in SHIPPED for ipip in ("absent", "loaded") for op in applied(p, ipip).ops}
    monkeypatch.setenv("NSLAB_IPIP", "userspace:ns1")
    mixed = applied(REPO / "topologies" / "diy-ipip.yaml", "loaded")
    same(mixed, P.from_json(P.to_json(mixed)))
    seen |= {type(op).__name__ for op in mixed.ops}
    assert {"Netns", "Sysctl", "Link", "BridgePort", "Addr", "Up", "Route", "Neigh", "Fdb", "Serve", "Daemon",
            "TxChecksum"} <= seen


def sample(hint, n: int = 0):
    """A value of annotated type `hint` (not its default), to build any op generically."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return sample(next(a for a in args if a is not type(None)), n)
    if hint is bool:
        return n % 2 == 0
    if hint is int:
        return 1000 + n
    if hint is float:
        return 0.5 + n
    if hint is str:
        return f"x{n}"
    if dataclasses.is_dataclass(hint):
        hints = typing.get_type_hints(hint, vars(P))
        return hint(**{f.name: sample(hints[f.name], n + i) for i, f in enumerate(dataclasses.fields(hint))})
    if hint is tuple:
        return (("key", "value"), ("n", n), ("flag", True), ("none", None))
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(sample(args[0], n + i) for i in range(2))
        return tuple(sample(a, n + i) for i, a in enumerate(args))
    if hint is list or origin is list:
        return [sample(args[0], n) if args else "a"]
    if hint is dict or origin is dict:
        return {"k": sample(args[1], n) if args else "v"}
    raise AssertionError(f"plan.py uses a field type the record cannot hold: {hint}")


@pytest.mark.parametrize("name", sorted(P.op_types()))
def test_every_op_type_round_trips(name: str):
    cls = P.op_types()[name]
    op = sample(cls)
    plan = P.Plan(lab="lab", ops=[op], hosts={"a": "10.0.0.1"}, notes={"a": {"subnet.env": "X=1\n"}})
    same(plan, P.from_json(P.to_json(plan)))


@pytest.mark.parametrize("name", sorted(set(P._classes()) - {"Plan"}))
def test_frozen_classes_compare_hash_and_show_as_generated_ones_would(name: str):
    """plan.Frozen's methods (from __dict__) against @dataclass(frozen=True)'s: equality
    and hash over the fields in field order, repr `Class(field=value, ...)`; still frozen."""
    cls = P._classes()[name]
    op = sample(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    values = tuple(getattr(op, f) for f in fields)
    assert hash(op) == hash(values)
    assert repr(op) == f"{name}({', '.join(f'{f}={v!r}' for f, v in zip(fields, values))})"
    assert op == dataclasses.replace(op) and not op != dataclasses.replace(op)
    assert op != values and (op == object()) is False
    other = dataclasses.replace(op, **{fields[0]: "changed"})
    assert op != other and not op == other
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(op, fields[0], "x")


def test_frozen_classes_of_other_modules_compare_hash_and_show_as_generated_ones_would():
    """The other plan.Frozen classes (backends', images', qdisc's), on real instances."""
    from nslab import backends
    from nslab.apply import images, qdisc
    values = backends.all() + [backends.Config(), backends.DIRECT] + list(images.IMAGES.values())
    values += [v for b in backends.all() for v in (b.wire, b.dataplane) if v is not None]
    values.append(qdisc.Qdisc(dev="eth0", ifindex=2, kind="tbf", handle=0x10000, conditions=None))
    assert {type(v) for v in values} == set(P.Frozen.__subclasses__()) - set(P._classes().values())
    for v in values:
        fields = [f.name for f in dataclasses.fields(v)]
        got = tuple(getattr(v, f) for f in fields)
        assert hash(v) == hash(got) and v == dataclasses.replace(v) and v != got
        assert repr(v) == f"{type(v).__qualname__}({', '.join(f'{f}={x!r}' for f, x in zip(fields, got))})"


def test_op_types_are_the_dataclasses_with_a_stage():
    ops = P.op_types()
    assert "Plan" not in ops and "Nexthop" not in ops and "Peer" not in ops and "Container" not in ops
    assert all(hasattr(cls, "stage") for cls in ops.values())


# ---- refusals ------------------------------------------------------------------------------

def record(**change) -> str:
    plan = applied(REPO / "topologies" / "diy-veth.yaml", "absent")
    data = json.loads(P.to_json(plan))
    data.update(change)
    return json.dumps(data)


def with_op(i: int, **change) -> str:
    data = json.loads(record())
    data["ops"][i].update(change)
    for k, v in change.items():
        if v is ...:
            del data["ops"][i][k]
    return json.dumps(data)


def first(kind: str) -> int:
    return next(i for i, op in enumerate(json.loads(record())["ops"]) if op["op"] == kind)


@pytest.mark.parametrize("text,why", [
    ("", "Expecting value"),
    ("[]", "not a JSON object"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    (record(format=2), "format is 2"),
    (record(colour="red"), "key this nslab does not know: 'colour'"),
    (record(ops={}), "'ops' is not a list"),
    (record(lab=7), "lab is a number, not str"),
    (record(hosts={"a": 1}), "hosts.a is a number, not str"),
    (record(ops=["Netns"]), "op 1 is a string, not an object"),
    (record(ops=[{"ns": "a.b", "node": "b"}]), "op 1 names no op type"),
    (record(ops=[{"op": "Reboot", "ns": "a.b"}]), "op 1 is of an unknown type 'Reboot'"),
    (record(ops=[{"op": "Plan", "lab": "x"}]), "unknown type 'Plan'"),
    (record(ops=[{"op": "Nexthop", "via": None, "dev": "eth0"}]), "unknown type 'Nexthop'"),
])
def test_refused(text: str, why: str):
    with pytest.raises(ValueError) as e:
        P.from_json(text)
    assert why in str(e.value) and "\n" not in str(e.value)


def test_refused_ops():
    link = first("Link")
    cases = [
        (with_op(link, mtu="1500"), f"op {link + 1} (Link).mtu is a string, not int"),
        (with_op(link, mtu=True), "(Link).mtu is a boolean, not int"),
        (with_op(link, mtu=...), f"op {link + 1} (Link) has no 'mtu'"),
        (with_op(link, shell="rm -rf /"), "(Link) has a field Link does not have: 'shell'"),
        (with_op(link, peer={"ns": "a", "name": "b", "mtu": 1, "mac": "m", "colour": 1}),
         "(Link).peer has a field Peer does not have: 'colour'"),
        (with_op(link, peer=[1]), "(Link).peer is a list, not Peer"),
        (with_op(link, vxlan=[["id", {"x": 1}]]), "(Link).vxlan[0][1] is an object, not text, a number"),
        (with_op(0, container={"image": 5}), "(Netns).container.image is a number, not str"),
        (with_op(0, stage=0), "(Netns) has a field Netns does not have: 'stage'"),
    ]
    for text, why in cases:
        with pytest.raises(ValueError) as e:
            P.from_json(text)
        assert why in str(e.value) and "\n" not in str(e.value), (why, str(e.value))


def test_route_nexthops_are_typed():
    plan = applied(REPO / "topologies" / "diy-ip-forward.yaml", "absent")
    data = json.loads(P.to_json(plan))
    i = next(i for i, op in enumerate(data["ops"]) if op["op"] == "Route")
    data["ops"][i]["nexthops"] = [{"via": 10, "dev": "eth0"}]
    with pytest.raises(ValueError, match=r"\(Route\)\.nexthops\[0\]\.via is a number"):
        P.from_json(json.dumps(data))
    data["ops"][i]["nexthops"] = [{"via": None, "dev": "eth0"}]
    route = P.from_json(json.dumps(data)).ops[i]
    assert route.nexthops == (P.Nexthop(via=None, dev="eth0"),)


# ---- read back beside a plan compiled now (a converge: plan.from_json_lines) -----------------

def test_lines_known_are_the_known_ops_and_the_rest_is_decoded():
    plan = applied(REPO / "topologies" / "flannel-vxlan.yaml", "absent")
    text, lines = P.to_json(plan), P.op_lines(plan)
    assert text == P.to_json(plan, lines)
    half = dict(list(zip(lines, plan.ops))[::2])
    back, back_lines = P.from_json_lines(text, half)
    same(plan, back)
    assert back_lines == lines
    assert [b is a for a, b in zip(plan.ops, back.ops)] == [i % 2 == 0 for i in range(len(lines))]
    back, _ = P.from_json_lines(text, {})
    same(plan, back)


def test_lines_refused_as_from_json_refuses():
    """A line the plan compiled now does not have is input: validated as from_json does, with
    the same sentence; a text not laid out as to_json writes it is read whole."""
    plan = applied(REPO / "topologies" / "diy-veth.yaml", "absent")
    text, lines = P.to_json(plan), P.op_lines(plan)
    known = dict(zip(lines, plan.ops))
    link = first("Link")
    bad = lines[link].replace('"mtu":1500', '"mtu":"1500"')
    assert bad != lines[link]
    for tampered in (text.replace(lines[link], bad), text.replace(lines[0], '{"op": "Reboot", "ns": "a.b"}'),
                     text.replace(lines[0], '{"op": "Netns",\n"ns": "x.y", "node": "y", "colour": 1}'),
                     text.replace(lines[0], "[" * 100_000 + "]" * 100_000),
                     text.replace('"format": 1', '"format": 2')):
        with pytest.raises(ValueError) as whole:
            P.from_json(tampered)
        with pytest.raises(ValueError) as by_lines:
            P.from_json_lines(tampered, known)
        assert str(by_lines.value) == str(whole.value)
    relaid = json.dumps(json.loads(text), indent=1)
    back, back_lines = P.from_json_lines(relaid, known)
    same(plan, back)
    assert back_lines == lines
