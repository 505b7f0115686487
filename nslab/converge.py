"""`nslab up FILE` on a lab that runs: apply only the difference (compile/diff.py) between
the plan in the lab's record and the plan of the file now, under the lab's lock.

Crash safety, in the order things happen:
1. The target plan is written to the run directory (PENDING, atomically), then the record
   says `converging` and lists the namespaces of both plans (down looks at all of them).
2. Processes the agent runs stop (if services or dataplanes change) and leave the record.
3. Namespaces that go or are recreated lose their veths (their far ends go at once, not
   when the kernel gets round to the namespace), are unmounted, and only then leave the
   record's identities.
4. In place: deletes (undo), then the new ops through the RecordingApplier: a new
   namespace's identity is in the record before its name exists, as at `up`.
5. Hosts file and links, hostnames (UTS), the agent with the new services.
6. The record: built topology and plan = the new ones, then status `up`; PENDING goes.
Killed anywhere: `down` removes what the record names (old and new namespaces, processes,
links).  The next `up` sees `converging` and recreates every namespace the interrupted
converge touched (compile/diff.py's `touched` of record -> PENDING), whatever state it was
left in, then converges to its own file."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re

from . import lab as L
from . import plan as P
from . import state
from .apply import containers, netns, qdisc
from .compile import diff
from .errors import NslabError, UsageError
from .model import limits
from .runtime import agent

PENDING = "pending-plan.json"
CONDITIONS = "_conditions"        # shaping.RECORD_KEY: `nslab link set` changes, "node:iface" -> mapping
NOT_DELETABLE = (errno.EOPNOTSUPP, errno.EINVAL)    # fallback tunnels (tunl0, sit0...) stay with their namespace


def target_plan(topo, overrides: dict | None) -> P.Plan:
    """The plan `up` would apply for `topo` (compiled, fitted to this kernel and to netem)."""
    plan = L.plan_for_this_kernel(topo)
    qdisc.fit_plan(plan, without_netem=bool((overrides or {}).get("without_netem")))
    return plan


def node_names(*plans: P.Plan) -> dict[str, str]:
    return {op.ns: op.node for plan in plans for op in plan.ops if isinstance(op, P.Netns)}


def preview(topo, overrides: dict | None) -> tuple[diff.Converge, dict]:
    """--dry-run: the converge `up` would do (everything added when the lab does not run)."""
    st = state.load(topo.name)
    running = st is not None and st.status in ("up", "converging")
    if running and not overrides:
        overrides = st.overrides or None
    if running and st.status == "up" and unchanged(topo, overrides, st):
        return diff.Converge(), {}
    new = target_plan(topo, overrides)
    if not running:
        return diff.compute(P.Plan(lab=topo.name), new), node_names(new)
    new_lines = P.op_lines(new)
    old, old_lines = applied(topo.name, st, new, new_lines)
    force = interrupted(topo.name, st, old) if st.status == "converging" else set()
    c = diff.compute(old, new, force, (old_lines, new_lines))
    return c, node_names(old, new)


def applied(lab: str, st: state.LabState, new: P.Plan, new_lines: list[str]) -> tuple[P.Plan, list[str]]:
    """The record's plan and its ops' lines; its lines that the new plan has too are the
    new plan's ops (equal ops, equal lines): only what changed is decoded (~0.1 s of the
    ~12,000 ops of a 1,000-pod lab otherwise)."""
    return L.applied_plan_lines(lab, st, dict(zip(new_lines, new.ops)))


def unchanged(topo, overrides: dict | None, st: state.LabState) -> bool:
    """The lab was built from exactly this text with these options: nothing to compile or
    compare (the plan is a function of both; a 10,000-node file compiles in seconds)."""
    try:
        return dict(overrides or {}) == dict(st.overrides or {}) and \
            state.read_built(topo.name, state.TOPOLOGY, st) == L._source(topo)
    except state.RecordError:
        return False


def summary(c: diff.Converge, nodes: dict) -> dict:
    """--json: what a converge changes, per node (ops as --dry-run describes them)."""
    def node(ns):
        return nodes.get(ns, ns.split(".", 1)[-1])
    per: dict[str, dict] = {}
    for sign, ops in (("added", c.added), ("removed", c.removed)):
        for op in ops:
            if not isinstance(op, P.Netns):
                per.setdefault(node(op.ns), {"added": [], "removed": []})[sign].append(diff.describe(op))
    return dict(changed=not c.empty, created=[node(ns) for ns in c.create], removed=[node(ns) for ns in c.remove],
                recreated={node(ns): why for ns, why in c.recreate.items()}, nodes=per, hosts=c.hosts,
                agent_restarted=c.agent)


def unchanged_file(file: str, name: str | None) -> str | None:
    """The running lab whose record holds exactly the text of `file`, read from that path,
    found without parsing it (a 10,000-node file takes seconds to parse); None otherwise,
    and then the file is parsed and compared as usual.  No --name: the lab's name is the
    file's top-level `name:` (a plain one; anything else takes the usual way), else its stem."""
    path = os.path.abspath(L.find_topology(file))
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    if name is None:
        m = re.search(rb"^name:[ \t]*([a-z0-9][a-z0-9_-]*)[ \t]*(#.*)?$", data, re.M)
        if m:
            name = m.group(1).decode()
        else:
            from .model.types import lab_name_from_file     # lazy: it loads the model (YAML), 0.1 s
            name = lab_name_from_file(path)
    try:
        st = state.load(name)
    except state.RecordError:
        return None
    if st is None or st.status != "up" or st.file != path or \
            st.built.get(state.TOPOLOGY) != hashlib.sha256(data).hexdigest():
        return None
    return name


