"""`nslab doctor`: the recorded plan (what `up` applied: flannel's and kube-proxy's entries)
against what the kernel holds now, node by node, plus probes between pods.

It reads the kernel, never `nslab break`'s record: a route deleted with `ip route del`, a
neighbour changed with `ip neigh replace`, `sysctl -w net.ipv4.ip_forward=0` or
`iptables -P FORWARD DROP` are found the same way as the faults `nslab break` makes.

Checks that need no packet (each names the node, the kernel object, its key, what the plan
put there, what is there now and the command that puts it back):
- links: every device the plan made exists, is up when the plan set it up, has its MTU
  (a black hole found before a packet is lost) and MAC (a VTEP MAC that changed);
- routes, neighbours and FDB entries of the plan present and equal; a neighbour or FDB
  entry is compared with the MAC its VTEP has *now* (flanneld restarted with a new VTEP
  MAC: the peers keep the old one); routes the plan did not make (a blackhole) named too;
- sysctls the plan set (ip_forward, ...), and strict rp_filter anywhere (the plan never
  sets it: it drops the replies of an asymmetric path);
- netfilter in every namespace that forwards or holds rules of the plan: the FORWARD
  policy (Docker sets DROP), the plan's rules (flannel's masquerade, kube-proxy's
  chains) present, and DROP/REJECT rules the plan did not write; the plan's nftables
  text (kube-proxy's nftables mode, flannel's EnableNFTables) replayed into tables,
  chains and sets with their rule and element counts, against `nft -j list ruleset`;
- bridge-nf-call-iptables on nodes where kube-proxy runs beside a pod bridge, and UDP
  conntrack entries to a service that DNAT to no endpoint of it;
- the lab's processes (udp/ipip dataplanes, the agent) running, named by their node.
Probes (observe/probe.py): pod pairs (one raw ICMP socket per source), node pairs by node
IP, each service from each of those nodes (tcp connect; udp: a DNS query to port 53), a
sample in big labs with its size printed; a failure that no packet-free finding explains
is reported itself, with the `nslab trace` that follows it.

Data flow: plan + kernel -> check() -> [Finding] -> render() / as_json().
"""
from __future__ import annotations

import ipaddress
import itertools
import json
import os
import random
import re
import socket
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from .. import console as out
from .. import plan as P
from ..apply import iptables, netns
from ..apply import netlink as nl
from ..errors import NslabError
from . import show

STAGES = ("link", "encap", "route", "neighbour", "bridge", "netfilter", "decap", "reply path", "daemon")
OBJECTS = ("route", "neigh", "fdb", "sysctl", "mtu", "rule", "policy", "conntrack", "link", "daemon")
FLANNEL_DEVS = ("flannel.", "flannel0", "tunl")
PAIR_SAMPLE = 100          # endpoints probed at most (the sample size is printed)
BRIDGE_NF_CALL = "net.bridge.bridge-nf-call-iptables"


@dataclass
class Finding:
    node: str
    stage: str             # STAGES
    object: str            # OBJECTS
    key: str               # the entry: destination, address, MAC, sysctl name, device, chain
    expected: str          # what the plan (flannel, kube-proxy, the topology) put there
    actual: str            # what the kernel holds now
    fix: str               # the command that puts it back
    why: str = ""          # one line: what this breaks


@dataclass
class Report:
    lab: str
    findings: list[Finding] = field(default_factory=list)
    nodes: int = 0                   # namespaces read
    probed: str = ""                 # what the probes covered ("" when none were sent)
    failed_pairs: list[tuple[str, str]] = field(default_factory=list)
    failed_nodes: list[tuple[str, str]] = field(default_factory=list)
    failed_services: list[tuple] = field(default_factory=list)   # (node, service, ip:port, proto, detail)
    seconds: float = 0.0

    @property
    def healthy(self) -> bool:
        return not self.findings


# ---- reading the kernel ------------------------------------------------------------------------

# netlink dumps read by hand (apply/netlink.py's encoding): pyroute2 decodes ~45 us per
# message, 80 ms per pod namespace, 90 s for a 1,000-pod cluster; this reads it in ~1 ms.
RTM_GETROUTE, RTM_GETNEIGH, RTM_NEWNEIGH = 26, 30, 28
IFLA_LINKINFO_KIND = 1
NDMSG_LEN, RTMSG_LEN = nl.NDMSG.size, nl.RTMSG.size
_dump_seq = itertools.count(0x7D000000)


def _dump(sock, mtype: int, header: bytes):
    request = nl.message(mtype, nl.NLM_F_REQUEST | nl.NLM_F_DUMP, header)
    seq = next(_dump_seq) & 0xFFFFFFFF
    struct.pack_into("=I", request, 8, seq)
    sock.send(request)
    while True:
        buf = sock.recv(1 << 20)
        for kind, _flags, mseq, pos, length in nl.messages(buf):
            if mseq != seq:
                continue
            if kind == nl.NLMSG_DONE:
                return
            if kind == nl.NLMSG_ERROR:
                (code,) = struct.unpack_from("=i", buf, pos + 16)
                if code:
                    raise OSError(-code, f"netlink dump: {os.strerror(-code)}")
                return
            yield kind, buf, pos, length


def _mac(b: bytes | None) -> str | None:
    return ":".join(f"{x:02x}" for x in b) if b and len(b) == 6 else None


def _ip4(b: bytes | None) -> str | None:
    return socket.inet_ntop(socket.AF_INET, b) if b and len(b) == 4 else None


