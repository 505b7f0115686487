"""The `nslab` command line."""
from __future__ import annotations

import functools
import gc
import json
import os
import sys
import time
from importlib import resources
from typing import List, Optional

from . import clikit as typer   # typer's declarations, recorded: typer itself loads only when needed
from . import console as out
from . import completion
from . import lab as labmod
from . import state
from .apply import containers, images
from . import compile as compiler       # compile_topology loads on first use (start-up)
from .compile.script import render
from .model.limits import raise_nofile_soft_limit
from .plan import Addr, Link
from . import spawn
from .runtime import agent as agentmod
from .errors import NslabError, UsageError
from . import backends

# `vxlan (default), host-gw, ipip or udp`: the registry's, for --backend's help
BACKEND_LIST = ", ".join(f"{n} (default)" if n == backends.DEFAULT_TYPE else n for n in backends.names()[:-1]) + \
    f" or {backends.names()[-1]}"

# add_completion: --install-completion/--show-completion (bash, zsh, fish); typer loads only
# for them and for the completion requests themselves, never for a plain command.
app = typer.Typer(add_completion=True, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Network labs in Linux namespaces: hosts, routers, bridges and flannel overlays. "
                       "`nslab --version` prints the version.")
console = out.Lazy()                   # rich, made on first use (plain lines go through out.say/out.warn)
err_console = out.Lazy(stderr=True)

LabOpt = typer.Option(None, "-l", "--lab", autocompletion=completion.labs, help="Lab name (default: $NSLAB_LAB, or the one lab that runs; a node given as LAB.NODE names it too).")


def default_topology() -> str:
    """The topology `nslab up` builds when given no file (bundled with the package)."""
    return str(resources.files("nslab").joinpath("topologies", "spine-leaf.yaml"))


def run(fn):
    """Turn NslabErrors into one line on stderr and their exit code (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except NslabError as e:
            out.warn(f"nslab: {e}")
            raise typer.Exit(e.exit_code)
        except PermissionError as e:
            out.warn(f"nslab: permission denied ({e.filename or e}): run nslab as root (sudo)")
            raise typer.Exit(3)
    return wrapper


BUILT_COLUMNS = ["node", "kind", "namespace", "interface", "type", "address", "peer", "mac", "mtu"]


def built_rows(topo, plan) -> list[dict]:
    """Every device `up` made, node by node from the plan: the file's interfaces and the
    overlay's (cni0, flannel.<VNI>, flannel.ipip, flannel0, tunl1...)."""
    node_of = {n.ns: n.name for n in topo.nodes.values()}
    devs: dict[str, dict[str, dict]] = {}
    addrs: dict[tuple[str, str], list[str]] = {}
    for op in plan.ops:
        if isinstance(op, Link):
            peer = f"{node_of.get(op.peer.ns, op.peer.ns)}:{op.peer.name}" if op.peer else ""
            devs.setdefault(op.ns, {})[op.name] = dict(type=op.kind, mtu=op.mtu, mac=op.mac or "", peer=peer)
            if op.peer:
                devs.setdefault(op.peer.ns, {})[op.peer.name] = dict(
                    type="veth", mtu=op.peer.mtu, mac=op.peer.mac or "", peer=f"{node_of.get(op.ns, op.ns)}:{op.name}")
        elif isinstance(op, Addr):
            addrs.setdefault((op.ns, op.dev), []).append(op.address)
    rows = []
    for node in topo.nodes.values():
        for dev, d in devs.get(node.ns, {}).items() or {"-": dict(type="", mtu="", mac="", peer="")}.items():
            rows.append(dict(node=node.name, kind=node.kind, namespace=node.ns, interface=dev, type=d["type"],
                             address=addrs.get((node.ns, dev), []), peer=d["peer"], mac=d["mac"], mtu=d["mtu"]))
    return rows


def built_table(topo, plan) -> None:
    rows, last = [], None
    piped = out.fits(console) is None        # every line whole for grep/awk: the node on each
    for r in built_rows(topo, plan):
        first = r["node"] != last or piped
        last = r["node"]
        rows.append([r["node"] if first else "", r["kind"] if first else "", r["namespace"] if first else "",
                     r["interface"], r["type"], "\n".join(r["address"]), r["peer"], r["mac"], str(r["mtu"])])

    def narrow(console, limit):        # a node's line, then one line per interface
        console.print(f"lab {topo.name}", markup=False)
        node = None
        for r in built_rows(topo, plan):
            if r["node"] != node:
                node = r["node"]
                console.print(out.wrap(f"{node}  {r['kind']}  namespace {r['namespace']}", limit), markup=False,
                              soft_wrap=True)
            parts = [r["interface"], r["type"], " ".join(r["address"]), r["peer"] and f"peer {r['peer']}", r["mac"],
                     r["mtu"] and f"mtu {r['mtu']}"]
            console.print(out.wrap("  " + "  ".join(p for p in parts if p), limit, 6), markup=False,
                          soft_wrap=True)
    out.table(console, BUILT_COLUMNS, rows, title=f"lab {topo.name}", optional=("kind", "type", "mtu", "mac"),
              narrow=narrow)


StitchPortOpt = typer.Option(4789, "--stitch-port", help="UDP port of the VXLAN stitches between machines.")
UnderlayMtuOpt = typer.Option(None, "--underlay-mtu", help="The MTU the machines' underlay carries (a stitch "
                              "adds 50 bytes to the lab's frames; default: the machines' own from etcd, else 1500).")
# etcd with TLS client certificates (coord.credentials): beside every --etcd
EtcdCaOpt = typer.Option(None, "--etcd-ca", help="The cluster's CA certificate (default: $NSLAB_ETCD_CA).")
EtcdCertOpt = typer.Option(None, "--etcd-cert", help="This side's client certificate (default: $NSLAB_ETCD_CERT).")
EtcdKeyOpt = typer.Option(None, "--etcd-key", help="Its key (default: $NSLAB_ETCD_KEY).")


def print_placement(placed, as_json: bool) -> None:
    """The lab over machines (compile/placement.py): where each node runs, the stitches."""
    from .compile import placement      # lazy: start-up
    if as_json:
        print(json.dumps(placement.as_dict(placed), indent=1))
        return
    for line in placement.render(placed, out.width()):
        out.say(line)


ProxyModeOpt = typer.Option(None, "--proxy-mode", help="Override kube-proxy's mode: iptables, nftables or ipvs "
                           "(cluster.kubeProxy.mode).")


def cluster_overrides(backend: str | None, proxy_mode: str | None = None) -> dict | None:
    """--backend and --proxy-mode as the model's overrides (None: the file as written)."""
    overrides = {k: v for k, v in (("backend", backend), ("proxy_mode", proxy_mode)) if v}
    return overrides or None


