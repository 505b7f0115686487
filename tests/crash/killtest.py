#!/usr/bin/env python3
"""Crash safety, measured: SIGKILL `nslab up`, `nslab down` or a converge at a random moment, run
`nslab down LAB` again, and compare the host with how it was before the run.

    sudo python3 tests/crash/killtest.py --runs 100            # ~100 kills, 3 lab kinds
    sudo python3 tests/crash/killtest.py --runs 6 --seed 1 --scenarios udp,hosts200
    sudo python3 tests/crash/killtest.py --runs 20 --ops converge     # only converges

Lab kinds (round robin): spine-leaf with `--backend udp` (tunnel daemons + the lab agent),
topologies/containers.yaml (Docker containers), and a 200-host single-switch lab.
Operations alternate: kill `up` part-way, or bring the lab up and kill `down` part-way, or
bring it up and kill a converge part-way (`up` of an edited file on the running lab: 30
hosts removed and 30 added to the 200-host lab, which renumbers the others; the udp lab
moved to the vxlan backend, which recreates every cluster node and stops the agent and its
dataplanes); after a killed converge, every other run first brings the lab to the edited
file with `up` again (which must succeed, and a further `up` must say "no changes"), then
`down`.
The moment is uniform between the end of Python's start-up (measured once) and the end
of the operation (measured on a calibration run of each kind), so nearly every kill lands
while nslab is changing the host.  Only the nslab process itself is killed (as the OOM
killer or a closed terminal would); what it started lives on and must be found by `down`.

Compared before/after each run (only this tool's labs, `k<pid>x<n>`, so other labs may
come and go meanwhile): `ip netns` entries, /run/nslab/<lab>, /etc/netns/<lab>.*,
processes (recorded in the lab's state at kill time, naming the lab in their command
line, or inside one of the lab's network namespaces), containers labelled or named for the
lab, and the root namespace (tests/conftest.py's root_snapshot(): links, addresses,
routes, rules, forwarding sysctls, conf.default.*, iptables, nft).  A run is clean when
`nslab down` exits 0 and nothing differs.  Exit status 0 when every run is clean.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
from conftest import root_snapshot, snapshot_diff  # noqa: E402

NSLAB = [sys.executable, "-m", "nslab.cli"]
RUN_DIR = os.environ.get("NSLAB_RUN_DIR", "/run/nslab")
PREFIX = f"k{os.getpid()}x"


def hosts_yaml(n: int, first: int = 1) -> str:
    hosts = ", ".join(f"h{i}" for i in range(first, first + n))
    return f"name: hosts{n}\nhosts: [{hosts}]\nsegments:\n  sw:\n    subnet: 10.0.0.0/16\n    members: [{hosts}]\n"


def scenarios(workdir: str) -> dict[str, tuple[str, list[str]]]:
    path = os.path.join(workdir, "hosts200.yaml")
    with open(path, "w") as f:
        f.write(hosts_yaml(200))
    return {"udp": (str(REPO / "topologies" / "spine-leaf.yaml"), ["--backend", "udp"]),
            "containers": (str(REPO / "topologies" / "containers.yaml"), []),
            "hosts200": (path, [])}


def converges(workdir: str) -> dict[str, tuple[str, list[str]]]:
    """The edit each kind is converged to (kinds without one get no converge runs)."""
    path = os.path.join(workdir, "hosts200-edited.yaml")
    with open(path, "w") as f:
        f.write(hosts_yaml(200, first=31))     # h1-h30 removed, h201-h230 added
    return {"udp": (str(REPO / "topologies" / "spine-leaf.yaml"), ["--backend", "vxlan"]),
            "hosts200": (path, [])}


def containers_unavailable() -> str | None:
    sys.path.insert(0, str(REPO))
    from nslab import model
    from nslab.apply import containers
    from nslab.compile import compile_topology
    return containers.unavailable(compile_topology(model.load(str(REPO / "topologies" / "containers.yaml"))))


# ---- what a lab may leave behind -----------------------------------------------------------

def _cmdline(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _start_time(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else int(fields[19])


def namespace_inodes(lab: str) -> set[int]:
    out = set()
    for p in glob.glob(f"/run/netns/{glob.escape(lab)}.*"):
        try:
            out.add(os.stat(p).st_ino)
        except OSError:
            pass
    return out


def recorded_processes(lab: str) -> list[tuple[int, int]]:
    try:
        with open(os.path.join(RUN_DIR, lab, "state.json")) as f:
            return [(p["pid"], p["start_time"]) for p in json.load(f).get("processes", [])]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def lab_processes(prefix: str, inodes: set[int], recorded: list[tuple[int, int]]) -> list[str]:
    """Processes of this tool's labs: named in their command line, inside a lab namespace,
    or recorded (same PID and start time)."""
    me = os.getpid()
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if int(pid) == me:
            continue
        cmd = _cmdline(pid)
        try:
            ino = os.stat(f"/proc/{pid}/ns/net").st_ino
        except OSError:
            ino = None
        if (prefix in cmd and "killtest" not in cmd) or (ino is not None and ino in inodes):
            if _start_time(int(pid)) is not None:
                out.append(f"{pid} {cmd[:160]}")
    for pid, start in recorded:
        if _start_time(pid) == start and not any(o.startswith(f"{pid} ") for o in out):
            out.append(f"{pid} {_cmdline(str(pid))[:160]} (recorded)")
    return sorted(out)


def containers(prefix: str) -> list[str]:
    if shutil.which("docker") is None:
        return []
    proc = subprocess.run(["docker", "ps", "-a", "--format", "{{.Names}} {{.Label \"nslab.lab\"}}"],
                          capture_output=True, text=True, timeout=60)
    return sorted(line for line in proc.stdout.splitlines()
                  if line.startswith(f"nslab.{prefix}") or f" {prefix}" in line)


def host_state(prefix: str, inodes: set[int] = frozenset(), recorded=()) -> dict:
    snap = root_snapshot(own_prefix=prefix)
    snap["run dir"] = sorted(d for d in (os.listdir(RUN_DIR) if os.path.isdir(RUN_DIR) else [])
                             if d.startswith(prefix))
    snap["/etc/netns"] = sorted(os.path.basename(p) for p in glob.glob(f"/etc/netns/{glob.escape(prefix)}*"))
    snap["processes"] = lab_processes(prefix, set(inodes), list(recorded))
    snap["containers"] = containers(prefix)
    return snap


# ---- one run ---------------------------------------------------------------------------------

def nslab(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(NSLAB + list(args), capture_output=True, text=True, timeout=timeout, cwd=REPO)


def timed_kill(args: list[str], delay: float) -> tuple[bool, float]:
    """Start `nslab ARGS`, SIGKILL it after `delay` s.  (killed while running, its runtime)."""
    t0 = time.monotonic()
    proc = subprocess.Popen(NSLAB + args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    try:
        proc.wait(delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)    # our unreaped child: the PID cannot be someone else's
    proc.wait()
    return proc.returncode == -signal.SIGKILL, time.monotonic() - t0


class Runner:
    def __init__(self, args, workdir):
        self.args = args
        self.kinds = scenarios(workdir)
        self.edits = converges(workdir)
        self.n = 0
        self.names: list[str] = []
        self.duration: dict[tuple[str, str], float] = {}

    def name(self) -> str:
        self.n += 1
        lab = f"{PREFIX}{self.n}"
        self.names.append(lab)
        return lab

    def up_argv(self, kind: str, lab: str, edited: bool = False) -> list[str]:
        file, extra = (self.edits if edited else self.kinds)[kind]
        return ["up", "-q", file, "--name", lab] + extra

    def calibrate(self, kind: str) -> None:
        """One full up and down: checks the kind works here and times both."""
        lab = self.name()
        t0 = time.monotonic()
        proc = nslab(*self.up_argv(kind, lab))
        t_up = time.monotonic() - t0
        if proc.returncode != 0:
            nslab("down", lab)
            raise SystemExit(f"killtest: {kind}: nslab up failed: {proc.stderr.strip()}")
        if kind in self.edits:
            t0 = time.monotonic()
            proc = nslab(*self.up_argv(kind, lab, edited=True))
            self.duration[(kind, "converge")] = time.monotonic() - t0
            if proc.returncode != 0:
                nslab("down", lab)
                raise SystemExit(f"killtest: {kind}: the converge failed: {proc.stderr.strip()}")
        t0 = time.monotonic()
        proc = nslab("down", lab)
        self.duration[(kind, "up")], self.duration[(kind, "down")] = t_up, time.monotonic() - t0
        if proc.returncode != 0:
            raise SystemExit(f"killtest: {kind}: nslab down failed: {proc.stderr.strip()}")

    def learn(self, kind: str, op: str, seconds: float) -> None:
        """Follow the machine's speed (load comes and goes), so kills keep landing mid-way."""
        self.duration[(kind, op)] = 0.7 * self.duration[(kind, op)] + 0.3 * seconds

    def run(self, kind: str, op: str, startup: float, rng: random.Random) -> dict:
        lab = self.name()
        before = host_state(PREFIX)
        if op in ("down", "converge"):
            t0 = time.monotonic()
            proc = nslab(*self.up_argv(kind, lab))
            self.learn(kind, "up", time.monotonic() - t0)
            if proc.returncode != 0:
                return dict(lab=lab, kind=kind, op=op, clean=False, problems=[f"up failed: {proc.stderr.strip()}"])
        end = self.duration[(kind, op)]
        delay = rng.uniform(min(startup, end) * 0.8, end)
        argv = ["down", lab] if op == "down" else self.up_argv(kind, lab, edited=op == "converge")
        killed, ran = timed_kill(argv, delay)
        if not killed:
            self.learn(kind, op, ran)
        problems = []
        finished = op == "converge" and self.n % 4 < 2
        if finished:           # the next `up` finishes the converge; one more finds nothing to do
            proc = nslab(*argv)
            if proc.returncode != 0:
                problems.append(f"up after the killed converge exited {proc.returncode}: {proc.stderr.strip()}")
            again = nslab(*[a for a in argv if a != "-q"])
            if again.stdout.strip() != f"lab {lab}: no changes":
                problems.append(f"a second up after the killed converge did not say `no changes`: "
                                f"{again.stdout.strip()[:300]} {again.stderr.strip()}")
        # What exists now is what `down` must remove.
        inodes, recorded = namespace_inodes(lab), recorded_processes(lab)
        t0 = time.monotonic()
        if os.path.isdir(os.path.join(RUN_DIR, lab)):
            proc = nslab("down", lab)
            if proc.returncode != 0:
                problems.append(f"nslab down {lab} exited {proc.returncode}: {proc.stderr.strip()}")
        t_down = time.monotonic() - t0
        after = host_state(PREFIX, inodes, recorded)
        problems += snapshot_diff(before, after)
        return dict(lab=lab, kind=kind, op=op, delay=round(delay, 3), killed=killed, ran=round(ran, 3),
                    down=round(t_down, 3), finished=finished, clean=not problems, problems=problems)

    def cleanup(self) -> None:
        for lab in self.names:
            if os.path.isdir(os.path.join(RUN_DIR, lab)):
                nslab("down", lab)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=100, help="runs whose kill landed while nslab ran (default 100)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--scenarios", default="udp,containers,hosts200",
                    help="comma-separated: udp, containers, hosts200 (default: all three)")
    ap.add_argument("--ops", default="up,down,converge",
                    help="comma-separated: which operations to kill (default: up,down,converge)")
    ap.add_argument("--json", help="also write every run's result to this file")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("killtest: needs root (it builds real labs)", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    kinds = args.scenarios.split(",")
    if "containers" in kinds:
        why = containers_unavailable()
        if why:
            print(f"killtest: the container lab cannot run here: {why}", file=sys.stderr)
            return 2
    results = []
    with tempfile.TemporaryDirectory(prefix="nslab-killtest-") as workdir:
        runner = Runner(args, workdir)
        unknown = set(kinds) - set(runner.kinds)
        if unknown:
            print(f"killtest: unknown scenario {sorted(unknown)[0]} (known: {', '.join(runner.kinds)})", file=sys.stderr)
            return 2
        try:
            t0 = time.monotonic()
            subprocess.run(NSLAB + ["--help"], capture_output=True, cwd=REPO)
            startup = time.monotonic() - t0
            for kind in kinds:
                runner.calibrate(kind)
            print(f"seed {seed}; python start-up {startup:.2f} s; "
                  + ", ".join(f"{k} {op} {t:.2f} s" for (k, op), t in runner.duration.items()), flush=True)
            i = 0
            killed = 0
            while killed < args.runs and i < args.runs * 3:
                kind = kinds[i % len(kinds)]
                ops = [o for o in args.ops.split(",") if o != "converge" or kind in runner.edits]
                i += 1
                if not ops:                  # e.g. --ops converge on a lab with no converge edit
                    continue
                op = ops[((i - 1) // len(kinds)) % len(ops)]
                r = runner.run(kind, op, startup, rng)
                killed += r.get("killed", False)
                results.append(r)
                mark = "clean" if r["clean"] else "DIRTY"
                then = ", up again" if r.get("finished") else ""
                print(f"{len(results):3d} {kind:10s} kill {op:8s} at {r.get('delay', 0):5.2f} s "
                      f"({'killed' if r.get('killed') else 'finished first'}{then}): {mark}", flush=True)
                for p in r["problems"]:
                    print(f"      {p}", flush=True)
        finally:
            runner.cleanup()
    if not results:
        print("killtest: no run: none of the scenarios has one of the operations asked for "
              "(converge needs a scenario with a converge edit)", file=sys.stderr)
        return 2
    clean = sum(r["clean"] for r in results)
    landed = [r for r in results if r.get("killed")]
    print(f"\n{clean}/{len(results)} runs clean; {sum(r['clean'] for r in landed)}/{len(landed)} "
          f"of the runs whose SIGKILL landed while nslab ran (seed {seed})")
    for kind in kinds:
        for op in ("up", "down", "converge"):
            rs = [r for r in landed if r["kind"] == kind and r["op"] == op]
            if rs:
                print(f"  {kind:10s} kill {op:8s}: {sum(r['clean'] for r in rs)}/{len(rs)} clean")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(seed=seed, results=results), f, indent=1)
    return 0 if clean == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
