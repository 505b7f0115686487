"""nslab/coord.py against a real etcd (Debian's etcd-server, started per module by the
`etcd_server` fixture on 127.0.0.1 with random ports; no root needed): keys, leases kept
alive and lost, claims refused to a second claimer, VNIs taken in transactions (more than
one transaction holds, and two racing labs), watches, flannel's own keys in flannel's
JSON, everything read back checked, and an unreachable endpoint in one sentence."""
from __future__ import annotations

import ctypes
import functools
import http.server
import json
import socket
import subprocess
import sys
import threading
import time
from ipaddress import IPv4Network

import pytest

from conftest import REPO, free_port, installed
from nslab import coord, model
from nslab.errors import UsageError


@pytest.fixture
def etcd(etcd_server):
    e = coord.Etcd(etcd_server.endpoint)
    e.delete("/", prefix=True)          # each test starts from an empty store
    return e


def wait_for(predicate, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


# ---- keys, leases, claims ---------------------------------------------------------------

def test_keys_round_trip(etcd):
    etcd.put("/nslab/a/1", "one")
    etcd.put("/nslab/a/2", b"\x00two")
    etcd.put("/nslab/b", "other")
    assert etcd.get("/nslab/a/1").value == b"one"
    kvs, revision = etcd.get_prefix("/nslab/a/")
    assert [(kv.key, kv.value) for kv in kvs] == [("/nslab/a/1", b"one"), ("/nslab/a/2", b"\x00two")]
    assert revision >= kvs[-1].mod_revision
    assert etcd.delete("/nslab/a/", prefix=True) == 2
    assert etcd.get("/nslab/a/1") is None and etcd.get("/nslab/b").value == b"other"


def test_prefix_end_is_clientv3s():
    import base64
    assert base64.b64decode(coord.prefix_end("/a/")) == b"/a0"
    assert base64.b64decode(coord.prefix_end("a\xff".encode("latin-1").decode("latin-1"))) == b"a\xc3\xc0"


def test_a_lease_kept_alive_outlives_its_ttl_and_its_keys_go_with_it(etcd):
    lease = etcd.grant(2)
    etcd.put("/nslab/kept", "x", lease)
    keeper = coord.KeepAlive(etcd, lease, 2)
    time.sleep(4.5)                                   # over twice the TTL
    assert etcd.get("/nslab/kept") is not None and keeper.lost is None
    keeper.stop()                                      # revokes: the key goes at once
    assert etcd.get("/nslab/kept") is None
    # without keep-alive a lease expires and takes its keys
    lease = etcd.grant(1)
    etcd.put("/nslab/left", "x", lease)
    assert wait_for(lambda: etcd.get("/nslab/left") is None, 5)
    assert etcd.keepalive(lease) == 0 and etcd.time_to_live(lease) == -1


def test_keepalive_reports_a_revoked_lease(etcd):
    lease = etcd.grant(2)
    lost = []
    keeper = coord.KeepAlive(etcd, lease, 2, on_lost=lost.append)
    etcd.revoke(lease)
    assert wait_for(lambda: keeper.lost is not None, 3)
    assert lost == [f"lease {lease:x} expired or was revoked"]
    keeper.stop()


def test_a_lease_outlives_a_process_that_holds_the_gil_for_three_ttls(etcd):
    # An agent compiling a big shard holds its GIL for seconds on a busy machine (the
    # collector's full passes); its lease must not expire meanwhile.  libc's sleep()
    # called through ctypes.PyDLL keeps the GIL: no thread of this process runs for 6 s.
    lease = etcd.grant(2)
    etcd.put("/nslab/busy", "x", lease)
    keeper = coord.KeepAlive(etcd, lease, 2)
    time.sleep(1)                                      # the keeper started
    ctypes.PyDLL(None).sleep(6)
    assert etcd.get("/nslab/busy") is not None and etcd.time_to_live(lease) > 0
    time.sleep(1)
    assert keeper.lost is None
    keeper.stop()
    assert etcd.get("/nslab/busy") is None


def test_a_killed_keepers_owner_lets_its_lease_expire(etcd):
    # kill -9 of an agent: nothing renews its lease any more (a machine gone is seen)
    lease = etcd.grant(2)
    code = (f"import time; from nslab import coord; coord.KeepAlive(coord.Etcd({etcd.endpoint!r}), {lease}, 2); "
            f"print('ready', flush=True); time.sleep(60)")
    owner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout.readline() == "ready\n"
        time.sleep(3)
        assert etcd.time_to_live(lease) > 0            # kept alive past its TTL
    finally:
        owner.kill()
        owner.wait()
    assert wait_for(lambda: etcd.time_to_live(lease) == -1, 2 + 2 / 3 + 3)


def test_two_agents_claiming_one_machine_name(etcd):
    first = etcd.grant(10)
    m = coord.register_machine(etcd, "m1", "198.18.0.1", 1500, first)
    assert m == coord.Machine("m1", "198.18.0.1", 1500, first)
    second = etcd.grant(10)
    with pytest.raises(coord.Claimed) as info:
        coord.register_machine(etcd, "m1", "198.18.0.9", 9000, second)
    assert str(info.value) == (f"machine name m1 is taken in etcd at {etcd.endpoint} (lease {first:x}); another "
                               f"agent runs as m1, or its lease has not expired yet")
    assert info.value.exit_code == 2
    assert coord.machines(etcd) == ([m], [])              # the first one's record, untouched
    etcd.revoke(first)                                    # its agent goes: the name is free
    assert coord.register_machine(etcd, "m1", "198.18.0.9", 9000, second).address == "198.18.0.9"
    with pytest.raises(UsageError):
        coord.register_machine(etcd, "../m2", "198.18.0.2", 1500, second)


def test_a_lab_name_is_claimed_once(etcd):
    coord.claim_lab(etcd, "spine-leaf", "m1")
    with pytest.raises(coord.Claimed, match="lab spine-leaf already runs in the cluster"):
        coord.claim_lab(etcd, "spine-leaf", "m2")
    coord.release_lab(etcd, "spine-leaf")
    coord.claim_lab(etcd, "spine-leaf", "m2")


def test_claims_race(etcd):
    """Eight claimers at once: exactly one wins (the transaction, not a read-then-write)."""
    results = []
    barrier = threading.Barrier(8)

    def claim(i):
        barrier.wait()
        results.append(etcd.claim("/nslab/labs/race", f"claimer {i}") is None)
    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]


