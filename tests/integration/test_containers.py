"""Container nodes for real: Docker containers started with `--network none` and wired from
the host like any namespace node.

Needs the Docker engine (started with --iptables=false --ip6tables=false --ip-forward=false
--bridge=none: nslab/images/start-dockerd) and nslab's local images (`nslab images build`);
install.sh does both, so CI runs these.  Without them the tests fail and say why (a skip
would hide a broken install).
"""
from __future__ import annotations

import json
import os
import re
import subprocess

import docker
import pytest

from conftest import TOPOLOGIES, leftovers, nslab, unique_lab_name

pytestmark = pytest.mark.root

needs_engine = pytest.mark.usefixtures("container_engine")     # conftest: fails without the engine or images


def engine():
    return docker.from_env()


def lab_containers(lab: str) -> list:
    return engine().containers.list(all=True, filters={"label": f"nslab.lab={lab}"})


def curl(lab, node, target="http://nginx"):
    return lab.exec(node, "curl", "-s", "--max-time", "3", target)


@needs_engine
def test_container_pods_serve_http_and_down_leaves_nothing(root_unchanged, lab_factory):
    lab = lab_factory("containers.yaml")
    st = lab.state
    assert {c["node"] for c in st["containers"]} == {"client", "nginx"}
    running = {c.labels["nslab.node"]: c for c in lab_containers(lab.name)}
    assert set(running) == {"client", "nginx"}
    for node, c in running.items():
        assert c.status == "running"
        assert c.attrs["HostConfig"]["NetworkMode"] == "none"
        assert c.id in [x["id"] for x in st["containers"]]
        assert c.labels["nslab.state"] == os.path.join(lab.run_dir, lab.name)
        # the node's namespace is the container's own
        assert os.stat(f"/run/netns/{lab.ns(node)}").st_ino == os.stat(f"/proc/{c.attrs['State']['Pid']}/ns/net").st_ino

    # host to remote pod, and pod to pod (host tools in the container's namespace, then the image's own curl)
    out = curl(lab, "master", "http://10.244.1.6")
    assert re.match(r"nginx answered 10\.244\.0\.0:\d+ \(busybox httpd\)", out.stdout), out
    out = curl(lab, "client")
    assert out.returncode == 0 and out.stdout.startswith("nginx answered 10.244.0.2:"), out
    inside = running["client"].exec_run(["curl", "-s", "--max-time", "3", "http://nginx"])
    assert inside.exit_code == 0 and inside.output.decode().startswith("nginx answered 10.244.0.2:")

    # wired from the host: flannel's MTU and the CNI routes, and the container cannot change them
    link = lab.exec("nginx", "ip", "-o", "link", "show", "eth0", check=True).stdout
    assert "mtu 1450" in link
    routes = lab.exec("client", "ip", "route", check=True).stdout
    assert "default via 10.244.0.1 dev eth0" in routes and "10.244.0.0/16 via 10.244.0.1 dev eth0" in routes
    assert running["nginx"].exec_run(["ip", "link", "set", "eth0", "mtu", "1400"]).exit_code != 0

    # show, trace and capture see it as any node
    shown = json.loads(lab.nslab("show", "-l", lab.name, "nginx", "--json", check=True).stdout)
    assert "10.244.1.6/24" in json.dumps(shown)
    trace = lab.nslab("trace", "-l", lab.name, "client", "nginx", "--proto", "tcp", "--port", "80", timeout=30)
    assert trace.returncode == 0 and "delivered" in trace.stdout, trace.stdout + trace.stderr
    proc = lab.popen("nginx", "tcpdump", "-lni", "eth0", "-c", "1", "icmp", stdout=subprocess.PIPE,
                     stderr=subprocess.DEVNULL, text=True)
    try:
        for _ in range(20):
            lab.exec("client", "ping", "-c1", "-W1", "nginx")
            if proc.poll() is not None:
                break
        out, _ = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "10.244.0.2 > 10.244.1.6: ICMP echo request" in out

    processes = st["processes"]
    lab.down()
    assert lab_containers(lab.name) == []
    assert leftovers(lab.name, lab.run_dir, processes) == []


