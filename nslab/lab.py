"""Bring labs up and down: model -> plan -> state record -> apply, and the reverse.

`up` records what it builds (state.record_built): the topology text it loaded and the plan
it applies, fitted to this kernel.  `topology(lab)` and `applied_plan(lab)` read that record,
so observers and `rewire` describe the lab as built, whatever happened to its file since."""
from __future__ import annotations

import errno
import json
import os
import re
import socket
import subprocess
from pathlib import Path

from . import model, state
from . import plan as P
from .apply import containers, kernel, netns, qdisc
from .apply.applier import Applier
from . import compile as compiler       # compile_topology loads on first use (CLI start-up)
from .compile.kernel import fit_to_kernel
from .compile.script import render_op
from .errors import ApplyError, NslabError, PrerequisiteError, TopologyError, UsageError
from .model import limits
from .plan import STAGE_NAMESPACE, STAGE_PROCESS, Daemon, Netns, Plan, Serve, Sysctl
from . import spawn
from .runtime import agent


def require_root() -> None:
    """Checked before anything is read or made: one sentence, exit 3."""
    if os.geteuid() != 0:
        raise PrerequisiteError("this nslab command needs root (labs are network namespaces, their processes and "
                                "records in /run/nslab, all root's): run it with sudo, or as root")


def require_tools(*tools: str) -> None:
    """Checked before anything is made: names each missing command and its Debian package."""
    missing = [t for t in tools if spawn.tool(t) is None]      # where nslab will run them from
    if missing:
        pkgs = sorted({spawn.PACKAGES.get(t, t) for t in missing})
        raise PrerequisiteError(f"{', '.join(missing)} not found on PATH: install it with "
                                f"`apt-get install -y {' '.join(pkgs)}`")


BUNDLED = Path(__file__).parent / "topologies"


def bundled_topologies() -> list[str]:
    """Names of the topologies shipped with nslab (`nslab up spine-leaf`)."""
    return sorted(p.stem for p in BUNDLED.glob("*.yaml"))


def find_topology(spec: str, bases: tuple = ()) -> str:
    """The topology file `spec` names: a path that exists (as given, or relative to one of
    `bases`), else, for a bare name only (`spine-leaf`: no folder, no .yaml), the topology
    bundled with nslab under that name.  Otherwise the path as given (load() says it is
    missing, naming the bundled topology of that name if there is one): a path that does
    not exist never silently means a bundled file."""
    path = Path(spec)
    if path.is_absolute() or path.is_file():
        return spec
    for base in bases:
        if (Path(base) / path).is_file():
            return str(Path(base) / path)
    if bare_name(spec) and (BUNDLED / f"{spec}.yaml").is_file():
        return str(BUNDLED / f"{spec}.yaml")
    return spec


def bare_name(spec: str) -> bool:
    """`spine-leaf`: a bundled topology's name, not a path (no folder, no .yaml)."""
    return bool(spec) and os.sep not in spec and not spec.endswith((".yaml", ".yml")) and spec not in (".", "..")


def missing_topology(spec: str) -> UsageError:
    """One sentence for a topology that is neither a file nor a bundled name; a path whose
    file name is a bundled topology's names that one as the alternative."""
    stem = Path(spec).stem if spec.endswith((".yaml", ".yml")) else Path(spec).name
    if (BUNDLED / f"{stem}.yaml").is_file():
        return UsageError(f"no topology file {spec!r}: no such file; nslab bundles a topology of that name: "
                          f"give it as {stem}")
    from . import generate  # lazy: start-up
    return UsageError(f"no topology {spec!r}: no such file, and nslab bundles no topology of that name "
                      f"(bundled: {', '.join(bundled_topologies())}; or a generated fabric: "
                      f"{', '.join(generate.EXAMPLES.values())})")


def is_shape(spec: str) -> bool:
    """`clos:4,20,50`, `tree,2,3`: what `nslab generate` takes (well formed or not: a bad
    one is refused by the generator, with what it takes)."""
    from . import generate  # lazy: start-up (generate loads the model's types and PyYAML)
    m = re.fullmatch(r"([a-z]+(?:-[a-z]+)?)[:,].*", spec, re.S)
    return m is not None and m.group(1) in generate.SHAPES


def load(file: str, name: str | None = None, overrides: dict | None = None) -> model.Topology:
    """Load a topology file, a bundled topology by name (find_topology), or a fabric
    `nslab generate` would write, by its shape (`nslab up clos:4,20,50`: generated in
    memory; the run directory records the text as for any file)."""
    found = find_topology(file)
    if found == file and not os.path.exists(file):
        if os.sep not in file and is_shape(file):
            from . import generate  # lazy: start-up
            return model.load(file, text=generate.render(file, name=name), name=name, overrides=overrides)
        raise missing_topology(file)
    return model.load(found, name=name, overrides=overrides)


