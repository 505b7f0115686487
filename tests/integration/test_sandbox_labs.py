"""Labs across machines in the sandbox (issue 20, items 2, 3 and 8): three stand-in machines
(`nslab sandbox up 3`), their agents registered in etcd, and issue 20's CI lab (spine-leaf,
rack1 on m1, rack2 on m2, the spine and the leaves on m3) brought up and down from the host
through etcd, with the links between machines stitched with VXLAN.

Every command a test sends into a node goes through the machine's agent, over its
authenticated channel (the host reaches it through the sandbox's 127.0.0.1 forwarder),
with the cluster's credential read from etcd.  One sandbox for the module (its machines
take ~10 s to start), removed at the end with everything checked gone.
"""
from __future__ import annotations

import http.client
import json
import re
import subprocess
import time
import urllib.error
import urllib.request
from ipaddress import IPv4Network

import docker
import pytest

from conftest import REPO, nslab, unique_lab_name
from test_sandbox import docker_exec, started_sandbox

pytestmark = pytest.mark.root

RACKS = str(REPO / "tests" / "golden" / "placement" / "spine-leaf-racks.yaml")
PODS = {"client": "m1", "web-worker1": "m1", "web-worker2": "m1", "web-worker3": "m2"}


class Sandbox:
    def __init__(self, name: str, port: int):
        self.name, self.port = name, port
        self.env = {"NSLAB_ETCD": f"http://127.0.0.1:{port}"}

    def etcd(self):
        from nslab import coord
        return coord.Etcd(self.env["NSLAB_ETCD"])

    def nslab(self, *args, **kw):
        return nslab(*args, env=self.env, **kw)

    def agent(self, machine: str, path: str, body: dict | None = None, token: str | None = "etcd"):
        """A request to machine's agent through the forwarder: (HTTP status, JSON answer)."""
        from nslab import coord
        headers = {"Content-Type": "application/json"}
        if token == "etcd":
            token = coord.cluster_token(self.etcd())
        if token:
            headers["Authorization"] = f"Bearer {token}"
        url = f"http://127.0.0.1:{self.port + int(machine[1:])}{path}"
        req = urllib.request.Request(url, data=json.dumps(body).encode() if body else None, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=90) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())
        except (urllib.error.URLError, ConnectionError, http.client.HTTPException) as e:
            return 0, {"error": str(e)}             # no agent behind the forwarder (yet)

    def where(self, lab: str) -> dict[str, str]:
        """node -> machine, as the agents report their shards."""
        out = {}
        for m in ("m1", "m2", "m3"):
            status, answer = self.agent(m, "/v1/labs")
            assert status == 200, answer
            for shard in answer["labs"]:
                if shard["lab"] == lab:
                    out.update({node: m for node in shard["nodes"]})
        return out

    def exec(self, lab: str, node: str, *argv, machine: str | None = None) -> dict:
        machine = machine or PODS.get(node, "m3")
        status, answer = self.agent(machine, "/v1/exec", {"lab": lab, "node": node, "argv": list(argv)})
        assert status == 200, answer
        return answer

    def namespaces(self, machine: str) -> list[str]:
        return docker_exec(f"{self.name}.{machine}", "ip", "netns").stdout.split()


@pytest.fixture(scope="module")
def sandbox():
    with started_sandbox(3) as (name, port, _):
        yield Sandbox(name, port)


def pod_ip(box: Sandbox, lab: str, pod: str) -> str:
    out = box.exec(lab, pod, "ip", "-4", "-o", "addr", "show", "dev", "eth0")
    assert out["rc"] == 0, out
    return out["stdout"].split()[3].split("/")[0]


def test_machines_registered_under_leases_and_a_second_agent_refused(sandbox):
    listed = sandbox.nslab("machines", "--json", check=True)
    rows = json.loads(listed.stdout)
    assert [(r["machine"], r["address"], r["underlay_mtu"]) for r in rows] == \
        [("m1", "198.18.1.1", 9216), ("m2", "198.18.1.2", 9216), ("m3", "198.18.1.3", 9216)]
    assert all(0 < r["ttl"] <= 10 for r in rows)
    # an agent claiming m2 from m1's machine: refused in one sentence, exit 2
    second = docker_exec(f"{sandbox.name}.m1", "python3", "-m", "nslab", "agent", "--etcd",
                         "http://198.18.0.1:2379", "--machine", "m2")
    assert second.returncode == 2, second.stdout + second.stderr
    assert "machine name m2 is taken" in second.stderr
    assert json.loads(sandbox.nslab("machines", "--json", check=True).stdout)[1]["lease"] == rows[1]["lease"]


