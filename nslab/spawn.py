"""How nslab starts a process of its own: never steered by the caller's directory or environment.

nslab runs as root, often from a user's directory (`cd ~/labs && sudo nslab up lab.yaml`)
and sometimes with a user's environment (`sudo -E`).  Whatever it starts itself — the lab
agent, its warden, the userspace dataplanes, and system tools such as ip, tcpdump,
iptables-save, nsenter, dot — must run nslab's code and the system's tools, not something
a directory or a variable put in their way:

- Python children run `sys.executable -I`: isolated, so no PYTHONPATH/PYTHONSTARTUP/
  PYTHONHOME, no user site, and no working directory on sys.path (`-m` would put the
  caller's directory first, where a folder `nslab/` would be imported as root).  They
  import the same nslab package this process runs (a checkout under test runs its own
  code): its parent directory, ROOT, derived from this file, never from cwd or the
  environment, goes first on sys.path before the module runs as `__main__`.
- Every child runs in "/" with env() only: a fixed system PATH, a C.UTF-8 locale and the
  few NSLAB_* variables a child reads (the caller passes those).
- Tools are run by absolute path, looked up in the caller's PATH but only in directories
  nobody else can write to (tool()).
User commands (`nslab exec`, `shell`, `cli`) are the user's own: they keep the user's
environment and directory; only nslab's wrappers around them (ip, nsenter) come from here.
"""
from __future__ import annotations

import os
import re
import stat
import sys

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"   # sudo's secure_path
CWD = "/"
# The directory that holds the running nslab package (nslab/spawn.py -> up two).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def env(**extra: str) -> dict[str, str]:
    """The whole environment of a child nslab starts: nothing of the caller's but what is named."""
    return {"PATH": PATH, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", **extra}


def python(module: str, *args: str) -> list[str]:
    """argv that runs `module` as `python -m module args` would, but isolated and from ROOT
    (run it with cwd=CWD and env=env(...))."""
    code = (f"import sys; sys.path.insert(0, {ROOT!r}); import runpy; "
            f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)")
    return [sys.executable, "-I", "-c", code, *args]


# python()'s code, whatever ROOT was (an nslab moved or upgraded since the lab came up)
_CODE = re.compile(rb"import sys; sys\.path\.insert\(0, .+\); import runpy; "
                   rb"runpy\.run_module\('(nslab\.runtime\.\w+)', run_name='__main__', alter_sys=True\)")


def runtime_module(argv: list[bytes]) -> str | None:
    """The nslab.runtime module a process runs, from its /proc/PID/cmdline words, if nslab
    started it: python() (`-I -c CODE`), or `-m nslab.runtime.X` as nslab did before; else None."""
    for flag, arg in zip(argv[1:], argv[2:]):
        if flag == b"-m" and arg.startswith(b"nslab.runtime."):
            return arg.decode(errors="replace")
        if flag == b"-c":
            m = _CODE.fullmatch(arg)
            return m.group(1).decode() if m else None
    return None


def tool(name: str) -> str | None:
    """The absolute path of system command `name`, from the caller's PATH (so that a PATH
    without it reads as "not installed") but only from a directory that nobody else can
    write to, holding a file nobody else can write: a relative entry (".", ""), a user's
    ~/bin under `su` or `sudo -E`, or /tmp never supply a command nslab runs as root.
    None if there is no such command.  The name is kept (not the symlink's target):
    multi-call binaries (iptables-save -> xtables-legacy-multi) go by it."""
    for d in os.environ.get("PATH", PATH).split(":"):
        path = os.path.join(d, name)
        if os.path.isabs(d) and os.path.isfile(path) and os.access(path, os.X_OK) and \
                safe(d) and safe(os.path.realpath(path)):
            return os.path.normpath(path)
    return None


def safe(path: str) -> bool:
    """path, its target and every directory above them belong to root (or to us) and only
    their owner can change them (an ancestor may be a sticky /tmp: nobody can rename our
    entries there; the path itself may not)."""
    me = os.geteuid()
    path = os.path.normpath(path)
    parts = path.split("/")[1:]
    for i in range(len(parts) + 1):
        prefix = "/" + "/".join(parts[:i])
        try:
            st = os.lstat(prefix)
        except OSError:
            return False
        if st.st_uid not in (0, me):
            return False
        if stat.S_ISLNK(st.st_mode):
            if not safe(os.path.realpath(prefix)):
                return False
            continue
        last = i == len(parts)
        if st.st_mode & 0o022 and (last or not st.st_mode & stat.S_ISVTX):
            return False
    return True


# The Debian package of each command nslab runs (a missing one is named with its package).
PACKAGES = {"ip": "iproute2", "bridge": "iproute2", "ss": "iproute2", "tcpdump": "tcpdump",
            "ping": "iputils-ping", "iperf3": "iperf3", "iptables": "iptables", "iptables-restore": "iptables",
            "iptables-save": "iptables", "nft": "nftables", "nsenter": "util-linux", "ethtool": "ethtool",
            "dot": "graphviz", "ipvsadm": "ipvsadm", "ipvsadm-restore": "ipvsadm", "ipset": "ipset",
            "modprobe": "kmod",
            "etcd": "etcd-server", "etcdctl": "etcd-client"}


def need(name: str) -> str:
    """tool(name), or a one-sentence error (exit 3) naming its package when it is not installed."""
    path = tool(name)
    if path is None:
        from .errors import PrerequisiteError   # lazy: this module imports nothing of nslab's
        raise PrerequisiteError(f"{name} not found on PATH: install it with "
                                f"`apt-get install -y {PACKAGES.get(name, name)}`")
    return path