def _record(lab: str, st: state.LabState | None) -> state.LabState:
    st = st if st is not None else state.load(lab)
    if st is None:
        raise UsageError(f"no lab named {lab!r} is running")
    return st


def topology(lab: str, st: state.LabState | None = None) -> model.Topology:
    """The resolved topology of a running lab exactly as it was built: the text `up`
    recorded, parsed again with the lab's name and command-line overrides (the user's file
    is not read: it may have been edited or deleted since), for observers that need names,
    MACs and addresses.  What this machine can hold was checked at `up`, not again here."""
    st = _record(lab, st)
    text = state.read_built(lab, state.TOPOLOGY, st)
    try:
        return model.load(st.file, text=text, name=lab, overrides=st.overrides or None, check_limits=False)
    except TopologyError as e:
        raise state.RecordError(f"lab {lab}: its recorded topology {os.path.join(st.dir, state.TOPOLOGY)} no "
                                f"longer loads ({e}); `nslab down {lab}` and bring it up again") from None


def applied_plan(lab: str, st: state.LabState | None = None) -> Plan:
    """The plan `up` applied to lab `lab` (after fitting it to this kernel), read back from
    its record and validated: RecordError (one sentence) if it is not a plan of this nslab."""
    return applied_plan_lines(lab, st)[0]


def applied_plan_lines(lab: str, st: state.LabState | None = None, known: dict | None = None) -> tuple[Plan, list]:
    """applied_plan, and its ops' lines (plan.op_lines) for a converge; `known`: line -> op
    of the plan compiled now, whose ops are not decoded again (plan.from_json_lines)."""
    st = _record(lab, st)
    text = state.read_built(lab, state.PLAN, st)
    try:
        if known is None:
            return P.from_json(text), None
        return P.from_json_lines(text, known)
    except (ValueError, TypeError) as e:
        raise state.RecordError(f"lab {lab}: its recorded plan {os.path.join(st.dir, state.PLAN)} is corrupt "
                                f"({e})") from None


def plan_for_this_kernel(topo: model.Topology) -> Plan:
    """The plan `up` would apply here: compiled, then fitted to this kernel (no ipip: TUN
    devices and encapsulators instead).  Reads the kernel, changes nothing."""
    if topo.cluster is not None and topo.cluster.proxy_mode == "ipvs":
        kernel.require_ip_vs()
    plan = compiler.compile_topology(topo)
    fit_to_kernel(plan, kernel.ipip_state())
    return plan


def up(topo: model.Topology, overrides: dict | None = None, progress=None,
       plan: Plan | None = None) -> tuple[Plan, state.LabState]:
    """Build the lab; on any failure remove what was made (and only that) and re-raise.
    The lab's lock is held throughout: a `down`, `capture` or `rewire` of the same lab
    waits until `up` has finished or cleaned up.  `plan`: this machine's shard of a lab
    placed over machines (agent.py; compile/placement.shard), instead of the whole lab's."""
    require_root()
    plan = plan if plan is not None else plan_for_this_kernel(topo)
    if any(isinstance(op, P.Link) and op.kind == "dummy" for op in plan.ops):
        kernel.load_dummy_module()     # kube-ipvs0: without creating dummy0 in the root namespace
    # link conditions: no netem here refuses delay/loss now, before anything exists
    qdisc.fit_plan(plan, without_netem=bool((overrides or {}).get("without_netem")))
    engine = containers.check(plan)    # container nodes: the engine answers, the images are here
    if os.path.lexists(state.lab_dir(topo.name)):
        raise _taken(topo)
    taken = [ns for ns in plan.namespaces if netns.exists(ns)]
    if taken:
        raise UsageError(f"network namespace {taken[0]} already exists and nslab did not make it for lab "
                         f"{topo.name}; remove it (ip netns del {taken[0]}) or rename the lab with --name")
    adopt = hosts_leftovers(plan)
    if engine is not None:
        containers.conflicts(engine, plan, topo.name, state.lab_dir(topo.name))
    try:
        st = state.claim(topo.name, topo.file)
    except state.LabExists:
        raise _taken(topo) from None
    lab = topo.name

    def record(change) -> None:        # our copy (what to undo) first, then the record
        change(st)
        state.update(lab, change)

    def record_namespaces(ids: dict) -> None:
        st.ns_ids.update(ids)
        state.record_namespaces(lab, ids)
    try:
        try:
            def plan_facts(s):
                s.namespaces = list(plan.namespaces)
                mine = set(s.namespaces)       # a shard: only its machine's nodes
                s.nodes = {node.name: node.ns for node in topo.nodes.values() if node.ns in mine}
                s.info = dict(plan.notes)
                s.overrides = dict(overrides or {})
                s.containers = containers.intended(plan, lab)   # names: down looks for them by label
            record(plan_facts)
            # what is built, recorded before it is: observers and rewire read this, not the file
            state.record_built(lab, _source(topo), P.to_json(plan))
            write_hosts_files(plan, st, record, adopt)

            def start_container(op):
                pid = containers.start(engine, st, op, plan.hosts, state.update)
                ident = state.container_namespace(pid, f"container node {op.node}")
                record(lambda s: s.ns_ids.__setitem__(op.ns, ident))   # before the name is published
                return pid
            applier = RecordingApplier(record, record_namespaces, max_open=limits.OPEN_NAMESPACES, start_container=start_container,
                                       progress=progress)
            try:
                applier.prepare(plan)
                applier.apply(plan)
            except netns.SysctlRefused as e:      # the kernel judges the value: the file's line
                raise e.located(topo) from None
            finally:
                applier.close()
            make_uts(st.dir, [op.node for op in plan.ops if isinstance(op, Netns) and op.container is None])
            services = [op for op in plan.ops if isinstance(op, (Serve, Daemon))]
            if services:
                agent.start(st, services)
            record(lambda s: setattr(s, "status", "up"))
        except BaseException:
            state.destroy(lab, st)          # unmounts the UTS namespaces too
            raise
    finally:
        state.release(lab)
    return plan, st