def test_the_agents_channel_serves_nothing_without_the_credential(sandbox):
    assert sandbox.agent("m1", "/v1/labs", token=None)[0] == 401
    assert sandbox.agent("m1", "/v1/labs", token="0" * 64)[0] == 401
    assert sandbox.agent("m1", "/v1/exec", {"lab": "x", "node": "y", "argv": ["true"]}, token=None)[0] == 401
    status, answer = sandbox.agent("m1", "/v1/labs")
    assert status == 200 and answer["machine"] == "m1"


@pytest.mark.parametrize("backend", ["vxlan", "ipip", "udp"])
def test_spine_leaf_over_three_machines_all_pairs_then_down_leaves_nothing(sandbox, backend):
    lab = unique_lab_name()
    etcd = sandbox.etcd()
    up = sandbox.nslab("up", RACKS, "--name", lab, "--backend", backend, timeout=240)
    try:
        assert up.returncode == 0, up.stderr
        assert f"lab {lab} is up over 3 machines:" in up.stdout
        assert "2 VXLAN stitches between machines" in up.stdout
        ls = json.loads(sandbox.nslab("ls", "--json", check=True).stdout)
        row = next(r for r in ls if r["lab"] == lab)
        assert row["status"] == "up" and row["machines"] == ["m1", "m2", "m3"] and row["nodes"] == 13, row
        # each machine holds its shard, and only it
        assert sorted(n for n in sandbox.namespaces("m2") if n.startswith(lab)) == \
            [f"{lab}.rack2", f"{lab}.web-worker3", f"{lab}.worker3"]
        assert sorted(n for n in sandbox.namespaces("m3") if n.startswith(lab)) == \
            [f"{lab}.leaf01", f"{lab}.leaf02", f"{lab}.spine"]
        # the stitch: leaf01's eth0 is a VXLAN to m1 with the VNI etcd holds for it
        from nslab import coord
        vnis = set(coord.lab_vnis(etcd, lab).values())
        assert len(vnis) == 2
        link = docker_exec(f"{sandbox.name}.m3", "ip", "-n", f"{lab}.leaf01", "-d", "link", "show", "eth0").stdout
        assert "vxlan id" in link and "remote 198.18.1.1 local 198.18.1.3" in link, link
        assert int(link.split("vxlan id ")[1].split()[0]) in vnis
        # all pairs of pods, across machines
        ips = {pod: pod_ip(sandbox, lab, pod) for pod in PODS}
        failed = []
        for src in PODS:
            for dst, ip in ips.items():
                if src != dst:
                    got = sandbox.exec(lab, src, "ping", "-c1", "-W5", ip)
                    if got["rc"] != 0:
                        failed.append(f"{src} -> {dst} ({ip})")
        assert not failed, f"{backend}: {failed}"
        # `nslab exec` from the host: through the agent of the machine that holds the node
        got = sandbox.nslab("exec", "-l", lab, "client", "--", "ping", "-c1", "-W5", "web-worker3")
        assert got.returncode == 0 and " 0% packet loss" in got.stdout, got.stdout + got.stderr
        got = sandbox.nslab("exec", f"{lab}.web-worker3", "--", "hostname")
        assert got.stdout == "web-worker3\n", got.stderr
        assert sandbox.nslab("exec", "-l", lab, "client", "--", "false").returncode == 1
    finally:
        down = sandbox.nslab("down", lab, timeout=240)
    assert down.returncode == 0, down.stderr
    assert f"lab {lab} removed from 3 machines" in down.stdout
    for m in ("m1", "m2", "m3"):
        assert not [n for n in sandbox.namespaces(m) if n.startswith(lab)], m
    kvs, _ = etcd.get_prefix("/nslab/")
    assert not [kv.key for kv in kvs if lab in kv.key or kv.value.decode(errors="replace").startswith(f"{lab}/")]


def test_a_lab_spread_over_three_machines(sandbox):
    """--spread: nslab partitions the bundled spine-leaf lab (racks whole) over m1..m3."""
    lab = unique_lab_name()
    up = sandbox.nslab("up", "spine-leaf", "--name", lab, "--spread", "m1,m2,m3", timeout=240)
    try:
        assert up.returncode == 0, up.stderr
        where = sandbox.where(lab)
        pods = ["client", "web-worker1", "web-worker2", "web-worker3"]
        assert set(pods) <= set(where) and len(set(where.values())) >= 2, where
        ips = {}
        for pod in pods:
            got = sandbox.exec(lab, pod, "ip", "-4", "-o", "addr", "show", "dev", "eth0", machine=where[pod])
            ips[pod] = got["stdout"].split()[3].split("/")[0]
        failed = [f"{a} -> {b}" for a in pods for b in pods if a != b
                  and sandbox.exec(lab, a, "ping", "-c1", "-W5", ips[b], machine=where[a])["rc"] != 0]
        assert not failed, (where, failed)
    finally:
        down = sandbox.nslab("down", lab, timeout=240)
    assert down.returncode == 0, down.stderr


