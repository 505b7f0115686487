"""Names are checked with full matches (issue 18, hole 6): `^...$` with re.match took a
trailing newline, and `up` created the namespace `lab.ns1\\n`.  The file cases live in
tests/errors/name-trailing-newline-*.yaml; these are the command-line entry points."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nslab import lab as labmod, model
from nslab.errors import NslabError, TopologyError
from nslab.model import containers, types

REPO = Path(__file__).resolve().parent.parent.parent


@pytest.mark.parametrize("name", ["lab\n", "lab\r\n", "lab\x85", "lab\u2028"])
def test_name_option_with_a_line_break_is_refused(tmp_path, name):
    path = tmp_path / "t.yaml"
    path.write_text("hosts: [ns1]\n")
    with pytest.raises(TopologyError) as e:
        model.load(str(path), name=name)
    assert str(e.value).startswith("t.yaml --name: lab name ") and "\n" not in str(e.value)
    assert e.value.exit_code == 2
    with pytest.raises(NslabError) as e:       # a generated fabric (`nslab up single:2 --name ...`)
        labmod.load("single:2", name=name)
    assert e.value.exit_code == 2 and len(str(e.value).splitlines()) == 1


def test_cli_name_with_a_trailing_newline(tmp_path):
    (tmp_path / "t.yaml").write_text("hosts: [ns1]\n")
    proc = subprocess.run([sys.executable, "-m", "nslab.cli", "script", "t.yaml", "--name", "lab\n"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == "nslab: t.yaml --name: lab name 'lab\\n' must be lowercase letters, digits, '-' or '_' " \
                          "(at most 32 characters)\n"


@pytest.mark.parametrize("pattern,good", [
    (types.NAME_RE, "ns1"), (types.LAB_NAME_RE, "lab"), (types.IFNAME_RE, "eth0"),
    (containers.IMAGE_RE, "nslab/busybox"), (containers.CAP_RE, "NET_RAW"),
], ids=["node", "lab", "ifname", "image", "cap"])
def test_patterns_refuse_a_trailing_newline(pattern, good):
    """The patterns carry no `$` (which also matches before a final newline): fullmatch is
    how they are used, and match() on a value with a newline fails at the newline too."""
    assert pattern.fullmatch(good) and not pattern.fullmatch(good + "\n")
    assert "$" not in pattern.pattern