def _source(topo: model.Topology) -> str:
    """The exact text the topology was parsed from (kept by the model as it read it)."""
    text = topo.doc.text if topo.doc is not None else None
    if text is None:
        raise UsageError(f"lab {topo.name}: its topology carries no text to record (load it with model.load)")
    return text


class RecordingApplier(Applier):
    """Namespaces whose identity is in the record before their name exists: they are made
    anonymous first (held by an fd, a group of max_open at a time), their device and inode
    recorded in one appended line per group, the group's /run/netns/<name> files made
    exclusively (netns.place_files), and each is then published with a bind mount on its
    file.  Killed at any moment, `down` finds each
    published namespace recorded (or an empty placeholder file), and never mistakes
    someone else's for the lab's."""

    def __init__(self, record, record_namespaces, progress=None, **kw):
        super().__init__(**kw)
        self.record = record
        self.record_namespaces = record_namespaces       # identities: appended, not a rewrite
        self.pool: dict[str, tuple] = {}     # name -> (fd, socket, interfaces) while anonymous
        self.progress = progress or (lambda phase, done, total: None)   # console.Progress from the CLI
        self.batches = [0, 0]

    def apply(self, plan: Plan) -> None:
        self.batches = [0, len({(op.stage, op.ns) for op in plan.ops
                                if op.stage not in (STAGE_NAMESPACE, STAGE_PROCESS)})]
        super().apply(plan)

    def run_batch(self, ns, ops: list) -> None:
        super().run_batch(ns, ops)
        self.batches[0] += 1
        self.progress("links, addresses, routes", *self.batches)

    def prepare(self, plan: Plan) -> None:
        self.pending = [op.ns for op in plan.ops if isinstance(op, Netns) and op.container is None]
        self.sysctls = self.namespace_sysctls(plan)
        self.made = 0

    def _make_anonymous(self) -> None:
        """The next group of namespaces (max_open of them: open files stay bounded at any
        lab size), made anonymous and recorded in one write before any is named, then
        their mount point files placed.  Each one's socket is opened and its sysctls are
        written while the thread is inside it after unshare (no second visit)."""
        names = self.pending[self.made:self.made + self.max_open]
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            for i, name in enumerate(names, self.made):
                self.progress("creating namespaces", i, len(self.pending))
                netns.unshare(netns.CLONE_NEWNET)
                try:
                    fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
                    try:
                        self.pool[name] = (fd, *self.inside(self.sysctls.get(name, [])))
                    except BaseException:
                        os.close(fd)
                        raise
                finally:
                    netns.setns(home)
        finally:
            os.close(home)
        self.made += len(names)
        ids = {name: [os.fstat(self.pool[name][0]).st_dev, os.fstat(self.pool[name][0]).st_ino] for name in names}
        self.record_namespaces(ids)
        netns.ensure_run_dir()
        try:
            netns.place_files([netns.path(name) for name in names])
        except FileExistsError as e:
            raise ApplyError(f"network namespace {os.path.basename(e.filename)} already exists (another lab or "
                             f"`ip netns add` made it); nslab will not touch it") from None

    def create_namespace(self, name: str, sysctls: list) -> object:
        if name not in self.pool:
            self._make_anonymous()     # sysctls: written there (self.sysctls, the same list)
        fd, sock, existing = self.pool.pop(name)
        self.progress("naming namespaces", len(self.namespaces), len(self.pending))
        try:
            netns.mount(f"/proc/self/fd/{fd}", netns.path(name), None, netns.MS_BIND)
        except BaseException:
            sock.close()
            os.close(fd)
            raise
        return self.register(name, fd, sock, existing)

    def close(self) -> None:
        super().close()
        for fd, sock, _ in self.pool.values():
            sock.close()
            os.close(fd)
        self.pool.clear()


