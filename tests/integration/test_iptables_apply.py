"""kube-proxy's and flannel's rules loaded into real lab namespaces (nslab/apply/iptables.py).

Two throwaway namespaces, no lab: `client` plays the spine (30.0.0.254) and `worker3` the
note's node (30.0.0.23), holding the three endpoint addresses on its loopback so a DNAT'd
connection ends at a local listener.  Every test leaves the root namespace's rules as they
were (root_unchanged) and removes its namespaces.
"""
from __future__ import annotations

import os
import socket
import subprocess
import threading
from collections import Counter

import pytest

from conftest import unique_lab_name
from nslab.apply import iptables, netns
from nslab.compile import kubeproxy as kp, masq
from nslab.errors import NslabError

ENDPOINTS = ("10.244.1.23", "10.244.2.16", "10.244.3.19")
SERVICE = kp.Service("testappds", port=8080, target_port=80, cluster_ip="10.111.222.68", type="NodePort",
                     node_port=30080, endpoints=tuple(kp.Endpoint(ip, f"worker{i}")
                                                      for i, ip in enumerate(ENDPOINTS, 1)))
NODE = kp.Node("worker3", "30.0.0.23", pod_cidr="10.244.3.0/24", cluster_cidr="10.244.0.0/16")
SVC, EXT = "KUBE-SVC-QMR6LTDCBEU4U25W", "KUBE-EXT-QMR6LTDCBEU4U25W"


def ip(ns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True, text=True, timeout=30)


