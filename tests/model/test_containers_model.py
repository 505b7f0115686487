"""Container nodes without root or an engine: the topology keys, the plan, `nslab script`
and which operations `nslab rewire` applies again.  (Bad input: tests/errors/container-*.)"""
from __future__ import annotations

from pathlib import Path

import pytest

from nslab import model
from nslab.apply import containers
from nslab import plan as P
from nslab.compile import compile_topology
from nslab.errors import PrerequisiteError
from nslab.compile.script import render, render_op

TOPOLOGIES = Path(__file__).parent.parent.parent / "topologies"

DIY = """
hosts:
  a: {image: nslab/busybox, command: [sleep, "600"], env: {PORT: 8080, DEBUG: true}, cap_add: [cap_net_raw]}
  b: {serve: http}
routers:
  r: {image: "nslab/debian:latest", command: "sh -c 'sleep 600'"}
links:
  - [a, r]
  - [b, r]
"""


def load(text: str) -> model.Topology:
    return model.load("diy.yaml", text)


def test_keys_become_a_container_spec():
    topo = load(DIY)
    a, r, b = topo.nodes["a"], topo.nodes["r"], topo.nodes["b"]
    assert a.container == P.Container(image="nslab/busybox", command=("sleep", "600"),
                                      env=(("PORT", "8080"), ("DEBUG", "true")), cap_add=("NET_RAW",))
    assert r.container.command == ("sh", "-c", "sleep 600")     # a string is split like a shell would
    assert b.container is None
    assert r.sysctls["net.ipv4.ip_forward"] == "1"               # a container router forwards, set from the host


def test_plan_carries_the_spec_and_the_image_serves_by_itself():
    plan = compile_topology(model.load(str(TOPOLOGIES / "containers.yaml")))
    specs = {op.node: op.container for op in plan.ops if isinstance(op, P.Netns)}
    assert specs["client"].image == "nslab/debian" and specs["nginx"].image == "nslab/busybox"
    assert specs["master"] is None and specs["lan"] is None
    # serve: http on a container pod means the container's own command serves: no lab agent there
    assert not [op for op in plan.ops if isinstance(op, P.Serve)]
    plain = compile_topology(load(DIY))
    assert [op.node for op in plain.ops if isinstance(op, P.Serve)] == ["b"]


def test_script_starts_the_container_and_names_its_namespace():
    text = render(compile_topology(load(DIY)))
    assert ("docker run -d --name nslab.diy.a --label nslab.lab=diy --hostname a --network none "
            "--cap-add NET_RAW -e PORT=8080 -e DEBUG=true nslab/busybox sleep 600") in text
    assert "ip netns attach diy.a \"$(docker inspect -f '{{.State.Pid}}' nslab.diy.a)\"" in text
    assert "ip netns add diy.a" not in text and "ip netns add diy.b" in text


def test_rewire_applies_again_what_touched_the_namespace():
    plan = compile_topology(model.load(str(TOPOLOGIES / "containers.yaml")))
    ops = containers.ops_touching(plan, "containers.nginx")
    flat = "\n".join(line for op in ops for line in render_op(op))
    # the veth pair (created in node1, its eth0 end in the container), both ends' config
    assert "type veth peer name eth0 netns containers.nginx" in flat
    assert "bridge -n containers.node1 link set dev vethe0274f6b hairpin on" in flat
    assert "ip -n containers.nginx addr add 10.244.1.6/24 brd + dev eth0" in flat
    assert "ip -n containers.nginx route add default via 10.244.1.1 dev eth0" in flat
    assert "net.ipv6.conf.all.disable_ipv6=1" in flat
    # nothing that the old namespace did not take with it
    assert all(op.ns in ("containers.nginx", "containers.node1") for op in ops)
    assert "flannel" not in flat and "client" not in flat and "cni0 mtu" not in flat
    assert not [op for op in ops if isinstance(op, P.Netns)]


def test_no_container_needs_no_engine():
    assert containers.check(compile_topology(load("hosts: [a, b]\nlinks: [[a, b]]\n"))) is None


def test_engine_missing_is_one_sentence(monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    with pytest.raises(PrerequisiteError) as info:
        containers.check(compile_topology(load(DIY)))
    msg = str(info.value)
    assert msg.startswith("Docker engine not running: start it with `dockerd --iptables=false --ip6tables=false "
                          "--ip-forward=false --bridge=none &`")
    assert "\n" not in msg and info.value.exit_code == 3


@pytest.mark.parametrize("image,ok", [("nslab/busybox", True), ("nslab/debian:latest", True),
                                      ("registry.local:5000/x", False), ("UPPER", False), ("a:b:c", False)])
def test_image_names(image, ok):
    text = f"hosts:\n  a: {{image: \"{image}\"}}\n"
    if ok:
        assert load(text).nodes["a"].container.image == image
    else:
        with pytest.raises(Exception, match="is not an image name"):
            load(text)