def _get_neighbours(sock, keys: list[tuple[str, str, int]]) -> list[dict]:
    """The IPv4 neighbour entries (dev, address, ifindex) asked for, one RTM_GETNEIGH each
    (`ip neigh get`, a hash lookup), sent in one batch; absent ones are left out."""
    pending, out, chunk = {}, [], bytearray()
    for dev, address, ifindex in keys:
        msg = nl.message(RTM_GETNEIGH, nl.NLM_F_REQUEST, nl.NDMSG.pack(socket.AF_INET, ifindex, 0, 0, 0),
                         nl.attr(nl.NDA_DST, nl.ip4(address)))
        seq = next(_dump_seq) & 0xFFFFFFFF
        struct.pack_into("=I", msg, 8, seq)
        pending[seq] = dev
        chunk += msg
    if chunk:
        sock.send(chunk)
    while pending:
        buf = sock.recv(1 << 20)
        for kind, _flags, seq, pos, length in nl.messages(buf):
            dev = pending.pop(seq, None)
            if dev is None or kind != RTM_NEWNEIGH:
                continue
            a = nl.attrs(buf, pos + 16 + NDMSG_LEN, pos + length)
            out.append({"dev": dev, "dst": _ip4(a.get(nl.NDA_DST)), "lladdr": _mac(a.get(nl.NDA_LLADDR))})
    return out


def _kernel_tables(sock, wanted: list[tuple[str, str]] = (), with_fdb: bool = True) -> dict:
    """Links, main-table IPv4 routes, IPv4 neighbours and bridge FDB of the socket's namespace,
    as the dicts observe/show.py's norm_* functions make (the fields doctor compares).
    Only the neighbours `wanted` (dev, address), each looked up: the kernel walks one table
    shared by every namespace for a neighbour dump (5 ms per namespace beside 1,000 others).
    The FDB (a walk of the namespace's own devices) only if asked."""
    links, names = {}, {}
    for _, buf, pos, length in _dump(sock, nl.RTM_GETLINK, nl.ifinfomsg(0)):
        _fam, _type, index, flags, _change = nl.IFINFOMSG.unpack_from(buf, pos + 16)
        a = nl.attrs(buf, pos + 16 + nl.IFINFOMSG.size, pos + length)
        name = a.get(nl.IFLA_IFNAME, b"").split(b"\0")[0].decode(errors="backslashreplace")
        info = nl.attrs(a[nl.IFLA_LINKINFO], 0, len(a[nl.IFLA_LINKINFO])) if nl.IFLA_LINKINFO in a else {}
        names[index] = name
        links[name] = {"name": name, "mtu": nl.U32.unpack(a[nl.IFLA_MTU])[0] if nl.IFLA_MTU in a else None,
                       "mac": _mac(a.get(nl.IFLA_ADDRESS)), "flags": ["UP"] if flags & nl.IFF_UP else [],
                       "kind": info.get(IFLA_LINKINFO_KIND, b"").split(b"\0")[0].decode() or None}
    routes = []
    header = nl.RTMSG.pack(socket.AF_INET, 0, 0, 0, 0, 0, 0, 0, 0)
    for _, buf, pos, length in _dump(sock, RTM_GETROUTE, header):
        fam, dst_len, _src, _tos, table, proto, _scope, rtype, _fl = nl.RTMSG.unpack_from(buf, pos + 16)
        a = nl.attrs(buf, pos + 16 + RTMSG_LEN, pos + length)
        table = nl.U32.unpack(a[nl.RTA_TABLE])[0] if nl.RTA_TABLE in a else table
        if fam != socket.AF_INET or table != nl.RT_TABLE_MAIN:
            continue
        dst = _ip4(a.get(nl.RTA_DST))
        dst = "default" if dst is None and not dst_len else dst if dst_len == 32 else f"{dst or '0.0.0.0'}/{dst_len}"
        hops = []
        mp = a.get(nl.RTA_MULTIPATH, b"")
        off = 0
        while off + nl.RTNEXTHOP.size <= len(mp):
            hlen, _hfl, _hops, ifindex = nl.RTNEXTHOP.unpack_from(mp, off)
            if hlen < nl.RTNEXTHOP.size:
                break
            ha = nl.attrs(mp, off + nl.RTNEXTHOP.size, off + hlen)
            hops.append({"gateway": _ip4(ha.get(nl.RTA_GATEWAY)), "dev": names.get(ifindex, f"if{ifindex}")})
            off += (hlen + 3) & ~3
        oif = nl.U32.unpack(a[nl.RTA_OIF])[0] if nl.RTA_OIF in a else None
        routes.append({"dst": dst, "type": show.RT_TYPES.get(rtype, str(rtype)), "table": "main",
                       "proto": show.RT_PROTOS.get(proto, proto), "gateway": _ip4(a.get(nl.RTA_GATEWAY)),
                       "dev": names.get(oif, f"if{oif}") if oif else None, "nexthops": hops})
    fdb = []
    index = {name: i for i, name in names.items()}
    neigh = _get_neighbours(sock, [(d, a, index[d]) for d, a in wanted if d in index])
    bridge_dump = _dump(sock, RTM_GETNEIGH, nl.NDMSG.pack(nl.AF_BRIDGE, 0, 0, 0, 0)) if with_fdb else ()
    for _, buf, pos, length in bridge_dump:
        fam, ifindex, _state, _flags, _type = nl.NDMSG.unpack_from(buf, pos + 16)
        if fam == nl.AF_BRIDGE:
            a = nl.attrs(buf, pos + 16 + NDMSG_LEN, pos + length)
            fdb.append({"dev": names.get(ifindex, f"if{ifindex}"), "mac": _mac(a.get(nl.NDA_LLADDR)),
                        "dst": _ip4(a.get(nl.NDA_DST))})
    return {"links": links, "routes": routes, "neigh": neigh, "fdb": fdb}


