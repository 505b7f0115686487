"""Ownership is verified, not assumed: a record pointing at other objects never makes
`down` remove them; a failed `up` removes only what it made; a corrupt record does not
stop `ls` or `down --all`."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import pytest

from conftest import TOPOLOGIES, leftovers, nslab, unique_lab_name

pytestmark = pytest.mark.root


def ip_netns_add(name: str) -> int:
    subprocess.run(["ip", "netns", "add", name], check=True)
    return os.stat(f"/run/netns/{name}").st_ino


def ip_netns_del(name: str) -> None:
    if os.path.exists(f"/run/netns/{name}"):
        subprocess.run(["ip", "netns", "del", name], check=True)


def start_time(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[19])


def edit(lab, change) -> None:
    path = os.path.join(lab.run_dir, lab.name, "state.json")
    with open(path) as f:
        data = json.load(f)
    change(data)
    with open(path, "w") as f:
        json.dump(data, f)


def test_planted_foreign_objects_survive_down(lab_factory, tmp_path):
    run_dir = str(tmp_path / "run")
    lab = lab_factory("diy-veth.yaml", run_dir=run_dir)
    foreign_ns = unique_lab_name() + ".x"          # another lab's name
    ghost = f"{lab.name}.ghost"                     # the lab's prefix, made by someone else
    inodes = {foreign_ns: ip_netns_add(foreign_ns), ghost: ip_netns_add(ghost)}
    victim = tmp_path / "victim"                    # reached through a namespace name with ../
    victim.write_text("keep me")
    victim_dir = tmp_path / "victim-dir"
    (victim_dir / "sub").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    evil_link = f"/etc/netns/{lab.name}.evil"
    os.symlink(str(elsewhere), evil_link)
    sleeper = subprocess.Popen(["sleep", "300"])
    dotdot = os.path.relpath(victim, "/run/netns")
    try:
        def plant(st):
            st["lab"] = os.path.relpath(tmp_path / "victim-dir", os.path.join(run_dir))
            st["namespaces"] += [foreign_ns, ghost, dotdot, str(victim)]
            v = os.stat(victim)
            st["ns_ids"].update({foreign_ns: [os.stat(f"/run/netns/{foreign_ns}").st_dev, inodes[foreign_ns]],
                                 ghost: [0, 1], dotdot: [v.st_dev, v.st_ino], str(victim): [v.st_dev, v.st_ino]})
            st["files"] += [str(victim), str(victim_dir), evil_link]
            st["processes"].append({"pid": sleeper.pid, "start_time": start_time(sleeper.pid), "what": "agent"})
        edit(lab, plant)
        proc = lab.nslab("down", lab.name)
        lab.down_done = True
        assert proc.returncode == 1, proc.stderr
        assert f"namespace {ghost} is not the one lab {lab.name} created" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
        # the lab's own things are gone ...
        assert not os.path.exists(f"/run/netns/{lab.name}.ns1") and not os.path.exists(f"/run/netns/{lab.name}.ns2")
        assert not os.path.lexists(f"/etc/netns/{lab.name}.ns1") and not os.path.exists(os.path.join(run_dir, lab.name))
        # ... and nothing else
        for ns, ino in inodes.items():
            assert os.stat(f"/run/netns/{ns}").st_ino == ino, ns
        assert victim.read_text() == "keep me" and (victim_dir / "sub").is_dir() and elsewhere.is_dir()
        assert os.readlink(evil_link) == str(elsewhere)
        assert sleeper.poll() is None, "down killed a process the lab did not start"
    finally:
        sleeper.kill()
        sleeper.wait()
        for ns in inodes:
            ip_netns_del(ns)
        if os.path.lexists(evil_link):
            os.unlink(evil_link)


def test_a_process_with_a_copied_start_time_is_not_the_labs(lab_factory):
    """PID and start time are public (/proc): a recorded process must also carry the lab
    (its run directory in its arguments, or one of the lab's namespaces)."""
    lab = lab_factory("diy-veth.yaml")
    outside = subprocess.Popen(["sleep", "300"])
    inside = lab.popen("ns1", "sleep", "300")
    try:
        deadline = time.monotonic() + 10
        while os.stat(f"/proc/{inside.pid}/ns/net").st_ino != os.stat(f"/run/netns/{lab.ns('ns1')}").st_ino:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        edit(lab, lambda st: st["processes"].extend(
            {"pid": p.pid, "start_time": start_time(p.pid), "what": "tcpdump"} for p in (outside, inside)))
        lab.down()
        assert inside.wait(timeout=10) is not None          # in the lab's namespace: stopped
        assert outside.poll() is None                         # anyone else's: untouched
    finally:
        for p in (outside, inside):
            if p.poll() is None:
                p.kill()
            p.wait()


def test_a_failed_up_leaves_a_namespace_made_in_between(tmp_path, monkeypatch):
    """Someone creates one of the lab's namespace names after up's check and before up
    creates it: up fails and removes its own namespaces only."""
    from nslab import lab as labmod
    from nslab import state
    from nslab.apply import netns
    monkeypatch.setattr(state, "RUN_DIR", str(tmp_path))
    name = unique_lab_name()
    theirs = f"{name}.ns2"
    ino = ip_netns_add(theirs)
    real_exists = netns.exists
    monkeypatch.setattr(netns, "exists", lambda ns: False if ns == theirs else real_exists(ns))  # up's check misses it
    try:
        with pytest.raises(Exception, match=f"network namespace {theirs} already exists"):
            labmod.up(labmod.load(str(TOPOLOGIES / "diy-veth.yaml"), name=name))
        assert os.stat(f"/run/netns/{theirs}").st_ino == ino
        assert not os.path.exists(f"/run/netns/{name}.ns1")
        assert leftovers(name, str(tmp_path), []) == [f"namespaces left in /run/netns: ['{theirs}']"]
    finally:
        ip_netns_del(theirs)


SCRIPT_HOSTS = "127.0.0.1 localhost\n10.1.1.2 ns1\n10.1.1.3 ns2\n"


def test_leftover_etc_netns_dir_is_refused_with_what_to_remove(tmp_path):
    name = unique_lab_name()
    d = f"/etc/netns/{name}.ns1"
    os.makedirs(d)
    open(os.path.join(d, "resolv.conf"), "w").write("nameserver 10.9.9.9\n")     # not only hosts: the user's
    try:
        proc = nslab("up", TOPOLOGIES / "diy-veth.yaml", "--name", name, env={"NSLAB_RUN_DIR": str(tmp_path)})
        assert proc.returncode == 2
        assert proc.stderr.strip() == (f"nslab: {d} exists and nslab did not make it (a leftover of `nslab script`'s "
                                       f"commands?): remove it (rm -r {d}) or rename the lab with --name")
        assert os.listdir(d) == ["resolv.conf"]
        assert leftovers(name, str(tmp_path), []) == [f"/etc/netns entries left: ['{d}']"]
    finally:
        shutil.rmtree(d)


def test_hosts_only_leftover_of_nslab_script_is_adopted(tmp_path):
    """What `nslab script`'s output leaves in /etc/netns (mkdir + hosts) for this lab."""
    name = unique_lab_name()
    script = nslab("script", TOPOLOGIES / "diy-veth.yaml", "--name", name, check=True).stdout
    hosts_lines = [line for line in script.splitlines() if line.startswith("mkdir -p /etc/netns/")]
    assert len(hosts_lines) == 2
    for line in hosts_lines:
        subprocess.run(["sh", "-c", line], check=True)
    assert open(f"/etc/netns/{name}.ns1/hosts").read() == SCRIPT_HOSTS
    env = {"NSLAB_RUN_DIR": str(tmp_path)}
    nslab("up", "-q", TOPOLOGIES / "diy-veth.yaml", "--name", name, env=env, check=True)
    assert os.path.islink(f"/etc/netns/{name}.ns1")
    nslab("down", name, env=env, check=True)
    assert leftovers(name, str(tmp_path), []) == []


def test_corrupt_and_unknown_key_records(lab_factory, tmp_path):
    run_dir = str(tmp_path / "run")
    bad, odd, good = (lab_factory("diy-veth.yaml", run_dir=run_dir) for _ in range(3))
    env = {"NSLAB_RUN_DIR": run_dir}
    with open(os.path.join(run_dir, bad.name, "state.json"), "w") as f:
        f.write('{"lab": "x", "namespaces": ')
    edit(odd, lambda st: st.update(future_key=[1, 2]))
    ls = nslab("ls", "--json", env=env)
    assert ls.returncode == 0, ls.stderr
    rows = {r["lab"]: r["status"] for r in json.loads(ls.stdout)}
    assert rows == {bad.name: "corrupt", odd.name: "up", good.name: "up"}
    assert f"lab {bad.name}: its record" in ls.stderr and "future_key" in ls.stderr and "Traceback" not in ls.stderr

    proc = nslab("down", "--all", env=env)
    for lab in (bad, odd, good):
        lab.down_done = True
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"nslab: 1 of 3 labs ({bad.name}) not removed completely: " \
                                                   f"see the lines above"
    # verified without the record: its /etc/netns links and run dir; not its namespaces
    for ns in ("ns1", "ns2"):
        assert f"namespace {bad.name}.{ns} exists but lab {bad.name}'s record does not show it made it: left " \
               f"alone (if it is yours: ip netns del {bad.name}.{ns})" in proc.stderr
        assert os.path.exists(f"/run/netns/{bad.name}.{ns}")
        ip_netns_del(f"{bad.name}.{ns}")
    for lab in (bad, odd, good):
        assert leftovers(lab.name, run_dir, []) == [], lab.name


# --- containers, found by label ---------------------------------------------------------------

def _engine():
    docker = pytest.importorskip("docker")
    from nslab import model
    from nslab.apply import containers
    from nslab.compile import compile_topology
    why = containers.unavailable(compile_topology(model.load(str(TOPOLOGIES / "containers.yaml"))))
    if why:
        pytest.skip(f"needs the Docker engine and nslab's images: {why}")
    return docker.from_env()


def still_there(client, container) -> bool:
    """Asked, not inferred from reload() raising: the container exists."""
    return [c.id for c in client.containers.list(all=True, filters={"id": container.id})] == [container.id]


def test_orphan_containers_of_a_lost_record(tmp_path):
    """After a reboot /run is empty but containers remain: up removes its own orphan and
    refuses anyone else's container of that name; down and down --all find orphans by label."""
    client = _engine()
    run_dir = str(tmp_path / "run")
    env = {"NSLAB_RUN_DIR": run_dir}
    name = unique_lab_name()

    def orphan(lab, node="client", labels=True):
        lbl = {"nslab.lab": lab, "nslab.node": node, "nslab.state": os.path.join(run_dir, lab)} if labels else {}
        return client.containers.create("nslab/busybox:latest", ["sleep", "300"], name=f"nslab.{lab}.{node}",
                                        labels=lbl, network_mode="none")
    made = []
    try:
        foreign = orphan(name, labels=False)
        made.append(foreign)
        proc = nslab("up", TOPOLOGIES / "containers.yaml", "--name", name, env=env)
        assert proc.returncode == 1, proc.stderr
        assert proc.stderr.strip() == (f"nslab: a container named nslab.{name}.client exists and nslab did not make "
                                       f"it for lab {name}: remove it (docker rm -f nslab.{name}.client) or run the "
                                       f"lab under another name with --name")
        assert leftovers(name, run_dir, []) == []
        assert still_there(client, foreign)
        foreign.remove(force=True)

        old = orphan(name)                          # our own, from before the "reboot"
        nslab("up", "-q", TOPOLOGIES / "containers.yaml", "--name", name, env=env, check=True)
        ids = [c["id"] for c in json.load(open(os.path.join(run_dir, name, "state.json")))["containers"]]
        assert old.id not in ids and len(ids) == 2
        nslab("down", name, env=env, check=True)
        assert leftovers(name, run_dir, []) == []

        gone_a, gone_b = unique_lab_name(), unique_lab_name()
        made += [orphan(gone_a), orphan(gone_b)]
        proc = nslab("down", gone_a, env=env)
        assert proc.returncode == 0, proc.stderr
        proc = nslab("down", "--all", env=env)
        assert proc.returncode == 0 and f"lab {gone_b} removed" in proc.stdout, proc
        assert client.containers.list(all=True, filters={"label": [f"nslab.lab={x}" for x in (gone_a, gone_b)]}) == []
    finally:
        for c in made + client.containers.list(all=True, filters={"label": f"nslab.lab={name}"}):
            try:
                c.remove(force=True)
            except Exception:
                pass


def test_a_foreign_container_in_the_record_survives_down(lab_factory, tmp_path):
    client = _engine()
    run_dir = str(tmp_path / "run")
    lab = lab_factory("diy-veth.yaml", run_dir=run_dir)
    unlabelled = client.containers.create("nslab/busybox:latest", ["sleep", "300"], network_mode="none")
    other_dir = client.containers.create("nslab/busybox:latest", ["sleep", "300"], network_mode="none",
                                         labels={"nslab.lab": lab.name, "nslab.state": "/elsewhere"})
    try:
        edit(lab, lambda st: st["containers"].extend({"node": "ns1", "name": c.name, "id": c.id}
                                                     for c in (unlabelled, other_dir)))
        lab.down()
        for c in (unlabelled, other_dir):
            assert still_there(client, c), f"down removed container {c.name}, which lab {lab.name} did not make"
    finally:
        for c in (unlabelled, other_dir):
            c.remove(force=True)
