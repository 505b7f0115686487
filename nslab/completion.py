"""Tab completion of lab names, node names and NODE:IFACE, from the labs' records (what
`up` recorded: no namespace is entered, nothing is changed).  Typer calls these while the
shell completes (`nslab --install-completion` for bash, zsh or fish); any problem reading a
record completes nothing rather than printing an error into the user's command line.
Typer passes the click context and the word being completed by parameter name (`ctx`,
`incomplete`): no annotation, so importing this module loads no typer (CLI start-up)."""
from __future__ import annotations


def _lab_of(ctx) -> str | None:
    return (ctx.params or {}).get("lab") if ctx is not None else None


def _records(ctx):
    """(lab, record) of the lab the command line names (-l), else of every running lab."""
    from . import state  # lazy: start-up of every other command
    chosen = _lab_of(ctx)
    for lab in ([chosen] if chosen else state.labs()):
        try:
            st = state.load(lab)
        except Exception:            # a record being written or unreadable: complete nothing from it
            continue
        if st is not None:
            yield lab, st


def labs(ctx, incomplete) -> list[str]:
    from . import state  # lazy: start-up
    return [lab for lab in state.labs() if lab.startswith(incomplete)]


def nodes(ctx, incomplete) -> list[str]:
    """Node names, and LAB.NODE (the namespace names nslab prints) once a '.' is typed or
    several labs run."""
    records = list(_records(ctx))
    out = []
    for lab, st in records:
        out += [n for n in st.nodes if n.startswith(incomplete)]
        if "." in incomplete or len(records) > 1:
            out += [f"{lab}.{n}" for n in st.nodes if f"{lab}.{n}".startswith(incomplete)]
    return sorted(dict.fromkeys(out))


def node_ifaces(ctx, incomplete) -> list[str]:
    """NODE (then NODE:IFACE once the node is typed with its ':'), IFACE from the lab's
    applied plan: the interfaces `up` made in that node."""
    if ":" not in incomplete:
        return nodes(ctx, incomplete)
    node, _, prefix = incomplete.partition(":")
    lab_hint, dot, bare = node.partition(".")
    out = []
    for lab, st in _records(ctx):
        name = bare if dot and lab == lab_hint else node
        ns = st.nodes.get(name)
        if ns is None:
            continue
        try:
            from . import lab as labmod  # lazy: start-up
            plan = labmod.applied_plan(lab, st)
        except Exception:
            continue
        out += [f"{node}:{i}" for i in _interfaces(plan, ns) if i.startswith(prefix)]
    return sorted(dict.fromkeys(out))


def _interfaces(plan, ns: str) -> list[str]:
    from . import plan as P  # lazy: start-up
    names = []
    for op in plan.ops:
        if isinstance(op, P.Link):
            if op.ns == ns:
                names.append(op.name)
            if op.peer is not None and op.peer.ns == ns:
                names.append(op.peer.name)
    return names
