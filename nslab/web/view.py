"""What the page draws: `nslab graph`'s drawing of a running lab (observe/graph.py, with the
lab's `nslab link set` changes as `nslab graph -l` applies them), laid out by graphviz's
`dot` as SVG whose nodes, groups and edges carry ids (n/NAME, g/GROUP, e/INDEX).

A big lab is drawn with its top-level groups (racks) collapsed: one box each, until the
page opens one.  Edge ids always name the edge's index in the full drawing, so counters
and trace steps find an edge whether its group is open or not.
"""
from __future__ import annotations

import dataclasses
import re
import subprocess

from .. import lab as labmod
from .. import shaping, spawn, state
from ..errors import PrerequisiteError, UsageError
from ..observe import graph as graphmod

COLLAPSE_ABOVE = 150        # nodes: a lab bigger than this starts with its racks collapsed


def drawing(lab: str, st: state.LabState | None = None):
    """(topology, full drawing) of a running lab, as `nslab graph -l LAB` draws it."""
    st = st or state.load(lab)
    if st is None:
        raise UsageError(f"no lab named {lab!r} runs")
    topo = labmod.topology(lab, st)
    shaping.apply_recorded(topo, st)
    return topo, graphmod.build(topo)


def _top(d: graphmod.Drawing, group: str | None) -> str | None:
    while group is not None and d.groups[group].parent is not None:
        group = d.groups[group].parent
    return group


def collapse(d: graphmod.Drawing, opened: set[str] | None) -> tuple[graphmod.Drawing, dict[int, list[int]]]:
    """The drawing with every top-level group not in `opened` (None: all open) as one box
    (id group:GROUP); overlay edges only between two shut boxes (a 1,000-node cluster has
    half a million node pairs: no picture reads them, and dot would take minutes).
    Returns it and {drawn edge index: [full-drawing edge indexes]}."""
    if opened is None:
        return d, {k: [k] for k in range(len(d.edges))}
    shut = {g.id for g in d.groups.values() if g.parent is None and g.id not in opened}
    box = {}                    # node -> the box standing for it
    nodes, counts = {}, {}
    for n in d.nodes.values():
        top = _top(d, n.group)
        if top in shut:
            box[n.id] = "group:" + top
            counts[top] = counts.get(top, 0) + 1
        else:
            nodes[n.id] = n
    for gid in shut:
        nodes["group:" + gid] = graphmod.GNode("group:" + gid, "switch", d.groups[gid].label,
                                               [f"{counts.get(gid, 0)} nodes (click to open)"])
    groups = {gid: g for gid, g in d.groups.items() if _top(d, gid) not in shut}
    edges, members, seen = [], {}, {}
    for k, e in enumerate(d.edges):
        a, b = box.get(e.a, e.a), box.get(e.b, e.b)
        if a == b and a.startswith("group:"):
            continue                                # inside a shut box
        if e.overlay and not (a.startswith("group:") and b.startswith("group:")):
            continue        # a big lab's tunnels: one edge per pair of shut racks, none per node
        if a != e.a or b != e.b:
            key = (a, b, bool(e.overlay), e.service)
            if key in seen:
                members[seen[key]].append(k)
                continue
            seen[key] = len(edges)
            e = dataclasses.replace(e, a=a, b=b, a_port=e.a_port if a == e.a else None,
                                    b_port=e.b_port if b == e.b else None, label="", ends="")
        members[len(edges)] = [k]
        edges.append(e)
    out = graphmod.Drawing(d.title, d.overlay, nodes, edges, groups)
    return out, members


def svg(d: graphmod.Drawing, members: dict[int, list[int]]) -> str:
    """graphviz's SVG of the drawing; each edge's id is its first full-drawing index.  Where
    dot fails (graphviz's "trouble in init_rank", which labelled tunnel edges between
    clusters set off until graph.to_dot made their labels xlabels: kept as a safety net),
    the picture is laid out again without the tunnel edges, and its title says so."""
    text = _dot(d, members)
    try:
        return _layout(text)
    except UsageError:
        keep = {k: m for k, m in members.items() if not d.edges[k].overlay}
        bare = graphmod.Drawing(d.title + " (tunnels not drawn: graphviz could not lay them out)", None,
                                d.nodes, [d.edges[k] for k in keep], d.groups)
        return _layout(_dot(bare, {n: keep[k] for n, k in enumerate(keep)}))


