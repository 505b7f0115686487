"""`nslab show`: what the notes inspect by hand (`ip -d addr`, `ip route`, `ip neigh`,
`bridge fdb show`), read in-process over netlink, for each node of a running lab.

How a namespace is read without forking: pyroute2 0.9.7's IPRoute() opens its netlink
socket in the constructor (IPRoute.__init__ runs setup_endpoint(), which creates the
socket of the calling thread), and a netlink socket belongs for its whole life to the
namespace its creating thread was in.  The socket is per thread, though (it lives in a
threading.local and is created on first use), so a call from another thread would open a
new socket wherever that thread is.  We therefore open IPRoute *and* do every query while
the thread is inside `netns.enter(ns)`; nothing here depends on when pyroute2 creates the
socket, and `_check_netns()` asserts the socket really is in the lab namespace.

Data flow: collect() -> plain, JSON-ready dicts (normalised from netlink messages) ->
format_*() turns one dict into the line iproute2 prints -> render() lays them out.
The format functions are pure and unit-tested (tests/observe/test_show_format.py).
"""
from __future__ import annotations

import os
import re
import socket
from typing import Any, Iterable

from .. import console as out
from ..errors import NslabError
from ..state import verified_ids
from ..apply import netns, qdisc
from ..apply.netlink import open_route_socket
from ..runtime.agent import health

AF_BRIDGE = 7
SO_NETNS_COOKIE = 71
NSID_NOT_ASSIGNED = {-1, 0xFFFFFFFF}

# --- iproute2's names -----------------------------------------------------------------

RT_TYPES = {0: "unspec", 1: "unicast", 2: "local", 3: "broadcast", 4: "anycast", 5: "multicast",
            6: "blackhole", 7: "unreachable", 8: "prohibit", 9: "throw", 10: "nat", 11: "xresolve"}
RT_PROTOS = {0: "unspec", 1: "redirect", 2: "kernel", 3: "boot", 4: "static", 8: "gated", 9: "ra",
             10: "mrt", 11: "zebra", 12: "bird", 13: "dnrouted", 14: "xorp", 15: "ntk", 16: "dhcp",
             17: "mrouted", 18: "keepalived", 42: "babel", 99: "openr", 186: "bgp", 187: "isis",
             188: "ospf", 189: "rip", 192: "eigrp"}
RT_SCOPES = {0: "global", 200: "site", 253: "link", 254: "host", 255: "nowhere"}
RT_TABLES = {0: "unspec", 253: "default", 254: "main", 255: "local"}
# rtm_flags / rtnh_flags, in the order iproute2's print_rt_flags() prints them
RT_FLAGS = [(1, "dead"), (4, "onlink"), (2, "pervasive"), (8, "offload"), (64, "trap"),
            (0x100, "notify"), (16, "linkdown"), (32, "unresolved"), (0x4000, "rt_offload"),
            (0x8000, "rt_trap"), (0x20000, "rt_offload_failed")]
NUD_STATES = [(0x01, "INCOMPLETE"), (0x02, "REACHABLE"), (0x04, "STALE"), (0x08, "DELAY"),
              (0x10, "PROBE"), (0x20, "FAILED"), (0x40, "NOARP"), (0x80, "PERMANENT")]
NUD_NOARP, NUD_PERMANENT, NUD_STALE, NUD_REACHABLE = 0x40, 0x80, 0x04, 0x02
# ndm_flags as `ip neigh` prints them, then as `bridge fdb` prints them
NTF_SELF, NTF_MASTER, NTF_PROXY, NTF_EXT_LEARNED, NTF_OFFLOADED, NTF_STICKY, NTF_ROUTER = \
    0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80
NEIGH_FLAGS = [(NTF_ROUTER, "router"), (NTF_PROXY, "proxy"), (NTF_EXT_LEARNED, "extern_learn"),
               (NTF_OFFLOADED, "offload")]
FDB_FLAGS = [(NTF_SELF, "self"), (NTF_ROUTER, "router"), (NTF_EXT_LEARNED, "extern_learn"),
             (NTF_OFFLOADED, "offload"), (NTF_MASTER, "master"), (NTF_STICKY, "sticky")]
IFF_NAMES = [(0x1, "UP"), (0x2, "BROADCAST"), (0x8, "LOOPBACK"), (0x10, "POINTOPOINT"),
             (0x80, "NOARP"), (0x100, "PROMISC"), (0x1000, "MULTICAST"), (0x10000, "LOWER_UP")]


def _flag_names(value: int, table: Iterable[tuple[int, str]]) -> list[str]:
    return [name for bit, name in table if value & bit]


# --- formatting (pure) ----------------------------------------------------------------

