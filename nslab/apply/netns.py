"""Named network namespaces without forking.

`ip netns add NAME` bind-mounts a namespace file on /run/netns/NAME.  We do the same
from inside this process: the calling thread unshare()s a fresh network namespace,
the namespace is bind-mounted, a netlink socket is opened (sockets stay bound to the
namespace they were created in), and the thread setns()es back.  No child process per
namespace, and the result is indistinguishable from `ip netns add` (so `ip netns exec`,
`ip -n` and tcpdump work on lab namespaces).
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re

from ..errors import NslabError
from ..plan import SLASH_DOT, sysctl_key_problem

NETNS_RUN_DIR = "/run/netns"

CLONE_NEWNET = 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8
MS_BIND = 4096
MS_REC = 16384
MS_SHARED = 1 << 20
MNT_DETACH = 2

# The C library's symbols are already in the process (CPython links it): dlopen(NULL) finds
# them without ctypes.util.find_library, which costs ~6 ms of every nslab start.
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def _check(ret: int, what: str) -> None:
    if ret != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def setns(fd: int, nstype: int = CLONE_NEWNET) -> None:
    _check(_libc.setns(fd, nstype), "setns")


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def mount(src: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(_libc.mount(src.encode(), target.encode(), fstype.encode() if fstype else None, flags,
                       data.encode() if data else None), f"mount {target}")


def umount(target: str) -> None:
    _check(_libc.umount2(target.encode(), MNT_DETACH), f"umount {target}")


def path(name: str) -> str:
    return os.path.join(NETNS_RUN_DIR, name)


def exists(name: str) -> bool:
    return os.path.exists(path(name))


def list_names() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_RUN_DIR))
    except FileNotFoundError:
        return []


def current_inode() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


ROOT_NETNS_INODE = os.stat("/proc/self/ns/net").st_ino


def _prepare_run_dir() -> None:
    """Make /run/netns a shared mount point, exactly as iproute2's `ip netns add` does,
    so namespaces mounted here are visible to `ip netns exec` in other mount namespaces."""
    os.makedirs(NETNS_RUN_DIR, mode=0o755, exist_ok=True)
    try:
        mount("", NETNS_RUN_DIR, "none", MS_SHARED | MS_REC)
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
        mount(NETNS_RUN_DIR, NETNS_RUN_DIR, "none", MS_BIND | MS_REC)
        mount("", NETNS_RUN_DIR, "none", MS_SHARED | MS_REC)


class Entered:
    """Context manager: the calling thread is inside namespace `fd` for the with-block."""

    def __init__(self, fd: int):
        self.fd = fd

    def __enter__(self):
        self._home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        setns(self.fd)
        if current_inode() == ROOT_NETNS_INODE:  # never let lab work land in the root namespace
            setns(self._home)
            raise RuntimeError("refusing to work in the root network namespace")
        return self

    def __exit__(self, *exc):
        try:
            setns(self._home)
        finally:
            os.close(self._home)


def enter(name: str) -> contextlib.AbstractContextManager:
    """Enter the named namespace for the with-block (the thread returns afterwards)."""
    @contextlib.contextmanager
    def _cm():
        fd = os.open(path(name), os.O_RDONLY | os.O_CLOEXEC)
        try:
            with Entered(fd):
                yield fd
        finally:
            os.close(fd)
    return _cm()


_run_dir_ready = False


def ensure_run_dir() -> None:
    """/run/netns ready as a shared mount point (once per process)."""
    global _run_dir_ready
    if not _run_dir_ready:
        _prepare_run_dir()
        _run_dir_ready = True


def create(name: str, on_inside=None):
    """Create namespace `name`; call on_inside() while the thread is inside it (open
    sockets, write namespace sysctls) and return (ns_fd, on_inside's result).

    Raises FileExistsError if the name is taken; never touches the root namespace."""
    ensure_run_dir()
    target = path(name)
    fd0 = os.open(target, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0)
    os.close(fd0)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            unshare(CLONE_NEWNET)
            mount("/proc/thread-self/ns/net", target, "none", MS_BIND)
            ns_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            result = on_inside() if on_inside else None
        finally:
            setns(home)
    except BaseException:
        remove(name)
        raise
    finally:
        os.close(home)
    return ns_fd, result


def place_files(paths: list[str], symlink_to: str | None = None) -> None:
    """Create each path exclusively (O_EXCL semantics): an empty mode-0 file as a mount point,
    as `ip netns add` makes one, or a symlink to `symlink_to`.  Only the first is a new
    inode; every other is a hard link to it (paths in one directory, before anything is
    mounted on them): on this machine's ext4 /run an inode costs ~0.4 ms, a link 0.02 ms.
    FileExistsError (its filename the path) stops at a taken path; those made before it
    stay, for the caller's record to find."""
    first = None
    for p in paths:
        try:
            if first is not None:
                os.link(first, p, follow_symlinks=False)
            elif symlink_to is not None:
                os.symlink(symlink_to, p)
            else:
                os.close(os.open(p, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0))
        except FileExistsError:
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), p) from None
        first = first or p


