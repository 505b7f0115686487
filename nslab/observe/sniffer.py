"""The one packet sniffer of `nslab test` and `nslab trace`: an AF_PACKET socket (ETH_P_ALL)
opened inside each watched namespace (a socket stays in the namespace it was created in),
optionally bound to one interface, all read together from this thread with poll.

Each frame comes with its node, interface, direction (PACKET_OUTGOING or not), link type,
kernel receive timestamp (SO_TIMESTAMPNS) and arrival order.  Which frames are kept is the
caller's: a probe's marker bytes (`frames`), or any function of the frame (`read`).
(`nslab capture` forks tcpdump on purpose: it writes pcap files users open elsewhere.)
"""
from __future__ import annotations

import select
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

from .probe import SO_RCVBUFFORCE, open_in

ETH_P_ALL = 0x0003
SO_TIMESTAMPNS = 35            # == SCM_TIMESTAMPNS (not exported by Python's socket module)
PACKET_OUTGOING = 4

T = TypeVar("T")


@dataclass
class Frame:
    node: str                  # the key the namespace was given under
    iface: str
    outgoing: bool             # sent by this namespace (PACKET_OUTGOING), else received
    hatype: int                # ARPHRD_* of the interface (how to decode the frame)
    data: bytes
    t_ns: int                  # kernel receive time, CLOCK_REALTIME ns
    order: int                 # arrival order on this sniffer (causal inside one namespace)

    @property
    def dir(self) -> str:
        return "out" if self.outgoing else "in"


class Sniffer:
    """Packet sockets in `namespaces` (node -> namespace, or node -> (namespace, interface)
    to see one interface only).  Close it (or use it as a context manager) when done."""

    def __init__(self, namespaces: dict[str, str | tuple[str, str | None]], rcvbuf: int = 1 << 22):
        self.socks: dict[int, tuple[str, socket.socket]] = {}
        self.order = 0
        try:
            for node, where in namespaces.items():
                ns, iface = (where, None) if isinstance(where, str) else where
                s = open_in(ns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
                self.socks[s.fileno()] = (node, s)
                if iface:
                    s.bind((iface, ETH_P_ALL))
                s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
                s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
                s.setblocking(False)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> "Sniffer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        # Closing a packet socket waits for an RCU grace period (synchronize_net): ~10 ms
        # each, one after another; closed from parallel threads they share grace periods.
        socks = [s for _, s in self.socks.values()]
        self.socks = {}
        if len(socks) == 1:
            socks[0].close()
            return
        threads = [threading.Thread(target=s.close) for s in socks]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def drain(self) -> None:
        """Drop whatever was queued (frames from before the probe)."""
        for _, s in self.socks.values():
            while True:
                try:
                    s.recv(65535)
                except BlockingIOError:
                    break

    def read(self, match: Callable[[Frame], T | None], deadline: float,
             done: Callable[[list[T]], bool] | None = None, grace: float = 0.02) -> list[T]:
        """match(frame) for every frame until the monotonic `deadline`, or until
        done(kept) holds plus a `grace` period for copies still in flight (floods, the last
        decapsulation); the non-None results, in arrival order.  What is queued at the end
        is read too."""
        kept: list[T] = []
        if not self.socks:                     # nothing watched: nothing to wait for
            return kept
        grace_until = None
        poller = select.poll()                 # not select(): a big lab has fds above FD_SETSIZE
        for fd in self.socks:
            poller.register(fd, select.POLLIN)
        while True:
            now = time.monotonic()
            end = min(deadline, grace_until) if grace_until else deadline
            if now >= end:
                break
            for fd, _ in poller.poll(max(1, int((end - now) * 1000))):
                self._recv(*self.socks[fd], match, kept)
            if grace_until is None and done is not None and done(kept):
                grace_until = time.monotonic() + grace
        for node, s in list(self.socks.values()):
            self._recv(node, s, match, kept)
        return kept

    def frames(self, marker: bytes, wait: float = 0.02) -> list[Frame]:
        """Every frame carrying `marker` (queued, or arriving within `wait` seconds)."""
        return self.read(lambda f: f if marker in f.data else None, time.monotonic() + wait)

    def _recv(self, node: str, s: socket.socket, match: Callable, kept: list) -> None:
        while True:
            try:
                data, anc, _, addr = s.recvmsg(65535, 64)
            except BlockingIOError:
                return
            except UnicodeDecodeError:       # an interface name that is not UTF-8 ($'\xff'): Python
                continue                     # cannot build the address; the frame is gone, skip it
            self.order += 1
            t_ns = 0
            for level, typ, value in anc:
                if level == socket.SOL_SOCKET and typ == SO_TIMESTAMPNS and len(value) >= 16:
                    sec, nsec = struct.unpack("qq", value[:16])
                    t_ns = sec * 1_000_000_000 + nsec
            ifname, _, pkttype, hatype = addr[:4]
            got = match(Frame(node, ifname, pkttype == PACKET_OUTGOING, hatype, data, t_ns or time.time_ns(),
                              self.order))
            if got is not None:
                kept.append(got)
