"""Clear refusals (issue 9): not root, a missing tool, a Docker engine that does not answer,
a kernel without a needed module. Each: one sentence on stderr, exit status not 0, no
traceback, and nothing left behind (namespaces, /run/nslab, /etc/netns, processes, files,
the root namespace)."""
from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from conftest import NSLAB, TIMEOUT_SCALE, TOPOLOGIES, leftovers, nslab, unique_lab_name

pytestmark = pytest.mark.root


def refusal(proc: subprocess.CompletedProcess, *words: str) -> str:
    """The one line of a refusal; asserts its shape and that it names `words`."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("nslab: "), proc.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def nothing_left(name: str) -> None:
    assert leftovers(name, "/run/nslab", []) == []


# ---- not root --------------------------------------------------------------------------------
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
          # only so that it can read the interpreter (under /root with pyenv) and pytest's tmp_path
          "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]
ROOT_COMMANDS = {
    "up": ["up", "{file}", "--name", "{name}"],
    "down": ["down", "{name}"],
    "down --all": ["down", "--all"],
    "exec": ["exec", "-l", "{name}", "ns1", "--", "true"],
    "shell": ["shell", "-l", "{name}", "ns1"],
    "show": ["show", "-l", "{name}"],
    "trace": ["trace", "-l", "{name}", "ns1", "ns2"],
    "test": ["test", "{file}", "--name", "{name}"],
    "capture": ["capture", "-l", "{name}", "ns1", "-c", "1"],
    "rewire": ["rewire", "-l", "{name}"],
    "images build": ["images", "build"],
}


@pytest.mark.parametrize("command", ROOT_COMMANDS)
def test_not_root_is_refused_before_anything(command, root_unchanged):
    name = unique_lab_name()
    argv = [a.format(file=TOPOLOGIES / "diy-veth.yaml", name=name) for a in ROOT_COMMANDS[command]]
    proc = subprocess.run(NOBODY + NSLAB + argv, capture_output=True, text=True, cwd="/", stdin=subprocess.DEVNULL,
                          timeout=60 * TIMEOUT_SCALE)
    line = refusal(proc, "needs root", "sudo")
    assert proc.returncode == 3, line
    nothing_left(name)


# ---- a missing tool ------------------------------------------------------------------------------
def path_without(tmp_path: Path, *names: str) -> str:
    """A PATH with every command of the current one except `names` (symlinks in one dir)."""
    shadow = tmp_path / "bin"
    shadow.mkdir()
    for d in os.environ["PATH"].split(os.pathsep):
        try:
            entries = os.listdir(d)
        except OSError:
            continue
        for e in entries:
            src = os.path.join(d, e)
            if e in names or (shadow / e).exists() or not os.access(src, os.X_OK) or os.path.isdir(src):
                continue
            (shadow / e).symlink_to(src)
    return str(shadow)


@pytest.mark.parametrize("tool, package, command", [
    ("ip", "iproute2", ["exec", "ns1", "--", "true"]),
    ("ip", "iproute2", ["shell", "ns1"]),
    ("ip", "iproute2", ["capture", "ns1", "-c", "1", "-w", "{pcap}"]),
    ("tcpdump", "tcpdump", ["capture", "ns1", "-c", "1", "-w", "{pcap}"]),
])
def test_missing_tool_is_named_with_its_package(tool, package, command, lab_factory, tmp_path):
    lab = lab_factory("diy-veth.yaml")
    before = lab.state
    pcap = tmp_path / "out.pcap"
    argv = [command[0], "-l", lab.name, *(a.format(pcap=pcap) for a in command[1:])]
    proc = lab.nslab(*argv, env={"PATH": path_without(tmp_path, tool)})
    refusal(proc, f"{tool} not found", f"apt-get install -y {package}")
    assert proc.returncode == 3
    assert not pcap.exists()                                       # refused before tcpdump ran
    assert lab.state["processes"] == before["processes"]           # nothing started, nothing recorded
    assert lab.exec("ns1", "true").returncode == 0                 # and the lab is as it was


def test_missing_iptables_is_refused_in_one_sentence(lab_factory, tmp_path, monkeypatch):
    """nslab.iptables (a lab namespace's rules) without iptables-restore on PATH."""
    from nslab.apply import iptables
    from nslab.errors import PrerequisiteError
    lab = lab_factory("diy-veth.yaml")
    ns = lab.ns("ns1")
    monkeypatch.setenv("PATH", path_without(tmp_path, "iptables", "iptables-restore", "iptables-save",
                                            "iptables-legacy-restore", "iptables-nft-restore"))
    with pytest.raises(PrerequisiteError) as e:
        iptables.apply(ns, "*filter\n:FORWARD DROP [0:0]\nCOMMIT\n")
    assert "iptables-restore" in str(e.value) and "apt-get install iptables" in str(e.value), e.value
    assert "\n" not in str(e.value)
    monkeypatch.undo()
    rules = subprocess.run(["ip", "netns", "exec", ns, "iptables-save"], capture_output=True, text=True, timeout=30)
    assert "DROP" not in rules.stdout


# ---- the Docker engine does not answer --------------------------------------------------------------
@pytest.mark.parametrize("engine", ["dead socket", "no socket"])
def test_docker_engine_not_answering(engine, tmp_path, root_unchanged):
    sock = tmp_path / "docker.sock"
    if engine == "dead socket":                    # a socket file nobody listens on: ECONNREFUSED
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(sock))
        s.close()
    name = unique_lab_name()
    proc = nslab("up", "--name", name, TOPOLOGIES / "containers.yaml", env={"DOCKER_HOST": f"unix://{sock}"})
    refusal(proc, "Docker engine")
    assert proc.returncode == 3
    nothing_left(name)


# ---- a kernel without a needed module -------------------------------------------------------------
def test_kernel_without_ipip_refuses_nslab_ipip_kernel(tmp_path, root_unchanged):
    from nslab.apply import kernel as tunnel
    if tunnel.ipip_module_available():
        pytest.skip("this kernel's ipip is loaded (the VM stage): nothing to refuse")
    name = unique_lab_name()
    proc = nslab("up", "--name", name, TOPOLOGIES / "diy-ipip.yaml", env={"NSLAB_IPIP": "kernel"})
    line = refusal(proc, "NSLAB_IPIP=kernel", "ipip module", "unset NSLAB_IPIP")
    assert proc.returncode == 3
    if tunnel.ipip_state() == "unloaded":
        assert "`modprobe ipip`" in line
    nothing_left(name)
    # and probing did not load it (tunl0 in the root namespace: root_unchanged would see it too)
    assert tunnel.ipip_state() != "loaded"