@app.command()
@run
def up(file: Optional[str] = typer.Argument(None, help="Topology YAML (default: the bundled spine-leaf lab)."),
       name: Optional[str] = typer.Option(None, "--name", "-n", help="Run the lab under this name."),
       backend: Optional[str] = typer.Option(None, "--backend", help=f"Override the cluster backend: TYPE or TYPE:PORT ({', '.join(backends.names())}; udp:8282)."),
       proxy_mode: Optional[str] = ProxyModeOpt,
       quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the lab name."),
       as_json: bool = typer.Option(False, "--json", help="Machine-readable output: the devices built (or, "
                                    "for a lab that runs, what changed)."),
       without_netem: bool = typer.Option(False, "--without-netem", help="On a kernel without netem, build the lab "
                                          "with its links' rates alone (no delay, jitter, loss)."),
       dry_run: bool = typer.Option(False, "--dry-run", help="Print what `up` would add (+), remove (-) and "
                                    "recreate (~) in the lab, and change nothing."),
       spread: Optional[str] = typer.Option(None, "--spread", metavar="M1,M2,...", help="Spread the lab over these "
                                            "machines (NAME or NAME=UNDERLAY-ADDRESS); with --dry-run, print the "
                                            "placement and the cross-machine links."),
       stitch_port: int = StitchPortOpt, underlay_mtu: int = UnderlayMtuOpt,
       etcd: Optional[str] = typer.Option(None, "--etcd", help="etcd of the machines a placed or spread lab runs "
                                          "on (default: $NSLAB_ETCD)."),
       etcd_ca: Optional[str] = EtcdCaOpt, etcd_cert: Optional[str] = EtcdCertOpt,
       etcd_key: Optional[str] = EtcdKeyOpt):
    """Build a lab from a topology file; for a lab that runs, apply only what the file changed."""
    from . import converge     # lazy: start-up (the differ loads only for a lab that runs)
    file = default_topology() if file is None else file     # '' is a file name (refused), not "none given"
    overrides = cluster_overrides(backend, proxy_mode)
    if without_netem:
        overrides = {**(overrides or {}), "without_netem": True}
    if os.geteuid() == 0 and not (dry_run or overrides or as_json or spread is not None):
        same = converge.unchanged_file(file, name)      # the file as recorded: no parsing
        if same:
            out.say(same if quiet else f"lab {same}: no changes")
            return
    topo = labmod.load(file, name=name, overrides=overrides)
    if spread is not None or topo.placement:      # over machines (issue 20): through etcd, built by the agents
        if not dry_run:
            from . import across               # lazy: start-up
            endpoint = etcd_endpoint(etcd, etcd_ca, etcd_cert, etcd_key)
            placed, states = across.up(topo, endpoint, spread, stitch_port, overrides)
            for line in [topo.name] if quiet else across.summary(placed, states):
                out.say(line)
            return
        from . import across                   # lazy: start-up
        # with an etcd named: the machines as registered (addresses, underlay MTU); else as given
        endpoint = etcd_endpoint(etcd, etcd_ca, etcd_cert, etcd_key) \
            if etcd or os.environ.get("NSLAB_ETCD") else None              # set but empty: none
        print_placement(across.place(topo, endpoint, spread, stitch_port, underlay_mtu), as_json)
        return
    labmod.require_root()
    if dry_run:
        change, names = converge.preview(topo, overrides)
        if as_json:
            print(json.dumps(dict(lab=topo.name, dry_run=True, **converge.summary(change, names)), indent=1))
            return
        for line in converge.diff.render(change, names):
            out.say(line)
        return
    st = state.load(topo.name)
    if st is not None and st.status in ("up", "converging"):
        t0 = time.perf_counter()
        with out.Progress(f"up {topo.name}") as progress:
            change, plan, st, notices = converge.converge(topo, overrides, progress=progress)
        if quiet:
            out.say(topo.name)
            return
        if as_json:
            print(json.dumps(dict(lab=topo.name, seconds=round(time.perf_counter() - t0, 3),
                                  **converge.summary(change, converge.node_names(plan) if plan else {}),
                                  notes=notices), indent=1))
            return
        if change.empty:
            out.say(f"lab {topo.name}: no changes")
            return
        for line in converge.diff.render(change, converge.node_names(plan)) + [f"note: {n}" for n in notices]:
            out.say(line)
        out.say(f"lab {topo.name} is up to date with {os.path.basename(topo.file)} "
                f"({time.perf_counter() - t0:.2f} s)")
        return
    t0 = time.perf_counter()
    with out.Progress(f"up {topo.name}") as progress:
        plan, st = labmod.up(topo, overrides, progress=progress)
    elapsed = time.perf_counter() - t0
    if quiet:
        out.say(topo.name)
        return
    from .observe import show as showmod  # lazy: start-up
    if as_json:
        print(json.dumps(dict(lab=topo.name, seconds=round(elapsed, 3), devices=built_rows(topo, plan),
                              services=showmod.service_rows(topo), notes=st.info.get("_notices", [])), indent=1))
        return
    built_table(topo, plan)
    if showmod.service_rows(topo):
        showmod.service_table(console, showmod.service_rows(topo))
    for note in st.info.get("_notices", []):
        console.print(f"note: {note}")
    from rich.text import Text  # lazy: start-up
    console.print(Text.assemble("lab ", (topo.name, "bold"), f" is up: {out.plural(len(topo.nodes), 'node')} in "
                                f"{elapsed:.2f} s. Try `nslab show -l {topo.name}`, `nslab exec -l {topo.name} NODE -- "
                                f"CMD`, `nslab down {topo.name}`."))


@app.command()
@run
def down(target: Optional[str] = typer.Argument(None, help="Lab name or topology file."),
         all_labs: bool = typer.Option(False, "--all", help="Remove every nslab lab."),
         etcd: Optional[str] = typer.Option(None, "--etcd", help="A lab over machines: their etcd (default: "
                                            "$NSLAB_ETCD, asked when no lab of that name runs here)."),
         etcd_ca: Optional[str] = EtcdCaOpt, etcd_cert: Optional[str] = EtcdCertOpt,
         etcd_key: Optional[str] = EtcdKeyOpt):
    """Remove everything a lab created, and nothing else."""
    labmod.require_root()
    if (etcd or os.environ.get("NSLAB_ETCD")) and target and state.valid_lab(target) \
            and not os.path.lexists(state.lab_dir(target)):
        from . import across                   # lazy: start-up
        endpoint = etcd_endpoint(etcd, etcd_ca, etcd_cert, etcd_key)
        out.say(across.down_sentence(target, *across.down(target, endpoint)))
        return
    if all_labs:
        labs = state.labs()
        orphans = state.orphans()          # containers of labs whose record is gone (reboot)
        labs += sorted(set(orphans) - set(labs))
    elif target and (target.endswith((".yaml", ".yml")) or os.path.sep in target) and os.path.exists(target):
        labs = labmod.labs_of_file(target) or [labmod.load(target).name]    # up under another --name too
        if len(labs) > 1:
            raise UsageError(f"{target} runs as {len(labs)} labs ({', '.join(labs)}): say which, "
                             f"`nslab down NAME`, or `nslab down --all`")
    elif target and not os.path.lexists(state.lab_dir(target)) and state.valid_lab(target):
        labs = [target]                         # down() looks for its containers by label
    else:
        labs = [labmod.resolve_lab(target)]
    failed = []
    for lab in labs:
        try:
            with out.Progress(f"down {lab}") as progress:
                result = labmod.teardown(lab, progress=progress)
        except NslabError as e:
            if not all_labs:
                raise
            out.warn(f"nslab: lab {lab}: {e}")
            failed.append(lab)
            continue
        for kept in result.kept:
            out.warn(f"nslab: {kept}")
        if result.kept:
            failed.append(lab)
        out.say(f"lab {lab} removed ({out.plural(len(result.removed), 'namespace')})")
    if all_labs and not labs:
        out.say("no labs running")
    if failed:
        raise NslabError(f"{len(failed)} of {len(labs)} labs ({', '.join(failed)}) not removed completely: "
                         f"see the lines above")


