"""nslab/spawn.py (hole 1 of issue 18): a Python child nslab starts runs this
checkout's nslab whatever the directory and environment it is started from, its working
directory and environment are fixed, and the tools nslab runs come only from directories
nobody else can write to.  (The whole path as root: tests/integration/test_spawn_hygiene.py.)"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from nslab import spawn

REPO = Path(__file__).resolve().parent.parent
FAKE = """import os
open({marker!r}, "a").write(f"fake nslab {{__file__}} in pid {{os.getpid()}}\\n")
raise SystemExit(99)
"""


def test_python_child_imports_its_parents_nslab_even_from_a_hostile_directory_and_environment(tmp_path,
                                                                                           monkeypatch):
    """The argv alone, started in a directory with a package `nslab/` and a json.py and with
    a PYTHONPATH holding another `nslab/` and a sitecustomize.py, runs the nslab under ROOT: -I, and ROOT first on sys.path
    (a stand-in ROOT here, whose module says where it was imported from)."""
    marker = tmp_path / "marker"
    cwd, pythonpath, root = tmp_path / "cwd", tmp_path / "pp", tmp_path / "root"
    for d in (cwd, pythonpath):
        (d / "nslab").mkdir(parents=True)
        (d / "nslab" / "__init__.py").write_text(FAKE.format(marker=str(marker)))
    for fake in (pythonpath / "sitecustomize.py", cwd / "json.py"):      # json: the agent imports it
        fake.write_text(FAKE.format(marker=str(marker)))
    (root / "nslab").mkdir(parents=True)
    (root / "nslab" / "__init__.py").write_text("")
    (root / "nslab" / "probe.py").write_text("import json, sys\nprint(__file__, json.dumps(sys.argv[1:]))\n")
    assert spawn.ROOT == str(REPO)                       # the running package's, never cwd's
    monkeypatch.setattr(spawn, "ROOT", str(root))
    argv = spawn.python("nslab.probe", "a", "b")
    assert argv[1] == "-I"
    env = {**os.environ, "PYTHONPATH": str(pythonpath), "PYTHONSTARTUP": str(pythonpath / "sitecustomize.py")}
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    assert not marker.exists(), marker.read_text()
    assert proc.stdout == f"{root / 'nslab' / 'probe.py'} [\"a\", \"b\"]\n", proc.stdout + proc.stderr


def test_environment_and_directory_are_fixed(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/tmp")
    monkeypatch.setenv("PATH", "/tmp:.")
    monkeypatch.setenv("LD_PRELOAD", "/tmp/x.so")
    env = spawn.env(NSLAB_RUN_DIR="/run/nslab")
    assert env == {"PATH": spawn.PATH, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "NSLAB_RUN_DIR": "/run/nslab"}
    assert spawn.CWD == "/"


def executable(path: Path, mode: int = 0o755) -> Path:
    path.write_text("#!/bin/sh\n")
    path.chmod(mode)
    return path


def test_tools_come_only_from_directories_nobody_else_can_write(tmp_path, monkeypatch):
    ok, here, shared, group = (tmp_path / d for d in ("ok", "here", "shared", "group"))
    for d, mode in ((ok, 0o755), (here, 0o755), (shared, 0o777), (group, 0o775)):
        d.mkdir()
        d.chmod(mode)                                 # shared, group: others could put a command there
        executable(d / "tool")
    monkeypatch.chdir(here)
    monkeypatch.setenv("PATH", f".::{shared}:{group}:{ok}")     # ".", "": the current directory
    assert spawn.tool("tool") == str(ok / "tool")
    (ok / "multi").symlink_to(ok / "tool")            # the name is kept (multi-call binaries)
    assert spawn.tool("multi") == str(ok / "multi")
    (ok / "leads-out").symlink_to(shared / "tool")    # a safe name for a file someone else can swap
    assert spawn.tool("leads-out") is None
    executable(ok / "writable", 0o777)
    assert spawn.tool("writable") is None
    monkeypatch.setenv("PATH", f"{shared}:{group}")
    assert spawn.tool("tool") is None
    if os.geteuid() == 0:                             # someone else's directory (su, sudo -E: a user's ~/bin)
        theirs = tmp_path / "theirs"
        theirs.mkdir()
        executable(theirs / "tool")
        os.chown(theirs, 65534, 65534)
        monkeypatch.setenv("PATH", str(theirs))
        assert spawn.tool("tool") is None


def test_system_tools_resolve_to_absolute_paths():
    path = spawn.tool("sh")
    assert path is not None and os.path.isabs(path) and os.path.basename(path) == "sh"


def test_runtime_module_recognises_what_nslab_started_and_nothing_else():
    """`down` stops a recorded process only if it is an nslab runtime process (state.labs_process):
    what spawn.python starts, from any ROOT, and the `-m` form of earlier nslab; not a command
    that merely names the run directory."""
    argv = [a.encode() for a in spawn.python("nslab.runtime.agent", "/run/nslab/lab1", "agent")]
    assert spawn.runtime_module(argv) == "nslab.runtime.agent"
    moved = [a.replace(repr(spawn.ROOT).encode(), b"'/opt/other nslab'") for a in argv]
    assert spawn.runtime_module(moved) == "nslab.runtime.agent"
    assert spawn.runtime_module([b"python3", b"-m", b"nslab.runtime.tunnels", b"--netns", b"x"]) == \
        "nslab.runtime.tunnels"
    for other in ([b"du", b"-sh", b"/run/nslab/lab1"], [b"python3", b"-c", b"import os; os.system('x')",
                                                         b"/run/nslab/lab1"],
                  [b"python3", b"-m", b"http.server", b"/run/nslab/lab1"], [b"python3"], []):
        assert spawn.runtime_module(other) is None, other


def test_need_names_the_package_of_a_missing_tool(monkeypatch):
    """A missing tool is one sentence naming its package, exit 3 (it raised ImportError:
    `from ..errors` reached above the nslab package)."""
    from nslab.errors import PrerequisiteError
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(PrerequisiteError) as info:
        spawn.need("etcd")
    assert str(info.value) == "etcd not found on PATH: install it with `apt-get install -y etcd-server`"
    assert info.value.exit_code == 3