def interrupted(lab: str, st: state.LabState, old: P.Plan) -> set[str]:
    """The namespaces an interrupted converge may have left half-changed: those its diff
    touched, and any it listed that the applied plan does not have."""
    extra = set(st.namespaces) - set(old.namespaces)
    try:
        with open(os.path.join(st.dir, PENDING)) as f:
            pending = P.from_json(f.read())
    except (OSError, ValueError, TypeError):       # not written yet or unreadable: assume the worst
        return set(old.namespaces) | extra
    return diff.compute(old, pending).touched | extra


def converge(topo, overrides: dict | None = None, progress=None) -> tuple[diff.Converge, P.Plan, state.LabState,
                                                                         list[str]]:
    """Bring running lab `topo.name` to `topo`.  Returns (what changed, the new plan, the
    record, notices)."""
    L.require_root()
    lab = topo.name
    with state.locked(lab) as exists:
        st = state.load(lab) if exists else None
        if st is None or st.status not in ("up", "converging"):
            raise L._taken(topo)
        overrides = overrides or st.overrides or None
        resuming = st.status == "converging"
        if not resuming and unchanged(topo, overrides, st):
            return diff.Converge(), None, st, []
        new = target_plan(topo, overrides)
        new_lines = P.op_lines(new)
        old, old_lines = applied(lab, st, new, new_lines)
        # the plans' namespaces, found once (a 1,000-pod plan has ~12,000 ops to walk)
        old_nss, new_nss = _netns(old), _netns(new)
        _own_names(lab, old_nss)
        c = diff.compute(old, new, interrupted(lab, st, old) if resuming else (), (old_lines, new_lines))
        if resuming:
            c.agent = c.agent or any(isinstance(op, diff.PROCESS_OPS) for op in new.ops + old.ops)
        if c.empty and not resuming:
            return c, new, st, []
        engine = _refuse(lab, c, new_nss, st)
        try:
            notices = _run(topo, st, (old_nss, new_nss), new, c, overrides, progress, engine,
                           P.to_json(new, new_lines))
        except NslabError as e:         # the record says converging: the next up or down finishes
            half = NslabError(f"{e} (lab {lab} is half-converged: `nslab up` again finishes it, "
                              f"`nslab down {lab}` removes it)")
            half.exit_code = e.exit_code
            raise half from None
        return c, new, st, notices


