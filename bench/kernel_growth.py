#!/usr/bin/env python3
"""How the kernel's own cost of a lab's objects grows with the number of network namespaces
already on the machine, without nslab's code on the path (issue 12: what is left of the
super-linear growth of `nslab up` at 10,000 namespaces is here).

For each count N of idle namespaces (anonymous: held by file descriptors, never named, so
nothing is left behind whatever happens; the process's exit frees them all), it times:
- creating one more namespace (unshare),
- a veth pair inside a namespace (one RTM_NEWLINK, both ends there),
- a veth pair whose second end is born in another namespace and whose first end becomes a
  bridge port (what a rack's switch does for each host),
- bringing lo and the host end up and giving it an address (what every host does),
- walking to net.ipv6.conf.all.disable_ipv6 in a fresh namespace through /proc, and through
  a private procfs instance (nslab's netns._walk_root), and what making and unmounting one
  costs (nslab shares one among 32 namespaces); every idle namespace walked /proc once, as
  `ip netns exec NS sysctl` does.

    sudo python3 bench/kernel_growth.py [--counts 0,2000,5000,8000] [--samples 200]
"""
from __future__ import annotations

import argparse
import os
import resource
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from nslab.apply import netns  # noqa: E402
from nslab.apply.applier import ONE_QUEUE  # noqa: E402
from nslab.apply.netlink import (CHANGE, CREATE, IFA_ADDRESS, IFA_LOCAL, IFADDRMSG, IFF_UP, IFLA_IFNAME,  # noqa: E402
                                 IFLA_INFO_DATA, IFLA_INFO_KIND, IFLA_LINKINFO, IFLA_MASTER, IFLA_NET_NS_FD,
                                 NLMSG_ERROR, RT_SCOPE_UNIVERSE, RTM_NEWADDR, RTM_NEWLINK, U32, VETH_INFO_PEER,
                                 attr, ifinfomsg, ip4, message, open_route_socket, str_attr)

HOME = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)


def send(sock: socket.socket, *msgs) -> None:
    sock.send(b"".join(bytes(m) for m in msgs))
    acked = 0
    while acked < len(msgs):
        buf, off = sock.recv(1 << 20), 0
        while off + 16 <= len(buf):
            length, mtype = struct.unpack_from("=IH", buf, off)
            if mtype == NLMSG_ERROR:
                code = struct.unpack_from("=i", buf, off + 16)[0]
                if code:
                    raise OSError(-code, os.strerror(-code))
                acked += 1
            off += (length + 3) & ~3


def namespace() -> tuple[int, socket.socket]:
    netns.unshare(netns.CLONE_NEWNET)
    try:
        return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC), open_route_socket()
    finally:
        netns.setns(HOME)


def veth(name: str, peer: str, index: int = 0, peer_index: int = 0, peer_fd: int | None = None,
         master: int | None = None) -> bytearray:
    """(the kernel takes the peer's index only when the first end's is given too)"""
    peer_attrs = attr(IFLA_IFNAME, str_attr(peer)) + ONE_QUEUE
    if peer_fd is not None:
        peer_attrs += attr(IFLA_NET_NS_FD, U32.pack(peer_fd))
    info = attr(IFLA_INFO_KIND, str_attr("veth")) + attr(IFLA_INFO_DATA,
                                                         attr(VETH_INFO_PEER, ifinfomsg(peer_index) + peer_attrs))
    attrs = [attr(IFLA_IFNAME, str_attr(name)), ONE_QUEUE, attr(IFLA_LINKINFO, info)]
    if master is not None:
        attrs.append(attr(IFLA_MASTER, U32.pack(master)))
    return message(RTM_NEWLINK, CREATE, ifinfomsg(index), *attrs)


def read_sysctl_from(root: int) -> None:
    """Walk to net.ipv6.conf.all.disable_ipv6 from a procfs root (closed), as netns does."""
    fd = root
    for part in ("sys", "net", "ipv6", "conf", "all"):
        fd, parent = os.open(part, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd), fd
        os.close(parent)
    os.close(os.open("disable_ipv6", os.O_RDONLY, dir_fd=fd))
    os.close(fd)


