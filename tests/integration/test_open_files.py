"""Issue 18, hole 9: the window of namespaces apply keeps open is sized to the open-files
limit, so a lab larger than a fixed window of 256 comes up under `ulimit -n 1024` (soft and
hard), its pings work, and it goes down clean.  Before, validate refused it: 301 namespaces
"need about 1088 open files"."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO, TIMEOUT_SCALE, installed, leftovers, nslab, unique_lab_name
from nslab import state



def limited(*args, timeout=300) -> subprocess.CompletedProcess:
    """`nslab ARGS` with RLIMIT_NOFILE 1024 soft and hard (the CLI cannot raise it)."""
    installed("prlimit")            # util-linux, which install.sh installs: missing is a failure, not a skip
    return subprocess.run(["prlimit", "--nofile=1024:1024", sys.executable, "-m", "nslab.cli", *map(str, args)],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout * TIMEOUT_SCALE)


def test_a_300_node_lab_under_a_hard_limit_of_1024_files(tmp_path, root_unchanged):
    name = unique_lab_name()
    path = tmp_path / "single.yaml"
    nslab("generate", "single:300", "-o", path, "--name", name, check=True)
    processes: list = []
    try:
        up = limited("up", path, "-q")
        assert up.returncode == 0, up.stderr
        with open(f"{state.RUN_DIR}/{name}/state.json") as f:
            processes = json.load(f).get("processes", [])
        # the file's own tests: h1 <-> h300 across the 300-port switch
        report = limited("test", "-l", name, "--json")
        assert report.returncode == 0, report.stdout + report.stderr
        assert json.loads(report.stdout)["ok"]
        ping = limited("exec", "-l", name, "h150", "--", "ping", "-c1", "-W5", "10.0.0.2")
        assert ping.returncode == 0, ping.stdout + ping.stderr
    finally:
        down = limited("down", name)
    assert down.returncode == 0, down.stderr
    assert not leftovers(name, state.RUN_DIR, processes)
