"""The lab record under pressure: commands racing on one lab, a read-only /run, a full disk."""
from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
import time

import pytest

from conftest import NSLAB, REPO, TOPOLOGIES, leftovers, nslab, unique_lab_name

pytestmark = pytest.mark.root
TOPO = str(TOPOLOGIES / "diy-veth.yaml")


def popen(*args, env):
    return subprocess.Popen(NSLAB + [str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO, env={**os.environ, **env})


def finish(p, timeout=60):
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out, err


def test_concurrent_up_of_one_name_exactly_one_wins(tmp_path):
    env = {"NSLAB_RUN_DIR": str(tmp_path)}
    for _ in range(3):
        name = unique_lab_name()
        procs = [popen("up", "-q", TOPO, "--name", name, env=env) for _ in range(2)]
        results = [finish(p) for p in procs]
        codes = sorted(r[0] for r in results)
        assert codes[0] == 0 and codes[1] in (0, 1, 2), results
        for loser in (r for r in results if r[0] != 0):   # none: the second converged the lab (to nothing)
            lines = loser[2].strip().splitlines()
            assert len(lines) == 1 and ("already running" in lines[0] or "being created" in lines[0]), loser
        assert json.load(open(tmp_path / name / "state.json"))["status"] == "up"
        nslab("down", name, env=env, check=True)
        assert leftovers(name, str(tmp_path), []) == []


def mounts_below(path) -> list[str]:
    prefix = os.path.realpath(path) + "/"
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(prefix)]