def format_route(r: dict, show_table: bool = False) -> str:
    """One route as `ip route` prints it (`ip route show table all` with show_table=True);
    multipath routes continue on lines starting with a tab, as iproute2 prints them."""
    parts: list[str] = []
    if r.get("type", "unicast") != "unicast":
        parts.append(r["type"])
    parts.append(r.get("dst") or "default")
    if r.get("from"):
        parts += ["from", r["from"]]
    if r.get("gateway"):
        parts += ["via", r["gateway"]]
    if r.get("dev"):
        parts += ["dev", r["dev"]]
    table = r.get("table", "main")
    if show_table and table != "main":
        parts += ["table", str(table)]
    if r.get("proto", "boot") != "boot":
        parts += ["proto", str(r["proto"])]
    if r.get("scope", "global") != "global":
        parts += ["scope", str(r["scope"])]
    if r.get("src"):
        parts += ["src", r["src"]]
    if r.get("metric") is not None:
        parts += ["metric", str(r["metric"])]
    parts += r.get("flags", [])
    for name, value in (r.get("metrics") or {}).items():
        parts += [name, str(value)]
    line = " ".join(parts)
    for nh in r.get("nexthops") or []:
        nparts = ["nexthop"]
        if nh.get("gateway"):
            nparts += ["via", nh["gateway"]]
        if nh.get("dev"):
            nparts += ["dev", nh["dev"]]
        nparts += ["weight", str(nh.get("weight", 1))]
        nparts += nh.get("flags", [])
        line += "\n\t" + " ".join(nparts)
    return line


def format_neigh(n: dict) -> str:
    """One neighbour as `ip neigh` prints it: `10.244.3.0 dev flannel.4000 lladdr .. PERMANENT`."""
    parts = [n["dst"]]
    if n.get("dev"):
        parts += ["dev", n["dev"]]
    if n.get("lladdr"):
        parts += ["lladdr", n["lladdr"]]
    parts += n.get("flags", [])
    if n.get("proto"):
        parts += ["proto", str(n["proto"])]
    parts += n.get("state", [])
    return " ".join(parts)


def format_fdb(f: dict) -> str:
    """One FDB entry as `bridge fdb show` prints it:
    `<mac> dev flannel.4000 dst 30.0.0.23 self permanent`, `<mac> dev br-veth0 master br0`."""
    parts = [f["mac"]]
    if f.get("dev"):
        parts += ["dev", f["dev"]]
    for key in ("dst", "vlan", "port", "vni", "src_vni", "via"):
        if f.get(key) is not None:
            parts += [key, str(f[key])]
    parts += f.get("flags", [])
    if f.get("master"):
        parts += ["master", f["master"]]
    if f.get("state"):
        parts.append(f["state"])
    return " ".join(parts)


def format_addr(a: dict) -> str:
    """One address as `ip addr` prints it (without the lifetimes line)."""
    fam = "inet" if a.get("family", 4) == 4 else "inet6"
    parts = [fam]
    if a.get("peer"):
        parts += [a["local"], "peer", f"{a['peer']}/{a['prefixlen']}"]
    else:
        parts.append(f"{a['local']}/{a['prefixlen']}")
    if a.get("broadcast"):
        parts += ["brd", a["broadcast"]]
    parts += ["scope", a.get("scope", "global")]
    if a.get("label") and a.get("label") != a.get("dev"):
        parts.append(a["label"])
    return " ".join(parts)


def format_link_details(kind: str | None, info: dict) -> str:
    """The kind line of `ip -d link`, trimmed to what the notes look at:
    `vxlan id 4000 local 10.0.0.21 dev eth0 dstport 4789 nolearning`,
    `ipip remote any local 172.12.1.11`, `tun type tun`."""
    if not kind:
        return ""
    if kind == "vxlan":
        parts = ["vxlan", "id", str(info.get("id"))]
        if info.get("group"):
            parts += ["group", info["group"]]
        elif info.get("remote"):
            parts += ["remote", info["remote"]]
        if info.get("local"):
            parts += ["local", info["local"]]
        if info.get("dev"):
            parts += ["dev", info["dev"]]
        if info.get("dstport") is not None:
            parts += ["dstport", str(info["dstport"])]
        if info.get("learning") is not None:
            parts.append("learning" if info["learning"] else "nolearning")
        return " ".join(parts)
    if kind in ("ipip", "gre", "sit", "gretap"):
        parts = [kind, "remote", info.get("remote") or "any", "local", info.get("local") or "any"]
        if info.get("dev"):
            parts += ["dev", info["dev"]]
        return " ".join(parts)
    if kind == "tun":
        return f"tun type {info.get('type', 'tun')}"
    return kind


def is_multicast_mac(mac: str) -> bool:
    try:
        return bool(int(mac.split(":")[0], 16) & 1)
    except ValueError:
        return False


def parse_subnet_env(value: Any) -> dict:
    """subnet.env as a dict: given a dict, or flannel's KEY=VALUE text."""
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    out: dict[str, str] = {}
    for line in str(value).splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip()
    return out


# --- normalising netlink messages -------------------------------------------------------

def _attrs(msg) -> dict:
    out: dict = {}
    for item in msg.get("attrs", []):
        key, value = item[0], item[1]
        out.setdefault(key, value)
    return out


def _nested(value) -> dict:
    if value is None:
        return {}
    if hasattr(value, "get") and "attrs" in value:
        return _attrs(value)
    return {}