def adopt(name: str, pid: int) -> int:
    """Name the network namespace of process `pid` (a container's), as `ip netns attach
    NAME PID` does, and return an fd on it.  FileExistsError if the name is taken."""
    ensure_run_dir()
    target = path(name)
    os.close(os.open(target, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))
    try:
        mount(f"/proc/{pid}/ns/net", target, "none", MS_BIND)
        return os.open(target, os.O_RDONLY | os.O_CLOEXEC)
    except BaseException:
        remove(name)
        raise


def remove(name: str) -> bool:
    """Unmount and unlink /run/netns/NAME (the kernel frees the namespace, and every link
    in it, once nothing holds it).  Returns False if it did not exist."""
    target = path(name)
    try:
        umount(target)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOENT):
            raise
    try:
        os.unlink(target)
    except FileNotFoundError:
        return False
    return True


PROC_SUPER_MAGIC = 0x9FA0


def sysctl_path(key: str) -> str:
    """sysctl(8) notation: dots separate levels, '/' stands for a dot inside a name
    (net.ipv4.conf.flannel/1.rp_filter).  ValueError for a key that is not a per-namespace
    sysctl or would leave /proc/sys/net (net.//.kernel.core_pattern)."""
    problem = sysctl_key_problem(key)
    if problem:
        raise ValueError(problem)
    return "/proc/sys/" + key.translate(SLASH_DOT)


_walk_cache: dict | None = None     # path prefix -> directory fd, inside sysctl_walks()

# fsopen(2)/fsconfig(2)/fsmount(2): the same numbers on every architecture (new syscalls)
SYS_FSOPEN, SYS_FSCONFIG, SYS_FSMOUNT = 430, 431, 432
FSCONFIG_CMD_CREATE = 6
FS_CLOEXEC = 1                      # FSOPEN_CLOEXEC, FSMOUNT_CLOEXEC
_libc.syscall.restype = ctypes.c_long
PROC_ROOT_SHARE = 32                # namespaces per private procfs instance

_proc_root: list | None = None      # [fd of a detached procfs mount, namespaces it served]


def _fresh_procfs() -> int | None:
    """A private procfs instance, mounted nowhere (fsmount's detached mount, held by an fd):
    its own dentries, which nobody else can see or plant anything in.  None where the
    kernel cannot (before 5.8 every proc mount shared one superblock; no fsopen before 5.2)."""
    fs = _libc.syscall(SYS_FSOPEN, b"proc", FS_CLOEXEC)
    if fs < 0:
        return None
    try:
        if _libc.syscall(SYS_FSCONFIG, fs, FSCONFIG_CMD_CREATE, None, None, 0) < 0:
            return None
        mnt = _libc.syscall(SYS_FSMOUNT, fs, FS_CLOEXEC, 0)
        return mnt if mnt >= 0 else None
    finally:
        os.close(fs)


def _walk_root() -> tuple[int, tuple]:
    """Where a namespace's sysctl walks start: a directory fd (the caller's to close) and
    the path it stands for.  Why not /proc: every network namespace's /proc/sys/net/ipv4
    and ipv6 directories are dentries under one parent in a superblock, found through one
    hash chain, so each first lookup in a namespace walks the entries of every namespace
    looked up before it (measured: 0.4 ms at 1,000 namespaces, 1.9 ms at 3,000 and 7 ms
    per namespace for two keys).  A private instance per PROC_ROOT_SHARE namespaces keeps
    the chain that short: ~45 us per namespace at any count."""
    global _proc_root
    if _proc_root is None or _proc_root[1] >= PROC_ROOT_SHARE:
        release_walk_root()
        fd = _fresh_procfs()
        _proc_root = [fd, 0]
    _proc_root[1] += 1
    if _proc_root[0] is None:
        return os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), ()
    return os.dup(_proc_root[0]), ("proc",)


def release_walk_root() -> None:
    """Close the private procfs instance (the kernel unmounts it with its last fd)."""
    global _proc_root
    if _proc_root is not None and _proc_root[0] is not None:
        os.close(_proc_root[0])
    _proc_root = None


