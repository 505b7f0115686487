"""`nslab generate SHAPE`: write a topology file for a fabric instead of typing it.

Shapes (the Mininet ones accept Mininet's comma form too, `tree,2,3`):
  clos:SPINES,LEAVES,HOSTS    every leaf linked to every spine (ECMP across spines), one
                              rack segment of HOSTS behind each leaf
  cluster:RACKS,NODES,PODS    a flannel cluster: RACKS leaf/rack segments under one spine,
                              NODES cluster nodes per rack, PODS pods per node (daemonsets)
  single:N                    one switch (segment) with N hosts
  linear:N[,M]                N switches in a chain, M hosts each (default 1)
  tree:DEPTH[,FANOUT]         Mininet's tree: FANOUT^DEPTH hosts (fanout default 2)
  linear-routed:N[,M]         linear, each switch a router (one subnet per switch)
  tree-routed:DEPTH[,FANOUT]  tree, the upper switches routers, the bottom ones segments

single, linear and tree build what Mininet builds: L2 switches (a Linux bridge each, in
its own namespace, joined bridge to bridge: no loops), every host in one subnet, so a
ping arrives with ttl 64 however many switches it crosses.

Python plans names and addresses (so they never overlap and scale to tens of thousands of
hosts); the jinja2 templates in nslab/templates/ only lay the plan out as YAML.  The plan
is deterministic: same arguments, same bytes.
"""
from __future__ import annotations

import json
import math
import re
import shlex
import textwrap
import unicodedata
from dataclasses import dataclass
from ipaddress import IPv4Network

from . import backends
from .errors import NslabError, UsageError, one_line
from .model.types import BRIDGE_PORTS, LAB_NAME_RE, MAX_LAB_NAME

MAX_NODES = 25_000          # namespaces in one generated lab (the issue's target is 10,000)
LINK_POOL = "172.31.0.0/16"  # nslab's default point-to-point pool: 16,384 /30 links
WRAP = 96                   # columns for wrapped name lists and the header
PLAIN_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ()._/@+-]*")

