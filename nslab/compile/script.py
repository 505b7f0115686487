"""Render a plan as the plain iproute2 commands the notes teach.

Run by hand, in order, on a clean machine, the output builds the same lab (same names,
addresses, MACs, routes, neighbour and FDB entries).  Daemons that nslab runs itself (the
HTTP servers of pods) are printed as comments with the command that would stand in.
"""
from __future__ import annotations

import shlex
from ipaddress import IPv4Interface, IPv4Network

from .. import backends
from .. import plan as P
from ..model.containers import LABEL_LAB, container_name
from ..model.units import Conditions, tc_args


def _q(s) -> str:
    """Every value printed into a command goes through here: one shell word, whatever it is
    (validate already keeps names and keys to safe characters; this does not rely on it)."""
    return shlex.quote(str(s))


def _comment(text) -> str:
    """A comment stays one line: a newline in a value would start a command."""
    return " ".join(str(text).split())


def render_op(op) -> list[str]:
    # Names are always introduced by `name`/`dev`: a node called "master" would otherwise
    # be read by ip as the `master` keyword.
    n = f"ip -n {_q(op.ns)}" if hasattr(op, "ns") else "ip"
    if isinstance(op, P.Netns):
        if op.container is not None:      # a container node: started without a network, then named
            return script_lines(op)
        return [f"ip netns add {_q(op.ns)}"]
    if isinstance(op, P.Sysctl):
        return [f"ip netns exec {_q(op.ns)} sysctl -qw {_q(f'{op.key}={op.value}')}"]
    if isinstance(op, P.Link):
        mac = f" address {_q(op.mac)}" if op.mac else ""
        if op.kind == "veth":
            p = op.peer
            cmds = [f"ip link add name {_q(op.name)} netns {_q(op.ns)} mtu {_q(op.mtu)}{mac} type veth "
                    f"peer name {_q(p.name)} netns {_q(p.ns)} mtu {_q(p.mtu)} address {_q(p.mac)}"]
        elif op.kind == "vxlan":
            o = dict(op.vxlan)
            extra = f" dev {_q(o['dev'])}" if o.get("dev") else ""
            extra += " gbp" if o.get("gbp") else ""
            cmds = [f"{n} link add name {_q(op.name)} mtu {_q(op.mtu)}{mac} type vxlan id {_q(o['id'])} "
                    f"local {_q(o['local'])}{extra} dstport {_q(o['port'])} "
                    f"{'learning' if o.get('learning') else 'nolearning'}"]
        elif op.kind == "bridge":
            cmds = [f"{n} link add name {_q(op.name)} mtu {_q(op.mtu)}{mac} type bridge stp_state 0"]
        elif op.kind == "ipip":
            o = dict(op.ipip)
            remote = f" remote {_q(o['remote'])}" if o.get("remote") else ""
            pmtu = "" if o.get("pmtudisc", True) else " nopmtudisc"
            cmds = [f"{n} link add name {_q(op.name)} mtu {_q(op.mtu)} type ipip{remote} local {_q(o['local'])} ttl inherit"
                    f"{pmtu}"]
        elif op.kind == "tun":
            cmds = [f"{n} tuntap add dev {_q(op.name)} mode tun", f"{n} link set dev {_q(op.name)} mtu {_q(op.mtu)}"]
        else:
            cmds = [f"{n} link add name {_q(op.name)} mtu {_q(op.mtu)}{mac} type {_q(op.kind)}"]
        if op.master:
            cmds.append(f"{n} link set dev {_q(op.name)} master {_q(op.master)}")
        if op.up:
            cmds.append(f"{n} link set dev {_q(op.name)} up")
        return cmds
    if isinstance(op, P.Up):
        return [f"{n} link set dev {_q(op.dev)} up"]
    if isinstance(op, P.Addr):
        ifc = IPv4Interface(op.address)
        if op.peer:
            return [f"{n} addr add {_q(ifc.ip)} peer {_q(op.peer)} dev {_q(op.dev)}"]
        brd = " brd +" if ifc.network.prefixlen < 31 else ""
        return [f"{n} addr add {_q(op.address)}{brd} dev {_q(op.dev)}"]
    if isinstance(op, P.Route):
        dst = "default" if IPv4Network(op.dst).prefixlen == 0 else op.dst
        onlink = " onlink" if op.onlink else ""
        if len(op.nexthops) == 1:
            h = op.nexthops[0]
            via = f" via {_q(h.via)}" if h.via else ""
            scope = f" scope {_q(op.scope)}" if op.scope else ""
            return [f"{n} route add {_q(dst)}{via} dev {_q(h.dev)}{onlink}{scope}"]
        hops = " ".join(f"nexthop via {_q(h.via)} dev {_q(h.dev)}{onlink}" for h in op.nexthops)
        return [f"{n} route add {_q(dst)} {hops}"]
    if isinstance(op, P.Neigh):
        return [f"{n} neigh add {_q(op.address)} lladdr {_q(op.lladdr)} dev {_q(op.dev)} nud permanent"]
    if isinstance(op, P.Fdb):
        return [f"bridge -n {_q(op.ns)} fdb append {_q(op.lladdr)} dev {_q(op.dev)} dst {_q(op.dst)} self permanent"]
    if isinstance(op, P.BridgePort):
        if op.master:
            return [f"ip -n {_q(op.ns)} link set dev {_q(op.dev)} master {_q(op.master)}"]
        return [f"bridge -n {_q(op.ns)} link set dev {_q(op.dev)} hairpin {'on' if op.hairpin else 'off'}"]
    if isinstance(op, P.Serve):
        return [_comment(f"# {op.node}: an HTTP server on :{op.port} (nslab's lab agent); by hand: "
                         f"ip netns exec {_q(op.ns)} python3 -m http.server {_q(op.port)} &")]
    if isinstance(op, P.Qdisc):
        args = tc_args(Conditions.from_pairs(op.conditions), op.mtu)
        return [f"ip netns exec {_q(op.ns)} tc qdisc replace dev {_q(op.dev)} root " + " ".join(map(_q, args))]
    if isinstance(op, P.TxChecksum):
        return [f"ip netns exec {_q(op.ns)} ethtool -K {_q(op.dev)} tx {'on' if op.on else 'off'}"]
    if isinstance(op, P.Daemon):
        what = "the cluster DNS server (as CoreDNS answers a cluster's services)" if op.kind == "dns" \
            else backends.describe_daemon(op)
        return [_comment(f"# {op.node}: {what}"),
                "#   " + _comment(f"by hand: ip netns exec {_q(op.ns)} python3 -m {op.module} {_q(op.kind)} "
                                  f"{_q(op.dev)} " + " ".join(_q(f"{k}={v}") for k, v in op.config
                                                              if not isinstance(v, tuple)) + " &")]
    if isinstance(op, P.Iptables):
        # the here-document is quoted ('EOF'): the shell expands nothing inside it
        body = op.text.splitlines()
        if "EOF" in body:
            raise ValueError(f"iptables rules for {op.ns} contain a line 'EOF'")
        return [f"ip netns exec {_q(op.ns)} iptables-restore --noflush <<'EOF'", *body, "EOF"]
    if isinstance(op, P.Nftables):
        body = op.text.splitlines()
        if "EOF" in body:
            raise ValueError(f"nftables rules for {op.ns} contain a line 'EOF'")
        return [f"ip netns exec {_q(op.ns)} nft -f - <<'EOF'", *body, "EOF"]
    if isinstance(op, (P.Ipset, P.Ipvs)):
        body = op.text.splitlines()
        if "EOF" in body:
            raise ValueError(f"{type(op).__name__} text for {op.ns} contains a line 'EOF'")
        tool = "ipset restore" if isinstance(op, P.Ipset) else "ipvsadm-restore"
        return [f"ip netns exec {_q(op.ns)} {tool} <<'EOF'", *body, "EOF"]
    raise ValueError(f"cannot render {op!r}")


