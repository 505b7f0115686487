"""A picture of a topology: graphviz DOT (rendered by `dot`) or mermaid text.

One drawing model, two renderers.  `build(topo)` decides what is drawn: routers, segment
bridges, hosts and pods as boxes of distinct shapes; every veth pair once, labelled with
the interface names and addresses at its ends; each segment (rack) a group holding its
bridge, its members and its gateway; each cluster node a group holding its pods; overlay
paths between cluster nodes (vxlan, ipip, udp tunnels; DirectRouting and host-gw routes)
and node tunnels as coloured dashed edges that do not pull the layout around.
"""
from __future__ import annotations

import html
import json
import os
import re
import subprocess
from dataclasses import dataclass, field

from .. import backends
from ..errors import PrerequisiteError, UsageError
from .. import spawn

# Overlay styles: colour and the words of the legend, each backend's own (its module's
# `style`), and "direct" for a pair its backend routes without encapsulation.
OVERLAY = {**{b.name: (b.style.colour, b.style.legend) for b in backends.all() if b.style != backends.DIRECT},
           "direct": (backends.DIRECT.colour, backends.DIRECT.legend)}
FILL = {"router": "#d6e4f0", "switch": "#e8e8e8", "host": "#fdf2d0", "pod": "#dcefd8", "service": "#f3e5f5"}
SERVICE_EDGE = "#8e24aa"      # a service to its endpoints (kube-proxy's DNAT), dotted


@dataclass
class GNode:
    id: str
    kind: str                  # router | switch | host | pod | service
    title: str
    lines: list[str] = field(default_factory=list)   # interfaces that no edge shows
    group: str | None = None
    top: list[tuple[str, str]] = field(default_factory=list)      # (interface, label) facing up
    bottom: list[tuple[str, str]] = field(default_factory=list)   # ... facing down


@dataclass
class GEdge:
    a: str
    b: str
    a_label: str = ""          # interface (and address) at a's end
    b_label: str = ""
    a_port: str | None = None  # the interface at a's end (a port cell in DOT)
    b_port: str | None = None
    label: str = ""
    overlay: str | None = None     # a key of OVERLAY for overlay edges
    service: bool = False          # a service to one of its endpoints
    ends: str = ""                 # an overlay edge's underlay addresses (10.0.0.21 - 30.0.0.23)
    a_iface: str | None = None     # a link's interfaces at its two ends, labelled or not
    b_iface: str | None = None


@dataclass
class GGroup:
    id: str
    label: str
    kind: str                  # segment | node
    parent: str | None = None


@dataclass
class Drawing:
    title: str
    overlay: str | None = None     # the cluster backend's overlay kind (named in the legend)
    nodes: dict[str, GNode] = field(default_factory=dict)
    edges: list[GEdge] = field(default_factory=list)
    groups: dict[str, GGroup] = field(default_factory=dict)


