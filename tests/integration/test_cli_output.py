"""The CLI's output on a real lab (root): `nslab up ... | cat` prints every namespace,
address and MAC whole, overlay devices included; `--json` says the same; on a terminal, work
over a second shows a progress bar on stderr, and piped it prints nothing but the summary."""
from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time

import pytest

from conftest import NSLAB, REPO, TIMEOUT_SCALE, nslab, unique_lab_name

pytestmark = pytest.mark.usefixtures("root_unchanged")


def test_up_piped_is_whole_with_overlay_devices():
    name = unique_lab_name()
    up = nslab("up", "flannel-vxlan", "--name", name, "--backend", "udp", timeout=120)
    try:
        assert up.returncode == 0, up.stderr
        assert "…" not in up.stdout and "┃" not in up.stdout
        rows = json.loads(nslab("ls", "--json", check=True).stdout)
        assert any(r["lab"] == name for r in rows)
        table = [line.split() for line in up.stdout.splitlines()[2:] if line.startswith(("master ", "node1 "))]
        devices = {(r[0], r[3]) for r in table}
        assert {("master", "cni0"), ("master", "flannel0"), ("node1", "flannel0"), ("master", "ens33")} <= devices
        for r in table:
            assert r[2] == f"{name}.{r[0]}"                       # the namespace, whole, on every line
        out = subprocess.run(["ip", "netns", "exec", f"{name}.master", "ip", "-br", "addr", "show", "ens33"],
                             capture_output=True, text=True, check=True).stdout
        assert out.split()[2] in up.stdout                        # the address as the kernel has it
    finally:
        down = nslab("down", name, timeout=120)
    assert down.returncode == 0 and down.stdout.strip() == f"lab {name} removed (5 namespaces)"


def test_up_json_lists_the_devices():
    name = unique_lab_name()
    up = nslab("up", "diy-ipip", "--name", name, "--json", timeout=120)
    try:
        assert up.returncode == 0, up.stderr
        doc = json.loads(up.stdout)
        assert doc["lab"] == name
        assert {d["interface"] for d in doc["devices"]} >= {"tunl1", "v1"}
        assert all(d["namespace"].startswith(name + ".") for d in doc["devices"])
    finally:
        nslab("down", name, timeout=120)


def run_on_a_terminal(args: list[str], timeout: float, env: dict | None = None) -> tuple[int, str]:
    """args run with stdout and stderr on a pseudo-terminal: (exit code, what it showed)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(NSLAB + args, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, cwd=REPO,
                            env={**os.environ, "COLUMNS": "100", **(env or {})})
    os.close(slave)
    shown, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        if select.select([master], [], [], 0.2)[0]:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            shown += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    return proc.wait(timeout=timeout), shown.decode(errors="replace")


def test_progress_bar_on_a_terminal_only(tmp_path):
    """A bar on the terminal once work has lasted NSLAB_PROGRESS_AFTER seconds (1 by default;
    0 here, so that a fast machine shows it too); piped, never."""
    name = unique_lab_name()
    topo = tmp_path / "big.yaml"
    nslab("generate", "single:100", "-o", topo, "--name", name, check=True)
    now = {"NSLAB_PROGRESS_AFTER": "0"}
    rc, shown = run_on_a_terminal(["up", "-q", str(topo)], 180 * TIMEOUT_SCALE, now)
    try:
        assert rc == 0, shown
        assert f"up {name}: " in shown and "namespaces" in shown         # the bar's phase
        rc, shown = run_on_a_terminal(["down", name], 180 * TIMEOUT_SCALE, now)
        assert rc == 0 and f"down {name}: removing namespaces" in shown
        assert f"lab {name} removed (101 namespaces)" in shown
    finally:
        nslab("down", name, timeout=180)
    up = nslab("up", "-q", topo, timeout=180, env=now)                   # piped: the name alone
    try:
        assert up.returncode == 0 and up.stdout == f"{name}\n" and up.stderr == ""
    finally:
        down = nslab("down", name, timeout=180, env=now)
    assert down.stdout == f"lab {name} removed (101 namespaces)\n" and down.stderr == ""