@needs_engine
def test_restarted_container_is_rewired(lab_factory):
    lab = lab_factory("containers.yaml")
    assert curl(lab, "client").returncode == 0
    engine().containers.get(f"nslab.{lab.name}.nginx").restart(timeout=0)
    assert curl(lab, "client").returncode != 0          # a new namespace: no eth0 any more
    out = lab.nslab("rewire", "-l", lab.name, check=True)
    assert f"lab {lab.name}: re-wired nginx" in out.stdout
    assert curl(lab, "client").stdout.startswith("nginx answered 10.244.0.2:")
    assert "every container is wired" in lab.nslab("rewire", "-l", lab.name, check=True).stdout
    # stopped, then removed, under nslab's feet: started again, then created again
    client = engine().containers.get(f"nslab.{lab.name}.client")
    client.stop(timeout=0)
    assert "re-wired client" in lab.nslab("rewire", "-l", lab.name, check=True).stdout
    assert curl(lab, "client").returncode == 0
    client.remove(force=True)
    assert "re-wired client" in lab.nslab("rewire", "-l", lab.name, check=True).stdout
    assert curl(lab, "client").returncode == 0
    assert len(lab_containers(lab.name)) == 2


DIY_ROUTER = """
hosts:
  a: {image: nslab/busybox}
  b: {image: nslab/busybox, command: httpd -f -p 80 -h /www, serve: http}
routers:
  r: {image: nslab/busybox}
links:
  - [{node: a, iface: eth0, ip: 10.1.1.2/24}, {node: r, iface: eth1, ip: 10.1.1.1/24}]
  - [{node: b, iface: eth0, ip: 10.1.2.2/24}, {node: r, iface: eth2, ip: 10.1.2.1/24}]
"""


@needs_engine
def test_container_router_forwards_without_net_admin(lab_factory):
    lab = lab_factory(DIY_ROUTER)
    a = engine().containers.get(f"nslab.{lab.name}.a")
    out = a.exec_run(["ping", "-c1", "-W2", "10.1.2.2"]).output.decode()
    assert "ttl=63" in out, out                          # one router: ip_forward set from the host
    out = a.exec_run(["wget", "-qO-", "http://b/"]).output.decode()   # names resolve inside containers too
    assert out.startswith("b answered 10.1.1.2:"), out


@needs_engine
def test_down_finds_a_container_whose_record_was_lost(lab_factory):
    lab = lab_factory(DIY_ROUTER)
    path = os.path.join(lab.run_dir, lab.name, "state.json")
    st = json.load(open(path))
    st["containers"] = st["containers"][:1]                # as if nslab died before recording the others
    json.dump(st, open(path, "w"))
    engine().containers.get(st["containers"][0]["id"]).remove(force=True)   # and one is already gone
    lab.down()
    assert lab_containers(lab.name) == []


@needs_engine
def test_missing_image_creates_nothing(tmp_path):
    name = unique_lab_name()
    topo = tmp_path / "missing.yaml"
    topo.write_text("hosts:\n  a: {image: nslab/not-built}\n  b: {}\nlinks: [[a, b]]\n")
    proc = nslab("up", topo, "--name", name)
    assert proc.returncode == 3
    assert proc.stderr.strip() == ("nslab: image nslab/not-built:latest missing: build or `docker load` it first "
                                   "(nslab never pulls)")
    assert leftovers(name, "/run/nslab", []) == [] and lab_containers(name) == []


def test_engine_not_running_creates_nothing(tmp_path):
    name = unique_lab_name()
    proc = nslab("up", TOPOLOGIES / "containers.yaml", "--name", name,
                 env={"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"})
    assert proc.returncode == 3
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nslab: Docker engine not running: start it with `dockerd "
                                                   "--iptables=false --ip6tables=false --ip-forward=false "
                                                   "--bridge=none &`"), proc.stderr
    assert leftovers(name, "/run/nslab", []) == [] and lab_containers(name) == []
