"""Validation at size (issue 12): `nslab validate FILE` wall time and peak RSS on the
10,000-node CLOS and on stress shapes of at most 1 MB, which must each validate or be
refused in <= 5 s (the CLOS: <= 2 s, <= 300 MB).

    python3 bench/validate.py [--keep DIR] [--only NAME ...]

Writes every file itself into a temporary directory, runs `nslab validate` on each under
/usr/bin/time -f %M, and prints a table: file, bytes, outcome, wall s, max RSS.  No root,
nothing built.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

LIMIT = 1_000_000       # bytes: "any file of <= 1 MB"


def fill(head: str, unit, tail: str = "", limit: int = LIMIT) -> str:
    """head + unit(0) + unit(1) + ... + tail, as many units as fit in `limit` bytes."""
    parts, size, i = [head], len(head) + len(tail), 0
    while True:
        u = unit(i)
        if not u or size + len(u) > limit:
            break
        parts.append(u)
        size += len(u)
        i += 1
    return "".join(parts) + tail


def largest(text, start: int, step: int) -> str:
    """text(n) for the largest n = start + k * step that stays within LIMIT bytes."""
    n = start
    while len(text(n + step)) <= LIMIT:
        n += step
    return text(n)


def clos_10k() -> str:
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    from nslab import generate as gen
    return gen.render(gen.parse_shape("clos:8,100,100"), command="nslab generate clos:8,100,100")


def router_mesh() -> str:
    """2,000 routers, links between pairs of them: refused (route count)."""
    n = 2000
    head = "pools: {links: 10.0.0.0/8}\nrouters: [" + ", ".join(f"r{i}" for i in range(n)) + "]\nlinks:\n"
    return fill(head, lambda i: f"  - [r{i % n}, r{(i + 1 + i // n % (n - 1)) % n}]\n")


def few_routers() -> str:
    """9 routers, links between every two of them over and over: refused (route count)."""
    pairs = [(a, b) for a in range(9) for b in range(a + 1, 9)]
    head = "pools: {links: 10.0.0.0/8}\nrouters: [" + ", ".join(f"r{i}" for i in range(9)) + "]\nlinks:\n"
    return fill(head, lambda i: "  - [r%d, r%d]\n" % pairs[i % len(pairs)])


def hosts_linked() -> str:
    """Hosts each linked to one of 4 routers (hosts listed first, links after): validates."""
    return largest(hosts_linked_text, 1, 1000)


def hosts_linked_text(n: int) -> str:
    return ("pools: {links: 172.16.0.0/12}\nrouters: [r0, r1, r2, r3]\nhosts: [" + ", ".join(f"h{i}" for i in range(n)) + "]\nlinks:\n"
            "  - [r0, r1]\n  - [r1, r2]\n  - [r2, r3]\n" + "".join(f"  - [h{i}, r{i % 4}]\n" for i in range(n)))


def one_segment() -> str:
    """One segment, every host a member (a /8): validates."""
    return largest(one_segment_text, 1, 1000)


def one_segment_text(n: int) -> str:
    names = ", ".join(f"h{i}" for i in range(n))
    return (f"routers: [gw]\nhosts: [{names}]\nsegments:\n  big:\n    subnet: 10.0.0.0/8\n    gateway: gw\n"
            f"    members: [{names}]\n")


def many_segments() -> str:
    """A segment per router with two hosts each, the routers in a binary tree: validates or
    is refused by the route count."""
    return largest(many_segments_text, 1, 100)


def many_segments_text(n: int) -> str:
    return ("routers: [" + ", ".join(f"r{i}" for i in range(n)) + "]\n"
            "hosts: [" + ", ".join(f"a{i}, b{i}" for i in range(n)) + "]\nsegments:\n"
            + "".join(f"  s{i}: {{subnet: 10.{i // 256}.{i % 256}.0/24, gateway: r{i}, members: [a{i}, b{i}]}}\n"
                      for i in range(n))
            + "links:\n" + "".join(f"  - [r{i}, r{(i - 1) // 2}]\n" for i in range(1, n)))


def segment_members_with_ips() -> str:
    """One segment, members with their own addresses and MACs: validates."""
    head = "routers: [gw]\nsegments:\n  lan:\n    subnet: 10.0.0.0/8\n    gateway: gw\n    members:\n"
    hosts = []

    def unit(i):
        hosts.append(f"h{i}")
        return (f"      - h{i}: {{ip: 10.{(i + 1) >> 16 & 255}.{(i + 1) >> 8 & 255}.{(i + 1) & 255}, "
                f"mac: '02:00:{i >> 24 & 255:02x}:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}'}}\n")
    body = fill(head, unit, limit=LIMIT - 200_000)
    return body.replace("routers: [gw]\n", "routers: [gw]\nhosts: [" + ", ".join(hosts) + "]\n", 1)


def chain() -> str:
    """A chain of routers joined by segments: refused (route count) or validates."""
    n = 3000
    head = "routers: [" + ", ".join(f"r{i}" for i in range(n)) + "]\nsegments:\n"
    return fill(head, lambda i: f"  s{i}: {{subnet: 10.{i // 256}.{i % 256}.0/24, members: [r{i}, r{i + 1}]}}\n"
                if i < n - 1 else "")


def unknown_member() -> str:
    """3,000 routers and a member that is none of them: refused, one short sentence."""
    return chain().replace("members: [r0, r1]", "members: [x0a, r1]", 1)


def cluster_big() -> str:
    """A cluster: many nodes on one rack, /16 leases from a /8, pods on every node: validates."""
    def text(n, pods):
        nodes = "".join(f"    n{i}: {{segment: rack, ip: 192.168.{(i + 1) >> 8}.{(i + 1) & 255}}}\n"
                        for i in range(n))
        pod_lines = "".join(f"    p{i}: {{node: n{i % n}}}\n" for i in range(pods))
        return ("name: cbig\nsegments:\n  rack: {subnet: 192.168.0.0/16}\ncluster:\n  network: 10.0.0.0/8\n"
                "  subnetLen: 16\n  backend: {type: vxlan}\n  nodes:\n" + nodes + "  pods:\n" + pod_lines)
    n, pods = 250, 1000
    while len(text(n, pods + 1000)) <= LIMIT:
        pods += 1000
    return text(n, pods)


def cluster_services_tests() -> str:
    """A cluster with daemonsets, many services and many tests: validates."""
    head = ("name: csvc\nrouters: [gw]\nsegments:\n  rack: {subnet: 192.168.0.0/16, gateway: gw}\ncluster:\n"
            "  network: 10.244.0.0/16\n  subnetLen: 24\n  backend: {type: vxlan}\n  nodes:\n"
            + "".join(f"    n{i}: {{segment: rack, ip: 192.168.0.{i + 1}}}\n" for i in range(50))
            + "  pods:\n" + "".join(f"    web{i}: {{daemonset: true, serve: http}}\n" for i in range(4))
            + "  services:\n"
            + "".join(f"    svc{i}: {{selector: web{i % 4}, port: {1000 + i}, targetPort: 80}}\n" for i in range(2000))
            + "tests:\n")
    return fill(head, lambda i: f"  - {{name: t{i}, http: [web{i % 4}@n{i % 50}, svc/svc{i % 2000}]}}\n")


def sysctls_long_names() -> str:
    """Hosts with 63-character names and three sysctls each (one per interface), on one
    segment: validates."""
    def name(i):
        return f"h{i:0>62}"

    def text(n):
        hosts = "".join(f"  {name(i)}:\n    sysctls:\n      net.ipv4.conf.all.arp_ignore: 1\n"
                        f"      net.ipv4.neigh.default.gc_stale_time: {60 + i % 100}\n"
                        f"      net.ipv4.conf.eth0.rp_filter: {i % 3}\n" for i in range(n))
        return ("routers: [gw]\nhosts:\n" + hosts + "segments:\n  lan:\n    subnet: 10.0.0.0/16\n    gateway: gw\n"
                "    members: [" + ", ".join(name(i) for i in range(n)) + "]\n")
    return largest(text, 100, 100)


def aliases() -> str:
    """Anchors and aliases: one member-settings mapping and one conditions mapping written once,
    every segment member and link referring to them: validates."""
    def text(n):
        return ("pools: {links: 172.16.0.0/12}\nrouters: [r0]\nhosts: [" + ", ".join(f"h{i}" for i in range(n))
                + "]\nsegments:\n  lan:\n    subnet: 10.0.0.0/16\n    gateway: r0\n    members:\n"
                + "".join(f"      - h{i}: " + ("&m {mtu: 1400}" if i == 0 else "*m") + "\n" for i in range(n))
                + "links:\n" + "".join("  - {ends: [h%d, r0], conditions: %s}\n"
                                       % (i, "&c {delay: 1ms}" if i == 0 else "*c") for i in range(n)))
    return largest(text, 100, 100)


def explicit_links() -> str:
    """Router pairs with every end's address written out (links with explicit /30s): validates
    or is refused by the route count."""
    head = "routers: [" + ", ".join(f"r{i}" for i in range(10)) + "]\nhosts: [" + \
        ", ".join(f"h{i}" for i in range(12000)) + "]\nlinks:\n"

    def unit(i):
        a = (10 << 24) + 4 * i
        ip = lambda x: f"{x >> 24}.{x >> 16 & 255}.{x >> 8 & 255}.{x & 255}"
        return f"  - {{ends: [{{node: h{i}, ip: {ip(a + 1)}/30}}, {{node: r{i % 10}, ip: {ip(a + 2)}/30}}]}}\n" \
            if i < 12000 else ""
    return fill(head, unit)


def one_gateway() -> str:
    """One router the gateway of every segment, a host on each: validates (each attachment
    scanned the router's interfaces)."""
    def text(n):
        return ("routers: [r0]\nhosts: [" + ", ".join(f"h{i}" for i in range(n)) + "]\nsegments:\n"
                + "".join(f"  s{i}: {{subnet: 10.{i // 256}.{i % 256}.0/24, gateway: r0, members: [h{i}]}}\n"
                          for i in range(n)))
    return largest(text, 100, 100)


def static_routes() -> str:
    """A router with thousands of links and as many static routes: validates (each route
    scanned the interfaces and the routes before it)."""
    def text(n):
        routes = ", ".join("{to: 192.%d.%d.0/24, via: 172.31.%d.%d}" % (168 + i // 256, i % 256, (4 * i + 2) // 256,
                                                                        (4 * i + 2) % 256) for i in range(n))
        return ("hosts: [" + ", ".join(f"h{i}" for i in range(n)) + "]\nrouters:\n  r:\n    routes: [" + routes
                + "]\nlinks:\n" + "".join(f"  - [h{i}, r]\n" for i in range(n)))
    return largest(text, 100, 100)


SHAPES = {
    "clos-8-100-100": clos_10k,
    "router-mesh": router_mesh,
    "few-routers": few_routers,
    "hosts-linked": hosts_linked,
    "one-segment": one_segment,
    "many-segments": many_segments,
    "members-with-ips": segment_members_with_ips,
    "chain-3000": chain,
    "unknown-member": unknown_member,
    "cluster-leases": cluster_big,
    "services-tests": cluster_services_tests,
    "sysctls-long-names": sysctls_long_names,
    "aliases": aliases,
    "explicit-links": explicit_links,
    "one-gateway": one_gateway,
    "static-routes": static_routes,
}


def run(path: str) -> tuple[str, float, int, str]:
    t0 = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-f", "%M", "nslab", "validate", path], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    lines = p.stderr.strip().splitlines()
    rss = int(lines[-1]) if lines and lines[-1].isdigit() else 0
    message = (p.stdout.strip() or "\n".join(lines[:-1])).splitlines()
    first = message[0] if message else ""
    return ("ok" if p.returncode == 0 else f"refused ({p.returncode})"), wall, rss, first


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", help="write the files here and keep them")
    ap.add_argument("--only", nargs="*", help="only these shapes")
    ap.add_argument("-v", "--verbose", action="store_true", help="print each outcome's message")
    args = ap.parse_args()
    if shutil.which("nslab") is None or not os.path.exists("/usr/bin/time"):
        print("needs nslab on PATH and /usr/bin/time", file=sys.stderr)
        return 2
    workdir = args.keep or tempfile.mkdtemp(prefix="nslab-validate-")
    os.makedirs(workdir, exist_ok=True)
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}, {os.cpu_count()} cores")
    print(f"| file | bytes | outcome | wall s | max RSS MB |\n|---|---:|---|---:|---:|")
    slow = 0
    try:
        for name, make in SHAPES.items():
            if args.only and name not in args.only:
                continue
            path = os.path.join(workdir, f"{name}.yaml")
            with open(path, "w") as f:
                f.write(make())
            size = os.path.getsize(path)
            outcome, wall, rss, message = run(path)
            target = 2.0 if name == "clos-8-100-100" else 5.0
            mark = "" if wall <= target and (size <= LIMIT or name == "clos-8-100-100") else " (over)"
            slow += bool(mark)
            print(f"| {name} | {size:,} | {outcome} | {wall:.2f}{mark} | {rss / 1024:.0f} |", flush=True)
            if args.verbose:
                print(f"    {message[:300]}")
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return 1 if slow else 0


if __name__ == "__main__":
    sys.exit(main())
