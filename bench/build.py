#!/usr/bin/env python3
"""Time `up` and `down` of a single-switch lab of N hosts, side by side.

    python bench/build.py                 # N = 50 and 200, 3 repetitions, median
    python bench/build.py 200 -r 5        # other sizes / repetitions
    python bench/build.py --no-mininet    # skip the (slow) Mininet comparison

The lab: one segment `sw` (a Linux bridge in its own namespace), subnet 10.0.0.0/16, and
N hosts, each in its own namespace with one veth into the bridge, an address, lo up.

Contenders:
  nslab          in-process: lab.up(model.load(...)) / lab.down(name), timed from the text
                 of the topology (parsing and planning included)
  nslab CLI      wall time of `nslab up FILE -q --name X` / `nslab down X` (a new Python
                 process each, so interpreter start and imports are included)
  ip -batch      the fastest iproute2 script we could write for the same lab: one `ip -batch`
                 for all `netns add` (no fork per namespace), one `ip -n SW -batch` that makes
                 the bridge and every veth with its host end born in the host namespace, then
                 one `ip -n HOST -batch` per host (addr, up: a process has to be inside the
                 namespace for that), run --ip-jobs at a time; down: one `ip -batch` of
                 `netns del`.  It does less than nslab (no sysctls, MACs, state, hosts files).
  mininet        Mininet 2.3 (Debian package, system /usr/bin/python3), LinuxBridge switch,
                 controller=None; up = build() + start(), down = stop().  Its switch and
                 switch-side veths live in the root namespace: that is how Mininet works, and
                 this script checks that they are gone afterwards.  Mininet.init() is skipped
                 because its fixLimits() would raise root-namespace sysctls.

Everything created is named bench-<pid>-* (Mininet's switch s<pid>) and removed on
failure and Ctrl-C.  The root namespace's links and the sysctls Mininet could touch are
compared before and after, and the result is printed.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from nslab import lab as labmod
from nslab import model, state
from nslab.apply import netns
from nslab.apply.applier import Applier

PID = os.getpid()
PREFIX = f"bench-{PID}"
MININET_SWITCH = f"s{PID}"
TARGET_UP, TARGET_DOWN = 0.66, 0.3          # N=200, issue 2
SUBNET = ipaddress.IPv4Network("10.0.0.0/16")
# sysctls Mininet's fixLimits() would raise (it is skipped; checked anyway) and ip_forward
WATCHED_SYSCTLS = ["net.ipv4.ip_forward", "net.core.wmem_max", "net.core.rmem_max", "net.ipv4.tcp_rmem",
                   "net.ipv4.tcp_wmem", "net.core.netdev_max_backlog", "net.ipv4.neigh.default.gc_thresh1",
                   "net.ipv4.neigh.default.gc_thresh3", "net.ipv4.route.max_size"]


def topology_yaml(lab: str, n: int) -> str:
    hosts = ", ".join(f"h{i}" for i in range(1, n + 1))
    return (f"name: {lab}\n"
            f"hosts: [{hosts}]\n"
            f"segments:\n"
            f"  sw:\n"
            f"    subnet: {SUBNET}\n"
            f"    members: [{hosts}]\n")


def host_address(i: int) -> str:
    """What nslab gives the i-th member (1-based): the i-th host address of the subnet."""
    return f"{SUBNET[i]}/{SUBNET.prefixlen}"


CHECK_FAILURES: list[str] = []


def ping(ns: str, address: str) -> None:
    """One ping between two lab namespaces (never leaves the lab); a failure is reported in
    the summary (the timing is kept: all contenders build the same kernel objects)."""
    ip = address.split("/")[0]
    r = subprocess.run(["ip", "netns", "exec", ns, "ping", "-c1", "-w5", "-q", ip], stdout=subprocess.DEVNULL)
    if r.returncode != 0:
        CHECK_FAILURES.append(f"{ns} -> {ip}")


class Phases:
    """Where nslab's in-process up spends its time: wraps a few functions with timers while
    active (about 600 perf_counter() calls for N=200; nothing else changes)."""

    WRAPPED = [(model, "load", "parse+plan"), (labmod.compiler, "compile_topology", "parse+plan"),
               (labmod, "write_hosts_files", "hosts files"), (Applier, "create_namespace", "namespaces"),
               (Applier, "send", "netlink")]

    def __init__(self):
        self.totals: dict[str, float] = {}

    def __enter__(self):
        self.saved = []
        for owner, attr, label in self.WRAPPED:
            orig = getattr(owner, attr)
            self.saved.append((owner, attr, orig))
            setattr(owner, attr, self._timed(orig, label))
        return self

    def _timed(self, fn, label):
        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.totals[label] = self.totals.get(label, 0.0) + time.perf_counter() - t
        return wrapper

    def __exit__(self, *exc):
        for owner, attr, orig in self.saved:
            setattr(owner, attr, orig)


# ---- contenders -------------------------------------------------------------------------
def nslab_inprocess(n: int, lab: str, workdir: str, check: bool, phases: list) -> tuple[float, float]:
    text = topology_yaml(lab, n)
    path = os.path.join(workdir, f"{lab}.yaml")
    with Phases() as ph:
        t0 = time.perf_counter()
        labmod.up(model.load(path, text=text, name=lab))
        up = time.perf_counter() - t0
    ph.totals["other"] = up - sum(ph.totals.values())
    phases.append(ph.totals)
    try:
        if check:
            ping(f"{lab}.h1", host_address(n))
    finally:
        t1 = time.perf_counter()
        labmod.down(lab)
        down = time.perf_counter() - t1
    return up, down


def nslab_cli(n: int, lab: str, workdir: str, check: bool, exe: str) -> tuple[float, float]:
    path = os.path.join(workdir, f"{lab}.yaml")
    with open(path, "w") as f:
        f.write(topology_yaml(lab, n))
    t0 = time.perf_counter()
    try:
        subprocess.run([exe, "up", path, "-q", "--name", lab], check=True, stdout=subprocess.DEVNULL)
        up = time.perf_counter() - t0
        if check:
            ping(f"{lab}.h1", host_address(n))
    finally:
        t1 = time.perf_counter()
        if state.load(lab) is not None:
            subprocess.run([exe, "down", lab], check=True, stdout=subprocess.DEVNULL)
        down = time.perf_counter() - t1
    return up, down


def ip_batch(n: int, lab: str, workdir: str, check: bool, jobs: int) -> tuple[float, float]:
    sw = f"{lab}.sw"
    hosts = [f"{lab}.h{i}" for i in range(1, n + 1)]
    files = {}

    def write(name, lines):
        files[name] = os.path.join(workdir, f"{lab}-{name}.batch")
        with open(files[name], "w") as f:
            f.write("".join(line + "\n" for line in lines))

    # the scripts are written before the clock starts (a shell script would be on disk too)
    write("add", [f"netns add {ns}" for ns in [sw] + hosts])
    write("sw", ["link set lo up", "link add br0 up type bridge stp_state 0"]
          + [f"link add h{i} master br0 up type veth peer name eth0 netns {ns}" for i, ns in enumerate(hosts, 1)])
    for i, ns in enumerate(hosts, 1):
        write(ns, ["link set lo up", "link set eth0 up", f"addr add {host_address(i)} dev eth0"])
    write("del", [f"netns del {ns}" for ns in [sw] + hosts])

    def ip(*args):
        subprocess.run(["ip", *args], check=True)

    t0 = time.perf_counter()
    try:
        ip("-batch", files["add"])
        ip("-n", sw, "-batch", files["sw"])
        with ThreadPoolExecutor(jobs) as pool:
            for fut in [pool.submit(ip, "-n", ns, "-batch", files[ns]) for ns in hosts]:
                fut.result()
        up = time.perf_counter() - t0
        if check:
            ping(hosts[0], host_address(n))
    finally:
        t1 = time.perf_counter()
        if any(netns.exists(ns) for ns in [sw] + hosts):
            subprocess.run(["ip", "-force", "-batch", files["del"]], stderr=subprocess.DEVNULL)
        down = time.perf_counter() - t1
    return up, down


MININET_SCRIPT = r"""
import json, signal, sys, time
from mininet.log import setLogLevel
from mininet.net import Mininet
from mininet.nodelib import LinuxBridge
from mininet.topo import Topo

