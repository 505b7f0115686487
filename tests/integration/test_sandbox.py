"""`nslab sandbox up N` / `down` for real (issue 20, item 8): stand-in machines as Docker
containers on nslab's own underlay (198.18.0.0/15, a bridge in a namespace of its own),
an etcd on that underlay only, reached from the host through 127.0.0.1 forwarders.

Needs the Docker engine and the nslab/machine image, which install.sh starts and builds
(missing: the tests fail and say why).  Each test's sandbox has its own name (the lab
naming scheme, t<pid>x<n>) and its own free ports; `down` must leave `ip netns`,
`docker ps -a`, the listening ports and the root namespace exactly as before.
"""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess

import docker
import pytest

from conftest import nslab, unique_lab_name

pytestmark = pytest.mark.root


def sandbox_name() -> str:
    """A unique sandbox name: the labs' scheme with prefix sb (sb<pid>x<n>), outside the
    session's /run/netns watch (t<pid>x...): a module's sandbox outlives a test."""
    return "sb" + unique_lab_name()[1:]


def free_base(n: int, start: int = 23790) -> int:
    """The first port P from `start` with P..P+n all free on 127.0.0.1."""
    def free(p):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p))
                return True
            except OSError:
                return False
    for p in range(start, start + 2000):
        if all(free(q) for q in range(p, p + n + 1)):
            return p
    pytest.fail("no free ports for the sandbox")


def host_view(name: str) -> dict:
    """What of sandbox `name` the host holds (other helpers' labs come and go meanwhile):
    namespaces and containers by its name, containers by its label."""
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split("\n")
    engine = docker.from_env()
    return {"netns": sorted(n.split()[0] for n in netns if n.startswith(name + ".")),
            "containers": sorted({c.name for c in engine.containers.list(all=True) if c.name.startswith(name + ".")}
                                 | {c.name for c in engine.containers.list(
                                    all=True, filters={"label": f"nslab.sandbox={name}"})})}


def docker_exec(container: str, *cmd, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", "exec", container, *map(str, cmd)], capture_output=True, text=True,
                          timeout=timeout)


@contextlib.contextmanager
def started_sandbox(machines: int = 3, *options: str, start: int = 23790):
    """A sandbox of `machines` machines for a test module, (name, port, `sandbox up`'s
    output): NSLAB_TEST_SANDBOX=NAME:PORT names it, else a unique name and free ports from
    `start`.  At the end each agent's log is printed (shown when a test failed), the sandbox
    is removed, and nothing of it may be left on the host."""
    from nslab.apply import containers
    try:
        containers.engine().images.get("nslab/machine:latest")
    except Exception as e:
        pytest.fail(f"nslab/machine image missing ({e}): ./install.sh builds it", pytrace=False)
    given = os.environ.get("NSLAB_TEST_SANDBOX", "")
    name, _, port = given.partition(":")
    name, port = (name, int(port)) if given else (sandbox_name(), free_base(machines, start))
    up = nslab("sandbox", "up", str(machines), "--name", name, "--port", port, *options, timeout=240)
    assert up.returncode == 0, up.stderr
    try:
        yield name, port, up.stdout
    finally:
        for i in range(1, machines + 1):
            log = docker_exec(f"{name}.m{i}", "tail", "-60", "/run/nslab-agent.log").stdout
            print(f"--- m{i}'s agent:\n{log}")
        down = nslab("sandbox", "down", "--name", name, timeout=180)
        assert down.returncode == 0, down.stderr
        assert host_view(name) == {"netns": [], "containers": []}
        assert not os.path.exists(f"/run/nslab-sandbox/{name}")



@pytest.fixture
def machine_image():
    from nslab.apply import containers
    try:
        containers.engine().images.get("nslab/machine:latest")
    except Exception as e:
        pytest.fail(f"nslab/machine image missing ({e}): ./install.sh builds it (nslab images build)",
                    pytrace=False)


