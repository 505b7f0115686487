"""Container nodes through the Docker engine (the `docker` Python SDK).

A node with `image:` is a container started with `--network none`; nslab then names its
network namespace /run/netns/<lab>.<node> (netns.adopt, like `ip netns attach`) and wires
it from the host exactly like any other node, so exec, show, capture and trace need no
special case.  The container itself never needs NET_ADMIN.

Ownership: a container's name is written into the lab's state before it is created and
its ID right after; every container also carries the labels nslab.lab=<lab> and
nslab.state=<run dir>, so `nslab down` finds it even if the record of one was lost, and
removes nothing else.

The lab's record is not imported here (state sits above apply): callers pass the lab's
run directory and the record's `update` function.  Images: apply/images.py.
"""
from __future__ import annotations

import os

from .. import plan as P
from ..errors import NslabError, PrerequisiteError
from ..model.containers import LABEL_LAB, LABEL_NODE, LABEL_STATE, container_name, normalize
from .images import IMAGES

DOCKERD = "dockerd --iptables=false --ip6tables=false --ip-forward=false --bridge=none"


# ---- the engine ---------------------------------------------------------------------------


def engine_socket() -> str:
    """The local engine's unix socket: DOCKER_HOST's (default /var/run/docker.sock).  nslab
    wires a container by the PID the engine reports, into that process's namespace on this
    machine, as root: so only a local engine, on a socket only root (or we) can replace, is
    asked; a tcp:// or ssh:// engine, or a socket in a user's folder (`sudo -E` keeps
    DOCKER_HOST), is refused in one sentence."""
    from .. import spawn  # lazy: start-up
    host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    if not host.startswith("unix://"):
        raise PrerequisiteError(f"DOCKER_HOST={host}: nslab wires containers by their PID on this machine, so it "
                                f"talks only to the local engine's unix socket (unset DOCKER_HOST)")
    path = host[len("unix://"):]
    # the socket's folders decide who can put another socket there (the socket itself is
    # usually root:docker 0660: whoever may write to it may ask the engine, not replace it)
    if os.path.exists(path) and not (spawn.safe(os.path.dirname(os.path.realpath(path)))
                                     and os.stat(path).st_uid in (0, os.geteuid())):
        raise PrerequisiteError(f"DOCKER_HOST={host}: that socket (or a folder above it) can be replaced by "
                                f"another user; nslab asks only an engine whose socket is root's")
    return path


def engine():
    """A client for the local engine, or one sentence saying how to get one."""
    try:
        import docker                      # lazy: start-up
    except ImportError:
        raise PrerequisiteError("the docker Python package is missing: run ./install.sh "
                                "(or pip install docker)") from None
    socket_path = engine_socket()
    try:
        client = docker.DockerClient(base_url=f"unix://{socket_path}", timeout=30)
        client.ping()
    except Exception:
        raise PrerequisiteError(f"Docker engine not running: start it with `{DOCKERD} &` "
                                f"(nslab/images/start-dockerd does exactly that; the flags keep it off the "
                                f"host network)") from None
    return client


def check(plan) -> None:
    """Before anything is created: the engine answers and every image is here."""
    specs = [op.container for op in plan.ops if getattr(op, "container", None) is not None]
    if not specs:
        return None
    client = engine()
    import docker                      # lazy: start-up
    for image in dict.fromkeys(normalize(s.image) for s in specs):
        try:
            client.images.get(image)
        except docker.errors.ImageNotFound:
            how = "run `nslab images build`" if image.split(":")[0] in IMAGES else \
                "build or `docker load` it first (nslab never pulls)"
            raise PrerequisiteError(f"image {image} missing: {how}") from None
    return client


def unavailable(plan) -> str | None:
    """Why this plan's containers cannot start here (engine or image missing), or None."""
    try:
        check(plan)
    except PrerequisiteError as e:
        return str(e)
    return None


