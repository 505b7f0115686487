"""Per-link rates for the page: packets and bytes per second on each veth link of a lab.

How it stays cheap: two NETLINK_ROUTE sockets per lab namespace read, opened once while
this thread is inside the namespace (a netlink socket stays in the namespace it was made
in; apply/netns.py).  Each tick one RTM_GETSTATS dump per namespace asks for the counters
only (apply/qdisc.link_stats: the kernel's rtnl_link_stats64, what `ip -s link` prints;
a sixth of the CPU of the RTM_GETLINK dump that carries every attribute of every device).
Names and up/down come from one RTM_GETLINK dump at the first reading, then from the
kernel's link notifications queued on the second socket (what `ip monitor link` reads:
a link set down, its carrier lost, a device renamed), drained each tick.  No process is
started and no setns() is made per tick; nothing in the lab is changed.  A veth's two ends
count the same packets, so each link is read at one end (view.links' "read": a rack's
bridge holds all its ports, a node its pods' ends), and only the links the page draws are
read (a collapsed rack's inner links are not).

Encapsulated traffic, told apart without touching the lab: a cluster node's underlay link
carries its backend's encapsulated packets, and those are exactly the packets its tunnel
device (flannel.<VNI>, flannel.ipip, flannel0) sends and receives: the kernel encapsulates
what flannel.1 transmits and hands flannel.1 what it decapsulated.  So on that link the
encapsulated share is the tunnel device's packet rate, and its bytes plus the backend's
per-packet overhead (backends' `overhead`, the outer headers); the rest is native.  Links
between routers carry the same packets in transit but have no device of their own to read:
they show their total only (the page says so).
"""
from __future__ import annotations

import os
import time

from .. import backends, state
from ..apply import netns, qdisc
from ..apply.netlink import open_route_socket


class Counters:
    """Rates of a lab's links (view.links() entries), read by `tick(links)`."""

    def __init__(self, st: state.LabState | None, overhead: int = 0):
        self.st, self.overhead = st, overhead
        self.ids = state.verified_ids(st, list(st.nodes.values())) if st is not None else {}
        self.socks: dict[str, tuple | None] = {}    # node -> (socket, watch socket) in its namespace
        self.states: dict[str, dict[int, tuple[str, bool]]] = {}    # node -> {ifindex: (name, up)}
        self.seen: dict[str, tuple[float, dict]] = {}   # node -> (time, stats) of its last two reads
        self.before: dict[str, tuple[float, dict]] = {}

    @classmethod
    def for_lab(cls, st, topo):
        over = backends.get(topo.cluster.backend.type).overhead if topo.cluster is not None else 0
        return cls(st, over)

    def _sock(self, node: str):
        if node not in self.socks:
            ns = self.st.nodes.get(node) if self.st is not None else None
            self.socks[node] = None
            if ns in self.ids:
                try:
                    with netns.enter(ns):
                        # the watch first: a change after the dump below is queued on it
                        watch = qdisc.open_link_watch()
                        self.socks[node] = (open_route_socket(), watch)
                except OSError:
                    pass
        return self.socks[node]

    def _states(self, node: str, socks) -> dict[int, tuple[str, bool]]:
        """{ifindex: (name, up)} of the node's devices, kept current by its notifications."""
        sock, watch = socks
        changes = qdisc.link_changes(watch) if node in self.states else None
        if changes is None:                  # first reading, or notifications lost: read them all
            qdisc.link_changes(watch)
            self.states[node] = qdisc.link_states(sock)
        for index, name, up in changes or []:
            if name is None:
                self.states[node].pop(index, None)
            else:
                self.states[node][index] = (name, up)
        return self.states[node]

    def _read(self, nodes: set[str]) -> None:
        for node in nodes:
            if node in self.seen and time.monotonic() - self.seen[node][0] < 0.5:
                continue            # read for another page just now: rates over a useful span
            socks = self._sock(node)
            try:
                if socks is None:
                    stats = {}
                else:
                    names = self._states(node, socks)
                    stats = {names[i][0]: (*st, names[i][1]) for i, st in qdisc.link_stats(socks[0]).items()
                             if i in names}
            except (OSError, qdisc.TcError):
                stats = {}
            if node in self.seen:
                self.before[node] = self.seen[node]
            self.seen[node] = (time.monotonic(), stats)

    def _rate(self, node: str, dev: str) -> tuple[float, float, tuple | None]:
        t1, now = self.seen.get(node, (0, {}))
        t0, then = self.before.get(node, (0, {}))
        a, b = now.get(dev), then.get(dev)
        if a is None or b is None or t1 <= t0:
            return 0.0, 0.0, a
        dt = t1 - t0
        return max(0, a[0] + a[1] - b[0] - b[1]) / dt, max(0, a[2] + a[3] - b[2] - b[3]) / dt, a

    def tick(self, links: list[dict]) -> dict:
        """{edge: [pps, Bps, encap pps, encap Bps, down]} of `links` since their last
        reading (zeros on the first), the seconds the reading took and the namespaces read."""
        t0 = time.monotonic()
        nodes = {l[l["read"]][0] for l in links} | {l["underlay"][0] for l in links if l["underlay"]}
        self._read(nodes)
        rates = {}
        for l in links:
            node, iface = l[l["read"]]
            pps, bps, now = self._rate(node, iface)
            epps = ebps = 0.0
            if l["underlay"]:
                epps, ebps, _ = self._rate(l["underlay"][0], l["underlay"][2])
                ebps += epps * self.overhead
                epps, ebps = min(epps, pps), min(ebps, bps)
            down = now is None or not now[4]         # a veth's carrier is off when its peer is down
            rates[l["edge"]] = [round(pps, 1), round(bps), round(epps, 1), round(ebps), down]
        return dict(rates=rates, took=round(time.monotonic() - t0, 4), namespaces=len(nodes))

    def close(self) -> None:
        for socks in self.socks.values():
            for sock in socks or ():
                sock.close()
        self.socks, self.states = {}, {}


def pid_cpu() -> float:
    """This process's CPU seconds so far (user + system), for the page's own cost."""
    t = os.times()
    return t.user + t.system
