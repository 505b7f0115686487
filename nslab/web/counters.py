"""Per-link rates for the page: packets and bytes per second on each veth link of a lab.

How it stays cheap: one NETLINK_ROUTE socket per lab namespace, opened once while this
thread is inside the namespace (a netlink socket stays in the namespace it was made in;
apply/netns.py), and each tick one RTM_GETLINK dump per socket (apply/qdisc.link_stats:
the kernel's rtnl_link_stats64, what `ip -s link` prints).  No process is started and no
setns() is made per tick; nothing in the lab is changed.

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
    """Rates of one lab's links (view.links()), read by `tick()`."""

    def __init__(self, st: state.LabState, links: list[dict], overhead: int = 0):
        self.links = links
        self.overhead = overhead
        wanted = {l[end][0] for l in links for end in ("a", "b")}
        ids = state.verified_ids(st, dict.fromkeys(st.nodes[n] for n in wanted if n in st.nodes))
        self.socks = {}                     # node -> socket in its namespace
        for node in sorted(wanted):
            ns = st.nodes.get(node)
            if ns not in ids:
                continue
            try:
                with netns.enter(ns):
                    self.socks[node] = open_route_socket()
            except OSError:
                continue
        self.last: dict[str, dict] = {}
        self.last_t = 0.0

    @classmethod
    def for_lab(cls, st, topo, links):
        over = backends.get(topo.cluster.backend.type).overhead if topo.cluster is not None else 0
        return cls(st, links, over)

    def read(self) -> dict[str, dict]:
        out = {}
        for node, sock in self.socks.items():
            try:
                out[node] = qdisc.link_stats(sock)
            except (OSError, qdisc.TcError):
                out[node] = {}
        return out

    def tick(self) -> dict:
        """{edge: [pps, Bps, encap pps, encap Bps, down]} since the last tick (zeros on the
        first), and the seconds the reading took."""
        t0 = time.monotonic()
        now = self.read()
        dt = t0 - self.last_t if self.last_t else 0
        rates = {}
        for l in self.links:
            (na, ia), (nb, ib) = l["a"], l["b"]
            sa, sb = now.get(na, {}).get(ia), now.get(nb, {}).get(ib)
            pa = self.last.get(na, {}).get(ia)
            down = (sa is not None and not sa[4]) or (sb is not None and not sb[4]) or sa is None
            pps = bps = epps = ebps = 0.0
            if dt and sa and pa:
                pps = max(0, (sa[0] + sa[1]) - (pa[0] + pa[1])) / dt
                bps = max(0, (sa[2] + sa[3]) - (pa[2] + pa[3])) / dt
            if dt and l["underlay"]:
                node, _, dev = l["underlay"]
                st, pst = now.get(node, {}).get(dev), self.last.get(node, {}).get(dev)
                if st and pst:
                    epps = max(0, (st[0] + st[1]) - (pst[0] + pst[1])) / dt
                    ebps = max(0, (st[2] + st[3]) - (pst[2] + pst[3])) / dt + epps * self.overhead
                    epps, ebps = min(epps, pps) if pps else epps, min(ebps, bps) if bps else ebps
            rates[l["edge"]] = [round(pps, 1), round(bps), round(epps, 1), round(ebps), bool(down)]
        self.last, self.last_t = now, t0
        return dict(rates=rates, took=round(time.monotonic() - t0, 4), sockets=len(self.socks))

    def close(self) -> None:
        for sock in self.socks.values():
            try:
                sock.close()
            except OSError:
                pass
        self.socks = {}


def pid_cpu() -> float:
    """This process's CPU seconds so far (user + system), for the page's own cost."""
    t = os.times()
    return t.user + t.system