def norm_link(msg, names: dict[int, str]) -> dict:
    a = _attrs(msg)
    info = _nested(a.get("IFLA_LINKINFO"))
    kind = info.get("IFLA_INFO_KIND")
    data = _nested(info.get("IFLA_INFO_DATA"))
    details: dict[str, Any] = {}
    if kind == "vxlan":
        group = data.get("IFLA_VXLAN_GROUP")
        details = {
            "id": data.get("IFLA_VXLAN_ID"),
            "local": data.get("IFLA_VXLAN_LOCAL"),
            "dev": names.get(data.get("IFLA_VXLAN_LINK")) if data.get("IFLA_VXLAN_LINK") else None,
            "dstport": data.get("IFLA_VXLAN_PORT"),
            "learning": bool(data["IFLA_VXLAN_LEARNING"]) if "IFLA_VXLAN_LEARNING" in data else None,
        }
        if group:
            details["group" if _is_multicast_ip(group) else "remote"] = group
    elif kind in ("ipip", "sit"):
        remote, local = data.get("IFLA_IPTUN_REMOTE"), data.get("IFLA_IPTUN_LOCAL")
        details = {"remote": None if remote in (None, "0.0.0.0") else remote,
                   "local": None if local in (None, "0.0.0.0") else local,
                   "dev": names.get(data.get("IFLA_IPTUN_LINK")) if data.get("IFLA_IPTUN_LINK") else None}
    elif kind in ("gre", "gretap"):
        remote, local = data.get("IFLA_GRE_REMOTE"), data.get("IFLA_GRE_LOCAL")
        details = {"remote": None if remote in (None, "0.0.0.0") else remote,
                   "local": None if local in (None, "0.0.0.0") else local}
    elif kind == "tun":
        details = {"type": {1: "tun", 2: "tap"}.get(data.get("IFLA_TUN_TYPE"), "tun")}
    flags = msg.get("flags", 0)
    master = a.get("IFLA_MASTER")
    return {
        "index": msg.get("index"),
        "name": a.get("IFLA_IFNAME"),
        "kind": kind or ("loopback" if flags & 0x8 else None),
        "slave_kind": info.get("IFLA_INFO_SLAVE_KIND"),
        "mtu": a.get("IFLA_MTU"),
        "mac": a.get("IFLA_ADDRESS"),
        "state": a.get("IFLA_OPERSTATE"),
        "flags": _flag_names(flags, IFF_NAMES),
        "master": names.get(master, f"if{master}") if master else None,
        "link": a.get("IFLA_LINK"),
        "link_netnsid": a.get("IFLA_LINK_NETNSID"),
        "peer": None,
        "info": details,
        "details": format_link_details(kind, details),
        "addresses": [],
    }


def _is_multicast_ip(addr: str) -> bool:
    try:
        first = int(addr.split(".")[0])
    except ValueError:
        return addr.lower().startswith("ff")
    return 224 <= first <= 239


def norm_addr(msg, names: dict[int, str]) -> dict:
    a = _attrs(msg)
    family = 4 if msg.get("family") == socket.AF_INET else 6
    local = a.get("IFA_LOCAL") or a.get("IFA_ADDRESS")
    address = a.get("IFA_ADDRESS")
    return {
        "family": family,
        "dev": names.get(msg.get("index")),
        "local": local,
        "prefixlen": msg.get("prefixlen"),
        "peer": address if address and address != local else None,
        "broadcast": a.get("IFA_BROADCAST"),
        "scope": RT_SCOPES.get(msg.get("scope"), str(msg.get("scope"))),
        "label": a.get("IFA_LABEL"),
    }


def norm_route(msg, names: dict[int, str]) -> dict:
    a = _attrs(msg)
    family = 4 if msg.get("family") == socket.AF_INET else 6
    full = 32 if family == 4 else 128
    dst_len = msg.get("dst_len", 0)
    if a.get("RTA_DST"):
        dst = a["RTA_DST"] if dst_len == full else f"{a['RTA_DST']}/{dst_len}"
    elif dst_len:
        dst = f"{'0' if family == 4 else '::'}/{dst_len}"
    else:
        dst = "default"
    table = a.get("RTA_TABLE", msg.get("table"))
    metrics = {}
    for key, value in _nested(a.get("RTA_METRICS")).items():
        if key.startswith("RTAX_") and value is not None:
            metrics[key[5:].lower()] = value
    nexthops = []
    for nh in a.get("RTA_MULTIPATH") or []:
        na = _attrs(nh)
        nexthops.append({"gateway": na.get("RTA_GATEWAY"), "dev": names.get(nh.get("oif"), f"if{nh.get('oif')}"),
                         "weight": nh.get("hops", 0) + 1,
                         "flags": _flag_names(nh.get("flags", 0), RT_FLAGS)})
    oif = a.get("RTA_OIF")
    src_len = msg.get("src_len", 0)
    return {
        "family": family,
        "type": RT_TYPES.get(msg.get("type"), str(msg.get("type"))),
        "dst": dst,
        "from": f"{a['RTA_SRC']}/{src_len}" if a.get("RTA_SRC") else None,
        "gateway": a.get("RTA_GATEWAY"),
        "dev": names.get(oif, f"if{oif}") if oif else None,
        "table": RT_TABLES.get(table, table),
        "proto": RT_PROTOS.get(msg.get("proto"), msg.get("proto")),
        "scope": RT_SCOPES.get(msg.get("scope"), msg.get("scope")),
        "src": a.get("RTA_PREFSRC"),
        "metric": a.get("RTA_PRIORITY"),
        "flags": _flag_names(msg.get("flags", 0), RT_FLAGS),
        "metrics": metrics,
        "nexthops": nexthops,
    }