def test_placement_on_an_unregistered_machine_is_refused(sandbox, tmp_path):
    text = open(RACKS).read().replace("rack2: m2", "rack2: m9")
    path = tmp_path / "racks-m9.yaml"
    path.write_text(text)
    lab = unique_lab_name()
    got = sandbox.nslab("up", path, "--name", lab)
    assert got.returncode == 2, got.stdout + got.stderr
    assert "names machine m9, which is not registered in etcd" in got.stderr
    assert sandbox.etcd().get(f"/nslab/labs/{lab}") is None


def test_a_shard_that_fails_on_one_machine_rolls_back_every_machine(sandbox):
    lab = unique_lab_name()
    # a namespace of the lab's name already on m2: its agent's lab.up refuses it
    docker_exec(f"{sandbox.name}.m2", "ip", "netns", "add", f"{lab}.worker3")
    try:
        got = sandbox.nslab("up", RACKS, "--name", lab, timeout=240)
        assert got.returncode == 1, got.stdout + got.stderr
        assert "the shard on m2 failed" in got.stderr and "every machine rolled back" in got.stderr
        for m in ("m1", "m3"):
            assert not [n for n in sandbox.namespaces(m) if n.startswith(lab)], m
        assert sandbox.namespaces("m2") and [n for n in sandbox.namespaces("m2") if n.startswith(lab)] == \
            [f"{lab}.worker3"]
        kvs, _ = sandbox.etcd().get_prefix("/nslab/")
        assert not [kv.key for kv in kvs if lab in kv.key]
    finally:
        docker_exec(f"{sandbox.name}.m2", "ip", "netns", "del", f"{lab}.worker3")


def test_agent_killed_shard_keeps_forwarding_and_is_adopted(sandbox):
    lab = unique_lab_name()
    assert sandbox.nslab("up", RACKS, "--name", lab, timeout=240).returncode == 0
    try:
        ip = pod_ip(sandbox, lab, "web-worker3")
        m1 = docker.from_env().containers.get(f"{sandbox.name}.m1")
        pids = m1.exec_run(["pgrep", "-f", "^python3 -u -m nslab agent"]).output.decode().split()
        assert pids
        m1.exec_run(["kill", "-9", *pids])
        # forwarding does not need the agent: ping from inside m1, without it
        ping = docker_exec(f"{sandbox.name}.m1", "ip", "netns", "exec", f"{lab}.client", "ping", "-c1", "-W5", ip)
        assert ping.returncode == 0, ping.stdout
        # the loop starts it again; it adopts its lease (same) and its shard (not rebuilt)
        before = {r["machine"]: r["lease"] for r in json.loads(sandbox.nslab("machines", "--json").stdout)}
        got = None
        for _ in range(60):
            status, got = sandbox.agent("m1", "/v1/labs")
            if status == 200:
                break
            time.sleep(0.5)
        assert got and [x["lab"] for x in got["labs"]] == [lab]
        after = {r["machine"]: r["lease"] for r in json.loads(sandbox.nslab("machines", "--json").stdout)}
        assert after == before
        assert sandbox.exec(lab, "client", "ping", "-c1", "-W5", ip)["rc"] == 0
    finally:
        assert sandbox.nslab("down", lab, timeout=240).returncode == 0


def etcdctl(box: Sandbox, *args) -> str:
    out = subprocess.run(["etcdctl", "--endpoints", box.env["NSLAB_ETCD"], *args], capture_output=True, text=True,
                         timeout=30, env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    return out.stdout


def kernel_entries(box: Sandbox, lab: str, node: str, machine: str) -> str:
    """A cluster node's neighbours, FDB and routes, as its machine's kernel holds them."""
    ns = f"{lab}.{node}"
    got = [docker_exec(f"{box.name}.{machine}", "ip", "-n", ns, *cmd).stdout
           for cmd in (["neigh", "show", "dev", "flannel.4000"], ["route", "show"])]
    got.append(docker_exec(f"{box.name}.{machine}", "ip", "netns", "exec", ns, "bridge", "fdb", "show",
                           "dev", "flannel.4000").stdout)
    return "".join(got)


def eventually(predicate, seconds: float = 60) -> float | None:
    """Seconds until predicate() held (None: it did not within `seconds`)."""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.1)
    return None


