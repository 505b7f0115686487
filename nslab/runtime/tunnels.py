"""Userspace tunnels: flannel's udp proxy, and ipip where the kernel has no ipip module.

Both dataplanes are a TUN device (IFF_TUN|IFF_NO_PI: the kernel hands us bare IP packets)
plus one process per node, run in the node's namespace and supervised by the lab agent:

- udp (flannel's proxy, pkg/backend/udp/proxy_amd64.c): read a packet from flannel0, find
  the node whose lease holds the destination, decrement the TTL and send the packet as
  the payload of one UDP datagram from <node IP>:<port> to <owner IP>:<port>; what arrives
  on the port gets its TTL decremented and is written into flannel0.  No owner: an ICMP
  net-unreachable goes back through flannel0 (never about an ICMP, as flannel).
- ipip (what the kernel's ipip device does, net/ipv4/ipip.c + ip_tunnel.c): read a packet
  from the TUN, prepend an outer IPv4 header (protocol 4) from the tunnel's local address
  to its remote, or, for a `remote any` device such as flannel.ipip, to the gateway of
  the kernel route that sent the packet into the device (`via 30.0.0.23 ... onlink`),
  exactly as ip_tunnel_xmit does.  TTL inherit (outer TTL = inner TTL), TOS 0 with the
  inner ECN bits, DF = the device's pmtudisc or the inner DF.  A raw IPPROTO_IPIP socket
  receives outer+inner; the inner packet is written into the TUN.  The bytes on the wire
  are the kernel's (the IP ID is ours: the kernel's comes from a secret hash anyway).

compile/kernel.py's `fit_to_kernel` decides, at `nslab up`, where the plan's ipip devices
come from: the kernel if its ipip is loaded or built in (apply/kernel.py reads /sys/module:
never loaded by nslab, since loading ipip adds tunl0 to the root namespace), else this file.
Node `tunnels:` are parsed in model/tunnels.py and compiled in compile/tunnels.py.

Run by hand inside a namespace:
    python3 -m nslab.runtime.tunnels udp flannel0 local=10.0.0.21 port=8285 address=10.244.1.0 routes=10.244.3.0/24@30.0.0.23
    python3 -m nslab.runtime.tunnels ipip tunl1 local=10.10.10.2 remote=10.10.20.2 pmtudisc=1
"""
from __future__ import annotations

import ctypes
import os
import random
import re
import signal
import socket
import struct
import sys
import threading
import time
from ipaddress import IPv4Network

from .. import backends
from ..apply.kernel import open_tun
from ..apply.netlink import open_route_socket
from ..packet import checksum
from .agent import enter, wait_go

IPPROTO_IPIP = 4
IP_DF = 0x4000
BUFFER = 65536
SOCKET_BUFFER = 4 << 20
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33     # root may exceed net.core.[rw]mem_max (not namespaced)


# ---- kernel ipip or userspace --------------------------------------------------------------


# ---- node tunnels: `tunnels: {tunl1: {mode: ipip, local: A, remote: B, ip: X, peer: Y}}` ----


# ---- the daemons ------------------------------------------------------------------------------


class Counters(dict):
    def bump(self, key: str, n: int = 1) -> None:
        self[key] = self.get(key, 0) + n


def _ttl_down(buf) -> bool:
    """flannel's decrement_ttl: TTL - 1 with the checksum patched (RFC 1624); False at 0."""
    ttl = buf[8] - 1
    if ttl <= 0:
        return False
    buf[8] = ttl
    check = ((buf[10] << 8) | buf[11]) + 0x100
    check = (check & 0xFFFF) + (check >> 16)
    buf[10], buf[11] = check >> 8, check & 0xFF
    return True


