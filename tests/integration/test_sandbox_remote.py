"""The other commands for a lab across machines, from the host with NSLAB_ETCD (issue 20,
item 2): show, exec with a TTY, shell, capture, link set/show/clear, each run by the agent
of the machine holding the node over its authenticated channel (POST /v1/run,
nslab/channel.py).  Issue 20's CI lab: rack1 on m1, rack2 on m2, spine and leaves on m3."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from conftest import REPO, unique_lab_name
from test_sandbox import docker_exec, free_base, host_view
from test_sandbox_labs import RACKS, Sandbox

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def sandbox():
    """Three machines of this module's own (name mh<pid>x<n>, ports from 23820)."""
    from conftest import nslab
    name = "mh" + unique_lab_name()[1:]
    port = free_base(3, 23820)
    up = nslab("sandbox", "up", "3", "--name", name, "--port", port, timeout=240)
    assert up.returncode == 0, up.stderr
    try:
        yield Sandbox(name, port)
    finally:
        down = nslab("sandbox", "down", "--name", name, timeout=180)
        assert down.returncode == 0, down.stderr
        assert host_view(name) == {"netns": [], "containers": []}


TESTS = """
tests:
  - {name: other rack over vxlan, ping: [client, web@worker3], expect: {encap: vxlan}}
  - {name: same node bridged, ping: [client, web@worker1], expect: {encap: none, ttl: 64}}
  - {name: http to the other rack, http: [client, web@worker3], expect: {encap: vxlan}}
  - {name: nothing listens on 81, tcp: [client, web@worker3], port: 81, expect: failure}
  - {name: from rack2, ping: [web-worker3, client]}
  - {name: via the spine, ping: [client, web@worker3], expect: {via: spine}}
"""


@pytest.fixture(scope="module")
def lab(sandbox, tmp_path_factory):
    name = unique_lab_name()
    path = tmp_path_factory.mktemp("racks") / "spine-leaf-racks.yaml"
    path.write_text(open(RACKS).read() + TESTS)
    up = sandbox.nslab("up", path, "--name", name, timeout=240)
    try:
        assert up.returncode == 0, up.stderr
        yield name
    finally:
        down = sandbox.nslab("down", name, timeout=240)
        assert down.returncode == 0, down.stderr


def on_a_tty(sandbox, command: str, stdin: str = "") -> subprocess.CompletedProcess:
    """`command` (a shell line) run by script(1), its stdin a pseudo-terminal."""
    env = dict(os.environ, PYTHONPATH=str(REPO), **sandbox.env)
    return subprocess.run(["script", "-qec", command, "/dev/null"], input=stdin, env=env,
                          capture_output=True, text=True, timeout=120)


def nslab_line(*args: str) -> str:
    return " ".join([sys.executable, "-m", "nslab", *args])


def test_every_run_request_is_refused_without_the_credential(sandbox, lab):
    body = {"lab": lab, "command": "exec", "target": "client", "argv": ["true"]}
    assert sandbox.agent("m1", "/v1/run", body, token=None)[0] == 401
    assert sandbox.agent("m1", "/v1/run", body, token="0" * 64)[0] == 401
    # with it: a node of another machine, an option naming a file, a bad name: refused
    status, answer = sandbox.agent("m1", "/v1/run", dict(body, target="web-worker3"))
    assert status == 404 and "no node 'web-worker3' here" in answer["error"], answer
    status, answer = sandbox.agent("m1", "/v1/run", dict(body, command="capture", options={"write": "/etc/x"}))
    assert status == 400 and "-w names no file on this machine" in answer["error"], answer
    status, answer = sandbox.agent("m1", "/v1/run", dict(body, lab="../x"))
    assert status == 400, answer


def test_show_lists_every_node_of_every_machine(sandbox, lab):
    where = sandbox.where(lab)
    assert set(where.values()) == {"m1", "m2", "m3"}
    got = sandbox.nslab("show", "-l", lab, "--json", timeout=120)
    assert got.returncode == 0, got.stderr
    nodes = json.loads(got.stdout)["nodes"]
    assert set(nodes) == set(where)
    assert {n: e["machine"] for n, e in nodes.items()} == where
    text = sandbox.nslab("show", "-l", lab, "--brief", timeout=120)
    assert text.returncode == 0, text.stderr
    for m in ("m1", "m2", "m3"):
        assert f"machine {m}:" in text.stdout
    for node in where:
        assert node in text.stdout, node
    one = sandbox.nslab("show", f"{lab}.web-worker3", "--json", timeout=120)
    assert one.returncode == 0 and list(json.loads(one.stdout)["nodes"]) == ["web-worker3"], one.stderr


