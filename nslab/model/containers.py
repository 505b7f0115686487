"""Container nodes in the topology: `image:` with `command:`, `env:` and `cap_add:`, the
capability rules, and the names and labels a lab's containers carry."""
from __future__ import annotations

import re
import shlex

from ..plan import Container

LABEL_LAB, LABEL_NODE, LABEL_STATE = "nslab.lab", "nslab.node", "nslab.state"
IMAGE_RE = re.compile(r"[a-z0-9]+([._/-][a-z0-9]+)*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?")
IMAGE_NAME_MAX = 255      # Docker's reference grammar: the name before :TAG (NameTotalLengthMax); the tag is <= 128
CAP_RE = re.compile(r"[A-Z][A-Z_]*")
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


def parse(p, spec: dict, path: tuple):
    """`image:` with its options `command:` (a string, split like a shell would, or a
    list), `env:` (a mapping) and `cap_add:` (capability names) -> plan.Container."""
    if "image" not in spec:
        key = next(k for k in ("command", "env", "cap_add") if k in spec)
        raise p.err(path + (key,), f"{key} is an option of a container node: add image: NAME")
    image = spec["image"]
    if not isinstance(image, str) or not IMAGE_RE.fullmatch(image):
        raise p.err(path + ("image",), f"{image!r} is not an image name like nslab/busybox or nslab/debian:latest")
    name = image.rpartition(":")[0] if ":" in image.rsplit("/", 1)[-1] else image
    if len(name) > IMAGE_NAME_MAX:
        raise p.err(path + ("image",), f"the image name {name[:40]}... is {len(name)} characters long; Docker takes "
                                       f"at most {IMAGE_NAME_MAX} before the :TAG")
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
        if not isinstance(name, str) or not CAP_RE.fullmatch(name):
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