# ---- containers of a lab ---------------------------------------------------------------------


def start(client, st, op, hosts: dict[str, str], update) -> int:
    """Create and start the container of plan op `op` (a Netns with a container spec) and
    record it in lab st.lab (and in `st`, the caller's copy) once the engine has created it
    (a name is exclusive there); return the PID whose network namespace nslab wires.  A
    container of that name left by an earlier run of this lab (same labels, record lost,
    e.g. by a reboot) is removed first; anyone else's is refused."""
    import docker                      # lazy: start-up
    spec = op.container
    name = container_name(st.lab, op.node)
    _clear_name(client, st.lab, st.dir, name)
    try:
        container = client.containers.create(
            normalize(spec.image), command=list(spec.command) or None, name=name, hostname=op.node,
            environment=dict(spec.env), cap_add=list(spec.cap_add) or None, network_mode="none",
            labels={LABEL_LAB: st.lab, LABEL_NODE: op.node, LABEL_STATE: st.dir},
            extra_hosts=dict(hosts) or None, detach=True)
    except docker.errors.APIError as e:
        if e.status_code == 409:       # created by someone else since _clear_name looked
            raise NslabError(_foreign(name, st.lab)) from None
        raise
    record = {"node": op.node, "name": name, "id": container.id}

    def created(s):                    # fills in the intent `up` recorded (intended(), or adds it)
        s.containers[:] = [c for c in s.containers if c.get("node") != op.node] + [dict(record)]
    created(st)
    update(st.lab, created)
    return run(container)


def intended(plan, lab: str) -> list[dict]:
    """The plan's containers as recorded before any exists: names only (a container is
    only ever taken for the lab's if it carries the lab's labels)."""
    return [{"node": op.node, "name": container_name(lab, op.node), "id": None}
            for op in plan.ops if getattr(op, "container", None) is not None]


def _ours(c, lab: str, run_dir: str) -> bool:
    return c.labels.get(LABEL_LAB) == lab and c.labels.get(LABEL_STATE) == run_dir


def _foreign(name: str, lab: str) -> str:
    return (f"a container named {name} exists and nslab did not make it for lab {lab}: remove it "
            f"(docker rm -f {name}) or run the lab under another name with --name")


def _clear_name(client, lab: str, run_dir: str, name: str, recorded: tuple = ()) -> None:
    import docker                      # lazy: start-up
    try:
        c = client.containers.get(name)
    except docker.errors.NotFound:
        return
    if not _ours(c, lab, run_dir):
        raise NslabError(_foreign(name, lab))
    if c.id not in recorded:           # an earlier run's (its record went with a reboot)
        remove([c])


def conflicts(client, plan, lab: str, run_dir: str) -> None:
    """Before anything is created: every container name the plan needs is free, or held
    by an orphan of this lab (removed later by start())."""
    import docker                      # lazy: start-up
    for op in plan.ops:
        if getattr(op, "container", None) is None:
            continue
        name = container_name(lab, op.node)
        try:
            c = client.containers.get(name)
        except docker.errors.NotFound:
            continue
        if not _ours(c, lab, run_dir):
            raise NslabError(_foreign(name, lab))


def run(container) -> int:
    """Start `container` if it is not running; return its PID."""
    container.reload()
    if not container.attrs["State"]["Running"]:
        container.start()
        container.reload()
    state = container.attrs["State"]
    if not state["Running"] or not state["Pid"]:
        raise NslabError(f"container {container.name} exited at once (exit code {state.get('ExitCode')}); "
                         f"see `docker logs {container.name}`")
    return state["Pid"]