def test_flannel_across_machines_peers_come_from_the_leases_in_etcd(sandbox):
    """Issue 20 item 5: each agent writes its nodes' subnet leases under flannel's keys, in
    flannel's JSON, and installs the entries for nodes on other machines from watching them:
    delete worker3's lease and worker1 (m1) loses its FDB entry and route for it (and the
    pods stop reaching each other); put it back and they return.  A node leased later shows
    up on the peers; a hostile lease changes nothing."""
    from nslab import coord, model
    lab = unique_lab_name()
    etcd = sandbox.etcd()
    assert sandbox.nslab("up", RACKS, "--name", lab, timeout=240).returncode == 0
    try:
        topo = model.load(RACKS, name=lab)
        nodes = topo.cluster.nodes
        # etcdctl shows flannel's keys and JSON, each lease under its machine's etcd lease
        keys = etcdctl(sandbox, "get", "--prefix", "--keys-only", "/coreos.com/network").split()
        assert keys == ["/coreos.com/network/config"] + sorted(
            f"/coreos.com/network/subnets/{n.subnet.network_address}-24" for n in nodes.values())
        assert json.loads(etcd.get("/coreos.com/network/config").value) == {
            "Network": "10.244.0.0/16", "SubnetLen": 24,
            "Backend": {"Type": "vxlan", "VNI": 4000, "DirectRouting": True, "Port": 4789}}
        machine_lease = {r["machine"]: int(r["lease"], 16) if isinstance(r["lease"], str) else r["lease"]
                         for r in json.loads(sandbox.nslab("machines", "--json", check=True).stdout)}
        w3 = nodes["worker3"]
        key = f"/coreos.com/network/subnets/{w3.subnet.network_address}-24"
        kv = etcd.get(key)
        assert json.loads(kv.value) == {"PublicIP": "30.0.0.23", "PublicIPv6": None, "BackendType": "vxlan",
                                        "BackendData": {"VNI": 4000, "VtepMAC": w3.vtep_mac}}
        assert kv.lease == machine_lease["m2"]
        # worker1 (m1) reaches worker3 (m2) through what worker3's lease says
        fdb = f"{w3.vtep_mac} dst 30.0.0.23"
        route = f"{w3.subnet} via {w3.subnet.network_address} dev flannel.4000 onlink"
        before = kernel_entries(sandbox, lab, "worker1", "m1")
        assert fdb in before and route in before, before
        ip = pod_ip(sandbox, lab, "web-worker3")
        assert sandbox.exec(lab, "client", "ping", "-c1", "-W5", ip)["rc"] == 0
        # the lease deleted: its entries go from m1's nodes (and only they)
        etcd.delete(key)
        assert eventually(lambda: fdb not in kernel_entries(sandbox, lab, "worker1", "m1")) is not None
        after = kernel_entries(sandbox, lab, "worker1", "m1")
        assert route not in after and f"{w3.subnet.network_address} lladdr" not in after, after
        assert sandbox.exec(lab, "client", "ping", "-c1", "-W2", ip)["rc"] != 0
        # put back: they return
        etcd.put(key, kv.value, machine_lease["m2"])
        took = eventually(lambda: kernel_entries(sandbox, lab, "worker1", "m1") == before)
        assert took is not None, kernel_entries(sandbox, lab, "worker1", "m1")
        assert sandbox.exec(lab, "client", "ping", "-c1", "-W5", ip)["rc"] == 0
        # a node leased later appears on every peer on the other machines (m1's and m2's)
        mac = "02:42:c6:12:63:01"
        new = coord.SubnetLease(IPv4Network("10.244.99.0/24"), "40.0.0.99", "vxlan", {"VNI": 4000, "VtepMAC": mac})
        lid = coord.create_subnet_lease(etcd, new, 60)
        seen = {m: eventually(lambda m=m, n=n: f"{mac} dst 40.0.0.99" in kernel_entries(sandbox, lab, n, m))
                for m, n in (("m1", "worker1"), ("m2", "worker3"))}
        assert all(t is not None for t in seen.values()), seen
        print(f"a new lease seen on m1 after {seen['m1']:.2f} s, on m2 after {seen['m2']:.2f} s (polled)")
        etcd.revoke(lid)            # its lease ends: the entries go
        assert eventually(lambda: mac not in kernel_entries(sandbox, lab, "worker1", "m1")) is not None
        # hostile leases: refused by every agent, nothing touched
        before = {n: kernel_entries(sandbox, lab, n, m) for n, m in (("worker1", "m1"), ("worker3", "m2"))}
        hostile = {
            "/coreos.com/network/subnets/192.168.7.0-24": {"PublicIP": "30.0.0.7", "BackendType": "vxlan",
                                                           "BackendData": {"VNI": 4000, "VtepMAC": mac}},
            "/coreos.com/network/subnets/10.244.98.0-24": {"PublicIP": "30.0.0.8", "BackendType": "vxlan",
                                                           "BackendData": {"VNI": 4000, "VtepMAC": "ff:ff:ff:ff:ff:ff"}},
            "/coreos.com/network/subnets/10.244.97.0-24": {"PublicIP": "127.0.0.1", "BackendType": "vxlan",
                                                           "BackendData": {"VNI": 4000, "VtepMAC": mac}},
            "/coreos.com/network/subnets/10.244.96.0-24": {"PublicIP": "30.0.0.9; reboot", "BackendType": "vxlan",
                                                           "BackendData": {"VNI": 4000, "VtepMAC": mac}},
            "/coreos.com/network/subnets/10.244.95.0-24": {"PublicIP": "30.0.0.10", "BackendType": "host-gw"},
            "/coreos.com/network/subnets/../../x": {"PublicIP": "30.0.0.11", "BackendType": "vxlan"},
        }
        for k, v in hostile.items():
            etcd.put(k, json.dumps(v))
        etcd.put("/coreos.com/network/subnets/10.244.94.0-24", b"\xff not json")
        # a valid lease put after them is learned: the agents have read past the hostile ones
        lid = coord.create_subnet_lease(etcd, new, 60)
        assert eventually(lambda: f"{mac} dst 40.0.0.99" in kernel_entries(sandbox, lab, "worker3", "m2"))
        etcd.revoke(lid)
        assert eventually(lambda: {n: kernel_entries(sandbox, lab, n, m)
                                   for n, m in (("worker1", "m1"), ("worker3", "m2"))} == before) is not None
        for k in hostile:
            etcd.delete(k)
        etcd.delete("/coreos.com/network/subnets/10.244.94.0-24")
    finally:
        down = sandbox.nslab("down", lab, timeout=240)
    assert down.returncode == 0, down.stderr
    assert etcdctl(sandbox, "get", "--prefix", "--keys-only", "/coreos.com/network").split() == []
    assert etcd.get(coord.FLANNEL_OWNER) is None