def net_unreachable(offender: bytes, source: bytes) -> bytes | None:
    """flannel's send_net_unreachable: ICMP 3/0 from the TUN address back to the sender,
    carrying the offender's header + 8 bytes; none about ICMPs or later fragments."""
    ihl = (offender[0] & 0x0F) * 4
    if ihl >= 60 or offender[9] == socket.IPPROTO_ICMP or struct.unpack_from("!H", offender, 6)[0] & 0x1FFF:
        return None
    quote = bytes(offender[:ihl + 8])
    icmp = struct.pack("!BBHI", 3, 0, 0, 0) + quote
    icmp = icmp[:2] + struct.pack("!H", checksum(icmp)) + icmp[4:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 0, 0, 8, socket.IPPROTO_ICMP, 0, source,
                     bytes(offender[12:16]))
    return ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:] + icmp


def _routes(text: str) -> list[tuple[int, int, tuple[str, int] | str]]:
    out = []
    for item in filter(None, text.split(",")):
        net, _, ip = item.partition("@")
        n = IPv4Network(net)
        out.append((int(n.network_address), int(n.netmask), ip))
    return out


ROUTES_FILE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\.routes")
ROUTES_POLL = 0.2           # seconds between looks at the learned routes' file


def _learned_routes(path: str) -> list[tuple[int, int, str]]:
    """The routes a machine's agent learned from the subnet leases (flannel_peers): one
    SUBNET@PUBLICIP a line; a line that is not one is skipped (the file is input)."""
    try:
        with open(path) as f:
            lines = f.read(1 << 20).split()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            out += _routes(line)
            socket.inet_aton(line.partition("@")[2])
        except (ValueError, OSError):
            continue
    return out


def run_udp(tun: int, cfg: dict, counters: Counters, threads: list) -> None:
    port = int(cfg["port"])
    static = [(net, mask, (ip, port)) for net, mask, ip in _routes(cfg.get("routes", ""))]
    routes = list(static)
    source = socket.inet_aton(cfg["address"])
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, SOCKET_BUFFER)
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, SOCKET_BUFFER)
    sock.bind((cfg["local"], port))
    owners: dict[bytes, tuple | None] = {}

    def owner(dst: bytes):
        hit = owners.get(dst, False)
        if hit is False:
            d = int.from_bytes(dst, "big")
            hit = next((nh for net, mask, nh in routes if d & mask == net), None)
            if len(owners) > 65536:
                owners.clear()
            owners[dst] = hit
        return hit

    def tun_to_udp():
        buf = bytearray(BUFFER)
        mv = memoryview(buf)
        readv, sendto = os.readv, sock.sendto
        while True:
            n = readv(tun, (buf,))
            if n < 20 or buf[0] >> 4 != 4:
                counters.bump("tun_dropped")
                continue
            nh = owner(bytes(buf[16:20]))
            if nh is None:
                reply = net_unreachable(buf[:n], source)
                if reply:
                    os.write(tun, reply)
                counters.bump("net_unreachable")
                continue
            if not _ttl_down(buf):
                counters.bump("ttl_expired")
                continue
            try:
                sendto(mv[:n], nh)
            except OSError as e:
                counters.bump(f"send_{e.errno}")

    def udp_to_tun():
        buf = bytearray(BUFFER)
        mv = memoryview(buf)
        recv_into, write = sock.recv_into, os.write
        while True:
            n = recv_into(buf)
            if n < 20 or not _ttl_down(buf):
                counters.bump("udp_dropped")
                continue
            write(tun, mv[:n])

    threads += [tun_to_udp, udp_to_tun]
    # a cluster across machines: the peers on other machines come from their subnet leases,
    # which the machine's agent writes to <run-dir>/<routes_file> -- flannel's
    # processSubnetEvents (pkg/backend/udp/udp_network_amd64.go) sends the proxy setRoute /
    # removeRoute over its control socket for each lease added or removed; here the agent is
    # another process, so the routing table is a file it rewrites, read again when it changes
    name, run_dir = cfg.get("routes_file"), cfg.get("_run_dir")
    if name and run_dir and ROUTES_FILE_RE.fullmatch(name):
        path = os.path.join(run_dir, name)

        def learn_routes():
            seen = None
            while True:
                try:
                    st = os.stat(path)
                    now = (st.st_mtime_ns, st.st_ino, st.st_size)
                except OSError:
                    now = None
                if now != seen:
                    seen = now
                    routes[:] = static + [(net, mask, (ip, port)) for net, mask, ip in _learned_routes(path)]
                    owners.clear()
                    counters.bump("routes_loaded")
                time.sleep(ROUTES_POLL)
        threads.append(learn_routes)


