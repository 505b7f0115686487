"""`placement:` in a topology: which machine runs a node, or a segment (issue 20).

    placement:
      rack1: m1          # a segment: its switch and every member without an entry of its own
      rack2: m2
      spine: m3          # a node
      leaf01: m3         # a node's own entry wins over its segment's

Only what the file says is checked here (the keys name nodes or segments, the values are
machine names); whether every node ends up on a machine, and on which of the machines a
command was given, is compile/placement.py's, which sees the resolved topology."""
from __future__ import annotations

import re

from .types import name_list

# A machine name is a host name label (RFC 1123: letters, digits, '-', at most 63), plus
# '_': it becomes part of etcd keys (/nslab/machines/NAME) and of messages, never a path.
MACHINE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
MAX_MACHINE_NAME = 63


def machine_problem(name) -> str | None:
    """Why `name` cannot be a machine name, or None."""
    if not isinstance(name, str) or not MACHINE_RE.fullmatch(name) or len(name) > MAX_MACHINE_NAME:
        return (f"machine name {name!r} must be letters, digits, '-' or '_' (starting with a letter or "
                f"digit, at most {MAX_MACHINE_NAME} characters)")
    return None


def parse(p, b, value, path: tuple) -> dict[str, tuple[str, tuple]]:
    """The `placement:` section -> {node or segment: (machine, its YAML path)}."""
    entries = p.mapping(value, path, what="placement")
    out: dict[str, tuple[str, tuple]] = {}
    for name, machine in entries.items():
        at = tuple(path) + (name,)
        p.node_name(name, at)
        node = b.nodes.get(name)
        if node is None:
            raise p.err(at, f"{name!r} is not a node or segment of this lab (known: {name_list(b.nodes)})")
        if node.kind == "pod":
            pod = getattr(b.cluster, "pods", {}).get(name)
            host = f"node {pod.node}" if pod is not None and pod.node else "cluster node"
            raise p.err(at, f"{name} is a pod: it runs on the machine of its {host}; place that instead")
        problem = machine_problem(machine)
        if problem:
            raise p.err(at, problem)
        out[name] = (machine, at)
    return out