@pytest.fixture
def pair(root_unchanged):
    """Namespaces <unique>.client and <unique>.worker3 joined by a veth pair."""
    base = unique_lab_name()
    names = {"client": f"{base}.client", "worker3": f"{base}.worker3"}
    made = []
    try:
        for ns in names.values():
            fd, _ = netns.create(ns)
            os.close(fd)
            made.append(ns)
        c, w = names["client"], names["worker3"]
        ip(c, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", w)
        ip(c, "addr", "add", "30.0.0.254/24", "dev", "eth0")
        ip(w, "addr", "add", "30.0.0.23/24", "dev", "eth0")
        for ns in (c, w):
            ip(ns, "link", "set", "lo", "up")
            ip(ns, "link", "set", "eth0", "up")
        for ep in ENDPOINTS:
            ip(w, "addr", "add", f"{ep}/32", "dev", "lo")
        ip(c, "route", "add", "10.111.222.68/32", "via", "30.0.0.23")   # the spine's route to the ClusterIP
        yield names
    finally:
        for ns in made:
            netns.remove(ns)
        assert not [ns for ns in made if netns.exists(ns)], "namespaces left behind"


def test_rules_land_in_the_namespace_only(pair):
    w, c = pair["worker3"], pair["client"]
    iptables.apply(w, kp.rules(NODE, [SERVICE]), masq.rules("10.244.0.0/16", "10.244.3.0/24"))
    saved = iptables.save(w, counters=False)
    # Chain names, the note's probability as iptables prints it, the mark, flannel's rules.
    for text in (f":{SVC} - [0:0]", f":{EXT} - [0:0]", "--probability 0.33333333349",
                 "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000",
                 '-A POSTROUTING -s 10.244.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" '
                 "-j MASQUERADE --random-fully"):
        assert text in saved, text
    for ep in ENDPOINTS:
        assert f":{kp.sep_chain(SERVICE, ep + ':80')} - [0:0]" in saved
    t = iptables.parse_save(iptables.save(w))
    # kube-proxy's jump first (it prepends), flannel's four rules after it (it appends).
    post = [r.spec for r in t["nat"]["POSTROUTING"].rules]
    assert post[0].endswith("-j KUBE-POSTROUTING") and len(post) == 5
    assert [r.spec.split(" -j ")[-1] for r in t["nat"][SVC].rules] == \
        ["KUBE-MARK-MASQ"] + [kp.sep_chain(SERVICE, ep + ":80") for ep in ENDPOINTS]
    assert [r.spec for r in t["filter"]["FORWARD"].rules][-2:] == [
        '-s 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT',
        '-d 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT']
    assert "KUBE-" not in iptables.save(c, counters=False)        # the other namespace has none


def test_bad_text_names_the_line(pair):
    with pytest.raises(NslabError, match=r"line 2: -A NOSUCHCHAIN -j RETURN"):
        iptables.apply(pair["worker3"], "*nat\n-A NOSUCHCHAIN -j RETURN\nCOMMIT\n")


def test_refuses_the_host_namespace(root_unchanged, monkeypatch):
    """A /run/netns name that is the host's namespace (as `ip netns attach X 1` makes) is refused."""
    def never(*a, **kw):        # should the guard ever break, fail without touching the host
        raise AssertionError(f"would have run {a[0]} in the host's namespace")
    monkeypatch.setattr(iptables.subprocess, "run", never)
    name = f"{unique_lab_name()}.host"
    fd = netns.adopt(name, os.getpid())
    os.close(fd)
    try:
        with pytest.raises(NslabError, match="host's network namespace"):
            iptables.apply(name, kp.rules(NODE, [SERVICE]))
        with pytest.raises(NslabError, match="host's network namespace"):
            iptables.save(name)
    finally:
        netns.remove(name)
    with pytest.raises(NslabError, match="does not exist"):
        iptables.apply(name, "*nat\nCOMMIT\n")


def _listener(ns: str, port: int = 80) -> tuple[socket.socket, list, threading.Thread]:
    """A TCP server in `ns` that answers each connection with "<local ip> <peer ip>"."""
    with netns.enter(ns):
        srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(64)
    srv.settimeout(30)
    seen: list = []

    def serve():
        while True:
            try:
                conn, peer = srv.accept()
            except OSError:
                return
            with conn:
                local = conn.getsockname()[0]
                seen.append((local, peer[0]))
                conn.sendall(f"{local} {peer[0]}\n".encode())

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return srv, seen, t


def _ask(ns: str, addr: str, port: int, source: str | None = None) -> str:
    with netns.enter(ns):
        s = socket.socket()
    with s:
        s.settimeout(15)
        if source:
            s.bind((source, 0))
        s.connect((addr, port))
        return s.makefile().readline().strip()


def test_nodeport_and_clusterip_are_dnated_to_every_endpoint(pair):
    """The spine's connections to the NodePort and the ClusterIP are DNAT'd at random over the
    three endpoints, answered through the reverse NAT, and counted by the rules the note lists."""
    w, c = pair["worker3"], pair["client"]
    iptables.apply(w, kp.rules(NODE, [SERVICE]), masq.rules("10.244.0.0/16", "10.244.3.0/24"))
    srv, seen, thread = _listener(w)
    try:
        n = 60      # P(some endpoint never chosen) = 3 * (2/3)**60 < 1e-10
        node_port = Counter(_ask(c, "30.0.0.23", 30080).split()[0] for _ in range(n))
        cluster_ip = Counter(_ask(c, "10.111.222.68", 8080).split()[0] for _ in range(n))
    finally:
        srv.close()
        thread.join(10)
    assert set(node_port) == set(ENDPOINTS), node_port
    assert set(cluster_ip) == set(ENDPOINTS), cluster_ip
    assert {peer for _, peer in seen} == {"30.0.0.254"}      # delivered locally: no SNAT on this path
    t = iptables.tables(w)
    nodeports = t["nat"]["KUBE-NODEPORTS"].rules
    assert [r.packets for r in nodeports] == [n]            # only a connection's first packet walks nat
    ext = t["nat"][EXT].rules
    assert [r.packets for r in ext] == [n, n]               # marked for masquerade, then to KUBE-SVC
    svc = t["nat"][SVC].rules
    assert svc[0].spec.endswith("-j KUBE-MARK-MASQ") and svc[0].packets == n   # 30.0.0.254 is off-cluster
    dnat = {ep: t["nat"][kp.sep_chain(SERVICE, ep + ":80")].rules[1].packets for ep in ENDPOINTS}
    assert dnat == {ep: node_port[ep] + cluster_ip[ep] for ep in ENDPOINTS}


@pytest.mark.parametrize("ip_masq", [True, False])
def test_pod_to_outside_is_masqueraded_by_flannel(pair, ip_masq):
    """A connection from a pod address of worker3 to the outside leaves with the node's
    address when ipMasq is on (flannel's second POSTROUTING rule counts it), and with the
    pod's own address when it is off."""
    w, c = pair["worker3"], pair["client"]
    iptables.apply(w, kp.rules(NODE, [SERVICE]), masq.rules("10.244.0.0/16", "10.244.3.0/24", ip_masq=ip_masq))
    ip(c, "route", "add", "10.244.0.0/16", "via", "30.0.0.23")       # so an un-NATed reply can come back
    srv, seen, thread = _listener(c, 8000)
    try:
        answer = _ask(w, "30.0.0.254", 8000, source="10.244.3.19")
    finally:
        srv.close()
        thread.join(10)
    assert answer == f"30.0.0.254 {'30.0.0.23' if ip_masq else '10.244.3.19'}"
    post = iptables.tables(w)["nat"]["POSTROUTING"].rules
    masquerades = [r.packets for r in post if "MASQUERADE" in r.spec and "224.0.0.0/4" in r.spec]
    assert masquerades == ([1] if ip_masq else [])


def test_a_restore_that_outlasts_its_timeout_is_one_sentence(pair):
    """A restore killed at its timeout is an NslabError naming the tool, the namespace and the
    input's size (it was a raw subprocess.TimeoutExpired traceback)."""
    w = pair["worker3"]
    text = kp.rules(NODE, [SERVICE])
    with pytest.raises(NslabError, match=rf"^iptables-restore in {w} did not finish in 0 s with "
                                         rf"{text.count(chr(10))} lines of input$"):
        iptables.apply(w, text, timeout=0.001)
    assert iptables.timeout_for("x\n" * 43000) > 60 + 43000 / 300


def test_nft_text_loads_as_one_transaction(pair):
    """kube-proxy's nftables text in one `nft -f`: a bad line anywhere leaves nothing of it
    (the table does not exist), the whole text loads at once, and nothing lands elsewhere."""
    from nslab.apply import nftables
    from nslab.compile import kubeproxy_nft as kn
    w, c = pair["worker3"], pair["client"]
    text = kn.rules(NODE, [SERVICE], service_cidr="10.96.0.0/12")
    with pytest.raises(NslabError, match=rf"^nft -f in {w} failed: .*Error"):
        nftables.apply(w, text, "add rule ip kube-proxy services no such expression\n")
    assert nftables.table(w, "kube-proxy") is None
    nftables.apply(w, text)
    chains = {o["chain"]["name"] for o in nftables.table(w, "kube-proxy") if "chain" in o}
    assert kn.service_chain(SERVICE) in chains and kn.external_chain(SERVICE) in chains
    assert {kn.endpoint_chain(SERVICE, f"{ep}:80") for ep in ENDPOINTS} <= chains
    assert nftables.table(c, "kube-proxy") is None
