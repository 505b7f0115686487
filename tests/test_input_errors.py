"""Inputs that used to end in a traceback (issue 18, hole 7), without root: user text printed
through rich is text, never markup; numbers from user text take ASCII digits only."""
from __future__ import annotations

import io
import os
import subprocess
import sys

from nslab import console as out
from nslab.observe import checks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOPO = """name: mk
hosts: [a, b]
links:
  - ends: [{node: a, ip: 10.1.1.2/24}, {node: b, ip: 10.1.1.3/24}]
"""


def nslab(*args, env=None):
    return subprocess.run([sys.executable, "-m", "nslab.cli", *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, **(env or {})}, timeout=120)


def test_a_file_name_with_markup_is_printed_as_it_is(tmp_path):
    # rich read `[/bold]` in the name as a closing tag: MarkupError, a traceback
    (tmp_path / "x[").mkdir()
    path = tmp_path / "x[" / "bold].yaml"
    path.write_text(TOPO)
    proc = nslab("validate", str(path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"{path}: ok (lab mk: 2 nodes"), proc.stdout
    assert "Traceback" not in proc.stderr


def test_a_test_named_like_markup_is_printed_as_it_is_on_a_terminal():
    report = checks.Report("mk", [checks.Result("[/x]", "ping a -> b", "success", False, "no reply",
                                                ["no echo reply"], line=6),
                                  checks.Result("[bold]ok", "ping a -> b", "success", True, "reached")], 1.0)
    for terminal in (True, False):
        buf = io.StringIO()
        checks.render(out.make(terminal=terminal, columns=40, file=buf), report)     # 40: one record per line
        text = buf.getvalue()
        assert "FAIL" in text and "[/x] (line 6)" in text and "[bold]ok" in text, text


def test_columns_with_non_ascii_digits_is_ignored(monkeypatch):
    # '²'.isdigit() is True but int('²') raises: COLUMNS=² ended every rich command in a traceback
    monkeypatch.setenv("COLUMNS", "²")
    monkeypatch.setenv("LINES", "³")
    c = out.make(terminal=True, file=io.StringIO())
    assert c.width == 80 and c.size.width == 80
    c = out.make(terminal=False, file=io.StringIO())
    assert c.size.width == 10_000
    monkeypatch.setenv("COLUMNS", "9" * 5000)           # int() of 5000 digits raises too
    assert out.make(terminal=True, file=io.StringIO()).width == 80


def test_image_names_up_to_dockers_limit():
    # Docker: the name before :TAG at most 255 characters (a 300-character name ended `up` in
    # docker.errors.APIError "repository name must not be more than 255 characters"), the tag 128
    import pytest
    from nslab import model
    from nslab.errors import TopologyError
    longest = "a/" * 127 + "b"
    assert len(longest) == 255
    topo = model.load("i.yaml", text=f'hosts:\n  web: {{image: "{longest}:{"t" * 128}"}}\n')
    assert topo.nodes["web"].container.image.startswith(longest)
    for image in (longest + "c", longest + "c:latest", "a" * 300):
        with pytest.raises(TopologyError, match=r"i.yaml:2 hosts.web.image: .* characters long; Docker takes at most "
                                                r"255 before the :TAG"):
            model.load("i.yaml", text=f'hosts:\n  web: {{image: "{image}"}}\n')


def test_odd_command_lines_are_one_sentence():
    # `up ''` built the bundled spine-leaf lab ('' read as "no file given"); script too
    for argv in (["up", ""], ["script", ""]):
        proc = nslab(*argv, "--name", "Not-A-Name")       # a bad name too: a regression refuses it, builds nothing
        assert proc.returncode == 2 and proc.stderr.startswith("nslab: no topology '': no such file"), proc.stderr
    # tcpdump's -c 0 is no limit: capture ran until Ctrl-C
    for count in ("0", "-5", str(1 << 31)):
        proc = nslab("capture", "-l", "nolab", "a", "-c", count)
        assert proc.returncode == 2 and proc.stderr == f"nslab: --count must be from 1 to 2147483647 packets, " \
                                                      f"not {count}\n", proc.stderr
    # click's and rich's help read COLUMNS with isdigit() and int() (ValueError for '²')
    proc = nslab("--help", env={"COLUMNS": "²", "LINES": "³"})
    assert proc.returncode == 0 and "Traceback" not in proc.stderr and "validate" in proc.stdout, proc.stderr
    proc = nslab("trace", env={"COLUMNS": "²"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "Missing argument" in proc.stderr, proc.stderr
