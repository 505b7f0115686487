"""NAT for `nslab trace`: which address translations a tcp/udp probe went through, read from
the kernels that made them (note 001's services chapter: kube-proxy's DNAT to one endpoint,
KUBE-POSTROUTING's or flannel's MASQUERADE).

- conntrack: one NETLINK_NETFILTER dump per lab namespace and trace (pyroute2's Conntrack,
  opened inside the namespace), after the probe; an entry whose reply tuple is not the
  original tuple reversed is a translation: DNAT where the reply comes from elsewhere than
  the original destination, SNAT where it goes back to elsewhere than the original source.
- which rule: the namespace's nat table (one iptables-save, only where a DNAT happened):
  the KUBE-SEP-* chain whose DNAT goes to the endpoint, and the KUBE-SVC-* (or, for a Local
  traffic policy, KUBE-SVL-*) rule that jumps to it, with the probability kube-proxy wrote
  or its session affinity's `-m recent` check (the rule whose counter moved most).  In
  kube-proxy's nftables mode (no KUBE-SEP chain DNATs there), table `ip kube-proxy` (one
  `nft -j list table`): the element of @service-ips or @service-nodeports that matched the
  original destination, the endpoint-* chain whose dnat goes to the endpoint, and the
  service-* (or local-*) chain's `numgen random mod N vmap` element that chose it, or the
  endpoint's @affinity-* set that keeps a client on it.  In kube-proxy's ipvs mode (neither
  table DNATs there), `ipvsadm -Ln`: the virtual server the original destination is and
  its real server the connection went to.
The tuples a translation gives the probe let trace find it again after NAT (`aliases`).
"""
from __future__ import annotations

import json
import re
import socket
from dataclasses import dataclass

from ..apply import iptables, ipvs, netns, nftables

PROTO = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}


@dataclass(frozen=True)
class Tuple:
    src: str
    dst: str
    sport: int
    dport: int

    def text(self) -> str:
        return f"{self.src}:{self.sport} > {self.dst}:{self.dport}"


@dataclass
class Nat:
    """One translation in one node's conntrack: the request left it as `after`."""
    node: str
    ns: str
    before: Tuple
    after: Tuple
    dnat: bool
    snat: bool
    rule: str | None = None      # KUBE-SVC-... -> KUBE-SEP-... (nat table), or the nft chains

    def text(self) -> str:
        kinds = "+".join(k for k, on in (("DNAT", self.dnat), ("SNAT", self.snat)) if on)
        line = f"{kinds} {self.before.text()}  ->  {self.after.text()}"
        return line + (f"\n\t{self.rule}" if self.rule else "")


def dump(ns: str, proto: str) -> list[tuple[Tuple, Tuple]]:
    """(original, reply) tuples of the namespace's conntrack table for `proto`."""
    from pyroute2 import Conntrack  # lazy: start-up
    out = []
    with netns.enter(ns):
        ct = Conntrack()
        try:
            for e in ct.dump_entries():
                o, r = e.tuple_orig, e.tuple_reply
                if o.proto != PROTO[proto] or o.sport is None:
                    continue
                out.append((Tuple(o.saddr, o.daddr, o.sport, o.dport), Tuple(r.saddr, r.daddr, r.sport, r.dport)))
        finally:
            ct.close()
    return out


def follow(start: Tuple, tables: dict[str, list[tuple[Tuple, Tuple]]]) -> list[tuple[str, Tuple, Tuple]]:
    """The translations the request went through, in the order they happened: a node whose
    entry has the request's current tuple as original and a reply that is not its mirror
    turns it into (reply.dst <- reply.src) reversed; repeat from the new tuple."""
    steps, current, seen = [], start, {start}
    while True:
        hit = None
        for node, entries in tables.items():
            for orig, reply in entries:
                after = Tuple(reply.dst, reply.src, reply.dport, reply.sport)
                if orig == current and after != current:
                    hit = (node, current, after)
                    break
            if hit:
                break
        if hit is None or hit[2] in seen:
            return steps
        steps.append(hit)
        current = hit[2]
        seen.add(current)


def find(namespaces: dict[str, str], proto: str, start: Tuple) -> list[Nat]:
    """Every translation of the probe's connection in the lab (one conntrack dump per
    namespace), each named by the kube-proxy chains that chose its endpoint."""
    tables = {}
    for node, ns in namespaces.items():
        try:
            tables[node] = dump(ns, proto)
        except OSError:
            tables[node] = []            # no conntrack in this namespace (module not loaded)
    nats = []
    for node, before, after in follow(start, tables):
        n = Nat(node, namespaces[node], before, after, dnat=(before.dst, before.dport) != (after.dst, after.dport),
                snat=(before.src, before.sport) != (after.src, after.sport))
        if n.dnat:
            n.rule = chosen(n.ns, after.dst, after.dport, before.dst, before.dport) or \
                chosen_nft(n.ns, proto, before.dst, before.dport, after.dst, after.dport) or \
                chosen_ipvs(n.ns, proto, before.dst, before.dport, after.dst, after.dport)
        nats.append(n)
    return nats


