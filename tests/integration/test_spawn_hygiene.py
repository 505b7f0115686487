"""Hole 1 of issue 18: nothing nslab starts as root may be steered by the caller's working
directory or environment.

The caller here is a user's directory H (owned by nobody) holding a package `nslab/`, a
second one on PYTHONPATH with a sitecustomize.py, and a bin/ first on PATH with fake ip,
nsenter, iptables-restore, ...: each writes a line to a marker file when it runs, then does
the real thing (so the lab looks healthy, as in the audit).  The CLI is started as the
installed console script starts it (no working directory on sys.path; -I also keeps this
test's PYTHONPATH out of the CLI process itself), so only what nslab starts could reach them:
the agent, the warden and the udp dataplanes of `up`, the agent `show` starts again, and
the `ip` of `nslab exec`.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time

from conftest import REPO, TIMEOUT_SCALE, TOPOLOGIES, Lab, _alive, _cli_down
from nslab.pytest_plugin import LabFactory

FAKE_PACKAGE = """import os, sys
with open({marker!r}, "a") as f:
    f.write(f"{{__file__}} imported by pid {{os.getpid()}}: {{sys.argv}}\\n")
__path__.append({real!r})                  # then the real nslab: the lab looks healthy
"""
FAKE_TOOL = """#!/bin/sh
echo "$0 $*" >> {marker}
exec {real} "$@"
"""
TOOLS = ("ip", "bridge", "nsenter", "iptables-restore", "iptables-save", "tcpdump")


def hostile_dir(tmp_path):
    """(H, its environment, the marker file)."""
    home, marker = tmp_path / "home", tmp_path / "marker"
    real = str(REPO / "nslab")
    for pkg in (home / "nslab", home / "pp" / "nslab"):
        pkg.mkdir(parents=True)
        (pkg / "__init__.py").write_text(FAKE_PACKAGE.format(marker=str(marker), real=real))
    (home / "pp" / "sitecustomize.py").write_text(
        f"import os\nopen({str(marker)!r}, 'a').write(f'sitecustomize in pid {{os.getpid()}}\\n')\n")
    (home / "bin").mkdir()
    for tool in TOOLS:
        path = home / "bin" / tool
        path.write_text(FAKE_TOOL.format(marker=marker, real=shutil.which(tool)))
        path.chmod(0o755)
    for root, dirs, files in os.walk(home):        # a user's directory, not root's
        for name in [root] + [os.path.join(root, n) for n in dirs + files]:
            os.chown(name, 65534, 65534)
    env = {**os.environ, "PATH": f"{home / 'bin'}:{os.environ['PATH']}", "PYTHONPATH": str(home / "pp"),
           "PYTHONSTARTUP": str(home / "pp" / "sitecustomize.py")}
    return home, env, marker


def cli(home, env, *args, check=True) -> subprocess.CompletedProcess:
    """`nslab ARGS` run from H as the console script runs it (sys.path: this checkout, not cwd)."""
    code = f"import sys; sys.path.insert(0, {str(REPO)!r}); from nslab.cli import main; main()"
    proc = subprocess.run([sys.executable, "-I", "-c", code, *map(str, args)], cwd=home, env=env,
                          capture_output=True, text=True, timeout=120 * TIMEOUT_SCALE)
    assert not check or proc.returncode == 0, f"nslab {' '.join(map(str, args))}: {proc.stdout}{proc.stderr}"
    return proc


def marks(marker) -> str:
    return marker.read_text() if marker.exists() else ""


def until(check, timeout: float) -> bool:
    end = time.monotonic() + timeout * TIMEOUT_SCALE
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.05)
    return False


def test_nothing_nslab_starts_runs_the_callers_code(tmp_path):
    home, env, marker = hostile_dir(tmp_path)
    text = (TOPOLOGIES / "spine-leaf.yaml").read_text()      # serve: http pods, and the udp dataplanes
    topo = tmp_path / "udp.yaml"
    topo.write_text(re.sub(r"^  backend: .*$", "  backend: {type: udp}", text, flags=re.M))

    def up(path, name, backend=None):
        cli(home, env, "up", "-q", path, "--name", name)
        return Lab(name=name, file=str(path), run_dir="/run/nslab")

    factory = LabFactory("t", [TOPOLOGIES, REPO], up=up, down=_cli_down)
    try:
        lab = factory(str(topo))
        procs = {p["what"].split(" ")[0]: p for p in lab.state["processes"]}
        assert {"agent:", "warden:", "udp"} <= set(procs), procs
        assert marks(marker) == "", f"up ran the caller's code:\n{marks(marker)}"

        # the agent and the warden die together: `show` (from H) starts the agent again
        for p in (procs["agent:"], procs["warden:"]):
            os.kill(p["pid"], signal.SIGKILL)
        assert until(lambda: not any(_alive(p["pid"], p["start_time"]) for p in (procs["agent:"], procs["warden:"])),
                     5)
        assert "restarted the lab agent" in cli(home, env, "show", "-l", lab.name, "worker3").stdout

        def healed():
            live = {p["what"].split(" ")[0]: p for p in lab.state["processes"] if _alive(p["pid"], p["start_time"])}
            return {"agent:", "warden:"} <= set(live) and live["agent:"]["pid"] != procs["agent:"]["pid"]
        assert until(healed, 10)
        agent = next(p for p in lab.state["processes"] if p["what"].startswith("agent:"))
        assert os.readlink(f"/proc/{agent['pid']}/cwd") == "/"
        with open(f"/proc/{agent['pid']}/environ", "rb") as f:
            environ = dict(v.split(b"=", 1) for v in f.read().split(b"\0") if b"=" in v)
        assert b"PYTHONPATH" not in environ and str(home).encode() not in environ.get(b"PATH", b"")

        # nslab's own wrapper around a user's command (`ip netns exec`) is not the caller's
        assert cli(home, env, "exec", "-l", lab.name, "client", "--", "true").returncode == 0
        assert marks(marker) == "", f"nslab ran the caller's code:\n{marks(marker)}"
    finally:
        factory.close()