def build(topo) -> Drawing:
    d = Drawing(title=_title(topo))
    cluster = topo.cluster
    gateways: dict[str, list[str]] = {}
    for seg in topo.segments.values():
        if seg.gateway:
            gateways.setdefault(seg.gateway, []).append(seg.name)

    for node in topo.nodes.values():
        kind = node.kind
        title = node.bridges[0].name if kind == "switch" and node.bridges else node.name
        d.nodes[node.name] = GNode(node.name, kind, title)
        if kind == "switch":
            seg = topo.segments.get(node.name)
            d.groups[node.name] = GGroup(node.name, f"{node.name}  {seg.subnet}" if seg and seg.subnet else node.name,
                                         "segment")
            d.nodes[node.name].group = node.name
    for node in topo.nodes.values():
        g = d.nodes[node.name]
        segs = [i.segment for i in node.ifaces if i.segment]
        if node.kind == "router" and len(gateways.get(node.name, [])) == 1 and not _transit(node, topo):
            g.group = gateways[node.name][0]             # a rack's leaf sits in its rack
        elif node.kind == "host" and len(segs) == 1:
            g.group = segs[0]
        if cluster is not None and node.name in cluster.nodes:
            cn = cluster.nodes[node.name]
            if cn.pods:
                d.groups["node:" + node.name] = GGroup("node:" + node.name, f"{node.name}  pods {cn.subnet}", "node",
                                                      parent=g.group)
                g.group = "node:" + node.name
            if cluster.backend.device:
                g.lines.append(f"{cluster.backend.device} {cn.subnet.network_address}/32")
        elif node.kind == "pod" and cluster is not None and node.name in cluster.pods:
            g.group = "node:" + cluster.pods[node.name].node
        for b in node.bridges:
            if node.kind != "switch":
                g.lines.append(f"{b.name} {b.ip}" if b.ip else b.name)
        for t in node.tunnels:
            g.lines.append(f"{t.name} {t.ip.ip if t.ip else ''}".strip())

    level = {name: _level(n, gateways) for name, n in topo.nodes.items()}
    seen = set()
    for node in topo.nodes.values():
        for i in node.ifaces:
            key = frozenset([(node.name, i.name), (i.peer_node, i.peer_name)])
            if key in seen or i.peer_node not in topo.nodes:
                continue
            seen.add(key)
            peer = topo.nodes[i.peer_node].iface(i.peer_name)
            ends = [(node, i), (topo.nodes[i.peer_node], peer)]
            ends.sort(key=lambda e: level[e[0].name])          # upper end first: dot ranks tail above head
            (na, ia), (nb, ib) = ends
            la, lb = _end_label(na, ia), _end_label(nb, ib)
            d.edges.append(GEdge(na.name, nb.name, la, lb, a_port=ia.name if la else None,
                                 b_port=ib.name if lb else None, label=_conditions_label(na, ia, nb, ib),
                                 a_iface=ia.name, b_iface=ib.name))
            if la:
                d.nodes[na.name].bottom.append((ia.name, la))
            if lb:
                d.nodes[nb.name].top.append((ib.name, lb))

    if cluster is not None:
        d.overlay = cluster.backend.type
        _overlay_edges(d, cluster)
        _services(d, cluster)
    _tunnel_edges(d, topo)
    return d


def _services(d: Drawing, cluster) -> None:
    """Each service a box of its own (type, cluster IP:port, node port), dotted to the pods
    kube-proxy sends it to."""
    for svc in cluster.services.values():
        sid = f"svc/{svc.name}"
        lines = [f"{svc.type} {svc.cluster_ip}:{svc.port}/{svc.protocol}"]
        if svc.node_port:
            lines.append(f"nodePort {svc.node_port}")
        d.nodes[sid] = GNode(sid, "service", f"service {svc.name}", lines)
        for pod in svc.endpoints:
            if pod in d.nodes:
                d.edges.append(GEdge(sid, pod, label=f":{svc.target_port}", service=True))


def _title(topo) -> str:
    c = topo.cluster
    if c is None:
        return f"lab {topo.name}"
    return f"lab {topo.name}: flannel {backends.title(c.backend)}, pod network {c.network}"


def _transit(node, topo) -> bool:
    """A router linked to two or more other routers (a spine): drawn above the racks, even
    where it is also one segment's gateway (the services lab's spine and its `internet`)."""
    peers = {i.peer_node for i in node.ifaces if i.peer_node in topo.nodes and topo.nodes[i.peer_node].kind == "router"}
    return len(peers) >= 2


def _level(node, gateways) -> int:
    """Top to bottom: transit routers, gateway routers, segment bridges, hosts, pods."""
    if node.kind == "router":
        return 0 if node.name not in gateways else 1
    return {"switch": 2, "host": 3, "pod": 4}.get(node.kind, 3)


def _end_label(node, iface) -> str:
    if node.kind == "switch":
        # a segment's bridge port: only worth naming when the user named it (br-veth0)
        return iface.name if iface.name != iface.peer_node else ""
    return f"{iface.name} {iface.ip}" if iface.ip else iface.name


