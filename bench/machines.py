#!/usr/bin/env python3
"""Labs across machines, measured (issue 20, item 9): one ~10,000-node CLOS brought up and
down on this machine alone, then over 3 sandbox machines (`nslab sandbox up 3`, `nslab up
--spread m1,m2,m3`), in the same run, side by side; then the largest CLOS that comes up
over the 3 sandbox machines, in steps, until a step fails, memory would run short or the
time budget is spent (each stop is said).

All machines of the sandbox share this box's kernel and CPUs, so the comparison measures
what distribution costs (etcd, agents compiling and placing the same text, the stitches),
not what more machines gain.  Goals: up over 3 machines <= 1.2x one machine, down <= 2x.

    sudo python3 bench/machines.py                          # clos:8,100,100, then 15k, 20k, 24k
    sudo python3 bench/machines.py --shape clos:4,20,50 --steps 2000,3000 --budget 300

Timed as a user runs them: `nslab up -q FILE` / `nslab down LAB` (wall, the CLI's
interpreter start included), the kernel's Slab and SUnreclaim before and after, and a
sample of pings between machines (`nslab exec` through the agents).  Before each timed
up the kernel is let free the labs before (Slab back near where the run began): a
namespace is freed after `down` returns, and an up timed meanwhile pays for it.
The sandbox is --name's (default bm<pid>): one that is up already is used and left up;
else it is started and removed at the end.  Labs are named PREFIX<pid>-one / -three /
-N and removed at the end, also on failure.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scale import meminfo, sample_pairs, timed      # bench/scale.py: the same measures

from nslab import compile as compiler
from nslab import generate, model, sandbox
from nslab.compile import placement
from nslab.errors import NslabError
from nslab.model import limits

REPO = Path(__file__).resolve().parents[1]
# -P: the caller's folder not first on the import path (a folder nslab/ there would run as
# root); PYTHONPATH names this tree
NSLAB = [sys.executable, "-P", "-m", "nslab.cli"]
UP_GOAL, DOWN_GOAL = 1.2, 2.0
MACHINES = "m1,m2,m3"


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def available_mib() -> int:
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) // 1024 for line in f if line.startswith("MemAvailable:"))


def nslab(*args, env=None, timeout=3600) -> subprocess.CompletedProcess:
    return subprocess.run(NSLAB + [str(a) for a in args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


def clos(workdir: str, shape: str, name: str) -> tuple[str, object]:
    path = os.path.join(workdir, f"{name}.yaml")
    with open(path, "w") as f:
        f.write(generate.render(shape, name=name, file=path))
    return path, model.load(path)


def cross_pings(topo, name: str, env: dict, where: dict[str, str], n: int = 6) -> tuple[int, int]:
    """(answered, sent): a few hosts ping a host in the rack half the fabric away, on
    another machine, through `nslab exec` (the source's agent)."""
    pairs = [(s, d, ip) for s, _, d, ip in sample_pairs(topo) if where.get(s) and where.get(d)
             and where[s] != where[d] and not d.startswith("leaf")]
    step = max(1, len(pairs) // n)
    picked = pairs[::step][:n]
    ok = sum(nslab("exec", "-l", name, s, "--", "ping", "-c", "1", "-W", "3", ip, env=env,
                   timeout=120).returncode == 0 for s, _, ip in picked)
    return ok, len(picked)


def placement_of(path: str) -> dict[str, str]:
    """node -> machine, as `up --spread --dry-run --json` places it (the same code as up)."""
    dry = nslab("up", path, "--spread", MACHINES, "--dry-run", "--json", "--underlay-mtu", "9000")
    if dry.returncode:
        raise RuntimeError(f"--dry-run failed: {dry.stderr.strip()}")
    return {n: m["name"] for m in json.loads(dry.stdout)["machines"] for n in m["nodes"]}


BASELINE: dict = {}


def settled(limit: float = 300.0) -> float:
    """Wait until the kernel has freed the labs before (Slab back within 256 MiB of where the
    run began, or not falling for 20 s: what it keeps); the seconds waited.  bench/scale.py's
    settle() stops as soon as Slab stops falling fast, which after a 10,000-namespace down
    can be before the kernel's cleanup has started: an up timed then pays for it."""
    t0 = last_fall = time.monotonic()
    last = meminfo()["Slab"]
    while time.monotonic() - t0 < limit:
        now = meminfo()["Slab"]
        if now <= BASELINE["Slab"] + 256 or time.monotonic() - last_fall > 20:
            break
        if last - now >= 8:
            last_fall = time.monotonic()
        last = now
        time.sleep(2)
    return time.monotonic() - t0


def lease_losses(box: str) -> int:
    """How often the sandbox's agents have lost their etcd lease (their logs say so)."""
    n = 0
    for i in (1, 2, 3):
        got = subprocess.run(["docker", "exec", f"{box}.m{i}", "grep", "-c", "lease lost", "/run/nslab-agent.log"],
                             capture_output=True, text=True)
        n += int(got.stdout.strip() or 0)
    return n


def one_run(path: str, name: str, env: dict | None, between=None) -> dict:
    """up and down of FILE as NAME, here (env None) or over the sandbox's machines;
    between(row) runs while it is up."""
    row: dict = {"settled": settled()}
    row["mem0"], row["load0"] = meminfo(), load()
    spread = ["--spread", MACHINES] if env else []
    up_done = False
    try:
        row["up"], row["up_rss"], row["out"] = timed_env(["up", "-q", path, "--name", name, *spread], env)
        up_done = True
        row["mem_up"], row["load_up"] = meminfo(), load()
        if between:
            between(row)
    finally:
        if up_done or (env is None and os.path.exists(f"/run/nslab/{name}")):
            row["down"], row["down_rss"], _ = timed_env(["down", name], env)
    row["mem_down"] = meminfo()
    return row


def timed_env(args: list[str], env: dict | None) -> tuple[float, int, str]:
    old = {k: os.environ.get(k) for k in ("NSLAB_ETCD", "PYTHONPATH")}
    os.environ.update({"PYTHONPATH": str(REPO), **(env or {})})
    if env is None:
        os.environ.pop("NSLAB_ETCD", None)
    try:
        return timed([*NSLAB, *args])
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def mem(row: dict) -> str:
    m0, mu = row["mem0"], row.get("mem_up") or row["mem0"]
    return f"slab {m0['Slab']}->{mu['Slab']}->{row['mem_down']['Slab']} MiB"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="clos:8,100,100", help="the side-by-side CLOS (default ~10,000 nodes)")
    ap.add_argument("--steps", default="15000,20000,24000",
                    help="hosts per step of the largest-lab search (clos:8,HOSTS/100,100; past 25,400 "
                         "hosts, 254 leaves with more hosts each; nslab generate makes at most 25,000 "
                         "namespaces)")
    ap.add_argument("--budget", type=float, default=1200.0, help="seconds for the largest-lab search")
    ap.add_argument("--name", default=f"bm{os.getpid()}", help="the sandbox (used if up, else started)")
    ap.add_argument("--port", type=int, default=23890, help="its first port, if started")
    ap.add_argument("--prefix", default="bm", help="labs are PREFIX<pid>-...")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench: needs root", file=sys.stderr)
        return 2
    limits.raise_nofile_soft_limit()
    print(f"machine: {os.cpu_count()} CPUs, {os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') >> 30} GiB, "
          f"kernel {os.uname().release}; load average {load()}; "
          f"{sum(1 for _ in os.scandir('/run/netns')) if os.path.isdir('/run/netns') else 0} namespaces "
          f"of others on the box", flush=True)
    started = sandbox.load(args.name) is None
    if started:
        t0 = time.perf_counter()
        up = nslab("sandbox", "up", "3", "--name", args.name, "--port", args.port, timeout=600)
        if up.returncode:
            print(f"bench: sandbox up failed: {up.stderr.strip()}", file=sys.stderr)
            return 1
        print(f"sandbox {args.name}: 3 machines up in {time.perf_counter() - t0:.1f} s", flush=True)
    env = {"NSLAB_ETCD": sandbox.load(args.name).etcd()}
    BASELINE.update(meminfo())
    losses0 = lease_losses(args.name)
    base = f"{args.prefix}{os.getpid()}"
    labs: list[tuple[str, dict | None]] = []
    try:
        with tempfile.TemporaryDirectory() as workdir:
            path, topo = clos(workdir, args.shape, f"{base}-one")
            n = len(topo.nodes)
            labs.append((f"{base}-one", None))
            one = one_run(path, f"{base}-one", None)
            labs.pop()
            print(f"one machine:    {args.shape} {n:,} namespaces  up {one['up']:6.1f} s ({one['up'] / n * 1000:.2f} "
                  f"ms/ns, load {one['load0']}, after {one['settled']:.0f} s of settling)  down {one['down']:5.1f} s  {mem(one)}", flush=True)
            path3, topo3 = clos(workdir, args.shape, f"{base}-three")
            where = placement_of(path3)
            labs.append((f"{base}-three", env))

            def pings(row):
                row["pings"] = cross_pings(topo3, f"{base}-three", env, where)
            three = one_run(path3, f"{base}-three", env, pings)
            labs.pop()
            ok, sent = three.get("pings", (0, 0))
            counts = {m: sum(1 for w in where.values() if w == m) for m in MACHINES.split(",")}
            print(f"3 machines:     {args.shape} {n:,} namespaces ({', '.join(f'{m} {c:,}' for m, c in counts.items())})"
                  f"  up {three['up']:6.1f} s (load {three['load0']}, after {three['settled']:.0f} s of settling)  down {three['down']:5.1f} s  {mem(three)}  "
                  f"pings between machines {ok}/{sent}", flush=True)
            ru, rd = three["up"] / one["up"], three["down"] / one["down"]
            print(f"ratio 3 machines / one: up {ru:.2f}x (goal <= {UP_GOAL}x: {'met' if ru <= UP_GOAL else 'MISSED'}), "
                  f"down {rd:.2f}x (goal <= {DOWN_GOAL}x: {'met' if rd <= DOWN_GOAL else 'MISSED'})", flush=True)
            # MiB per namespace: the larger rise (a lab may reuse slab the last one freed but not returned)
            slab_per_ns = max(0.01, *((r["mem_up"]["Slab"] - r["mem0"]["Slab"]) / n for r in (one, three)))
            t0 = time.perf_counter()
            again = model.load(path3)
            compile_s = (placement.place(again, compiler.compile_topology(again),
                                         placement.parse_machines(MACHINES, "--spread"), underlay_mtu=9000),
                         time.perf_counter() - t0)[1]
            print(f"load + compile + place of the {n:,}-node text here: {compile_s:.1f} s (the host does it once, then "
                  f"each agent again for its part; load {load()})", flush=True)
            largest, why = (n, "the side-by-side lab"), "every step came up"
            deadline = time.monotonic() + args.budget
            for hosts in (int(s) for s in args.steps.split(",") if s):
                leaves = min(254, hosts // 100)             # generate: rack N is 10.N.0.0/16
                shape = f"clos:8,{leaves},{hosts // leaves}"
                name = f"{base}-{hosts // 1000}k"
                try:
                    path_k, topo_k = clos(workdir, shape, name)
                except NslabError as e:
                    why = f"stopped before {shape}: {e}"
                    break
                nk = len(topo_k.nodes)
                need = int(nk * slab_per_ns * 1.5)
                if available_mib() < need + 2048:
                    why = (f"stopped before {shape} ({nk:,} namespaces): it needs ~{need:,} MiB of kernel memory "
                           f"({slab_per_ns * 1024:.0f} KiB per namespace, measured, +50 %), {available_mib():,} MiB "
                           f"available and 2 GiB kept for the others on the box")
                    break
                left = deadline - time.monotonic()
                if left < three["up"] * nk / n * 3:
                    why = f"stopped before {shape}: the time budget ({args.budget:.0f} s) has {max(0, left):.0f} s left"
                    break
                labs.append((name, env))
                try:
                    row = one_run(path_k, name, env)
                except (RuntimeError, subprocess.TimeoutExpired) as e:
                    why = (f"{shape} ({nk:,} namespaces) failed at load {load()}: {str(e).splitlines()[-1][:300]}"
                           f"; the agents lost their etcd lease {lease_losses(args.name) - losses0} times in the run")
                    break
                labs.pop()
                print(f"largest search: {shape} {nk:,} namespaces over 3 machines  up {row['up']:6.1f} s "
                      f"({row['up'] / nk * 1000:.2f} ms/ns, load {row['load0']})  down {row['down']:5.1f} s  "
                      f"{mem(row)}", flush=True)
                largest = (nk, shape)
            print(f"largest lab over 3 sandbox machines: {largest[0]:,} namespaces ({largest[1]}); {why}", flush=True)
            print(f"kernel memory per namespace ({args.shape}): {slab_per_ns * 1024:.0f} KiB of Slab; "
                  f"up per node {three['up'] / n * 1000:.2f} ms; agents' etcd leases lost in the run: "
                  f"{lease_losses(args.name) - losses0}; load average now {load()}", flush=True)
    finally:
        for name, e in labs:
            done = nslab("down", name, env=e) if e else nslab("down", name, env={"NSLAB_ETCD": ""})
            if done.returncode and "no lab named" not in done.stderr:
                print(f"bench: down {name}: {done.stderr.strip()}", file=sys.stderr)
        if started:
            nslab("sandbox", "down", "--name", args.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
