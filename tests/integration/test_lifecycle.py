"""Lab lifecycle through the real CLI: up/down of every shipped topology with the root
namespace untouched, labs side by side, down after kill -9, and the CLI's user-facing
behaviour (exit codes, messages, exec, shell, name resolution)."""
from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import NSLAB, REPO, TOPOLOGIES, container_engine_ready, leftovers, nslab, unique_lab_name

pytestmark = pytest.mark.root

SHIPPED = sorted(p.name for p in TOPOLOGIES.glob("*.yaml"))


def lab_namespaces(name: str) -> list[str]:
    try:
        return sorted(n for n in os.listdir("/run/netns") if n.startswith(name + "."))
    except FileNotFoundError:
        return []


def one_line(text: str) -> str:
    lines = [l for l in text.splitlines() if l.strip()]
    assert len(lines) == 1, f"expected one line, got:\n{text}"
    return lines[0]


@pytest.mark.parametrize("topology", SHIPPED)
def test_shipped_topology_up_and_down(root_unchanged, lab_factory, topology):
    # Every shipped topology is valid and comes up on a machine set up by install.sh (container
    # nodes: it starts the engine and builds the images): a refusal is a failure, never a skip.
    check = nslab("validate", TOPOLOGIES / topology)
    assert check.returncode == 0, f"nslab validate rejects shipped topology {topology}:\n{check.stderr}"
    container_engine_ready(topology)
    lab = lab_factory(topology)
    st = lab.state
    assert st["status"] == "up"
    assert sorted(st["namespaces"]) == lab_namespaces(lab.name)
    processes = st["processes"]
    lab.down()
    assert leftovers(lab.name, lab.run_dir, processes) == []


def test_two_labs_same_node_names(lab_factory):
    a = lab_factory("diy-veth.yaml")
    b = lab_factory("diy-veth.yaml")
    assert a.ns("ns1") != b.ns("ns1")
    for lab in (a, b):
        assert lab.exec("ns1", "ping", "-c1", "-W2", "10.1.1.3").returncode == 0
    a.down()
    assert lab_namespaces(a.name) == []
    assert lab_namespaces(b.name) == sorted(b.state["namespaces"])
    out = b.exec("ns1", "ping", "-c1", "-W2", "10.1.1.3")
    assert out.returncode == 0, out.stdout + out.stderr


def test_down_from_another_process(lab_factory):
    lab = lab_factory("diy-bridge.yaml")
    processes = lab.state["processes"]
    proc = subprocess.run(NSLAB + ["down", lab.name], capture_output=True, text=True, cwd="/")
    assert proc.returncode == 0, proc.stderr
    lab.down_done = True
    assert leftovers(lab.name, lab.run_dir, processes) == []


def big_topology(hosts: int = 150) -> str:
    names = [f"h{i}" for i in range(1, hosts + 1)]
    return (f"name: big\nhosts: [{', '.join(names)}]\n"
            f"segments:\n  lan: {{subnet: 10.0.0.0/16, members: [{', '.join(names)}]}}\n")


def test_kill_9_during_up_then_down_removes_everything(tmp_path):
    topo = tmp_path / "big.yaml"
    topo.write_text(big_topology())
    mid_up = 0
    for delay in (0.0, 0.005, 0.02, 0.05, 0.1):
        name = unique_lab_name()
        proc = subprocess.Popen(NSLAB + ["up", "-q", str(topo), "--name", name],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
        try:
            deadline = time.monotonic() + 20
            while not lab_namespaces(name) and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.001)
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            at_kill = lab_namespaces(name)
            try:
                status = json.loads(Path(f"/run/nslab/{name}/state.json").read_text())["status"]
            except (OSError, ValueError):
                status = "?"
            mid_up += status == "creating"
            assert at_kill, f"no namespace of {name} existed when nslab up was killed (delay {delay})"
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            down = nslab("down", name)
        assert down.returncode == 0, down.stderr
        assert leftovers(name, "/run/nslab", []) == []
    assert mid_up, "every kill landed after `up` had finished; the test did not interrupt an up"