def _own_names(lab: str, old_nss: list[P.Netns]) -> None:
    """The recorded plan is input (issue 18, hole 3): its node names become paths (the
    nodes' UTS files under the run directory) and its namespaces are dropped or changed, so
    each of its namespaces (`old_nss`: its Netns ops) must be `LAB.NODE` with NODE a node
    name, or nothing happens."""
    for op in old_nss:
        if op.ns != f"{lab}.{op.node}" or not state.lab_namespace(lab, op.ns):
            raise state.RecordError(f"lab {lab}: its recorded plan names namespace {op.ns!r} for node {op.node!r}, "
                                    f"which is not how lab {lab} names its nodes: nslab will not touch it; "
                                    f"`nslab down {lab}` and bring it up again")


def _refuse(lab: str, c: diff.Converge, new_nss: list[P.Netns], st: state.LabState):
    """What this converge cannot do, said before anything changes; the container engine
    when containers are to be started (their images here, their names free).  `new_nss`:
    the new plan's Netns ops."""
    starting = [op for op in new_nss if op.container and (op.ns in c.create or op.ns in c.recreate)]
    engine = containers.check(P.Plan(lab=lab, ops=starting)) if starting else None
    if engine is not None:     # the lab's own containers of those names are no conflict (they go first)
        containers.conflicts(engine, P.Plan(lab=lab, ops=starting), lab, st.dir)
    for ns in c.create:
        ident = state.ns_identity(netns.path(ns))
        if ident is not None and ident != st.ns_ids.get(ns):
            raise UsageError(f"network namespace {ns} already exists and nslab did not make it for lab {lab}; "
                             f"remove it (ip netns del {ns}) or rename the lab with --name")
    # every namespace the record's plan names that this converge changes, drops or recreates:
    # the lab's by name rule, and (where it exists) verifiably the one nslab made (state.verified_ids)
    kept = {ns for op in c.apply + c.undo for ns in diff.namespaces_of(op)} - set(c.create)
    for ns in sorted(kept | set(c.remove) | set(c.recreate)):
        if state.lab_namespace(lab, ns) and state.ns_identity(netns.path(ns)) is None:
            continue                    # gone already: nothing of anyone's is there to touch
        problem = state.namespace_problem(st, ns)
        if problem:
            raise NslabError(problem)
    return engine


