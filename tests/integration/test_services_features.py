"""Issue 23's service features with real packets, in kube-proxy's iptables and nftables
modes (topologies/services-features.yaml and tests/golden/services-features-nftables.yaml,
one small lab per mode): web runs on n1 only.

- externalTrafficPolicy Local: a NodePort on n1 keeps the client's source, on n2 (no local
  endpoint) it is dropped; with Cluster the same NodePort on n2 is masqueraded to n2;
- internalTrafficPolicy Local: the clusterIP answers from a pod on n1, is dropped on n2;
- sessionAffinity ClientIP (3 s): one client keeps one endpoint, then, once the timeout
  has passed, meets the other one again;
- a service without endpoints is refused at once (REJECT / reject-chain: connection refused);
- a service with three ports: two targetPorts by name (the pods' ports:) and one UDP.
"""
from __future__ import annotations

import base64
import hashlib
import json
import sys
import time
from pathlib import Path

import pytest

from conftest import TOPOLOGIES, installed
from test_services import get
from nslab.apply import iptables
from nslab.pytest_plugin import lab_name

GOLDEN = Path(__file__).parent.parent / "golden"
TOPOLOGY = {"iptables": TOPOLOGIES / "services-features.yaml", "nftables": GOLDEN / "services-features-nftables.yaml"}
OUTSIDE, N1, N2 = "10.0.0.100", "10.0.0.1", "10.0.0.2"
LOCAL_NP, CLUSTER_NP, EMPTY_NP = 30080, 30081, 30084
INTERNAL, STICKY, EMPTY, MULTI = "10.96.0.82", "10.96.0.83", "10.96.0.84", "10.96.0.85"
MULTI_PODS = {"multi-n1": "10.244.0.3", "multi-n2": "10.244.1.2"}

# One TCP connection: "ok", "refused" or "timeout" (what a REJECT and a DROP look like).
CONNECT = r"""
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()
    print("ok")
except ConnectionRefusedError:
    print("refused")
except (socket.timeout, TimeoutError):
    print("timeout")
"""

# A UDP server in a pod: answers each datagram with "<pod> answered <peer address>".
ECHO = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 5353))
while True:
    data, peer = s.recvfrom(512)
    s.sendto(f"{sys.argv[1]} answered {peer[0]}".encode(), peer)
"""

ASK = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(20)
s.sendto(b"hello", (sys.argv[1], int(sys.argv[2])))
print(s.recvfrom(512)[0].decode())
"""


@pytest.fixture(autouse=True)
def _tools():
    installed("nft")


def b32(text: str, n: int) -> str:
    """kube-proxy's hashes, computed here from their definition (not nslab's)."""
    return base64.b32encode(hashlib.sha256(text.encode()).digest()).decode()[:n]


