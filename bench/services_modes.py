#!/usr/bin/env python3
"""kube-proxy's iptables, nftables and ipvs modes at scale (issue 23.7): S services x E endpoints
on an N-node cluster (default 1,000 x 10 on 20 nodes, host-gw, every node on one segment).

Per mode it measures, on a real lab:
- up: wall time of `nslab up -q --proxy-mode M` (the CLI as a new process, this checkout);
- rules: what one node's kernel holds afterwards: iptables `-A` rules (iptables-save), or in
  nftables the rules of table `ip kube-proxy` plus the elements of its sets and maps;
- one endpoint change: one service loses one endpoint, and the node's kernel is given what
  each kube-proxy mode sends for it (median of --runs, in the lab's own namespace, the tool's
  process start included, as kube-proxy execs it too):
  iptables (v1.27, MinimizeIPTablesRestore): one `iptables-restore --noflush` of the nat
  table's KUBE-SERVICES chain rewritten whole (a partial sync always rewrites it) plus the
  changed KUBE-SVC chain and the removed KUBE-SEP chain deleted;
  nftables (a partial sync, nftElementStorage): one `nft -f` flushing the service chain,
  writing its rules again with N-1 endpoints, and flushing the removed endpoint chain (its
  deletion is deferred, as kube-proxy's staleChains);
  ipvs (syncProxyRules/syncEndpoint): the real server deleted from the service's virtual
  server (`ipvsadm -d`: kube-proxy does it over netlink, without a
  process; an endpoint without connections is deleted at once, not weighted down first),
  then the iptables-restore of the few rules ipvs mode rewrites on every sync
  (writeIptablesRules).  The change is undone after each run.
  ipvs needs the kernel's ip_vs: run it in the VM stage (tests/vm/run --exec ...).

    sudo python3 bench/services_modes.py [--services 1000] [--endpoints 10] [--nodes 20] [--runs 5]
        [--modes iptables,nftables,ipvs]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from nslab.apply import iptables, ipvs, nftables  # noqa: E402
from nslab.compile import kubeproxy, kubeproxy_ipvs, kubeproxy_nft  # noqa: E402


def topology(services: int, endpoints: int, nodes: int) -> str:
    lines = ["name: svcbench", "segments:", "  rack: {subnet: 10.0.0.0/16}", "cluster:", "  network: 10.244.0.0/16",
             "  backend: {type: host-gw}", "  serviceCIDR: 10.96.0.0/12", "  nodes:"]
    lines += [f"    n{i}: {{segment: rack, ip: 10.0.{i // 250}.{i % 250 + 1}}}" for i in range(nodes)]
    lines += ["  pods:", f"    web: {{daemonset: [{', '.join(f'n{i}' for i in range(endpoints))}]}}", "  services:"]
    lines += [f"    s{i}: {{selector: web, port: 80, targetPort: 80}}" for i in range(services)]
    return "\n".join(lines) + "\n"


def nslab(*args: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "nslab", *args], check=True, cwd=ROOT, stdout=subprocess.DEVNULL,
                   env={**os.environ, "PYTHONPATH": ROOT})
    return time.perf_counter() - t0


def rule_count(mode: str, ns: str) -> int:
    if mode == "ipvs":          # IPVS virtual and real servers + ipset entries + iptables -A rules
        servers = ipvs.servers(ns, timeout=600)
        ipsets = subprocess.run(["ip", "netns", "exec", ns, "ipset", "save"], capture_output=True, text=True,
                                check=True).stdout
        return (len(servers) + sum(len(v["reals"]) for v in servers.values())
                + sum(1 for line in ipsets.splitlines() if line.startswith("add "))
                + sum(1 for line in iptables.save(ns, counters=False).splitlines() if line.startswith("-A ")))
    if mode == "iptables":
        return sum(1 for line in iptables.save(ns, counters=False, timeout=600).splitlines() if line.startswith("-A "))
    table = nftables.table(ns, "kube-proxy", timeout=600) or []
    elems = sum(len(o[k].get("elem", [])) for o in table for k in ("set", "map") if k in o)
    return sum(1 for o in table if "rule" in o) + elems


def change_texts(mode: str, svc: kubeproxy.Service, cluster_cidr: str, all_services) -> tuple[str, str]:
    """(what kube-proxy sends when svc loses its last endpoint, what puts it back)."""
    fewer = kubeproxy.Service(**{**svc.__dict__, "endpoints": svc.endpoints[:-1]})
    gone = kubeproxy.endpoint_string(svc, svc.endpoints[-1])
    if mode == "ipvs":
        node = kubeproxy.Node(name="n0", ip="10.0.0.1", pod_cidr="10.244.0.0/24", cluster_cidr=cluster_cidr)
        rules = kubeproxy_ipvs.iptables_text(node, kubeproxy_ipvs.ipset_entries(node, all_services))
        # the jump rules are there already (EnsureRule finds them): the restore alone
        rules = "\n".join(line for line in rules.splitlines() if not line.startswith("-I ")) + "\n"
        vs = f"-t {svc.cluster_ip}:{svc.port}"
        return f"-d {vs} -r {gone}\n\0{rules}", f"-a {vs} -r {gone} -m -w 1\n\0{rules}"
    if mode == "iptables":
        node = kubeproxy.Node(name="n", ip="10.0.0.1", pod_cidr="10.244.0.0/24", cluster_cidr=cluster_cidr)
        sep = kubeproxy.sep_chain(svc, gone)
        # KUBE-SERVICES is rewritten whole by every partial sync
        services = [line for line in kubeproxy.rules(node, all_services).split("*nat\n", 1)[1].splitlines()
                    if line.startswith("-A KUBE-SERVICES ")]

        def payload(s, declare: list[str], rules: list[str]) -> str:
            chain = kubeproxy.svc_chain(s)
            own = [line for line in kubeproxy.rules(node, [s]).splitlines() if line.startswith(f"-A {chain} ")]
            return "\n".join(["*nat", ":KUBE-SERVICES - [0:0]", f":{chain} - [0:0]", *declare, *services, *own,
                              *rules, "COMMIT"]) + "\n"
        sep_rules = [line for line in kubeproxy.rules(node, [svc]).splitlines() if line.startswith(f"-A {sep} ")]
        return payload(fewer, [f":{sep} - [0:0]"], [f"-X {sep}"]), payload(svc, [f":{sep} - [0:0]"], sep_rules)

    def sync(s, extra: list[str]) -> str:
        """The service's part of a partial sync: its chains flushed and written again (the map
        elements, unchanged, are skipped by nftElementStorage)."""
        tx = kubeproxy_nft._Tx()
        kubeproxy_nft._service(tx, s, "n0", cluster_cidr)
        return "\n".join([line for line in tx.lines if not line.startswith("add element")] + extra) + "\n"
    stale = f"flush chain ip kube-proxy {kubeproxy_nft.endpoint_chain(svc, gone)}"
    return sync(fewer, [stale]), sync(svc, [])


def apply(mode: str, ns: str, text: str) -> float:
    t0 = time.perf_counter()
    if mode == "ipvs":          # the real server, then the rules every sync restores
        servers, rules = text.split("\0")
        proc = iptables.run(ns, ("ipvsadm", *servers.split()), timeout=60)
        if proc.returncode != 0:
            raise SystemExit(f"ipvsadm {servers.strip()} in {ns}: {proc.stderr.strip()}")
        iptables.apply(ns, rules)
    else:
        (iptables.apply if mode == "iptables" else nftables.apply)(ns, text)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--endpoints", type=int, default=10)
    ap.add_argument("--nodes", type=int, default=20)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--modes", default="iptables,nftables")
    ap.add_argument("--json")
    args = ap.parse_args()
    from nslab import model
    from nslab.compile.services import services_of
    text = topology(args.services, args.endpoints, args.nodes)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(text)
    results = {}
    try:
        topo = model.load(f.name)
        svcs = sorted(services_of(topo.cluster), key=lambda s: s.port_name_string)
        target = svcs[len(svcs) // 2]
        print(f"{args.services} services x {args.endpoints} endpoints, {args.nodes} nodes (host-gw), "
              f"load {os.getloadavg()[0]:.1f}")
        print(f"{'mode':10} {'up s':>8} {'rules/node':>11} {'change ms (median)':>19} {'min':>7} {'max':>7}")
        for mode in args.modes.split(","):
            name = f"svcb{os.getpid() % 10000}{mode[:3]}"
            try:
                up = nslab("up", "-q", "--name", name, "--proxy-mode", mode, f.name)
                ns = f"{name}.n0"
                rules = rule_count(mode, ns)
                forward, back = change_texts(mode, target, str(topo.cluster.network), svcs)
                if mode == "ipvs":      # the virtual server the change edits, as the node has it
                    vs = ipvs.servers(ns, timeout=600).get(("TCP", target.cluster_ip, target.port))
                    print(f"  {target.port_name_string}: {target.cluster_ip}:{target.port}, "
                          f"{len(vs['reals']) if vs else 'no'} real servers; {forward.split(chr(0))[0].strip()}")
                times = []
                for _ in range(args.runs):
                    times.append(apply(mode, ns, forward) * 1000)
                    apply(mode, ns, back)
                results[mode] = dict(up_s=round(up, 2), rules_per_node=rules,
                                     change_ms=[round(t, 1) for t in times])
                print(f"{mode:10} {up:8.2f} {rules:11d} {statistics.median(times):19.1f} {min(times):7.1f} "
                      f"{max(times):7.1f}")
            finally:
                subprocess.run([sys.executable, "-m", "nslab", "down", name], cwd=ROOT, env={**os.environ,
                               "PYTHONPATH": ROOT}, stdout=subprocess.DEVNULL)
                time.sleep(2)
    finally:
        os.unlink(f.name)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=1)


if __name__ == "__main__":
    main()
