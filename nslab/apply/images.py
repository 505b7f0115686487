"""The images the shipped topologies use, built without a registry: `nslab images build`
makes them from what is on this machine (busybox-static) or from the Debian mirror apt
already uses (debootstrap), and imports them with `docker import`."""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile

from ..errors import NslabError, PrerequisiteError
from ..model.containers import normalize
from . import netns
from .. import spawn
from ..plan import Frozen, frozen

LABEL_RECIPE = "nslab.recipe"


@frozen
class Recipe(Frozen):
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


def _run(argv: list, **kw) -> subprocess.CompletedProcess:
    """A system tool run as root: never from the caller's directory or with their environment
    (a proxy setting aside: debootstrap downloads)."""
    proxy = {k: v for k, v in os.environ.items() if k.lower() in ("http_proxy", "https_proxy", "no_proxy")}
    return subprocess.run(argv, cwd=spawn.CWD, env=spawn.env(**proxy), **kw)


def _busybox_rootfs(root: str) -> None:
    busybox, file = spawn.tool("busybox"), spawn.tool("file")
    out = _run([file, "-L", busybox], capture_output=True, text=True).stdout if busybox and file else ""
    if not busybox or ("dynamically linked" in out):
        raise PrerequisiteError("a static busybox is needed for the busybox image: "
                                "`apt-get install -y busybox-static`")
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "tmp", "proc", "sys", "dev", "root", "www/cgi-bin"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    os.chmod(os.path.join(root, "tmp"), 0o1777)
    shutil.copy2(busybox, os.path.join(root, "bin", "busybox"))
    applets = _run([busybox, "--list-full"], capture_output=True, text=True, check=True).stdout.split()
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


def _debian_rootfs(root: str, packages: list[str] = DEBIAN_PACKAGES) -> None:
    debootstrap = spawn.tool("debootstrap")
    if debootstrap is None:
        raise PrerequisiteError("debootstrap not found: install it with `apt-get install -y debootstrap`")
    proc = _run([debootstrap, "--variant=minbase", f"--include={','.join(packages)}",
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

# A stand-in machine of `nslab sandbox` (nslab/sandbox.py): what nslab runs inside a machine
# (python3; nslab itself and its Python packages are bind-mounted from the host, read-only).
MACHINE_PACKAGES = DEBIAN_PACKAGES + ["python3", "iptables", "nftables", "ethtool", "kmod"]


def _machine_rootfs(root: str) -> None:
    _debian_rootfs(root, MACHINE_PACKAGES)


IMAGES = {
    "nslab/busybox": Recipe("nslab/busybox", "busybox-static: sh, ip, ping, wget, nc, httpd (2 MB)",
                            _busybox_rootfs, "2"),
    "nslab/debian": Recipe("nslab/debian", f"Debian {DEBIAN_SUITE} minbase + {', '.join(DEBIAN_PACKAGES[:4])} "
                                           f"(debootstrap, about a minute)", _debian_rootfs,
                           f"1 {DEBIAN_SUITE} {' '.join(DEBIAN_PACKAGES)}"),
    "nslab/machine": Recipe("nslab/machine", f"Debian {DEBIAN_SUITE} minbase + python3, iproute2, iptables, "
                                             f"nftables: a stand-in machine of `nslab sandbox` (debootstrap)",
                            _machine_rootfs, f"1 {DEBIAN_SUITE} {' '.join(MACHINE_PACKAGES)}"),
}


def recipe_id(recipe: Recipe) -> str:
    extra = ""
    if recipe.name == "nslab/busybox" and spawn.tool("busybox"):
        with open(spawn.tool("busybox"), "rb") as f:
            extra = hashlib.sha256(f.read()).hexdigest()
    return hashlib.sha256(f"{recipe.version} {extra}".encode()).hexdigest()[:12]


def image_status(client, name: str) -> dict:
    import docker  # lazy: start-up
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
        _run([spawn.need("tar"), "--numeric-owner", "--xattrs", "-C", root, "-cf", tar, "."], check=True)
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
    real = os.path.realpath(path)
    with open("/proc/self/mounts") as f:
        mounts = [line.split()[1].encode().decode("unicode_escape") for line in f]
    for m in sorted((m for m in mounts if m.startswith(real + "/")), key=len, reverse=True):
        try:
            netns.umount(m)
        except OSError:
            pass
    shutil.rmtree(path, ignore_errors=True)
