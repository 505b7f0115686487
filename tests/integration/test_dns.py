"""Cluster DNS (issue 23.4) with real packets in topologies/spine-leaf-services.yaml: the
coredns pod behind kube-system/kube-dns (10.96.0.10, DNATed by kube-proxy's rules like any
service) answers a pod's queries through the search path kubelet writes; `curl
testappds:8080` works from a pod; a name nobody has is NXDOMAIN at once (timed at the
client, on the wire); nodes keep the lab's own resolv.conf; the server is supervised like
the tunnel dataplanes and gone after `down`.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time

from conftest import TIMEOUT_SCALE, TOPOLOGIES, _alive, installed
from test_supervision import find, until

SHIPPED = (TOPOLOGIES / "spine-leaf-services.yaml").read_text()
# a headless service besides the note's: its name lists the endpoints
HEADLESS = SHIPPED.replace("  dns: {node: worker1}\n", "    testappds-pods: {selector: testappds, port: 80, "
                                                       "clusterIP: None}\n  dns: {node: worker1}\n")
ENDPOINTS = ["10.244.1.2", "10.244.2.2", "10.244.3.2"]
NXDOMAIN_BOUND = 0.1            # the figure; each query is timed, the median is asserted

# One DNS query on the wire from inside a namespace: id 0x1234, RD, one question; prints
# the rcode, the answer count and the seconds from send to reply, per query.
QUERY = r"""
import socket, struct, sys, time
server, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
qname = b"".join(bytes([len(x)]) + x.encode() for x in name.split(".")) + b"\0"
for _ in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    t0 = time.monotonic()
    s.sendto(struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", 1, 1), (server, 53))
    data, peer = s.recvfrom(4096)
    dt = time.monotonic() - t0
    ident, flags, _, ancount = struct.unpack("!HHHH", data[:8])
    assert ident == 0x1234 and peer == (server, 53), (ident, peer)
    print(flags & 0xF, ancount, f"{dt:.6f}")
"""

# getaddrinfo through the pod's resolv.conf (search path, ndots:5), timed.
RESOLVE = r"""
import socket, sys, time
t0 = time.monotonic()
try:
    print(sorted({a[4][0] for a in socket.getaddrinfo(sys.argv[1], 80, socket.AF_INET, socket.SOCK_STREAM)}))
except socket.gaierror as e:
    print("gaierror", e.errno)
print(f"{time.monotonic() - t0:.6f}")
"""


def query(lab, node: str, name: str, n: int = 1) -> list[tuple[int, int, float]]:
    proc = lab.exec(node, sys.executable, "-c", QUERY, "10.96.0.10", name, str(n))
    assert proc.returncode == 0, proc.stderr
    return [(int(r), int(a), float(t)) for r, a, t in (line.split() for line in proc.stdout.splitlines())]


def resolve(lab, node: str, name: str) -> tuple[str, float]:
    proc = lab.exec(node, sys.executable, "-c", RESOLVE, name)
    assert proc.returncode == 0, proc.stderr
    answer, seconds = proc.stdout.splitlines()
    return answer, float(seconds)


def dns_alive(lab) -> bool:
    proc = lab.exec("client", "getent", "hosts", "testappds", timeout=10)
    return proc.returncode == 0 and proc.stdout.startswith("10.111.222.68 ")


def test_pods_reach_services_by_name_and_unknown_names_fail_at_once(root_unchanged, lab_factory):
    installed("curl", "busybox", "getent")
    lab = lab_factory(HEADLESS)

    # kubelet's resolv.conf in pods; the lab's own on nodes and other namespaces
    assert lab.exec("client", "cat", "/etc/resolv.conf").stdout == \
        "search default.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
    for node in ("worker1", "spine", "coredns"):       # coredns: dnsPolicy Default, the node's
        assert "nameserver 127.0.0.1" in lab.exec(node, "cat", "/etc/resolv.conf").stdout, node

    # the service's short name through the search path, its FQDN, the headless one's endpoints
    proc = lab.exec("client", "getent", "hosts", "testappds")
    assert proc.returncode == 0 and proc.stdout.split() == ["10.111.222.68", "testappds.default.svc.cluster.local"]
    assert resolve(lab, "client", "testappds.default.svc.cluster.local")[0] == "['10.111.222.68']"
    assert resolve(lab, "testappds-worker3", "testappds-pods")[0] == str(ENDPOINTS)
    assert resolve(lab, "client", "kube-dns.kube-system")[0] == "['10.96.0.10']"
    proc = lab.exec("client", "busybox", "nslookup", "testappds.default.svc.cluster.local")
    assert proc.returncode == 0 and "Address: 10.111.222.68" in proc.stdout, proc.stdout + proc.stderr

    # curl by name: DNS through kube-dns's DNAT, then the service's own
    proc = lab.exec("client", "curl", "-s", "-m", "10", "testappds:8080")
    assert proc.returncode == 0 and proc.stdout.startswith("testappds-worker"), proc.stdout + proc.stderr
    assert proc.stdout.split()[1].split(":")[0] in ENDPOINTS

    # NXDOMAIN at once: on the wire (the answer comes back from the service IP: reverse NAT)
    for name in ("nosuch.default.svc.cluster.local", "nosuch.example"):
        replies = query(lab, "client", name, 20)
        assert all(rcode == 3 and answers == 0 for rcode, answers, _ in replies), replies
        median = sorted(t for _, _, t in replies)[len(replies) // 2]
        print(f"NXDOMAIN for {name}: median {median * 1000:.2f} ms over {len(replies)} queries at the client")
        assert median < NXDOMAIN_BOUND, replies
    rcode, answers, _ = query(lab, "client", "testappds.default.svc.cluster.local")[0]
    assert (rcode, answers) == (0, 1)
    # ... and through the search path: every suffix tried, all NXDOMAIN, well under a second
    answer, seconds = resolve(lab, "client", "nosuch")
    print(f"getaddrinfo('nosuch') in a pod: {seconds * 1000:.1f} ms")
    assert answer.startswith("gaierror") and seconds < 1.0 * TIMEOUT_SCALE

    # a node has no cluster DNS: `ping nosuch` fails at once (nothing waits on the host's resolver)
    t0 = time.monotonic()
    proc = lab.exec("master1", "ping", "-c1", "-W1", "nosuch")
    elapsed = time.monotonic() - t0
    assert proc.returncode != 0 and "nosuch" in proc.stderr and elapsed < 3.0 * TIMEOUT_SCALE, (proc.stderr, elapsed)

    # kube-dns is a service as any other: kube-proxy's chain (the name every kubeadm cluster
    # has for kube-system/kube-dns:dns) counted the queries; show lists it
    rules = lab.exec("master1", "iptables-save", "-c", "-t", "nat").stdout.splitlines()
    jump = [r for r in rules if "-A KUBE-SERVICES " in r and r.endswith("-j KUBE-SVC-TCOU7JCQXEZGVUNU")]
    assert len(jump) == 1 and "-d 10.96.0.10/32 -p udp" in jump[0], rules
    assert int(jump[0][1:].split(":")[0]) >= 40, jump           # the 40 timed queries above, at least
    shown = json.loads(lab.nslab("show", "-l", lab.name, "--json", check=True).stdout)
    dns = next(s for s in shown["services"] if s["name"] == "kube-dns")
    assert (dns["namespace"], dns["cluster_ip"], dns["port"], dns["protocol"]) == ("kube-system", "10.96.0.10", 53,
                                                                                   "UDP")
    assert dns["endpoints"] == ["coredns 10.244.1.3:53"]


def test_the_dns_server_is_supervised_and_gone_after_down(lab_factory):
    lab = lab_factory("spine-leaf-services.yaml")
    server = find(lab, "dns server on coredns")
    with open(f"/proc/{server['pid']}/comm") as f:
        assert f.read().strip() == "coredns"            # what ps and ss -ulpn show, as in a cluster
    assert dns_alive(lab)

    os.kill(server["pid"], signal.SIGKILL)
    t0 = time.monotonic()
    assert until(lambda: dns_alive(lab), 10 * TIMEOUT_SCALE) is not None, "DNS did not answer again after kill -9"
    resumed = time.monotonic() - t0
    new = find(lab, "dns server on coredns")
    assert new["pid"] != server["pid"] and _alive(new["pid"], new["start_time"])
    print(f"dns server: answering again {resumed:.2f} s after kill -9")

    lab.down()
    assert not _alive(new["pid"], new["start_time"])
    assert not os.path.exists(f"/run/netns/{lab.name}.coredns")