def _read(ns: str, sysctls: list[str], neighbours: list[tuple[str, str]], with_fdb: bool) -> dict:
    """Links, main-table IPv4 routes, neighbours, FDB and the sysctls asked for (None where
    absent) of namespace ns, read in this process (netlink, /proc)."""
    with netns.enter(ns):
        sock = nl.open_route_socket()
        try:
            data = _kernel_tables(sock, neighbours, with_fdb)
        finally:
            sock.close()
        values = {}
        with netns.sysctl_walks():
            for key in sysctls:
                try:
                    values[key] = " ".join(netns.read_sysctl(key).split())
                except OSError:
                    values[key] = None
        data["sysctls"] = values
    return data


# ---- nftables: the plan's text against the kernel's ruleset -------------------------------------

_NFT_LINE = re.compile(r"(add|insert|flush|delete) (table|chain|rule|set|map|element) (ip6?|inet) (\S+)(?: (\S+))?")


def _nft_elements(line: str) -> set[str]:
    """The keys an `add element` line puts in its set or map: a key added twice (a cluster
    IP in cluster-ips once per port of its service) is one element, as in the kernel."""
    body = line[line.find("{") + 1:line.rfind("}")]
    return {" ".join(e.split(" : ")[0].split()) for e in body.split(",") if e.strip()}


def nft_plan(texts: list[str]) -> dict:
    """What the plan's `nft -f` texts leave in the kernel, replayed line by line:
    (family, table) -> {"chains": {chain: [its rules' lines]}, "sets": {set or map: its keys},
    "lines": the table's lines} (a flush empties, a delete removes, as nft does)."""
    tables: dict[tuple, dict] = {}
    for line in (line for t in texts for line in t.splitlines()):
        m = _NFT_LINE.match(line)
        if not m:
            continue
        verb, kind, family, table, name = m.groups()
        key = (family, table)
        if kind == "table":
            if verb == "delete":
                tables.pop(key, None)
            else:
                t = tables.setdefault(key, {"chains": {}, "sets": {}, "lines": []})
                if verb == "flush":
                    t["chains"] = {c: [] for c in t["chains"]}
                    t["sets"] = {c: set() for c in t["sets"]}
            continue
        t = tables.setdefault(key, {"chains": {}, "sets": {}, "lines": []})
        t["lines"].append(line)
        if kind == "chain":
            if verb == "delete":
                t["chains"].pop(name, None)
            elif verb == "flush" or name not in t["chains"]:
                t["chains"][name] = []
        elif kind == "rule" and verb in ("add", "insert"):
            t["chains"].setdefault(name, []).append(line)
        elif kind in ("set", "map"):
            if verb == "delete":
                t["sets"].pop(name, None)
            elif verb == "flush" or name not in t["sets"]:
                t["sets"][name] = set()
        elif kind == "element" and verb == "add":
            t["sets"].setdefault(name, set()).update(_nft_elements(line))
    return tables


def _nft_ruleset(ns: str) -> dict:
    """`nft -j list ruleset` of ns, counted as nft_plan counts: (family, table) ->
    {"chains": {chain: rules}, "sets": {name: elements}}."""
    from ..apply.iptables import run    # one nsenter'd process, as apply/nftables.py
    proc = run(ns, ("nft", "-j", "list", "ruleset"), timeout=30)
    if proc.returncode != 0:
        raise NslabError(f"nft list ruleset in {ns} failed: {' '.join(proc.stderr.split())}")
    tables: dict[tuple, dict] = {}
    for obj in json.loads(proc.stdout or "{}").get("nftables", []):
        (kind, v), = obj.items()
        if kind == "metainfo":
            continue
        t = tables.setdefault((v.get("family"), v.get("table", v.get("name"))), {"chains": {}, "sets": {}})
        if kind == "chain":
            t["chains"].setdefault(v["name"], 0)
        elif kind == "rule":
            t["chains"][v["chain"]] = t["chains"].get(v["chain"], 0) + 1
        elif kind in ("set", "map"):
            t["sets"][v["name"]] = len(v.get("elem", []))
    return tables


def _check_nft(add, ns: str, node: str, lab: str, plan_tables: dict, kernel: dict) -> None:
    """Every table, chain, set and map of the plan's nftables text there, with as many rules
    and elements (a flushed kube-proxy chain or map, flannel's masquerade rule deleted)."""
    for (family, table), want in plan_tables.items():
        have = kernel.get((family, table))
        if have is None:
            add(Finding(node, "netfilter", "rule", f"{family} {table}", "table present (the plan's nft text)",
                        "missing", f"nslab down {lab}; nslab up again", "every rule of the table is gone"))
            continue
        for chain, rules in want["chains"].items():
            now = have["chains"].get(chain)
            if now is not None and now >= len(rules):
                continue
            head = [ln for ln in want["lines"] if ln.startswith(("add chain", "flush chain"))
                    and ln.split()[4:5] == [chain]]
            fix = "; ".join(([head[0]] if now is None and head else [f"flush chain {family} {table} {chain}"])
                            + rules)
            add(Finding(node, "netfilter", "rule", f"{table}/{chain}", f"{out.plural(len(rules), 'rule')}",
                        "chain missing" if now is None else f"{out.plural(now, 'rule')}",
                        f"ip netns exec {ns} nft '{fix}'",
                        "pods lose their way out (no masquerade)" if "masquerade" in " ".join(rules) else
                        "packets the plan's rules handle are not handled"))
        for name, keys in want["sets"].items():
            count, now = len(keys), have["sets"].get(name)
            if now is None or now < count:
                lines = [ln for ln in want["lines"] if ln.split()[4:5] == [name] and
                         (ln.startswith("add element") or now is None and ln.startswith(("add set", "add map")))]
                add(Finding(node, "netfilter", "rule", f"{table}/{name}", f"{out.plural(count, 'element')}",
                            "missing" if now is None else f"{out.plural(now, 'element')}",
                            f"ip netns exec {ns} nft '{'; '.join(lines)}'",
                            "the services it maps are no longer matched"))