def _conditions_label(na, ia, nb, ib) -> str:
    """Link conditions on an edge: once when both ends send alike, else per direction."""
    ca, cb = getattr(ia, "conditions", None), getattr(ib, "conditions", None)
    if ca == cb:
        return ca.describe() if ca is not None else ""
    return "; ".join(f"{x.name}→ {c.describe()}" for x, c in ((na, ca), (nb, cb)) if c is not None)


def _overlay_edges(d: Drawing, cluster) -> None:
    config = cluster.backend
    backend = backends.get(config.type)
    nodes = list(cluster.nodes.values())
    ip = {n.name: str(n.ip) for n in nodes}     # once per node: 1,000 nodes make 499,500 pairs
    label = backend.edge_label(config)
    for x, m in enumerate(nodes):
        for n in nodes[x + 1:]:
            ends = f"{ip[m.name]} - {ip[n.name]}"       # one edge per pair of nodes, named by its ends
            if backend.direct(config, m, n):
                d.edges.append(GEdge(m.name, n.name, label="direct", overlay="direct", ends=ends))
            else:
                d.edges.append(GEdge(m.name, n.name, label=label, overlay=config.type, ends=ends))


def _tunnel_edges(d: Drawing, topo) -> None:
    """A node's tunnels: (note 003's tunl1 <-> tunl2), drawn once per pair of nodes."""
    owner = {str(i.ip.ip): n.name for n in topo.nodes.values() for i in n.ifaces if i.ip}
    pairs = set()
    for node in topo.nodes.values():
        for t in node.tunnels:
            peer = owner.get(str(t.remote)) if t.remote else None
            if peer and frozenset([node.name, peer]) not in pairs:
                pairs.add(frozenset([node.name, peer]))
                back = next((u.name for u in topo.nodes[peer].tunnels if str(u.remote) == str(t.local)), "?")
                d.edges.append(GEdge(node.name, peer, label=f"ipip {t.name} - {back}", overlay="ipip"))


# --- graphviz -------------------------------------------------------------------------------

BORDER = {"router": "#2c5d8a", "switch": "#777777", "host": "#9a7d0a", "pod": "#3c7d32", "service": "#8e24aa"}


