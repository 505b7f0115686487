#!/usr/bin/env python3
"""Wall time of `nslab up` / `nslab down` for the shipped cluster labs, as a user runs
them (the CLI, process start-up included).  Target (issue 3): spine-leaf up <= 1.0 s,
down <= 0.5 s on the project's 2-core machine.

    sudo python3 bench/cluster_updown.py [--runs 5] [topologies/spine-leaf.yaml ...]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGETS = {"spine-leaf.yaml": (1.0, 0.5)}


def timed(argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("files", nargs="*", default=[os.path.join(ROOT, "topologies", f) for f in
                                                 ("spine-leaf.yaml", "spine-leaf-ecmp.yaml", "flannel-vxlan.yaml")])
    args = ap.parse_args()
    print(f"{'topology':28} {'up median':>10} {'down median':>12} {'target up/down':>16}  verdict")
    for path in args.files:
        name = f"bench{os.getpid()}"
        ups, downs = [], []
        for _ in range(args.runs):
            try:
                ups.append(timed(["nslab", "up", "-q", "--name", name, path]))
            finally:
                downs.append(timed(["nslab", "down", name]))
        up, down = statistics.median(ups), statistics.median(downs)
        target = TARGETS.get(os.path.basename(path))
        verdict = "" if not target else ("meets target" if up <= target[0] and down <= target[1] else "MISSES target")
        tgt = f"{target[0]:.1f}/{target[1]:.1f} s" if target else "-"
        print(f"{os.path.basename(path):28} {up:9.3f}s {down:11.3f}s {tgt:>16}  {verdict}")


if __name__ == "__main__":
    main()