@contextlib.contextmanager
def sysctl_walks():
    """Several sysctls of one namespace share their directory walk (a router's
    net.ipv4.ip_forward and net.ipv4.fib_multipath_hash_policy: sys/net/ipv4 once),
    starting from a private procfs instance (_walk_root).  Only inside one namespace: the
    cached directories are this namespace's."""
    global _walk_cache
    fd, at = _walk_root()
    outer, _walk_cache = _walk_cache, {at: fd}
    try:
        yield
    finally:
        for fd in _walk_cache.values():
            os.close(fd)
        _walk_cache = outer


def _open_sysctl(key: str, flags: int) -> int:
    """Open a sysctl file walking one level at a time without following symlinks (from
    sysctl_walks' procfs instance, else from /), and check the file is procfs: nothing
    planted on the way can redirect the write."""
    parts = sysctl_path(key).split("/")[1:]
    cache = _walk_cache
    fd, owned, start = None, False, 0
    if cache is not None:
        for i in range(len(parts) - 1, -1, -1):
            if tuple(parts[:i]) in cache:
                fd, start = cache[tuple(parts[:i])], i
                break
    if fd is None:
        fd, owned = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), True
        if cache is not None:
            cache[()], owned = fd, False
    try:
        for i in range(start, len(parts)):
            last = i == len(parts) - 1
            mode = flags if last else os.O_RDONLY | os.O_DIRECTORY
            fd, parent, parent_owned = os.open(parts[i], mode | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd), fd, owned
            owned = True
            if parent_owned:
                os.close(parent)
            if not last and cache is not None:
                cache[tuple(parts[:i + 1])], owned = fd, False
        buf = ctypes.create_string_buffer(256)     # struct statfs; f_type (a long) comes first
        _check(_libc.fstatfs(fd, buf), f"fstatfs {key}")
        if ctypes.c_long.from_buffer(buf).value != PROC_SUPER_MAGIC:
            raise OSError(errno.EXDEV, f"{sysctl_path(key)} is not on procfs")
    except BaseException:
        if owned:
            os.close(fd)
        raise
    return fd


def _host_netns_inodes() -> set[int]:
    """nslab's own namespace and, when visible, init's: never a lab."""
    inodes = {ROOT_NETNS_INODE}
    try:
        inodes.add(os.stat("/proc/1/ns/net").st_ino)
    except OSError:
        pass
    return inodes


class SysctlRefused(NslabError):
    """The kernel refused a sysctl's value (the key exists and is writable): `ns` is set by the
    applier, and located() names the topology's file, line and key when the file gave it."""

    def __init__(self, key: str, value, why: str):
        self.key, self.value, self.why, self.ns = key, str(value), why, None
        super().__init__(f"the kernel refused {self.value!r} for sysctl {key} ({why})")

    def located(self, topo) -> NslabError:
        """A TopologyError at the file's `sysctls:` key (exit 2), or self for one nslab wrote."""
        node = next((n for n in topo.nodes.values() if n.ns == self.ns and self.key in n.sysctls), None)
        if node is None or topo.doc is None:
            return self
        return topo.doc.error(node.path + ("sysctls", self.key),
                              f"the kernel refused {self.value!r} for {self.key} ({self.why})")


def write_sysctl(key: str, value) -> None:
    """Write a per-namespace net.* sysctl of the namespace the calling thread is in (never
    the host's: /proc/sys/net resolves to the opener's namespace, and we refuse the host's)."""
    if current_inode() in _host_netns_inodes():
        raise NslabError(f"refusing to set {key} in the host's network namespace")
    try:
        fd = _open_sysctl(key, os.O_WRONLY)
    except ValueError as e:
        raise NslabError(str(e)) from None
    except FileNotFoundError:
        raise NslabError(f"sysctl {key} does not exist in a lab namespace on this kernel (its module is not "
                         f"loaded, or the interface it names is not there)") from None
    except PermissionError:
        raise NslabError(f"sysctl {key} is read-only inside a network namespace (a host-wide setting); "
                         f"nslab sets only per-namespace ones") from None
    except OSError as e:
        raise NslabError(f"cannot set sysctl {key}: {e.strerror}") from None
    try:
        os.write(fd, str(value).encode())
    except OSError as e:                 # EINVAL: out of range or not a number; ENOENT: no such choice
        why = "not a choice this kernel has" if e.errno == errno.ENOENT else e.strerror
        raise SysctlRefused(key, value, why) from None
    finally:
        os.close(fd)


def read_sysctl(key: str) -> str:
    """A sysctl of the calling thread's namespace.  OSError also for a key outside the
    rules (EINVAL): callers such as trace build keys from interface names seen in a lab,
    which a user may have made with characters nslab does not allow."""
    problem = sysctl_key_problem(key)
    if problem:
        raise OSError(errno.EINVAL, problem)
    fd = _open_sysctl(key, os.O_RDONLY)
    with open(fd, closefd=True) as f:
        return f.read().strip()