def ensure_running(client, st, op, hosts: dict[str, str], update) -> int:
    """The PID of a lab's container: started again if it stopped, created again if it is gone."""
    import docker                      # lazy: start-up
    record = next((c for c in st.containers if c["node"] == op.node), None)
    try:
        container = client.containers.get(record["id"] if record and record.get("id")
                                          else container_name(st.lab, op.node))
    except docker.errors.NotFound:
        if record:
            st.containers.remove(record)
            update(st.lab, lambda cur: cur.containers.__setitem__(
                slice(None), [c for c in cur.containers if c.get("node") != op.node]))
        return start(client, st, op, hosts, update)
    if not _ours(container, st.lab, st.dir):
        raise NslabError(_foreign(container.name, st.lab))
    return run(container)


def ops_touching(plan, ns: str) -> list:
    """The operations to apply again when namespace `ns` is replaced by a fresh one: its
    own, the veths with an end in it (both ends die together) and whatever names a dying
    end elsewhere (bridge port, address, route, per-interface sysctl)."""
    dying = set()
    for op in plan.ops:
        if isinstance(op, P.Link) and op.kind == "veth" and op.peer is not None and ns in (op.ns, op.peer.ns):
            dying |= {(op.ns, op.name), (op.peer.ns, op.peer.name)}
    out = []
    for op in plan.staged():
        if isinstance(op, (P.Netns, P.Serve, P.Daemon)):
            continue
        if op.ns == ns or (isinstance(op, P.Link) and op.peer is not None and op.peer.ns == ns) \
                or (op.ns, getattr(op, "dev", None)) in dying \
                or (isinstance(op, P.Route) and any((op.ns, h.dev) in dying for h in op.nexthops)) \
                or (isinstance(op, P.Sysctl) and len(op.key.split(".")) > 4
                    and (op.ns, op.key.split(".")[3].replace("/", ".")) in dying):
            out.append(op)
    return out


def owned(lab: str, run_dir: str, recorded: list[dict]) -> list:
    """Lab `lab`'s containers: recorded ones (by ID) that still carry its labels, and any
    other container labelled with this lab and its run directory (a lost record).  A
    container without both labels is never the lab's, whatever a record says."""
    import docker                      # lazy: start-up
    client = engine()
    found = {}
    for rec in recorded:
        ref = rec.get("id") or rec.get("name")
        if not isinstance(ref, str) or not ref:
            continue
        try:
            c = client.containers.get(ref)
        except docker.errors.NotFound:
            continue
        if _ours(c, lab, run_dir):
            found[c.id] = c
    for c in client.containers.list(all=True, filters={"label": [f"{LABEL_LAB}={lab}",
                                                                  f"{LABEL_STATE}={run_dir}"]}):
        found[c.id] = c
    return list(found.values())


def remove(found: list) -> None:
    for c in found:
        try:
            c.remove(force=True)
        except Exception as e:          # already being removed, or gone meanwhile
            if "No such container" not in str(e) and "already in progress" not in str(e):
                raise


# ---- images ---------------------------------------------------------------------------------


def engine_socket_present() -> bool:
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    return not host.startswith("unix://") or os.path.exists(host[len("unix://"):])


def any_labelled(lab: str | None = None) -> bool:
    """Whether the local engine holds a container labelled for `lab` (any lab: None), asked
    with one raw HTTP request on its unix socket: `down` of a lab without a record must not
    pay ~0.3 s for importing the docker SDK to learn that there is nothing. True whenever
    the cheap question cannot be asked or answered (then the SDK asks)."""
    import json                 # lazy: start-up (small; only when an engine socket exists)
    import socket               # lazy: start-up
    import urllib.parse         # lazy: start-up
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://"):
        return True
    query = urllib.parse.quote(json.dumps({"label": [f"{LABEL_LAB}={lab}" if lab else LABEL_LAB]}))
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(host[len("unix://"):])
            s.sendall(f"GET /containers/json?all=1&filters={query} HTTP/1.0\r\nHost: docker\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        if not head.startswith((b"HTTP/1.0 200", b"HTTP/1.1 200")):
            return True
        return bool(json.loads(body))
    except (OSError, ValueError):
        return True
