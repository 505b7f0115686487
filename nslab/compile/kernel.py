"""Fit a plan to this kernel: where ipip is missing (or NSLAB_IPIP says so), ipip devices
become TUN devices plus userspace encapsulators (runtime.tunnels).  Pure given the ipip
state that apply.kernel.ipip_state() reads; NSLAB_IPIP=kernel|userspace|userspace:NODE,NODE
overrides the choice (kernel/userspace interop tests)."""
from __future__ import annotations

import os

from .. import plan as P
from ..errors import PrerequisiteError, UsageError

USERSPACE_NOTE = "ipip: userspace (kernel module missing)"
UNLOADED_NOTE = ("ipip: userspace (the ipip module is not loaded; nslab does not load it: `modprobe ipip` "
                 "makes the next `nslab up` use the kernel's, and adds tunl0 to the root namespace)")


def fit_to_kernel(plan, state: str) -> None:
    """Swap the plan's ipip devices for TUN devices plus encapsulators where the kernel
    has no ipip (or NSLAB_IPIP says so); note it for `nslab up` and `nslab show`."""
    links = [i for i, op in enumerate(plan.ops) if isinstance(op, P.Link) and op.kind == "ipip"]
    if not links:
        return
    mode, _, only = os.environ.get("NSLAB_IPIP", "auto").partition(":")
    if mode not in ("auto", "kernel", "userspace"):
        raise UsageError(f"NSLAB_IPIP={os.environ['NSLAB_IPIP']} is not auto, kernel, userspace or "
                         f"userspace:NODE,NODE")
    has = state == "loaded"
    if mode == "kernel" and state == "unloaded":
        raise PrerequisiteError("NSLAB_IPIP=kernel but the ipip module is not loaded, and nslab never loads it "
                                "(loading ipip adds tunl0 to the root namespace): run `modprobe ipip` yourself if "
                                "that is acceptable, or unset NSLAB_IPIP to use the userspace encapsulator")
    if mode == "kernel" and not has:
        raise PrerequisiteError("NSLAB_IPIP=kernel but this kernel has no ipip module; unset NSLAB_IPIP to use "
                                "the userspace encapsulator")
    if mode in ("auto", "kernel") and has:
        return
    nodes = {op.ns: op.node for op in plan.ops if isinstance(op, P.Netns)}
    chosen = set(only.split(",")) if only else None
    why = ("ipip: userspace (NSLAB_IPIP=userspace)" if has else
           USERSPACE_NOTE if state == "absent" else UNLOADED_NOTE)
    for i in links:
        op = plan.ops[i]
        node = nodes[op.ns]
        if chosen is not None and node not in chosen:
            continue
        o = dict(op.ipip)
        plan.ops[i] = P.Link(ns=op.ns, name=op.name, kind="tun", mtu=op.mtu, stage=op.stage)
        plan.add(P.Daemon(ns=op.ns, node=node, kind="ipip", dev=op.name,
                          config=(("local", o["local"]), ("remote", o.get("remote") or "any"),
                                  ("pmtudisc", int(o.get("pmtudisc", True))))))
        plan.notes.setdefault(node, {})["dataplane"] = f"{why}: {op.name} is a TUN device and an encapsulator process"
    if chosen is not None:
        # Mixed lab (kernel and userspace ipip nodes): kernel nodes must hand the wire
        # complete packets, as a real NIC would, not checksum-partial GSO ones.
        for i in links:
            op = plan.ops[i]
            if op.kind == "ipip":
                local = dict(op.ipip)["local"]
                dev = next(a.dev for a in plan.ops if isinstance(a, P.Addr) and a.ns == op.ns
                           and a.address.split("/")[0] == local)
                plan.add(P.TxChecksum(op.ns, dev, on=False))
    plan.notes.setdefault("_notices", []).append(
        f"{why}: ipip devices are TUN devices with an encapsulator process per node; the packets on the wire "
        f"are the kernel's (outer IP protocol 4, TTL inherited)")
