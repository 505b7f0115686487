"""What this kernel offers, read without changing anything: the ipip module's state (for
compile.kernel.fit_to_kernel), TUN devices, and a device's tx checksumming (ethtool)."""
from __future__ import annotations

import ctypes
import fcntl
import os
import re
import socket
import struct
import subprocess

from .. import spawn
from ..errors import ApplyError
from .qdisc import KernelFeatureError

TUNSETIFF, TUNSETPERSIST = 0x400454CA, 0x400454CB
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000


def open_tun(name: str, persist: bool = False) -> int:
    """Open (or create) TUN device `name` in the calling thread's namespace; return its fd.
    persist: the device outlives the fd (TUNSETPERSIST), so a restarted daemon finds it."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TUN | IFF_NO_PI))
        if persist:
            fcntl.ioctl(fd, TUNSETPERSIST, 1)
    except OSError:
        os.close(fd)
        raise
    return fd

# Where the probe looks (tests point them elsewhere).  It only reads these: creating an ipip
# device, even in a throwaway namespace, or `modprobe ipip` would load the module, and
# loading ipip adds tunl0 to the ROOT namespace, which nslab never changes.
SYS_MODULE = "/sys/module"
LIB_MODULES = "/lib/modules"


def module_state(module: str) -> str:
    """'loaded' (loaded or built in: usable as it is), 'unloaded' (a module in this kernel's
    tree that nobody loaded: modprobe would make it usable) or 'absent'.  Reads /sys/module
    and modules.builtin / modules.dep only; never loads."""
    if os.path.isdir(os.path.join(SYS_MODULE, module)):
        return "loaded"
    tree = os.path.join(LIB_MODULES, os.uname().release)
    pattern = re.escape(module) + r"\.ko(\.\w+)?"
    for name, state in (("modules.builtin", "loaded"), ("modules.dep", "unloaded")):
        try:
            with open(os.path.join(tree, name), encoding="utf-8", errors="replace") as f:
                # `kernel/net/ipv4/ipip.ko[.xz|.zst|.gz][: deps]`
                if any(re.fullmatch(pattern, line.split(":", 1)[0].strip().rsplit("/", 1)[-1]) for line in f):
                    return state
        except OSError:
            pass
    return "absent"


def ipip_state() -> str:
    """module_state of ipip (what compile.kernel.fit_to_kernel is told)."""
    return module_state("ipip")


def require_ip_vs() -> None:
    """kube-proxy's ipvs mode needs the kernel's ip_vs (IPVS) and dummy (kube-ipvs0)
    modules: loaded, built in, or in this kernel's module tree (the first ipvsadm-restore
    and the dummy device load them, as kube-proxy's own calls do; loading adds nothing to
    the root namespace).  Without them (this project's CI kernel) it is refused here,
    before anything exists (KernelFeatureError)."""
    for module, what in (("ip_vs", "ip_vs module"), ("dummy", "dummy device module (kube-ipvs0)")):
        if module_state(module) == "absent":
            raise KernelFeatureError(f"kube-proxy's ipvs mode needs the kernel's {what}, which this kernel "
                                     f"({os.uname().release}) does not have: use --proxy-mode iptables or "
                                     f"nftables here, or a kernel with ip_vs")


def load_dummy_module() -> None:
    """kube-ipvs0 is a dummy device.  Creating one autoloads the dummy module, whose default
    (numdummies=1) adds dummy0 to the ROOT namespace, which nslab never changes; so where the
    module is in this kernel's tree but not loaded, load it first with numdummies=0 (it
    creates nothing), as `modprobe dummy numdummies=0`."""
    if module_state("dummy") != "unloaded":
        return
    proc = subprocess.run([spawn.need("modprobe"), "dummy", "numdummies=0"], capture_output=True, text=True,
                          timeout=60, cwd=spawn.CWD, env=spawn.env())
    if proc.returncode != 0:
        raise KernelFeatureError(f"cannot load the kernel's dummy module for kube-ipvs0 (modprobe dummy "
                                 f"numdummies=0: {' '.join(proc.stderr.split()) or 'no message'})")


def ipip_module_available() -> bool:
    """Whether the kernel's ipip can be used without loading anything (loaded or built in):
    what `nslab up` uses, and what the kernel_ipip tests need."""
    return ipip_state() == "loaded"


SIOCETHTOOL, ETHTOOL_STXCSUM = 0x8946, 0x17


def set_tx_checksum(dev: str, on: bool) -> None:
    """ethtool's ETHTOOL_STXCSUM on `dev` in the calling thread's namespace.  Turning it off
    also makes the kernel drop TSO (netdev_fix_features), so GSO packets are segmented in
    software before the device."""
    value = ctypes.create_string_buffer(struct.pack("=II", ETHTOOL_STXCSUM, int(on)))
    ifreq = struct.pack("@16sP16x", dev.encode(), ctypes.addressof(value))   # struct ifreq: name, ifr_data
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        try:
            fcntl.ioctl(s.fileno(), SIOCETHTOOL, ifreq)
        except OSError as e:
            raise ApplyError(f"cannot set tx checksumming {'on' if on else 'off'} on {dev}: {e.strerror}") from None
