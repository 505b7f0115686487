#!/usr/bin/env python3
"""Scale benchmark (issue 12): generated CLOS fabrics of 1,000 / 2,500 / 5,000 / 10,000 hosts,
brought up and down with the CLI as a user runs it, and between the two:

- peak RSS of the `nslab up` and `nslab down` processes (/usr/bin/time -f %M),
- kernel memory: /proc/meminfo Slab and SUnreclaim before up, after up, after down,
- a reachability sample, in-process with the probe engine's sockets (nslab/observe/probe.py):
  every host -> its gateway, and every host -> a host in the farthest rack (half the racks
  away; in a CLOS every other rack is 2 spine hops away), ICMP echo, re-sent twice,
- neighbour table overflows: the kernel's table_fulls counter (/proc/net/stat/arp_cache)
  and "neighbor table overflow" lines in the kernel log (dmesg), before and after.

And a flannel cluster of 1,000 pods (--cluster, default cluster:4,25,10: 4 racks x 25 nodes
x 10 pods, vxlan; --cluster-backend host-gw for the other): the same figures, its sample
being every pod -> its node's cni0 and -> the pod at the same place in the rack half the
cluster away, and then `nslab test --all-pairs` on it (CLI wall, peak RSS, pairs answered,
the prober's own seconds).

Every lab gets a unique name and is always taken down (try/finally); nothing is left.

    sudo python3 bench/scale.py [--sizes 1000,2500,5000,10000] [--cluster cluster:4,25,10 | --cluster none]

Mininet side by side: bench/build.py (single switch, N hosts; it skips Mininet's
fixLimits(), which would raise the root namespace's neighbour thresholds -- `mn` itself
does, so this script never runs `mn`).
"""
from __future__ import annotations

import argparse
import json
import os
import select
import socket
import subprocess
import sys
import tempfile
import time

from nslab import generate, model
from nslab.model import limits
from nslab.observe import probe
from nslab.packet import echo_request, parse_echo_reply

SHAPES = {1000: "clos:4,20,50", 2500: "clos:4,50,50", 5000: "clos:8,50,100", 10000: "clos:8,100,100"}
TARGETS = {1000: (2.0, 0.4), 10000: (25.0, 5.0)}
ALL_PAIRS_TARGET = 30.0         # seconds, `nslab test --all-pairs` on 1,000 pods


def meminfo() -> dict[str, int]:
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, value = line.split(":")
            if key in ("Slab", "SUnreclaim"):
                out[key] = int(value.split()[0]) // 1024        # MiB
    return out


def overflow_lines() -> int:
    log = subprocess.run(["dmesg"], capture_output=True, text=True).stdout
    return log.count("neighbor table overflow")


def timed(argv: list[str]) -> tuple[float, int, str]:
    """Wall seconds, peak RSS (MiB) and stdout of one CLI run."""
    with tempfile.NamedTemporaryFile("r") as rss:
        t0 = time.perf_counter()
        done = subprocess.run(["/usr/bin/time", "-o", rss.name, "-f", "%M", *argv], capture_output=True, text=True)
        elapsed = time.perf_counter() - t0
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip() or done.stdout.strip()}")
        return elapsed, int(rss.read().split()[-1]) // 1024, done.stdout


