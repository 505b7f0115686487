"""Golden plans: each topology in, the rendered plan (`nslab script` output) out.

The plan is the one `up` applies: compiled, then fitted to the kernel.  The kernel facts are
explicit (KERNEL_IPIP, NSLAB_IPIP unset), so the goldens are the same on every machine: a
kernel without ipip, as on the CI machine, where ipip devices become TUN devices plus
userspace encapsulators.

- tests/golden/<name>.yaml          -> tests/golden/<name>.script
- topologies/<name>.yaml (shipped)   -> tests/golden/topologies/<name>.script

A change to the model, the compiler or a shipped lab shows up as a diff of these files in
review.  After an intended change, regenerate with

    NSLAB_UPDATE_GOLDEN=1 python3 -m pytest -q tests/compile/test_golden.py

and read the diff before committing it.  No root needed: nothing touches the kernel.
"""
from __future__ import annotations

import difflib
import os
from pathlib import Path

import pytest

from nslab import model
from nslab.compile import compile_topology
from nslab.compile.kernel import fit_to_kernel
from nslab.compile.script import render

TESTS = Path(__file__).parent.parent
GOLDEN = TESTS / "golden"
SHIPPED = TESTS.parent / "topologies"
UPDATE = os.environ.get("NSLAB_UPDATE_GOLDEN") == "1"
KERNEL_IPIP = "absent"      # apply.kernel.ipip_state() of the CI machine: no ipip module

CASES = [(p, p.with_suffix(".script")) for p in sorted(GOLDEN.glob("*.yaml"))] + \
        [(p, GOLDEN / "topologies" / f"{p.stem}.script") for p in sorted(SHIPPED.glob("*.yaml"))]


@pytest.fixture(autouse=True)
def _no_ipip_override(monkeypatch):
    monkeypatch.delenv("NSLAB_IPIP", raising=False)     # fit_to_kernel honours it: not here


def rendered(path: Path) -> str:
    plan = compile_topology(model.load(str(path)))
    fit_to_kernel(plan, KERNEL_IPIP)
    return render(plan)


@pytest.mark.parametrize("src,expected", CASES,
                         ids=[f"{s.parent.name}/{s.stem}" for s, _ in CASES])
def test_golden(src: Path, expected: Path):
    got = rendered(src)
    if UPDATE:
        expected.parent.mkdir(parents=True, exist_ok=True)
        if not expected.exists() or expected.read_text(encoding="utf-8") != got:
            expected.write_text(got, encoding="utf-8")
        return
    if not expected.exists():
        pytest.fail(f"no golden file {expected.relative_to(TESTS.parent)} for {src.relative_to(TESTS.parent)}; "
                    f"create it with NSLAB_UPDATE_GOLDEN=1 and review it")
    want = expected.read_text(encoding="utf-8")
    if got != want:
        diff = "".join(difflib.unified_diff(want.splitlines(True), got.splitlines(True),
                                            str(expected.relative_to(TESTS.parent)), "rendered now"))
        pytest.fail(f"{src.name}: rendered plan differs from the golden file "
                    f"(NSLAB_UPDATE_GOLDEN=1 rewrites it):\n{diff}")


def test_no_orphan_goldens():
    """A golden file whose input was renamed or removed would silently stop being checked."""
    inputs = {e for _, e in CASES}
    orphans = [p for p in list(GOLDEN.glob("*.script")) + list((GOLDEN / "topologies").glob("*.script"))
               if p not in inputs]
    if UPDATE:
        for p in orphans:
            p.unlink()
        return
    assert not orphans, f"golden files without an input: {[str(p.relative_to(TESTS)) for p in orphans]}"


@pytest.mark.parametrize("src", [s for s, _ in CASES], ids=[f"{s.parent.name}/{s.stem}" for s, _ in CASES])
def test_render_is_deterministic(src: Path):
    """Same file, same plan: twice in one process (no hidden state, set ordering or randomness)."""
    assert rendered(src) == rendered(src)