def test_down_all(lab_factory, tmp_path):
    run_dir = str(tmp_path / "run")       # --all must only ever see this test's labs
    labs = [lab_factory("diy-veth.yaml", run_dir=run_dir), lab_factory("diy-bridge.yaml", run_dir=run_dir)]
    proc = nslab("down", "--all", env={"NSLAB_RUN_DIR": run_dir})
    assert proc.returncode == 0, proc.stderr
    for lab in labs:
        lab.down_done = True
        assert lab.name in proc.stdout
        assert leftovers(lab.name, run_dir, []) == []


def test_ls_json(lab_factory, tmp_path):
    run_dir = str(tmp_path / "run")
    lab = lab_factory("diy-veth.yaml", run_dir=run_dir)
    proc = nslab("ls", "--json", env={"NSLAB_RUN_DIR": run_dir})
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [r["lab"] for r in rows] == [lab.name]
    row = rows[0]
    assert row["status"] == "up" and row["nodes"] == 2
    assert sorted(row["namespaces"]) == [f"{lab.name}.ns1", f"{lab.name}.ns2"]
    assert row["file"] == str(TOPOLOGIES / "diy-veth.yaml")


def test_up_of_running_lab_changes_nothing(lab_factory):
    lab = lab_factory("diy-veth.yaml")
    proc = nslab("up", TOPOLOGIES / "diy-veth.yaml", "--name", lab.name)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, f"lab {lab.name}: no changes\n", ""), proc
    assert lab.exec("ns1", "ping", "-c1", "-W2", "10.1.1.3").returncode == 0   # untouched


def test_exec_passes_exit_code_and_stdout(lab_factory):
    lab = lab_factory("diy-veth.yaml")
    proc = lab.exec("ns1", "sh", "-c", "echo hello from $(cat /sys/class/net/veth0/address); exit 7")
    assert proc.returncode == 7
    assert proc.stdout.startswith("hello from ") and proc.stdout.endswith("\n")


def test_node_names_resolve_inside_nodes(lab_factory):
    lab = lab_factory("diy-veth.yaml")
    proc = lab.exec("ns1", "getent", "hosts", "ns2")
    assert proc.returncode == 0, proc.stderr
    assert re.match(r"10\.1\.1\.3\s+ns2\b", proc.stdout), proc.stdout


def read_until(fd: int, pattern: str, timeout: float = 10.0) -> str:
    buf = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
            if re.search(pattern, buf.decode(errors="replace")):
                break
    return buf.decode(errors="replace")


def test_shell_prompt_names_the_node(lab_factory):
    lab = lab_factory("diy-veth.yaml")
    master, slave = pty.openpty()
    proc = subprocess.Popen(NSLAB + ["shell", "-l", lab.name, "ns1"], stdin=slave, stdout=slave, stderr=slave,
                            start_new_session=True, cwd=REPO, env={**os.environ, "TERM": "dumb"})
    os.close(slave)
    try:
        prompt = f"[{lab.name}:ns1]"
        seen = read_until(master, re.escape(prompt))
        assert prompt in seen, seen
        os.write(master, b"echo node=$NSLAB_NODE; exit\n")
        out = read_until(master, r"node=ns1\r?\n")
        assert re.search(r"node=ns1\r?\n", out), out
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


def test_non_root_gets_one_line(tmp_path):
    # uid/gid nobody; CAP_DAC_READ_SEARCH only so that it can read the interpreter under /root.
    argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
            "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]
    name = unique_lab_name()
    proc = subprocess.run(argv + NSLAB + ["up", str(TOPOLOGIES / "diy-veth.yaml"), "--name", name],
                          capture_output=True, text=True, cwd="/tmp", timeout=60)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    line = one_line(proc.stderr)
    assert "root" in line, line
    assert lab_namespaces(name) == [] and not os.path.exists(f"/run/nslab/{name}")


def test_missing_tool_is_named_with_install_hint(lab_factory):
    lab = lab_factory("diy-veth.yaml")
    proc = lab.nslab("exec", "-l", lab.name, "ns1", "--", "true", env={"PATH": "/nonexistent"})
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    line = one_line(proc.stderr)
    assert "ip not found" in line and "apt-get install -y iproute2" in line, line
