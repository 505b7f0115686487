"""Bad input: every tests/errors/<case>.yaml must fail validation with exactly the one-line
message in tests/errors/<case>.expected (file:line path: sentence), exit code 2.

No root needed: nothing here touches the kernel.  To add a case, write the .yaml, run
`nslab validate tests/errors/<case>.yaml`, check the message is right (line, path, wording)
and save it (without the `nslab: ` prefix) as the .expected file.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nslab import model
from nslab.compile import compile_topology
from nslab.errors import TopologyError

ERRORS = Path(__file__).parent.parent / "errors"
CASES = sorted(ERRORS.glob("*.yaml"))


def expected(case: Path) -> str:
    return case.with_suffix(".expected").read_text(encoding="utf-8").strip()


def test_enough_cases():
    assert len(CASES) >= 30
    missing = [c.name for c in CASES if not c.with_suffix(".expected").exists()]
    assert not missing, f"error cases without an .expected file: {missing}"
    orphans = [e.name for e in ERRORS.glob("*.expected") if not e.with_suffix(".yaml").exists()]
    assert not orphans, f".expected files without a case: {orphans}"


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_error_case(case: Path):
    with pytest.raises(TopologyError) as info:
        compile_topology(model.load(str(case)))
    err = info.value
    assert str(err) == expected(case)
    assert err.exit_code == 2
    assert "\n" not in str(err), "an error message is one line"
    assert str(err).startswith(case.name), "the message names the file"


def _netns_entries(lab: str) -> set[str]:
    """This lab's namespaces (others may be running labs concurrently: only ours count)."""
    try:
        return {n for n in os.listdir("/run/netns") if n.startswith(f"{lab}.")}
    except FileNotFoundError:
        return set()


def _run_validate(case: Path) -> subprocess.CompletedProcess:
    # a narrow terminal: the message must still be one line; this checkout's nslab (cwd is not the repository)
    env = {**os.environ, "COLUMNS": "40", "PYTHONPATH": str(ERRORS.parent.parent)}
    return subprocess.run([sys.executable, "-m", "nslab.cli", "validate", str(case)], capture_output=True,
                          text=True, env=env, timeout=60, cwd=str(ERRORS))


@pytest.mark.parametrize("name", [
    "yaml-duplicate-key",          # short
    "mtu-too-small",               # longer than 80 columns with the `nslab: ` prefix: must not wrap
    "unknown-key-top",
    "yaml-alias-bomb",             # issue 9: hung for over 60 s
    "yaml-deep-flow",              # issue 9: RecursionError traceback
    "yaml-nul-byte",               # issue 9: a two-line message
    "name-trailing-newline-node",  # issue 18: accepted, `up` made the namespace `lab.ns1\n`
    "yaml-duplicate-merge-key",    # issue 18: the second `<<:` added a router unseen
])
def test_cli_validate_bad_input(name: str):
    case = ERRORS / f"{name}.yaml"
    lab = model.lab_name_from_file(str(case))
    lab_dir = Path("/run/nslab") / lab
    before_ns, lab_dir_before = _netns_entries(lab), lab_dir.exists()
    proc = _run_validate(case)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert "Traceback" not in proc.stderr
    assert lines == [f"nslab: {expected(case)}"]
    if os.geteuid() == 0:
        assert _netns_entries(lab) == before_ns, "validate must not create network namespaces"
        assert lab_dir.exists() == lab_dir_before, "validate must not create a lab state directory"
