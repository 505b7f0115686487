"""A record edited by hand (or by anyone who can write it) steers nothing outside the lab
(issue 18 holes 2 and 3): `down` kills no host process by a recorded host namespace, and
`exec`, `link`, `show`, `trace`, `test` and `rewire` refuse a namespace the lab did not create,
whatever state.json or plan.json name; a run directory others can write to is refused."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess

import pytest

from conftest import TOPOLOGIES, nslab, unique_lab_name
from test_ownership import edit, ip_netns_add, ip_netns_del, start_time

pytestmark = pytest.mark.root


def identity(path: str) -> list[int]:
    s = os.stat(path)
    return [s.st_dev, s.st_ino]


def one_line(proc) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.fixture
def foreign():
    """A namespace nobody's lab made (`ip netns add`), holding an UP bridge br0."""
    name = unique_lab_name() + ".x"
    ip_netns_add(name)
    try:
        for argv in (["link", "add", "br0", "type", "bridge"], ["link", "set", "br0", "up"]):
            subprocess.run(["ip", "-n", name, *argv], check=True)
        yield name
    finally:
        ip_netns_del(name)


def bridge_up(ns: str) -> bool:
    out = subprocess.run(["ip", "-n", ns, "-j", "link", "show", "br0"], capture_output=True, text=True, check=True)
    return "UP" in json.loads(out.stdout)[0]["flags"]


def test_down_kills_no_host_process_by_the_host_namespace_in_the_record(lab_factory, tmp_path):
    """The host's network namespace (the tests', where a `sleep` runs) recorded under
    lab-shaped names, one of them even mounted there (`ip netns attach <lab>.host PID`),
    and the `sleep` as one of the lab's processes."""
    lab = lab_factory("diy-veth.yaml", run_dir=str(tmp_path / "run"))
    host = identity("/proc/self/ns/net")
    mounted = f"{lab.name}.host"
    sleeper = subprocess.Popen(["sleep", "300"])
    try:
        subprocess.run(["ip", "netns", "attach", mounted, str(sleeper.pid)], check=True)
        def plant(st):
            st["ns_ids"].update({f"{lab.name}.evil": host, mounted: host})
            st["processes"].append({"pid": sleeper.pid, "start_time": start_time(sleeper.pid), "what": "tcpdump"})
        edit(lab, plant)
        proc = lab.nslab("down", lab.name)
        lab.down_done = True
        assert proc.returncode == 1, proc.stderr
        assert "Traceback" not in proc.stderr and proc.stderr.splitlines()[0] == \
            f"nslab: namespace {mounted} is not the one lab {lab.name} created (another has its name now): left alone"
        assert sleeper.poll() is None, "down killed a process in the host's namespace"
        assert identity(f"/run/netns/{mounted}") == host
        assert not os.path.exists(f"/run/netns/{lab.name}.ns1")        # the lab's own went
    finally:
        sleeper.kill()
        sleeper.wait()
        ip_netns_del(mounted)


def test_exec_link_show_trace_refuse_a_recorded_namespace_the_lab_did_not_create(lab_factory, tmp_path, foreign):
    lab = lab_factory("diy-veth.yaml", run_dir=str(tmp_path / "run"))
    ghost = f"{lab.name}.ghost"                  # the lab's prefix, made by someone else
    ip_netns_add(ghost)
    subprocess.run(["ip", "-n", ghost, "link", "add", "br0", "type", "bridge"], check=True)
    subprocess.run(["ip", "-n", ghost, "link", "set", "br0", "up"], check=True)
    marker = tmp_path / "ran"
    try:
        for ns, why in ((foreign, f"which is not a namespace name of lab {lab.name}: nslab will not touch it"),
                        (ghost, f"is not the one lab {lab.name} created (its identity is not the recorded one): "
                                f"nslab will not touch it")):
            edit(lab, lambda st: st["nodes"].update(ns1=ns))
            if ns == ghost:                      # recorded with some other identity
                edit(lab, lambda st: st["ns_ids"].update({ghost: [1, 2]}))
            expected = (f"nslab: lab {lab.name}: its record names namespace {ns!r} of node ns1, {why}; "
                        if ns == foreign else f"nslab: lab {lab.name}: namespace {ns!r} of node ns1 {why}; ") + \
                f"`nslab down {lab.name}` and bring it up again"
            for args in (["exec", "-l", lab.name, "ns1", "--", "touch", str(marker)],
                         ["link", "down", "-l", lab.name, "ns1:br0"],
                         ["show", "-l", lab.name, "ns1"],
                         ["trace", "-l", lab.name, "ns1", "ns2"]):
                proc = lab.nslab(*args)
                assert proc.returncode == 1, (args, proc.stderr)
                assert one_line(proc) == expected, args
            assert not marker.exists()
            assert bridge_up(ns)
        # the recorded topology names the lab's own ns1 (`nslab test` works from it), whose recorded identity is wrong
        own, ident = f"{lab.name}.ns1", lab.state["ns_ids"][f"{lab.name}.ns1"]
        edit(lab, lambda st: (st["nodes"].update(ns1=own), st["ns_ids"].update({own: [1, 2]})))
        try:
            proc = lab.nslab("test", "-l", lab.name)
            assert proc.returncode == 1 and one_line(proc) == (
                f"nslab: lab {lab.name}: namespace {own!r} is not the one lab {lab.name} created (its identity is not "
                f"the recorded one): nslab will not touch it; `nslab down {lab.name}` and bring it up again")
        finally:
            edit(lab, lambda st: st["ns_ids"].update({own: ident}))     # so that the teardown's down removes it
        assert lab.nslab("test", "-l", lab.name).returncode == 0
    finally:
        ip_netns_del(ghost)