def test_destroy_unmounts_what_an_up_mounted_while_down_waited(tmp_path):
    """An `up` that finishes (and mounts its nodes' UTS namespaces) while a `down` waits for
    the lock: the down's destroy, not a step before it, must unmount them, or the run
    directory cannot be removed and the mounts leak."""
    code = f"""
import os
from nslab import state, lab
st = state.claim({"ux" + str(os.getpid())!r}, {TOPO!r})
lab.make_uts(st.dir, ["ns1", "ns2"])
state.release(st.lab)
assert os.path.ismount(lab.uts_path(st.dir, "ns1"))
state.destroy(st.lab)
print(st.dir)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60,
                          env={**os.environ, "NSLAB_RUN_DIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    assert mounts_below(tmp_path) == [] and os.listdir(tmp_path) == [], (mounts_below(tmp_path), os.listdir(tmp_path))


def test_up_down_capture_rewire_racing_never_corrupt_the_record(tmp_path):
    """Many rounds of up, down, capture and rewire of one lab started together in random
    order: every command ends with a sentence or success, the record always parses, and
    after a final down nothing is left."""
    env = {"NSLAB_RUN_DIR": str(tmp_path)}
    rng = random.Random(1234)
    name = unique_lab_name()
    outcomes = {}
    try:
        _race(tmp_path, env, rng, name, outcomes)
    finally:
        if (tmp_path / name).exists():                 # a failed round: still leave nothing
            nslab("down", name, env=env)
    # up must have won at least once (else the rounds raced nothing); a racing down that
    # started before up claimed the lab rightly says "no lab" (exit 2) in every round on a
    # loaded machine, and each round's own down after the race must succeed (check=True)
    assert 0 in outcomes["up"], outcomes
    assert mounts_below(tmp_path) == [] and os.listdir(tmp_path) == [], (mounts_below(tmp_path), os.listdir(tmp_path))


def _race(tmp_path, env, rng, name, outcomes):
    t0 = time.monotonic()
    rounds = 0
    while rounds < 12 and time.monotonic() - t0 < 60:
        rounds += 1
        cmds = [("up", "-q", TOPO, "--name", name), ("down", name), ("capture", "-l", name, "ns1", "-c", "1"),
                ("rewire", "-l", name), ("ls", "--json")]
        rng.shuffle(cmds)
        procs = []
        for cmd in cmds:
            procs.append((cmd[0], popen(*cmd, env=env)))
            time.sleep(rng.uniform(0, 0.15))
        capture = next(p for what, p in procs if what == "capture")
        first = ""
        ready, _, _ = select.select([capture.stderr], [], [], 30)   # "listening on", or its error
        if ready:
            first = capture.stderr.readline()
        if "listening on" in first:
            capture.send_signal(signal.SIGINT)       # Ctrl-C once it runs: no packet will come
        for what, p in procs:
            code, out, err = finish(p)
            err = (first if p is capture else "") + err
            assert "Traceback" not in err, (what, err)
            assert code == 0 or len(err.strip().splitlines()) >= 1, (what, code, err)
            outcomes.setdefault(what, set()).add(code)
            state_file = tmp_path / name / "state.json"
            if state_file.exists():
                json.loads(state_file.read_text())
        if (tmp_path / name).exists():
            st = json.loads((tmp_path / name / "state.json").read_text())
            assert st["status"] in ("up", "creating", "failed"), st
            processes = st["processes"]
            nslab("down", name, env=env, check=True)
            assert leftovers(name, str(tmp_path), processes) == []


def in_private_mounts(script: str, timeout=60) -> subprocess.CompletedProcess:
    """Run a shell script in a private mount namespace (its mounts vanish with it; the
    host's /run is never remounted)."""
    return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-euc", script],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)


def test_read_only_run_dir_is_one_sentence_and_leaves_nothing(tmp_path):
    name = unique_lab_name()
    ro = tmp_path / "ro"
    ro.mkdir()
    proc = in_private_mounts(f"mount --bind {ro} {ro}; mount -o remount,bind,ro {ro}; "
                             f"NSLAB_RUN_DIR={ro}/nslab {sys.executable} -m nslab.cli up -q {TOPO} --name {name}")
    assert proc.returncode == 1, proc
    assert proc.stderr.strip() == (f"nslab: cannot write the record of lab {name} ({ro}/nslab/{name}): the file "
                                   f"system is read-only; nslab keeps its records under {ro}/nslab (set "
                                   f"NSLAB_RUN_DIR to a writable directory)")
    assert leftovers(name, str(ro / "nslab"), []) == [] and os.listdir(ro) == []


@pytest.mark.parametrize("free_pages", [0, 1], ids=["full-at-claim", "full-after-claim"])
def test_disk_full_while_writing_the_record(tmp_path, free_pages):
    """A one-page tmpfs: full before the first record is written, or with room for the
    first record only (the next write fails half-way through up)."""
    name = unique_lab_name()
    small = tmp_path / "small"
    small.mkdir()
    fill = "" if free_pages else f"head -c 4096 /dev/zero > {small}/filler; "
    proc = in_private_mounts(f"mount -t tmpfs -o size=4k nslab-test {small}; {fill}"
                             f"NSLAB_RUN_DIR={small}/nslab {sys.executable} -m nslab.cli up -q {TOPO} --name {name}; "
                             f"echo; ls -A {small}/nslab")
    assert proc.returncode == 1, proc
    assert proc.stderr.strip() == (f"nslab: cannot write the record of lab {name} ({small}/nslab/{name}/state.json): "
                                   f"no space left on the device; free some space there and try again"), proc.stderr
    assert proc.stdout.strip() == ""               # the run directory (inside the tmpfs) was removed
    assert leftovers(name, str(small / "nslab"), []) == []


def test_down_finishes_a_removal_killed_between_rename_and_rmtree(tmp_path):
    """A `down` killed after renaming the run dir away (RUN_DIR/.removing.<lab>.<pid>) and
    before emptying it: the next down sweeps it, but only nslab's own names whose remover
    is gone."""
    dead = tmp_path / ".removing.k1x1.999999999"           # no such PID
    alive = tmp_path / f".removing.k1x2.{os.getpid()}"      # its remover still runs
    foreign = tmp_path / ".removing.Not A Lab.999999999"
    for d in (dead, alive, foreign):
        d.mkdir()
        (d / "state.json").write_text("{}")
    proc = nslab("down", "nosuchlab", env={"NSLAB_RUN_DIR": str(tmp_path)})
    assert proc.returncode == 2 and "no lab named 'nosuchlab'" in proc.stderr, proc
    assert not dead.exists() and alive.exists() and foreign.exists()