# (argument names, minimum count of arguments, maximum per argument, defaults for the optional tail)
SHAPES = {
    "clos": (("SPINES", "LEAVES", "HOSTS"), 3, (64, 254, 1000), ()),
    "cluster": (("RACKS", "NODES", "PODS"), 3, (127, 253, 250), ()),
    "single": (("N",), 1, (BRIDGE_PORTS,), ()),
    "linear": (("N", "M"), 1, (MAX_NODES // 2, BRIDGE_PORTS - 2), (1,)),
    "tree": (("DEPTH", "FANOUT"), 1, (20, BRIDGE_PORTS - 1), (2,)),
    "linear-routed": (("N", "M"), 1, (60, 250), (1,)),
    "tree-routed": (("DEPTH", "FANOUT"), 1, (20, 253), (2,)),
}
EXAMPLES = {"clos": "clos:2,4,10", "cluster": "cluster:2,3,2", "single": "single:4", "linear": "linear:4",
            "tree": "tree:2,3", "linear-routed": "linear-routed:4", "tree-routed": "tree-routed:2,3"}
TEMPLATES = {"linear": "switches", "tree": "switches"}   # shape -> its template, when not its own
WHY_MAX = {
    ("single", "N"): "one Linux bridge has at most 1,023 ports; clos or tree for more hosts",
    ("clos", "SPINES"): "spine-leaf links come from the /16 link pool",
    ("clos", "LEAVES"): "rack N is 10.N.0.0",
    ("clos", "HOSTS"): "a rack is at most a /22",
    ("cluster", "RACKS"): "rack N is 10.N.0.0/24 and pods use 10.128.0.0/9",
    ("cluster", "NODES"): "a rack is a /24 with its leaf at .254",
    ("cluster", "PODS"): "each node leases a /24 of the pod network",
    ("linear", "N"): "with one host each, that is the most namespaces nslab generates",
    ("linear", "M"): "a switch's hosts and its two neighbours are ports of one Linux bridge of at most 1,023",
    ("tree", "FANOUT"): "a switch's children and its parent are ports of one Linux bridge of at most 1,023",
    ("linear-routed", "N"): "every switch is a router here, and a ping's TTL of 64 must cross the chain",
    ("linear-routed", "M"): "hosts per switch",
    ("tree-routed", "FANOUT"): "a bottom switch is a /24 with its gateway at .254",
}


def _encap(backend: str) -> str:
    """What a test's `encap:` expects across nodes: the backend if it encapsulates."""
    return backend if backends.get(backend).wire is not None else "none"


def _pod_ttl(backend: str) -> int:
    """TTL a pod's ping arrives with at a pod on another node: both nodes forward (64 - 2),
    and a userspace dataplane may take more (udp: flanneld decrements on each side)."""
    plane = backends.get(backend).dataplane
    return 62 - (plane.ttl_hops if plane is not None else 0)


def _backend_yaml(backend: str) -> str:
    """The backend section, its defaults written out: `{type: vxlan, vni: 1, port: 8472}`."""
    b = backends.get(backend)
    config = b.parse({"type": backend}, (), _no_error, _no_error)
    return "{" + ", ".join([f"type: {backend}"] + [f"{key}: {getattr(config, key)}" for key in ("vni", "port")
                                                   if key in b.keys]) + "}"


def _no_error(*args):      # parse of the defaults alone: nothing to refuse
    raise AssertionError(args)


@dataclass
class Shape:
    kind: str
    args: tuple[int, ...]           # every argument, optional ones filled with their defaults
    given: int = 0                  # how many were written (0: all)

    @property
    def text(self) -> str:
        """Canonical form of what was asked: `linear:4` stays linear:4, not linear:4,1."""
        return f"{self.kind}:{','.join(map(str, self.args[:self.given or len(self.args)]))}"


def breaks_text(c: str) -> bool:
    """A character that has no place in one line of a text file: a control or format
    character, a surrogate, private or unassigned (Unicode category C*), or a line or
    paragraph separator (YAML and Python end a line at U+2028, U+2029 and U+0085 too)."""
    return unicodedata.category(c)[0] == "C" or c in "\u2028\u2029"


def refuse_control(option: str, value: str | None) -> None:
    """UsageError (exit 2) if `value`, which ends up in the generated file or names it, is
    not one line of printable text."""
    if value is not None and any(breaks_text(c) for c in value):
        bad = next(c for c in value if breaks_text(c))
        raise UsageError(f"{option} {value!r} contains a control character ({one_line(bad)}): nslab takes "
                         f"printable text on one line here")


def parse_shape(text: str) -> Shape:
    """`clos:2,4,10`, `tree,2,3`, `single:5` -> Shape; a UsageError (exit 2) otherwise."""
    refuse_control("shape", text)
    m = re.fullmatch(r"\s*([a-z]+(?:-[a-z]+)?)\s*[:,]?\s*(.*?)\s*", text or "")
    kind = m.group(1) if m else ""
    if kind not in SHAPES:
        raise UsageError(f"unknown shape {text!r}: use one of {', '.join(map(_form, SHAPES))} "
                         f"(like {EXAMPLES['clos']})")
    names, need, maxima, defaults = SHAPES[kind]
    usage = f"{kind} takes {_form(kind).split(':')[1]}, like {EXAMPLES[kind]}"
    rest = m.group(2)
    parts = [p.strip() for p in rest.split(",")] if rest else []
    if not need <= len(parts) <= len(names):
        raise UsageError(f"bad shape {text!r}: {usage}")
    values = []
    for name, part, most in zip(names, parts, maxima):
        if not re.fullmatch(r"[0-9]+", part):     # ASCII digits: int() and isdigit() take '²' and '٣'
            raise UsageError(f"bad shape {text!r}: {name} must be a whole number, got {part!r} ({usage})")
        value = int(part) if len(part.lstrip("0")) <= 9 else most + 1
        if value < 1:
            raise UsageError(f"bad shape {text!r}: {name} must be at least 1")
        if value > most:
            why = WHY_MAX.get((kind, name))
            raise UsageError(f"bad shape {text!r}: {name} is at most {most}" + (f" ({why})" if why else ""))
        values.append(value)
    given = len(values)
    values += defaults[len(values) - need:] if len(values) < len(names) else []
    shape = Shape(kind, tuple(values), given)
    total = node_count(shape)
    if total > MAX_NODES:
        raise UsageError(f"bad shape {text!r}: that is {total:,} namespaces; nslab generates at most {MAX_NODES:,}")
    return shape


def _form(kind: str) -> str:
    """`linear:N[,M]`: a shape's arguments, optional ones in brackets."""
    names, need = SHAPES[kind][0], SHAPES[kind][1]
    return f"{kind}:{','.join(names[:need])}" + (f"[,{','.join(names[need:])}]" if names[need:] else "")


def node_count(shape: Shape) -> int:
    """Namespaces the lab will have (segments are namespaces too: their bridge lives in one)."""
    a = shape.args
    if shape.kind == "clos":
        s, l, h = a
        return s + l + l + l * h
    if shape.kind == "cluster":
        r, n, p = a
        return r * n * (1 + p) + r + (r + 1 if r > 1 else 0)
    if shape.kind == "single":
        return 1 + a[0]
    if shape.kind in ("linear", "linear-routed"):
        return a[0] * (1 + a[1])
    depth, fanout = a                   # depth <= 20: exact integers, however large
    return sum(fanout ** i for i in range(depth)) + fanout ** depth


def default_name(shape: Shape) -> str:
    return shape.text.replace(":", "-").replace(",", "-")[:MAX_LAB_NAME]


def _pad(count: int, least: int = 1) -> int:
    return max(least, len(str(count)))


def _prefix_for(addresses: int, longest: int = 24) -> int:
    """The longest prefix (at most /longest) with room for `addresses` plus network and broadcast."""
    return min(longest, 32 - math.ceil(math.log2(addresses + 2)))


def flow(names: list[str], groups: list[tuple[str | None, list[str]]] | None = None, key: str = "") -> str:
    """A YAML flow list of names for `key: ...`: on one line when it fits, else one
    wrapped line per group (with the group's comment above it) between `[` and `]`."""
    one = f"[{', '.join(names)}]"
    if len(key) + 2 + len(one) <= WRAP:
        return one
    lines = ["["]
    for comment, group in groups or [(None, names)]:
        if comment:
            lines.append(f"  # {one_line(comment)}")
        lines += wrap(group, 2)
    return "\n".join(lines + ["]"])


def wrap(names: list[str], indent: int, width: int = WRAP) -> list[str]:
    """Names joined with ', ' in lines of at most `width` columns (each line ends with ',')."""
    lines, line = [], ""
    for n in names:
        if line and indent + len(line) + len(n) + 2 > width:
            lines.append(line)
            line = ""
        line += f"{n}, "
    if line:
        lines.append(line)
    return [" " * indent + ln.rstrip() for ln in lines]


# --- plans: everything the templates print ------------------------------------------------------

def _clos(shape: Shape, name: str) -> dict:
    s, l, h = shape.args
    ws, wl, wh = _pad(s), _pad(l, 2), _pad(h, 2)
    spines = [f"spine{i:0{ws}d}" for i in range(1, s + 1)]
    prefix = _prefix_for(h + 1)
    racks = []
    for i in range(1, l + 1):
        subnet = IPv4Network(f"10.{i}.0.0/{prefix}")
        racks.append(dict(name=f"rack{i:0{wl}d}", leaf=f"leaf{i:0{wl}d}", subnet=str(subnet),
                          gateway_ip=str(subnet.broadcast_address - 1),
                          hosts=[f"h{i:0{wl}d}-{j:0{wh}d}" for j in range(1, h + 1)]))
    first, last = racks[0]["hosts"][0], racks[-1]["hosts"][-1]
    tests = []
    if l > 1:
        via = f", via: {spines[0]}" if s == 1 else ""
        tests += [dict(name="farthest racks (leaf then spine then leaf)", kind="ping", src=first, dst=last,
                       expect=f"{{ttl: 61{via}}}"),
                  dict(name="and back", kind="ping", src=last, dst=first, expect=f"{{ttl: 61{via}}}")]
    if h > 1:
        tests.append(dict(name="same rack (one L2 segment)", kind="ping", src=first, dst=racks[0]["hosts"][-1],
                          expect="{ttl: 64}"))
    if not tests:
        tests.append(dict(name="host to the spine", kind="ping", src=first, dst=spines[0], expect="{ttl: 63}"))
    hosts = l * h
    return dict(spines=spines, racks=racks, ecmp=s > 1, link_pool=LINK_POOL,
                hosts_flow=flow([x for r in racks for x in r["hosts"]],
                                [(f"{r['name']}: {r['subnet']} behind {r['leaf']}", r["hosts"]) for r in racks],
                                "hosts"),
                tests=tests,
                summary=[f"CLOS fabric: {s} spine{'s' * (s > 1)}, {l} lea{'ves' if l > 1 else 'f'}, "
                         f"{h} host{'s' * (h > 1)} per leaf = {hosts:,} host{'s' * (hosts > 1)} "
                         f"({node_count(shape):,} namespaces with the rack segments).",
                         "Every leaf is linked to every spine" +
                         (f", so a leaf reaches another rack over {s} equal-cost paths (multipath route,"
                          f" L4 hash: fib_multipath_hash_policy=1 in the leaves)." if s > 1 else "."),
                         f"Rack N is segment {_span(racks, 'name')}, 10.N.0.0/{prefix} behind "
                         f"{_span(racks, 'leaf')} (the leaf at {racks[0]['gateway_ip'].replace('10.1.', '10.N.')}); "
                         f"hosts get .1, .2, ... in member order.",
                         f"Spine-leaf links are /30s from {LINK_POOL} (pools.links)."])


def _cluster(shape: Shape, name: str, backend: str, serve: str | None) -> dict:
    r, n, p = shape.args
    if backend == "host-gw" and r > 1:
        raise UsageError(f"cluster:{r},{n},{p} with --backend host-gw: host-gw routes pod subnets via node IPs, "
                         f"so every node must be on one L2 segment; use one rack (cluster:1,{r * n},{p}) "
                         f"or --backend vxlan")
    wr, wn = _pad(r, 2), _pad(n, 2)
    racks = []
    for i in range(1, r + 1):
        subnet = IPv4Network(f"10.{i}.0.0/24")
        racks.append(dict(name=f"rack{i:0{wr}d}", leaf=f"leaf{i:0{wr}d}" if r > 1 else None, subnet=str(subnet),
                          nodes=[dict(name=f"n{i:0{wr}d}-{j:0{wn}d}", ip=str(subnet.network_address + j))
                                 for j in range(1, n + 1)]))
    total = r * n
    network = "10.244.0.0/16" if total <= 256 else f"10.128.0.0/{24 - math.ceil(math.log2(total))}"
    pods = [f"pod{k}" for k in range(1, p + 1)]
    first, last = racks[0]["nodes"][0]["name"], racks[-1]["nodes"][-1]["name"]
    encap = _encap(backend)
    tests = []
    if total > 1:
        where = "the farthest racks" if r > 1 else "the first and last node"
        tests += [dict(name=f"pod to pod across {where}", kind="ping", src=f"pod1@{first}", dst=f"pod1@{last}",
                       expect=f"{{encap: {encap}, ttl: {_pod_ttl(backend)}}}"),
                  dict(name="and back", kind="ping", src=f"pod1@{last}", dst=f"pod1@{first}",
                       expect=f"{{encap: {encap}, ttl: {_pod_ttl(backend)}}}")]
        if serve:
            tests.append(dict(name=f"http across {where}", kind="http", src=f"pod1@{first}", dst=f"pod1@{last}",
                              expect=f"{{encap: {encap}}}"))
    if p > 1:
        tests.append(dict(name="same node (bridged on cni0)", kind="ping", src=f"pod1@{first}",
                          dst=f"pod{p}@{first}", expect="{encap: none, ttl: 64}"))
        if serve and total == 1:
            tests.append(dict(name="http on one node", kind="http", src=f"pod1@{first}", dst=f"pod{p}@{first}",
                              expect="{encap: none}"))
    if not tests:
        tests.append(dict(name="node to its own pod (on cni0)", kind="ping", src=first, dst=f"pod1@{first}",
                          expect="{encap: none, ttl: 64}"))
    return dict(racks=racks, spine="spine" if r > 1 else None, network=network, backend_yaml=_backend_yaml(backend),
                pods=pods, serve=serve, tests=tests,
                summary=[f"flannel cluster ({backend}): {r} rack{'s' * (r > 1)} x {n} node{'s' * (n > 1)} x "
                         f"{p} pod{'s' * (p > 1)} per node = {total:,} node{'s' * (total > 1)}, "
                         f"{total * p:,} pod{'s' * (total * p > 1)} ({node_count(shape):,} namespaces).",
                         (f"Rack N is segment {_span(racks, 'name')}, 10.N.0.0/24 behind {_span(racks, 'leaf')} "
                          f"(10.N.0.254); the leaves hang off one spine." if r > 1
                          else f"One rack: segment {racks[0]['name']}, 10.1.0.0/24, no routers."),
                         f"Cluster nodes are n<rack>-<node> at 10.<rack>.0.<node>; each leases a /24 of the pod "
                         f"network {network} in node order.",
                         (f"Pods are daemonsets pod1..pod{p}: pod K on node X is podK-X (podK@X in tests)"
                          if p > 1 else "Pods are the daemonset pod1: its pod on node X is pod1-X (pod1@X in tests)") +
                         (", each serving HTTP on port 80." if serve else ".")])


def _span(racks: list[dict], key: str) -> str:
    """Rack names as the file writes them: `rack01..rack12` (zero-padded), or the one."""
    return racks[0][key] if len(racks) == 1 else f"{racks[0][key]}..{racks[-1][key]}"


def _single(shape: Shape, name: str) -> dict:
    (k,) = shape.args
    hosts = [f"h{i}" for i in range(1, k + 1)]
    subnet = f"10.0.0.0/{_prefix_for(k)}"
    tests = [] if k == 1 else [
        dict(name="first to last host (one L2 segment)", kind="ping", src=hosts[0], dst=hosts[-1], expect="{ttl: 64}"),
        dict(name="and back", kind="ping", src=hosts[-1], dst=hosts[0], expect="{ttl: 64}")]
    return dict(hosts=hosts, hosts_flow=flow(hosts, key="hosts"), subnet=subnet, tests=tests,
                summary=[f"Mininet's single,{k}: one switch s1 (a Linux bridge in its own namespace) with "
                         f"{k} host{'s' * (k > 1)}.",
                         f"Segment s1 is {subnet}: h1 is 10.0.0.1, h2 10.0.0.2, ... (member order), as in Mininet."]
                + (["One host has nobody to ping: no tests: section."] if k == 1 else []))


def _switches(shape: Shape, segments: list[dict], hosts: list[str], tests: list[dict], summary: list[str]) -> dict:
    """The plan of an L2 lab (switches.yaml.j2): segments joined bridge to bridge, the
    domain's one subnet written on the first, each member list inline when it fits."""
    for sg in segments:
        inline = f"[{', '.join(sg['members'])}]"
        sg["inline"] = inline if len(inline) + 13 <= WRAP else None
    return dict(segments=segments, hosts_flow=flow(hosts, key="hosts"), tests=tests, summary=summary)


def _l2_tests(first: str, last: str, what: str) -> list[dict]:
    if first == last:
        return []
    return [dict(name=f"first to last host ({what})", kind="ping", src=first, dst=last, expect="{ttl: 64}"),
            dict(name="and back", kind="ping", src=last, dst=first, expect="{ttl: 64}")]


def _linear(shape: Shape, name: str) -> dict:
    """Mininet's LinearTopo: switch i has its hosts, then a link to switch i - 1."""
    k, m = shape.args
    hosts = [[f"h{i}" if m == 1 else f"h{j}s{i}" for j in range(1, m + 1)] for i in range(1, k + 1)]
    flat = [h for group in hosts for h in group]
    subnet = IPv4Network(f"10.0.0.0/{_prefix_for(len(flat))}")
    segments = [dict(name=f"s{i}", subnet=str(subnet) if i == 1 else None, joined=k > 1,
                     members=hosts[i - 1] + ([f"s{i - 1}"] if i > 1 else [])) for i in range(1, k + 1)]
    return _switches(shape, segments, flat, _l2_tests(flat[0], flat[-1], f"L2, {k} switch{'es' * (k > 1)}"),
                     [f"Mininet's linear,{k}{',' + str(m) if m > 1 else ''}: {k} switch{'es' * (k > 1)} "
                      f"s1..s{k} in a chain, {m} host{'s' * (m > 1)} on each.",
                      "Every switch is a Linux bridge in its own namespace (a segment); each segment lists the "
                      "previous one as a member, which joins the two bridges with a veth: one L2 domain, no "
                      "loops, as in Mininet.",
                      f"All {len(flat):,} host{'s' * (len(flat) > 1)} are in {subnet} (h1 is .1, h2 .2, ... in the "
                      f"order written), so a ping arrives with ttl 64 across the whole chain.",
                      *(["One host has nobody to ping: no tests: section."] if len(flat) == 1 else [])])


def _tree(shape: Shape, name: str) -> dict:
    """Mininet's TreeTopo.addTree: switches numbered depth-first, each linked to its
    FANOUT children (switches, or hosts at the bottom)."""
    depth, fanout = shape.args
    segments, hosts = [], []

    def add(level: int) -> str:
        me = dict(name=f"s{len(segments) + 1}", subnet=None, joined=depth > 1, members=[])
        segments.append(me)
        for _ in range(fanout):
            if level == depth:
                hosts.append(f"h{len(hosts) + 1}")
                me["members"].append(hosts[-1])
            else:
                me["members"].append(add(level + 1))
        return me["name"]

    add(1)
    subnet = IPv4Network(f"10.0.0.0/{_prefix_for(len(hosts))}")
    segments[0]["subnet"] = str(subnet)
    n, s = len(hosts), len(segments)
    return _switches(shape, segments, hosts, _l2_tests(hosts[0], hosts[-1], "L2, through the root"),
                     [f"Mininet's tree,{depth},{fanout}: {n:,} host{'s' * (n > 1)} h1..h{n} under {s:,} "
                      f"switch{'es' * (s > 1)} s1..s{s}, numbered depth-first as Mininet's TreeTopo does.",
                      "Every switch is a Linux bridge in its own namespace (a segment) whose members are its "
                      "children: a child switch listed there is joined to it by a veth between the bridges. One L2 "
                      "domain, no loops, as in Mininet.",
                      f"All hosts are in {subnet} (h1 is .1, h2 .2, ...), so a ping arrives with ttl 64 from any "
                      f"host to any other.",
                      *(["One host has nobody to ping: no tests: section."] if n == 1 else [])])


def _linear_routed(shape: Shape, name: str) -> dict:
    k, m = shape.args
    switches = [f"s{i}" for i in range(1, k + 1)]
    # Mininet's names: h<i> with one host per switch, h<j>s<i> with several
    hosts = [[f"h{i}" if m == 1 else f"h{j}s{i}" for j in range(1, m + 1)] for i in range(1, k + 1)]
    flat = [h for group in hosts for h in group]
    first, last = flat[0], flat[-1]
    if len(flat) > 1 and k > 1:
        tests = [dict(name=f"across the chain ({k} routers)", kind="ping", src=first, dst=last,
                      expect=f"{{ttl: {64 - k}, via: {switches[(k - 1) // 2]}}}"),
                 dict(name="and back", kind="ping", src=last, dst=first, expect=f"{{ttl: {64 - k}}}")]
    elif len(flat) > 1:
        tests = [dict(name="two hosts on one switch", kind="ping", src=first, dst=last, expect="{ttl: 63}")]
    else:
        tests = [dict(name="host to its switch", kind="ping", src=first, dst=switches[0], expect="{ttl: 64}")]
    return dict(switches=switches, hosts=hosts, hosts_flow=flow(flat, key="hosts"),
                routers_flow=flow(switches, key="routers"),
                link_pool="10.0.0.0/16", tests=tests,
                summary=[f"Mininet's linear,{k}{',' + str(m) if m > 1 else ''}, routed: {k} "
                         f"switch{'es' * (k > 1)} s1..s{k} in a chain, {m} host{'s' * (m > 1)} on each.",
                         "Each switch is a router here (linear:N builds Mininet's L2 switches): every link is a "
                         "subnet of its own, and a probe loses one TTL per switch.",
                         "Every link is a /30 from 10.0.0.0/16 (pools.links), in the order written below."])


def _tree_routed(shape: Shape, name: str) -> dict:
    depth, fanout = shape.args
    routers, links, segments = [], [], []
    counters = {"s": 0, "h": 0}

    def add(level: int) -> str:             # Mininet's TreeTopo.addTree: switches numbered depth-first
        counters["s"] += 1
        me = f"s{counters['s']}"
        if level == depth:                  # a bottom switch: a real L2 segment with its hosts
            k = len(segments)
            hosts = []
            for _ in range(fanout):
                counters["h"] += 1
                hosts.append(f"h{counters['h']}")
            segments.append(dict(name=me, subnet=f"10.{k >> 8}.{k & 255}.0/24", hosts=hosts))
            return me
        routers.append(me)
        for _ in range(fanout):
            child = add(level + 1)
            if level + 1 < depth:
                links.append((me, child))
            else:
                segments[-1]["gateway"] = me
        return me

    add(1)
    first, last = segments[0]["hosts"][0], segments[-1]["hosts"][-1]
    hops = 0 if depth == 1 else 2 * depth - 3      # up to the root and down again
    if fanout == 1 and depth > 1:
        tests = [dict(name="host to the root switch", kind="ping", src=first, dst=routers[0],
                      expect=f"{{ttl: {64 - (depth - 2)}}}")]
    elif first == last:
        tests = []
    else:
        tests = [dict(name="first to last host" + (f" ({hops} router{'s' * (hops > 1)})" if hops else ""),
                      kind="ping", src=first, dst=last,
                      expect=f"{{ttl: {64 - hops}" + (f", via: {routers[0]}}}" if hops else "}")),
                 dict(name="and back", kind="ping", src=last, dst=first, expect=f"{{ttl: {64 - hops}}}")]
    hosts = fanout ** depth
    return dict(routers=routers, routers_flow=flow(routers, key="routers"), links=links, segments=segments,
                hosts_flow=flow([h for sg in segments for h in sg["hosts"]], key="hosts"),
                link_pool=LINK_POOL, tests=tests,
                summary=[f"Mininet's tree,{depth},{fanout}, routed: {hosts:,} host{'s' * (hosts > 1)} h1..h{hosts} "
                         f"under {len(routers) + len(segments):,} switch{'es' * (len(routers) + len(segments) > 1)} "
                         f"numbered depth-first as Mininet does.",
                         f"The {len(segments):,} bottom switch{'es are' if len(segments) > 1 else ' is a'} L2 "
                         f"segment{'s' * (len(segments) > 1)} (10.A.B.0/24 in order from 10.0.0.0/24, "
                         f"hosts .1, .2, ...)" +
                         (f"; the {len(routers)} upper switch{'es are' if len(routers) > 1 else ' is a'} "
                          f"router{'s' * (len(routers) > 1)} (tree:D,F builds Mininet's L2 switches instead),"
                          f" each bottom segment's gateway (.254) is its parent." if routers else "."),
                         *([f"Router-router links are /30s from {LINK_POOL} (pools.links)."] if links else []),
                         *(["One host has nobody to ping: no tests: section."] if not tests else [])])


def render(shape: Shape | str, name: str | None = None, backend: str | None = None, serve: str | None = None,
           command: str | None = None, file: str | None = None) -> str:
    """The topology file for `shape` as YAML text, with a comment header saying how it was
    made (`command`, default: the canonical `nslab generate` line) and what it holds."""
    import jinja2      # lazy: start-up (only `nslab generate` needs jinja2)

    if isinstance(shape, str):
        shape = parse_shape(shape)
    name = name or default_name(shape)
    if not LAB_NAME_RE.fullmatch(name) or len(name) > MAX_LAB_NAME:
        raise UsageError(f"--name {name!r}: a lab name is lowercase letters, digits, '-' or '_' "
                         f"(at most {MAX_LAB_NAME} characters)")
    if shape.kind != "cluster" and (backend or serve):
        raise UsageError(f"--{'backend' if backend else 'serve'} applies to cluster shapes, not {shape.kind}")
    if backend is not None and backend not in backends.names():
        raise UsageError(f"--backend {backend!r}: use one of {', '.join(backends.names())}")
    if serve is not None and serve != "http":
        raise UsageError(f"--serve {serve!r}: nslab can serve http")
    if shape.kind == "cluster":
        ctx = _cluster(shape, name, backend or "vxlan", serve)
    else:
        ctx = {"clos": _clos, "single": _single, "linear": _linear, "tree": _tree, "linear-routed": _linear_routed,
               "tree-routed": _tree_routed}[shape.kind](shape, name)
    command = command or default_command(shape, name, backend, serve)
    summary = [line for text in ctx.pop("summary") for line in textwrap.wrap(text, WRAP - 2)]
    env = jinja2.Environment(loader=jinja2.PackageLoader("nslab", "templates"), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True, autoescape=False)
    env.filters["q"] = quote
    env.filters["oneline"] = one_line    # inside comments: no value may end the line (defence in depth)
    return env.get_template(f"{TEMPLATES.get(shape.kind, shape.kind)}.yaml.j2").render(name=name, command=command, shape=shape,
                                                             summary=summary, file=file or "FILE", **ctx)


def quote(text: str) -> str:
    """A YAML scalar that reads back as this text, inside a flow mapping too: plain when it
    is plain text, quoted when YAML would read it as something else (a lab named `0`, `no`,
    `null` or `1_000` is a number, a boolean or null written plain)."""
    import yaml     # lazy: as jinja2 (the model loads it anyway)

    if PLAIN_RE.fullmatch(text) and yaml.resolver.Resolver().resolve(yaml.ScalarNode, text, (True, False)) == \
            "tag:yaml.org,2002:str":
        return text
    return json.dumps(text)


def default_command(shape: Shape, name: str | None, backend: str | None, serve: str | None) -> str:
    """The command line that makes this file, when the caller does not pass the one typed."""
    parts = ["nslab", "generate", shape.text]
    if name and name != default_name(shape):
        parts += ["--name", name]
    if backend:
        parts += ["--backend", backend]
    if serve:
        parts += ["--serve", serve]
    return " ".join(parts)


def write(shape: str, output: str | None = None, name: str | None = None, backend: str | None = None,
          serve: str | None = None, argv: list[str] | None = None) -> tuple[str, Shape]:
    """`nslab generate SHAPE [-o OUTPUT] ...` (argv: the arguments as typed, echoed in the
    header): writes OUTPUT (or returns the text for standard output) and returns the text
    and the shape.  Every value that reaches the file or names it is one line of printable
    text, or nothing is written (UsageError, exit 2)."""
    sh = parse_shape(shape)
    for option, value in (("-o", output), ("--name", name), ("--backend", backend), ("--serve", serve)):
        refuse_control(option, value)
    for arg in argv or ():
        refuse_control("argument", arg)
    text = render(sh, name=name, backend=backend, serve=serve, file=output,
                  command=shlex.join(["nslab", *argv]) if argv is not None else None)
    if output is not None:
        try:
            with open(output, "w", encoding="utf-8") as f:
                f.write(text)
        except OSError as e:
            raise NslabError(f"cannot write {output}: {e.strerror}") from None
    return text, sh