def in_fresh_namespace(fn) -> float:
    """Time fn() inside a new namespace (kept alive by the returned fd's caller)."""
    netns.unshare(netns.CLONE_NEWNET)
    try:
        return timed(fn)
    finally:
        netns.setns(HOME)


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def sample(n: int) -> tuple[dict[str, float], list]:
    """Medians of n of each step, and what to close afterwards."""
    out: dict[str, list[float]] = {}
    keep: list = []
    switch_fd, switch = namespace()
    keep.append((switch_fd, switch))
    send(switch, message(RTM_NEWLINK, CREATE, ifinfomsg(2, IFF_UP, IFF_UP), attr(IFLA_IFNAME, str_attr("br0")),
                         attr(IFLA_LINKINFO, attr(IFLA_INFO_KIND, str_attr("bridge")))))
    for i in range(n):
        t = time.perf_counter()
        fd, sock = namespace()
        out.setdefault("namespace", []).append(time.perf_counter() - t)
        keep.append((fd, sock))
        out.setdefault("veth pair in one namespace", []).append(timed(lambda: send(sock, veth("a0", "a1"))))
        out.setdefault("veth pair, bridge port + host end", []).append(timed(lambda: send(
            switch, veth(f"p{i}", "eth0", index=100 + i, peer_index=10, peer_fd=fd, master=2))))
        out.setdefault("host: lo, eth0 up, address", []).append(timed(lambda: send(
            sock, message(RTM_NEWLINK, CHANGE, ifinfomsg(1, IFF_UP, IFF_UP)),
            message(RTM_NEWLINK, CHANGE, ifinfomsg(10, IFF_UP, IFF_UP)),
            message(RTM_NEWADDR, CREATE, IFADDRMSG.pack(socket.AF_INET, 24, 0, RT_SCOPE_UNIVERSE, 10),
                    attr(IFA_LOCAL, ip4("10.0.0.1")), attr(IFA_ADDRESS, ip4("10.0.0.1"))))))
        if i < 50:        # a fresh namespace each: these stay (their dentries are what grows)
            def via_proc():
                read_sysctl_from(os.open("/proc", os.O_RDONLY | os.O_DIRECTORY))
            out.setdefault("sysctl walk via /proc", []).append(in_fresh_namespace(via_proc))

            private = netns._fresh_procfs()
            out.setdefault("sysctl walk via a private procfs", []).append(
                in_fresh_namespace(lambda: read_sysctl_from(os.dup(private))))
            # its unmount waits for RCU: nslab shares one instance among 32 namespaces
            out.setdefault("private procfs: make + unmount", []).append(
                timed(lambda: os.close(netns._fresh_procfs())) + timed(lambda: os.close(private)))
    return {k: sorted(v)[len(v) // 2] for k, v in out.items()}, keep


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--counts", default="0,2000,5000,8000")
    ap.add_argument("--samples", type=int, default=200)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("kernel_growth.py: run as root (it creates network namespaces)")
    counts = [int(c) for c in args.counts.split(",")]
    resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
    idle: list[int] = []
    rows = []
    try:
        for count in counts:
            while len(idle) < count:
                netns.unshare(netns.CLONE_NEWNET)
                idle.append(os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC))
                # as `ip netns exec NS sysctl ...` does (and nslab did before): its dentries stay
                read_sysctl_from(os.open("/proc", os.O_RDONLY | os.O_DIRECTORY))
                netns.setns(HOME)
            medians, keep = sample(args.samples)
            rows.append((count, medians))
            for fd, sock in keep:
                sock.close()
                os.close(fd)
            print(f"{count} idle namespaces: sampled", file=sys.stderr, flush=True)
    finally:
        for fd in idle:
            os.close(fd)
    print(f"median ms per step, by namespaces already on the machine ({args.samples} samples)")
    print(f"{'':34}" + "".join(f"{count:>9,}" for count, _ in rows))
    for step in rows[0][1]:
        print(f"{step:34}" + "".join(f"{medians[step] * 1e3:9.3f}" for _, medians in rows))


if __name__ == "__main__":
    main()