def norm_neigh(msg, names: dict[int, str]) -> dict:
    a = _attrs(msg)
    state = msg.get("state", 0)
    return {
        "family": 4 if msg.get("family") == socket.AF_INET else 6,
        "dst": a.get("NDA_DST"),
        "dev": names.get(msg.get("ifindex"), f"if{msg.get('ifindex')}"),
        "lladdr": a.get("NDA_LLADDR"),
        "flags": _flag_names(msg.get("flags", 0), NEIGH_FLAGS),
        "proto": a.get("NDA_PROTOCOL"),
        "state": _flag_names(state, NUD_STATES) if state else ["NONE"],
    }


def fdb_state(state: int) -> str:
    """bridge/fdb.c state_n2a()."""
    if state & NUD_PERMANENT:
        return "permanent"
    if state & NUD_NOARP:
        return "static"
    if state & NUD_STALE:
        return "stale"
    if state & NUD_REACHABLE:
        return ""
    return f"state={state:#x}"


def norm_fdb(msg, names: dict[int, str]) -> dict:
    a = _attrs(msg)
    master = a.get("NDA_MASTER")
    vlan = a.get("NDA_VLAN")
    return {
        "mac": a.get("NDA_LLADDR"),
        "dev": names.get(msg.get("ifindex"), f"if{msg.get('ifindex')}"),
        "dst": a.get("NDA_DST"),
        "vlan": vlan if vlan else None,
        "port": a.get("NDA_PORT"),
        "vni": a.get("NDA_VNI"),
        "src_vni": a.get("NDA_SRC_VNI"),
        "via": names.get(a["NDA_IFINDEX"]) if a.get("NDA_IFINDEX") else None,
        "flags": _flag_names(msg.get("flags", 0), FDB_FLAGS),
        "master": names.get(master, f"if{master}") if master else None,
        "state": fdb_state(msg.get("state", 0)),
    }


# --- netfilter counters ----------------------------------------------------------------------

_NFT_TABLE = re.compile(r"^table (\S+) (\S+) \{")
_NFT_CHAIN = re.compile(r"^\tchain (\S+) \{")
_NFT_RULE = re.compile(r"^\t\t(.*?)\s*# handle (\d+)$")
_NFT_COUNTER = re.compile(r"\s*\bcounter packets (\d+) bytes (\d+)")
_NFT_IPTABLES = re.compile(r"table (\S+) (\S+) is managed by iptables-nft")


def parse_nft(text: str, stderr: str = "") -> dict:
    """`nft -a list ruleset` -> {"FAMILY TABLE": {chain: [{rule, handle, packets, bytes}]}},
    rules in order; packets/bytes None where the rule carries no `counter`, and the rule's
    text without its counter.  The tables iptables-nft manages (nft warns of each on stderr)
    are left out: iptables-save reads them.  The text form, not -j: a rule then reads as nft
    prints it, and `# handle N` marks exactly the rule lines (set elements carry none)."""
    skip = {f"{f} {t}" for f, t in _NFT_IPTABLES.findall(stderr)}
    tables: dict[str, dict[str, list[dict]]] = {}
    table = chain = None
    for line in text.splitlines():
        m = _NFT_TABLE.match(line)
        if m:
            name = f"{m.group(1)} {m.group(2)}"
            table = None if name in skip else tables.setdefault(name, {})
            chain = None
            continue
        m = _NFT_CHAIN.match(line)
        if m and table is not None:
            chain = table.setdefault(m.group(1), [])
            continue
        if line == "\t}":
            chain = None
            continue
        m = _NFT_RULE.match(line)
        if m and chain is not None:
            rule, handle = m.groups()
            c = _NFT_COUNTER.search(rule)
            chain.append({"rule": " ".join(_NFT_COUNTER.sub("", rule).split()), "handle": int(handle),
                          "packets": int(c.group(1)) if c else None, "bytes": int(c.group(2)) if c else None})
    return tables


def iptables_counters(tables: dict) -> dict:
    """apply/iptables.parse_save()'s tables as JSON: {table: {chain: {policy, packets, bytes,
    rules: [{rule, packets, bytes}]}}} (a user chain has no policy, nor its counters)."""
    return {tname: {c.name: {"policy": c.policy, "packets": c.packets if c.policy else None,
                             "bytes": c.bytes if c.policy else None,
                             "rules": [{"rule": r.spec, "packets": r.packets, "bytes": r.bytes} for r in c.rules]}
                    for c in chains.values()} for tname, chains in tables.items()}