def chosen(ns: str, ip: str, port: int, vip: str | None = None, vport: int | None = None) -> str | None:
    """`KUBE-SVC-X chose KUBE-SEP-Y (-m statistic ... probability P) DNAT to IP:PORT` from
    the namespace's nat table, or None where no kube-proxy chain DNATs there."""
    try:
        nat = iptables.tables(ns).get("nat", {})
    except Exception:                    # iptables-save missing or failing: say nothing
        return None
    # several services may DNAT to one endpoint (a pod behind two services): each has its SEP
    seps = [c.name for c in nat.values() if c.name.startswith("KUBE-SEP-")
            for r in c.rules if re.search(rf"--to-destination {re.escape(ip)}:{port}\b", r.spec)]
    if not seps:
        return None
    # the rules that jump to it: KUBE-SVC (Cluster policy) or KUBE-SVL (Local), a
    # probabilistic one or, with session affinity, `-m recent --rcheck`; the one whose
    # counter moved most is the one that chose (several may have, one connection each)
    jumps = [(r.packets, c.name, r.spec, sep) for c in nat.values() if c.name.startswith(("KUBE-SVC-", "KUBE-SVL-"))
             for r in c.rules for sep in seps if r.spec.endswith(f"-j {sep}")]
    # the service chain the original destination was sent to: KUBE-SERVICES' clusterIP rule,
    # or KUBE-NODEPORTS' to a KUBE-EXT chain, whose last rule goes on to KUBE-SVC/KUBE-SVL
    entry = _first_jump(nat, "KUBE-SERVICES", rf"-d {re.escape(str(vip))}(/32)? .*--dport {vport}\b") or \
        _first_jump(nat, "KUBE-NODEPORTS", rf"--dport {vport}\b")
    if entry and entry.startswith("KUBE-EXT-") and entry in nat and nat[entry].rules:
        entry = nat[entry].rules[-1].spec.rsplit("-j ", 1)[-1]
    jumps = [j for j in jumps if j[1] == entry] or jumps
    sep = seps[0]
    if jumps:
        packets, name, spec, sep = max(jumps, key=lambda j: j[0])
        prob = re.search(r"--probability (\S+)", spec)
        recent = re.search(r"--rcheck --seconds (\d+)", spec)
        how = (f"session affinity: -m recent within {recent.group(1)} s" if recent else
               f"probability {prob.group(1)}" if prob else "the last rule: what the others left")
        return f"{name} chose {sep} ({how}, {packets} packets): DNAT to {ip}:{port}"
    return f"{sep}: DNAT to {ip}:{port}"


def _first_jump(nat: dict, chain: str, pattern: str) -> str | None:
    rules = nat[chain].rules if chain in nat else []
    return next((r.spec.rsplit("-j ", 1)[-1] for r in rules if re.search(pattern, r.spec)), None)


