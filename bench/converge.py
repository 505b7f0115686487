#!/usr/bin/env python3
"""How fast `nslab up` converges a running lab (nslab/converge.py), through the CLI (wall
time: interpreter start and imports included).

    sudo python3 bench/converge.py                       # cluster:2,10,50: 20 nodes, 1,000 pods
    sudo python3 bench/converge.py --shape clos:4,100,96 --only-same   # ~10,000 nodes, unchanged file

Timed: `up` of the generated file (for reference), `up` of the same file again ("no
changes": the record's plan read back, the file's compiled, compared), `up` of the file
with one pod added to the first node (cluster shapes), its `--dry-run`, and `down`.
Everything is named bench-conv-<pid> and removed at the end (also on failure).
Targets (issue 19): one pod added to a 1,000-pod lab <= 0.5 s; the unchanged 10,000-node
file <= 3 s."""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NSLAB = [sys.executable, "-m", "nslab.cli"]


def nslab(*args, check=True) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.run(NSLAB + [str(a) for a in args], capture_output=True, text=True, cwd=REPO, timeout=3600)
    took = time.perf_counter() - t0
    if check and proc.returncode != 0:
        raise SystemExit(f"bench: nslab {' '.join(map(str, args))} failed: {proc.stderr.strip()}")
    return took, proc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="cluster:2,10,50")
    ap.add_argument("--only-same", action="store_true", help="time only the unchanged file (no pod added)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench: needs root", file=sys.stderr)
        return 2
    name = f"bench-conv-{os.getpid()}"
    with tempfile.TemporaryDirectory(prefix="nslab-bench-") as tmp:
        base, edited = Path(tmp) / "base.yaml", Path(tmp) / "edited.yaml"
        nslab("generate", args.shape, "-o", base, "--name", name)
        text = base.read_text().split("\ntests:")[0] + "\n"
        base.write_text(text)
        try:
            load = os.getloadavg()[0]
            t_up, _ = nslab("up", "-q", base)
            print(f"{args.shape}: up {t_up:.2f} s (load average {load:.1f})", flush=True)
            for i in range(3):
                t, proc = nslab("up", base)
                assert proc.stdout.strip() == f"lab {name}: no changes", proc.stdout
                print(f"  the same file again (no changes): {t:.2f} s", flush=True)
            if not args.only_same:
                node = re.search(r"^    (\S+): \{segment:", text, re.M).group(1)
                # at the end of pods: (pods take addresses in order: one at the front moves every other)
                edited.write_text(re.sub(r"(  pods:\n(?:    .*\n)+)", lambda m: m.group(1) + f"    extra: {{node: {node}}}\n",
                                         text, count=1))
                t, proc = nslab("up", edited, "--dry-run")
                print(f"  one pod added, --dry-run: {t:.2f} s", flush=True)
                t, proc = nslab("up", edited)
                assert proc.stdout.startswith("+ extra: new node"), proc.stdout
                print(f"  one pod added: {t:.2f} s", flush=True)
                t, proc = nslab("up", base)
                print(f"  the pod removed again: {t:.2f} s", flush=True)
        finally:
            t, _ = nslab("down", name, check=False)
            print(f"  down {t:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