class Gateways:
    """The gateway of the route the kernel picks for a destination (`ip route get`), which
    is where ip_tunnel_xmit sends a `remote any` device's packets; cached, and forgotten
    whenever a route changes."""

    RTM_NEWROUTE, RTM_GETROUTE, RTA_DST, RTA_GATEWAY, RTMGRP_IPV4_ROUTE = 24, 26, 1, 5, 0x40

    def __init__(self):
        self.sock = open_route_socket()
        self.events = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
        self.events.bind((0, self.RTMGRP_IPV4_ROUTE))
        self.cache: dict[bytes, str | None] = {}
        self.lock = threading.Lock()
        self.seq = 0

    def watch(self):
        while True:
            self.events.recv(65536)
            self.cache.clear()

    def get(self, dst: bytes) -> str | None:
        hit = self.cache.get(dst, False)
        if hit is not False:
            return hit
        with self.lock:
            self.seq += 1
            rta = struct.pack("=HH4s", 8, self.RTA_DST, dst)
            body = struct.pack("=BBBBBBBBI", socket.AF_INET, 32, 0, 0, 0, 0, 0, 0, 0) + rta
            self.sock.send(struct.pack("=IHHII", 16 + len(body), self.RTM_GETROUTE, 1, self.seq, 0) + body)
            reply = self.sock.recv(65536)
        gw = None
        length, mtype = struct.unpack_from("=IH", reply, 0)
        if mtype == self.RTM_NEWROUTE:
            pos = 16 + 12
            while pos + 4 <= length:
                alen, atype = struct.unpack_from("=HH", reply, pos)
                if alen < 4:
                    break
                if atype == self.RTA_GATEWAY:
                    gw = socket.inet_ntoa(reply[pos + 4:pos + 8])
                pos += (alen + 3) & ~3
        self.cache[dst] = gw
        return gw


def run_ipip(tun: int, cfg: dict, counters: Counters, threads: list) -> None:
    local = cfg["local"]
    local_b = socket.inet_aton(local)
    remote = None if cfg.get("remote", "any") == "any" else cfg["remote"]
    remote_b = socket.inet_aton(remote) if remote else None
    df_always = IP_DF if int(cfg.get("pmtudisc", 1)) else 0
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, IPPROTO_IPIP)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
    sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, SOCKET_BUFFER)
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, SOCKET_BUFFER)
    gateways = Gateways() if remote is None else None
    header = struct.Struct("!BBHHHBBH4s4s")
    ident = [random.randrange(1, 0xFFFF)]

    def tun_to_raw():
        buf = bytearray(BUFFER)
        mv = memoryview(buf)
        pack, sendmsg = header.pack, sock.sendmsg
        while True:
            n = os.readv(tun, (buf,))
            if n < 20 or buf[0] >> 4 != 4:
                counters.bump("tun_dropped")      # ipip carries IPv4 only
                continue
            dst = remote or gateways.get(bytes(buf[16:20]))
            if dst is None:
                counters.bump("no_remote")        # remote any and a route without a gateway
                continue
            ecn = buf[1] & 3
            ident[0] = (ident[0] + 1) & 0xFFFF or 1
            # ip_tunnel_xmit: ttl inherit, tos 0 + inner ECN (CE is sent as ECT(0)), DF from the
            # device (pmtudisc) or the inner packet; checksum and length are the kernel's (HDRINCL).
            hdr = pack(0x45, 2 if ecn == 3 else ecn, 20 + n, ident[0], df_always | ((buf[6] << 8) & IP_DF),
                       buf[8], IPPROTO_IPIP, 0, local_b, socket.inet_aton(dst) if remote is None else remote_b)
            try:
                sendmsg((hdr, mv[:n]), (), 0, (dst, 0))
            except OSError as e:
                counters.bump(f"send_{e.errno}")

    def raw_to_tun():
        buf = bytearray(BUFFER)
        mv = memoryview(buf)
        while True:
            n = sock.recv_into(buf)
            ihl = (buf[0] & 0x0F) * 4
            # ipip_rcv: the tunnel whose local/remote match; an inner packet that is IPv4
            if buf[16:20] != local_b or (remote_b and buf[12:16] != remote_b) or n < ihl + 20 \
                    or buf[ihl] >> 4 != 4:
                counters.bump("raw_ignored")
                continue
            os.write(tun, mv[ihl:n])

    threads.append(tun_to_raw)
    threads.append(raw_to_tun)
    if gateways:
        threads.append(gateways.watch)


