"""What a lab built, read back from its record (no root: a run directory under tmp_path).

lab.topology() parses the text `up` recorded (never the user's file, and without the
machine limits validate/up check); lab.applied_plan() returns the recorded plan; a record
that was changed, or never written, is refused in one sentence."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from nslab import lab as labmod
from nslab import model, state
from nslab import plan as P
from nslab.compile import compile_topology
from nslab.errors import TopologyError, UsageError
from nslab.model import limits

FORWARD = Path(__file__).resolve().parent.parent / "topologies" / "diy-ip-forward.yaml"


@pytest.fixture
def recorded(tmp_path, monkeypatch):
    """Lab `rec` as `up` records it (claim, then record_built), from a file that is then
    edited; returns (file, plan)."""
    monkeypatch.setattr(state, "RUN_DIR", str(tmp_path / "run"))
    monkeypatch.delenv("NSLAB_IPIP", raising=False)
    file = tmp_path / "forward.yaml"
    file.write_text(FORWARD.read_text())
    topo = model.load(str(file), name="rec")
    plan = labmod.plan_for_this_kernel(topo)
    state.claim("rec", str(file))
    try:
        state.record_built("rec", topo.doc.text, P.to_json(plan))
    finally:
        state.release("rec")
    file.write_text(FORWARD.read_text().replace("10.1.2.2/24", "10.1.2.9/24"))
    return file, plan


def test_topology_is_the_recorded_text_not_the_file(recorded):
    file, _ = recorded
    assert str(model.load(str(file)).address_of("ns2")) == "10.1.2.9"       # the file says so now
    topo = labmod.topology("rec")
    assert str(topo.address_of("ns2")) == "10.1.2.2" and topo.name == "rec"
    assert topo.file == str(file) and topo.doc.display_name == "forward.yaml"   # messages still name it
    file.unlink()
    assert str(labmod.topology("rec").address_of("ns2")) == "10.1.2.2"


def test_applied_plan_is_the_recorded_plan(recorded):
    _, plan = recorded
    back = labmod.applied_plan("rec")
    assert back.ops == plan.ops and back.hosts == plan.hosts and back.notes == plan.notes


def test_machine_limits_are_checked_at_validate_not_when_a_record_is_read(recorded, monkeypatch):
    monkeypatch.setattr(limits, "nofile_hard_limit", lambda: 3)      # a process that may open 3 files
    with pytest.raises(TopologyError, match="open files"):
        model.load(str(FORWARD))
    assert "ns2" in labmod.topology("rec").nodes


def test_a_changed_or_missing_record_is_one_sentence(recorded):
    d = Path(state.lab_dir("rec"))
    text = (d / state.TOPOLOGY).read_bytes()
    (d / state.TOPOLOGY).write_bytes(text.replace(b"10.1.2.2", b"10.1.2.3"))
    with pytest.raises(state.RecordError, match=r"topology .*topology.yaml was changed after `up`") as e:
        labmod.topology("rec")
    assert "\n" not in str(e.value)
    (d / state.TOPOLOGY).write_bytes(text)
    assert labmod.topology("rec")

    (d / state.PLAN).write_bytes(b'{"format": 1, "lab": "rec", "ops": [{"op": "Exec", "argv": "sh"}]}')
    with pytest.raises(state.RecordError, match="changed after"):
        labmod.applied_plan("rec")
    state.update("rec", lambda s: s.built.__setitem__(state.PLAN, hashlib.sha256((d / state.PLAN).read_bytes())
                                                      .hexdigest()))
    with pytest.raises(state.RecordError, match=r"recorded plan .* is corrupt \(op 1 is of an unknown type 'Exec'\)"):
        labmod.applied_plan("rec")

    (d / state.PLAN).unlink()
    with pytest.raises(state.RecordError, match="cannot read its recorded plan"):
        labmod.applied_plan("rec")
    (d / state.PLAN).symlink_to("/etc/passwd")          # never followed
    with pytest.raises(state.RecordError, match="cannot read its recorded plan"):
        labmod.applied_plan("rec")

    state.update("rec", lambda s: s.built.clear())
    with pytest.raises(state.RecordError, match="holds no topology .*still being built"):
        labmod.topology("rec")
    with pytest.raises(UsageError, match="no lab named 'other'"):
        labmod.topology("other")


def test_the_record_names_what_it_holds_by_digest(recorded):
    raw = json.loads((Path(state.lab_dir("rec")) / state.STATE).read_text())
    d = Path(state.lab_dir("rec"))
    assert raw["built"] == {name: hashlib.sha256((d / name).read_bytes()).hexdigest()
                            for name in (state.TOPOLOGY, state.PLAN)}
    assert (d / state.TOPOLOGY).read_text() == FORWARD.read_text()
    with pytest.raises(ValueError, match="'built' holds something other than digests"):
        state._parse("rec", {**raw, "built": {"plan.json": 7}})


def test_compile_alone_is_not_what_up_applies_without_kernel_ipip(monkeypatch):
    """`nslab script FILE` shows the plan fitted to this kernel (here: as if it had no ipip)."""
    monkeypatch.delenv("NSLAB_IPIP", raising=False)
    monkeypatch.setattr(labmod.kernel, "ipip_state", lambda: "absent")
    topo = model.load(str(FORWARD.parent / "diy-ipip.yaml"))
    compiled, fitted = compile_topology(topo), labmod.plan_for_this_kernel(topo)
    assert any(isinstance(op, P.Link) and op.kind == "ipip" for op in compiled.ops)
    assert not any(isinstance(op, P.Link) and op.kind == "ipip" for op in fitted.ops)
    assert sum(isinstance(op, P.Daemon) and op.kind == "ipip" for op in fitted.ops) == 2


def test_an_adopted_hosts_folder_swapped_for_a_symlink_costs_nothing(tmp_path, monkeypatch):
    """hosts_leftovers found a hosts-only folder /etc/netns/<ns> left by `nslab script`; if it
    is a symlink by the time up removes it (/etc/netns/<ns> -> /etc), nothing behind the link
    goes: the removal works through the folder itself, never a path."""
    import pytest as _pytest
    from nslab import lab, model, state
    monkeypatch.setattr(state, "HOSTS_DIR", str(tmp_path / "netns"))
    monkeypatch.setattr(state, "HOSTS_DIR_MARK", str(tmp_path / "netns" / ".made-by-nslab"))
    monkeypatch.setattr(state, "RUN_DIR", str(tmp_path / "run"))
    topo = model.load("diy-veth.yaml", text="name: swap\nhosts: [a, b]\nlinks: [[a, b]]\n")
    plan = lab.plan_for_this_kernel(topo)
    elsewhere = tmp_path / "etc"
    elsewhere.mkdir()
    (elsewhere / "hosts").write_text("the host's own\n")
    (tmp_path / "netns").mkdir()
    link = tmp_path / "netns" / "swap.a"
    link.symlink_to(elsewhere)                     # the swap, after the check
    st = state.claim("swap", "x.yaml")
    try:
        with _pytest.raises(OSError):
            lab.write_hosts_files(plan, st, lambda change: change(st), adopt=[str(link)])
    finally:
        state.release("swap")
    assert (elsewhere / "hosts").read_text() == "the host's own\n" and link.is_symlink()


def test_a_link_of_the_lab_left_dangling_by_a_reboot_is_replaced(tmp_path, monkeypatch):
    """A machine that rebooted (/run is a tmpfs) keeps /etc/netns/<ns> -> /run/nslab/LAB/etc
    with nothing behind it: the lab's own link, adopted and replaced when the lab is built
    again (issue 20: a machine that comes back); a dangling link elsewhere is refused."""
    import pytest as _pytest
    from nslab import lab, model, state
    from nslab.errors import UsageError
    monkeypatch.setattr(state, "HOSTS_DIR", str(tmp_path / "netns"))
    monkeypatch.setattr(state, "HOSTS_DIR_MARK", str(tmp_path / "netns" / ".made-by-nslab"))
    monkeypatch.setattr(state, "RUN_DIR", str(tmp_path / "run"))
    topo = model.load("diy-veth.yaml", text="name: boot\nhosts: [a, b]\nlinks: [[a, b]]\n")
    plan = lab.plan_for_this_kernel(topo)
    (tmp_path / "netns").mkdir()
    link = tmp_path / "netns" / "boot.a"
    link.symlink_to(state.etc_folder(state.lab_dir("boot")))
    assert lab.hosts_leftovers(plan) == [str(link)]
    st = state.claim("boot", "x.yaml")
    try:
        lab.write_hosts_files(plan, st, lambda change: change(st), adopt=[str(link)])
        assert link.is_symlink() and (link / "hosts").exists()
    finally:
        state.release("boot")
    for name in ("boot.a", "boot.b"):
        (tmp_path / "netns" / name).unlink()
    (tmp_path / "netns" / "boot.b").symlink_to(tmp_path / "gone")
    with _pytest.raises(UsageError):
        lab.hosts_leftovers(plan)
