"""The CLI's own layer, without root: commands parsed on the fast road from typer's declarations
(and typer for everything else), start-up importing none of typer/click/rich/docker for a plain
command, and tables (`up`, `ls`, `test`) that never cut a name, address or MAC at 80 and 120
columns or piped."""
from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys

import pytest

from nslab import cli, clikit, console as out, lab as labmod

TOPO = os.path.join(os.path.dirname(__file__), "..", "nslab", "topologies")
ANSI = re.compile(r"\x1b\[[0-9;?]*[a-zA-Z]")


def fast(argv):
    found = clikit.resolve(cli.app, argv)
    return None if found is None else (found[0].__name__, found[1])


def test_plain_command_lines_take_the_fast_road():
    tls = {"etcd_ca": None, "etcd_cert": None, "etcd_key": None}
    assert fast(["down", "mylab"]) == ("down", {"target": "mylab", "all_labs": False, "etcd": None, **tls})
    assert fast(["down", "--all"]) == ("down", {"target": None, "all_labs": True, "etcd": None, **tls})
    assert fast(["down", "l1", "--etcd", "http://127.0.0.1:2379"])[1]["etcd"] == "http://127.0.0.1:2379"
    assert fast(["down", "l1", "--etcd-ca", "ca.crt"])[1]["etcd_ca"] == "ca.crt"
    assert fast(["sandbox", "up", "3", "--port", "23790"]) == \
        ("sandbox_up", {"machines": 3, "name": "sandbox", "port": 23790, "mtu": 9216, "tls": False})
    name, kw = fast(["up", "x.yaml", "--name", "n1", "--backend=udp:8282", "-q"])
    assert name == "up" and (kw["file"], kw["name"], kw["backend"], kw["quiet"]) == ("x.yaml", "n1", "udp:8282", True)
    assert fast(["exec", "-l", "lab1", "h1", "--", "ping", "-c", "1", "h2"]) == \
        ("exec_", {"node": "h1", "cmd": ["ping", "-c", "1", "h2"], "lab": "lab1"})
    name, kw = fast(["trace", "a", "b", "--port", "81", "--timeout", "2.5"])
    assert (kw["port"], kw["timeout"]) == (81, 2.5)
    assert fast(["images", "build", "busybox", "--force"])[1] == {"names": ["busybox"], "force": True}
    assert fast(["validate", "a.yaml", "b.yaml"])[1]["files"] == ["a.yaml", "b.yaml"]


@pytest.mark.parametrize("argv", [["down", "--help"], ["--help"], [], ["down", "-x"], ["trace", "a", "b", "--port", "x"],
                                  ["exec"], ["down", "a", "b"], ["nosuchverb"], ["images"], ["--version"],
                                  ["--install-completion"], ["up", "--name"]])
def test_anything_else_goes_to_typer(argv):
    assert fast(argv) is None


