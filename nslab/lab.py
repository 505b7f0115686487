"""Bring labs up and down: model -> plan -> state record -> apply, and the reverse."""
from __future__ import annotations

import os
import shutil

from . import model, netns, state
from .apply import Applier
from .compile import compile_topology
from .errors import PrerequisiteError, TopologyError, UsageError
from .plan import Daemon, Plan, Serve


def require_root() -> None:
    if os.geteuid() != 0:
        raise PrerequisiteError("root privileges are needed to create network namespaces: run nslab with sudo "
                                "(or as root)")


def require_tools(*tools: str) -> None:
    packages = {"ip": "iproute2", "bridge": "iproute2", "tcpdump": "tcpdump", "ping": "iputils-ping",
                "iperf3": "iperf3", "iptables": "iptables", "ethtool": "ethtool"}
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pkgs = sorted({packages.get(t, t) for t in missing})
        raise PrerequisiteError(f"{', '.join(missing)} not found: install it with "
                                f"`apt-get install -y {' '.join(pkgs)}`")


def load(file: str, name: str | None = None, overrides: dict | None = None) -> model.Topology:
    return model.load(file, name=name, overrides=overrides)


def topology(lab: str) -> model.Topology:
    """The resolved topology of a running lab, exactly as it was built (same file, name
    and command-line overrides), for observers that need names, MACs and addresses."""
    st = state.load(lab)
    if st is None:
        raise UsageError(f"no lab named {lab!r} is running")
    return model.load(st.file, name=lab, overrides=st.overrides or None)


def up(topo: model.Topology, overrides: dict | None = None) -> tuple[Plan, state.LabState]:
    """Build the lab; on any failure remove what was made and re-raise."""
    require_root()
    plan = compile_topology(topo)
    from .tunnel import fit_to_kernel
    fit_to_kernel(plan)                # no kernel ipip: TUN devices + encapsulators instead
    from . import containers
    engine = containers.check(plan)    # container nodes: the engine answers, the images are here
    if state.load(topo.name) is not None:
        raise already_running(topo)
    taken = [ns for ns in plan.namespaces if netns.exists(ns)]
    if taken:
        raise UsageError(f"network namespace {taken[0]} already exists and nslab did not make it for lab "
                         f"{topo.name}; remove it (ip netns del {taken[0]}) or rename the lab with --name")
    try:
        st = state.claim(topo.name, topo.file)
    except FileExistsError:
        raise already_running(topo) from None
    try:
        st.namespaces = list(plan.namespaces)
        st.nodes = {node.name: node.ns for node in topo.nodes.values()}
        st.info = dict(plan.notes)
        st.overrides = dict(overrides or {})
        st.files = [os.path.join(state.HOSTS_DIR, ns) for ns in plan.namespaces] if plan.hosts else []
        st.save()                      # recorded before anything exists
        write_hosts_files(plan, st)
        applier = Applier(start_container=lambda op: containers.start(engine, st, op, plan.hosts))
        try:
            applier.apply(plan)
        finally:
            applier.close()
        services = [op for op in plan.ops if isinstance(op, (Serve, Daemon))]
        if services:
            from . import agent
            agent.start(st, services)
        st.status = "up"
        st.save()
    except BaseException:
        state.destroy(st)
        raise
    return plan, st


def already_running(topo: model.Topology) -> TopologyError:
    doc = topo.doc
    path = ("name",) if doc and "name" in (doc.data or {}) else ()
    return TopologyError(os.path.basename(topo.file), doc.line(path) if doc and path else None,
                         "name" if path else "",
                         f"lab {topo.name!r} is already running (`nslab down {topo.name}` first, or give "
                         f"this one another name with --name)")


def write_hosts_files(plan: Plan, st: state.LabState) -> None:
    """Node names for `ip netns exec` (and so `nslab exec`): it bind-mounts
    /etc/netns/<ns>/hosts over /etc/hosts.  One hosts file per lab, under the lab's run
    directory; each /etc/netns/<ns> is a symlink to its folder (one write in /etc per
    namespace, one unlink at down)."""
    if not st.files:
        return
    etc = os.path.join(st.dir, "etc")
    os.makedirs(etc, exist_ok=True)
    with open(os.path.join(etc, "hosts"), "w") as f:
        f.write("127.0.0.1 localhost\n" + "".join(f"{addr} {name}\n" for name, addr in sorted(plan.hosts.items())))
    if not os.path.isdir(state.HOSTS_DIR):
        os.makedirs(state.HOSTS_DIR, exist_ok=True)
        open(state.HOSTS_DIR_MARK, "w").close()     # nslab made it: the last down removes it
    for link in st.files:
        os.symlink(etc, link)


def down(lab: str) -> list[str]:
    require_root()
    st = state.load(lab)
    if st is None:
        raise UsageError(f"no lab named {lab!r} is running (running: {', '.join(state.labs()) or 'none'})")
    return state.destroy(st)


def resolve_lab(lab: str | None) -> str:
    """-l LAB, or the only running lab."""
    running = state.labs()
    if lab:
        if lab not in running:
            raise UsageError(f"no lab named {lab!r} is running (running: {', '.join(running) or 'none'})")
        return lab
    if len(running) == 1:
        return running[0]
    if not running:
        raise UsageError("no lab is running (start one with `nslab up`)")
    raise UsageError(f"several labs are running ({', '.join(running)}): say which with -l LAB")


def node_namespace(lab: str, node: str) -> str:
    st = state.load(lab)
    if node not in st.nodes:
        raise UsageError(f"lab {lab} has no node {node!r} (nodes: {', '.join(st.nodes)})")
    return st.nodes[node]


def rewire(lab: str) -> list[str]:
    """Wire a running lab's containers again where they have a new network namespace
    (`docker restart`, or stopped or removed under nslab's feet: started or created again).
    Their old namespace is dropped with its veths, then every operation of the plan that
    touched it is applied again.  Returns the nodes re-wired."""
    require_root()
    from . import containers
    from .compile import compile_topology
    from .plan import Netns, Sysctl, STAGE_NAMESPACE
    from .tunnel import fit_to_kernel
    st = state.load(lab)
    if st is None:
        raise UsageError(f"no lab named {lab!r} is running (running: {', '.join(state.labs()) or 'none'})")
    plan = compile_topology(topology(lab))
    fit_to_kernel(plan)
    specs = [op for op in plan.ops if isinstance(op, Netns) and op.container is not None]
    if not specs:
        return []
    engine = containers.check(plan)
    done = []
    for netns_op in specs:
        pid = containers.ensure_running(engine, st, netns_op, plan.hosts)
        named = netns.path(netns_op.ns)
        if os.path.exists(named) and os.stat(named).st_ino == os.stat(f"/proc/{pid}/ns/net").st_ino:
            continue
        ops = containers.ops_touching(plan, netns_op.ns)
        applier = Applier()
        try:
            if os.path.exists(named):    # the old namespace still holds the veths: free their names
                old = applier.open_namespace(netns_op.ns)
                applier.delete_links(old, [d for d in old.ifindex if d != "lo"])
                applier.namespaces.pop(netns_op.ns).close()
                netns.remove(netns_op.ns)
            applier.adopt_namespace(netns_op.ns, pid, [op for op in ops if isinstance(op, Sysctl)
                                                       and op.ns == netns_op.ns and op.stage == STAGE_NAMESPACE])
            for ns in {op.ns for op in ops} - {netns_op.ns}:
                applier.open_namespace(ns)
            applier.apply(Plan(lab=lab, ops=ops))
        finally:
            applier.close()
        done.append(netns_op.node)
    return done