def _run(topo, st, nss: tuple[list, list], new, c, overrides, progress, engine, plan_json: str) -> list[str]:
    lab = topo.name

    def record(change) -> None:        # our copy first, then the record
        change(st)
        state.update(lab, change)

    def record_namespaces(ids: dict) -> None:
        st.ns_ids.update(ids)
        state.record_namespaces(lab, ids)

    old_nss, new_nss = nss          # the plans' Netns ops
    nodes = {op.ns: op.node for op in old_nss + new_nss}
    boxed = {op.ns for op in new_nss if op.container}
    # 1. what is about to happen
    state._write_file(lab, PENDING, plan_json.encode())
    union = list(dict.fromkeys(st.namespaces + [op.ns for op in old_nss] + [op.ns for op in new_nss]))
    record(lambda s: (setattr(s, "status", "converging"), setattr(s, "namespaces", union)))
    # 2. processes
    if c.agent:
        _stop_agent(st, record)
    # 3. namespaces that go or are made afresh (a container node's container with it)
    for ns in list(c.remove) + list(c.recreate) + list(c.create):
        _drop(lab, st, ns, record, nodes.get(ns))

    def start_container(op):            # as `up` does: its identity recorded before its name
        pid = containers.start(engine, st, op, new.hosts, state.update)
        ident = state.container_namespace(pid, f"container node {op.node}")
        record(lambda s: s.ns_ids.__setitem__(op.ns, ident))
        return pid
    # 4. in place, then the new ops
    applier = L.RecordingApplier(record, record_namespaces, max_open=limits.OPEN_NAMESPACES, progress=progress,
                                 start_container=start_container)
    made = set(c.recreate) | set(c.create)
    try:
        for ns in sorted({ns for op in c.apply + c.undo for ns in diff.namespaces_of(op)} - made):
            applier.open_namespace(ns)
        undo: dict[str, list] = {}
        for op in c.undo:
            undo.setdefault(op.ns, []).append(op)
        for ns, ops in undo.items():
            applier.undo(applier.namespaces[ns], [op for op in ops if not isinstance(op, P.Link)])
        for ns, ops in undo.items():       # links last: a veth takes its far end with it
            applier.undo(applier.namespaces[ns], [op for op in ops if isinstance(op, P.Link)])
        early = [op for op in c.apply if isinstance(op, P.Sysctl) and op.stage == P.STAGE_NAMESPACE
                 and op.ns not in made]
        for op in early:                   # a kept namespace's changed sysctl: written now
            applier.run_batch(applier.namespaces[op.ns], [op])
        early_ids = {id(op) for op in early}
        ops = P.Plan(lab=lab, ops=[op for op in c.apply if id(op) not in early_ids])
        applier.prepare(ops)
        applier.apply(ops)
    finally:
        applier.close()
    # 5. names, hostnames, services
    _hosts(st, new, new_nss, c, record)
    gone_nodes = [nodes[ns] for ns in c.remove if ns in nodes]
    fresh = [nodes[ns] for ns in c.create if ns not in boxed]
    remove_uts(st.dir, gone_nodes + fresh)
    L.make_uts(st.dir, fresh)
    services = [op for op in new.ops if isinstance(op, diff.PROCESS_OPS)] if c.agent else []
    if services:
        agent.start(st, services)
    # 6. the record: what is built now
    notices, conditions = _conditions(st, c, new)
    state.record_built(lab, L._source(topo), plan_json)

    def done(s):
        s.status = "up"
        s.file = os.path.abspath(topo.file) if os.path.exists(topo.file) else topo.file
        s.namespaces = [op.ns for op in new_nss]
        s.nodes = {node.name: node.ns for node in topo.nodes.values()}
        s.info = {**new.notes, **({CONDITIONS: conditions} if conditions else {})}
        s.overrides = dict(overrides or {})
    record(done)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(st.dir, PENDING))
    return notices


def _netns(plan: P.Plan) -> list[P.Netns]:
    return [op for op in plan.ops if isinstance(op, P.Netns)]


def _stop_agent(st: state.LabState, record) -> None:
    """Stop the lab agent, its warden and the dataplanes (started again with the new set)."""
    whats = set(agent.expected(st))
    procs = [p for p in st.processes if p.what in whats or p.what.startswith((agent.AGENT, agent.WARDEN))]
    state.stop_processes([p for p in procs if state.labs_process(st, p)])
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(st.dir, agent.SPEC))
    gone = {(p.pid, p.start_time) for p in procs}
    record(lambda s: setattr(s, "processes", [p for p in s.processes if (p.pid, p.start_time) not in gone]))


def _drop(lab: str, st: state.LabState, ns: str, record, node: str | None = None) -> None:
    """Remove namespace `ns` if it is the lab's (its veths first: their far ends go now),
    and node `node`'s container if the lab has one, then forget both.  Someone else's
    namespace of that name: refused."""
    path = netns.path(ns)
    ident = state.ns_identity(path)
    if ident is not None and ns not in state.verified_ids(st, [ns]):
        raise NslabError(f"namespace {ns} is not the one lab {lab} made (another has its name): nslab leaves it "
                         f"alone; remove it (ip netns del {ns}) and run `nslab up` again")
    if ident is not None:
        applier = L.Applier()
        try:
            handle = applier.open_namespace(ns)
            for dev in [d for d in handle.ifindex if d != "lo"]:
                applier.delete_links(handle, [dev], applier.GONE + NOT_DELETABLE)
        finally:
            applier.close()
    boxed = [r for r in st.containers if node is not None and r.get("node") == node]
    if boxed:
        containers.remove([box for box in containers.owned(lab, st.dir, boxed)
                           if box.labels.get(containers.LABEL_NODE) == node])
        record(lambda s: setattr(s, "containers", [r for r in s.containers if r.get("node") != node]))
    if os.path.lexists(path):
        netns.remove(ns)
    if ns in st.ns_ids:
        record(lambda s: s.ns_ids.pop(ns, None))