def netfilter(ns: str) -> dict:
    """The packet and byte counters of namespace ns's netfilter: {"iptables": {table: {chain:
    {policy, packets, bytes, rules: [{rule, packets, bytes}]}}}, "nftables": parse_nft()},
    from one `iptables-save -c` and one `nft -a list ruleset` inside it (apply/iptables.run:
    nsenter on a checked descriptor of the lab namespace).  A tool that is missing or fails
    is named under "errors"; the rest is still read."""
    from ..apply import iptables     # lazy: forks only when asked
    result: dict[str, Any] = {"iptables": {}, "nftables": {}, "errors": []}
    try:
        result["iptables"] = iptables_counters(iptables.tables(ns))
    except Exception as e:             # not installed, or failing: say so, read the rest
        result["errors"].append(f"iptables-save: {e}")
    try:
        proc = iptables.run(ns, ("nft", "-a", "list", "ruleset"), timeout=30)
        if proc.returncode != 0:
            raise NslabError(" ".join(proc.stderr.split()))
        result["nftables"] = parse_nft(proc.stdout, proc.stderr)
    except Exception as e:
        result["errors"].append(f"nft: {e}")
    return result


def netfilter_lines(nf: dict, every: bool = False) -> list[str]:
    """The counters as show prints them, `[packets:bytes]` first as `iptables-save -c` does:
    `[3:180] -t nat -A KUBE-SVC-X ... -j KUBE-SEP-Y`, `[1:60] -t nat -P POSTROUTING ACCEPT`,
    `[2:120] ip flannel-ipv4 postrtg: ip saddr ... masquerade`.  Only what counted a packet,
    unless every (then a rule without a counter reads `[-]`)."""
    lines = []
    for tname, chains in nf.get("iptables", {}).items():
        for cname, c in chains.items():
            if c["policy"] and (every or c["packets"]):
                lines.append(f"[{c['packets']}:{c['bytes']}] -t {tname} -P {cname} {c['policy']}")
            for r in c["rules"]:
                if every or r["packets"]:
                    lines.append(f"[{r['packets']}:{r['bytes']}] -t {tname} -A {cname} {r['rule']}".rstrip())
    for tname, chains in nf.get("nftables", {}).items():
        for cname, rules in chains.items():
            for r in rules:
                if every or r["packets"]:
                    count = "[-]" if r["packets"] is None else f"[{r['packets']}:{r['bytes']}]"
                    lines.append(f"{count} {tname} {cname}: {r['rule']}")
    return lines


def netfilter_summary(nf: dict) -> str:
    """What the compact listing left out: `of 41 rules (iptables 35, nft 6), 38 counted no
    packet (2 nft rules carry no counter); --all lists them`."""
    ipt = [r for chains in nf.get("iptables", {}).values() for c in chains.values() for r in c["rules"]]
    nft = [r for chains in nf.get("nftables", {}).values() for rules in chains.values() for r in rules]
    if not ipt and not nft:
        return "no iptables or nft rules"
    idle = sum(1 for r in ipt + nft if not r["packets"])
    bare = sum(1 for r in nft if r["packets"] is None)
    text = f"{idle} of {len(ipt) + len(nft)} rules (iptables {len(ipt)}, nft {len(nft)}) counted no packet"
    if bare:
        text += f" ({bare} nft {'rule carries' if bare == 1 else 'rules carry'} no counter)"
    return text + "; --all lists every rule"


# --- reading the kernel -------------------------------------------------------------------

def _netns_cookie(sock) -> bytes | None:
    try:
        return sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8)
    except OSError:
        return None


def _check_netns(ipr, ns: str) -> None:
    """The IPRoute socket must live in the namespace the thread is in (never the root one)."""
    here = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 0)
    try:
        mine, theirs = _netns_cookie(here), _netns_cookie(ipr.asyncore.socket)
    finally:
        here.close()
    if mine is not None and theirs is not None and mine != theirs:
        raise RuntimeError(f"pyroute2 socket is not in namespace {ns}")


def _read_namespace(ns: str, peer_fds: dict[str, int], full: bool = True) -> dict:
    from pyroute2 import IPRoute  # lazy: start-up

    with netns.enter(ns):
        with IPRoute() as ipr:
            _check_netns(ipr, ns)
            links = list(ipr.get_links())
            names = {m.get("index"): m.get_attr("IFLA_IFNAME") for m in links}
            out: dict[str, Any] = {"names": names}
            if not full:
                return out
            out["nsids"] = {}
            for other, fd in peer_fds.items():
                if other == ns:
                    continue
                try:
                    reply = ipr.get_netnsid(fd=fd)
                except Exception:
                    continue
                nsid = reply.get("nsid") if reply else None
                if nsid is not None and nsid not in NSID_NOT_ASSIGNED:
                    out["nsids"][nsid] = other
            out["links"] = [norm_link(m, names) for m in links]
            out["addrs"] = [norm_addr(m, names) for m in ipr.get_addr()]
            out["routes"] = [norm_route(m, names) for fam in (socket.AF_INET, socket.AF_INET6)
                             for m in ipr.get_routes(family=fam)]
            out["neigh"] = [norm_neigh(m, names) for fam in (socket.AF_INET, socket.AF_INET6)
                            for m in ipr.get_neighbours(family=fam)]
            out["fdb"] = [norm_fdb(m, names) for m in ipr.neigh("dump", family=AF_BRIDGE)]
        sock = open_route_socket()      # link conditions: root qdiscs, decoded by apply/qdisc.py
        try:
            out["qdiscs"] = {dev: q.describe() for dev, q in qdisc.read(sock).items() if q.conditions is not None}
        finally:
            sock.close()
    return _text(out)


