"""A converge's deletes (Applier.encode_undo): each is the add's message with the delete
type and plain request+ack flags, held byte for byte against pyroute2 encoding the same
fields as RTM_DELADDR / RTM_DELROUTE / RTM_DELNEIGH (the reference encoder of
test_netlink_encoding.py with its message types and flags switched)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from nslab import plan as P
from nslab.apply import applier as A
from nslab.apply import qdisc

pytest.importorskip("pyroute2")
_spec = importlib.util.spec_from_file_location("netlink_reference", Path(__file__).with_name("test_netlink_encoding.py"))
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)


@pytest.fixture
def deleting(monkeypatch):
    """The reference encoder, sending deletes: RTM_DEL*, NLM_F_REQUEST | NLM_F_ACK."""
    for name, value in (("RTM_NEWADDR", 21), ("RTM_NEWROUTE", 25), ("RTM_NEWNEIGH", 29), ("CREATE", A.CHANGE),
                        ("NLM_F_CREATE", 0), ("NLM_F_REPLACE", 0)):
        monkeypatch.setattr(ref, name, value)
    return ref._applier(ref.Pyroute2Reference)


UNDONE = [op for op in ref.OPS if isinstance(op, (P.Addr, P.Route, P.Neigh, P.Fdb))]


def test_every_delete_matches_pyroute2(deleting):
    ours = ref._applier(A.Applier)
    for ap in (ours, deleting):           # the devices the ops name
        for dev in ("br0", "br-veth0", "v1_r", "flannel.1"):
            ap.namespaces["a"].allocate(dev)
        ap.namespaces["b"].allocate("veth0")
    assert len(UNDONE) >= 10
    for op in UNDONE:
        got = [bytes(m) for m in ours.encode_undo(ours.namespaces[op.ns], op)]
        want = [bytes(m) for m in deleting.encode(deleting.namespaces[op.ns], op)]
        assert got == want, op
        assert got[0][4] in (21, 25, 29)         # a delete, never the add


def test_qdisc_undo_is_the_root_qdisc_delete():
    ours = ref._applier(A.Applier)
    ours.namespaces["a"].allocate("eth0")
    op = P.Qdisc(ns="a", dev="eth0", conditions=(("delay", "20ms"),))
    assert [bytes(m) for m in ours.encode_undo(ours.namespaces["a"], op)] == [bytes(qdisc.encode_clear(2))]


def test_what_has_no_inverse_is_refused():
    ours = ref._applier(A.Applier)
    with pytest.raises(A.ApplyError, match="cannot undo"):
        ours.encode_undo(ours.namespaces["a"], P.Up(ns="a", dev="lo"))