def _hosts(st: state.LabState, new: P.Plan, new_nss: list[P.Netns], c: diff.Converge, record) -> None:
    """The lab's hosts files rewritten (the lab's folder and the pods' kubelet folders,
    state.etc_folder), /etc/netns links for new namespaces (`new_nss`: the new plan's
    Netns ops), removed ones' links gone."""
    own = state.etc_folder_re(st.dir)
    for ns in c.remove:
        link = os.path.join(state.HOSTS_DIR, ns)
        if os.path.islink(link) and own.fullmatch(os.readlink(link)):
            os.unlink(link)
    if c.remove:
        record(lambda s: setattr(s, "files", [f for f in s.files if os.path.basename(f) not in c.remove]))
    if not new.hosts:
        return
    folders = [os.path.join(st.dir, d) for d in sorted(os.listdir(st.dir))
               if own.fullmatch(os.path.join(st.dir, d)) and os.path.isdir(os.path.join(st.dir, d))]
    etc = state.etc_folder(st.dir)
    for folder in folders if c.hosts or not os.path.exists(os.path.join(etc, "hosts")) else ():
        tmp = os.path.join(folder, ".hosts.tmp")
        with open(tmp, "w") as f:
            f.write(L.hosts_text(new))
        os.replace(tmp, os.path.join(folder, "hosts"))
    # one readlink per namespace (a 1,000-pod lab has ~1,000): None where no link is
    targets = {op.ns: _link_target(os.path.join(state.HOSTS_DIR, op.ns)) for op in new_nss}
    missing = {ns for ns, target in targets.items() if target is None}
    # a namespace whose resolv.conf changed (cluster DNS added or dropped: kubelet's text or
    # the lab's) is linked again to its new folder; `ip netns exec` binds it at the next exec
    folder_of: dict[str, str] = {}      # resolv.conf text -> its folder (one digest per text)
    for op in new_nss:
        if op.ns not in missing:
            note = new.notes.get(op.node)
            text = L.resolv_conf(note)
            if text not in folder_of:
                folder_of[text] = L.etc_folder(st.dir, note)
            folder, target = folder_of[text], targets[op.ns]
            if own.fullmatch(target) and target != folder:
                os.unlink(os.path.join(state.HOSTS_DIR, op.ns))
                missing.add(op.ns)
    if missing:
        # the new namespaces as the new plan has them: a pod's note holds kubelet's resolv.conf
        ops = [op for op in new_nss if op.ns in missing]
        made = P.Plan(lab=new.lab, ops=ops, hosts=new.hosts,
                      notes={op.node: new.notes[op.node] for op in ops if op.node in new.notes})
        L.write_hosts_files(made, st, record, L.hosts_leftovers(made))


def _link_target(path: str) -> str | None:
    """What symlink `path` points to; None if there is none (or no symlink) there."""
    try:
        return os.readlink(path)
    except OSError:
        return None


def remove_uts(run_dir: str, nodes: list[str]) -> None:
    """Nodes' hostnames (UTS namespaces) unmounted and their files removed, if there."""
    for node in nodes:
        path = L.uts_path(run_dir, node)
        with contextlib.suppress(OSError):
            netns.umount(path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _conditions(st: state.LabState, c: diff.Converge, new: P.Plan) -> tuple[list[str], dict]:
    """`nslab link set` changes (record info[_conditions]) that the kernel still holds after
    this converge are kept; those on a device that was replaced or whose conditions the
    file changed are reported and dropped (the file's hold)."""
    kept, notices = {}, []
    rebuilt = set(c.recreate) | set(c.remove)
    changed = {(op.ns, op.dev) for op in c.added + c.removed if isinstance(op, P.Qdisc)}
    for key, mapping in (st.info.get(CONDITIONS) or {}).items():
        node, _, iface = key.partition(":")
        ns = st.nodes.get(node)
        if ns is None or ns in rebuilt or (ns, iface) in c.dying or (ns, iface) in changed:
            notices.append(f"link conditions set with `nslab link set` on {key} are replaced by the file's")
        else:
            kept[key] = mapping
    return notices, kept
