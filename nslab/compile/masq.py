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


def _lease_in(network: str, subnet: str) -> tuple[str, str]:
    """(flannel's Network, this node's lease), the lease checked to be inside the network."""
    n, sn = _net(network), _net(subnet)
    if not ipaddress.IPv4Network(sn).subnet_of(ipaddress.IPv4Network(n)):
        raise ValueError(f"node subnet {sn} is not inside the flannel network {n}")
    return n, sn


def masq_rules(network: str, subnet: str, random_fully: bool = True) -> list[str]:
    """MasqRules(ipn = flannel's Network, lease.Subnet = this node's pod subnet): nat
    POSTROUTING rules, in flannel's order."""
    n, sn = _lease_in(network, subnet)
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


# --- flannel's nftables traffic manager (EnableNFTables) ----------------------------------------
#
# With "EnableNFTables": true in net-conf.json (flannel v0.25.0 and later), flanneld programs
# the same rules with nftables instead (pkg/trafficmngr/nftables/nftables.go,
# NFTablesManager): its own table `ip flannel-ipv4`, a nat chain `postrtg` hooked at
# postrouting (srcnat) for --ip-masq, and a filter chain `forward` (filter priority) for the
# forward rules.  Written as knftables writes its transactions: Init's table, then
# SetupAndEnsureMasqRules, then SetupAndEnsureForwardRules (three transactions in flanneld;
# one `nft -f` here, with the same result).  No ip6 table: a lab's cluster is IPv4 only.

NFT_TABLE = "flannel-ipv4"
NFT_MULTICAST = MULTICAST
KUBE_PROXY_MARK = "0x4000"              # flannel writes kube-proxy's default mark literally


def nft_masq_rules(network: str, subnet: str, random_fully: bool = True) -> list[str]:
    """addMasqRules(clusterCidr = flannel's Network, podCidr = this node's lease), in flannel's
    order.  Unlike the iptables rules, the fourth rule returns for any source outside this
    node's subnet towards the network (`ip saddr != podCidr`, flannel's text), so the last
    rule masquerades only what the earlier ones let through."""
    n, sn = _lease_in(network, subnet)
    masquerade = "masquerade fully-random" if random_fully else "masquerade"
    t = f"ip {NFT_TABLE} postrtg"
    return [
        # traffic kube-proxy marked for masquerade: kube-proxy's own chain does it
        f"add rule {t} meta mark {KUBE_PROXY_MARK} return",
        # don't NAT traffic within overlay network
        f"add rule {t} ip saddr {sn} ip daddr {n} return",
        f"add rule {t} ip saddr {n} ip daddr {sn} return",
        # external traffic arriving from the node that owns the pod address
        f"add rule {t} ip saddr != {sn} ip daddr {n} return",
        # NAT if it's not multicast traffic
        f"add rule {t} ip saddr {n} ip daddr != {NFT_MULTICAST} {masquerade}",
        # masquerade anything headed towards flannel from the host
        f"add rule {t} ip saddr != {n} ip daddr {n} {masquerade}",
    ]


def nft_rules(network: str, subnet: str, *, ip_masq: bool = True, forward: bool = True,
              random_fully: bool = True) -> str:
    """The `nft -f` text flanneld's NFTablesManager leaves in a node (initTable, then the
    masquerade rules if --ip-masq, then the forward rules); empty if neither is on."""
    if not (ip_masq or forward):
        return ""
    n = _net(network)
    lines = [f'add table ip {NFT_TABLE} {{ comment "rules for {NFT_TABLE}" ; }}']
    if ip_masq:
        lines += [f"add chain ip {NFT_TABLE} postrtg {{ type nat hook postrouting priority 100 ; "
                  f'comment "chain to manage traffic masquerading by flannel" ; }}',
                  f"flush chain ip {NFT_TABLE} postrtg",
                  *nft_masq_rules(network, subnet, random_fully)]
    if forward:
        lines += [f"add chain ip {NFT_TABLE} forward {{ type filter hook forward priority 0 ; "
                  f'comment "chain to accept flannel traffic" ; }}',
                  f"flush chain ip {NFT_TABLE} forward",
                  f"add rule ip {NFT_TABLE} forward ip saddr {n} accept",
                  f"add rule ip {NFT_TABLE} forward ip daddr {n} accept"]
    return "\n".join(lines) + "\n"
