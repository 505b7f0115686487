"""Node `tunnels:` (note 003 §5's `ip tunnel add tunl1 mode ipip ...`):
`tunnels: {tunl1: {mode: ipip, local: A, remote: B, ip: X, peer: Y}}`."""
from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface

from .types import name_list

TUNNEL_KEYS = {"mode", "local", "remote", "ip", "peer", "mtu", "pmtudisc"}


@dataclass
class Tunnel:
    name: str
    local: IPv4Address
    remote: IPv4Address | None
    ip: IPv4Interface | None
    peer: IPv4Address | None
    mtu: int | None
    pmtudisc: bool
    path: tuple


def parse(p, spec, path) -> list[Tunnel]:
    """A node's tunnels: section (checked against the node's addresses by `check`)."""
    out = []
    for name, t in p.mapping(spec, path, what="tunnels").items():
        tpath = path + (name,)
        p.ifname(name, tpath)
        t = p.mapping(t, tpath, TUNNEL_KEYS, what="tunnel")
        mode = t.get("mode", "ipip")
        if mode != "ipip":
            raise p.err(tpath + ("mode",), f"tunnel mode {mode!r} is not supported (nslab builds: ipip)")
        if "local" not in t:
            raise p.err(tpath, f"tunnel {name} needs local: ADDRESS (one of the node's own addresses)")
        pmtudisc = t.get("pmtudisc", True)        # `ip tunnel add` sets DF unless nopmtudisc
        if not isinstance(pmtudisc, bool):
            raise p.err(tpath + ("pmtudisc",), f"pmtudisc must be true or false, got {pmtudisc!r}")
        ip = peer = None
        if "ip" in t:
            ip = p.interface(t["ip"] if "/" in str(t["ip"]) or "peer" not in t else f"{t['ip']}/32",
                             tpath + ("ip",), None)
        if "peer" in t:
            if ip is None:
                raise p.err(tpath + ("peer",), "peer: needs ip: (ip a a IP peer PEER dev TUNNEL)")
            peer = p.address(t["peer"], tpath + ("peer",))
        out.append(Tunnel(name=name, local=p.address(t["local"], tpath + ("local",)),
                          remote=p.address(t["remote"], tpath + ("remote",)) if t.get("remote", "any") != "any"
                          else None, ip=ip, peer=peer,
                          mtu=p.mtu(t["mtu"], tpath + ("mtu",)) if "mtu" in t else None,
                          pmtudisc=pmtudisc, path=tpath))
    return out


def check(b, node) -> None:
    """After addresses are resolved: local is the node's, names are free, MTU defaults to
    the underlying interface's minus 20 (what the kernel derives for `ip tunnel add`)."""
    first: dict[int, object] = {}       # address -> its first interface: not a scan per tunnel
    for i in node.ifaces:
        if i.ip is not None:
            first.setdefault(i.ip._ip, i)
    for t in node.tunnels:
        under = first.get(int(t.local))
        if under is None:
            raise b.err(t.path + ("local",), f"{t.local} is not an address of {node.name} (it has: "
                                             f"{name_list(a.ip for a in node.addresses)})")
        if node.iface(t.name) or t.name == "lo" or any(br.name == t.name for br in node.bridges):
            raise b.err(t.path, f"{node.name} already has an interface named {t.name}")
        if t.mtu is None:
            t.mtu = under.mtu - 20