def _text(value):
    """value with every bytes in it as text: pyroute2 hands a name that is not UTF-8 (the kernel
    takes any bytes, `ip link set dev eth0 name $'\\xff'`) over as bytes; it reads as its escapes
    (\\xff), as apply/qdisc.py reads it too."""
    if isinstance(value, bytes):
        return value.decode(errors="backslashreplace")
    if isinstance(value, dict):
        return {_text(k): _text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_text(v) for v in value]
    return value


def collect(st, nodes: list[str], counters: bool = True) -> dict:
    """Everything `nslab show` prints, as JSON-ready data: {lab, nodes: {node: {...}}}; with
    counters, each node's netfilter counters too (two processes a node, four nodes at once)."""
    from concurrent.futures import ThreadPoolExecutor  # lazy: start-up
    ns_node = {ns: node for node, ns in st.nodes.items()}
    # only namespaces verifiably the lab's (the record's names are checked, not trusted)
    lab_ns = list(verified_ids(st, dict.fromkeys(list(st.nodes.values()) + list(st.namespaces))))
    fds: dict[str, int] = {}
    pool = None
    try:
        for ns in lab_ns:
            try:
                fds[ns] = os.open(netns.path(ns), os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                pass
        pool = ThreadPoolExecutor(4) if counters else None
        nf = {n: pool.submit(netfilter, st.nodes[n]) for n in nodes if st.nodes[n] in fds} if pool else {}
        raw = {st.nodes[n]: _read_namespace(st.nodes[n], fds) for n in nodes if st.nodes[n] in fds}
        others: dict[str, dict[int, str]] = {}

        def names_in(ns: str) -> dict[int, str]:
            if ns in raw:
                return raw[ns]["names"]
            if ns not in others:
                others[ns] = _read_namespace(ns, fds, full=False)["names"]
            return others[ns]

        result: dict[str, Any] = {"lab": st.lab, "file": st.file, "degraded": health(st), "nodes": {}}
        for node in nodes:
            ns = st.nodes[node]
            info = st.info.get(node, {}) if isinstance(st.info.get(node), dict) else {}
            entry: dict[str, Any] = {"namespace": ns}
            if ns not in raw:
                entry["error"] = f"namespace {ns} does not exist"
                result["nodes"][node] = entry
                continue
            r = raw[ns]
            for link in r["links"]:
                link["addresses"] = [a for a in r["addrs"] if a["dev"] == link["name"]]
                for a in link["addresses"]:
                    a["text"] = format_addr(a)
                nsid = link.pop("link_netnsid")
                if link["kind"] == "veth" and link["link"]:
                    peer_ns = r["nsids"].get(nsid) if nsid is not None else ns
                    if peer_ns is not None:
                        peer_if = names_in(peer_ns).get(link["link"], f"if{link['link']}")
                        link["peer"] = f"{ns_node.get(peer_ns, peer_ns)}:{peer_if}"
                    else:
                        link["peer"] = f"if{link['link']} (netnsid {nsid}, outside the lab)"
                    link["details"] = f"veth peer {link['peer']}"
                link["conditions"] = r["qdiscs"].get(link["name"], "")
            entry["interfaces"] = r["links"]
            main = [x for x in r["routes"] if x["table"] != "local"]
            for x in main:
                x["text"] = format_route(x, show_table=x["table"] != "main")
            entry["routes"] = main
            neigh = [x for x in r["neigh"] if not set(x["state"]) & {"NOARP", "NONE"} and x["dst"]]
            for x in neigh:
                x["text"] = format_neigh(x)
            entry["neighbours"] = neigh
            for x in r["fdb"]:
                x["text"] = format_fdb(x)
            entry["fdb"] = r["fdb"]
            if "subnet.env" in info:
                entry["subnet_env"] = parse_subnet_env(info["subnet.env"])
            if "dataplane" in info:     # e.g. "ipip: userspace (kernel module missing): ..."
                entry["dataplane"] = info["dataplane"]
            if node in nf:
                entry["netfilter"] = nf[node].result()
            result["nodes"][node] = entry
        return result
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        for fd in fds.values():
            os.close(fd)


# --- rendering --------------------------------------------------------------------------------

def render(console, st, data: dict, every: bool = False) -> None:
    from rich.rule import Rule  # lazy: start-up
    from rich.text import Text  # lazy: start-up
    limit = out.fits(console)          # None when piped: lines complete, as iproute2 prints them

    def emit(text: str, indent: int, style: str = "") -> None:
        console.print(Text(out.wrap(text, limit, indent), style=style), soft_wrap=True)

    for line in data.get("restarted", []):
        console.print(Text(f"lab {data['lab']}: {line}", style="yellow"))
    if data.get("degraded"):       # nothing of the lab dies silently
        console.print(Text(f"lab {data['lab']} is degraded: {'; '.join(data['degraded'])}", style="bold red"))
    for node, entry in data["nodes"].items():
        title = Text.assemble((node, "bold"), f"  namespace {entry['namespace']}")
        console.print(Rule(title, align="left") if limit else title)
        for line in about_lines(entry["about"]) if entry.get("about") else []:
            emit(line, 4, "yellow")
        if entry.get("error"):
            console.print(Text(entry["error"], style="red"))
            continue
        links = [l for l in entry["interfaces"]
                 if not (l["kind"] == "loopback" and all(a["local"] == "127.0.0.1" for a in l["addresses"]))]
        if entry.get("dataplane"):
            console.print(Text(entry["dataplane"], style="yellow"))
        console.print(Text("interfaces", style="bold cyan"))
        width = max([len(l["name"] or "?") for l in links] + [5])
        kwidth = max([len(_kind(l)) for l in links] + [4])
        for link in links:
            state = link["state"] or "-"
            line = Text("  ")
            line.append((link["name"] or "?").ljust(width), style="bold")
            line.append("  " + _kind(link).ljust(kwidth) + "  ")
            line.append(state.ljust(7), style="green" if state in ("UP", "UNKNOWN") else "red")
            line.append(f" mtu {link['mtu']:<5}  {link['mac'] or ''}")
            if link["master"]:
                line.append(f"  master {link['master']}")
            if link["peer"]:
                line.append(f"  peer {link['peer']}")
            if limit and len(line.plain) > limit:     # a narrow terminal: wrapped at spaces, nothing cut
                wrapped = Text(out.wrap(line.plain, limit, width + 4, sep="  "))   # "peer X" stays together
                wrapped.stylize("bold", 2, 2 + len(link["name"] or "?"))
                line = wrapped
            console.print(line, soft_wrap=True)
            pad = " " * (width + 4)
            if link["details"] and link["details"] != link["kind"] and link["kind"] != "veth":
                emit(pad + link["details"], width + 6, "dim")
            for a in link["addresses"]:
                emit(pad + a["text"], width + 6)
            if link.get("conditions"):
                emit(pad + "conditions " + link["conditions"], width + 6, "magenta")
        if not links:
            console.print(Text("  (none)", style="dim"))
        _section(console, "routes", [x["text"] for x in entry["routes"]], limit)
        _section(console, "neighbours", [x["text"] for x in entry["neighbours"]], limit)
        fdb = [x for x in entry["fdb"] if not ("self" in x["flags"] and is_multicast_mac(x["mac"] or ""))]
        if any(x for x in fdb):
            _section(console, "fdb", [x["text"] for x in fdb], limit)
        if entry.get("subnet_env"):
            _section(console, "subnet.env", [f"{k}={v}" for k, v in entry["subnet_env"].items()], limit)
        if "netfilter" in entry:
            nf = entry["netfilter"]
            _section(console, "netfilter [packets:bytes]", netfilter_lines(nf, every), limit)
            for line in ([] if every else [netfilter_summary(nf)]) + nf.get("errors", []):
                emit("  " + line, 4, "dim")
        console.print()


def _kind(link: dict) -> str:
    kind = link["kind"] or "-"
    return f"{kind}/{link['slave_kind']}-port" if link["slave_kind"] else kind


def _section(console, title: str, lines: list[str], limit: int | None = None) -> None:
    from rich.text import Text  # lazy: start-up
    console.print(Text(title, style="bold cyan"))
    if not lines:
        console.print(Text("  (none)", style="dim"))
    for line in lines:
        parts = ("  " + line).split("\n\t")          # multipath: one nexthop a line
        text = "\n".join([out.wrap(parts[0], limit, 6)] + [out.wrap("      " + p, limit, 8) for p in parts[1:]])
        console.print(Text(text), soft_wrap=True)


# --- what a node is (from the resolved topology and the record) -----------------------------

def about(topo, st, node: str) -> dict:
    """What NODE is in the lab, beside what its kernel holds: its kind; for a cluster node its
    flannel role, pod CIDR, VTEP and pods; for a pod its node and containers; for a container
    node its image and container.  JSON-ready."""
    n = topo.nodes[node]
    facts: dict[str, Any] = {"kind": n.kind}
    cluster = getattr(topo, "cluster", None)
    if cluster is not None and node in cluster.nodes:
        cn = cluster.nodes[node]
        facts.update(role=f"flannel node ({cluster.backend.type})", pod_cidr=str(cn.subnet),
                     underlay=f"{cn.underlay} {cn.ip}", pods=list(cn.pods))
        device = cluster.backend.device
        if device:
            # flannel's VTEP: the subnet's .0 as a /32 on the device (vxlan: with its MAC)
            facts["vtep"] = f"{device} {cn.subnet.network_address}/32" + \
                (f" {cn.vtep_mac}" if cluster.backend.type == "vxlan" else "")
    if cluster is not None and node in cluster.pods:
        pod = cluster.pods[node]
        facts.update(node=pod.node, pod_ip=str(pod.ip.ip))
        if n.members:
            facts["containers"] = [m.name + (f" ({m.serve} :{m.port})" if m.serve else "") for m in n.members]
    if n.container is not None:
        facts["image"] = n.container.image
        made = [c for c in st.containers if c.get("node") == node]
        if made:
            facts["container"] = f"{made[0].get('name')} {str(made[0].get('id') or '')[:12]}".strip()
    return facts


def about_lines(facts: dict) -> list[str]:
    """`about` as show prints it: one fact a line."""
    lines = [f"kind {facts['kind']}" + (f", {facts['role']}" if facts.get("role") else "")]
    for key, label in (("pod_cidr", "pod CIDR"), ("vtep", "VTEP"), ("underlay", "underlay"),
                       ("node", "on node"), ("pod_ip", "pod IP"), ("image", "image"), ("container", "container")):
        if facts.get(key):
            lines.append(f"{label} {facts[key]}")
    if "pods" in facts:
        lines.append(f"pods {' '.join(facts['pods']) or '(none)'}")
    if facts.get("containers"):
        lines.append(f"containers {', '.join(facts['containers'])}")
    return lines


def inspect_rows(topo, st, data: dict) -> list[dict]:
    """One row per node (containerlab's inspect): kind, cluster role, addresses, status."""
    rows = []
    for node, entry in data["nodes"].items():
        facts = about(topo, st, node)
        addrs = [a["text"].split()[1] for link in entry.get("interfaces", []) if link["kind"] != "loopback"
                 for a in link["addresses"] if a["text"].startswith("inet ")]
        down = [link["name"] for link in entry.get("interfaces", [])
                if link["kind"] != "loopback" and link["state"] not in ("UP", "UNKNOWN")]
        status = "missing" if entry.get("error") else f"down: {','.join(down)}" if down else "up"
        role = facts.get("role") or (f"pod on {facts['node']}" if facts.get("node") else "")
        rows.append(dict(node=node, kind=facts["kind"], role=role, addresses=addrs, status=status))
    return rows


# --- services ---------------------------------------------------------------------------------

SERVICE_COLUMNS = ["service", "type", "cluster IP", "port", "node port", "endpoints", "chosen by"]


def service_rows(topo) -> list[dict]:
    """The lab's Kubernetes services as kube-proxy serves them: type, cluster IP, port (and
    protocol), node port, each endpoint as pod address:targetPort, kube-proxy's mode and the
    chain in it that picks the endpoint (KUBE-SVC-..., or nftables' service-...)."""
    cluster = getattr(topo, "cluster", None)
    if cluster is None:
        return []
    from ..compile.services import chains_of  # lazy: start-up
    chains = chains_of(cluster)
    rows = []
    for svc in cluster.services.values():
        pods = [(p, cluster.pods[p].ip.ip) for p in svc.endpoints if p in cluster.pods]
        # each endpoint with every port's target port ("10.244.0.3:{80,8081,5353}" for three)
        targets = ",".join(dict.fromkeys(str(p.target_port) for p in svc.ports))
        targets = f"{{{targets}}}" if "," in targets else targets
        eps = [f"{pod} {ip}:{targets}" for pod, ip in pods]
        picks = chains.get(svc.name) or [None] * len(svc.ports)
        ports = [dict(name=p.name, port=p.port, protocol=p.protocol, target_port=p.target_port,
                      node_port=p.node_port, chain=c if c != "-" else None,
                      endpoints=[f"{ip}:{p.target_port}" for _, ip in pods if p.target_port is not None])
                 for p, c in zip(svc.ports, picks)]
        rows.append(dict(name=svc.name, namespace=svc.namespace, type=svc.type, cluster_ip=str(svc.cluster_ip),
                         port=svc.port, protocol=svc.protocol, node_port=svc.node_port, endpoints=eps,
                         proxy_mode=cluster.proxy_mode, chain=ports[0]["chain"], ports=ports,
                         external_traffic_policy=svc.external_policy,
                         internal_traffic_policy=svc.internal_policy,
                         session_affinity_timeout=svc.affinity_timeout))
    return rows


def service_table(console, rows: list[dict]) -> None:
    """One row per service, a line per port; "chosen by" (the chain) is the first column to
    go on a narrow terminal."""
    def lines(r, f):
        return "\n".join(f(p) for p in r.get("ports") or [r])
    out.table(console, SERVICE_COLUMNS,
              [[r["name"], r["type"], r["cluster_ip"],
                lines(r, lambda p: f"{p['port']}/{p['protocol']}" + (f" ({p['name']})" if p.get("name") else "")),
                lines(r, lambda p: str(p["node_port"] or "-")),
                "\n".join(r["endpoints"]) or "(none)", lines(r, lambda p: p.get("chain") or "-")] for r in rows],
              title="services", optional=("chosen by",))
