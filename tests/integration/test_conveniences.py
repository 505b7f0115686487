"""Conveniences as a newcomer uses them, on real labs: command-line values blamed by option,
bundled topology names everywhere, the README's pytest example copied out of the repository."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from conftest import LAB_PREFIX, REPO, TIMEOUT_SCALE, container_engine_ready, nslab, unique_lab_name


def test_up_of_a_running_lab_by_its_name_converges(root_unchanged, lab_factory):
    """The same file under a running lab's --name: `up` converges it (nslab/converge.py),
    here to nothing."""
    lab = lab_factory("diy-veth.yaml")
    r = nslab("up", "topologies/diy-veth.yaml", "--name", lab.name)
    assert (r.returncode, r.stdout, r.stderr) == (0, f"lab {lab.name}: no changes\n", ""), r
    assert lab.state["status"] == "up"            # the running lab is untouched


def test_backend_on_a_topology_without_cluster_is_refused(root_unchanged):
    name = unique_lab_name()
    r = nslab("up", "diy-veth", "--name", name, "--backend", "ipip")
    assert (r.returncode, r.stdout) == (2, ""), r
    assert r.stderr == "nslab: --backend ipip: diy-veth.yaml has no cluster: section, so there is no flannel " \
                       "backend to choose\n"
    assert not os.path.exists(f"/run/nslab/{name}")


def test_bundled_names_work_for_up_and_the_api(tmp_path, root_unchanged):
    name = unique_lab_name()
    r = subprocess.run([sys.executable, "-m", "nslab", "up", "-q", "diy-ip-forward", "--name", name],
                       capture_output=True, text=True, cwd=tmp_path, timeout=60 * TIMEOUT_SCALE)
    try:
        assert (r.returncode, r.stdout) == (0, f"{name}\n"), r
        assert nslab("exec", "-l", name, "ns1", "--", "ping", "-c1", "-W2", "10.1.2.2").returncode == 0
    finally:
        nslab("down", name)
    from nslab import Lab
    lab = Lab.up("diy-ip-forward", name=unique_lab_name())
    try:
        assert lab.topo.file.endswith("nslab/topologies/diy-ip-forward.yaml")
        assert lab.ping("ns1", "ns2").ttl == 63         # one router between them
    finally:
        lab.down()


README_EXAMPLE = re.compile(r"```python\n(# test_overlay\.py.*?)```", re.S)


def test_readme_pytest_example_works_outside_the_repository(tmp_path, root_unchanged):
    code = README_EXAMPLE.search((REPO / "README.md").read_text()).group(1)
    (tmp_path / "test_overlay.py").write_text(code)
    prefix = f"{LAB_PREFIX}rd"
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nslab-prefix", prefix,
                        "test_overlay.py"], capture_output=True, text=True, cwd=tmp_path,
                       timeout=300 * TIMEOUT_SCALE)
    assert r.returncode == 0 and "3 passed" in r.stdout, r.stdout[-3000:] + r.stderr[-2000:]
    assert not [n for n in os.listdir("/run/netns") if n.startswith(prefix)]


@pytest.mark.parametrize("spec, says", [
    ("topologies/nope.yaml", "and nslab bundles none of that name: "),
    # a missing path is never the bundled file of that name, which the message names instead
    ("topologies/diy-veth.yaml", "nslab bundles a topology named diy-veth: nslab_lab('diy-veth'))"),
])
def test_plugin_names_where_it_looked_once(tmp_path, spec, says):
    (tmp_path / "test_missing.py").write_text(f'import pytest\n\n@pytest.mark.nslab("{spec}")\n'
                                              'def test_x(lab):\n    pass\n')
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_missing.py"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120 * TIMEOUT_SCALE)
    assert r.returncode == 1
    line = next(l for l in r.stdout.splitlines() if "no topology" in l)
    assert f"nslab: no topology '{spec}' (not in {tmp_path}/topologies; {says}" in line, line
    assert line.count(str(tmp_path)) == 1


def test_ls_tells_labs_of_one_file_apart_by_backend(root_unchanged):
    labs = {}
    for backend in (None, "udp:8282", "host-gw"):
        name = unique_lab_name()
        nslab("up", "-q", "flannel-vxlan", "--name", name, *(["--backend", backend] if backend else []), check=True)
        labs[name] = backend or "vxlan"
    try:
        rows = {r["lab"]: r for r in json.loads(nslab("ls", "--json", check=True).stdout)}
        assert {n: rows[n]["backend"] for n in labs} == labs
        table = nslab("ls", check=True).stdout
        assert table.splitlines()[0].split() == ["lab", "status", "nodes", "backend", "file"]
        for name, backend in labs.items():
            assert next(l for l in table.splitlines() if l.startswith(name + " ")).split()[:4] == \
                [name, "up", "5", backend]
    finally:
        for name in labs:
            nslab("down", name)


def test_tests_written_for_vxlan_are_skipped_under_udp(root_unchanged):
    name = unique_lab_name()
    r = nslab("test", "spine-leaf", "--name", name, "--backend", "udp", timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"lab {name}: tests (flannel backend udp)" in r.stdout
    lines = r.stdout.splitlines()
    skipped = [l for l in lines if "SKIP" in l]
    assert len(skipped) == 4 and all("written for vxlan; this lab runs udp" in l for l in skipped), r.stdout
    assert lines[-1].startswith("2 passed, 0 failed, 4 skipped in ")
    r = nslab("test", "spine-leaf", "--name", name, "--backend", "udp", "--json", timeout=240)
    report = json.loads(r.stdout)
    assert (report["backend"], report["passed"], report["skipped"], report["ok"]) == ("udp", 2, 4, True)


def test_restarted_container_is_detected_until_rewired(root_unchanged, lab_factory):
    from nslab.apply import containers
    container_engine_ready()
    lab = lab_factory("containers.yaml")
    assert lab.exec("nginx", "hostname", check=True).stdout == "nginx\n"       # the container's own UTS
    assert lab.exec("master", "hostname", check=True).stdout == "master\n"     # a namespace node's
    containers.engine().containers.get(f"nslab.{lab.name}.nginx").restart(timeout=0)
    hint = f"nginx: container nslab.{lab.name}.nginx was restarted (new network namespace, without the lab's links)"
    row = next(r for r in json.loads(nslab("ls", "--json", check=True).stdout) if r["lab"] == lab.name)
    assert row["status"] == "degraded" and row["missing"] == [f"{hint} (nslab rewire -l {lab.name})"], row
    for args in (["exec", "-l", lab.name, "nginx", "--", "true"], ["show", "-l", lab.name],
                 ["show", "-l", lab.name, "nginx"], ["test", "-l", lab.name]):
        r = nslab(*args)
        assert (r.returncode, r.stdout, r.stderr) == (1, "", f"nslab: lab {lab.name}: {hint}: run `nslab rewire -l "
                                                             f"{lab.name}`\n"), args
    assert nslab("exec", "-l", lab.name, "client", "--", "true").returncode == 0   # other nodes: as before
    nslab("rewire", "-l", lab.name, check=True)
    assert nslab("test", "-l", lab.name).returncode == 0
    row = next(r for r in json.loads(nslab("ls", "--json", check=True).stdout) if r["lab"] == lab.name)
    assert row["status"] == "up"


def _lab_mounts(name: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line for line in f if f"/nslab/{name}/" in line]


def test_exec_shell_and_api_show_the_node_as_hostname(root_unchanged, lab_factory):
    host = os.uname().nodename
    lab = lab_factory("diy-veth.yaml")
    assert lab.exec("ns1", "hostname", check=True).stdout == "ns1\n"
    assert lab.exec("ns2", "cat", "/proc/sys/kernel/hostname", check=True).stdout == "ns2\n"
    r = nslab("shell", "-l", lab.name, "ns2", input="hostname\nexit 3\n")
    assert r.returncode == 3 and "ns2\n" in r.stdout, r
    from nslab import Lab
    assert Lab.attach(lab.name).exec("ns1", "hostname").stdout == "ns1\n"
    mounts = _lab_mounts(lab.name)                           # one UTS namespace per node, on the lab's tmpfs
    assert sorted(line.split(" - ")[1].split()[0] for line in mounts) == ["nsfs", "nsfs", "tmpfs"], mounts
    assert os.uname().nodename == host                        # the host's own hostname is untouched
    lab.down()
    assert _lab_mounts(lab.name) == [] and os.uname().nodename == host


def test_link_down_up_restores_the_lab_routes(root_unchanged, lab_factory):
    lab = lab_factory("spine-leaf.yaml")

    def flannel_state():
        return [lab.exec("worker1", *argv, check=True).stdout for argv in
                (["ip", "route", "show", "dev", "flannel.4000"], ["ip", "neigh", "show", "dev", "flannel.4000"],
                 ["bridge", "fdb", "show", "dev", "flannel.4000"])]
    before = flannel_state()
    assert "10.244.3.0/24 via 10.244.3.0" in before[0] and "PERMANENT" in before[1]
    r = lab.nslab("link", "down", "-l", lab.name, "worker1:flannel.4000", check=True)
    assert r.stdout.startswith("worker1:flannel.4000: down")
    assert "10.244.3.0/24" not in flannel_state()[0]                     # Linux dropped them
    assert lab.exec("client", "ping", "-c1", "-W1", "10.244.3.2").returncode == 1
    r = lab.nslab("link", "up", "-l", lab.name, "worker1:flannel.4000", check=True)
    assert r.stdout.splitlines()[0] == "worker1:flannel.4000: up, 2 entries restored:"   # the FDB entry stays
    assert r.stdout.splitlines()[1].startswith(f"  ip -n {lab.name}.worker1 neigh add 10.244.3.0 lladdr ")
    assert f"  ip -n {lab.name}.worker1 route add 10.244.3.0/24 via 10.244.3.0 dev flannel.4000 onlink" \
        in r.stdout.splitlines()
    assert flannel_state() == before
    assert lab.exec("client", "ping", "-c1", "-W2", "10.244.3.2").returncode == 0
    assert lab.nslab("test", "-l", lab.name).returncode == 0
    r = lab.nslab("link", "up", "-l", lab.name, "worker1:flannel.4000", check=True)   # already up: nothing to do
    assert r.stdout == "worker1:flannel.4000: up, 0 entries restored\n"
    r = lab.nslab("link", "down", "-l", lab.name, "worker1:nope")
    assert r.returncode == 2 and r.stderr.startswith("nslab: worker1 has no interface 'nope' (interfaces: enp0s3, ")
    r = lab.nslab("link", "down", "-l", lab.name, "worker1")
    assert (r.returncode, r.stderr) == (2, "nslab: 'worker1' is not NODE:IFACE (e.g. worker1:flannel.4000)\n")


def test_console_runs_commands_pingall_and_listings(root_unchanged, lab_factory):
    lab = lab_factory("spine-leaf.yaml")
    script = "nodes\nclient ping -c1 -W2 web-worker3\npingall\nlinks\ndump\nbogus\nworker1 hostname\nexit\nnodes\n"
    r = lab.nslab("cli", "-l", lab.name, input=script, timeout=120)
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert out[:4] == ["routers: spine leaf01 leaf02", "switches: rack1 rack2",
                       "hosts: master1 worker1 worker2 worker3", "pods: client web-worker1 web-worker2 web-worker3"]
    assert "PING 10.244.3.2 (10.244.3.2) 56(84) bytes of data." in out     # the node name became its address
    assert "client -> master1 worker1 worker2 worker3 web-worker1 web-worker2 web-worker3" in out
    assert "*** Results: 0% dropped (56/56 received)" in out
    assert "rack2:worker3<->worker3:enp0s3" in out and "worker1:veth0120afb2<->client:eth0" in out
    assert f"<pod web-worker3: eth0:10.244.3.2/24 ns={lab.name}.web-worker3>" in out
    assert any(l.startswith("*** unknown command 'bogus'") for l in out)
    assert out[-1] == "worker1" and out.count("routers: spine leaf01 leaf02") == 1    # exit ends it


def test_console_pingall_marks_what_does_not_answer(root_unchanged, lab_factory):
    lab = lab_factory("spine-leaf.yaml")
    lab.nslab("link", "down", "-l", lab.name, "worker3:flannel.4000", check=True)
    r = lab.nslab("cli", "-l", lab.name, input="pingall\n", timeout=120)
    out = r.stdout.splitlines()
    # worker3 answers pods through flannel.4000 too: pods and worker3's pod lose each other.
    # A pod's ping to a node's own address leaves masqueraded (flannel's ip-masq, on by
    # default), so it is answered over the underlay: client reaches worker3, web-worker3 the nodes
    assert "client -> master1 worker1 worker2 worker3 web-worker1 web-worker2 X" in out, r.stdout
    assert "worker3 -> master1 worker1 worker2 X X X web-worker3" in out
    assert "web-worker3 -> master1 worker1 worker2 worker3 X X X" in out
    assert out[-1] == "*** Results: 21% dropped (44/56 received)"


def test_console_tab_completes_node_names_and_keeps_history(root_unchanged, lab_factory, tmp_path):
    import pty
    import select
    import time
    lab = lab_factory("spine-leaf.yaml")
    pid, fd = pty.fork()
    if pid == 0:                                       # the child: nslab cli on a terminal
        os.chdir(REPO)
        os.environ.update(HOME=str(tmp_path), TERM="dumb")
        os.execvp(sys.executable, [sys.executable, "-m", "nslab", "cli", "-l", lab.name])
    seen = b""

    def read_until(token: bytes, seconds: float = 30 * TIMEOUT_SCALE) -> bytes:
        nonlocal seen
        deadline = time.monotonic() + seconds
        while token not in seen.replace(b"\x07", b"") and time.monotonic() < deadline:
            if select.select([fd], [], [], 0.5)[0]:
                try:
                    seen += os.read(fd, 4096)
                except OSError:
                    break
        assert token in seen.replace(b"\x07", b""), seen[-2000:]
        return seen
    try:
        read_until(f"nslab:{lab.name}> ".encode())
        os.write(fd, b"work\t")
        read_until(b"worker")                          # four workers: completes the common part
        os.write(fd, b"3 hostn\t")                     # one word starts with hostn? no: not a node
        os.write(fd, b"ame\n")
        read_until(b"\r\nworker3\r\n")
        os.write(fd, b"cli\t ip -br addr show dev eth0\n")
        read_until(b"10.244.1.2/24")
        os.write(fd, b"clear\n")
        read_until(b"\x1b[H\x1b[2J")                     # clear(1)'s screen reset, on a terminal
        os.write(fd, b"exit\n")
        _, status = os.waitpid(pid, 0)
        pid = 0
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        if pid:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        os.close(fd)
    history = (tmp_path / ".nslab_history").read_text().splitlines()
    assert history[-4:] == ["worker3 hostname", "client ip -br addr show dev eth0", "clear", "exit"]


def test_trace_names_flanneld_under_udp_and_refused_tcp_fails(root_unchanged, lab_factory):
    name = unique_lab_name()
    nslab("up", "-q", "spine-leaf", "--name", name, "--backend", "udp", check=True)
    try:
        r = nslab("trace", "-l", name, "client", "web-worker3", "--json", timeout=120)
        assert r.returncode == 0, r.stderr
        hops = json.loads(r.stdout)["request"]["hops"]
        sent = next(h for h in hops if (h["node"], h["iface"], h["dir"]) == ("worker1", "flannel0", "out"))
        assert {"kind": "lease", "text": "flanneld read it from flannel0: 10.244.3.2 is in 10.244.3.0/24, worker3's "
                                         "subnet: sent in UDP to 30.0.0.23:8285"} in sent["decisions"]
        got = next(h for h in hops if (h["node"], h["iface"], h["dir"]) == ("worker3", "enp0s3", "in"))
        assert got["note"] == "flanneld takes it in on udp port 8285 and writes the inner packet " \
                              "(10.244.1.2 > 10.244.3.2) to flannel0"
        assert hops[-1]["node"] == "web-worker3" and hops[-1]["note"] == "delivered"
        r = nslab("trace", "-l", name, "client", "web-worker3", "--proto", "tcp", "--port", "81", timeout=120)
        assert r.returncode == 1
        assert "  connection refused: web-worker3 answered the SYN with RST (nothing listens on port 81)" \
            in r.stdout.splitlines()
        r = nslab("trace", "-l", name, "client", "web-worker3", "--proto", "tcp", "--port", "81", "--json",
                  timeout=120)
        assert r.returncode == 1 and json.loads(r.stdout)["refused"] is True
        r = nslab("trace", "-l", name, "client", "web-worker3", "--proto", "tcp", "--port", "80", "--json",
                  timeout=120)
        assert r.returncode == 0 and json.loads(r.stdout)["refused"] is False
    finally:
        nslab("down", name)


def test_readme_python_api_example_runs(root_unchanged):
    block = re.search(r"\*\*Python API\.\*\*.*?```python\n(.*?)```", (REPO / "README.md").read_text(), re.S).group(1)
    name = unique_lab_name()
    code = block.replace('"demo"', repr(name))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/",
                       timeout=180 * TIMEOUT_SCALE)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "worker1\n" in r.stdout and "6 passed, 0 failed" in r.stdout, r.stdout
    assert not os.path.exists(f"/run/nslab/{name}")