def to_dot(d: Drawing, ids: bool = False) -> str:
    """DOT text; ids=True gives each node, group and edge an id (n/NAME, g/GROUP, e/INDEX) that
    graphviz's SVG keeps, for `nslab web`'s page to find them."""
    def id_(text: str) -> str:
        return f"id={_q(text)}" if ids else ""
    out = ["graph nslab {",
           f'  graph [label=<{_legend(d)}>, labelloc=b, fontname="Helvetica", fontsize=12, rankdir=TB, '
           f'nodesep=0.5, ranksep=0.55, newrank=true, pad=0.2];',
           '  node [fontname="Helvetica", fontsize=11, shape=plain];',
           '  edge [fontname="Helvetica", fontsize=9, color="#555555", fontcolor="#333333", penwidth=1.2];']
    children: dict[str | None, list[str]] = {}
    for g in d.groups.values():
        children.setdefault(g.parent, []).append(g.id)
    members: dict[str | None, list[GNode]] = {}
    for n in d.nodes.values():
        members.setdefault(n.group, []).append(n)

    def emit(group: str | None, indent: str) -> None:
        for n in members.get(group, []):
            out.append(f"{indent}{_q(n.id)} [label=<{_node_html(n)}>{', ' + id_('n/' + n.id) if ids else ''}];")
        for gid in children.get(group, []):
            g = d.groups[gid]
            style = ('style="rounded,filled"; fillcolor="#f4f6f9"; color="#8a9bb0"' if g.kind == "segment"
                     else 'style="rounded,dashed"; color="#b7950b"')
            out.append(f'{indent}subgraph {_q("cluster_" + gid)} {{')
            out.append(f'{indent}  label=<<b>{html.escape(g.label)}</b>>; labelloc=t; labeljust=l; fontsize=11; '
                       f'margin=10; {style};' + (f" {id_('g/' + gid)};" if ids else ""))
            emit(gid, indent + "  ")
            out.append(f"{indent}}}")
    emit(None, "  ")
    for k, e in enumerate(d.edges):
        attrs = [id_(f"e/{k}")] if ids else []
        if e.overlay:
            color, _ = OVERLAY[e.overlay]
            attrs += [f'color="{color}"', f'fontcolor="{color}"', "penwidth=1.8", "constraint=false",
                      'style="dotted"' if e.overlay == "direct" else 'style="dashed"']
            # each tunnel told apart by its ends; the legend names the cluster's own backend and "direct"
            label = e.ends if e.ends and e.overlay in ("direct", d.overlay) else " ".join(filter(None, (e.label, e.ends)))
            # xlabel, not label: dot ranks a label as a node of its own, and labelled
            # constraint=false edges between clusters make graphviz 2.43 fail ("trouble in
            # init_rank" on cluster:2,10,4); an xlabel is placed after the layout
            if label:
                attrs.append(f"xlabel={_q(label)}")
            a, b = f"{_q(e.a)}:title", f"{_q(e.b)}:title"
        elif e.service:
            attrs += [f'color="{SERVICE_EDGE}"', f'fontcolor="{SERVICE_EDGE}"', 'style="dotted"', "constraint=false",
                      f"xlabel={_q(e.label)}"]
            a, b = f"{_q(e.a)}:title", f"{_q(e.b)}:title"
        else:
            if e.label:                 # link conditions
                attrs += [f"label={_q(e.label)}", 'fontcolor="#8e24aa"', 'style="bold"']
            a = f"{_q(e.a)}:{_q('p_' + e.a_port)}:s" if e.a_port else _q(e.a)
            b = f"{_q(e.b)}:{_q('p_' + e.b_port)}:n" if e.b_port else _q(e.b)
        out.append(f"  {a} -- {b}" + (f" [{', '.join(attrs)}]" if attrs else "") + ";")
    out.append("}")
    return "\n".join(out) + "\n"


def _node_html(n: GNode) -> str:
    """A node as a table: its up-facing interfaces, its name (and interfaces no edge shows),
    its down-facing interfaces; edges end on the interface cells."""
    def ports(cells):
        tds = "".join(f'<td port="{html.escape("p_" + name)}" bgcolor="white" cellpadding="2">'
                      f'<font point-size="9">{html.escape(text)}</font></td>' for name, text in cells)
        return (f'<tr><td border="0" cellpadding="0"><table border="0" cellborder="1" cellspacing="3" '
                f'color="{BORDER[n.kind]}">'f'<tr>{tds}</tr></table></td></tr>')
    title = html.escape(n.title) if n.kind == "switch" else f"<b>{html.escape(n.title)}</b>"
    rest = "".join(f'<br/><font point-size="9">{html.escape(line)}</font>' for line in n.lines)
    rows = (ports(n.top) if n.top else "") + f'<tr><td port="title" cellpadding="4">{title}{rest}</td></tr>' + \
        (ports(n.bottom) if n.bottom else "")
    style = ' style="rounded"' if n.kind in ("router", "pod") else ""
    width = 2 if n.kind == "router" else 1
    return (f'<table border="{width}" cellborder="0" cellspacing="0" cellpadding="1" bgcolor="{FILL[n.kind]}" '
            f'color="{BORDER[n.kind]}"{style}>{rows}</table>')


def _legend(d: Drawing) -> str:
    used = [k for k in OVERLAY if any(e.overlay == k for e in d.edges)]
    keys = "   ".join(f'<font color="{OVERLAY[k][0]}">{"┄┄" if k != "direct" else "┈┈"} {OVERLAY[k][1]}</font>'
                       for k in used)
    return f"<b>{html.escape(d.title)}</b>" + (f"<br/>{keys}" if keys else "")


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --- mermaid --------------------------------------------------------------------------------