def test_zz_a_machine_that_vanishes_leaves_etcd_and_down_removes_the_rest(sandbox):
    """Last in the module: m2 does not come back.  docker kill of m2 (its kernel view, its
    shard and its agent gone at once): its lease expires within the TTL (10 s) and `nslab
    machines` no longer lists it; `nslab down` removes the shards on m1 and m3 and leaves
    m2's part pending in etcd (with the lab's claim and VNIs) until m2 comes back."""
    lab = unique_lab_name()
    assert sandbox.nslab("up", RACKS, "--name", lab, timeout=240).returncode == 0
    docker.from_env().containers.get(f"{sandbox.name}.m2").kill()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        listed = json.loads(sandbox.nslab("machines", "--json", check=True).stdout)
        if [r["machine"] for r in listed] == ["m1", "m3"]:
            break
        time.sleep(1)
    assert [r["machine"] for r in listed] == ["m1", "m3"]
    ls = sandbox.nslab("ls", check=True)
    assert re.search(rf"^{lab}\s+degraded\s", ls.stdout, re.M), ls.stdout
    assert f"{lab}: 1 problem: machine m2 is gone (its lease ended)" in ls.stdout
    down = sandbox.nslab("down", lab, timeout=240)
    assert down.returncode == 0, down.stderr
    assert "m2 is gone: its part stays pending in etcd" in down.stdout, down.stdout
    for m in ("m1", "m3"):
        assert not [n for n in sandbox.namespaces(m) if n.startswith(lab)], m
    # m2's part is pending (test_sandbox_faults.py brings m2 back): its key, the claim and VNIs stay
    kvs, _ = sandbox.etcd().get_prefix("/nslab/")
    left = [kv.key for kv in kvs if lab in kv.key or kv.value.decode(errors="replace").startswith(f"{lab}/")]
    assert sorted(k for k in left if not k.startswith("/nslab/vnis/")) == \
        [f"/nslab/labs/{lab}", f"/nslab/pending/m2/{lab}"], left