def render(plan: P.Plan) -> str:
    lines = ["#!/bin/sh", _comment(f"# lab {plan.lab}: generated by `nslab script`; run as root on a clean machine."),
             "set -e"]
    stage_titles = {P.STAGE_NAMESPACE: "namespaces and their sysctls", P.STAGE_LINK: "links",
                    P.STAGE_DEVICE: "overlay devices", P.STAGE_CONFIG: "addresses and links up",
                    P.STAGE_ROUTE: "neighbours, forwarding entries and routes", P.STAGE_PROCESS: "services"}
    stage = None
    for op in plan.staged():
        if op.stage != stage:
            stage = op.stage
            lines += ["", f"# --- {stage_titles[stage]}"]
        lines += render_op(op)
    if plan.hosts:
        lines += ["", "# names of the lab's nodes, for `ip netns exec` (as nslab does)"]
        entries = " ".join(_q(f"{addr} {name}") for name, addr in [("localhost", "127.0.0.1")]
                           + sorted(plan.hosts.items()))
        for ns in plan.namespaces:
            lines.append(f"mkdir -p {_q(f'/etc/netns/{ns}')} && printf '%s\\n' {entries} "
                         f"> {_q(f'/etc/netns/{ns}/hosts')}")
        resolv = _resolv_confs(plan)
        if resolv:
            lines += ["", "# the pods' resolv.conf, as kubelet writes it (nameserver: the cluster DNS)"]
            for ns, text in resolv.items():
                lines.append(f"printf '%s\\n' {' '.join(_q(x) for x in text.splitlines())} "
                             f"> {_q(f'/etc/netns/{ns}/resolv.conf')}")
    lines += ["", "# to remove it: " + removal(plan)]
    return "\n".join(lines) + "\n"