def sample_pairs(topo) -> list[tuple[str, str, str, str]]:
    """(source name, source namespace, destination name, destination address): each host to
    its gateway and to the host at the same position in the rack half the fabric away."""
    racks = [seg for seg in topo.segments.values() if seg.gateway]
    members = {seg.name: [i.peer_node for i in topo.nodes[seg.name].ifaces] for seg in racks}
    pairs = []
    for k, seg in enumerate(racks):
        far = racks[(k + len(racks) // 2) % len(racks)]
        far_hosts = [h for h in members[far.name] if topo.nodes[h].kind == "host"]
        for pos, h in enumerate(n for n in members[seg.name] if topo.nodes[n].kind == "host"):
            node = topo.nodes[h]
            pairs.append((h, node.ns, seg.gateway, str(seg.gateway_ip)))
            target = far_hosts[pos % len(far_hosts)]
            pairs.append((h, node.ns, target, str(topo.address_of(target))))
    return pairs


def reach(pairs, group: int = 400, timeout: float = 3.0) -> tuple[int, list]:
    """Echo request for each pair (sources in groups: a bounded number of sockets open);
    re-sent to the silent ones at 1 s and 2 s.  Returns (answered, [(src, dst) missing])."""
    by_source: dict[str, list] = {}
    for src, ns, dst, ip in pairs:
        by_source.setdefault((src, ns), []).append((dst, ip))
    sources = list(by_source)
    answered, missing = 0, []
    payload = b"nslab scale " + os.urandom(8)
    for start in range(0, len(sources), group):
        chunk = sources[start:start + group]
        socks = [probe.icmp_socket(ns) for _, ns in chunk]
        try:
            poller = select.poll()
            fd_index = {}
            for i, s in enumerate(socks):
                poller.register(s, select.POLLIN)
                fd_index[s.fileno()] = i
            pending = {(i, j) for i, src in enumerate(chunk) for j in range(len(by_source[src]))}

            def send():
                for i, j in sorted(pending):
                    socks[i].sendto(echo_request((start + i) & 0xFFFF, j, payload), (by_source[chunk[i]][j][1], 0))

            send()
            t0, resent = time.monotonic(), 0
            while pending and time.monotonic() - t0 < timeout:
                if resent < 2 and time.monotonic() - t0 > 1.0 + resent:
                    resent += 1
                    send()
                for fd, _ in poller.poll(100):
                    i = fd_index[fd]
                    while True:
                        try:
                            data = socks[i].recv(2048)
                        except BlockingIOError:
                            break
                        r = parse_echo_reply(data)
                        if r and r[1] == (start + i) & 0xFFFF and r[3] == payload and r[2] < len(by_source[chunk[i]]) \
                                and by_source[chunk[i]][r[2]][1] == r[0]:
                            pending.discard((i, r[2]))
            answered += sum(len(by_source[src]) for src in chunk) - len(pending)
            missing += [(chunk[i][0], by_source[chunk[i]][j][0]) for i, j in sorted(pending)]
        finally:
            for s in socks:
                s.close()
    return answered, missing


def cluster_sample_pairs(topo) -> list[tuple[str, str, str, str]]:
    """(source, namespace, destination, address): each pod to its node's cni0 and to the pod
    at the same position in the rack half the cluster away."""
    racks: dict[str, list] = {}
    for node in topo.nodes.values():
        if node.kind == "pod":
            host = topo.nodes[node.ifaces[0].peer_node]
            racks.setdefault(next(i.segment for i in host.ifaces if i.segment), []).append((node, host))
    names = list(racks)
    pairs = []
    for k, rack in enumerate(names):
        far = racks[names[(k + len(names) // 2) % len(names)]]
        shift = len(far) // 2 if far is racks[rack] else 0      # one rack (host-gw): half of it away
        for pos, (pod, host) in enumerate(racks[rack]):
            bridge = next(b for b in host.bridges if b.ip is not None)
            pairs.append((pod.name, pod.ns, f"{host.name}:{bridge.name}", str(bridge.ip.ip)))
            target = far[(pos + shift) % len(far)][0]
            pairs.append((pod.name, pod.ns, target.name, str(target.addresses[0].ip)))
    return pairs


def all_pairs_cli(name: str) -> dict:
    """`nslab test --all-pairs` on a running lab, as a user runs it: wall, peak RSS, pairs."""
    with tempfile.NamedTemporaryFile("r") as rss:
        t0 = time.perf_counter()
        done = subprocess.run(["/usr/bin/time", "-o", rss.name, "-f", "%M", "nslab", "test", "-l", name,
                               "--all-pairs", "--json"], capture_output=True, text=True)
        wall = time.perf_counter() - t0
        peak = int(rss.read().split()[-1]) // 1024
    try:
        result = json.loads(done.stdout)["results"][0]
    except (ValueError, LookupError):
        raise RuntimeError(f"nslab test --all-pairs failed: {done.stderr.strip() or done.stdout.strip()}")
    return dict(ap_wall=wall, ap_rss=peak, ap_ok=done.returncode == 0, ap_observed=result["observed"],
                ap_details=result["details"])


def settle(limit: float = 120.0) -> None:
    """Wait until the kernel has freed the last lab (it tears namespaces down on a worker,
    after `down` returned: 10,000 take tens of seconds of CPU): Slab no longer shrinking,
    so one lab's teardown does not slow the next one's up."""
    end, last = time.monotonic() + limit, meminfo()["Slab"]
    while time.monotonic() < end:
        time.sleep(1.0)
        now = meminfo()["Slab"]
        if last - now < 8:          # MiB per second
            return
        last = now


def run_size(hosts: int, shape: str, workdir: str, backend: str | None = None) -> dict:
    name = f"scale{hosts}-{os.getpid()}"
    path = os.path.join(workdir, f"{name}.yaml")
    with open(path, "w") as f:
        f.write(generate.render(shape, name=name, file=path, backend=backend))
    topo = model.load(path)
    cluster = shape.startswith("cluster:")
    row = dict(hosts=hosts, shape=shape, namespaces=len(topo.nodes), neighbours=topo.neighbours)
    t0 = time.perf_counter()
    subprocess.run(["nslab", "validate", path], check=True, capture_output=True)
    row["validate"] = time.perf_counter() - t0
    settle()
    mem0, fulls0, lines0 = meminfo(), probe.neighbour_table_fulls() or 0, overflow_lines()
    up_done = False
    try:
        row["up"], row["up_rss"], _ = timed(["nslab", "up", "-q", path])
        up_done = True
        row["mem_up"] = meminfo()
        pairs = cluster_sample_pairs(topo) if cluster else sample_pairs(topo)
        t0 = time.perf_counter()
        row["answered"], row["missing"] = reach(pairs)
        row["pairs"], row["reach_s"] = len(pairs), time.perf_counter() - t0
        if cluster:
            row.update(all_pairs_cli(name))
    finally:
        if up_done or os.path.exists(f"/run/nslab/{name}"):
            row["down"], row["down_rss"], _ = timed(["nslab", "down", name])
    row["mem0"], row["mem_down"] = mem0, meminfo()
    row["fulls"] = (probe.neighbour_table_fulls() or 0) - fulls0
    row["overflow_lines"] = overflow_lines() - lines0
    return row


def figures(row: dict, per_namespace: bool = True) -> str:
    """One lab's figures on one line: validate, up, down, memory, sample, overflows."""
    m0, mu, md = row["mem0"], row["mem_up"], row["mem_down"]
    ns = row["namespaces"]
    up_ns = f"{row['up'] / ns * 1000:.2f} ms/ns, " if per_namespace else ""
    down_ns = f"{row['down'] / ns * 1000:.3f} ms/ns, " if per_namespace else ""
    return (f"validate {row['validate']:.2f} s  up {row['up']:.2f} s ({up_ns}RSS {row['up_rss']} MiB)  "
            f"down {row['down']:.2f} s ({down_ns}RSS {row['down_rss']} MiB)  "
            f"slab {m0['Slab']}->{mu['Slab']}->{md['Slab']} MiB  "
            f"sunreclaim {m0['SUnreclaim']}->{mu['SUnreclaim']}->{md['SUnreclaim']} MiB  "
            f"sample {row['answered']}/{row['pairs']} in {row['reach_s']:.1f} s  neighbours {row['neighbours']}  "
            f"table_fulls +{row['fulls']}  dmesg overflow lines +{row['overflow_lines']}")


def run_cluster(shape: str, backend: str | None, workdir: str) -> None:
    racks, nodes, pods = (int(x) for x in shape.split(":", 1)[1].split(","))
    row = run_size(racks * nodes * pods, shape, workdir, backend)
    print(f"{row['hosts']:>6} pods  {row['shape']:>16} ({backend or 'vxlan'}) {row['namespaces']:>6} ns  "
          f"{figures(row, per_namespace=False)}", flush=True)
    if row["missing"]:
        print(f"       sample missing (first 5): {row['missing'][:5]}", flush=True)
    if "ap_wall" in row:
        print(f"       nslab test --all-pairs: {row['ap_wall']:.1f} s wall, RSS {row['ap_rss']} MiB, "
              f"{row['ap_details'][0]}; target <= {ALL_PAIRS_TARGET:.0f} s: "
              f"{'met' if row['ap_ok'] and row['ap_wall'] <= ALL_PAIRS_TARGET else 'MISSED'}", flush=True)
        for line in row["ap_details"][1:4]:
            print(f"         {line}", flush=True)
    print(f"       load average now {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,2500,5000,10000", help="CLOS sizes (hosts); 'none' for none")
    ap.add_argument("--cluster", default="cluster:4,25,10", help="a cluster shape to run, with all-pairs on its "
                                                                 "pods; 'none' for none")
    ap.add_argument("--cluster-backend", default=None, help="its flannel backend (default vxlan)")
    args = ap.parse_args()
    limits.raise_nofile_soft_limit()
    print(f"machine: {os.cpu_count()} CPUs, {os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') >> 30} GiB, "
          f"kernel {os.uname().release}, gc_thresh3 {probe.gc_thresh3()}, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as workdir:
        for size in (int(s) for s in args.sizes.split(",") if s != "none"):
            row = run_size(size, SHAPES[size], workdir)
            target = TARGETS.get(size)
            verdict = "" if not target else ("meets target" if row["up"] <= target[0] and row["down"] <= target[1]
                                             else f"target {target[0]:.0f}/{target[1]:.1f} s missed")
            print(f"{size:>6} hosts {row['shape']:>16} {row['namespaces']:>6} ns  {figures(row)}  {verdict}",
                  flush=True)
            if row["missing"]:
                print(f"       missing (first 5): {row['missing'][:5]}", flush=True)
            print(f"       load average now {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
        if args.cluster != "none":
            run_cluster(args.cluster, args.cluster_backend, workdir)


if __name__ == "__main__":
    sys.exit(main())