def _dev_key(dev: str, name: str) -> str:
    return f"net.ipv4.conf.{dev.replace('.', '/')}.{name}"


def _route_dst(dst: str) -> str:
    """A plan's destination as show.norm_route names it (default, a bare /32 address)."""
    if dst in ("0.0.0.0/0", "default"):
        return "default"
    return dst[:-3] if dst.endswith("/32") else dst


def _hops(route: dict) -> set[tuple]:
    if route["nexthops"]:
        return {(h["gateway"], h["dev"]) for h in route["nexthops"]}
    return {(route["gateway"], route["dev"])}


def _stage_of(dev: str) -> str:
    if dev.startswith(FLANNEL_DEVS):
        return "encap"
    if dev.startswith(("cni", "veth")) or dev.startswith("br"):
        return "bridge"
    return "route"


_NO_CHAIN = iptables.Chain("", None, 0, 0)


# ---- the checks --------------------------------------------------------------------------------

def check(st, plan: P.Plan, report: Report | None = None, services: list = ()) -> Report:
    """Every packet-free check over the lab's namespaces; findings in report.findings.
    services: kube-proxy's view of the cluster's services (compile/services.services_of),
    for the conntrack entries and endpoints."""
    report = report or Report(st.lab)
    node_of = {ns: node for node, ns in st.nodes.items()}
    by_ns: dict[str, list] = {}
    links: dict[str, dict[str, tuple]] = {}          # ns -> dev -> (mtu, mac)
    sysctl_ops: dict[str, dict[str, str]] = {}       # ns -> key -> value
    for op in plan.ops:
        by_ns.setdefault(op.ns, []).append(op)
        if isinstance(op, P.Link):
            links.setdefault(op.ns, {})[op.name] = (op.mtu, op.mac)
            if op.peer:
                links.setdefault(op.peer.ns, {})[op.peer.name] = (op.peer.mtu, op.peer.mac)
        elif isinstance(op, P.Sysctl):
            sysctl_ops.setdefault(op.ns, {})[op.key] = op.value
    forwards = {ns for ns, keys in sysctl_ops.items() if keys.get("net.ipv4.ip_forward", "").strip() == "1"}
    # nodes where kube-proxy runs beside a bridge of pods: br_netfilter's hook must be on
    bridged = {op.ns for op in plan.ops if isinstance(op, P.Link) and op.kind == "bridge"}
    proxied = {op.ns for op in plan.ops if op.ns in bridged and (
        isinstance(op, P.Iptables) and "KUBE-" in op.text or isinstance(op, P.Nftables) and " kube-proxy " in op.text)}
    # what takes a process per namespace (iptables-save and -C, nft, conntrack) runs
    # meanwhile, a few at a time: they wait on exec and on the kernel, not on this process
    pool = ThreadPoolExecutor(8)
    tools: dict[tuple[str, str], object] = {}
    for ns in plan.namespaces:
        ops = by_ns.get(ns, [])
        texts = [o.text for o in ops if isinstance(o, P.Iptables)]
        if not netns.exists(ns):
            continue
        if ns in forwards or texts:
            tools[ns, "iptables"] = pool.submit(lambda ns=ns: iptables.parse_save(iptables.save(ns, counters=False)))
            planned = [r for t in texts for r in iptables.rules_of(t)]
            tools[ns, "missing"] = pool.submit(iptables.missing, ns, planned) if planned else None
        if any(isinstance(o, P.Nftables) for o in ops):
            tools[ns, "nft"] = pool.submit(_nft_ruleset, ns)
        if ns in proxied and any(s.protocol == "UDP" and s.endpoints for s in services):
            tools[ns, "conntrack"] = pool.submit(_udp_conntrack, ns)
    pool.shutdown(wait=False)

    def tool(ns: str, what: str):
        f = tools.get((ns, what))
        return f.result() if f is not None else None
    kernel: dict[str, dict] = {}
    for ns in plan.namespaces:
        ops = by_ns.get(ns, [])
        keys = list(sysctl_ops.get(ns, {})) + ["net.ipv4.conf.all.rp_filter"] + \
            [_dev_key(d, "rp_filter") for d in links.get(ns, {})] + ([BRIDGE_NF_CALL] if ns in proxied else [])
        if not netns.exists(ns):
            report.findings.append(Finding(node_of.get(ns, ns), "link", "link", ns, "namespace exists",
                                           "gone", f"nslab down {st.lab}; nslab up again"))
            continue
        kernel[ns] = _read(ns, list(dict.fromkeys(keys)), [(o.dev, o.address) for o in ops if isinstance(o, P.Neigh)],
                           any(isinstance(o, P.Fdb) for o in ops))
    report.nodes = len(kernel)
    # a VTEP's MAC now (a peer's neighbour and FDB entries must name it)
    mac_now: dict[str, str] = {}
    for ns, devs in links.items():
        for dev, (mtu, mac) in devs.items():
            k = kernel.get(ns, {}).get("links", {}).get(dev)
            if mac and k and k["mac"]:
                mac_now[mac] = k["mac"]
    add = report.findings.append
    endpoint_of = {}                    # pod -> "an endpoint of service S (ip:port)"
    owner = {op.address.split("/")[0]: node_of.get(op.ns) for op in plan.ops if isinstance(op, P.Addr)}
    for svc in services:
        for ep in svc.endpoints:
            pod = owner.get(ep.ip)
            if pod:
                endpoint_of.setdefault(pod, f"an endpoint of service {svc.name} ({ep.ip}:{svc.target_port})")
    underlays = {dict(op.vxlan).get("dev") for op in plan.ops if isinstance(op, P.Link) and op.vxlan}
    made_down = {(op.ns, op.name) for op in plan.ops if isinstance(op, P.Link) and not op.up}   # kube-ipvs0
    for ns, data in kernel.items():
        node = node_of.get(ns, ns)
        klinks = data["links"]
        for dev, (mtu, mac) in links.get(ns, {}).items():
            k = klinks.get(dev)
            if k is None:
                add(Finding(node, _stage_of(dev), "link", dev, "present", "missing",
                            f"nslab down {st.lab}; nslab up again", "the plan made this device"))
                continue
            if "UP" not in k["flags"] and (ns, dev) not in made_down:   # every device the lab makes is up
                add(Finding(node, _stage_of(dev), "link", dev, "up", "down", f"ip -n {ns} link set dev {dev} up",
                            "a device that is down drops every packet and the kernel drops its routes"
                            + (f"; {node} is {endpoint_of[node]}: kube-proxy's rules still DNAT connections "
                               f"to it, which get no answer" if node in endpoint_of else "")))
            if mtu and k["mtu"] != mtu:
                add(Finding(node, "encap" if dev in underlays else _stage_of(dev), "mtu", dev, str(mtu), str(k["mtu"]),
                            f"ip -n {ns} link set dev {dev} mtu {mtu}",
                            "packets larger than the smallest MTU on the path are dropped (a black hole)"))
            if mac and k["mac"] and k["mac"].lower() != mac.lower() and dev.startswith(FLANNEL_DEVS):
                add(Finding(node, "encap", "link", f"{dev} address", mac, k["mac"],
                            f"ip -n {ns} link set dev {dev} address {mac}",
                            "the VTEP MAC changed (flanneld restarted): peers still send to the old one"))
        down = {d for d, k in klinks.items() if "UP" not in k["flags"]}
        _check_routes(add, ns, node, by_ns.get(ns, []), data["routes"], down)
        _check_neigh_fdb(add, ns, node, by_ns.get(ns, []), data, mac_now)
        for key, value in sysctl_ops.get(ns, {}).items():
            now = data["sysctls"].get(key)
            if now is not None and now != " ".join(value.split()):
                add(Finding(node, "route" if key.endswith("ip_forward") else "netfilter"
                            if "bridge" in key else "reply path" if "rp_filter" in key else "route",
                            "sysctl", key, value, now, f"ip netns exec {ns} sysctl -w {key}={value}",
                            "without it the node stops forwarding" if key.endswith("ip_forward") else ""))
        all_rp = data["sysctls"].get("net.ipv4.conf.all.rp_filter")
        for key, now in data["sysctls"].items():
            if key.endswith(".rp_filter") and key not in sysctl_ops.get(ns, {}) and now == "1" and \
                    (key.endswith(".all.rp_filter") or all_rp != "1"):
                add(Finding(node, "reply path", "sysctl", key, "0", now, f"ip netns exec {ns} sysctl -w {key}=0",
                            "strict reverse-path filtering drops packets that arrive on another interface than "
                            "the reply would leave by (an asymmetric path)"))
        if (ns, "iptables") in tools:
            _check_netfilter(add, ns, node, [o.text for o in by_ns.get(ns, []) if isinstance(o, P.Iptables)],
                             tool(ns, "iptables"), ns in forwards, tool(ns, "missing") or [])
        if (ns, "nft") in tools:
            _check_nft(add, ns, node, st.lab, nft_plan([o.text for o in by_ns.get(ns, [])
                                                       if isinstance(o, P.Nftables)]), tool(ns, "nft"))
        bnf = data["sysctls"].get(BRIDGE_NF_CALL)
        if ns in proxied and bnf is not None and bnf != "1":
            add(Finding(node, "bridge", "sysctl", BRIDGE_NF_CALL, "1", bnf,
                        f"ip netns exec {ns} sysctl -w {BRIDGE_NF_CALL}=1",
                        "a reply from an endpoint on this node is bridged on cni0 past the reverse NAT: "
                        "pods here get no answer from their own node's endpoints (note 001)"))
        if (ns, "conntrack") in tools:
            _check_conntrack(add, node, ns, services, tool(ns, "conntrack"))
    from ..runtime.agent import health   # lazy: start-up
    daemons = {op.what: op for op in plan.ops if isinstance(op, P.Daemon)}
    for missing in health(st):
        what = missing.split(" not running")[0]
        op = daemons.get(what)
        add(Finding(op.node if op else "-", "daemon", "daemon", what, "running", missing.replace(what, "").strip(),
                    f"nslab show -l {st.lab} (restarts the lab agent, which restarts the rest)"
                    if op is None else f"nslab break -l {st.lab} --undo-all (if a break holds it down); "
                                       f"nslab show -l {st.lab}",
                    f"nothing forwards the {op.kind} tunnel's packets: traffic between {op.node}'s pods and "
                    f"other nodes stops" if op else "the lab's processes are not supervised"))
    return report