def _dot(d: graphmod.Drawing, members: dict[int, list[int]]) -> str:
    text = graphmod.to_dot(d, ids=True)
    ids = {k: members[k][0] for k in members}
    return re.sub(r'id="e/(\d+)"', lambda m: f'id="e/{ids[int(m.group(1))]}"', text)


def _layout(text: str) -> str:
    dot = spawn.tool("dot")
    if dot is None:
        raise PrerequisiteError("dot not found: install graphviz with `apt-get install -y graphviz`")
    proc = subprocess.run([dot, "-Tsvg"], input=text, capture_output=True, text=True, cwd=spawn.CWD,
                          env=spawn.env())
    if proc.returncode != 0:
        raise UsageError(f"dot could not lay out the lab: {' '.join(proc.stderr.split())[:300]}")
    return proc.stdout


def links(topo, d: graphmod.Drawing) -> list[dict]:
    """The full drawing's veth links (edges with interfaces at both ends), each with the
    ends' (node, interface), the end whose counters are read (a veth's two ends count the
    same packets: the segment bridge's end, else not a pod's, so one namespace holds many
    links' counters) and, for a cluster node's underlay link, the node and its tunnel
    device: the traffic the counters tell apart as encapsulated."""
    cluster = topo.cluster
    device = cluster.backend.device if cluster is not None else None
    out = []
    for k, e in enumerate(d.edges):
        if e.overlay or e.service or not e.a_iface or not e.b_iface:
            continue
        under = None
        for node, iface in ((e.a, e.a_iface), (e.b, e.b_iface)):
            if device and node in cluster.nodes and cluster.nodes[node].underlay == iface:
                under = [node, iface, device]
        ka, kb = topo.nodes[e.a].kind, topo.nodes[e.b].kind
        read = "b" if kb == "switch" or (ka == "pod" and kb != "pod") else "a"
        out.append(dict(edge=k, a=[e.a, e.a_iface], b=[e.b, e.b_iface], read=read, underlay=under))
    return out


def model(topo, d: graphmod.Drawing, members: dict[int, list[int]]) -> dict:
    """The page's facts besides the picture: nodes, services, groups (to open and shut),
    drawn edges and the links behind each."""
    cluster = topo.cluster
    return dict(
        lab=topo.name, title=d.title,
        nodes=sorted(n for n in topo.nodes),
        services=sorted(f"svc/{s}" for s in cluster.services) if cluster is not None else [],
        groups={g.id: g.label for g in d.groups.values() if g.parent is None},
        edges={members[k][0]: members[k] for k in members},
        backend=dict(type=cluster.backend.type, device=cluster.backend.device) if cluster is not None else None)


def trace_steps(result: dict, d: graphmod.Drawing) -> list[dict]:
    """`nslab trace --json`'s hops in order (request, then reply) as the page replays them:
    where (node, interface, direction), the full-drawing edge of that interface, and a label
    naming the encapsulation, decapsulation and NAT steps with the kernel entries the trace
    gives for them."""
    edge_of = {}
    for k, e in enumerate(d.edges):
        if not e.overlay and not e.service:
            edge_of[(e.a, e.a_iface)] = k
            edge_of[(e.b, e.b_iface)] = k
    steps = []
    for leg in ("request", "reply"):
        prev_outer = None
        for h in (result.get(leg) or {}).get("hops", []):
            labels = []
            if h.get("outer") and not prev_outer:
                labels.append("encap " + h["outer"].split(" | ")[-1] if " | " in h["outer"] else "encap")
            decap = (h.get("note") or "").startswith("decapsulated")
            if decap or (prev_outer and not h.get("outer")):
                labels.append("decap")
            for dec in h.get("decisions", []):
                if dec["kind"] == "nat":
                    labels.append("NAT " + dec["text"])
            prev_outer = None if decap else h.get("outer")    # the kernel's note names the decap step
            steps.append(dict(leg=leg, node=h["node"], iface=h["iface"], dir=h["dir"],
                              edge=edge_of.get((h["node"], h["iface"])), outer=h.get("outer"), inner=h.get("inner"),
                              decisions=[f"{x['kind']}: {x['text']}" for x in h.get("decisions", [])],
                              note=h.get("note"), label="; ".join(labels)))
    return steps
