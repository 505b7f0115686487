"""Container nodes through the Docker engine (the `docker` Python SDK).

A node with `image:` is a container started with `--network none`; nslab then names its
network namespace /run/netns/<lab>.<node> (netns.adopt, like `ip netns attach`) and wires
it from the host exactly like any other node, so exec, show, capture and trace need no
special case.  The container itself never needs NET_ADMIN.

Ownership: a container's name is written into the lab's state before it is created and
its ID right after; every container also carries the labels nslab.lab=<lab> and
nslab.state=<run dir>, so `nslab down` finds it even if the record of one was lost, and
removes nothing else.

No registry is needed: `nslab images build` makes the images the shipped topologies use
from what is on this machine (busybox-static) or from the Debian mirror apt already uses
(debootstrap), and imports them with `docker import`.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass

from .errors import NslabError, PrerequisiteError

DOCKERD = "dockerd --iptables=false --ip6tables=false --ip-forward=false --bridge=none"
LABEL_LAB, LABEL_NODE, LABEL_STATE = "nslab.lab", "nslab.node", "nslab.state"
LABEL_RECIPE = "nslab.recipe"
IMAGE_RE = re.compile(r"^[a-z0-9]+([._/-][a-z0-9]+)*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?$")
CAP_RE = re.compile(r"^[A-Z][A-Z_]*$")
# capabilities(7), Linux 6.x.  A container's root is the host's root (no user namespace),
# so a capability that acts on something the container's namespaces do not isolate (the
# kernel, the clock, the host's files by handle, LSM policy, audit, the kernel log)
# reaches outside the lab: cap_add refuses those, saying why.  Network capabilities stay
# inside: the container's network namespace is its lab node's.
CAPABILITIES = frozenset("""
    CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP LINUX_IMMUTABLE
    NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER SYS_MODULE SYS_RAWIO
    SYS_CHROOT SYS_PTRACE SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE SYS_RESOURCE SYS_TIME
    SYS_TTY_CONFIG MKNOD LEASE AUDIT_WRITE AUDIT_CONTROL SETFCAP MAC_OVERRIDE MAC_ADMIN SYSLOG
    WAKE_ALARM BLOCK_SUSPEND AUDIT_READ PERFMON BPF CHECKPOINT_RESTORE""".split())
CAP_REFUSED = {
    "ALL": "it grants every capability, SYS_ADMIN and SYS_MODULE among them",
    "SYS_ADMIN": "it opens mount, setns and many host-wide kernel interfaces (the classic container escape)",
    "SYS_MODULE": "it loads modules into the host's kernel",
    "SYS_RAWIO": "it reaches the host's I/O ports and physical memory",
    "SYS_PTRACE": "it reads and changes other processes' memory and slips past seccomp on older kernels",
    "SYS_BOOT": "kexec_load replaces the host's kernel",
    "SYS_TIME": "it sets the host's clock (the clock is not namespaced)",
    "DAC_READ_SEARCH": "open_by_handle_at opens any file of the host (the 'shocker' escape)",
    "MAC_ADMIN": "it changes the host's AppArmor/SELinux policy",
    "MAC_OVERRIDE": "it bypasses the host's AppArmor/SELinux policy",
    "SYSLOG": "it reads and clears the host kernel's log",
    "BPF": "BPF programs read and change the host kernel's data",
    "PERFMON": "system-wide perf events observe the whole host",
    "AUDIT_CONTROL": "it changes the host's audit rules",
    "AUDIT_READ": "it reads the host's audit log",
    "WAKE_ALARM": "it sets alarms that wake the host",
    "BLOCK_SUSPEND": "it keeps the host from suspending",
}


def container_name(lab: str, node: str) -> str:
    return f"nslab.{lab}.{node}"


def normalize(image: str) -> str:
    return image if ":" in image.rsplit("/", 1)[-1] else image + ":latest"


# ---- the topology keys --------------------------------------------------------------------

def parse(p, spec: dict, path: tuple):
    """`image:` with its options `command:` (a string, split like a shell would, or a
    list), `env:` (a mapping) and `cap_add:` (capability names) -> plan.Container."""
    import shlex
    from .plan import Container
    if "image" not in spec:
        key = next(k for k in ("command", "env", "cap_add") if k in spec)
        raise p.err(path + (key,), f"{key} is an option of a container node: add image: NAME")
    image = spec["image"]
    if not isinstance(image, str) or not IMAGE_RE.match(image):
        raise p.err(path + ("image",), f"{image!r} is not an image name like nslab/busybox or nslab/debian:latest")
    command = spec.get("command")
    if command is None:
        argv = ()
    elif isinstance(command, str):
        try:
            argv = tuple(shlex.split(command))
        except ValueError as e:
            raise p.err(path + ("command",), f"cannot split command {command!r}: {e}") from None
    elif isinstance(command, list) and all(isinstance(a, (str, int, float)) and not isinstance(a, bool)
                                           for a in command):
        argv = tuple(str(a) for a in command)
    else:
        raise p.err(path + ("command",), "command must be a string or a list of arguments")
    if command is not None and not argv:
        raise p.err(path + ("command",), "command is empty (leave it out to run the image's own command)")
    env = p.mapping(spec.get("env"), path + ("env",), what="env")
    for k, v in env.items():
        if not isinstance(k, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k):
            raise p.err(path + ("env", k), f"{k!r} is not an environment variable name")
        if isinstance(v, (dict, list)) or v is None:
            raise p.err(path + ("env", k), f"the value of {k} must be a string or a number, got {v!r}")
    caps = spec.get("cap_add") or []
    scalar = not isinstance(caps, list)
    caps = [caps] if scalar else caps
    out_caps = []
    for i, cap in enumerate(caps):
        where = path + (("cap_add",) if scalar else ("cap_add", i))
        name = cap.upper().removeprefix("CAP_") if isinstance(cap, str) else cap
        if not isinstance(name, str) or not CAP_RE.match(name):
            raise p.err(where, f"{cap!r} is not a capability name like NET_ADMIN")
        if name in CAP_REFUSED:
            raise p.err(where, f"cap_add {name} is refused: {CAP_REFUSED[name]}; a lab container may add only "
                               f"capabilities that stay inside it (NET_ADMIN, NET_RAW, SYS_NICE, ...)")
        if name not in CAPABILITIES:
            raise p.err(where, f"{name} is not a Linux capability (see capabilities(7))")
        out_caps.append(name)
    return Container(image=image, command=argv,
                     env=tuple((k, str(v).lower() if isinstance(v, bool) else str(v)) for k, v in env.items()),
                     cap_add=tuple(out_caps))


# ---- the engine ---------------------------------------------------------------------------

def engine():
    """A client for the local engine, or one sentence saying how to get one."""
    try:
        import docker
    except ImportError:
        raise PrerequisiteError("the docker Python package is missing: run ./install.sh "
                                "(or pip install docker)") from None
    try:
        client = docker.from_env(timeout=30)
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
    import docker
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

def start(client, st, op, hosts: dict[str, str]) -> int:
    """Create and start the container of plan op `op` (a Netns with a container spec) and
    record it in lab st.lab (and in `st`, the caller's copy) once the engine has created it
    (a name is exclusive there); return the PID whose network namespace nslab wires.  A
    container of that name left by an earlier run of this lab (same labels, record lost,
    e.g. by a reboot) is removed first; anyone else's is refused."""
    import docker
    from . import state
    spec = op.container
    name = container_name(st.lab, op.node)
    _clear_name(client, st.lab, name)
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
    state.update(st.lab, created)
    return run(container)


def intended(plan, lab: str) -> list[dict]:
    """The plan's containers as recorded before any exists: names only (a container is
    only ever taken for the lab's if it carries the lab's labels)."""
    return [{"node": op.node, "name": container_name(lab, op.node), "id": None}
            for op in plan.ops if getattr(op, "container", None) is not None]


def _ours(c, lab: str) -> bool:
    from . import state
    return c.labels.get(LABEL_LAB) == lab and c.labels.get(LABEL_STATE) == state.lab_dir(lab)


def _foreign(name: str, lab: str) -> str:
    return (f"a container named {name} exists and nslab did not make it for lab {lab}: remove it "
            f"(docker rm -f {name}) or run the lab under another name with --name")


def _clear_name(client, lab: str, name: str, recorded: tuple = ()) -> None:
    import docker
    try:
        c = client.containers.get(name)
    except docker.errors.NotFound:
        return
    if not _ours(c, lab):
        raise NslabError(_foreign(name, lab))
    if c.id not in recorded:           # an earlier run's (its record went with a reboot)
        remove([c])


def conflicts(client, plan, lab: str) -> None:
    """Before anything is created: every container name the plan needs is free, or held
    by an orphan of this lab (removed later by start())."""
    import docker
    for op in plan.ops:
        if getattr(op, "container", None) is None:
            continue
        name = container_name(lab, op.node)
        try:
            c = client.containers.get(name)
        except docker.errors.NotFound:
            continue
        if not _ours(c, lab):
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


def ensure_running(client, st, op, hosts: dict[str, str]) -> int:
    """The PID of a lab's container: started again if it stopped, created again if it is gone."""
    import docker
    from . import state
    record = next((c for c in st.containers if c["node"] == op.node), None)
    try:
        container = client.containers.get(record["id"] if record and record.get("id")
                                          else container_name(st.lab, op.node))
    except docker.errors.NotFound:
        if record:
            st.containers.remove(record)
            state.update(st.lab, lambda cur: cur.containers.__setitem__(
                slice(None), [c for c in cur.containers if c.get("node") != op.node]))
        return start(client, st, op, hosts)
    if not _ours(container, st.lab):
        raise NslabError(_foreign(container.name, st.lab))
    return run(container)


def ops_touching(plan, ns: str) -> list:
    """The operations to apply again when namespace `ns` is replaced by a fresh one: its
    own, the veths with an end in it (both ends die together) and whatever names a dying
    end elsewhere (bridge port, address, route, per-interface sysctl)."""
    from . import plan as P
    dying = set()
    for op in plan.ops:
        if isinstance(op, P.Link) and op.kind == "veth" and ns in (op.ns, op.peer.ns):
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


def owned(lab: str, recorded: list[dict]) -> list:
    """Lab `lab`'s containers: recorded ones (by ID) that still carry its labels, and any
    other container labelled with this lab and its run directory (a lost record).  A
    container without both labels is never the lab's, whatever a record says."""
    import docker
    from . import state
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
        if _ours(c, lab):
            found[c.id] = c
    for c in client.containers.list(all=True, filters={"label": [f"{LABEL_LAB}={lab}",
                                                                  f"{LABEL_STATE}={state.lab_dir(lab)}"]}):
        found[c.id] = c
    return list(found.values())


def orphans(lab: str | None = None) -> dict[str, list]:
    """Containers nslab labelled for a lab of this run directory that has no run directory
    any more (it lives in /run, a reboot empties it): {lab: [containers]}.  Empty when no
    engine answers (nothing can be found, nothing is touched)."""
    from . import state
    if not _engine_socket_present():
        return {}
    try:
        client = engine()
    except PrerequisiteError:
        return {}
    out: dict[str, list] = {}
    for c in client.containers.list(all=True, filters={"label": [f"{LABEL_LAB}={lab}" if lab else LABEL_LAB]}):
        name = c.labels.get(LABEL_LAB, "")
        if state.valid_lab(name) and c.labels.get(LABEL_STATE) == state.lab_dir(name) \
                and not os.path.lexists(state.lab_dir(name)):
            out.setdefault(name, []).append(c)
    return out


def _engine_socket_present() -> bool:
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    return not host.startswith("unix://") or os.path.exists(host[len("unix://"):])


def remove(found: list) -> None:
    for c in found:
        try:
            c.remove(force=True)
        except Exception as e:          # already being removed, or gone meanwhile
            if "No such container" not in str(e) and "already in progress" not in str(e):
                raise


# ---- images ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Recipe:
    name: str
    what: str
    build: callable
    version: str


BUSYBOX_CGI = """#!/bin/sh
# busybox httpd runs this for / when there is no index.html: answer like the lab agent.
a=${REMOTE_ADDR#\\[}; a=${a%\\]}; a=${a#::ffff:}
printf 'Content-Type: text/plain\\r\\n\\r\\n%s answered %s:%s (busybox httpd)\\n' "$(hostname)" "$a" "$REMOTE_PORT"
"""
DEBIAN_PACKAGES = ["iproute2", "iputils-ping", "tcpdump", "curl", "procps", "netcat-openbsd", "ca-certificates"]
DEBIAN_SUITE = "bookworm"


def _busybox_rootfs(root: str) -> None:
    busybox = shutil.which("busybox")
    out = subprocess.run(["file", "-L", busybox], capture_output=True, text=True).stdout if busybox and \
        shutil.which("file") else ""
    if not busybox or ("dynamically linked" in out):
        raise PrerequisiteError("a static busybox is needed for the busybox image: "
                                "`apt-get install -y busybox-static`")
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "tmp", "proc", "sys", "dev", "root", "www/cgi-bin"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    os.chmod(os.path.join(root, "tmp"), 0o1777)
    shutil.copy2(busybox, os.path.join(root, "bin", "busybox"))
    applets = subprocess.run([busybox, "--list-full"], capture_output=True, text=True, check=True).stdout.split()
    for rel in applets:
        link = os.path.join(root, rel)
        if not os.path.lexists(link):
            os.symlink("/bin/busybox", link)
    with open(os.path.join(root, "etc", "passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
    with open(os.path.join(root, "etc", "group"), "w") as f:
        f.write("root:x:0:\nnogroup:x:65534:\n")
    cgi = os.path.join(root, "www", "cgi-bin", "index.cgi")
    with open(cgi, "w") as f:
        f.write(BUSYBOX_CGI)
    os.chmod(cgi, 0o755)


def _debian_mirror() -> str:
    """The Debian mirror apt already uses (no other network is reachable)."""
    for path in ("/etc/apt/sources.list.d/debian.sources", "/etc/apt/sources.list"):
        try:
            text = open(path).read()
        except OSError:
            continue
        for m in re.finditer(r"^URIs:\s*(\S+)|^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+\S+", text, re.M):
            uri = m.group(1) or m.group(2)
            if uri.rstrip("/").endswith("/debian"):
                return uri
    return "http://deb.debian.org/debian"


def _debian_rootfs(root: str) -> None:
    if shutil.which("debootstrap") is None:
        raise PrerequisiteError("debootstrap not found: install it with `apt-get install -y debootstrap`")
    proc = subprocess.run(["debootstrap", "--variant=minbase", f"--include={','.join(DEBIAN_PACKAGES)}",
                           DEBIAN_SUITE, root, _debian_mirror()], capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
        raise NslabError(f"debootstrap failed: {tail[0]}")
    for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
        d = os.path.join(root, junk)
        for entry in os.listdir(d):
            p = os.path.join(d, entry)
            if os.path.isfile(p):
                os.unlink(p)


IMAGES = {
    "nslab/busybox": Recipe("nslab/busybox", "busybox-static: sh, ip, ping, wget, nc, httpd (2 MB)",
                            _busybox_rootfs, "2"),
    "nslab/debian": Recipe("nslab/debian", f"Debian {DEBIAN_SUITE} minbase + {', '.join(DEBIAN_PACKAGES[:4])} "
                                           f"(debootstrap, about a minute)", _debian_rootfs,
                           f"1 {DEBIAN_SUITE} {' '.join(DEBIAN_PACKAGES)}"),
}


def recipe_id(recipe: Recipe) -> str:
    extra = ""
    if recipe.name == "nslab/busybox" and shutil.which("busybox"):
        with open(shutil.which("busybox"), "rb") as f:
            extra = hashlib.sha256(f.read()).hexdigest()
    return hashlib.sha256(f"{recipe.version} {extra}".encode()).hexdigest()[:12]


def image_status(client, name: str) -> dict:
    import docker
    recipe = IMAGES[name]
    try:
        img = client.images.get(normalize(name))
    except docker.errors.ImageNotFound:
        return dict(image=normalize(name), present=False, current=False, size=0, what=recipe.what)
    return dict(image=normalize(name), present=True, current=img.labels.get(LABEL_RECIPE) == recipe_id(recipe),
                id=img.id,
                size=img.attrs.get("Size", 0), what=recipe.what)


def build(client, name: str, force: bool = False, log=print) -> bool:
    """Build image `name` unless an image from the same recipe is already there (the tag
    and its recipe label are the cache).  Returns True if it was built."""
    recipe = IMAGES[name]
    rid = recipe_id(recipe)
    status = image_status(client, name)
    if status["current"] and not force:
        return False
    tmp = tempfile.mkdtemp(prefix="nslab-image-", dir="/var/tmp")
    root = os.path.join(tmp, "rootfs")
    os.mkdir(root)
    try:
        log(f"building {normalize(name)}: {recipe.what}")
        recipe.build(root)
        tar = os.path.join(tmp, "rootfs.tar")
        subprocess.run(["tar", "--numeric-owner", "--xattrs", "-C", root, "-cf", tar, "."], check=True)
        repo, tag = normalize(name).split(":")
        client.api.import_image(src=tar, repository=repo, tag=tag,
                                changes=[f"LABEL {LABEL_RECIPE}={rid}", 'CMD ["sleep", "infinity"]'])
        if status["present"]:           # the previous build, now untagged
            try:
                client.images.remove(status["id"])
            except Exception:
                pass                        # still used by a container: docker keeps it
    finally:
        _remove_tree(tmp)
    return True


def _remove_tree(path: str) -> None:
    """rm -rf a build directory, after unmounting anything a failed debootstrap left
    mounted inside it (never recurse into a mounted /proc or /sys)."""
    from . import netns
    real = os.path.realpath(path)
    with open("/proc/self/mounts") as f:
        mounts = [line.split()[1].encode().decode("unicode_escape") for line in f]
    for m in sorted((m for m in mounts if m.startswith(real + "/")), key=len, reverse=True):
        try:
            netns.umount(m)
        except OSError:
            pass
    shutil.rmtree(path, ignore_errors=True)


def script_lines(op) -> list[str]:
    """`nslab script` for a container node: what nslab does, as docker and ip commands."""
    import shlex
    spec = op.container
    lab = op.ns[: -len(op.node) - 1]
    name = container_name(lab, op.node)
    argv = ["docker", "run", "-d", "--name", name, "--label", f"{LABEL_LAB}={lab}", "--hostname", op.node,
            "--network", "none"]
    for cap in spec.cap_add:
        argv += ["--cap-add", cap]
    for k, v in spec.env:
        argv += ["-e", f"{k}={v}"]
    argv += [spec.image, *spec.command]
    return [" ".join(shlex.quote(a) for a in argv),
            f"ip netns attach {shlex.quote(op.ns)} \"$(docker inspect -f '{{{{.State.Pid}}}}' {name})\""]