_CT_TUPLE = re.compile(r"src=(\S+) dst=(\S+) sport=(\d+) dport=(\d+)")


def _udp_conntrack(ns: str) -> list[tuple]:
    """(original, reply) tuples of the namespace's UDP conntrack entries: `conntrack -L -p
    udp` (one process; pyroute2's decoder takes 6 ms an entry, 1.5 s for a small lab)."""
    from ..apply.iptables import run
    from .nat import Tuple
    proc = run(ns, ("conntrack", "-L", "-p", "udp"), timeout=30)
    if proc.returncode != 0:
        return []                           # no conntrack in this namespace
    entries = []
    for line in proc.stdout.splitlines():
        t = _CT_TUPLE.findall(line)
        if len(t) >= 2:
            entries.append(tuple(Tuple(a, b, int(c), int(d)) for a, b, c, d in t[:2]))
    return entries


def _check_conntrack(add, node: str, ns: str, services: list, entries: list) -> None:
    """UDP conntrack entries to a service that DNAT to no endpoint of it now: kube-proxy
    deletes them when an endpoint goes (pkg/proxy/conntrack/cleanup.go)."""
    udp = {(s.cluster_ip, s.port): s for s in services if s.protocol == "UDP"}
    for orig, reply in entries:
        s = udp.get((str(orig.dst), orig.dport))
        if s is None or str(reply.src) == str(orig.dst):
            continue                        # not a service, or not DNATed
        eps = {ep.ip for ep in s.endpoints}
        if str(reply.src) in eps:
            continue
        add(Finding(node, "netfilter", "conntrack", f"udp {orig.src}:{orig.sport} > {orig.dst}:{orig.dport}",
                    f"DNAT to an endpoint of {s.name}: " + ", ".join(f"{ip}:{s.target_port}" for ip in sorted(eps)),
                    f"DNAT to {reply.src}:{reply.sport} (no endpoint of {s.name})",
                    f"ip netns exec {ns} conntrack -D -p udp --orig-dst {orig.dst} --reply-src {reply.src}",
                    "the entry outlived its endpoint: the client's datagrams keep going to it"))