def test_exec_and_shell_with_a_tty_run_in_the_node(sandbox, lab):
    got = on_a_tty(sandbox, nslab_line("exec", "-l", lab, "web-worker3", "--", "sh", "-c", "'tty; hostname; exit 7'"))
    assert got.returncode == 7, got.stdout + got.stderr
    assert "/dev/pts/" in got.stdout and "web-worker3" in got.stdout, got.stdout
    # the terminal's size is the command's
    sized = on_a_tty(sandbox, "stty rows 40 cols 100; " + nslab_line("exec", "-l", lab, "leaf01", "--", "stty", "size"))
    assert sized.returncode == 0 and "40 100" in sized.stdout, sized.stdout + sized.stderr
    # without a TTY: stdin passed through, no pty
    piped = sandbox.nslab("exec", "-l", lab, "client", "--", "sh", "-c", "tty; cat", input="hello\n")
    assert "not a tty" in piped.stdout and "hello" in piped.stdout, piped.stdout + piped.stderr
    shell = on_a_tty(sandbox, nslab_line("shell", "-l", lab, "leaf02"), stdin="hostname; tty; exit 3\n")
    assert shell.returncode == 3, shell.stdout + shell.stderr
    assert "leaf02" in shell.stdout and "/dev/pts/" in shell.stdout, shell.stdout
    bad = sandbox.nslab("exec", "-l", lab, "nosuch", "--", "true")
    assert bad.returncode == 2 and "no node nosuch" in bad.stderr, bad.stderr


def test_link_set_on_a_remote_node_changes_its_qdisc(sandbox, lab):
    box = f"{sandbox.name}.m2"
    got = sandbox.nslab("link", "set", "-l", lab, "web-worker3:eth0", "--rate", "10mbit", timeout=120)
    assert got.returncode == 0, got.stderr
    assert "web-worker3:eth0" in got.stdout and "10mbit" in got.stdout.lower(), got.stdout
    qdisc = docker_exec(box, "tc", "-n", f"{lab}.web-worker3", "qdisc", "show", "dev", "eth0").stdout
    assert "tbf" in qdisc and "rate 10Mbit" in qdisc, qdisc
    shown = sandbox.nslab("link", "show", "-l", lab, "web-worker3:eth0", "--json", timeout=120)
    assert shown.returncode == 0 and "10mbit" in shown.stdout.lower(), shown.stdout + shown.stderr
    assert sandbox.nslab("link", "clear", "-l", lab, "web-worker3:eth0", timeout=120).returncode == 0
    qdisc = docker_exec(box, "tc", "-n", f"{lab}.web-worker3", "qdisc", "show", "dev", "eth0").stdout
    assert "tbf" not in qdisc, qdisc


def test_capture_on_a_stitched_link_shows_the_labs_frames(sandbox, lab):
    """leaf01's eth0 on m3 is the VXLAN stitch to rack1 on m1: the capture shows the lab's
    own frames (client's ICMP to its gateway, leaf01 at 10.0.0.254), not the stitch's UDP."""
    env = dict(os.environ, PYTHONPATH=str(REPO), **sandbox.env)
    cap = subprocess.Popen([sys.executable, "-m", "nslab", "capture", "-l", lab, "leaf01:eth0", "-c", "2",
                            "-f", "icmp"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while cap.poll() is None and time.monotonic() < deadline:
            sandbox.exec(lab, "client", "ping", "-c1", "-W2", "10.0.0.254")
        out, err = cap.communicate(timeout=30)
    finally:
        if cap.poll() is None:
            cap.kill()
            cap.communicate()
    assert cap.returncode == 0, err
    assert "ICMP echo" in out and "10.0.0.254" in out, out
    assert "4789" not in out and "vxlan" not in out.lower(), out


def test_trace_on_one_machine_and_across_machines_with_the_stitch_hops(sandbox, lab):
    got = sandbox.nslab("trace", "-l", lab, "client", "web-worker1", "--brief", timeout=120)
    assert got.returncode == 0, got.stdout + got.stderr
    assert "client" in got.stdout and "web-worker1" in got.stdout and "stitch" not in got.stdout, got.stdout
    across = sandbox.nslab("trace", "-l", lab, "client", "web-worker3", "--brief", timeout=240)
    assert across.returncode == 0, across.stdout + across.stderr
    assert "m1 -> m3: vxlan stitch VNI" in across.stdout and "m3 -> m2: vxlan stitch VNI" in across.stdout, \
        across.stdout
    assert "delivered to web-worker3" in across.stdout, across.stdout


def test_the_labs_tests_run_each_on_its_sources_machine(sandbox, lab):
    names = ["other rack over vxlan", "same node bridged", "http to the other rack", "nothing listens on 81",
             "from rack2"]
    got = sandbox.nslab("test", "-l", lab, "--json", *[a for n in names for a in ("--only", n)], timeout=240)
    assert got.returncode == 0, got.stdout + got.stderr
    report = json.loads(got.stdout)
    assert report["ok"] and [r["name"] for r in report["results"]] == names, report
    # a test watching a node on another machine (via: spine, on m3): watched there
    every = sandbox.nslab("test", "-l", lab, timeout=240)
    assert every.returncode == 0, every.stdout + every.stderr
    assert "6 passed, 0 failed" in every.stdout and "reached, via spine" in every.stdout, every.stdout
