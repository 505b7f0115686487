#!/usr/bin/env python3
"""How long `nslab doctor` takes on a healthy lab, through the CLI (wall time: interpreter
start and imports included), with and without its probes.

    sudo python3 bench/doctor.py                                   # spine-leaf and cluster:4,25,10
    sudo python3 bench/doctor.py --labs spine-leaf --runs 5

Each lab is brought up as bench-doc-<pid>-<n> (--prefix), doctored --runs times (--no-probe, then
with probes; the median is printed with the spread), and taken down (also on failure).
Targets (issue 21): spine-leaf <= 2 s; a 1,000-pod cluster (cluster:4,25,10: 100 nodes,
1,109 namespaces) <= 30 s."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from converge import nslab as _nslab   # noqa: E402  (bench/ scripts share their runner)


def nslab(*args, check=True):
    """Like converge.nslab, but exit 1 (doctor's findings) is an answer, not a failure."""
    took, proc, _cpu = _nslab(*args, check=False)
    if check and proc.returncode not in (0, 1):
        raise SystemExit(f"bench: nslab {' '.join(map(str, args))} failed: {proc.stderr.strip()}")
    return took, proc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--labs", default="spine-leaf,cluster:4;25;10",
                    help="topologies or shapes, separated by ',' (a shape's own commas as ';')")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--prefix", default="bench-doc", help="lab names: PREFIX-<pid>-<n>")
    args = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f} at the start", flush=True)
    print(f"{'lab':<22} {'namespaces':>10} {'--no-probe':>14} {'with probes':>14}  probes")
    for n, spec in enumerate(args.labs.split(",")):
        spec = spec.replace(";", ",")
        name = f"{args.prefix}-{os.getpid()}-{n}"
        try:
            nslab("up", "-q", spec, "--name", name)
            rows = {}
            for mode in ("--no-probe", "--json"):
                times, report = [], {}
                for _ in range(args.runs):
                    t, proc = nslab("doctor", "-l", name, "--json", *(["--no-probe"] if mode == "--no-probe" else []))
                    report = json.loads(proc.stdout)
                    if not report["healthy"]:
                        raise SystemExit(f"bench: {spec} is not healthy: {report['findings'][:3]}")
                    times.append(t)
                rows[mode] = (times, report)
            cell = lambda ts: f"{statistics.median(ts):.2f} s ({min(ts):.1f}-{max(ts):.1f})"  # noqa: E731
            print(f"{spec:<22} {rows['--json'][1]['nodes']:>10} {cell(rows['--no-probe'][0]):>14} "
                  f"{cell(rows['--json'][0]):>14}  {rows['--json'][1]['probes']}", flush=True)
            print(f"{'':<22} doctor's own work (--json seconds): {rows['--json'][1]['seconds']:.2f} s; "
                  f"load average {os.getloadavg()[0]:.1f}", flush=True)
        finally:
            nslab("down", name, check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