def _check_routes(add, ns: str, node: str, ops: list, routes: list[dict], down: set = frozenset()) -> None:
    """The plan's routes there and equal; a route missing because its device is down is the
    link's finding (the kernel dropped it; `ip link set up` and the lab put it back)."""
    have: dict[str, list[dict]] = {}
    for r in routes:
        have.setdefault(r["dst"], []).append(r)
    planned = set()
    for op in ops:
        if not isinstance(op, P.Route):
            continue
        dst = _route_dst(op.dst)
        planned.add(dst)
        want = {(h.via, h.dev) for h in op.nexthops}
        via = " ".join(f"via {v} dev {d}" if v else f"dev {d}" for v, d in sorted(want, key=str))
        text = f"{op.dst} {via}" + (" onlink" if op.onlink else "")
        fix = f"ip -n {ns} route replace {text}"
        got = have.get(dst, [])
        stage = _stage_of(next(iter(want))[1]) if want else "route"
        stage = "encap" if stage == "encap" else "route"
        if not got and want and all(d in down for _, d in want):
            continue
        if not got:
            add(Finding(node, stage, "route", op.dst, text, "missing", fix,
                        "packets to it take the default route or are dropped"))
            continue
        r = got[0]
        if r["type"] != "unicast":
            add(Finding(node, "route", "route", op.dst, text, f"{r['type']} {op.dst}", fix,
                        "the kernel drops every packet to it"))
        elif _hops(r) != want:
            now = " ".join(f"via {g} dev {d}" if g else f"dev {d}" for g, d in sorted(_hops(r), key=str))
            why = "packets leave by another next hop than the plan's"
            if stage == "encap" and not any(d.startswith(FLANNEL_DEVS) for _, d in _hops(r)):
                why += " and skip the overlay (host-gw's route: across racks its next hop never answers ARP)"
            add(Finding(node, stage, "route", op.dst, text, f"{op.dst} {now}", fix, why))
    for r in routes:
        if r["dst"] in planned or r["proto"] == "kernel":
            continue
        text = f"{r['type']} {r['dst']}" if r["type"] != "unicast" else \
            f"{r['dst']} " + " ".join(f"via {g} dev {d}" if g else f"dev {d}" for g, d in sorted(_hops(r), key=str))
        kind = f"{r['type']} " if r["type"] != "unicast" else ""
        add(Finding(node, "route", "route", r["dst"], "no such route (the plan made none)", text,
                    f"ip -n {ns} route del {kind}{r['dst']}",
                    "it overrides the plan's routes for the addresses it covers"))


def _check_neigh_fdb(add, ns: str, node: str, ops: list, data: dict, mac_now: dict) -> None:
    neigh = {(n["dev"], n["dst"]): n for n in data["neigh"]}
    fdb: dict[tuple, list] = {}
    for f in data["fdb"]:
        fdb.setdefault((f["dev"], (f["mac"] or "").lower()), []).append(f)
    for op in ops:
        if isinstance(op, P.Neigh):
            want = mac_now.get(op.lladdr, op.lladdr)
            fix = f"ip -n {ns} neigh replace {op.address} lladdr {want} dev {op.dev} nud permanent"
            n = neigh.get((op.dev, op.address))
            if n is None or not n["lladdr"]:
                add(Finding(node, "neighbour", "neigh", f"{op.address} dev {op.dev}", want, "missing", fix,
                            "the remote VTEP's MAC is unknown: the kernel cannot build the inner frame"))
            elif n["lladdr"].lower() != want.lower():
                stale = n["lladdr"].lower() == op.lladdr.lower()
                add(Finding(node, "neighbour", "neigh", f"{op.address} dev {op.dev}", want, n["lladdr"], fix,
                            "stale: the VTEP's MAC changed (flanneld restarted) and this peer kept the old one"
                            if stale else "frames go to a MAC no VTEP has"))
        elif isinstance(op, P.Fdb):
            want = mac_now.get(op.lladdr, op.lladdr).lower()
            fix = f"bridge -n {ns} fdb replace {want} dev {op.dev} dst {op.dst} self permanent"
            got = fdb.get((op.dev, want), [])
            if not any(f["dst"] == op.dst for f in got):
                stale = want != op.lladdr.lower() and any(f["dst"] == op.dst for f in fdb.get((op.dev, op.lladdr.lower()), []))
                add(Finding(node, "encap", "fdb", f"{want} dev {op.dev}", f"dst {op.dst}",
                            f"dst {got[0]['dst']}" if got else
                            f"missing ({op.lladdr} dst {op.dst} is there: stale)" if stale else "missing", fix,
                            "the kernel does not know which host to send the VXLAN packet to"))