MERMAID_SHAPES = {"router": ('{{"', '"}}'), "switch": ('[["', '"]]'), "host": ('["', '"]'), "pod": ('("', '")'),
                  "service": ('(["', '"])')}


def to_mermaid(d: Drawing) -> str:
    ids = {name: "n_" + re.sub(r"\W", "_", name) for name in d.nodes}
    gids = {gid: "g_" + re.sub(r"\W", "_", gid) for gid in d.groups}
    out = ["---", f"title: {json.dumps(d.title)}", "---", "flowchart TB"]
    children: dict[str | None, list[str]] = {}
    for g in d.groups.values():
        children.setdefault(g.parent, []).append(g.id)

    def emit(group: str | None, indent: str) -> None:
        for n in d.nodes.values():
            if n.group == group:
                text = "<br/>".join([f"<b>{n.title}</b>" if n.kind != "switch" else n.title] + n.lines)
                left, right = MERMAID_SHAPES.get(n.kind, ('["', '"]'))
                out.append(f"{indent}{ids[n.id]}{left}{_mq(text)}{right}")
        for gid in children.get(group, []):
            out.append(f'{indent}subgraph {gids[gid]}["{_mq(d.groups[gid].label)}"]')
            emit(gid, indent + "  ")
            out.append(f"{indent}end")
    emit(None, "  ")
    styles = []
    for k, e in enumerate(d.edges):
        label = "<br/>".join(x for x in (e.a_label, " ".join(filter(None, (e.label, e.ends))), e.b_label) if x)
        arrow = "-.-" if e.overlay or e.service else "---"
        out.append(f"  {ids[e.a]} {arrow}" + (f'|"{_mq(label)}"|' if label else "") + f" {ids[e.b]}")
        if e.overlay:
            styles.append(f"  linkStyle {k} stroke:{OVERLAY[e.overlay][0]},stroke-width:2px,color:{OVERLAY[e.overlay][0]}")
    out += styles
    for kind, color in FILL.items():
        out.append(f"  classDef {kind} fill:{color},stroke:#555")
        members = [ids[n.id] for n in d.nodes.values() if n.kind == kind]
        if members:
            out.append(f"  class {','.join(members)} {kind}")
    return "\n".join(out) + "\n"


def _mq(s: str) -> str:
    return s.replace('"', "#quot;")


# --- output ---------------------------------------------------------------------------------

def write(d: Drawing, output: str | None, fmt: str | None) -> str | None:
    """Render to `output` (.svg/.png/.pdf via dot, .dot/.gv/.mmd/.md as text); with no
    output return the text (DOT, or mermaid with fmt="mermaid")."""
    fmt = (fmt or "").lower()
    if fmt not in ("", "dot", "mermaid"):
        raise UsageError(f"unknown graph format {fmt!r} (dot or mermaid)")
    ext = output.rsplit(".", 1)[-1].lower() if output and "." in output else ""
    if fmt == "mermaid" or ext in ("mmd", "md"):
        text = to_mermaid(d)
        if ext == "md":
            text = "```mermaid\n" + text + "```\n"
    else:
        text = to_dot(d)
    if output is None:
        return text
    if ext in ("dot", "gv", "mmd", "md"):
        with open(output, "w") as f:
            f.write(text)
        return None
    if ext not in ("svg", "png", "pdf"):
        raise UsageError(f"cannot tell the picture format from {output!r}: name it .svg, .png, .pdf, .dot or .mmd")
    if fmt == "mermaid":
        raise UsageError(f"--format mermaid writes text: name the output .mmd or .md, not .{ext}")
    dot = spawn.tool("dot")
    if dot is None:
        raise PrerequisiteError("dot not found: install graphviz with `apt-get install -y graphviz`")
    proc = subprocess.run([dot, f"-T{ext}", "-o", os.path.abspath(output)], input=text, capture_output=True,
                          text=True, cwd=spawn.CWD, env=spawn.env())
    if proc.returncode != 0:
        raise UsageError(f"dot could not render {output}: {' '.join(proc.stderr.split())}")
    return None
