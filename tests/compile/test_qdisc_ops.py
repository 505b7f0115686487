"""Link conditions through compile: one Qdisc op per shaped interface (plan data: string
pairs and the device's MTU), rendered by `nslab script` as the tc(8) command that sets what
apply sends, and encoded by the applier as apply/qdisc.py's message."""
from __future__ import annotations

import shlex

from nslab import model
from nslab import plan as P
from nslab.apply import qdisc
from nslab.apply.applier import Applier, Namespace
from nslab.compile import compile_topology
from nslab.compile.script import render, render_op
from nslab.model.units import Conditions

TOPO = """
hosts: [a, b]
links:
  - ends: [a, {node: b, mtu: 9000, conditions: {delay: 20ms, jitter: 5ms, loss: 0.5%}}]
    mtu: 9000
    conditions: {rate: 1gbit}
"""


def ops():
    return [op for op in compile_topology(model.load("q.yaml", text=TOPO)).ops if isinstance(op, P.Qdisc)]


def test_one_op_per_shaped_end_with_its_mtu():
    assert ops() == [
        P.Qdisc("q.a", "eth0", (("rate", "1Gbit"),), 9000),
        P.Qdisc("q.b", "eth0", (("rate", "1Gbit"), ("delay", "20ms"), ("jitter", "5ms"), ("loss", "0.5%"),), 9000),
    ]
    for op in ops():        # the pairs are plain strings and parse back to what was declared
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in op.conditions)
        assert Conditions.from_pairs(op.conditions).to_pairs() == op.conditions


def test_script_renders_tc_commands():
    a, b = ops()
    assert render_op(a) == ["ip netns exec q.a tc qdisc replace dev eth0 root tbf rate 1Gbit burst 500000b "
                            "latency 50ms"]       # bucket: 4 ms at 1 Gbit/s (more than a 9000-byte frame)
    assert render_op(b) == ["ip netns exec q.b tc qdisc replace dev eth0 root netem delay 20ms 5ms loss 0.5% "
                            "rate 1Gbit limit 1000"]
    assert "tc qdisc replace dev eth0 root netem" in render(compile_topology(model.load("q.yaml", text=TOPO)))
    assert shlex.split(render_op(b)[0])[0:3] == ["ip", "netns", "exec"]


def test_applier_encodes_qdisc_ops_as_qdisc_py_does():
    ns = Namespace(name="q.a", fd=-1, sock=None, ifindex={"eth0": 7})
    for op in ops():
        (msg,) = Applier().encode(ns, op)
        assert msg == qdisc.encode_set(7, Conditions.from_pairs(op.conditions), op.mtu)


def test_qdisc_ops_survive_the_plan_record():
    plan = compile_topology(model.load("q.yaml", text=TOPO))
    again = P.from_json(P.to_json(plan))
    assert [op for op in again.ops if isinstance(op, P.Qdisc)] == ops()
