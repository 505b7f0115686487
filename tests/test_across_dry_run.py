"""`nslab up FILE --spread ... --dry-run` with an etcd named (issue 20, item 3): the lab is
placed over the machines as registered there (across.place, the call `up` makes): their
underlay addresses, the smallest underlay MTU among them unless --underlay-mtu is given,
and a machine that is not registered refused in one sentence, exit 2.  A private etcd
(conftest's etcd_server) with machines registered under a lease, no agents: nothing is
built, nothing needs root."""
from __future__ import annotations

from conftest import REPO, nslab

SPINE_LEAF = str(REPO / "topologies" / "spine-leaf.yaml")       # links of MTU 9150


def register(etcd_server, machines: list[tuple[str, str, int]]) -> None:
    from nslab import coord
    etcd = coord.Etcd(etcd_server.endpoint)
    lease = etcd.grant(60)
    for name, address, mtu in machines:
        coord.register_machine(etcd, name, address, mtu, lease)


def test_dry_run_places_over_the_registered_machines(etcd_server):
    register(etcd_server, [("m1", "192.0.2.11", 9216), ("m2", "192.0.2.12", 9300), ("m3", "192.0.2.13", 9216)])
    env = {"NSLAB_ETCD": etcd_server.endpoint}
    dry = nslab("up", SPINE_LEAF, "--spread", "m1,m2,m3", "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    assert [line.split()[:2] for line in lines[1:4]] == [["m1", "192.0.2.11"], ["m2", "192.0.2.12"],
                                                         ["m3", "192.0.2.13"]]
    assert lines[-1].endswith("9216 available"), lines[-1]           # the smallest of the three
    # without the etcd: the 1500-byte default refuses the lab's 9150-byte links
    alone = nslab("up", SPINE_LEAF, "--spread", "m1,m2,m3", "--dry-run", env={"NSLAB_ETCD": ""})
    assert alone.returncode == 2 and "--underlay-mtu 1500" in alone.stderr, alone.stderr
    # --underlay-mtu given wins over etcd's
    small = nslab("up", SPINE_LEAF, "--spread", "m1,m2,m3", "--dry-run", "--underlay-mtu", "9000", env=env)
    assert small.returncode == 2 and "--underlay-mtu 9000" in small.stderr, small.stderr
    # a machine etcd does not know: refused as `up` refuses it, nothing written
    unknown = nslab("up", SPINE_LEAF, "--spread", "m1,m4", "--dry-run", env=env)
    assert unknown.returncode == 2
    assert unknown.stderr.strip() == (f"nslab: --spread names machine m4, which is not registered in etcd at "
                                      f"{etcd_server.endpoint} (registered: m1, m2, m3; start `nslab agent` there)")
    from nslab import coord
    assert coord.labs(coord.Etcd(etcd_server.endpoint)) == []
