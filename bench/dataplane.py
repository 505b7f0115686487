#!/usr/bin/env python3
"""iperf3 between pods on two racks for each flannel backend, side by side.

spine-leaf.yaml: `client` on worker1 (rack1) -> `web-worker3` on worker3 (rack2), through
leaf01, the spine and leaf02.  host-gw cannot cross racks (flannel routes pod subnets via
node IPs on one L2 segment), so its row measures client -> web-worker2 in the same rack.
ipip is the kernel's where the kernel has it, else nslab's userspace encapsulator; udp is
nslab's Python proxy (flannel's is C).  For udp the benchmark also captures on worker1's
underlay during the run and reports the largest datagram: one packet per datagram means
no datagram above the flannel0 MTU (9122 on spine-leaf).  Target (issue 4): udp >= 1 Gbit/s.

    sudo python3 bench/dataplane.py [--seconds 5] [--streams 1] [--backends vxlan,host-gw,ipip,udp]

--ecmp N: note 001's ECMP claim, measured on spine-leaf-ecmp.yaml (two spines, L4 hashing
in the leaves): N parallel TCP flows client -> web-worker3, and the packets each spine
forwarded from leaf01 during the run, under vxlan, ipip and udp.

    sudo python3 bench/dataplane.py --ecmp 50

--web ROUNDS: `nslab web`'s cost to the data plane (issue 22: at most 5 %), in one lab and
one run: vxlan client -> web-worker3, alternately with no page open and with the page open
in headless Chromium (its counters read every second), ROUNDS times each; also the CPU
the server took meanwhile.

    sudo python3 bench/dataplane.py --web 4 --seconds 5
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOPOLOGY = os.path.join(ROOT, "topologies", "spine-leaf.yaml")
SERVERS = {"host-gw": ("web-worker2", "10.244.2.2")}   # same rack: host-gw's limit
DEFAULT_SERVER = ("web-worker3", "10.244.3.2")


def nslab(*args: str) -> str:
    return subprocess.run(["nslab", *args], check=True, capture_output=True, text=True).stdout


def netns(lab: str, node: str) -> list[str]:
    return ["ip", "netns", "exec", f"{lab}.{node}"]


def topology_for(backend: str) -> str:
    """spine-leaf as it is, or (host-gw) with worker3 moved into rack1."""
    if backend != "host-gw":
        return TOPOLOGY
    text = open(TOPOLOGY).read().replace("worker3: {segment: rack2, ip: 30.0.0.23}",
                                          "worker3: {segment: rack1, ip: 10.0.0.23}")
    f = tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="bench-hostgw-", delete=False)
    f.write(text)
    f.close()
    return f.name


def run(backend: str, seconds: int, streams: int) -> dict:
    lab = f"ip4-bench-{os.getpid()}"
    server, server_ip = SERVERS.get(backend, DEFAULT_SERVER)
    topo = topology_for(backend)
    out = {"backend": backend, "path": f"client -> {server}"}
    try:
        up = nslab("up", topo, "--name", lab, "--backend", backend)
        out["dataplane"] = "userspace" if "userspace" in up or backend == "udp" else "kernel"
        srv = subprocess.Popen(netns(lab, server) + ["iperf3", "-s", "-1"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        time.sleep(0.3)
        cap = None
        if backend == "udp":
            pcap = tempfile.mktemp(suffix=".pcap", prefix="bench-udp-")
            cap = subprocess.Popen(netns(lab, "worker1") + ["tcpdump", "-i", "enp0s3", "-n", "-s", "64", "-c",
                                                           "20000", "-w", pcap, "udp", "port", "8285"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
        res = subprocess.run(netns(lab, "client") + ["iperf3", "-c", server_ip, "-t", str(seconds), "-P",
                                                     str(streams), "-J"], capture_output=True, text=True)
        srv.wait(timeout=10)
        data = json.loads(res.stdout)
        if "error" in data:
            raise RuntimeError(data["error"])
        out["gbps"] = data["end"]["sum_received"]["bits_per_second"] / 1e9
        out["retransmits"] = data["end"]["sum_sent"].get("retransmits")
        if cap:
            cap.terminate()
            cap.wait()
            sizes = subprocess.run(["tcpdump", "-r", pcap, "-n", "-q"], capture_output=True, text=True).stdout
            lengths = [int(x) for x in re.findall(r"UDP, length (\d+)", sizes)]
            os.unlink(pcap)
            out["datagrams"] = len(lengths)
            out["max_datagram"] = max(lengths, default=0)
    finally:
        subprocess.run(["nslab", "down", lab], capture_output=True)
        if topo != TOPOLOGY:
            os.unlink(topo)
    return out


def spine_packets(lab: str) -> dict[str, int]:
    """Packets each spine received from leaf01 (its eth0)."""
    out = {}
    for spine in ("spine1", "spine2"):
        link = json.loads(subprocess.run(netns(lab, spine) + ["ip", "-j", "-s", "link", "show", "dev", "eth0"],
                                         check=True, capture_output=True, text=True).stdout)[0]
        out[spine] = link["stats64"]["rx"]["packets"]
    return out


def ecmp(flows: int, seconds: int) -> None:
    topo = os.path.join(ROOT, "topologies", "spine-leaf-ecmp.yaml")
    print(f"{flows} TCP flows client (rack1) -> web-worker3 (rack2), {seconds} s; packets leaf01 sent to each spine:")
    for backend in ("vxlan", "ipip", "udp"):   # udp: fixed ports 8285 -> 8285, one flow to the hash
        lab = f"ip4-ecmp-{os.getpid()}"
        try:
            nslab("up", topo, "--name", lab, "--backend", backend)
            srv = subprocess.Popen(netns(lab, "web-worker3") + ["iperf3", "-s", "-1"], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
            time.sleep(0.3)
            before = spine_packets(lab)
            subprocess.run(netns(lab, "client") + ["iperf3", "-c", "10.244.3.2", "-P", str(flows), "-t",
                                                   str(seconds)], check=True, capture_output=True)
            srv.wait(timeout=10)
            after = spine_packets(lab)
        finally:
            subprocess.run(["nslab", "down", lab], capture_output=True)
        d = {k: after[k] - before[k] for k in after}
        total = sum(d.values()) or 1
        print(f"  {backend:6} spine1 {d['spine1']:>9} ({100 * d['spine1'] / total:3.0f}%)   "
              f"spine2 {d['spine2']:>9} ({100 * d['spine2'] / total:3.0f}%)")


def _cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process, from /proc/PID/stat."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _tree_cpu(root: int) -> float:
    """CPU seconds of a process and all its descendants (the browser's processes)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        try:
            total += _cpu(pid)
        except (OSError, IndexError, ValueError):
            pass
        todo += children.get(pid, [])
    return total


def web_overhead(rounds: int, seconds: int, port: int = 18097, prefix: str = "wb") -> None:
    sys.path.insert(0, ROOT)
    from nslab.web.browser import chromium
    lab = f"{prefix}-webbench-{os.getpid()}"
    server, server_ip = DEFAULT_SERVER
    web = browser = None
    try:
        nslab("up", TOPOLOGY, "--name", lab)
        web = subprocess.Popen([sys.executable, "-m", "nslab.cli", "web", "-l", lab, "--port", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
        while "nslab web: http" not in (line := web.stdout.readline()):
            if not line:
                raise RuntimeError("nslab web did not start")
        browser = chromium()
        rows = []
        for r in range(rounds):
            for page in (False, True):
                if page:
                    browser.get(f"http://127.0.0.1:{port}/#{lab}")
                    while browser.execute_script("return document.body.dataset.lab") != lab:
                        time.sleep(0.1)
                    time.sleep(2)               # counters streaming
                else:
                    browser.get("about:blank")
                    time.sleep(1)
                srv = subprocess.Popen(netns(lab, server) + ["iperf3", "-s", "-1"], stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
                time.sleep(0.3)
                cpu0, t0 = _cpu(web.pid), time.monotonic()
                bcpu0 = _tree_cpu(browser.service.process.pid)
                res = subprocess.run(netns(lab, "client") + ["iperf3", "-c", server_ip, "-t", str(seconds), "-J"],
                                     capture_output=True, text=True)
                cpu = (_cpu(web.pid) - cpu0) / (time.monotonic() - t0)
                bcpu = (_tree_cpu(browser.service.process.pid) - bcpu0) / (time.monotonic() - t0)
                srv.wait(timeout=10)
                gbps = json.loads(res.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9
                rows.append((page, gbps, cpu))
                print(f"round {r + 1} {'page open ' if page else 'no page   '} {gbps:6.2f} Gbit/s   "
                      f"nslab web {100 * cpu:4.1f} % of a core, Chromium {100 * bcpu:4.1f} %", flush=True)
        without = [g for p, g, _ in rows if not p]
        with_ = [g for p, g, _ in rows if p]
        a, b = sum(without) / len(without), sum(with_) / len(with_)
        cpu = sum(c for p, _, c in rows if p) / len(with_)
        print(f"mean: no page {a:.2f} Gbit/s, page open {b:.2f} Gbit/s: {100 * (a - b) / a:+.1f} % slower "
              f"with the page; nslab web {100 * cpu:.1f} % of a core while the page was open; "
              f"load average {os.getloadavg()[0]:.1f}")
    finally:
        if browser is not None:
            browser.quit()
        if web is not None:
            web.send_signal(2)
            web.wait(timeout=30)
        subprocess.run(["nslab", "down", lab], capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--streams", type=int, default=1, help="parallel TCP streams (iperf3 -P)")
    ap.add_argument("--backends", default="vxlan,host-gw,ipip,udp")
    ap.add_argument("--ecmp", type=int, metavar="FLOWS", help="the ECMP demonstration instead (spine-leaf-ecmp)")
    ap.add_argument("--web", type=int, metavar="ROUNDS", help="nslab web's cost: iperf3 with and without the page")
    ap.add_argument("--port", type=int, default=18097, help="--web: the page's port")
    ap.add_argument("--lab-prefix", default="wb", help="--web: the lab's name starts with it")
    ap.add_argument("--topology", metavar="FILE", help="a variant of spine-leaf.yaml (e.g. with link conditions)")
    args = ap.parse_args()
    if args.topology:
        global TOPOLOGY
        TOPOLOGY = os.path.abspath(args.topology)
    if os.geteuid() != 0:
        sys.exit("bench/dataplane.py: run as root (it builds labs)")
    if args.ecmp:
        return ecmp(args.ecmp, min(args.seconds, 3))
    if args.web:
        return web_overhead(args.web, args.seconds, args.port, args.lab_prefix)
    rows = [run(b, args.seconds, args.streams) for b in args.backends.split(",")]
    base = next((r["gbps"] for r in rows if r["backend"] == "vxlan"), None)
    print(f"{'backend':8} {'dataplane':10} {'path':24} {'Gbit/s':>7} {'vs vxlan':>9} {'retrans':>8}  notes")
    for r in rows:
        ratio = f"{r['gbps'] / base:8.2f}x" if base else "        -"
        note = ""
        if "max_datagram" in r:
            note = (f"{r['datagrams']} datagrams captured, largest {r['max_datagram']} bytes "
                    f"({'one packet per datagram' if r['max_datagram'] <= 9122 else 'BATCHED'}); "
                    f"target 1 Gbit/s {'met' if r['gbps'] >= 1 else 'MISSED'}")
        print(f"{r['backend']:8} {r['dataplane']:10} {r['path']:24} {r['gbps']:7.2f} {ratio} "
              f"{r.get('retransmits') or 0:8}  {note}")


if __name__ == "__main__":
    main()
