"""Crash safety in CI: a small run of tests/crash/killtest.py (SIGKILL of `nslab up` and
`nslab down` at random moments, then `nslab down`, host compared with before), and a
check that the tool's comparison does see a lab left behind (it could otherwise pass
while blind).  The full measurement: `sudo python3 tests/crash/killtest.py --runs 100`.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from conftest import REPO, TIMEOUT_SCALE, nslab

TOOL = REPO / "tests" / "crash" / "killtest.py"


def load_tool():
    spec = importlib.util.spec_from_file_location("killtest", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_killtest_small_run_is_clean():
    tool = load_tool()
    kinds = "udp,hosts200" + ("" if tool.containers_unavailable() else ",containers")
    proc = subprocess.run([sys.executable, str(TOOL), "--runs", "6", "--seed", "7", "--scenarios", kinds],
                          capture_output=True, text=True, timeout=600 * TIMEOUT_SCALE, cwd=REPO)
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    summary = next(line for line in proc.stdout.splitlines() if " runs clean; " in line)
    clean, total = map(int, summary.split(" ")[0].split("/"))
    assert clean == total >= 6


def test_killtest_sees_what_a_lab_leaves_behind(tmp_path):
    tool = load_tool()
    before = tool.host_state(tool.PREFIX)
    lab = f"{tool.PREFIX}leak"
    path = tmp_path / "t.yaml"
    path.write_text(tool.hosts_yaml(3))
    nslab("up", "-q", path, "--name", lab, check=True)
    try:
        after = tool.host_state(tool.PREFIX, tool.namespace_inodes(lab), tool.recorded_processes(lab))
        diff = "\n".join(tool.snapshot_diff(before, after))
        for what in ("netns", "run dir", "/etc/netns"):
            assert what in diff, diff
    finally:
        nslab("down", lab, check=True)
    assert tool.snapshot_diff(before, tool.host_state(tool.PREFIX)) == []


@pytest.mark.parametrize("scenario", ["nonsense"])
def test_killtest_refuses_unknown_scenario(scenario):
    proc = subprocess.run([sys.executable, str(TOOL), "--runs", "1", "--scenarios", scenario],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 2 and "unknown scenario nonsense" in proc.stderr