# ---- stitch VNIs ---------------------------------------------------------------------------

def test_vnis_are_unique_across_labs_and_transactions(etcd):
    a = coord.allocate_vnis(etcd, "lab-a", [f"s{i}" for i in range(300)])     # 3 transactions
    assert sorted(a.values()) == list(range(5001, 5301))
    b = coord.allocate_vnis(etcd, "lab-b", ["x", "y"])
    assert b == {"x": 5301, "y": 5302}
    assert coord.lab_vnis(etcd, "lab-a") == a and coord.lab_vnis(etcd, "lab-b") == b
    coord.release_vnis(etcd, "lab-a")
    assert coord.lab_vnis(etcd, "lab-a") == {}
    assert coord.allocate_vnis(etcd, "lab-c", ["z"]) == {"z": 5001}     # the freed ones are reused
    big = coord.allocate_vnis(etcd, "lab-d", [f"s{i}" for i in range(1500)])   # 12 transactions
    assert len(set(big.values())) == 1500 and not set(big.values()) & (set(b.values()) | {5001})


def test_vnis_taken_are_given_back_when_allocation_fails(etcd, monkeypatch):
    real_txn, calls = coord.Etcd.txn, []

    def failing_second_batch(self, compare, success, failure=()):
        calls.append(len(success))
        if len(calls) == 2:
            raise coord.EtcdUnreachable("etcd at x does not answer (connection refused)")
        return real_txn(self, compare, success, failure)
    monkeypatch.setattr(coord.Etcd, "txn", failing_second_batch)
    with pytest.raises(coord.EtcdUnreachable):
        coord.allocate_vnis(etcd, "lab-a", [f"s{i}" for i in range(200)])
    monkeypatch.undo()
    assert calls[:2] == [128, 72] and coord.lab_vnis(etcd, "lab-a") == {}