def _drops(specs) -> int:
    return sum(1 for spec in specs if {"DROP", "REJECT"} & set(spec.split()))


def _check_netfilter(add, ns: str, node: str, texts: list[str], tables: dict, forwards: bool,
                     missing: list) -> None:
    """missing: the plan's rules iptables -C did not find (iptables.missing)."""
    if forwards:
        want = "DROP" if any(re.search(r"^:FORWARD DROP", t, re.M) for t in texts) else "ACCEPT"
        chain = tables.get("filter", {}).get("FORWARD")
        now = chain.policy if chain is not None else "ACCEPT"
        if now != want:
            add(Finding(node, "netfilter", "policy", "filter FORWARD", want, now,
                        f"ip netns exec {ns} iptables -P FORWARD {want}",
                        "forwarded packets the rules do not accept are dropped (Docker sets DROP)"))
    planned = [r for t in texts for r in iptables.rules_of(t)]
    order: dict[tuple, list] = {}
    for table, chain, spec in planned:
        order.setdefault((table, chain), []).append(spec)
    for table, chain, spec in missing:
        pos = order[(table, chain)].index(spec) + 1
        add(Finding(node, "netfilter", "rule", f"{table} {chain}", f"-A {chain} {spec}", "missing",
                    f"ip netns exec {ns} iptables -t {table} -I {chain} {pos} {spec}",
                    "pods lose their way out (no masquerade)" if "MASQUERADE" in spec else ""))
    # DROP and REJECT rules the plan did not write (Docker's, a hand-made one): counted per
    # chain first; only a chain with more than the plan's is compared rule by rule, as
    # iptables writes the plan's back (apply/iptables.as_saved)
    for table, chains in tables.items():
        for name, chain in chains.items():
            if _drops(r.spec for r in chain.rules) <= _drops(order.get((table, name), [])):
                continue
            saved = iptables.as_saved(texts).get(table, {}).get(name, _NO_CHAIN)
            want = {r.spec for r in saved.rules}
            for r in chain.rules:
                if r.spec not in want and _drops([r.spec]):
                    add(Finding(node, "netfilter", "rule", f"{table} {name}", "no such rule (the plan made none)",
                                f"-A {name} {r.spec}", f"ip netns exec {ns} iptables -t {table} -D {name} {r.spec}",
                                "it drops packets the plan lets through"))


# ---- probes ------------------------------------------------------------------------------------

def probe_pairs(topo, report: Report, sample: int = PAIR_SAMPLE, seed: int = 0) -> None:
    """Ping every ordered pair of pods (a sample of `sample` endpoints in bigger labs)."""
    from . import checks, probe   # lazy: start-up
    eps = checks.pair_endpoints(topo)
    total = len(eps)
    if total > sample:
        eps = sorted(random.Random(seed).sample(eps, sample), key=lambda e: e.name)
    if len(eps) < 2:
        report.probed = "no pairs to probe (fewer than two pods)"
        return
    r = probe.all_pairs(eps)
    report.failed_pairs = list(r.missing)
    report.probed = (f"{r.reachable}/{r.pairs} pairs of {len(eps)} endpoints answered"
                     + (f" (a sample of {len(eps)} of {total})" if total > len(eps) else ""))


NODE_SAMPLE = 30           # cluster nodes whose pairs are pinged, and that probe each service
# a DNS query (id 0x6e73, "nslab.doctor." A): any answer, NXDOMAIN included, is reached
DNS_QUERY = bytes.fromhex("6e7301000001000000000000056e736c616206646f63746f720000010001")


def probe_nodes(topo, report: Report, sample: int = NODE_SAMPLE, seed: int = 0) -> list:
    """Ping every ordered pair of cluster nodes by their node IPs (a sample in big clusters);
    returns the nodes probed (services are probed from the same ones)."""
    from . import probe   # lazy: start-up
    if topo.cluster is None:
        return []
    eps = [probe.Endpoint(n.name, topo.nodes[n.name].ns, str(n.ip)) for n in topo.cluster.nodes.values()]
    total = len(eps)
    if total > sample:
        eps = sorted(random.Random(seed).sample(eps, sample), key=lambda e: e.name)
    if len(eps) >= 2:
        r = probe.all_pairs(eps)
        report.failed_nodes = list(r.missing)
        report.probed += (f"; {r.reachable}/{r.pairs} node pairs" +
                          (f" (a sample of {len(eps)} of {total} nodes)" if total > len(eps) else ""))
    return eps


def probe_services(topo, report: Report, nodes: list, services: list) -> None:
    """Each service (ClusterIP:port) from each node probed: tcp connect, or a datagram (a DNS
    query to port 53) that must be answered, all in parallel.  Not probed, as no answer is
    due there: a UDP port other than DNS (doctor cannot know what its server answers), and
    an internalTrafficPolicy Local service from a node without a local endpoint (kube-proxy
    drops that traffic by design: KUBE-SVL / local- chains with no endpoint)."""
    from . import probe   # lazy: start-up

    def due(n, s) -> bool:
        if s.protocol == "UDP" and s.port != 53:
            return False
        return not s.internal_local or any(ep.node == n.name for ep in s.endpoints)
    jobs = [(n, s) for s in services if s.endpoints and s.cluster_ip for n in nodes if due(n, s)]
    if not jobs:
        return

    def one(job):
        n, s = job
        if s.protocol == "UDP":
            return probe.udp(n.ns, s.cluster_ip, s.port, DNS_QUERY, 2.0)
        if s.protocol == "TCP":
            return probe.tcp(n.ns, s.cluster_ip, s.port, probe.new_marker("doctor"), 2.0)
        return None
    with ThreadPoolExecutor(min(32, len(jobs))) as pool:
        results = list(pool.map(one, jobs))
    done = [(job, o) for job, o in zip(jobs, results) if o is not None]
    report.failed_services = [(n.name, s.name, f"{s.cluster_ip}:{s.port}", s.protocol.lower(), o.detail)
                              for (n, s), o in done if not o.ok]
    report.probed += (f"; {len(done) - len(report.failed_services)}/{len(done)} service probes "
                      f"({out.plural(len({s.name for _, s in jobs}), 'service')}, "
                      f"{out.plural(len(nodes), 'node')})")


