"""Node tunnels (model.tunnels) -> ipip Link and Addr ops."""
from __future__ import annotations

from .. import plan as P


def compile_tunnels(topo, plan) -> None:
    for node in topo.nodes.values():
        for t in getattr(node, "tunnels", ()):
            plan.add(P.Link(ns=node.ns, name=t.name, kind="ipip", mtu=t.mtu, stage=P.STAGE_DEVICE,
                            ipip=(("local", str(t.local)), ("remote", str(t.remote) if t.remote else None),
                                  ("pmtudisc", t.pmtudisc))))
            if t.ip is not None:
                plan.add(P.Addr(node.ns, t.name, str(t.ip) if t.peer is None else f"{t.ip.ip}/32",
                                peer=str(t.peer) if t.peer else None))
