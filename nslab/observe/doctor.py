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
  chains) present, and DROP/REJECT rules the plan did not write;
- the lab's processes (udp/ipip dataplanes, the agent) running.
Probes (one raw ICMP socket per source, observe/probe.py): pod pairs, a sample in big
labs with its size printed; a pair that fails with no packet-free finding to explain it
is reported itself, with the `nslab trace` that follows it.

Data flow: plan + kernel -> check() -> [Finding] -> render() / as_json().
"""
from __future__ import annotations

import ipaddress
import itertools
import os
import random
import re
import socket
import struct
import time
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


def _read(ns: str, sysctls: list[str], with_iptables: bool, neighbours: list[tuple[str, str]],
          with_fdb: bool) -> dict:
    """Links, main-table IPv4 routes, neighbours, FDB, the sysctls asked for (None where
    absent) and, if asked, iptables-save of namespace ns."""
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
    data["iptables"] = iptables.parse_save(iptables.save(ns, counters=False)) if with_iptables else None
    return data


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

def check(st, plan: P.Plan, report: Report | None = None) -> Report:
    """Every packet-free check over the lab's namespaces; findings in report.findings."""
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
    kernel: dict[str, dict] = {}
    for ns in plan.namespaces:
        ops = by_ns.get(ns, [])
        keys = list(sysctl_ops.get(ns, {})) + ["net.ipv4.conf.all.rp_filter"] + \
            [_dev_key(d, "rp_filter") for d in links.get(ns, {})]
        if not netns.exists(ns):
            report.findings.append(Finding(node_of.get(ns, ns), "link", "link", ns, "namespace exists",
                                           "gone", f"nslab down {st.lab}; nslab up again"))
            continue
        kernel[ns] = _read(ns, list(dict.fromkeys(keys)),
                           ns in forwards or any(isinstance(o, P.Iptables) for o in ops),
                           [(o.dev, o.address) for o in ops if isinstance(o, P.Neigh)],
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
                            "a device that is down drops every packet and the kernel drops its routes"))
            if mtu and k["mtu"] != mtu:
                add(Finding(node, "encap" if dev in underlays else _stage_of(dev), "mtu", dev, str(mtu), str(k["mtu"]),
                            f"ip -n {ns} link set dev {dev} mtu {mtu}",
                            "packets larger than the smallest MTU on the path are dropped (a black hole)"))
            if mac and k["mac"] and k["mac"].lower() != mac.lower() and dev.startswith(FLANNEL_DEVS):
                add(Finding(node, "encap", "link", f"{dev} address", mac, k["mac"],
                            f"ip -n {ns} link set dev {dev} address {mac}",
                            "the VTEP MAC changed (flanneld restarted): peers still send to the old one"))
        _check_routes(add, ns, node, by_ns.get(ns, []), data["routes"])
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
        if data["iptables"] is not None:
            _check_netfilter(add, ns, node, [o.text for o in by_ns.get(ns, []) if isinstance(o, P.Iptables)],
                             data["iptables"], ns in forwards)
    from ..runtime.agent import health   # lazy: start-up
    for missing in health(st):
        add(Finding("-", "daemon", "daemon", missing.split(" not running")[0], "running", missing,
                    f"nslab show -l {st.lab} (restarts the lab agent, which restarts the rest)"))
    return report


def _check_routes(add, ns: str, node: str, ops: list, routes: list[dict]) -> None:
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


def _check_netfilter(add, ns: str, node: str, texts: list[str], tables: dict, forwards: bool) -> None:
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
    for table, chain, spec in iptables.missing(ns, planned) if planned else []:
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


def explain_failures(report: Report) -> None:
    """A failed probe with no finding to explain it is a finding itself."""
    if report.failed_pairs and not report.findings:
        s, d = report.failed_pairs[0]
        more = len(report.failed_pairs) - 1
        report.findings.append(Finding(s, "route", "route", f"{s} -> {d}", "answered",
                                       "no answer" + (f" ({more} more pairs)" if more else ""),
                                       f"nslab trace {s} {d}",
                                       "no kernel entry differs from the plan: follow the packet"))


def diagnose(st, plan: P.Plan, topo, pair: tuple | None = None, proto: str = "ping", port: int | None = None,
             probes: bool = True) -> Report:
    t0 = time.monotonic()
    report = check(st, plan)
    if probes:
        if pair:
            probe_one(topo, report, pair[0], pair[1], proto, port)
        else:
            probe_pairs(topo, report)
        explain_failures(report)
    report.seconds = time.monotonic() - t0
    return report


# ---- output ------------------------------------------------------------------------------------

def as_json(report: Report) -> dict:
    return {"lab": report.lab, "healthy": report.healthy, "nodes": report.nodes, "probes": report.probed,
            "failed_pairs": [list(p) for p in report.failed_pairs], "seconds": round(report.seconds, 3),
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
        say(f"lab {report.lab}: healthy ({out.plural(report.nodes, 'namespace')} match the plan{tail})")
    else:
        say(f"lab {report.lab}: {out.plural(len(report.findings), 'finding')} "
            f"({out.plural(report.nodes, 'namespace')} read{tail})")