def probe_one(topo, report: Report, src: str, dst: str, proto: str = "ping", port: int | None = None) -> None:
    from . import probe   # lazy: start-up
    nodes = topo.nodes
    if src not in nodes:
        raise NslabError(f"lab {topo.name} has no node {src!r}")
    target = nodes[dst].addresses[0].ip if dst in nodes and nodes[dst].addresses else dst
    try:
        ipaddress.ip_address(str(target))
    except ValueError:
        raise NslabError(f"{dst!r} is neither a node of lab {topo.name} nor an address") from None
    kind = {"icmp": "ping", "ping": "ping"}.get(proto, proto)
    o = probe.send(kind, nodes[src].ns, str(target), port, probe.new_marker("doctor"), 2.0)
    report.probed = f"{kind} {src} -> {dst}" + (f":{port}" if port else "") + \
        (": answered" if o.ok else f": failed ({o.detail})")
    if not o.ok:
        report.failed_pairs = [(src, dst)]


def explain_failures(report: Report, chains: dict | None = None) -> None:
    """A failed probe with no finding to explain it is a finding itself: the first failed
    pair of pods and of nodes (stage route), each service that failed from a node (stage
    netfilter, the kube-proxy chain that picks its endpoint)."""
    if report.findings:
        return
    for failed in (report.failed_pairs, report.failed_nodes):
        if failed:
            s, d = failed[0]
            more = len(failed) - 1
            report.findings.append(Finding(s, "route", "route", f"{s} -> {d}", "answered",
                                           "no answer" + (f" ({more} more pairs)" if more else ""),
                                           f"nslab trace -l {report.lab} {s} {d}",
                                           "no kernel entry differs from the plan: follow the packet"))
    seen = set()
    for node, name, target, proto, detail in report.failed_services:
        if name in seen:
            continue
        seen.add(name)
        picks = (chains or {}).get(name) or ["-"]      # per port; the probe went to the first
        report.findings.append(Finding(node, "netfilter", "rule", picks[0] if picks[0] != "-" else f"service {name}",
                                       f"{proto} {target} (service {name}) answered", detail,
                                       f"nslab trace -l {report.lab} {node} {target} --proto {proto}",
                                       "no kernel entry differs from the plan: follow the packet through "
                                       "kube-proxy's DNAT"))


def diagnose(st, plan: P.Plan, topo, pair: tuple | None = None, proto: str = "ping", port: int | None = None,
             probes: bool = True) -> Report:
    t0 = time.monotonic()
    from ..compile.services import chains_of, services_of   # lazy: start-up
    cluster = topo.cluster
    services = services_of(cluster) if cluster is not None else []
    sent = Report(st.lab)            # the probes' results, merged into the report below
    with ThreadPoolExecutor(1) as pool:
        # the probes (mostly waiting for answers) run while check() reads the kernel
        if probes and pair:
            probing = pool.submit(probe_one, topo, sent, pair[0], pair[1], proto, port)
        elif probes:
            probing = pool.submit(lambda: (probe_pairs(topo, sent),
                                           probe_services(topo, sent, probe_nodes(topo, sent), services)))
        report = check(st, plan, services=services)
        if probes:
            probing.result()
    report.probed, report.failed_pairs = sent.probed, sent.failed_pairs
    report.failed_nodes, report.failed_services = sent.failed_nodes, sent.failed_services
    if probes:
        explain_failures(report, chains_of(cluster) if cluster is not None else {})
    report.seconds = time.monotonic() - t0
    return report


# ---- output ------------------------------------------------------------------------------------

def as_json(report: Report) -> dict:
    return {"lab": report.lab, "healthy": report.healthy, "nodes": report.nodes, "probes": report.probed,
            "failed_pairs": [list(p) for p in report.failed_pairs],
            "failed_node_pairs": [list(p) for p in report.failed_nodes],
            "failed_services": [{"node": n, "service": s, "target": t, "proto": p, "detail": d}
                                for n, s, t, p, d in report.failed_services], "seconds": round(report.seconds, 3),
            "findings": [asdict(f) for f in report.findings]}


def render(report: Report) -> None:
    """Plain lines (80 columns, piped alike): one block per finding."""
    import textwrap
    say = out.say

    def field_(name: str, text: str, wrap: bool = True) -> None:
        head = f"  {name + ':':<10}"
        if not wrap:                    # a command stays one line: it is copied as it is
            say(head + text)
            return
        say(textwrap.fill(text, 80, initial_indent=head, subsequent_indent=" " * len(head)))
    for f in report.findings:
        say(f"{f.node}: {f.object} {f.key} ({f.stage})")
        field_("expected", f.expected)
        field_("actual", f.actual)
        if f.why:
            field_("why", f.why)
        field_("fix", f.fix, wrap=False)
    tail = f"; {report.probed}" if report.probed else ""
    if report.healthy:
        line = f"lab {report.lab}: healthy ({out.plural(report.nodes, 'namespace')} match the plan{tail})"
    else:
        line = (f"lab {report.lab}: {out.plural(len(report.findings), 'finding')} "
                f"({out.plural(report.nodes, 'namespace')} read{tail})")
    say(textwrap.fill(line, 80, subsequent_indent="  ", break_on_hyphens=False))