def connect(lab, node: str, host: str, port: int, timeout: float = 3.0) -> str:
    proc = lab.exec(node, sys.executable, "-c", CONNECT, host, str(port), str(timeout), timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_service_features(root_unchanged, lab_factory, mode):
    lab = lab_factory(TOPOLOGY[mode], name=lab_name("sv"))

    # externalTrafficPolicy Local: n1 (the endpoint's node) keeps the client's source ...
    assert get(lab, "outside", N1, LOCAL_NP, 3) == [("web-n1", "10.244.0.2", OUTSIDE)] * 3
    # ... n2 has no local endpoint: dropped, not forwarded to n1
    assert connect(lab, "outside", N2, LOCAL_NP) == "timeout"
    # Cluster policy: n2 forwards to n1, masqueraded to n2's own address
    assert get(lab, "outside", N2, CLUSTER_NP, 2) == [("web-n1", "10.244.0.2", N2)] * 2
    if mode == "iptables":          # the filter rule kube-proxy wrote for it is what dropped it
        drops = [r.packets for r in iptables.tables(lab.ns("n2"))["filter"]["KUBE-EXTERNAL-SERVICES"].rules
                 if '"default/local has no local endpoints"' in r.spec and "-j DROP" in r.spec]
        assert drops and drops[0] > 0, drops

    # internalTrafficPolicy Local: a pod on n1 reaches web-n1 (unSNATed); client on n2 is dropped
    assert get(lab, "multi-n1", INTERNAL, 8080, 2) == [("web-n1", "10.244.0.2", "10.244.0.3")] * 2
    assert connect(lab, "client", INTERNAL, 8080) == "timeout"
    # trace and show name the Local policy's chain (KUBE-SVL- / local-), not the Cluster one
    local = ("KUBE-SVL-" + b32("default/internaltcp", 16) if mode == "iptables"
             else f"local-{b32('default/internal/tcp/', 8)}-default/internal/tcp/")
    proc = lab.nslab("trace", "-l", lab.name, "multi-n1", "svc/internal", "--json", timeout=90)
    (n,) = json.loads(proc.stdout)["nat"]
    assert n["node"] == "n1" and f"{local} chose" in n["rule"], n
    # svc/NAME:PORT names a port of a multi-port service (by name, or number): the trace goes to
    # that port, through that port's chain
    alt = ("KUBE-SVC-" + b32("default/multi:alttcp", 16) if mode == "iptables"
           else f"service-{b32('default/multi/tcp/alt', 8)}-default/multi/tcp/alt")
    for target in ("svc/multi:alt", "svc/multi:8081"):
        proc = lab.nslab("trace", "-l", lab.name, "client", target, "--json", timeout=90)
        result = json.loads(proc.stdout)
        (n,) = result["nat"]
        assert (result["service"]["port"], result["service"]["port_name"]) == (8081, "alt"), result["service"]
        assert f"{alt} chose" in n["rule"] and n["after"]["dport"] == 8081, n
    # show lists every port, by name, each with its chain
    svcs = {s["name"]: s for s in json.loads(lab.nslab("show", "-l", lab.name, "--json", check=True).stdout)["services"]}
    assert [(p["name"], p["port"], p["chain"] is not None) for p in svcs["multi"]["ports"]] == \
        [("main", 80, True), ("alt", 8081, True), ("echo", 5353, True)]
    assert svcs["multi"]["ports"][1]["chain"] == alt
    table = lab.nslab("show", "-l", lab.name, check=True, env={"COLUMNS": "200"}).stdout
    assert "8081/TCP (alt)" in table and "5353/UDP (echo)" in table, table
    assert svcs["internal"]["chain"] == local and [p["port"] for p in svcs["multi"]["ports"]] == [80, 8081, 5353]

    # a service without endpoints: refused at once, on its cluster IP and its node port
    assert connect(lab, "client", EMPTY, 80, timeout=20) == "refused"
    assert connect(lab, "outside", N1, EMPTY_NP, timeout=20) == "refused"

    # several ports, two by name, and UDP: every port reaches both endpoints' right listener
    for port, member in ((80, "main"), (8081, "alt")):
        seen = {(pod, ip) for pod, ip, _ in get(lab, "client", MULTI, port, 12)}
        assert seen == {(f"{p}/{member}", ip) for p, ip in MULTI_PODS.items()}, (port, seen)
    servers = [lab.popen(pod, sys.executable, "-c", ECHO, pod) for pod in MULTI_PODS]
    try:
        answers = set()
        for _ in range(12):
            proc = lab.exec("client", sys.executable, "-c", ASK, MULTI, "5353", timeout=60)
            if proc.returncode == 0:
                answers.add(proc.stdout.strip())
        assert answers == {f"{p} answered 10.244.1.20" for p in MULTI_PODS}, answers
    finally:
        for s in servers:
            s.kill()
            s.wait()

    # sessionAffinity ClientIP (timeoutSeconds 3): one endpoint while the client keeps coming ...
    first = get(lab, "client", STICKY, 80, 10)
    assert len({pod for pod, _, _ in first}) == 1, first
    # ... and, once 3 s pass without a connection, a fresh pick: the other endpoint turns up
    sticky_pod = first[0][0]
    for _ in range(12):                 # a fair coin misses 12 times in 4,096 runs
        time.sleep(4)
        (again,) = get(lab, "client", STICKY, 80, 1)
        if again[0] != sticky_pod:
            break
    else:
        pytest.fail(f"{sticky_pod} answered every connection after the affinity timeout")