def test_racing_labs_get_disjoint_vnis(etcd):
    got = {}
    barrier = threading.Barrier(4)

    def take(lab):
        barrier.wait()
        got[lab] = coord.allocate_vnis(etcd, lab, [f"s{i}" for i in range(20)])
    threads = [threading.Thread(target=take, args=(f"lab{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [v for m in got.values() for v in m.values()]
    assert len(every) == 80 and len(set(every)) == 80


# ---- watch ----------------------------------------------------------------------------------

def test_watch_sees_puts_and_deletes_within_a_second(etcd):
    _, revision = etcd.get_prefix("/nslab/w/")
    with etcd.watch("/nslab/w/", timeout=5) as events:
        t0 = time.monotonic()
        etcd.put("/nslab/w/a", "1")
        etcd.put("/nslab/elsewhere", "not watched")
        etcd.delete("/nslab/w/a")
        first, second = next(events), next(events)
        assert time.monotonic() - t0 < 1
    assert (first.type, first.kv.key, first.kv.value) == ("PUT", "/nslab/w/a", b"1")
    assert (second.type, second.kv.key) == ("DELETE", "/nslab/w/a")
    # from a revision: what happened since, then silence ends the iteration
    assert [e.type for e in etcd.watch("/nslab/w/", revision + 1, timeout=1)] == ["PUT", "DELETE"]


# ---- flannel's keys -------------------------------------------------------------------------

SPINE_LEAF = REPO / "topologies" / "spine-leaf.yaml"


def leases_of(topo) -> list[coord.SubnetLease]:
    c = topo.cluster
    return [coord.SubnetLease(n.subnet, str(n.ip), c.backend.type, {"VNI": c.backend.vni, "VtepMAC": n.vtep_mac})
            for n in c.nodes.values()]


def test_flannel_keys_as_flannel_writes_them(etcd):
    topo = model.load(str(SPINE_LEAF))
    coord.put_network_config(etcd, coord.net_conf(topo.cluster))
    assert json.loads(etcd.get("/coreos.com/network/config").value) == {
        "Network": "10.244.0.0/16", "SubnetLen": 24,
        "Backend": {"Type": "vxlan", "VNI": 4000, "DirectRouting": True, "Port": 4789}}
    assert coord.network_config(etcd)["Backend"]["VNI"] == 4000
    ids = [coord.create_subnet_lease(etcd, lease, 60) for lease in leases_of(topo)]
    worker1 = topo.cluster.nodes["worker1"]
    raw = etcd.get(f"/coreos.com/network/subnets/{worker1.subnet.network_address}-24")
    # lease.LeaseAttrs as encoding/json writes it (flannel's vxlanLeaseAttrs: VNI, VtepMAC)
    assert json.loads(raw.value) == {"PublicIP": "10.0.0.21", "PublicIPv6": None, "BackendType": "vxlan",
                                     "BackendData": {"VNI": 4000, "VtepMAC": worker1.vtep_mac}}
    assert raw.lease == ids[1]
    leases, revision, bad = coord.subnet_leases(etcd)
    assert bad == [] and [(lease.subnet, lease.public_ip) for lease in leases] == sorted(
        ((n.subnet, str(n.ip)) for n in topo.cluster.nodes.values()), key=lambda x: f"{x[0].network_address}")
    # what `etcdctl get --prefix /coreos.com/network` shows on a flannel cluster
    installed("etcdctl")
    out = subprocess.run(["etcdctl", "--endpoints", etcd.endpoint, "get", "--prefix", "--keys-only",
                          "/coreos.com/network"], capture_output=True, text=True, timeout=30,
                         env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert [k for k in out.stdout.split("\n") if k] == ["/coreos.com/network/config"] + sorted(
        f"/coreos.com/network/subnets/{n.subnet.network_address}-24" for n in topo.cluster.nodes.values())
    with pytest.raises(coord.Claimed, match=r"subnet 10\.244\.\d+\.0/24 is already leased"):
        coord.create_subnet_lease(etcd, leases_of(topo)[0], 60)
    # a node added later is seen by a watcher within a second (flannel's watchSubnets)
    new = coord.SubnetLease(IPv4Network("10.244.9.0/24"), "30.0.0.99", "vxlan", {"VNI": 4000,
                                                                                "VtepMAC": "0a:58:0a:f4:09:01"})
    events = coord.subnet_events(etcd, revision + 1, timeout=5)
    t0 = time.monotonic()
    coord.create_subnet_lease(etcd, new, 60)
    kind, lease = next(events)
    assert time.monotonic() - t0 < 1 and kind == "added" and lease.subnet == new.subnet
    assert lease.backend_data["VtepMAC"] == "0a:58:0a:f4:09:01"
    etcd.delete("/coreos.com/network/subnets/10.244.9.0-24")
    assert next(events) == ("removed", IPv4Network("10.244.9.0/24"))
    events.close()


# ---- everything read is input -----------------------------------------------------------------

@pytest.mark.parametrize("key,value,problem", [
    ("10.244.1.0-24", "{not json", "does not hold JSON"),
    ("10.244.1.0-24", '["a list"]', "a subnet lease is a JSON object"),
    ("10.244.1.0-99", '{"PublicIP": "10.0.0.1", "BackendType": "host-gw"}', "is not a flannel subnet key"),
    ("10.244.1.1-24", '{"PublicIP": "10.0.0.1", "BackendType": "host-gw"}', "is not a flannel subnet key"),
    ("../../x", '{"PublicIP": "10.0.0.1", "BackendType": "host-gw"}', "is not a flannel subnet key"),
    ("10.244.1.0-24", '{"PublicIP": "10.0.0.1; rm -rf /", "BackendType": "host-gw"}', "is not an IPv4 address"),
    ("10.244.1.0-24", '{"PublicIP": "10.0.0.1", "BackendType": "wireguard"}', "is not a backend nslab knows"),
    ("10.244.1.0-24", '{"PublicIP": "10.0.0.1", "BackendType": "vxlan", "BackendData": {"VtepMAC": "ff:ff:ff:ff:ff:ff"}}',
     "is not a unicast MAC address"),
    ("10.244.1.0-24", '{"PublicIP": "10.0.0.1", "BackendType": "vxlan", "BackendData": {"VtepMAC": "0a:58:0a:f4:01:01", '
                      '"VNI": 16777216}}', "is not a VNI"),
    ("10.244.1.0-24", '{"PublicIP": "10.0.0.1", "BackendType": "vxlan", "BackendData": "0a:58"}',
     "BackendData is not an object"),
])
def test_hostile_subnet_leases_are_skipped_with_a_sentence(etcd, key, value, problem):
    good = coord.SubnetLease(IPv4Network("10.244.2.0/24"), "10.0.0.2", "host-gw", {})
    coord.create_subnet_lease(etcd, good, 60)
    # host-gw's lease as flanneld writes it: no BackendData (omitempty)
    assert json.loads(etcd.get("/coreos.com/network/subnets/10.244.2.0-24").value) == {
        "PublicIP": "10.0.0.2", "PublicIPv6": None, "BackendType": "host-gw"}
    etcd.put(f"/coreos.com/network/subnets/{key}", value)
    leases, _, bad = coord.subnet_leases(etcd)
    assert [lease.subnet for lease in leases] == [good.subnet]
    assert len(bad) == 1 and problem in bad[0] and "\n" not in bad[0]


@pytest.mark.parametrize("name,value,problem", [
    ("m1", '{"name": "m2", "address": "198.18.0.1", "underlay_mtu": 1500}', "not its key's valid name"),
    ("m..1", '{"name": "m..1", "address": "198.18.0.1", "underlay_mtu": 1500}', "not its key's valid name"),
    ("m1", '{"name": "m1", "address": "198.18.0.1/24", "underlay_mtu": 1500}', "is not an IPv4 address"),
    ("m1", '{"name": "m1", "address": "198.18.0.1", "underlay_mtu": 10}', "is not an MTU"),
    ("m1", '{"name": "m1", "address": "198.18.0.1", "underlay_mtu": 1500, "run": "sh"}', "is not a machine record"),
])
def test_hostile_machine_records_are_skipped(etcd, name, value, problem):
    etcd.put(f"/nslab/machines/{name}", value)
    good, bad = coord.machines(etcd)
    assert good == [] and len(bad) == 1 and problem in bad[0]


def test_a_flannel_config_that_is_not_valid_is_refused(etcd):
    with pytest.raises(coord.EtcdError, match="flannel config not found"):
        coord.network_config(etcd)
    for value, problem in [('{"Network": "10.244.0.0/33"}', "is not an IPv4 network"),
                           ('{"Network": "10.244.0.0/16", "SubnetLen": "24"}', "is not a prefix length"),
                           ('{"Network": "10.244.0.0/16", "Backend": {"Type": "x"}}', "is not a backend")]:
        etcd.put("/coreos.com/network/config", value)
        with pytest.raises(coord.EtcdError, match=problem):
            coord.network_config(etcd)


class _Liar(http.server.BaseHTTPRequestHandler):
    answer = b""

    def do_POST(self):      # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.answer)))
        self.end_headers()
        self.wfile.write(self.answer)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("answer,problem", [
    (b"<html>", "and no JSON (is it etcd v3?)"),
    (b"[1, 2]", "with list, not an object"),
    (b'{"kvs": [{"key": "!!notbase64", "value": ""}]}', "is not base64 UTF-8"),
    (b'{"kvs": [{"key": "YQ==", "value": "YQ==", "mod_revision": "1e9"}]}', "not a number"),
    (b'{"error": "x", "message": "etcdserver: permission denied", "code": 7}', "refused /v3/kv/range: etcdserver: "
                                                                              "permission denied"),
    (b'{"error": "x", "message": "line one\\nline two", "code": 2}', "refused /v3/kv/range: line one\\nline two"),
])
def test_a_lying_gateway_is_refused(answer, problem):
    handler = type("Liar", (_Liar,), {"answer": answer})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(coord.EtcdError) as info:
            coord.Etcd(f"http://127.0.0.1:{server.server_port}").get("a")
        assert problem in str(info.value) and "\n" not in str(info.value)
    finally:
        server.shutdown()
        server.server_close()


# ---- unreachable: one sentence naming the endpoint, within 5 s --------------------------------

def test_nobody_listening():
    port = free_port()
    t0 = time.monotonic()
    with pytest.raises(coord.EtcdUnreachable) as info:
        coord.Etcd(f"http://127.0.0.1:{port}").get("/nslab/x")
    assert time.monotonic() - t0 < 5
    assert str(info.value) == f"etcd at http://127.0.0.1:{port} does not answer (connection refused)"


def test_a_silent_endpoint_in_5_seconds():
    """Accepts connections (the kernel's backlog) but never answers: the timeout."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        port = s.getsockname()[1]
        t0 = time.monotonic()
        with pytest.raises(coord.EtcdUnreachable) as info:
            coord.Etcd(f"http://127.0.0.1:{port}").get("/nslab/x")
        assert coord.TIMEOUT <= time.monotonic() - t0 < 6.5
    assert coord.TIMEOUT <= 4.5         # issue 20: one sentence within 5 s
    assert str(info.value) == f"etcd at http://127.0.0.1:{port} does not answer (no answer within 4.5 s)"


@pytest.mark.parametrize("endpoint", ["127.0.0.1:2379", "ftp://h:1", "http://h", "http://h:1/v2", "http://u@h:1",
                                      "http://h:99999"])
def test_endpoint_must_be_a_url(endpoint):
    with pytest.raises(UsageError, match="expected http://HOST:PORT"):
        coord.Etcd(endpoint)


# ---- shards, statuses, the agents' credential (nslab/machine_agent.py, nslab/across.py) ----------

GOOD_SHARD = {"lab": "l1", "file": "l1.yaml", "text": "hosts: {h1: {}}\n", "machines": [["m1", "198.18.1.1"]],
              "vnis": [5001, 5002], "port": 4789, "underlay_mtu": 9216, "overrides": {}}


def test_a_shard_round_trips_and_lists_by_machine(etcd):
    coord.put_shards(etcd, ["m1"], GOOD_SHARD)
    specs, rev, bad = coord.shards(etcd, "m1")
    assert json.loads(etcd.get("/nslab/shards/m1/l1").value) == GOOD_SHARD     # inline, as etcdctl shows it
    assert specs == {"l1": GOOD_SHARD} and rev > 0 and bad == []
    assert coord.shards(etcd, "m2")[0] == {}
    assert coord.lab_shards(etcd, "l1") == ["m1"]


@functools.lru_cache(maxsize=None)
def big_text(nodes: int) -> str:
    """A topology text of `nodes` hosts, about 60 bytes each, not too repetitive for zlib."""
    import random
    rng = random.Random(nodes)
    return "hosts:\n" + "".join(f"  h{i}: {{address: 10.{rng.randrange(256)}.{rng.randrange(256)}."
                                 f"{rng.randrange(1, 255)}/{rng.randrange(8, 31)}}}\n" for i in range(nodes))


def test_a_spec_too_big_for_one_value_is_stored_in_parts_and_read_back(etcd):
    text = big_text(120_000)                        # ~5 MiB: over etcd's 1.5 MiB request limit
    assert len(text) > 4 << 20
    spec = {**GOOD_SHARD, "text": text}
    coord.put_shards(etcd, ["m1", "m2"], {**spec, "machines": [["m1", "198.18.1.1"], ["m2", "198.18.1.2"]]})
    parts, _ = etcd.get_prefix("/nslab/texts/l1/")
    assert len(parts) >= 2 and all(len(kv.value) <= coord.TEXT_PART for kv in parts)     # stored once
    stored = json.loads(etcd.get("/nslab/shards/m1/l1").value)
    assert stored["text"] == "" and stored["text_parts"]["parts"] == len(parts)
    specs, _, bad = coord.shards(etcd, "m2")
    assert bad == [] and specs["l1"]["text"] == text and "text_parts" not in specs["l1"]
    coord.release_lab(etcd, "l1")                  # `down`: the parts go with the claim
    assert etcd.get_prefix("/nslab/texts/l1/")[0] == []


@pytest.mark.parametrize("damage,problem", [
    (lambda etcd: etcd.delete("/nslab/texts/l1/0001"), "parts of its text"),
    (lambda etcd: etcd.put("/nslab/texts/l1/0009", b"x"), "parts of its text"),
    (lambda etcd: etcd.put("/nslab/texts/l1/0000", b"x" * 10), "are not"),
    (lambda etcd: etcd.put("/nslab/texts/l1/0000", b"x" * coord.TEXT_PART), "not zlib data"),
])
def test_damaged_text_parts_are_refused_with_a_sentence(etcd, damage, problem):
    coord.put_shards(etcd, ["m1"], {**GOOD_SHARD, "text": big_text(120_000)})
    damage(etcd)
    specs, _, bad = coord.shards(etcd, "m1")
    assert specs == {} and len(bad) == 1 and problem in bad[0], bad


@pytest.mark.parametrize("meta,problem", [
    ({"parts": 10 ** 6, "bytes": 1, "size": 1, "sha256": "0" * 64}, "within nslab's limits"),
    ({"parts": 1, "bytes": 1, "size": 1 << 30, "sha256": "0" * 64}, "within nslab's limits"),
    ({"parts": 1, "bytes": 1, "size": 1, "sha256": "0" * 64, "x": 1}, "within nslab's limits"),
    ({"parts": True, "bytes": 1, "size": 1, "sha256": "0" * 64}, "within nslab's limits"),
])
def test_hostile_text_parts_are_refused(etcd, meta, problem):
    etcd.put("/nslab/shards/m1/l1", json.dumps({**GOOD_SHARD, "text": "", "text_parts": meta}))
    specs, _, bad = coord.shards(etcd, "m1")
    assert specs == {} and len(bad) == 1 and problem in bad[0], bad


def test_a_text_whose_checksum_differs_is_refused(etcd):
    import zlib
    coord.put_shards(etcd, ["m1"], {**GOOD_SHARD, "text": big_text(120_000)})
    other = zlib.compress(big_text(120_001).encode(), 9)
    stored = json.loads(etcd.get("/nslab/shards/m1/l1").value)
    etcd.delete("/nslab/texts/l1/", prefix=True)
    for n in range(0, len(other), coord.TEXT_PART):
        etcd.put(f"/nslab/texts/l1/{n // coord.TEXT_PART:04d}", other[n:n + coord.TEXT_PART])
    stored["text_parts"]["bytes"], stored["text_parts"]["parts"] = len(other), -(-len(other) // coord.TEXT_PART)
    etcd.put("/nslab/shards/m1/l1", json.dumps(stored))
    specs, _, bad = coord.shards(etcd, "m1")
    assert specs == {} and len(bad) == 1 and "sha256" in bad[0], bad


@pytest.mark.parametrize("change,problem", [
    ({"lab": "other"}, "is not its key's valid lab name"),
    ({"extra": 1}, "is not a shard"),
    ({"machines": [["m2", "198.18.1.2"]]}, "holding m1"),
    ({"machines": [["m1", "198.18.1.1"], ["../x", "198.18.1.2"]]}, "is not [machine, address]"),
    ({"machines": [["m1", "not-an-ip"]]}, "is not IPv4"),
    ({"vnis": [5001, 5001]}, "distinct VNIs"),
    ({"vnis": [0]}, "distinct VNIs"),
    ({"vnis": [True]}, "distinct VNIs"),
    ({"port": 70000}, "is not a UDP port"),
    ({"underlay_mtu": "9000"}, "is not an MTU"),
    ({"overrides": {"without_netem": True}}, "only backend and proxy_mode"),
    ({"text": ["a"]}, "must be strings"),
])
def test_hostile_shard_specs_are_skipped_with_a_sentence(etcd, change, problem):
    etcd.put("/nslab/shards/m1/l1", json.dumps({**GOOD_SHARD, **change}))
    specs, _, bad = coord.shards(etcd, "m1")
    assert specs == {} and len(bad) == 1 and problem in bad[0], bad


def test_the_cluster_credential_is_made_once(etcd):
    token = coord.cluster_token(etcd)
    assert coord.TOKEN_RE.fullmatch(token) and coord.cluster_token(etcd) == token
    etcd.put(coord.TOKEN_KEY, "short")
    with pytest.raises(coord.EtcdError, match="does not hold a credential"):
        coord.cluster_token(etcd)


def test_statuses_under_a_lease_go_with_it(etcd):
    lease = etcd.grant(5)
    coord.put_status(etcd, "l1", "m1", "up", lease, namespaces=3)
    etcd.put("/nslab/status/l1/m2", json.dumps({"state": "weird", "namespaces": 1, "error": ""}))
    assert coord.statuses(etcd, "l1") == {("l1", "m1"): {"state": "up", "namespaces": 3, "error": ""}}
    etcd.revoke(lease)
    assert coord.statuses(etcd) == {}