def _taken(topo: model.Topology):
    """The lab's name is in use: running (the record says up) or being brought up or
    down by another nslab right now (exit 1: try again)."""
    try:
        st = state.load(topo.name)
    except state.RecordError:
        st = None
    if st is not None and st.status == "up":
        return already_running(topo)
    return NslabError(f"lab {topo.name!r} is being created or removed by another nslab command right now "
                      f"(or an earlier one was interrupted: `nslab down {topo.name}`); try again once it is done")


def already_running(topo: model.Topology) -> NslabError:
    doc = topo.doc
    written = (doc.data or {}).get("name") if doc and isinstance(doc.data, dict) else None
    if topo.name != (written or model.lab_name_from_file(topo.file)):   # the name came from --name
        return UsageError(f"--name {topo.name}: lab {topo.name!r} is already running (`nslab down {topo.name}` "
                          f"first, or choose another --name)")
    path = ("name",) if doc and "name" in (doc.data or {}) else ()
    return TopologyError(os.path.basename(topo.file), doc.line(path) if doc and path else None,
                         "name" if path else "",
                         f"lab {topo.name!r} is already running (`nslab down {topo.name}` first, or give "
                         f"this one another name with --name)")


def hosts_text(plan: Plan) -> str:
    return "127.0.0.1 localhost\n" + "".join(f"{addr} {name}\n" for name, addr in sorted(plan.hosts.items()))


# A lab's own resolv.conf (beside its hosts file, bind-mounted over /etc/resolv.conf by
# `ip netns exec`): without it a node asks the host's nameserver, which no lab reaches, and
# `ping nosuch` waits 5-10 s on it.  Names resolve through /etc/hosts; a query for anything
# else goes to the node's own loopback, where nothing listens: refused at once.
RESOLV_CONF = ("# nslab: this lab has no DNS server; its node names resolve through /etc/hosts.\n"
               "# Any other name is asked here (the node's own loopback) and fails at once.\n"
               "nameserver 127.0.0.1\n"
               "options timeout:1 attempts:1\n")


def stale_link(lab: str, path: str, dangling: bool = True) -> bool:
    """/etc/netns/<ns> is a link of lab `lab`'s into its run directory, which is gone
    (dangling; False: or made again since)."""
    try:
        return os.path.islink(path) and not (dangling and os.path.exists(path)) and \
            bool(state.etc_folder_re(state.lab_dir(lab)).fullmatch(os.readlink(path)))
    except OSError:
        return False


def hosts_leftovers(plan: Plan) -> list[str]:
    """/etc/netns/<ns> entries in the way of the plan's links: a directory holding only the
    hosts file `nslab script` writes for this very plan is adopted (returned: replaced by
    our link); anything else is refused with what to remove."""
    if not plan.hosts:
        return []
    adopt = []
    for ns in plan.namespaces:
        path = os.path.join(state.HOSTS_DIR, ns)
        if not os.path.lexists(path):
            continue
        if stale_link(plan.lab, path):
            adopt.append(path)      # this lab's own link, its run directory gone with a reboot (/run is tmpfs)
            continue
        try:
            hosts_only = not os.path.islink(path) and os.listdir(path) == ["hosts"] and \
                not os.path.islink(os.path.join(path, "hosts")) and \
                open(os.path.join(path, "hosts")).read() == hosts_text(plan)
        except OSError:
            hosts_only = False
        if not hosts_only:
            raise UsageError(f"{path} exists and nslab did not make it (a leftover of `nslab script`'s commands?): "
                             f"remove it (rm -r {path}) or rename the lab with --name")
        adopt.append(path)
    return adopt


def resolv_conf(note) -> str:
    """A namespace's resolv.conf: its plan note's (a pod's, kubelet's text), else the lab's."""
    text = note.get("resolv.conf") if isinstance(note, dict) else None
    return text if isinstance(text, str) else RESOLV_CONF


def etc_folder(run_dir: str, note) -> str:
    """The folder a namespace's /etc/netns link points to, for its plan note."""
    text = resolv_conf(note)
    return state.etc_folder(run_dir, None if text == RESOLV_CONF else text)