n, sw = int(sys.argv[1]), sys.argv[2]

class Single(Topo):
    def build(self, n, sw):
        s = self.addSwitch(sw)
        for i in range(1, n + 1):
            self.addLink(self.addHost("h%d" % i), s)

setLogLevel("error")
Mininet.inited = True   # skip Mininet.init(): its fixLimits() raises root-namespace sysctls
net = Mininet(topo=Single(n=n, sw=sw), switch=LinuxBridge, controller=None, build=False)
out = {}
try:
    t0 = time.perf_counter()
    net.build()
    net.start()
    out["up"] = time.perf_counter() - t0
    out["ping"] = net.hosts[0].cmd("ping -c1 -w5 -q %s" % net.hosts[-1].IP()).count(" 0% packet loss") == 1
finally:
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # a second Ctrl-C must not cut the cleanup short
    t1 = time.perf_counter()
    net.stop()
    out["down"] = time.perf_counter() - t1
    print(json.dumps(out), flush=True)
"""

MININET_PYTHON = "/usr/bin/python3"


def mininet_available() -> bool:
    if not os.path.exists(MININET_PYTHON):
        return False
    return subprocess.run([MININET_PYTHON, "-c", "import mininet.net, mininet.nodelib"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0 \
        and shutil.which("brctl") is not None and shutil.which("mnexec") is not None


def mininet(n: int, check: bool) -> tuple[float, float]:
    proc = subprocess.Popen([MININET_PYTHON, "-c", MININET_SCRIPT, str(n), MININET_SWITCH],
                            stdout=subprocess.PIPE, text=True)
    try:
        out, _ = proc.communicate()
    except KeyboardInterrupt:
        proc.wait(120)          # it got the SIGINT too and is running net.stop()
        raise
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"mininet run failed (exit {proc.returncode})")
    result = json.loads(lines[-1])
    if check and not result.get("ping"):
        CHECK_FAILURES.append(f"mininet N={n}: h1 -> h{n}")
    return result["up"], result["down"]


# ---- safety -----------------------------------------------------------------------------
def root_links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    return {line.split(": ")[1].split("@")[0] for line in out.splitlines() if ": " in line}


def root_sysctls() -> dict[str, str]:
    out = {}
    for key in WATCHED_SYSCTLS:
        try:
            out[key] = netns.read_sysctl(key)   # read-only, from this (root) namespace
        except OSError:
            pass
    return out


def cleanup() -> list[str]:
    """Remove whatever this run left behind (only names carrying this run's prefix)."""
    done = []
    for lab in state.labs():
        if lab.startswith(PREFIX):
            labmod.down(lab)
            done.append(f"lab {lab}")
    leftover = [ns for ns in netns.list_names() if ns.startswith(PREFIX)]
    if leftover:
        subprocess.run(["ip", "-force", "-batch", "-"], input="".join(f"netns del {ns}\n" for ns in leftover),
                       text=True, stderr=subprocess.DEVNULL)
        done += [f"netns {ns}" for ns in leftover]
    # Mininet's switch side, if its net.stop() never ran: only our own switch's names
    mine = sorted(name for name in root_links() if name == MININET_SWITCH or name.startswith(MININET_SWITCH + "-"))
    for name in mine:
        subprocess.run(["ip", "link", "del", name], stderr=subprocess.DEVNULL)
        done.append(f"root link {name}")
    return done


# ---- driver -----------------------------------------------------------------------------
def nslab_executable() -> str:
    """The console script installed next to this interpreter (not a pyenv shim)."""
    here = os.path.join(os.path.dirname(sys.executable), "nslab")
    return here if os.access(here, os.X_OK) else shutil.which("nslab")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sizes", nargs="*", type=int, default=[50, 200], help="lab sizes N (default 50 200)")
    ap.add_argument("-r", "--repeat", type=int, default=3, help="repetitions per contender (median is shown)")
    ap.add_argument("--mininet-repeat", type=int, default=1, help="repetitions for Mininet (slow)")
    ap.add_argument("--no-mininet", action="store_true")
    ap.add_argument("--ip-jobs", type=int, default=os.cpu_count() or 2,
                    help="ip -batch processes run at once for the per-host part (default: cores)")
    ap.add_argument("--settle", type=float, default=1.0,
                    help="seconds to wait after each down (the kernel frees namespaces asynchronously)")
    ap.add_argument("--no-check", action="store_true", help="skip the untimed ping h1 -> hN after each up")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench/build.py needs root (it creates network namespaces)", file=sys.stderr)
        return 2
    check = not args.no_check
    exe = nslab_executable()
    have_mininet = not args.no_mininet and mininet_available()
    contenders = [("nslab", "nslab (in-process)"), ("cli", "nslab CLI (wall)"),
                  ("ip", f"ip -batch ({args.ip_jobs} jobs)")]
    if have_mininet:
        contenders.append(("mininet", "mininet 2.3 LinuxBridge"))
    links_before, sysctls_before = root_links(), root_sysctls()
    results: dict[int, dict[str, list[tuple[float, float]]]] = {}
    workdir = tempfile.mkdtemp(prefix=PREFIX + "-")
    interrupted = False
    failed: dict[str, str] = {}
    phases: dict[int, list[dict]] = {}
    try:
        for n in args.sizes:
            results[n] = {key: [] for key, _ in contenders}
            for rep in range(args.repeat):
                for key, _ in contenders:
                    if key == "mininet" and rep >= args.mininet_repeat or key in failed:
                        continue
                    lab = f"{PREFIX}-{key}{n}"
                    try:
                        if key == "nslab":
                            r = nslab_inprocess(n, lab, workdir, check, phases.setdefault(n, []))
                        elif key == "cli":
                            r = nslab_cli(n, lab, workdir, check, exe)
                        elif key == "ip":
                            r = ip_batch(n, lab, workdir, check, args.ip_jobs)
                        else:
                            r = mininet(n, check)
                    except (subprocess.CalledProcessError, RuntimeError, OSError) as e:
                        failed[key] = f"N={n}: {e}"
                        print(f"  N={n:<4} {key:<8} FAILED: {e}", flush=True)
                        continue
                    results[n][key].append(r)
                    print(f"  N={n:<4} {key:<8} run {rep + 1}: up {r[0]:.3f} s  down {r[1]:.3f} s", flush=True)
                    time.sleep(args.settle)
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: cleaning up", file=sys.stderr)
    finally:
        leftovers = cleanup()
        shutil.rmtree(workdir, ignore_errors=True)
    links_after, sysctls_after = root_links(), root_sysctls()

    print(f"\nnslab: {exe}   python {sys.version.split()[0]}   {os.cpu_count()} cores   "
          f"kernel {os.uname().release}")
    if not have_mininet:
        print("mininet not installed (apt-get install mininet)" if not args.no_mininet else "mininet skipped")
    verdicts = []
    for n, per in results.items():
        med = {k: (statistics.median(u for u, _ in v), statistics.median(d for _, d in v))
               for k, v in per.items() if v}
        best = {k: (min(u for u, _ in v), min(d for _, d in v)) for k, v in per.items() if v}
        if "nslab" not in med:
            continue
        base_up, base_down = med["nslab"]
        print(f"\nN={n} hosts (median of {args.repeat} runs, Mininet {min(args.repeat, args.mininet_repeat)}; "
              f"best run in brackets)")
        print(f"  {'':<26}{'up s':>16}{'down s':>16}{'up x':>8}{'down x':>8}")
        for key, label in contenders:
            if key in med:
                (up, down), (bup, bdown) = med[key], best[key]
                print(f"  {label:<26}{up:>8.3f} [{bup:.3f}]{down:>8.3f} [{bdown:.3f}]"
                      f"{up / base_up:>8.1f}{down / base_down:>8.1f}")
        print("  (x = median time relative to nslab in-process; above 1 means slower than nslab)")
        if phases.get(n):
            labels = ["parse+plan", "hosts files", "namespaces", "netlink", "other"]
            print("  nslab in-process up, median per phase: " + ", ".join(
                f"{label} {statistics.median(p.get(label, 0.0) for p in phases[n]):.3f}" for label in labels))
        if n == 200:
            for key in ("nslab", "cli"):
                if key not in med:
                    continue
                up, down = med[key]
                v = [f"up {up:.3f} <= {TARGET_UP}: {'yes' if up <= TARGET_UP else 'NO'}",
                     f"down {down:.3f} <= {TARGET_DOWN}: {'yes' if down <= TARGET_DOWN else 'NO'}"]
                if "ip" in med:
                    v.append(f"faster than ip -batch: up {'yes' if up < med['ip'][0] else 'NO'}, "
                             f"down {'yes' if down < med['ip'][1] else 'NO'}")
                if "mininet" in med:
                    v.append(f"vs mininet: up {med['mininet'][0] / up:.0f}x, down {med['mininet'][1] / down:.0f}x")
                verdicts.append(f"  {dict(contenders)[key]}: " + "; ".join(v))
    for key, why in failed.items():
        print(f"{dict(contenders)[key]} failed ({why}); its remaining runs were skipped")
    if verdicts:
        print("\ntargets (N=200):")
        print("\n".join(verdicts))

    new_links, gone_links = sorted(links_after - links_before), sorted(links_before - links_after)
    changed = {k: (sysctls_before[k], sysctls_after.get(k)) for k in sysctls_before
               if sysctls_before[k] != sysctls_after.get(k)}
    print(f"\nroot namespace: {len(links_before)} links before, {len(links_after)} after"
          + (f"; NEW: {new_links}" if new_links else "") + (f"; GONE: {gone_links}" if gone_links else "")
          + ("; watched sysctls unchanged" if not changed else f"; SYSCTLS CHANGED: {changed}"))
    if CHECK_FAILURES:
        print(f"PING CHECK FAILED after up ({len(CHECK_FAILURES)}): {', '.join(CHECK_FAILURES)}")
    elif check:
        print("ping check after every up (h1 -> hN): all passed")
    ours = [ns for ns in netns.list_names() if ns.startswith(PREFIX)]
    print(f"namespaces left by this run: {ours or 'none'}"
          + (f"; cleanup removed {leftovers}" if leftovers else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"sizes": {str(n): per for n, per in results.items()}, "nslab": exe}, f, indent=1)
    return 130 if interrupted else (1 if failed else 0)


if __name__ == "__main__":
    sys.exit(main())
