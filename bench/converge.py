#!/usr/bin/env python3
"""How fast `nslab up` converges a running lab (nslab/converge.py), through the CLI (wall
time: interpreter start and imports included).

    sudo python3 bench/converge.py                       # cluster:2,10,50: 20 nodes, 1,000 pods
    sudo python3 bench/converge.py --shape clos:4,100,96 --only-same   # ~10,000 nodes, unchanged file
    sudo python3 bench/converge.py --runs 15 --vs /tmp/nslab-old       # paired: this tree vs another

Timed: `up` of the generated file (for reference), `up` of the same file again ("no
changes": the record's plan read back, the file's compiled, compared), `up` of the file
with one pod added to the first node (cluster shapes), its `--dry-run`, and `down`.
--runs N adds one pod more N times.  --vs TREE: a second lab, run by the nslab of source
tree TREE (say `git worktree add /tmp/nslab-old COMMIT`), gets the same pods in turn
(A B A B ...: a machine whose speed drifts moves both alike); the medians and the median
of the per-pair ratios A/B are printed, wall and CPU (user + system of the process).
Everything is named bench-conv-<pid>[-b] (--prefix: another first part) and removed at the
end (also on failure).
Targets (issue 19): one pod added to a 1,000-pod lab <= 0.5 s; the unchanged 10,000-node
file <= 3 s."""
from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NSLAB = [sys.executable, "-m", "nslab.cli"]


def nslab(*args, check=True, tree: Path = REPO) -> tuple[float, subprocess.CompletedProcess, float]:
    """(wall seconds, the process, its CPU seconds) of one nslab command run from `tree`."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(NSLAB + [str(a) for a in args], capture_output=True, text=True, cwd=tree, timeout=3600,
                          env=env)
    took = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    if check and proc.returncode != 0:
        raise SystemExit(f"bench: nslab {' '.join(map(str, args))} failed: {proc.stderr.strip()}")
    return took, proc, cpu


def with_pods(text: str, node: str, n: int) -> str:
    """`text` with pods extra1..extraN on `node`, at the end of `pods:` (pods take addresses
    in order: one at the front would move every other)."""
    extra = "".join(f"    extra{i}: {{node: {node}}}\n" for i in range(1, n + 1))
    return re.sub(r"(  pods:\n(?:    .*\n)+)", lambda m: m.group(1) + extra, text, count=1)


def paired(runs: list[tuple[float, float, float, float]]) -> None:
    """runs: (A wall, A cpu, B wall, B cpu) per pair."""
    for what, i in (("wall", 0), ("cpu", 1)):
        a, b = [r[i] for r in runs], [r[i + 2] for r in runs]
        ratio = statistics.median(x / y for x, y in zip(a, b))
        print(f"  one pod added, {what}: A median {statistics.median(a):.3f} s (min {min(a):.3f}), "
              f"B median {statistics.median(b):.3f} s (min {min(b):.3f}), A/B median {ratio:.2f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="cluster:2,10,50")
    ap.add_argument("--only-same", action="store_true", help="time only the unchanged file (no pod added)")
    ap.add_argument("--runs", type=int, default=1, help="pods added, one per `up` (default 1)")
    ap.add_argument("--vs", type=Path, help="an nslab source tree to run a second lab with, in turn (B)")
    ap.add_argument("--prefix", default="bench-conv", help="the labs' names: PREFIX-<pid>[-b]")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench: needs root", file=sys.stderr)
        return 2
    trees = [REPO] + ([args.vs.resolve()] if args.vs else [])
    names = [f"{args.prefix}-{os.getpid()}"] + ([f"{args.prefix}-{os.getpid()}-b"] if args.vs else [])
    with tempfile.TemporaryDirectory(prefix="nslab-bench-") as tmp:
        texts, files = [], []
        for name in names:
            base = Path(tmp) / f"{name}.yaml"
            nslab("generate", args.shape, "-o", base, "--name", name)
            texts.append(base.read_text().split("\ntests:")[0] + "\n")
            base.write_text(texts[-1])
            files.append(base)
        made = []
        try:
            for name, base, tree in zip(names, files, trees):
                load = os.getloadavg()[0]
                t_up, _, _ = nslab("up", "-q", base, tree=tree)
                made.append((name, tree))
                print(f"{args.shape}: {name} up {t_up:.2f} s (load average {load:.1f}, nslab of {tree})", flush=True)
            for i in range(3):
                t, proc, _ = nslab("up", files[0])
                assert proc.stdout.strip() == f"lab {names[0]}: no changes", proc.stdout
                print(f"  the same file again (no changes): {t:.2f} s", flush=True)
            if args.only_same:
                return 0
            node = re.search(r"^    (\S+): \{segment:", texts[0], re.M).group(1)
            edited = Path(tmp) / "edited.yaml"
            edited.write_text(with_pods(texts[0], node, 1))
            t, proc, _ = nslab("up", edited, "--dry-run")
            print(f"  one pod added, --dry-run: {t:.2f} s", flush=True)
            runs = []
            for n in range(1, args.runs + 1):
                pair = []
                for text, tree in zip(texts, trees):
                    edited.write_text(with_pods(text, node, n))
                    t, proc, cpu = nslab("up", edited, tree=tree)
                    assert proc.stdout.startswith(f"+ extra{n}: new node"), proc.stdout
                    pair += [t, cpu]
                runs.append(tuple(pair))
                print(f"  one pod added: {pair[0]:.2f} s (cpu {pair[1]:.2f} s)" +
                      (f", B {pair[2]:.2f} s (cpu {pair[3]:.2f} s)" if args.vs else ""), flush=True)
            if args.vs:
                print(f"load average now {os.getloadavg()[0]:.1f}")
                paired(runs)
            t, proc, _ = nslab("up", files[0])
            print(f"  the pods removed again: {t:.2f} s", flush=True)
        finally:
            for name, tree in made:
                t, _, _ = nslab("down", name, check=False, tree=tree)
                print(f"  down {name} {t:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