def write_hosts_files(plan: Plan, st: state.LabState, record, adopt: list[str] = ()) -> None:
    """Node names for `ip netns exec` (and so `nslab exec`): it bind-mounts
    /etc/netns/<ns>/hosts over /etc/hosts, and resolv.conf over /etc/resolv.conf
    (RESOLV_CONF; a pod's is kubelet's).  One hosts file and resolv.conf per lab, under its run
    directory; each /etc/netns/<ns> is a symlink to its folder (one write in /etc per
    namespace, one unlink at down), recorded once made.  `adopt`: hosts-only leftovers of
    this plan (hosts_leftovers), replaced by the link."""
    if not plan.hosts:
        return
    # A cluster's pods have the resolv.conf kubelet writes (compile/dns.py, in the plan's
    # notes): a folder of their own per distinct text (state.etc_folder)
    notes = [plan.notes.get(op.node) for op in plan.ops if isinstance(op, Netns)]
    texts = [resolv_conf(note) for note in notes]
    folders = {text: etc_folder(st.dir, note) for text, note in zip(texts, notes)}
    folders.setdefault(RESOLV_CONF, state.etc_folder(st.dir))
    for text, etc in folders.items():
        os.makedirs(etc, exist_ok=True)
        with open(os.path.join(etc, "hosts"), "w") as f:
            f.write(hosts_text(plan))
        with open(os.path.join(etc, "resolv.conf"), "w") as f:
            f.write(text)
    if not os.path.isdir(state.HOSTS_DIR):
        os.makedirs(state.HOSTS_DIR, exist_ok=True)
        open(state.HOSTS_DIR_MARK, "w").close()     # nslab made it: the last down removes it
    links = [os.path.join(state.HOSTS_DIR, ns) for ns in plan.namespaces]
    for link in adopt:
        if stale_link(st.lab, link, dangling=False):   # this lab's own (hosts_leftovers), its folder made anew
            os.unlink(link)
            continue
        # through the directory itself, never a path: a directory swapped for a symlink
        # since hosts_leftovers looked (/etc/netns/x -> /etc) must not cost /etc/hosts
        fd = os.open(link, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.unlink("hosts", dir_fd=fd)
        finally:
            os.close(fd)
        os.rmdir(link)             # a symlink by now: ENOTDIR, nothing removed
    groups: dict[str, list[str]] = {}
    for link, text in zip(links, texts):
        groups.setdefault(folders[text], []).append(link)
    made: list[str] = []
    try:
        for etc, group in groups.items():
            netns.place_files(group, symlink_to=etc)
            made += group
    except FileExistsError as e:
        made += group[:group.index(e.filename)]
        record(lambda s: s.files.extend(made))
        raise UsageError(f"{e.filename} appeared while lab {st.lab} was being built and nslab did not make it: "
                         f"remove it (rm -r {e.filename}) or rename the lab with --name") from None
    record(lambda s: s.files.extend(links))   # links into our own run dir: down finds them anyway


def down(lab: str) -> list[str]:
    """Remove lab `lab` (teardown); the namespaces removed.  NslabError naming what had to
    be left (not verifiably the lab's), after removing everything else."""
    result = teardown(lab)
    if result.kept:
        raise NslabError("; ".join(result.kept))
    return result.removed


def teardown(lab: str, progress=None) -> state.Teardown:
    """Remove lab `lab`: what it verifiably made (see state.destroy), and the containers
    labelled for it if its record is gone."""
    require_root()
    state.sweep_removing()              # a down killed between its rename and its rmtree
    if not os.path.lexists(state.lab_dir(lab)):
        orphans = state.orphans(lab).get(lab, [])
        if orphans:
            containers.remove(orphans)
            return state.Teardown(kept=[])
        raise UsageError(f"no lab named {lab!r} is running (running: {', '.join(state.labs()) or 'none'})")
    _remove_stitches(lab)
    return state.destroy(lab, progress=progress)


def _remove_stitches(lab: str) -> None:
    """A shard's stitch ends (VXLANs between machines, compile/placement.py) deleted before
    their namespaces: the kernel frees a deleted namespace later, and until then its VXLAN
    holds its VNI on the machine's UDP port, so a lab brought up at once and given that VNI
    again is refused ("A VXLAN device with the specified VNI already exists")."""
    from .apply.applier import is_stitch       # lazy: only for a shard
    try:
        st = state.load(lab)
        if st is None or not (st.info or {}).get("_shard"):
            return
        owned = state.verified_ids(st)
        ends = [op for op in applied_plan(lab, st).ops if is_stitch(op) and op.ns in owned]
    except NslabError:                  # an unreadable record: state.destroy says what it can
        return
    for op in ends:
        subprocess.run([spawn.need("ip"), "-n", op.ns, "link", "del", "dev", op.name], cwd=spawn.CWD,
                       env=spawn.env(), capture_output=True)


# ---- a hostname per node ----------------------------------------------------------------------
# Each (non-container) node gets a UTS namespace whose hostname is the node's name, as
# Mininet and containers do: `hostname` in `nslab exec`/`shell` prints the node.  It is held
# by a bind mount on RUN_DIR/<lab>/uts/<node> (the lab's run directory is the record: nothing
# else on the host), entered by exec/shell (`ip netns exec` enters only the network
# namespace), and unmounted by down, also after an `up` that was killed.

CLONE_NEWUTS = 0x04000000
UTS_DIR = "uts"


def uts_path(run_dir: str, node: str) -> str:
    return os.path.join(run_dir, UTS_DIR, node)


def make_uts(run_dir: str, nodes: list[str]) -> None:
    """A UTS namespace per node, named after it, held by a bind mount on a file of a tmpfs
    of the lab's own (RUN_DIR/<lab>/uts): files there cost no disk inode, and down's one
    lazy unmount of the tmpfs releases every node's at once (one RCU grace period, where
    an unmount per node waits for one each: ~0.1 ms per node)."""
    if not nodes:
        return
    folder = os.path.join(run_dir, UTS_DIR)
    os.makedirs(folder, exist_ok=True)
    if not os.path.ismount(folder):       # a converge adds nodes to the lab's own
        netns.mount("nslab-uts", folder, "tmpfs", netns.MS_NOSUID | netns.MS_NODEV | netns.MS_NOEXEC,
                    "mode=0755,size=64k")
    netns.place_files([uts_path(run_dir, node) for node in nodes])
    home = os.open("/proc/thread-self/ns/uts", os.O_RDONLY | os.O_CLOEXEC)
    try:
        for node in nodes:
            target = uts_path(run_dir, node)
            netns.unshare(CLONE_NEWUTS)
            try:
                socket.sethostname(node)
                netns.mount("/proc/thread-self/ns/uts", target, None, netns.MS_BIND)
            finally:
                netns.setns(home, CLONE_NEWUTS)
    finally:
        os.close(home)


def uts_of(lab: str, node: str) -> str | None:
    """The UTS namespace file of NODE: its mount in the run dir, or a container node's own
    (docker gives it the node's name as hostname); None for a lab from before."""
    path = uts_path(state.lab_dir(lab), node)
    if os.path.ismount(path):
        return path
    st = state.load(lab)
    record = next((c for c in st.containers if c.get("node") == node and c.get("id")), None) if st else None
    if record is None:
        return None
    try:          # only a container that carries the lab's labels, whatever the record says
        pid = next(c for c in containers.owned(lab, st.dir, [record]) if c.id == record["id"]).attrs["State"]["Pid"]
    except Exception:                        # gone or stopped: require_wired says so first
        return None
    return f"/proc/{pid}/ns/uts" if pid else None


def enter_uts(lab: str, node: str) -> None:
    """Enter NODE's UTS namespace (this process, before it execs a command in the node)."""
    path = uts_of(lab, node)
    if path is None:
        return
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        netns.setns(fd, CLONE_NEWUTS)
    finally:
        os.close(fd)


def resolve_lab(lab: str | None) -> str:
    """-l LAB, else $NSLAB_LAB (set inside `nslab shell`, or by you), else the only running lab."""
    running = state.labs()
    if lab:
        if lab not in running:
            raise UsageError(f"no lab named {lab!r} is running (running: {', '.join(running) or 'none'})")
        return lab
    default = os.environ.get("NSLAB_LAB")
    if default:
        if default not in running:
            raise UsageError(f"NSLAB_LAB={default}: no lab of that name is running (running: "
                             f"{', '.join(running) or 'none'}); unset it or give -l LAB")
        return default
    if len(running) == 1:
        return running[0]
    if not running:
        raise UsageError("no lab is running (start one with `nslab up`)")
    raise UsageError(f"several labs are running ({', '.join(running)}): say which with -l LAB "
                     f"(or a node as LAB.NODE, or NSLAB_LAB=LAB)")


def labs_of_file(path: str) -> list[str]:
    """The running labs brought up from topology file `path`, under any --name (their
    records name the file `up` read, absolute)."""
    want = os.path.realpath(path)
    found = []
    for lab in state.labs():
        try:
            st = state.load(lab)
        except state.RecordError:       # unreadable: `down NAME` names it; not guessed at here
            continue
        if st is not None and st.file not in ("", "?") and os.path.realpath(st.file) == want:
            found.append(lab)
    return found


def resolve_nodes(lab: str | None, *targets: str | None) -> tuple:
    """The lab and the node arguments of a command: a node may be written as the namespace
    name nslab prints, `LAB.NODE` (also `LAB.NODE:IFACE`), which names the lab as well (no
    -l needed however many labs run).  Returns (lab, *targets without the `LAB.` prefix).
    Node and lab names hold no '.', so an address (10.244.1.2) is never read as one."""
    running = None
    named: list[str] = []
    plain = []
    for t in targets:
        head, dot, rest = (t or "").partition(".")
        if dot and "." not in rest.split(":")[0] and state.valid_lab(head):
            running = running if running is not None else state.labs()
            if head in running:
                named.append(head)
                plain.append(rest)
                continue
        plain.append(t)
    chosen = lab or (named[0] if named else None)
    for other in named:
        if other != chosen:
            raise UsageError(f"nodes of two labs given ({chosen} and {other}): one command works on one lab")
    return (resolve_lab(chosen), *plain)


def node_namespace(lab: str, node: str, st: state.LabState | None = None) -> str:
    """NODE's namespace, for every command that enters, reads or changes it: the record's
    name for it only if that namespace is verifiably the lab's (state.verified_ids), else
    one sentence saying why not."""
    st = _record(lab, st)
    if node not in st.nodes:
        raise UsageError(f"lab {lab} has no node {node!r} (nodes: {', '.join(st.nodes)})")
    problem = state.namespace_problem(st, st.nodes[node], node)
    if problem:
        raise NslabError(problem)
    return st.nodes[node]


def require_own_namespaces(st: state.LabState, names) -> None:
    """Refuse, in one sentence, unless every namespace in `names` (those of the recorded
    topology's nodes, say) is verifiably the lab's (state.verified_ids)."""
    owned = state.verified_ids(st, names)
    for ns in names:
        if ns not in owned:
            raise NslabError(state.namespace_problem(st, ns))


def unwired(st: state.LabState, nodes=None) -> dict[str, str]:
    """Container nodes (of `nodes`, default all) no longer running in the network namespace
    the lab wired: node -> what happened.  `docker restart` gives a container a new network
    namespace without the lab's links (its old one stays, held by /run/netns, with them);
    a stopped or removed container has none.  Asks the engine only for labs with containers."""
    recorded = [c for c in st.containers if c.get("id") and (nodes is None or c["node"] in nodes)]
    if not recorded:
        return {}
    import docker                      # lazy: start-up (only labs with container nodes pay for it)
    client = containers.engine()
    found = {}
    for c in recorded:
        try:
            info = client.containers.get(c["id"]).attrs["State"]
        except docker.errors.NotFound:
            found[c["node"]] = f"container {c['name']} is gone"
            continue
        if not info.get("Running") or not info.get("Pid"):
            found[c["node"]] = f"container {c['name']} is not running"
        elif state.ns_identity(f"/proc/{info['Pid']}/ns/net") not in \
                state.verified_ids(st, [st.nodes.get(c["node"])]).values():
            found[c["node"]] = f"container {c['name']} was restarted (new network namespace, without the lab's links)"
    return found


def require_wired(lab: str, nodes=None, st: state.LabState | None = None) -> None:
    """Refuse to observe or enter container nodes that lost their wiring (unwired): one
    sentence that names them and the fix.  nslab never re-wires behind the user's back:
    `rewire` changes the lab, and ls/show/exec only look."""
    st = st if st is not None else state.load(lab)
    broken = unwired(st, nodes) if st is not None else {}
    if broken:
        raise NslabError(f"lab {lab}: {'; '.join(f'{n}: {why}' for n, why in broken.items())}: "
                         f"run `nslab rewire -l {lab}`")


RESTORED = (P.Route, P.Neigh, P.Fdb)     # what Linux drops with a device that goes down, and flannel writes again


def set_link(lab: str, target: str, up: bool) -> list[str]:
    """`nslab link down|up NODE:IFACE`.  Down: the interface only (the kernel then drops the
    routes through it, its neighbours, and flannel's entries on flannel.<VNI>).  Up: the
    interface, then every route, neighbour and FDB entry of the node that `up` applied (the
    recorded plan) and the kernel no longer has.  Returns what was restored, as iproute2."""
    require_root()
    node, sep, iface = target.partition(":")
    if not sep or not node or not iface:
        raise UsageError(f"{target!r} is not NODE:IFACE (e.g. worker1:flannel.4000)")
    ns = node_namespace(lab, node)
    require_wired(lab, [node])
    plan = applied_plan(lab)
    applier = Applier()
    try:
        handle = applier.open_namespace(ns)
        if iface not in handle.ifindex:
            raise UsageError(f"{node} has no interface {iface!r} (interfaces: "
                             f"{', '.join(d for d in handle.ifindex if d != 'lo')})")
        if not up:
            require_tools("ip")
            r = subprocess.run([spawn.need("ip"), "-n", ns, "link", "set", "dev", iface, "down"], capture_output=True,
                               text=True, cwd=spawn.CWD, env=spawn.env())
            if r.returncode:
                raise ApplyError(f"ip -n {ns} link set dev {iface} down: {' '.join(r.stderr.split())}")
            return []
        applier.run_batch(handle, [P.Up(ns, iface)])
        present = _neigh_and_fdb(ns)             # their netlink adds succeed when present too
        restored = []
        for op in plan.staged():
            if isinstance(op, RESTORED) and op.ns == ns:
                if (isinstance(op, P.Neigh) and (op.dev, op.address, op.lladdr) in present) or \
                        (isinstance(op, P.Fdb) and (op.dev, op.lladdr, op.dst) in present):
                    continue
                try:
                    applier.run_batch(handle, [op])
                except ApplyError as e:          # still there (routes on other devices): fine
                    if os.strerror(errno.EEXIST) not in str(e):
                        raise
                    continue
                restored.append(op)
    finally:
        applier.close()
    return [line for op in restored for line in render_op(op)]


def _neigh_and_fdb(ns: str) -> set[tuple]:
    """(dev, address, lladdr) of each neighbour and (dev, mac, dst) of each FDB entry in ns."""
    found = set()
    for argv, key in ((["ip", "-j", "-n", ns, "neigh", "show"], ("dev", "dst", "lladdr")),
                      (["bridge", "-j", "-n", ns, "fdb", "show"], ("ifname", "mac", "dst"))):
        r = subprocess.run([spawn.need(argv[0]), *argv[1:]], capture_output=True, text=True, cwd=spawn.CWD,
                           env=spawn.env())
        if r.returncode:
            raise ApplyError(f"{' '.join(argv)}: {' '.join(r.stderr.split())}")
        found |= {tuple(e.get(k) for k in key) for e in json.loads(r.stdout or "[]")}
    return found


def _check_rewire_names(st: state.LabState, specs: list[Netns], touching: dict[str, list]) -> None:
    """Every namespace rewire would touch, by the names the recorded plan gives, is the
    lab's: a container node's is the record's namespace of that node, by the lab's name
    rule and recorded when nslab made it (rewire re-adopts it, so it may be gone or be
    the container's old one); each other one the plan's operations reach is verifiably
    the lab's now (state.verified_ids).  A plan edited to name anything else is refused."""
    for op in specs:
        if st.nodes.get(op.node) != op.ns or not state.lab_namespace(st.lab, op.ns) or op.ns not in st.ns_ids:
            raise NslabError(f"lab {st.lab}: its recorded plan names namespace {op.ns!r} for container node "
                             f"{op.node!r}, which lab {st.lab} did not create: nslab will not touch it; "
                             f"`nslab down {st.lab}` and bring it up again")
    for op in specs:
        others = {ns for o in touching[op.ns] for ns in (o.ns, getattr(getattr(o, "peer", None), "ns", None))
                  if ns is not None and ns != op.ns}
        for ns in sorted(others - set(state.verified_ids(st, others))):
            raise NslabError(state.namespace_problem(st, ns))


def rewire(lab: str) -> list[str]:
    """Wire a running lab's containers again where they have a new network namespace
    (`docker restart`, or stopped or removed under nslab's feet: started or created again).
    Their old namespace is dropped with its veths, then every operation of the plan that
    touched it is applied again.  Returns the nodes re-wired."""
    require_root()
    with state.locked(lab) as exists:       # one rewire at a time, and never during up or down
        st = state.load(lab) if exists else None
        if st is None:
            raise UsageError(f"no lab named {lab!r} is running (running: {', '.join(state.labs()) or 'none'})")
        plan = applied_plan(lab, st)       # the plan as applied at up, not the file as it is now
        specs = [op for op in plan.ops if isinstance(op, Netns) and op.container is not None]
        if not specs:
            return []
        touching = {op.ns: containers.ops_touching(plan, op.ns) for op in specs}
        _check_rewire_names(st, specs, touching)      # before anything is started, read or changed
        engine = containers.check(plan)
        done = []
        for netns_op in specs:
            pid = containers.ensure_running(engine, st, netns_op, plan.hosts, state.update)
            named = netns.path(netns_op.ns)
            new_id = state.container_namespace(pid, f"container node {netns_op.node}")
            old_id = state.ns_identity(named)
            if old_id == new_id:
                continue
            if old_id is not None and netns_op.ns not in state.verified_ids(st, [netns_op.ns]):
                raise NslabError(f"namespace {netns_op.ns} is not the one lab {lab} made (another has its name): "
                                 f"nslab leaves it alone; remove it (ip netns del {netns_op.ns}) to rewire")
            ops = touching[netns_op.ns]
            applier = Applier()
            try:
                if old_id is not None:   # the old namespace still holds the veths: free their names
                    old = applier.open_namespace(netns_op.ns)
                    applier.delete_links(old, [d for d in old.ifindex if d != "lo"])
                    applier.namespaces.pop(netns_op.ns).close()
                    netns.remove(netns_op.ns)
                st.ns_ids[netns_op.ns] = new_id
                state.update(lab, lambda s: s.ns_ids.__setitem__(netns_op.ns, new_id))   # before it is named
                applier.adopt_namespace(netns_op.ns, pid, [op for op in ops if isinstance(op, Sysctl)
                                                           and op.ns == netns_op.ns and op.stage == STAGE_NAMESPACE])
                for ns in {op.ns for op in ops} - {netns_op.ns}:
                    applier.open_namespace(ns)
                applier.apply(Plan(lab=lab, ops=ops))
            finally:
                applier.close()
            done.append(netns_op.node)
        return done