def chosen_nft(ns: str, proto: str, vip: str, vport: int, ip: str, port: int) -> str | None:
    """`@service-ips 10.96.0.1 . tcp . 443 -> service-X; service-X chose endpoint-Y (numgen
    random mod 3: 0): DNAT to IP:PORT` from kube-proxy's nftables table, or None where it
    has none or no endpoint chain dnats there."""
    try:
        objects = nftables.table(ns, "kube-proxy")
    except Exception:                    # nft missing or failing: say nothing
        return None
    if not objects:
        return None
    rules = [o["rule"] for o in objects if "rule" in o]
    endpoints = [r["chain"] for r in rules for e in r.get("expr", [])
                 if isinstance(e, dict) and isinstance(e.get("dnat"), dict)
                 and e["dnat"].get("addr") == ip and e["dnat"].get("port") == port]
    if not endpoints:
        return None
    # the map element the original destination matched: a service IP, else a node port
    entry = None
    for o in objects:
        m = o.get("map")
        if not m or m.get("name") not in ("service-ips", "service-nodeports"):
            continue
        want = [vip, proto, vport] if m["name"] == "service-ips" else [proto, vport]
        for key, verdict in m.get("elem", []):
            if isinstance(key, dict) and key.get("concat") == want:
                target = next(iter(verdict.values()), {}).get("target") if isinstance(verdict, dict) else None
                entry = f"@{m['name']} {' . '.join(map(str, want))} -> {target}"
    # the chain the element sends to (an external- chain goes on to service- or local-)
    target_chain = entry.rsplit("-> ", 1)[-1] if entry else None
    if target_chain and target_chain.startswith("external-"):
        gotos = [e["goto"]["target"] for r in rules if r["chain"] == target_chain for e in r.get("expr", [])
                 if isinstance(e, dict) and isinstance(e.get("goto"), dict)]
        target_chain = gotos[-1] if gotos else None
    picks = []
    for r in rules:
        for e in r.get("expr", []):
            vmap = e.get("vmap") if isinstance(e, dict) else None
            gen = vmap.get("key", {}).get("numgen") if isinstance(vmap, dict) else None
            if not gen:
                continue
            for index, verdict in vmap.get("data", {}).get("set", []):
                target = verdict.get("goto", {}).get("target") if isinstance(verdict, dict) else None
                if target in endpoints:
                    picks.append((r["chain"] != target_chain, r["chain"], target,
                                  f"numgen {gen.get('mode')} mod {gen.get('mod')}: {index}"))
    endpoint = endpoints[0]
    if picks:
        _, chain, endpoint, how = min(picks)
        # sessionAffinity ClientIP: an `ip saddr @affinity-X goto endpoint-X` rule in that chain
        if any(r["chain"] == chain and "@affinity-" in json.dumps(r.get("expr", [])) and
               endpoint in json.dumps(r.get("expr", [])) for r in rules):
            how += f"; or, sticky, @affinity-{endpoint[len('endpoint-'):]}"
        line = f"{chain} chose {endpoint} ({how}): DNAT to {ip}:{port}"
        return f"{entry}\n\t{line}" if entry else line
    return f"{endpoint}: DNAT to {ip}:{port}"


def chosen_ipvs(ns: str, proto: str, vip: str, vport: int, ip: str, port: int) -> str | None:
    """`IPVS TCP 10.96.0.1:443 rr chose real server IP:PORT (Masq, weight 1, 1 of 3)` from
    the namespace's IPVS table (`ipvsadm -Ln`), or None where no virtual server is
    vip:vport or none of its real servers is ip:port."""
    try:
        table = ipvs.servers(ns)
    except Exception:                    # ipvsadm missing, or no ip_vs: say nothing
        return None
    vs = table.get((proto.upper(), vip, vport))
    if vs is None:
        return None
    reals = vs["reals"]
    for i, r in enumerate(reals):
        if (r["ip"], r["port"]) == (ip, port):
            return (f"IPVS {proto.upper()} {vip}:{vport} {vs['scheduler']} chose real server {ip}:{port} "
                    f"({r['forward']}, weight {r['weight']}, {i + 1} of {len(reals)})")
    return None


def annotate(paths: dict, nats: list[Nat], ports_of) -> None:
    """Put each translation on the first hop where the request is seen translated at its
    node, and the reverse translation on the hop where the reply left that node restored."""
    for n in nats:
        # the first sighting at that node already translated (a bridged port's frame meets
        # PREROUTING before cni0's tap sees it, with br_netfilter)
        req = next((h for h in paths["request"]["hops"] if h["node"] == n.node
                    and ports_of(h) == (n.after.sport, n.after.dport)), None)
        if req is not None:
            req["decisions"].append({"kind": "nat", "text": n.text()})
        rep = next((h for h in paths["reply"]["hops"] if h["node"] == n.node and h["dir"] == "out"
                    and ports_of(h) == (n.before.dport, n.before.sport)), None)
        if rep is not None:
            rep["decisions"].append({"kind": "un-nat", "text": f"reverse NAT (conntrack) "
                                     f"{n.after.dst}:{n.after.dport} > {n.after.src}:{n.after.sport}  ->  "
                                     f"{n.before.dst}:{n.before.dport} > {n.before.src}:{n.before.sport}"})


def mark_routing(paths: dict, nats: list[Nat], ports_of) -> None:
    """The source the kernel routed a translated packet with, on the hops that carry it
    rewritten (`_route_src`, for trace's route lookups): SNAT rewrites the request's source
    after routing (POSTROUTING), and the reply's source is restored after routing too."""
    for n in nats:
        for h in paths["request"]["hops"]:
            if n.snat and h["node"] == n.node and ports_of(h) == (n.after.sport, n.after.dport):
                h["_route_src"] = n.before.src
        for h in paths["reply"]["hops"]:
            if n.dnat and h["node"] == n.node and ports_of(h) == (n.before.dport, n.before.sport):
                h["_route_src"] = n.after.dst
