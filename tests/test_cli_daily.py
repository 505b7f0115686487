"""The command line's small courtesies (issue 19.6), without root: every option explains
itself in --help, `exec` without a command points at `shell`, counts read as English."""
from __future__ import annotations

import inspect

from conftest import nslab
from nslab import cli, clikit
from nslab.console import plural


def _undocumented(app, prefix: str = "") -> list[str]:
    missing = []
    for name, (_kw, fn) in app.commands.items():
        for p in inspect.signature(fn).parameters.values():
            if isinstance(p.default, clikit._Info) and not p.default.kwargs.get("help"):
                missing.append(f"{prefix}{name} {p.name}")
    for group, (sub, _kw) in app.groups.items():
        missing += _undocumented(sub, f"{prefix}{group} ")
    return missing


def test_every_option_and_argument_of_every_command_has_help():
    assert _undocumented(cli.app) == []        # `script --name` and `--backend` had none


def test_script_help_describes_name_and_backend():
    r = nslab("script", "--help", env={"COLUMNS": "200"})
    lines = {line.split()[1]: line for line in r.stdout.splitlines() if line.startswith("│ --")}
    assert "namespaces are NAME.NODE" in lines["--name"] and "udp:8282" in lines["--backend"], r.stdout


def test_exec_without_a_command_suggests_shell():
    r = nslab("exec", "ns1")
    assert (r.returncode, r.stdout) == (2, ""), r
    assert r.stderr == ("nslab: no command to run in ns1: `nslab exec ns1 -- CMD ...`, or `nslab shell ns1` for an "
                        "interactive shell there\n")


def test_counts_read_as_english(tmp_path):
    assert [plural(1, "node"), plural(2, "node"), plural(0, "node")] == ["1 node", "2 nodes", "0 nodes"]
    assert [plural(1, "entry", "entries"), plural(3, "entry", "entries")] == ["1 entry", "3 entries"]
    one = tmp_path / "one.yaml"
    one.write_text("name: one\nhosts: [a]\n")
    r = nslab("validate", str(one))
    assert (r.returncode, r.stdout) == (0, f"{one}: ok (lab one: 1 node, 3 operations)\n"), r