def test_sandbox_machines_etcd_and_down_leaves_host_as_before(root_unchanged, machine_image):
    from nslab import coord
    name = sandbox_name()
    before = host_view(name)
    port = free_base(2)
    up = nslab("sandbox", "up", "2", "--name", name, "--port", port, timeout=180)
    try:
        assert up.returncode == 0, up.stderr
        assert f"export NSLAB_ETCD=http://127.0.0.1:{port}" in up.stdout.splitlines()
        # etcd, from the host, through the forwarder
        etcd = coord.Etcd(f"http://127.0.0.1:{port}")
        etcd.put("/nslab-test/x", "y")
        assert etcd.get("/nslab-test/x").value == b"y"
        m1, m2 = f"{name}.m1", f"{name}.m2"
        assert host_view(name) == {"netns": [f"{name}.underlay"], "containers": [m1, m2]}
        # a machine: its own hostname, PID namespace, an underlay address and no route out
        assert docker_exec(m1, "hostname").stdout.strip() == "m1"
        assert docker_exec(m1, "cat", "/proc/1/comm").stdout.strip() in ("sleep", "docker-init", "tini")
        routes = docker_exec(m1, "ip", "-4", "route").stdout.splitlines()
        assert routes == ["198.18.0.0/15 dev eth0 proto kernel scope link src 198.18.1.1 "], routes
        ping = docker_exec(m1, "ping", "-c1", "-W5", "198.18.1.2")
        assert ping.returncode == 0, ping.stdout + ping.stderr
        # etcd listens on the underlay only: m2 reaches it there
        got = docker_exec(m2, "python3", "-c", "import nslab.coord as c; "
                          "print(c.Etcd('http://198.18.0.1:2379').get('/nslab-test/x').value.decode())")
        assert got.stdout.strip() == "y", got.stderr
        # nslab itself runs inside a machine, from this checkout: a lab in m1's kernel
        lab = docker_exec(m2, "python3", "-m", "nslab", "up", "-q", "diy-veth", "--name", "mmtry")
        assert lab.returncode == 0, lab.stderr
        ping = docker_exec(m2, "python3", "-m", "nslab", "exec", "-l", "mmtry", "ns1", "--", "ping", "-c1",
                           "-W5", "10.1.1.3")
        assert ping.returncode == 0, ping.stdout + ping.stderr
        assert not host_view("mmtry")["netns"]                   # the lab lives in m2's view only
    finally:
        down = nslab("sandbox", "down", "--name", name, timeout=120)
    assert down.returncode == 0, down.stderr
    assert f"removed container {m1}" in down.stdout
    assert host_view(name) == before == {"netns": [], "containers": []}
    with socket.socket() as s:                                    # the forwarder's port is free again
        s.bind(("127.0.0.1", port))


def test_sandbox_bad_input_creates_nothing(machine_image):
    name = sandbox_name()
    bad = nslab("sandbox", "up", "0", "--name", name)
    assert bad.returncode == 2 and "between 1 and" in bad.stderr
    bad = nslab("sandbox", "up", "1", "--name", "Bad.Name")
    assert bad.returncode == 2 and "--name 'Bad.Name'" in bad.stderr
    with socket.socket() as s:                                    # a taken port: refused, named
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        bad = nslab("sandbox", "up", "1", "--name", name, "--port", taken)
    assert bad.returncode == 2 and f"127.0.0.1:{taken} is taken" in bad.stderr
    gone = nslab("sandbox", "down", "--name", name)
    assert gone.returncode == 2 and "no sandbox" in gone.stderr
    assert host_view(name) == {"netns": [], "containers": []}


@pytest.mark.parametrize("recorded", [None, [0, 0]], ids=["no-identity", "other-identity"])
def test_sandbox_down_leaves_a_namespace_it_did_not_make(machine_image, recorded):
    """A record read back from disk is input: a namespace under the underlay's name that is not
    the one `sandbox up` made (no identity recorded: killed before it was; another one) is
    named and left, not deleted."""
    import json
    import os
    from nslab import sandbox
    name = sandbox_name()
    underlay = f"{name}.underlay"
    subprocess.run(["ip", "netns", "add", underlay], check=True)       # someone else's namespace
    try:
        os.makedirs(os.path.join(sandbox.RUN, name), mode=0o700)
        with open(os.path.join(sandbox.RUN, name, "sandbox.json"), "w") as f:
            json.dump({"name": name, "machines": 1, "port": 23790, "mtu": 9216, "underlay": underlay,
                       "underlay_id": recorded, "containers": [], "processes": []}, f)
        down = nslab("sandbox", "down", "--name", name, timeout=120)
        assert down.returncode == 0, down.stderr
        assert f"left namespace {underlay}: not the one this sandbox made" in down.stdout
        assert host_view(name)["netns"] == [underlay]
        assert not os.path.exists(os.path.join(sandbox.RUN, name))
    finally:
        subprocess.run(["ip", "netns", "del", underlay])