@app.command("ls")
@run
def ls(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")):
    """List running labs."""
    rows = []
    for lab in state.labs():
        try:
            st = state.load(lab)
        except state.RecordError as e:
            err_console.print(f"nslab: {e}", markup=False)
            rows.append(dict(lab=lab, status="corrupt", backend="?", file="?", nodes=0, namespaces=[], processes=[]))
            continue
        if st is None:                          # removed since listed
            continue
        for w in st.warnings:
            err_console.print(f"nslab: warning: {w}", markup=False)
        missing = agentmod.health(st)         # a dead agent, warden or dataplane: say so
        try:                                  # a restarted container node: its links are gone
            missing += [f"{n}: {why} (nslab rewire -l {lab})" for n, why in labmod.unwired(st).items()]
        except NslabError as e:               # no engine to ask: say so, list the rest
            missing.append(str(e))
        rows.append(dict(lab=lab, status="degraded" if missing else st.status, missing=missing,
                         backend=lab_backend(st), file=st.file,
                         nodes=len(st.nodes),
                         namespaces=st.namespaces, processes=[p.pid for p in st.processes]))
    if os.environ.get("NSLAB_ETCD"):          # labs across machines, from etcd (issue 20)
        from . import across                   # lazy: start-up
        rows += [r for r in across.labs(etcd_endpoint(None)) if r["lab"] not in {x["lab"] for x in rows}]
    if as_json:
        from .observe import show as showmod  # lazy: start-up
        for r in rows:                  # a cluster's services, from the topology as built
            r["services"] = []
            if r["backend"] not in (None, "?") and r["status"] != "corrupt" and "machines" not in r:
                try:
                    r["services"] = showmod.service_rows(labmod.topology(r["lab"]))
                except NslabError as e:
                    err_console.print(f"nslab: {e}", markup=False)
        print(json.dumps(rows, indent=1))
        return
    if not rows:
        console.print("no labs running")
        return
    out.table(console, ["lab", "status", "nodes", "backend", "file"],
              [[r["lab"], r["status"], str(r["nodes"]), r["backend"] or "-", r["file"]] for r in rows])
    for r in rows:              # the status column stays one word; what is wrong is one line each, below
        if r.get("missing") and "machines" in r:     # across machines: its machines say what is wrong
            out.say(f"{r['lab']}: {out.plural(len(r['missing']), 'problem')}: {'; '.join(r['missing'])}")
        elif r.get("missing"):
            out.say(f"{r['lab']}: {out.plural(len(r['missing']), 'problem')} (`nslab show -l {r['lab']}` shows them "
                    f"and restarts what died): {r['missing'][0]}{'; ...' if len(r['missing']) > 1 else ''}")


def lab_backend(st) -> str | None:
    """The flannel backend a lab runs (as `--backend` would name it: udp:8282); None without a cluster."""
    types = {v["backend"] for v in st.info.values() if isinstance(v, dict) and isinstance(v.get("backend"), str)
             and v["backend"]}
    given = str((st.overrides or {}).get("backend") or "")
    if not types:
        return None
    btype = types.pop()
    return given if given.partition(":")[0] == btype and ":" in given else btype


def across_lab(lab: str | None, node: str | None) -> str | None:
    """The lab a command names when it runs across machines: $NSLAB_ETCD set and no lab
    of that name here (issue 20); else None."""
    remote = lab or os.environ.get("NSLAB_LAB") or (node.split(".", 1)[0] if node and "." in node else None)
    if remote and os.environ.get("NSLAB_ETCD") and state.valid_lab(remote) \
            and not os.path.lexists(state.lab_dir(remote)):
        return remote
    return None


def across_run(remote: str, command: str, target: str, **req):
    """Run `command` on the machine holding `target` of lab `remote` (across.run); exit with its code."""
    from . import across, sandbox      # lazy: start-up
    endpoint = etcd_endpoint(None)
    raise typer.Exit(across.run(remote, command, target.removeprefix(f"{remote}."), endpoint,
                                sandbox.agent_urls(endpoint), **req))


def terminal(always: bool = False) -> dict:
    """A command's terminal for the agent: a TTY when stdin is one (or `always`), its size."""
    if not (always or sys.stdin.isatty()):
        return {"tty": False}
    try:
        size = os.get_terminal_size(sys.stdin.fileno())
        return {"tty": True, "rows": size.lines, "cols": size.columns, "term": os.environ.get("TERM", "xterm")}
    except OSError:
        return {"tty": True, "term": os.environ.get("TERM", "xterm")}


def _exec_argv(ns: str, argv: list[str]) -> list[str]:
    # `ip netns exec` also bind-mounts /etc/netns/NS/hosts (node names) and remounts /sys.
    return ["ip", "netns", "exec", ns] + argv


@app.command("exec", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@run
def exec_(node: str = typer.Argument(..., help="Node name (or LAB.NODE).", autocompletion=completion.nodes),
          cmd: Optional[List[str]] = typer.Argument(None, help="Command and arguments (after --)."),
          lab: Optional[str] = LabOpt):
    """Run CMD inside NODE's network namespace; its output and exit code pass through."""
    if not cmd:
        raise UsageError(f"no command to run in {node}: `nslab exec {node} -- CMD ...`, or `nslab shell {node}` "
                         f"for an interactive shell there")
    if remote := across_lab(lab, node):      # a lab across machines: its agent runs it
        across_run(remote, "exec", node, argv=list(cmd), **terminal())
    labmod.require_root()
    labmod.require_tools("ip")
    lab, node = labmod.resolve_nodes(lab, node)
    ns = labmod.node_namespace(lab, node)
    labmod.require_wired(lab, [node])
    labmod.enter_uts(lab, node)              # `hostname` prints the node; ip netns exec keeps our UTS
    sys.stdout.flush()
    os.execv(spawn.need("ip"), _exec_argv(ns, list(cmd)))     # CMD is the user's: their PATH, env, cwd


@app.command()
@run
def shell(node: str = typer.Argument(..., help="Node name (or LAB.NODE).", autocompletion=completion.nodes), lab: Optional[str] = LabOpt):
    """Open an interactive shell inside NODE, with a prompt naming it."""
    if remote := across_lab(lab, node):
        across_run(remote, "shell", node, **terminal(always=True))
    labmod.require_root()
    labmod.require_tools("ip")
    lab, node = labmod.resolve_nodes(lab, node)
    ns = labmod.node_namespace(lab, node)
    labmod.require_wired(lab, [node])
    labmod.enter_uts(lab, node)
    os.environ["PS1"] = f"[{lab}:{node}] \\w# "
    os.environ["NSLAB_LAB"], os.environ["NSLAB_NODE"] = lab, node
    shell_bin = "bash" if any(os.access(os.path.join(p, "bash"), os.X_OK)
                              for p in os.environ.get("PATH", "").split(":")) else "sh"
    os.execv(spawn.need("ip"), _exec_argv(ns, [shell_bin, "--norc", "-i"] if shell_bin == "bash" else
                                          [shell_bin, "-i"]))


@app.command()
@run
def show(node: Optional[str] = typer.Argument(None, help="Node name or LAB.NODE (default: every node).",
                                              autocompletion=completion.nodes),
         lab: Optional[str] = LabOpt,
         brief: bool = typer.Option(False, "--brief", "-b", help="One line per node: kind, cluster role, "
                                    "addresses, status (like containerlab's inspect)."),
         every: bool = typer.Option(False, "--all", "-a", help="Every netfilter rule, not only those "
                                    "that counted a packet (and, without NODE, every node's: two processes a node)."),
         as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")):
    """What each node is (kind; a cluster node's role, pod CIDR, VTEP and pods; a pod's node and
    containers; a container's image), then its interfaces (kind, MTU, MAC, addresses), routes,
    neighbours, FDB and, for the NODE named (every node's with --all), its netfilter counters
    (the iptables and nft rules that counted packets)."""
    from .observe import show as showmod  # lazy: start-up
    if remote := across_lab(lab, node):
        options = {k: True for k, v in (("brief", brief), ("json", as_json)) if v}
        if node:
            across_run(remote, "show", node, options=options)
        from . import across, sandbox      # lazy: start-up
        endpoint = etcd_endpoint(None)
        raise typer.Exit(across.show(remote, endpoint, options, sandbox.agent_urls(endpoint), heading=out.say))
    labmod.require_root()
    lab, node = labmod.resolve_nodes(lab, node)
    st = state.load(lab)
    nodes = [node] if node else list(st.nodes)
    for n in nodes:
        labmod.node_namespace(lab, n, st)
    labmod.require_wired(lab, nodes, st)
    healed = agentmod.heal(st)               # agent and warden both gone: nobody else restarts them
    if healed:
        st = state.load(lab) or st
    data = showmod.collect(st, nodes, counters=not brief and (node is not None or every))
    data["restarted"] = healed
    topo = labmod.topology(lab, st)
    for n, entry in data["nodes"].items():
        entry["about"] = showmod.about(topo, st, n)
    if brief:
        rows = showmod.inspect_rows(topo, st, data)
        if as_json:
            print(json.dumps(rows, indent=1))
        else:
            out.table(console, ["node", "kind", "role", "addresses", "status"],
                      [[r["node"], r["kind"], r["role"] or "-", " ".join(r["addresses"]) or "-", r["status"]]
                       for r in rows])
        return
    data["services"] = showmod.service_rows(topo)
    if as_json:
        print(json.dumps(data, indent=1))
    else:
        showmod.render(console, st, data, every)
        if data["services"] and not node:
            showmod.service_table(console, data["services"])


@app.command("break", context_settings={"ignore_unknown_options": True})
@run
def break_(fault: Optional[str] = typer.Argument(None, help="A fault of the catalogue (--list)."),
           target: Optional[List[str]] = typer.Argument(None, help="NODE (default: the first cluster node), "
                                                        "then the fault's own arguments (--list)."),
           lab: Optional[str] = LabOpt,
           list_: bool = typer.Option(False, "--list", help="The catalogue, and the lab's breaks."),
           undo: Optional[List[int]] = typer.Option(None, "--undo", metavar="ID", help="Undo break ID."),
           undo_all: bool = typer.Option(False, "--undo-all", help="Undo every break of the lab.")):
    """Break a running lab on purpose, as real flannel clusters break (`--list`); each break is
    recorded in the lab's record and `--undo ID` / `--undo-all` puts back exactly what it
    changed.  `nslab doctor` finds it from the kernel alone."""
    from . import faults  # lazy: start-up
    if list_:
        for f in faults.CATALOGUE.values():
            out.say(f"{f.name} [NODE]" + (f" {f.usage}" if f.usage else ""))
            out.say(f"    {f.summary}")
        try:
            lab = labmod.resolve_lab(lab)
        except UsageError:
            return
        made = faults.recorded(lab)
        out.say(f"breaks in lab {lab}: " + ("none" if not made else ""))
        for b in made:
            out.say(f"  {faults.describe(b)}")
        return
    labmod.require_root()
    if undo or undo_all:
        if fault:
            raise UsageError("--undo and --undo-all take no FAULT")
        lab = labmod.resolve_lab(lab)
        done = faults.undo(lab, None if undo_all else list(undo))
        for b in done:
            out.say(f"undone {faults.describe(b)}")
        if not done:
            out.say(f"lab {lab}: no breaks to undo")
        return
    if not fault:
        raise UsageError("say which fault (`nslab break --list` shows the catalogue)")
    target = list(target or [])
    if fault not in faults.CATALOGUE:
        raise UsageError(f"no fault {fault!r} in the catalogue (`nslab break --list`: {', '.join(faults.CATALOGUE)})")
    if target:
        lab, node = labmod.resolve_nodes(lab, target[0])
    else:
        lab = labmod.resolve_lab(lab)
        node = faults.default_node(lab)
    b = faults.inject(lab, fault, node, target[1:])
    out.say(f"break {b['id']}: {fault} on {node}")
    out.say(f"  {faults.CATALOGUE[fault].summary}")
    out.say(f"  undo: nslab break -l {lab} --undo {b['id']}")


@app.command()
@run
def doctor(src: Optional[str] = typer.Argument(None, help="Probe from this node or pod (with DST).",
                                              autocompletion=completion.nodes),
           dst: Optional[str] = typer.Argument(None, help="... to this node, pod or address.",
                                              autocompletion=completion.nodes),
           lab: Optional[str] = LabOpt,
           proto: str = typer.Option("ping", "--proto", help="With SRC DST: ping, tcp, udp or http."),
           port: Optional[int] = typer.Option(None, "--port", help="With SRC DST and tcp/udp/http: the port."),
           no_probe: bool = typer.Option(False, "--no-probe", help="Only the checks that need no packet."),
           as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")):
    """Compare the kernel of every node with what the lab applied (routes, neighbours, FDB,
    sysctls, MTUs, links, iptables, daemons), then probe pod pairs (or SRC DST).  Each finding
    names the node, the kernel object, its key, expected and actual, and the fix.  Exit 0
    healthy, 1 findings, 2 bad input."""
    from .observe import doctor as doc  # lazy: start-up
    labmod.require_root()
    if (src is None) != (dst is None):
        raise UsageError("doctor takes no pair or both SRC and DST")
    if proto not in ("ping", "icmp", "tcp", "udp", "http"):
        raise UsageError(f"--proto {proto}: not one of ping, tcp, udp, http")
    if proto in ("tcp", "udp", "http") and port is None:
        raise UsageError(f"--proto {proto} needs --port")
    if port is not None and not 0 < port < 65536:
        raise UsageError(f"--port {port}: not a port (1-65535)")
    lab, src, dst = labmod.resolve_nodes(lab, src, dst)
    st = state.load(lab)
    labmod.require_own_namespaces(st, list(st.nodes.values()))
    topo = labmod.topology(lab, st)
    report = doc.diagnose(st, labmod.applied_plan(lab, st), topo, (src, dst) if src else None, proto, port,
                          probes=not no_probe)
    if as_json:
        print(json.dumps(doc.as_json(report), indent=1))
    else:
        doc.render(report)
    if not report.healthy:
        raise typer.Exit(1)


@app.command()
@run
def validate(files: List[str] = typer.Argument(..., help="Topology files."),
             backend: Optional[str] = typer.Option(None, "--backend", help="Override the cluster backend type."),
             machines: Optional[str] = typer.Option(None, "--machines", metavar="M1,M2,...", help="Check the lab "
                                                    "over these machines and print its placement and cross-machine "
                                                    "links (a file's placement: is printed without it)."),
             stitch_port: int = StitchPortOpt, underlay_mtu: int = UnderlayMtuOpt,
             proxy_mode: Optional[str] = ProxyModeOpt):
    """Check topology files without touching the kernel."""
    for f in files:
        topo = labmod.load(f, overrides=cluster_overrides(backend, proxy_mode))
        plan = compiler.compile_topology(topo)
        if machines is not None or topo.placement:
            from .compile import placement      # lazy: start-up
            print_placement(placement.place(topo, plan, None if machines is None else
                                            placement.parse_machines(machines, "--machines"), port=stitch_port,
                                            underlay_mtu=underlay_mtu or placement.DEFAULT_UNDERLAY_MTU), False)
        console.print(f"{f}: ok (lab {topo.name}: {out.plural(len(topo.nodes), 'node')}, "
                      f"{out.plural(len(plan.ops), 'operation')})")


@app.command()
@run
def generate(shape: str = typer.Argument(..., metavar="SHAPE",
                                         help="clos:SPINES,LEAVES,HOSTS | cluster:RACKS,NODES,PODS | single:N | "
                                              "linear:N[,M] | tree:DEPTH[,FANOUT] (Mininet's L2 switches, one "
                                              "subnet, ttl 64; Mininet's tree,2,3 form too) | "
                                              "linear-routed:N[,M] | tree-routed:DEPTH[,FANOUT] (switches as "
                                              "routers)."),
             output: Optional[str] = typer.Option(None, "-o", "--output", help="Write the topology here "
                                                                                "(default: standard output)."),
             name: Optional[str] = typer.Option(None, "--name", "-n", help="Lab name (default: from the shape)."),
             backend: Optional[str] = typer.Option(None, "--backend", help=f"cluster: {BACKEND_LIST}."),
             serve: Optional[str] = typer.Option(None, "--serve", help="cluster: every pod serves this (http).")):
    """Write a topology file for a fabric (CLOS, flannel cluster, Mininet's single/linear/tree, and
    linear/tree with routers for switches)."""
    from . import generate as gen    # lazy: start-up (jinja2: only this command pays for it)
    text, sh = gen.write(shape, output, name=name, backend=backend, serve=serve, argv=sys.argv[1:])
    if output is None:
        sys.stdout.write(text)
        return
    err_console.print(f"wrote {output}: {sh.text}, lab {name or gen.default_name(sh)} ({gen.node_count(sh):,} "
                      f"namespaces). Next: nslab test {output}", markup=False)


@app.command()
@run
def script(file: Optional[str] = typer.Argument(None, help="Topology YAML (default: the bundled lab)."),
           name: Optional[str] = typer.Option(None, "--name", "-n", help="The lab's name in the commands (its "
                                              "namespaces are NAME.NODE; default: the file's name: or its file name)."),
           backend: Optional[str] = typer.Option(None, "--backend", help=f"Override the cluster backend: TYPE or "
                                                 f"TYPE:PORT ({', '.join(backends.names())}; udp:8282)."),
           proxy_mode: Optional[str] = ProxyModeOpt,
           lab: Optional[str] = typer.Option(None, "-l", "--lab", help="Print what `up` applied to this running "
                                                                     "lab (its recorded plan) instead.")):
    """Print the lab as plain iproute2 commands that build it by hand: what `up` would apply on
    this kernel (FILE), or what it did apply (--lab)."""
    if lab is not None:
        if file or name or backend or proxy_mode:
            raise UsageError("give a topology FILE (with --name/--backend/--proxy-mode) or --lab LAB, not both")
        labmod.require_root()
        sys.stdout.write(render(labmod.applied_plan(labmod.resolve_lab(lab))))
        return
    topo = labmod.load(default_topology() if file is None else file, name=name,
                       overrides=cluster_overrides(backend, proxy_mode))
    sys.stdout.write(render(labmod.plan_for_this_kernel(topo)))


@app.command()
@run
def trace(src: str = typer.Argument(..., help="Source node or pod (or one of its addresses).",
                                    autocompletion=completion.nodes),
          dst: str = typer.Argument(..., help="Destination node, pod or address; svc/NAME[:PORT] for a service.",
                                    autocompletion=completion.nodes),
          lab: Optional[str] = LabOpt,
          proto: str = typer.Option("icmp", "--proto", help="icmp (echo), tcp (connect) or udp."),
          port: Optional[int] = typer.Option(None, "--port", help="tcp/udp destination port (tcp: 80)."),
          ttl: Optional[int] = typer.Option(None, "--ttl", help="IP TTL of the probe."),
          timeout: float = typer.Option(1.0, "--timeout", help="Seconds to wait for the probe and its reply."),
          brief: bool = typer.Option(False, "--brief", "-b", help="One line per hop."),
          as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")):
    """Send one probe and show its path hop by hop, with the kernel entries that chose each step.
    Exits 1 when the probe or its reply did not get through."""
    from .observe import trace as tracemod  # lazy: start-up
    if remote := across_lab(lab, src):
        options = dict(proto=proto, port=port, ttl=ttl, timeout=timeout, brief=brief or None, json=as_json or None)
        from . import across, sandbox      # lazy: start-up
        endpoint = etcd_endpoint(None)
        result = across.trace(remote, src.removeprefix(f"{remote}."), dst.removeprefix(f"{remote}."), endpoint,
                              {k: v for k, v in options.items() if v is not None}, sandbox.agent_urls(endpoint))
    else:
        labmod.require_root()
        lab, src, dst = labmod.resolve_nodes(lab, src, dst)
        result = tracemod.trace(lab, src, dst, proto, port, ttl, timeout)
    if as_json:
        print(json.dumps(result, indent=1))
    else:
        (tracemod.render_brief if brief else tracemod.render)(console, result)
    if not tracemod.complete(result):
        raise typer.Exit(1)


@app.command("trace-part", hidden=True)
@run
def trace_part(lab: str = typer.Option(..., "-l", "--lab", help="The lab (a part of it runs here)."),
               src: str = typer.Option(..., "--src", help="The trace's source, as `trace` takes it."),
               dst: str = typer.Option(..., "--dst", help="The trace's destination, as `trace` takes it."),
               proto: str = typer.Option("icmp", "--proto", help="As `trace --proto`."),
               port: Optional[int] = typer.Option(None, "--port", help="As `trace --port`."),
               ttl: Optional[int] = typer.Option(None, "--ttl", help="As `trace --ttl`."),
               timeout: float = typer.Option(1.0, "--timeout", help="As `trace --timeout`."),
               send: bool = typer.Option(False, "--send", help="This machine holds the source: it sends the probe.")):
    """This machine's part of a trace across machines (JSON lines with the host's `nslab trace`)."""
    from .observe import trace as tracemod  # lazy: start-up
    tracemod.part(lab, src, dst, proto, port, ttl, timeout, send)


@app.command("watch-part", hidden=True)
@run
def watch_part(lab: str = typer.Option(..., "-l", "--lab", help="The lab (a part of it runs here)."),
               node: Optional[List[str]] = typer.Option(None, "--node", help="A node of this machine to watch "
                                                                          "(repeatable).")):
    """A test's probe seen at these nodes of this machine (JSON lines with the host's `nslab test`)."""
    from .observe import checks  # lazy: start-up
    checks.watch_part({n: labmod.node_namespace(lab, n) for n in node or []})


@app.command("pairs-part", hidden=True)
@run
def pairs_part(lab: str = typer.Option(..., "-l", "--lab", help="The lab (a part of it runs here)."),
               hosts: bool = typer.Option(False, "--hosts", help="Hosts too, as `test --all-pairs --hosts`.")):
    """This machine's part of `test --all-pairs` across machines: pings from its nodes, JSON."""
    from .api import Lab  # lazy: start-up
    from .observe import checks  # lazy: start-up
    labmod.require_root()
    handle = Lab.attach(labmod.resolve_lab(lab))
    labmod.require_wired(handle.name)
    labmod.require_own_namespaces(handle.state, [n.ns for n in handle.topo.nodes.values()
                                                 if n.name in handle.state.nodes])
    print(json.dumps(checks.pairs_part(handle.topo, hosts, set(handle.state.nodes))))


@app.command("test")
@run
def test_(file: Optional[str] = typer.Argument(None, help="Topology file: bring it up, run its tests, take it down."),
          lab: Optional[str] = LabOpt,
          name: Optional[str] = typer.Option(None, "--name", "-n", help="With FILE: run the lab under this name."),
          backend: Optional[str] = typer.Option(None, "--backend", help="With FILE: override the cluster backend type."),
          proxy_mode: Optional[str] = typer.Option(None, "--proxy-mode", help="With FILE: override kube-proxy's "
                                                                                "mode (iptables, nftables, ipvs)."),
          all_pairs: bool = typer.Option(False, "--all-pairs", help="Instead of the tests: section, ping between "
                                                                    "every pair of pods."),
          hosts: bool = typer.Option(False, "--hosts", help="With --all-pairs: include hosts."),
          junit: Optional[str] = typer.Option(None, "--junit", help="Also write the results as JUnit XML to this file."),
          only: Optional[List[str]] = typer.Option(None, "--only", help="Run only the test of this name (repeatable)."),
          spread: Optional[str] = typer.Option(None, "--spread", metavar="M1,M2,...", help="With FILE: spread the "
                                               "lab over these machines ($NSLAB_ETCD), as `up --spread`."),
          stitch_port: int = StitchPortOpt,
          as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")):
    """Run a topology's tests: (ping, TCP connect, HTTP GET with expectations); exit 1 if any fails."""
    from .observe import checks  # lazy: start-up
    if file and lab:
        raise UsageError("give a topology FILE or -l LAB, not both")
    if not file and (name or backend or proxy_mode or spread):
        raise UsageError("--name, --backend, --proxy-mode and --spread apply when testing a FILE (a running lab "
                         "keeps its own)")
    topo = labmod.load(file, name=name, overrides=cluster_overrides(backend, proxy_mode)) if file else None
    remote = across_lab(lab, None) if not file else topo.name if spread is not None or topo.placement else None
    if remote:                          # a lab across machines: up (FILE), its tests by the agents, down
        if topo is not None and not topo.tests and not all_pairs:
            raise UsageError(f"{file} declares no tests (add a tests: section)")
        from . import across, sandbox      # lazy: start-up
        endpoint = etcd_endpoint(None)
        reach = sandbox.agent_urls(endpoint)
        if topo is None:
            report = across.test(remote, endpoint, only, reach, all_pairs, hosts)
        else:
            with out.Progress(f"test {topo.name}").running("up over machines, tests"):
                report = across.test_file(topo, endpoint, spread, stitch_port, cluster_overrides(backend, proxy_mode),
                                          only, reach, all_pairs, hosts)
        topo_file = file or remote
    else:
        report, topo_file = test_here(file, topo, lab, all_pairs, hosts, only, name, backend, proxy_mode)
    if junit is not None:
        try:
            with open(junit, "w", encoding="utf-8") as f:
                f.write(checks.junit(report, topo_file))
        except OSError as e:
            raise NslabError(f"--junit: cannot write {junit!r}: {e.strerror}") from None
    if as_json:
        print(json.dumps(report.as_dict(), indent=1))
    else:
        checks.render(console, report)
    if not report.ok:
        raise typer.Exit(1)


def test_here(file, topo, lab, all_pairs, hosts, only, name, backend, proxy_mode):
    """`nslab test` of a lab on this machine: (the report, the topology's file)."""
    from .api import Lab  # lazy: start-up
    from .observe import checks  # lazy: start-up
    if file:
        if not topo.tests and not all_pairs:
            raise UsageError(f"{file} declares no tests (add a tests: section, or use --all-pairs)")
        labmod.require_root()
        with out.Progress(f"up {topo.name}").running("building"):
            handle = Lab.up(file, name=name, backend=backend, proxy_mode=proxy_mode)
    else:
        labmod.require_root()
        handle = Lab.attach(labmod.resolve_lab(lab))
        labmod.require_wired(handle.name)
        # a machine's part of a lab across machines holds only its own nodes
        labmod.require_own_namespaces(handle.state, [n.ns for n in handle.topo.nodes.values()
                                                     if n.name in handle.state.nodes])
        if not handle.topo.tests and not all_pairs:
            raise UsageError(f"lab {handle.name} declares no tests ({handle.topo.file} has no tests: section; "
                             f"use --all-pairs)")
    # a machine's part of a lab across machines: what is watched at other machines' nodes is the host's
    here = set(handle.state.nodes) if (handle.state.info.get("_shard") and not file) else None
    try:
        with out.Progress(f"test {handle.name}").running("all pairs" if all_pairs else "tests"):
            report = handle.test(all_pairs=True, hosts=hosts) if all_pairs else \
                checks.run(handle.topo, [c for c in handle.topo.tests if c.name in only] if only else None, here)
    finally:
        if file:
            handle.down()
    return report, handle.topo.file


@app.command()
@run
def capture(target: str = typer.Argument(..., metavar="NODE[:IFACE]",
                                         help="Node, and interface (default: its underlay interface).",
                                         autocompletion=completion.node_ifaces),
            lab: Optional[str] = LabOpt,
            write: Optional[str] = typer.Option(None, "-w", "--write", help="Write a pcap file (Wireshark, tshark); "
                                         "- writes it to stdout."),
            count: Optional[int] = typer.Option(None, "-c", "--count", help="Stop after this many packets."),
            bpf: str = typer.Option("", "--filter", "-f", help="tcpdump filter, e.g. 'udp port 4789'."),
            decode: bool = typer.Option(False, "--decode", help="Outer/inner header table per encapsulated packet."),
            as_json: bool = typer.Option(False, "--json", help="Decoded packets as JSON, one object per line "
                                                               "(implies --decode).")):
    """Capture packets inside a node with tcpdump (live `-eni` output, a pcap, or decoded tables)."""
    from .observe import capture as capmod  # lazy: start-up
    if count is not None and not 0 < count < 1 << 31:      # tcpdump's -c: 0 would mean no limit
        raise UsageError(f"--count must be from 1 to {(1 << 31) - 1} packets, not {count}")
    if write == "-" and (decode or as_json):
        raise UsageError("-w - writes the pcap to stdout, where --decode and --json print: give -w a FILE")
    if remote := across_lab(lab, target):
        if write and (decode or as_json):
            raise UsageError(f"-w with --decode: lab {remote} runs across machines; capture -w FILE, then read "
                             f"it with tshark, or --decode without -w")
        # -w FILE: the node's machine streams the pcap (-w -), written here
        options = dict(count=count, filter=bpf or None, decode=decode or None, json=as_json or None,
                       write="-" if write else None)
        options = {k: v for k, v in options.items() if v is not None}
        if not write or write == "-":
            across_run(remote, "capture", target, options=options)
        try:
            pcap = open(write, "wb")
        except OSError as e:
            raise UsageError(f"-w: cannot write {write!r}: {e.strerror}") from None
        with pcap:
            across_run(remote, "capture", target, options=options, stdout=pcap)
    labmod.require_root()
    labmod.require_tools("ip", "tcpdump")
    lab, target = labmod.resolve_nodes(lab, target)
    rc = capmod.run(lab, target, pcap=write, count=count, bpf=bpf, decode=decode or as_json,
                    as_json=as_json)
    if rc:
        raise typer.Exit(rc)


@app.command()
@run
def graph(file: Optional[str] = typer.Argument(None, help="Topology YAML (default: the running lab given by -l)."),
          lab: Optional[str] = LabOpt,
          output: Optional[str] = typer.Option(None, "-o", "--output", help="Write FILE.svg, .png, .pdf, .dot or .mmd."),
          fmt: Optional[str] = typer.Option(None, "--format", help="dot (default) or mermaid (text for a README).")):
    """A picture of a topology: routers, segments, nodes, pods, links and overlay tunnels."""
    from .observe import graph as graphmod  # lazy: start-up
    topo = labmod.load(file) if file else labmod.topology(labmod.resolve_lab(lab))
    if not file:                    # a running lab: with its `nslab link set` changes
        from . import shaping  # lazy: start-up
        shaping.apply_recorded(topo, state.load(topo.name))
    text = graphmod.write(graphmod.build(topo), output, fmt)
    if text is not None:
        sys.stdout.write(text)
    else:
        err_console.print(f"wrote {output}", markup=False)


@app.command()
@run
def web(lab: Optional[str] = typer.Option(None, "-l", "--lab", autocompletion=completion.labs,
                                          help="Serve only this lab (default: every lab that runs)."),
        port: int = typer.Option(8080, "--port", help="TCP port."),
        bind: str = typer.Option("127.0.0.1", "--bind", help="The one address to listen on (not 0.0.0.0); "
                                 "any but a loopback one needs the token printed at start."),
        allow_changes: bool = typer.Option(False, "--allow-changes", help="Let the page set link conditions "
                                           "and links down/up (as `nslab link`); read-only otherwise.")):
    """Serve the running labs as a live page: the topology as `nslab graph` draws it, packets
    and bytes per second on each link, a node's tables, traces and captures.  Ctrl-C stops it."""
    from .web import server  # lazy: start-up (aiohttp)
    labmod.require_root()
    server.serve(bind, port, lab, allow_changes)


@app.command()
@run
def rewire(lab: Optional[str] = LabOpt):
    """Wire the lab's containers again after one was restarted (a restarted container has a
    new network namespace, without the lab's links), stopped or removed under nslab's feet."""
    if remote := across_lab(lab, None):      # a lab across machines: each machine rewires its own
        from . import across, sandbox      # lazy: start-up
        endpoint = etcd_endpoint(None)
        raise typer.Exit(across.each(remote, "rewire", endpoint, sandbox.agent_urls(endpoint), heading=out.say))
    labmod.require_root()
    lab = labmod.resolve_lab(lab)
    done = labmod.rewire(lab)
    console.print(f"lab {lab}: re-wired {', '.join(done)}" if done else f"lab {lab}: every container is wired")


@app.command("cli")
@run
def console_(lab: Optional[str] = LabOpt):
    """An interactive console for a running lab, like Mininet's CLI: `client ping web-worker3`,
    `worker1 tcpdump -ni enp0s3`, pingall, nodes, links, dump; history and Tab completion."""
    from . import console_cli  # lazy: start-up
    labmod.require_root()
    console_cli.run(labmod.resolve_lab(lab))


link_app = typer.Typer(no_args_is_help=True, help="Links of a running lab: conditions (rate, delay, jitter, loss) "
                                                  "and state (down, up).")
app.add_typer(link_app, name="link")


@link_app.command("set")
@run
def link_set(target: str = typer.Argument(..., help="NODE:IFACE (the end whose outgoing traffic is shaped).",
                                          autocompletion=completion.node_ifaces),
             lab: Optional[str] = LabOpt,
             rate: Optional[str] = typer.Option(None, "--rate", help="e.g. 10mbit (tc's units: mbps is megaBYTES/s)."),
             delay: Optional[str] = typer.Option(None, "--delay", help="e.g. 50ms (needs netem)."),
             jitter: Optional[str] = typer.Option(None, "--jitter", help="e.g. 5ms, around the delay (needs netem)."),
             loss: Optional[str] = typer.Option(None, "--loss", help="e.g. 2% (needs netem)."),
             limit: Optional[str] = typer.Option(None, "--limit", help="Packets queued, e.g. 1000."),
             burst: Optional[str] = typer.Option(None, "--burst", help="tbf's bucket with a rate alone, e.g. 64kb."),
             without_netem: bool = typer.Option(False, "--without-netem", help="On a kernel without netem, set the "
                                                "rate alone instead of refusing.")):
    """Set conditions on one end of a link, on top of what it has (a new --delay keeps its rate)."""
    from . import shaping  # lazy: start-up
    if remote := across_lab(lab, target):
        options = dict(rate=rate, delay=delay, jitter=jitter, loss=loss, limit=limit, burst=burst,
                       **{"without-netem": without_netem or None})
        across_run(remote, "link-set", target, options={k: v for k, v in options.items() if v is not None})
    labmod.require_root()
    lab, target = labmod.resolve_nodes(lab, target)
    values = {k: v for k, v in dict(rate=rate, delay=delay, jitter=jitter, loss=loss, limit=limit,
                                    burst=burst).items() if v is not None}
    cond, notice = shaping.set_conditions(lab, target, values, without_netem=without_netem)
    if notice:
        console.print(f"note: {notice}", markup=False)
    console.print(f"{target}: {cond.describe()}", markup=False)


@link_app.command("show")
@run
def link_show(target: Optional[str] = typer.Argument(None, help="NODE or NODE:IFACE (default: every interface).",
                                                     autocompletion=completion.node_ifaces),
              lab: Optional[str] = LabOpt,
              show_all: bool = typer.Option(False, "--all", "-a", help="Every interface, shaped or not."),
              as_json: bool = typer.Option(False, "--json", help="Machine-readable output (every interface).")):
    """The shaped interfaces' conditions, read back from the kernel (--all: every interface)."""
    from . import shaping  # lazy: start-up
    if target and (remote := across_lab(lab, target)):
        across_run(remote, "link-show", target,
                   options={k: True for k, v in (("all", show_all), ("json", as_json)) if v})
    labmod.require_root()
    lab, target = labmod.resolve_nodes(lab, target)
    rows = shaping.show(lab, target)
    if as_json:
        print(json.dumps(rows, indent=1))
        return
    if not show_all and ":" not in (target or ""):     # NODE:IFACE asks for that one, shaped or not
        rows = [r for r in rows if r["conditions"]]
        if not rows:
            out.say(f"no shaped interfaces{' in ' + target if target else ''} (`nslab link show --all` lists "
                    f"every interface and its queue)")
            return
    out.table(console, ["node", "interface", "qdisc", "conditions"],
              [[r["node"], r["iface"], r["kind"], r["conditions"] or "-"] for r in rows])


@link_app.command("clear")
@run
def link_clear(target: str = typer.Argument(..., help="NODE:IFACE", autocompletion=completion.node_ifaces), lab: Optional[str] = LabOpt):
    """Remove an interface's conditions (declared ones too): the kernel's default queue again."""
    from . import shaping  # lazy: start-up
    if remote := across_lab(lab, target):
        across_run(remote, "link-clear", target)
    labmod.require_root()
    lab, target = labmod.resolve_nodes(lab, target)
    shaping.clear(lab, target)
    console.print(f"{target}: no conditions", markup=False)


@link_app.command("down")
@run
def link_down(target: str = typer.Argument(..., help="NODE:IFACE, e.g. worker1:flannel.4000.",
                                           autocompletion=completion.node_ifaces),
              lab: Optional[str] = LabOpt):
    """Set an interface down, as `ip link set dev IFACE down` does: Linux drops the routes
    through it and its neighbours with it (flannel's too, on flannel.<VNI>)."""
    labmod.require_root()
    lab, target = labmod.resolve_nodes(lab, target)
    labmod.set_link(lab, target, up=False)
    console.print(f"{target}: down (`nslab link up -l {lab} {target}` brings it back with its routes)", markup=False)


@link_app.command("up")
@run
def link_up(target: str = typer.Argument(..., help="NODE:IFACE, e.g. worker1:flannel.4000.",
                                         autocompletion=completion.node_ifaces),
            lab: Optional[str] = LabOpt):
    """Set an interface up, then restore the node's routes, neighbours and FDB entries the lab
    applied (its recorded plan) that Linux dropped meanwhile, printed as iproute2 commands.
    This mirrors flanneld's route check (host-gw and ipip re-add their missing routes every
    10 s), at once and for every backend.  Real flanneld's vxlan backend does not notice
    flannel.<VNI> set down and up (it watches only for the device's deletion, and then
    recreates it): there the entries stay gone until a lease changes or flanneld restarts."""
    labmod.require_root()
    lab, target = labmod.resolve_nodes(lab, target)
    restored = labmod.set_link(lab, target, up=True)
    console.print(f"{target}: up, {out.plural(len(restored), 'entry', 'entries')} restored" + (":" if restored else ""),
                  markup=False)
    for line in restored:
        console.print(f"  {line}", markup=False)


images_app = typer.Typer(no_args_is_help=True, help="Local images for container nodes (no registry needed).")
app.add_typer(images_app, name="images")


@images_app.command("build")
@run
def images_build(names: Optional[List[str]] = typer.Argument(None, help="Images (default: all of nslab's)."),
                 force: bool = typer.Option(False, "--force", help="Rebuild even if an image from the same "
                                                                   "recipe is there.")):
    """Build nslab's images locally (busybox-static; Debian minbase via debootstrap) and
    `docker import` them; an image already built from the same recipe is kept."""
    labmod.require_root()
    unknown = [n for n in names or [] if n not in images.IMAGES]
    if unknown:
        raise UsageError(f"unknown image {unknown[0]!r} (nslab builds: {', '.join(images.IMAGES)})")
    client = containers.engine()
    for n in names or list(images.IMAGES):
        t0 = time.perf_counter()
        with out.Progress(f"image {n}").running("building") as progress:
            built = images.build(client, n, force=force, log=progress.log)
        if built:
            console.print(f"{images.normalize(n)} built in {time.perf_counter() - t0:.1f} s")
        else:
            console.print(f"{images.normalize(n)} is up to date")


@images_app.command("ls")
@run
def images_ls(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")):
    """nslab's images: present, built from the current recipe, size."""
    client = containers.engine()
    rows = [images.image_status(client, n) for n in images.IMAGES]
    if as_json:
        print(json.dumps(rows, indent=1))
        return
    table = []
    for r in rows:
        status = "up to date" if r["current"] else "old recipe (nslab images build)" if r["present"] else \
            "missing (nslab images build)"
        table.append([r["image"], status, f"{r['size'] / 1e6:.0f} MB" if r["present"] else "", r["what"]])
    out.table(console, ["image", "status", "size", "contents"], table, optional=("size", "contents"))


sandbox_app = typer.Typer(no_args_is_help=True, help="Stand-in machines on this box for labs across machines "
                                                       "(Docker containers on nslab's own underlay, and an etcd).")
app.add_typer(sandbox_app, name="sandbox")


@sandbox_app.command("up")
@run
def sandbox_up(machines: int = typer.Argument(..., help="How many machines (m1..mN)."),
               name: str = typer.Option("sandbox", "--name", help="The sandbox's name (prefix of its "
                                                                   "containers and namespace)."),
               port: int = typer.Option(23790, "--port", help="etcd on 127.0.0.1:PORT, mI's agent on PORT+I."),
               mtu: int = typer.Option(9216, "--mtu", help="The underlay's MTU."),
               tls: bool = typer.Option(False, "--tls", help="etcd with TLS client certificates and the agents' "
                                        "channel over mutual TLS (a CA made here with openssl).")):
    """Start N stand-in machines and an etcd; print the `export NSLAB_ETCD=...` line(s)."""
    from . import sandbox                  # lazy: start-up
    labmod.require_root()
    rec = sandbox.up(name, machines, port=port, mtu=mtu, log=out.say, tls=tls)
    out.say(f"sandbox {name}: {machines} machines on 198.18.0.0/15 (MTU {mtu}), etcd on 198.18.0.1 "
            f"(from here: {rec.etcd()})")
    print(sandbox.export_line(rec))


@sandbox_app.command("down")
@run
def sandbox_down(name: str = typer.Option("sandbox", "--name", help="The sandbox's name.")):
    """Remove the sandbox: exactly the containers, namespace and processes it recorded."""
    from . import sandbox                  # lazy: start-up
    labmod.require_root()
    for line in sandbox.down(name):
        out.say(line)


def etcd_endpoint(etcd: str | None, ca: str | None = None, cert: str | None = None, key: str | None = None) -> str:
    """--etcd, else $NSLAB_ETCD: the cluster of labs across machines.  --etcd-ca/-cert/-key,
    checked, take the place of $NSLAB_ETCD_CA/_CERT/_KEY for this command (coord.connect
    reads them there)."""
    endpoint = etcd or os.environ.get("NSLAB_ETCD")
    if not endpoint:
        raise UsageError("no etcd named: give --etcd URL or export NSLAB_ETCD=URL (`nslab sandbox up` prints it)")
    if ca or cert or key:
        from . import coord                  # lazy: start-up
        creds = coord.credentials(ca, cert, key)
        for (field, _, var) in coord.TLS_FILES:
            if getattr(creds, field):
                os.environ[var] = getattr(creds, field)
    return endpoint


@app.command("agent")
@run
def agent_cmd(etcd: Optional[str] = typer.Option(None, "--etcd", help="etcd endpoint (default: $NSLAB_ETCD)."),
              machine: str = typer.Option(..., "--machine", help="This machine's name in the cluster."),
              underlay: Optional[str] = typer.Option(None, "--underlay", help="The interface the machines reach "
                                                                              "each other on (default: the first "
                                                                              "with an IPv4 address)."),
              ttl: int = typer.Option(10, "--ttl", help="Seconds the machine's lease lives without the agent."),
              etcd_ca: Optional[str] = EtcdCaOpt, etcd_cert: Optional[str] = EtcdCertOpt,
              etcd_key: Optional[str] = EtcdKeyOpt):
    """Run this machine's agent: register, build and remove the shards etcd assigns here."""
    from . import machine_agent              # lazy: start-up
    labmod.require_root()
    endpoint = etcd_endpoint(etcd, etcd_ca, etcd_cert, etcd_key)
    machine_agent.Agent(endpoint, machine, underlay, ttl=ttl, log=out.say).run()


@app.command("machines")
@run
def machines_cmd(etcd: Optional[str] = typer.Option(None, "--etcd", help="etcd endpoint (default: $NSLAB_ETCD)."),
                 as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
                 etcd_ca: Optional[str] = EtcdCaOpt, etcd_cert: Optional[str] = EtcdCertOpt,
                 etcd_key: Optional[str] = EtcdKeyOpt):
    """The machines registered in etcd: lease, underlay address, labs and namespaces."""
    from . import coord                      # lazy: start-up
    client = coord.connect(etcd_endpoint(etcd, etcd_ca, etcd_cert, etcd_key))
    found, bad = coord.machines(client)
    status = coord.statuses(client)
    rows = []
    for m in sorted(found, key=lambda m: m.name):
        labs = {lab: s for (lab, name), s in status.items() if name == m.name}
        rows.append({"machine": m.name, "address": m.address, "underlay_mtu": m.underlay_mtu,
                     "lease": f"{m.lease:x}", "ttl": client.time_to_live(m.lease),
                     "labs": {lab: {"state": s["state"], "namespaces": s["namespaces"]} for lab, s in labs.items()}})
    if as_json:
        print(json.dumps(rows, indent=1))
        return
    for sentence in bad:
        out.warn(f"nslab: ignored: {sentence}")
    table = [[r["machine"], r["address"], str(r["underlay_mtu"]), f"{r['lease']} ({r['ttl']} s)",
              ", ".join(f"{lab} {s['namespaces']} ns" + ("" if s["state"] == "up" else f" {s['state']}")
                        for lab, s in sorted(r["labs"].items())) or "-"] for r in rows]
    out.table(console, ["machine", "underlay", "mtu", "lease", "labs"], table, optional=("labs",))


# Commands that build, check or remove a lab and exit: no cyclic garbage collection.  A
# 10,000-host lab is ~1 million objects that live to the end, and every collection pass
# walked them again (compile 0.93 -> 0.43 s, the plan record 1.12 -> 0.83 s at 10,000).
# Long-running ones (capture, the console, the agent's own processes) keep it.
ONE_SHOT = {"up", "down", "validate", "script", "generate", "test"}


def main():
    one_shot = sys.argv[1:2] and sys.argv[1] in ONE_SHOT
    if one_shot:
        gc.disable()
    raise_nofile_soft_limit()      # soft -> hard: a 1,000-namespace lab needs more than Debian's 1024
    if sys.argv[1:] in (["--version"], ["-V"]):   # not a typer callback: that would load typer every time
        from importlib.metadata import version  # lazy: start-up
        print(f"nslab {version('nslab')}")
        return
    try:
        typer.main(app)            # plain command lines parsed here; --help, completion, odd input: typer
    finally:
        if one_shot:               # the interpreter's last collection at exit skips what it holds:
            gc.freeze()            # a 1,000-pod converge's ~300,000 objects (-2% of its instructions)


if __name__ == "__main__":
    main()
