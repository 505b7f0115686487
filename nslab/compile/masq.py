"""flannel's iptables rules for one node (`--ip-masq`, default true, and the FORWARD rules).

Mirrors flannel v0.19.1, the version in note 001's manifests
(docker.io/rancher/mirrored-flannelcni-flannel:v0.19.1): `network/iptables.go`,
MasqRules(ipn, lease) and ForwardRules(flannelNetwork), installed by flanneld's main with
SetupAndEnsureIP4Tables, which appends them (`-A`, one iptables-restore --noflush) to the
built-in chains.  v0.19.1 has no FLANNEL-POSTRTG / FLANNEL-FWD chains yet: those came with
flannel PR #1650 (autumn 2022, after v0.19.x), and the kube-proxy-mark RETURN rule with
PR #1681 (November 2022).
That is why the note reads flannel's MASQUERADE counter straight from
`iptables -t nat -vnL POSTROUTING`.

supports_random_fully: flannel asks go-iptables whether iptables has --random-fully
(1.6.2+); every iptables nslab runs on has, so MASQUERADE carries it unless told otherwise.

Pure: standard library only; the output is text for `iptables-restore --noflush`.
"""
from __future__ import annotations

import ipaddress

MULTICAST = "224.0.0.0/4"
MASQ_COMMENT = '"flanneld masq"'
FORWARD_COMMENT = '"flanneld forward"'


def _net(text: str) -> str:
    return str(ipaddress.IPv4Network(text, strict=True))


def masq_rules(network: str, subnet: str, random_fully: bool = True) -> list[str]:
    """MasqRules(ipn = flannel's Network, lease.Subnet = this node's pod subnet): nat
    POSTROUTING rules, in flannel's order."""
    n, sn = _net(network), _net(subnet)
    if not ipaddress.IPv4Network(sn).subnet_of(ipaddress.IPv4Network(n)):
        raise ValueError(f"node subnet {sn} is not inside the flannel network {n}")
    rf = " --random-fully" if random_fully else ""
    c = f"-m comment --comment {MASQ_COMMENT}"
    return [
        # pod <-> pod inside the overlay (e.g. coming out of cni0): no NAT
        f"-A POSTROUTING -s {n} -d {n} {c} -j RETURN",
        # pod -> outside: masquerade, unless multicast
        f"-A POSTROUTING -s {n} ! -d {MULTICAST} {c} -j MASQUERADE{rf}",
        # outside -> a pod of this node: keep the source (arrives from the node owning the pod IP)
        f"-A POSTROUTING ! -s {n} -d {sn} {c} -j RETURN",
        # outside (the host, a NodePort client) -> a pod on another node: masquerade
        f"-A POSTROUTING ! -s {n} -d {n} {c} -j MASQUERADE{rf}",
    ]


def forward_rules(network: str) -> list[str]:
    """ForwardRules(flannelNetwork): filter FORWARD accepts to and from the network
    (flanneld's --iptables-forward-rules, default true, independent of --ip-masq)."""
    n = _net(network)
    return [f"-A FORWARD -s {n} -m comment --comment {FORWARD_COMMENT} -j ACCEPT",
            f"-A FORWARD -d {n} -m comment --comment {FORWARD_COMMENT} -j ACCEPT"]


def rules(network: str, subnet: str, *, ip_masq: bool = True, forward: bool = True,
          random_fully: bool = True) -> str:
    """The iptables-restore text flanneld leaves in a node: nat first (flanneld starts the
    masquerade goroutine before the forward one), then filter.  Empty if neither is on."""
    lines = []
    if ip_masq:
        lines += ["*nat", *masq_rules(network, subnet, random_fully), "COMMIT"]
    if forward:
        lines += ["*filter", *forward_rules(network), "COMMIT"]
    return "\n".join(lines) + "\n" if lines else ""