def set_plan(lab, change) -> None:
    """Edit the recorded plan, and its digest in state.json with it (both are writable)."""
    path = os.path.join(lab.run_dir, lab.name, "plan.json")
    with open(path) as f:
        plan = json.load(f)
    change(plan)
    text = json.dumps(plan)
    with open(path, "w") as f:
        f.write(text)
    edit(lab, lambda st: st["built"].update({"plan.json": hashlib.sha256(text.encode()).hexdigest()}))


def test_rewire_touches_no_namespace_the_plan_names_but_the_lab_did_not_create(lab_factory, tmp_path, foreign):
    lab = lab_factory("diy-veth.yaml", run_dir=str(tmp_path / "run"))
    ns1 = f"{lab.name}.ns1"
    container = {"image": "nslab/busybox", "command": ["sleep", "300"]}
    # the foreign namespace recorded as a container node's, with its own identity
    edit(lab, lambda st: st["ns_ids"].update({foreign: identity(f"/run/netns/{foreign}")}))
    set_plan(lab, lambda p: p["ops"].append({"op": "Netns", "ns": foreign, "node": "ns1", "container": container}))
    proc = lab.nslab("rewire", "-l", lab.name)
    assert proc.returncode == 1, proc.stderr
    assert one_line(proc) == (f"nslab: lab {lab.name}: its recorded plan names namespace {foreign!r} for container "
                              f"node 'ns1', which lab {lab.name} did not create: nslab will not touch it; "
                              f"`nslab down {lab.name}` and bring it up again")
    assert bridge_up(foreign)

    # the lab's own node as a container whose veth's other end is in the foreign namespace
    def peer_elsewhere(p):
        p["ops"] = [dict(op, container=container) if op["op"] == "Netns" and op["ns"] == ns1 else op
                    for op in p["ops"] if op.get("ns") != foreign]
        for op in p["ops"]:
            if op["op"] == "Link" and op["kind"] == "veth":
                op["peer"]["ns"] = foreign
    set_plan(lab, peer_elsewhere)
    proc = lab.nslab("rewire", "-l", lab.name)
    assert proc.returncode == 1, proc.stderr
    assert one_line(proc) == (f"nslab: lab {lab.name}: its record names namespace {foreign!r}, which is not a "
                              f"namespace name of lab {lab.name}: nslab will not touch it; `nslab down {lab.name}` "
                              f"and bring it up again")
    assert bridge_up(foreign) and identity(f"/run/netns/{foreign}") == lab.state["ns_ids"][foreign]
    assert subprocess.run(["docker", "ps", "-aq", "--filter", f"label=nslab.lab={lab.name}"],
                          capture_output=True, text=True).stdout == ""          # nothing started either
    edit(lab, lambda st: st["ns_ids"].pop(foreign))                            # for the teardown's down


@pytest.mark.parametrize("how", ["group-writable", "other-writable", "not root's"])
def test_a_run_directory_others_can_write_to_is_refused(tmp_path, how):
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o755)
    os.chmod(run_dir, {"group-writable": 0o775, "other-writable": 0o757}.get(how, 0o755))
    if how == "not root's":
        os.chown(run_dir, 65534, 65534)
    name = unique_lab_name()
    env = {"NSLAB_RUN_DIR": str(run_dir)}
    why = "belongs to uid 65534, not root" if how == "not root's" else \
        f"is writable by group or others (mode {os.stat(run_dir).st_mode & 0o7777:04o})"
    expected = (f"nslab: nslab's run directory {run_dir} {why}, so its records cannot be trusted: make it root's and "
                f"not writable by others (chown root {run_dir}; chmod 755 {run_dir}) or set NSLAB_RUN_DIR to a "
                f"root-owned directory of mode 0755")
    try:
        for args in (["up", "-q", TOPOLOGIES / "diy-veth.yaml", "--name", name], ["ls"], ["down", "--all"]):
            proc = nslab(*args, env=env)
            assert proc.returncode == 1, (args, proc.stderr)
            assert one_line(proc) == expected, args
        assert os.listdir(run_dir) == [] and not os.path.exists(f"/run/netns/{name}.ns1")
    finally:
        if os.path.exists(run_dir / name):                # up went through: take it down again
            os.chown(run_dir, 0, 0)
            os.chmod(run_dir, 0o755)
            nslab("down", name, env=env, check=True)