def _resolv_confs(plan: P.Plan) -> dict[str, str]:
    """{namespace: text} of the plan's pods that have kubelet's resolv.conf (compile/dns.py)."""
    return {op.ns: plan.notes[op.node]["resolv.conf"] for op in plan.ops
            if isinstance(op, P.Netns) and "resolv.conf" in plan.notes.get(op.node, {})}


def removal(plan: P.Plan) -> str:
    """One line undoing everything the script makes: its containers, namespaces and
    /etc/netns/<ns>/hosts files with their directories (and /etc/netns if that is then
    empty: `mkdir -p` may have made it).  Run it as `nslab script F | sed -n 's/^# to remove
    it: //p' | sh`.  rmdir, not rm -r: a file someone else put there stays."""
    cmds = []
    containers = [container_name(plan.lab, op.node) for op in plan.ops
                  if isinstance(op, P.Netns) and op.container is not None]
    if containers:
        cmds.append("docker rm -f " + " ".join(_q(c) for c in containers))
    body = 'ip netns del "$ns"'
    if plan.hosts:
        files = '"/etc/netns/$ns/hosts"' + (' "/etc/netns/$ns/resolv.conf"' if _resolv_confs(plan) else "")
        body += f'; rm -f {files}; rmdir "/etc/netns/$ns"'
    cmds.append(f"for ns in {' '.join(_q(ns) for ns in plan.namespaces)}; do {body}; done")
    if plan.hosts:
        cmds.append("rmdir /etc/netns 2>/dev/null || true")
    line = "; ".join(cmds)
    if "\n" in line or "\r" in line:   # a quoted line break would end the comment: never from validate
        raise ValueError("a name in the plan has a line break; cannot print its removal as one line")
    return line


def script_lines(op) -> list[str]:
    """`nslab script` for a container node: what nslab does, as docker and ip commands."""
    spec = op.container
    lab = op.ns[: -len(op.node) - 1]
    name = container_name(lab, op.node)
    argv = ["docker", "run", "-d", "--name", name, "--label", f"{LABEL_LAB}={lab}", "--hostname", op.node,
            "--network", "none"]
    for cap in spec.cap_add:
        argv += ["--cap-add", cap]
    for k, v in spec.env:
        argv += ["-e", f"{k}={v}"]
    argv += [spec.image, *spec.command]
    return [" ".join(shlex.quote(a) for a in argv),
            f"ip netns attach {shlex.quote(op.ns)} \"$(docker inspect -f '{{{{.State.Pid}}}}' {name})\""]