# The code of each backend's userspace dataplane, by the `kind` its module's `dataplane` names
# (the process name and `nslab script`'s line are there too).
DAEMONS = {"udp": run_udp, "ipip": run_ipip}


def _prctl(option: int, arg) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(option, arg, 0, 0, 0)


def main(argv: list[str]) -> int:
    """python3 -m nslab.runtime.tunnels [--netns NS] [--ready-fd FD] [--go-fd FD] [--run-dir DIR] KIND DEV key=value ...

    --go-fd: started by the lab agent (nslab/runtime/agent.py), which we die with until it has
    recorded us and written "go"; from then on we outlive it (a restarted agent adopts us)."""
    opts = {}
    while argv and argv[0].startswith("--"):
        opts[argv[0][2:]] = argv[1]
        argv = argv[2:]
    if len(argv) < 2 or argv[0] not in DAEMONS:
        print(main.__doc__, file=sys.stderr)
        return 2
    kind, dev = argv[0], argv[1]
    if "go-fd" in opts:                  # recorded by the agent before we act
        wait_go(int(opts["go-fd"]), opts.get("run-dir"))
    cfg = dict(a.split("=", 1) for a in argv[2:])
    cfg["_run_dir"] = opts.get("run-dir")
    _prctl(15, ctypes.c_char_p(backends.dataplane(kind).process_name))   # PR_SET_NAME: `ss -ulpn` shows flanneld
    problem = enter(opts["netns"]) if "netns" in opts else None
    if problem:
        print(f"refusing to run: {problem}", file=sys.stderr)
        return 1
    counters = Counters()
    threads: list = []
    tun = open_tun(dev)
    DAEMONS[kind](tun, cfg, counters, threads)
    print(f"{time.strftime('%H:%M:%S')} {kind} dataplane on {dev} pid {os.getpid()}: {cfg}", flush=True)
    failed = threading.Event()

    def guarded(fn):
        def run():
            try:
                fn()
            except BaseException as e:   # a dead direction must not go unnoticed: exit, be restarted
                print(f"{fn.__name__} failed: {e!r}", flush=True)
                failed.set()
        return run

    for fn in threads:
        threading.Thread(target=guarded(fn), name=fn.__name__, daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if "ready-fd" in opts:
        os.write(int(opts["ready-fd"]), b"ready\n")
        os.close(int(opts["ready-fd"]))
    run_dir = opts.get("run-dir")
    try:
        while not failed.wait(0.5):
            if run_dir and not os.path.isdir(run_dir):   # the lab is gone: never outlive it
                return 0
        return 1
    finally:
        print(f"{time.strftime('%H:%M:%S')} {kind} on {dev} exiting; counters {dict(counters)}", flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