def test_every_command_is_declared_for_typer_too():
    """--help is typer's, built from the same declarations: every recorded command is listed."""
    text = subprocess.run([sys.executable, "-m", "nslab.cli", "--help"], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200"}, timeout=60).stdout
    hidden = {verb for verb, (kw, _) in cli.app.commands.items() if kw.get("hidden")}   # host <-> agent parts
    assert hidden == {"trace-part", "watch-part", "pairs-part"}
    for verb in [v for v in cli.app.commands if v not in hidden] + list(cli.app.groups):
        assert re.search(rf"│ {re.escape(verb)}\s", text), verb
    bad = subprocess.run([sys.executable, "-m", "nslab.cli", "trace", "a", "b", "--port", "x"], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and "--port" in bad.stderr       # typer's own message for a bad value


def test_start_up_imports_nothing_heavy():
    """`nslab down nosuchlab` (as non-root: refused) must not load typer, click, rich or docker,
    nor PyYAML and the model (a lab's name needs no topology: 0.21 -> 0.12 s without them)."""
    code = ("import sys, runpy; sys.argv = ['nslab', 'down', 'nosuchlab']\n"
            "try:\n    runpy.run_module('nslab.cli', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'typer', 'click', 'rich', 'docker', 'requests', "
            "'pyroute2', 'jinja2', 'scapy', 'yaml'} | ({'nslab.model.types', 'nslab.generate'} & set(sys.modules))))")
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert got.stdout.strip().splitlines()[-1] == "[]", got


def render(fn, columns):
    buf = io.StringIO()
    console = out.make(terminal=columns is not None, columns=columns, file=buf)
    fn(console)
    return ANSI.sub("", buf.getvalue())


def check_whole(text, words, columns):
    assert "…" not in text
    for w in words:
        assert w in text, (w, text)
    if columns:
        assert max(len(line) for line in text.splitlines()) <= columns, text


TABLES = os.path.join(os.path.dirname(__file__), "golden", "tables")


@pytest.mark.parametrize("columns", [80, 120, None], ids=["80", "120", "piped"])
@pytest.mark.parametrize("topology,backend", [("spine-leaf.yaml", None), ("flannel-vxlan.yaml", "udp"),
                                              ("flannel-vxlan.yaml", "ipip"), ("diy-ipip.yaml", None)])
def test_up_table_whole_with_overlay_devices(topology, backend, columns, monkeypatch):
    """The table `up` prints, against literal text: piped, exactly tests/golden/tables/*.txt
    (checked by hand: every device, address, peer, MAC and MTU of the lab); at 80 and 120
    columns, every word of that file's rows whole.  The kernel is taken to have no ipip
    (TUN devices instead, as on this machine), so the text is the same on every machine."""
    monkeypatch.setattr(labmod.kernel, "ipip_state", lambda: "absent")
    topo = labmod.load(os.path.join(TOPO, topology), name="tour-fwd-with-a-long-name",
                       overrides={"backend": backend} if backend else None)
    plan = labmod.plan_for_this_kernel(topo)
    monkeypatch.setattr(cli, "console", None)
    text = render(lambda c: (setattr(cli, "console", c), cli.built_table(topo, plan)), columns)
    with open(os.path.join(TABLES, topology[:-5] + (f"-{backend}" if backend else "") + ".txt")) as f:
        expected = f.read()
    if columns is None:
        assert text == expected
        return
    header, *rows = expected.splitlines()[1:]
    starts = [m.start() for m in re.finditer(r"\S+", header)] + [None]
    cells = {name: [row[a:b].strip() for row in rows] for name, a, b in zip(header.split(), starts, starts[1:])}
    shown = ["namespace", "interface", "address", "peer"]     # narrow tables drop kind and type
    if "┃ mac" in text or "  namespace " in text:        # a table may drop the MAC column
        shown.append("mac")
    check_whole(text, {w for name in shown for w in cells[name] if w}, columns)


@pytest.mark.parametrize("columns", [80, 120, None], ids=["80", "120", "piped"])
def test_generic_table_never_cuts(columns):
    cols = ["lab", "status", "nodes", "backend", "file"]
    rows = [["tour-fwd-with-a-long-name", "degraded: agent (pid 4242) not running; warden not running", "1044", "vxlan",
             "/home/someone/labs/long-directory-name/and-another/clos-8-100-100.yaml"],
            ["t2", "up", "3", "-", "/tmp/x.yaml"]]
    text = render(lambda c: out.table(c, cols, rows), columns)
    check_whole(text, [w for r in rows for w in r], columns)


@pytest.mark.parametrize("columns", [80, None], ids=["80", "piped"])
def test_macs_and_names_print_as_they_are(columns):
    """rich reads :cd: as an emoji's name: 9a:cd:83:da:26:e4 printed as 9a💿83:da:26:e4 in
    the table of `nslab up` (seen on a generated CLOS lab)."""
    rows = [["spine1", "9a:cd:83:da:26:e4", ":ok: :100:"]]
    text = render(lambda c: out.table(c, ["node", "mac", "note"], rows), columns)
    assert "9a:cd:83:da:26:e4" in text and ":ok: :100:" in text, text


def test_wrap_keeps_words_whole():
    line = "       outer eth 1a:af:f7:56:d8:c6 > d6:06:40:41:dd:52 | ip 10.0.0.21 > 30.0.0.23 ttl 64 | udp 58071 > 4789"
    for limit in (40, 60, 80):
        text = out.wrap(line, limit, 12, " | ")
        assert all(len(x) <= limit for x in text.splitlines())
        assert text.replace("\n", " ").split() == [w for w in line.split()]   # same words, same order, none split


def test_a_word_longer_than_the_terminal_stays_whole():
    path = "/srv/" + "x" * 90 + "/clos.yaml"
    text = render(lambda c: out.table(c, ["lab", "file"], [["l1", path]]), 80)
    assert path in text and "…" not in text


def test_fast_road_keeps_exit_codes_and_one_line_errors():
    """An NslabError on the fast road: one line on stderr and its exit code, as under typer."""
    got = subprocess.run([sys.executable, "-m", "nslab.cli", "validate", "/nonexistent/x.yaml"], capture_output=True,
                         text=True, timeout=60)
    assert got.returncode == 2 and got.stdout == "" and len(got.stderr.strip().splitlines()) == 1, got
    assert "/nonexistent/x.yaml" in got.stderr and "Traceback" not in got.stderr
