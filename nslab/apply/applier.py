"""Execute a plan in the kernel, fast.

Why it is fast:
- Namespaces are created in-process (netns.create), no child per namespace.
- Each namespace gets one NETLINK_ROUTE socket opened from inside it; the socket stays
  bound to that namespace, so no setns() per operation.
- All messages for one namespace and one stage are concatenated into a single send();
  the kernel processes them in order and acknowledges each.  A few sends per namespace
  instead of one round trip per object.
- Interface indexes are chosen by us (requested in RTM_NEWLINK) from one counter for the
  whole lab, so an address or route can name its device in the same batch without reading
  anything back, and no two ends of a lab share an index (`ethtool -S` peer_ifindex and
  `ip link`'s `veth0@ifN` name the other end, as on a real host).
- Both ends of a veth are born in their target namespaces (IFLA_NET_NS_FD on the peer),
  so nothing ever exists in the root namespace, even for an instant.
"""
from __future__ import annotations

import errno
import functools
import os
import socket
import struct
from collections import OrderedDict
from dataclasses import dataclass, field
from ipaddress import IPv4Interface, IPv4Network

from .. import plan as P
from ..compile.script import render_op
from ..errors import ApplyError
from . import iptables, ipvs, netns, nftables
from ..model import limits
from ..model.units import Conditions
from . import qdisc
from .kernel import open_tun, set_tx_checksum
from .netlink import (AF_BRIDGE, CHANGE, CREATE, IFADDRMSG, IFA_ADDRESS, IFA_BROADCAST, IFA_LOCAL, IFF_UP,
                      IFLA_ADDRESS, IFLA_BRPORT_MODE, IFLA_BR_STP_STATE, IFLA_IFNAME, IFLA_INFO_DATA,
                      IFLA_INFO_KIND, IFLA_INFO_SLAVE_DATA, IFLA_INFO_SLAVE_KIND, IFLA_IPTUN_LOCAL,
                      IFLA_IPTUN_PMTUDISC, IFLA_IPTUN_REMOTE, IFLA_IPTUN_TOS, IFLA_IPTUN_TTL, IFLA_LINKINFO,
                      IFLA_MASTER, IFLA_MTU, IFLA_NET_NS_FD, IFLA_VXLAN_GBP, IFLA_VXLAN_GROUP, IFLA_VXLAN_ID,
                      IFLA_VXLAN_LEARNING, IFLA_VXLAN_LINK, IFLA_VXLAN_LOCAL, IFLA_VXLAN_PORT, NDA_DST,
                      NDA_LLADDR, NDMSG, NLMSG_ERROR, NTF_SELF, NUD_PERMANENT, REPLACE, RTA_DST, RTA_GATEWAY,
                      RTA_MULTIPATH, RTA_OIF, RTA_TABLE, RTMSG, RTM_DELADDR, RTM_DELLINK, RTM_DELNEIGH,
                      RTM_DELROUTE, RTM_NEWADDR, RTM_NEWLINK,
                      RTM_NEWNEIGH, RTM_NEWROUTE, RTNEXTHOP, RTNH_F_ONLINK, RTN_UNICAST, RTPROT_BOOT,
                      RT_SCOPE_LINK, RT_SCOPE_UNIVERSE, RT_TABLE_MAIN, SEND_CHUNK, U32, U8, VETH_INFO_PEER,
                      attr, extack, ifinfomsg, ip4, mac, message, open_route_socket, str_attr)


# One TX and one RX queue for each veth end, as veth ends up with anyway: asked for at
# creation, the kernel does not shrink the default (one per possible CPU) afterwards, which
# waits for an RCU grace period per end and direction (synchronize_net in
# netif_set_real_num_*_queues): 300 pairs took 4.2-5.4 s without, 0.85-2.4 s with (loaded
# 2-core machine, `ip -batch`).
IFLA_NUM_TX_QUEUES, IFLA_NUM_RX_QUEUES = 31, 32
ONE_QUEUE = attr(IFLA_NUM_TX_QUEUES, U32.pack(1)) + attr(IFLA_NUM_RX_QUEUES, U32.pack(1))


class Indexes:
    """The next free interface index of a lab: one counter shared by its namespaces, kept
    above every index seen in them (lo's 1, what an opened namespace already holds, TUN
    devices, whose index the kernel picks)."""
    def __init__(self) -> None:
        self.next = 2

    def take(self) -> int:
        self.next += 1
        return self.next - 1

    def seen(self, idx: int) -> None:
        self.next = max(self.next, idx + 1)


@dataclass
class Namespace:
    """A lab namespace as apply holds it: fd, netlink socket, and its interface indexes."""
    name: str
    fd: int
    sock: socket.socket
    ifindex: dict[str, int] = field(default_factory=dict)
    indexes: Indexes = field(default_factory=Indexes)     # the Applier's, shared by all

    def allocate(self, dev: str) -> int:
        idx = self.ifindex[dev] = self.indexes.take()
        return idx

    def holds(self, idx: int, dev: str) -> None:
        """`dev` exists with index `idx` (the kernel chose it): later indexes go above."""
        self.ifindex[dev] = idx
        self.indexes.seen(idx)

    def index(self, dev: str) -> int:
        try:
            return self.ifindex[dev]
        except KeyError:
            raise ApplyError(f"namespace {self.name} has no interface {dev}") from None

    @property
    def is_open(self) -> bool:
        return self.fd >= 0

    def reopen(self, with_socket: bool = True) -> None:
        """Open the handle again (by name: /run/netns/<name>), and the socket unless only
        the handle is wanted (a veth peer's IFLA_NET_NS_FD); indexes are kept."""
        if self.fd < 0:
            self.fd = os.open(netns.path(self.name), os.O_RDONLY | os.O_CLOEXEC)
        if with_socket and self.sock is None:
            with netns.Entered(self.fd):
                self.sock = open_route_socket()

    def close(self):
        if self.fd >= 0:
            if self.sock is not None:
                self.sock.close()
            os.close(self.fd)
            self.sock, self.fd = None, -1


def write_sysctl(op: P.Sysctl) -> None:
    """op's sysctl in the namespace the calling thread is in; a value the kernel refuses says
    which namespace (lab.up names the file's line from it)."""
    try:
        netns.write_sysctl(op.key, op.value)
    except netns.SysctlRefused as e:
        e.ns = op.ns
        raise


class Applier:
    """Applies a plan; `namespaces` holds what it opened (closed by close())."""

    def __init__(self, on_namespace_created=None, start_container=None, max_open: int | None = None):
        self.namespaces: dict[str, Namespace] = {}
        self.indexes = Indexes()           # unique across every namespace this applier opens
        # Open files stay bounded whatever the lab's size (10,000 namespaces would be 20,000
        # descriptors): at most `max_open` namespaces hold their handle and socket, the least
        # recently used are closed and reopened by name.  model/limits.py sizes this bound to
        # the open-files limit (and refuses a lab when too few fit); a smaller max_open: tests.
        self.max_open = max(min(limits.open_namespaces(), max_open or limits.OPEN_NAMESPACES), 4)
        self._open: OrderedDict[str, Namespace] = OrderedDict()
        self._pinned: set[str] = set()     # handles named in messages not yet sent
        self.seq = 0
        self.on_namespace_created = on_namespace_created
        self.start_container = start_container    # Netns op with a container -> its PID (lab.py)

    # ---- namespaces -------------------------------------------------------------------
    @staticmethod
    def namespace_sysctls(plan: P.Plan) -> dict[str, list[P.Sysctl]]:
        """The sysctls each namespace gets as it is created (before any link exists)."""
        early: dict[str, list[P.Sysctl]] = {}
        for op in plan.ops:
            if isinstance(op, P.Sysctl) and op.stage == P.STAGE_NAMESPACE:
                early.setdefault(op.ns, []).append(op)
        return early

    @staticmethod
    def inside(sysctls: list[P.Sysctl]) -> tuple[socket.socket, list]:
        """Run in the namespace the calling thread is in: its NETLINK_ROUTE socket (which
        stays bound to it), the interfaces it holds already (lo, plus fallback tunnels on
        some kernels), and its sysctls written."""
        sock = open_route_socket()
        try:
            existing = socket.if_nameindex()
            with netns.sysctl_walks():
                for op in sysctls:
                    write_sysctl(op)
        except BaseException:
            sock.close()
            raise
        return sock, existing

    def create_namespace(self, name: str, sysctls: list[P.Sysctl]) -> Namespace:
        try:
            fd, (sock, existing) = netns.create(name, lambda: self.inside(sysctls))
        except FileExistsError:
            raise ApplyError(f"network namespace {name} already exists (another lab or `ip netns add` made it); "
                             f"nslab will not touch it") from None
        ns = self.register(name, fd, sock, existing)
        if self.on_namespace_created:
            self.on_namespace_created(name)
        return ns

    def adopt_namespace(self, name: str, pid: int, sysctls: list[P.Sysctl]) -> Namespace:
        """A container's namespace: name it (netns.adopt) and open its socket from inside."""
        try:
            fd = netns.adopt(name, pid)
        except FileExistsError:
            raise ApplyError(f"network namespace {name} already exists (another lab or `ip netns add` made it); "
                             f"nslab will not touch it") from None
        try:
            return self._attach(name, fd, sysctls)
        except BaseException:
            os.close(fd)
            netns.remove(name)
            raise

    def open_namespace(self, name: str) -> Namespace:
        """An existing lab namespace (nslab rewire), with the indexes of what is in it."""
        return self._attach(name, os.open(netns.path(name), os.O_RDONLY | os.O_CLOEXEC), [])

    def _attach(self, name: str, fd: int, sysctls: list[P.Sysctl]) -> Namespace:
        with netns.Entered(fd):
            sock, existing = self.inside(sysctls)
        return self.register(name, fd, sock, existing)

    def register(self, name: str, fd: int, sock: socket.socket, existing: list) -> Namespace:
        """A namespace this applier holds from now on (closed by close())."""
        ns = Namespace(name=name, fd=fd, sock=sock, indexes=self.indexes)
        for idx, dev in existing:
            ns.holds(idx, dev)
        self.namespaces[name] = ns
        self._use(ns)
        return ns

    def _use(self, ns: Namespace, with_socket: bool = True) -> Namespace:
        """`ns` open (reopened if it was closed: its socket too unless with_socket is
        False), most recently used; the least recently used beyond max_open closed, except
        those named in messages not yet sent."""
        ns.reopen(with_socket)
        self._open[ns.name] = ns
        self._open.move_to_end(ns.name)
        while len(self._open) > self.max_open:
            victim = next((n for n in self._open if n not in self._pinned and n != ns.name), None)
            if victim is None:
                break
            self._open.pop(victim).close()
        return ns

    def delete_links(self, ns: Namespace, names: list[str], ignore=()) -> None:
        """Delete devices (a veth takes its peer with it, at once); `ignore`: errnos that
        are no failure (a converge: the device went already)."""
        msgs = []
        for dev in names:
            if dev in ns.ifindex:
                self.seq += 1
                data = message(RTM_DELLINK, CHANGE, ifinfomsg(ns.ifindex.pop(dev)))
                struct.pack_into("=I", data, 8, self.seq)
                msgs.append((self.seq, bytes(data), P.Up(ns.name, dev)))
        if msgs:
            self.send(ns, msgs, ignore)

    # ---- the plan ----------------------------------------------------------------------
    def apply(self, plan: P.Plan) -> None:
        ops = plan.staged()
        early_sysctls = self.namespace_sysctls(plan)
        for op in ops:
            if isinstance(op, P.Netns) and op.container is not None:
                self.adopt_namespace(op.ns, self.start_container(op), early_sysctls.get(op.ns, []))
            elif isinstance(op, P.Netns):
                self.create_namespace(op.ns, early_sysctls.get(op.ns, []))
        stages: dict[int, dict[str, list]] = {}
        for op in ops:
            if op.stage in (P.STAGE_NAMESPACE, P.STAGE_PROCESS):
                continue
            stages.setdefault(op.stage, {}).setdefault(op.ns, []).append(op)
        # Links first in every namespace (a veth is made from one end, both namespaces must
        # exist); every later stage only names devices of its own namespace, so each
        # namespace then runs its remaining stages in one visit: opened once, not per stage.
        links = stages.pop(P.STAGE_LINK, {})
        stitches = [op for ns_ops in links.values() for op in ns_ops if is_stitch(op)]
        for ns_name, ns_ops in links.items():
            ns_ops = [op for op in ns_ops if not is_stitch(op)]
            if ns_ops:
                self.run_batch(self.namespaces[ns_name], ns_ops)
        if stitches:                   # after the bridges they join, before their config
            self.make_stitches(stitches)
        later: dict[str, list] = {}
        for stage in sorted(stages):
            for ns_name, ns_ops in stages[stage].items():
                later.setdefault(ns_name, []).append(ns_ops)
        for ns_name, batches in later.items():
            for ns_ops in batches:
                self.run_batch(self.namespaces[ns_name], ns_ops)

    def make_stitches(self, ops: list) -> None:
        """A stitch end (a VXLAN between machines, compile/placement.py) lives in its node's
        namespace but sends from the machine's own: it is created from this thread's
        namespace (the machine's) with IFLA_NET_NS_FD, as `ip link add NAME netns NODE type
        vxlan ... dev UNDERLAY` does, so its UDP socket and underlay device are the
        machine's and the device is the node's (the kernel's vxlan_newlink opens the socket
        in the link's source namespace).  Nothing is added to the machine's namespace but
        that socket."""
        here = Namespace(name="this machine's namespace", fd=-1, sock=open_route_socket(), indexes=self.indexes)
        try:
            messages = []
            for op in ops:
                ns = self._use(self.namespaces[op.ns], with_socket=False)
                self._pinned.add(ns.name)
                data = self._link(ns, op)
                data += attr(IFLA_NET_NS_FD, U32.pack(ns.fd))
                struct.pack_into("=I", data, 0, len(data))
                self.seq += 1
                struct.pack_into("=I", data, 8, self.seq)
                messages.append((self.seq, bytes(data), op))
            self.send(here, messages)
        finally:
            self._pinned.clear()
            here.sock.close()

    def run_batch(self, ns: Namespace, ops: list) -> None:
        self._use(ns)
        self._pinned.add(ns.name)
        try:
            self._run_batch(ns, ops)
        finally:
            self._pinned.clear()

    def _run_batch(self, ns: Namespace, ops: list) -> None:
        messages: list[tuple[int, bytes, object]] = []
        # every Iptables op of the namespace in one iptables-restore, after its netlink work
        rules = [op.text for op in ops if isinstance(op, P.Iptables)]
        tables = [op.text for op in ops if isinstance(op, P.Nftables)]     # and every Nftables in one nft -f
        sets = [op.text for op in ops if isinstance(op, P.Ipset)]          # one ipset restore, before the rules
        servers = [op.text for op in ops if isinstance(op, P.Ipvs)]        # one ipvsadm-restore
        ops = [op for op in ops if not isinstance(op, (P.Iptables, P.Nftables, P.Ipset, P.Ipvs))]
        if servers:
            # first: it loads ip_vs, whose net.ipv4.vs.* sysctls this batch sets below
            ipvs.apply_servers(ns.name, *servers)
        for op in ops:
            if len(self._pinned) > self.max_open // 2 and messages:
                # a peer's handle is read when the kernel processes the message: send what
                # names the ones open before opening more (a switch with 10,000 ports)
                self.send(ns, messages)
                messages = []
                self._pinned.intersection_update({ns.name})
            if isinstance(op, P.TxChecksum):
                with netns.Entered(ns.fd):
                    set_tx_checksum(op.dev, op.on)
                continue
            if isinstance(op, P.Sysctl):
                with netns.Entered(ns.fd):
                    write_sysctl(op)
                continue
            if isinstance(op, P.Link) and op.kind == "tun":
                # TUN devices come from an ioctl, not netlink, and the kernel picks their
                # index: send what is queued (it may hold indexes we chose), then create it.
                if messages:
                    self.send(ns, messages)
                    messages = []
                self._create_tun(ns, op)
            for data in self.encode(ns, op):
                self.seq += 1
                struct.pack_into("=I", data, 8, self.seq)
                messages.append((self.seq, bytes(data), op))
        if messages:
            self.send(ns, messages)
        if sets:
            ipvs.apply_sets(ns.name, *sets)
        if rules:
            iptables.apply(ns.name, *rules)
        if tables:
            nftables.apply(ns.name, *tables)

    # ---- a converge: undo ops in place ----------------------------------------------------
    # Each inverse is the op's own message with the delete type (the kernel matches a route,
    # address or neighbour by the same attributes it was added with).  Already gone (a
    # converge resumed, a route the kernel dropped with its address) is what was wanted.
    GONE = (errno.ENOENT, errno.ESRCH, errno.EADDRNOTAVAIL, errno.ENODEV)

    def undo(self, ns: Namespace, ops: list) -> None:
        """Delete in namespace `ns` what route, address, neighbour, FDB, qdisc and veth ops
        made (ops on a device `ns` no longer has are skipped: they went with it)."""
        messages = []
        links = [op.name for op in ops if isinstance(op, P.Link)]
        for op in ops:
            if isinstance(op, P.Link) or any(dev not in ns.ifindex for dev in _devs(op)):
                continue
            for data in self.encode_undo(ns, op):
                self.seq += 1
                struct.pack_into("=I", data, 8, self.seq)
                messages.append((self.seq, bytes(data), op))
        self._use(ns)
        if messages:
            self.send(ns, messages, ignore=self.GONE)
        self.delete_links(ns, links, self.GONE)

    def encode_undo(self, ns: Namespace, op) -> list[bytearray]:
        if isinstance(op, P.Qdisc):
            return [qdisc.encode_clear(ns.index(op.dev))]
        kind = {P.Addr: RTM_DELADDR, P.Route: RTM_DELROUTE, P.Neigh: RTM_DELNEIGH, P.Fdb: RTM_DELNEIGH}.get(type(op))
        if kind is None:
            raise ApplyError(f"cannot undo {op!r} in place")
        out = []
        for data in self.encode(ns, op):
            struct.pack_into("=HH", data, 4, kind, CHANGE)
            out.append(data)
        return out

    def send(self, ns: Namespace, messages, ignore=()) -> None:
        pending = {seq: op for seq, _, op in messages}
        chunk = bytearray()
        for _, data, _ in messages:
            if len(chunk) + len(data) > SEND_CHUNK:
                ns.sock.send(chunk)
                chunk = bytearray()
            chunk += data
        if chunk:
            ns.sock.send(chunk)
        first_error = None
        while pending:
            buf = ns.sock.recv(1 << 20)
            offset = 0
            while offset + 16 <= len(buf):
                length, mtype, flags, seq, _pid = struct.unpack_from("=IHHII", buf, offset)
                if mtype == NLMSG_ERROR and seq in pending:
                    (code,) = struct.unpack_from("=i", buf, offset + 16)
                    op = pending.pop(seq)
                    if code != 0 and first_error is None and -code not in ignore:
                        first_error = (op, -code, extack(buf, offset, length, flags))
                offset += (length + 3) & ~3
                if length == 0:
                    break
        if first_error:
            op, err, detail = first_error
            cmd = "; ".join(render_op(op))
            raise ApplyError(f"the kernel refused `{cmd}`: {os.strerror(err)}" + (f" ({detail})" if detail else ""))

    # ---- encoding ------------------------------------------------------------------------
    # Messages are packed with struct (helpers at the end of this file): pyroute2's generic
    # encoder costs about 150 us per message, more than the kernel's own work for a 200-host
    # lab.  tests/apply/test_netlink_encoding.py checks every shape byte for byte against pyroute2.
    def encode(self, ns: Namespace, op) -> list[bytearray]:
        if isinstance(op, P.Link):
            return [self._link(ns, op)]
        if isinstance(op, P.Up):
            return [message(RTM_NEWLINK, CHANGE, ifinfomsg(ns.index(op.dev), IFF_UP, IFF_UP))]
        if isinstance(op, P.Addr):
            ifc = IPv4Interface(op.address)
            local = ifc.ip.packed
            if op.peer:
                peer = op.peer.split("/")[0]
                prefixlen = IPv4Interface(op.peer).network.prefixlen if "/" in op.peer else 32
                attrs = [attr(IFA_LOCAL, local), attr(IFA_ADDRESS, ip4(peer))]
            else:
                prefixlen = ifc.network.prefixlen
                attrs = [attr(IFA_LOCAL, local), attr(IFA_ADDRESS, local)]
                if prefixlen < 31:
                    attrs.append(attr(IFA_BROADCAST, ifc.network.broadcast_address.packed))
            return [message(RTM_NEWADDR, CREATE,
                             IFADDRMSG.pack(socket.AF_INET, prefixlen, 0, RT_SCOPE_UNIVERSE, ns.index(op.dev)),
                             *attrs)]
        if isinstance(op, P.Route):
            return [self._route(ns, op)]
        if isinstance(op, P.Neigh):
            return [message(RTM_NEWNEIGH, REPLACE, NDMSG.pack(socket.AF_INET, ns.index(op.dev), NUD_PERMANENT, 0, 0),
                             attr(NDA_DST, ip4(op.address)), attr(NDA_LLADDR, mac(op.lladdr)))]
        if isinstance(op, P.Fdb):
            return [message(RTM_NEWNEIGH, REPLACE, NDMSG.pack(AF_BRIDGE, ns.index(op.dev), NUD_PERMANENT, NTF_SELF, 0),
                             attr(NDA_LLADDR, mac(op.lladdr)), attr(NDA_DST, ip4(op.dst)))]
        if isinstance(op, P.Qdisc):       # link conditions: in the same batch as the links' config
            return [qdisc.encode_set(ns.index(op.dev), Conditions.from_pairs(op.conditions), op.mtu)]
        if isinstance(op, P.BridgePort):
            if op.master:       # `ip link set dev DEV master BR`: the port's mode stays the default
                return [message(RTM_NEWLINK, CHANGE, ifinfomsg(ns.index(op.dev)),
                                attr(IFLA_MASTER, U32.pack(ns.index(op.master))))]
            return [message(RTM_NEWLINK, CHANGE, ifinfomsg(ns.index(op.dev)),
                             attr(IFLA_LINKINFO, attr(IFLA_INFO_SLAVE_KIND, b"bridge\0")
                                   + attr(IFLA_INFO_SLAVE_DATA, attr(IFLA_BRPORT_MODE, U8.pack(int(op.hairpin))))))]
        raise ApplyError(f"cannot apply {op!r}")

    def _create_tun(self, ns: Namespace, op: P.Link) -> None:
        with netns.Entered(ns.fd):
            try:
                os.close(open_tun(op.name, persist=True))
            except OSError as e:
                raise ApplyError(f"cannot create TUN device {op.name} in {ns.name}: {e.strerror}") from None
            idx = socket.if_nametoindex(op.name)
        ns.holds(idx, op.name)

    def _link(self, ns: Namespace, op: P.Link) -> bytearray:
        if op.kind == "tun":        # already created by _create_tun: set its MTU and bring it up
            return message(RTM_NEWLINK, CHANGE, ifinfomsg(ns.index(op.name), IFF_UP, IFF_UP),
                            attr(IFLA_MTU, U32.pack(op.mtu)))
        attrs = [attr(IFLA_IFNAME, str_attr(op.name)), attr(IFLA_MTU, U32.pack(op.mtu))]
        if op.mac:
            attrs.append(attr(IFLA_ADDRESS, mac(op.mac)))
        if op.master:
            attrs.append(attr(IFLA_MASTER, U32.pack(ns.index(op.master))))
        info = attr(IFLA_INFO_KIND, str_attr(op.kind))
        if op.kind == "veth":
            peer_ns = self.namespaces[op.peer.ns]
            self._pinned.add(peer_ns.name)
            self._use(peer_ns, with_socket=False)       # its handle is all the message names
            attrs.append(ONE_QUEUE)
            peer = (attr(IFLA_IFNAME, str_attr(op.peer.name)) + attr(IFLA_MTU, U32.pack(op.peer.mtu))
                    + attr(IFLA_ADDRESS, mac(op.peer.mac)) + attr(IFLA_NET_NS_FD, U32.pack(peer_ns.fd)) + ONE_QUEUE)
            peer_index = peer_ns.allocate(op.peer.name)
            # The peer is not brought up here: veth_open() answers ENOTCONN until the pair is
            # linked, so the plan has an Up for it in the config stage.
            info += attr(IFLA_INFO_DATA, attr(VETH_INFO_PEER, ifinfomsg(peer_index) + peer))
        elif op.kind == "vxlan":
            opts = dict(op.vxlan)
            data = (attr(IFLA_VXLAN_ID, U32.pack(opts["id"])) + attr(IFLA_VXLAN_LOCAL, ip4(opts["local"]))
                    + attr(IFLA_VXLAN_PORT, struct.pack("!H", opts["port"]))
                    + attr(IFLA_VXLAN_LEARNING, U8.pack(int(opts.get("learning", False)))))
            if opts.get("remote"):         # a stitch: one peer, no learning
                data += attr(IFLA_VXLAN_GROUP, ip4(opts["remote"]))
            if opts.get("dev") and opts.get("underlay"):     # the machine's device (make_stitches)
                data += attr(IFLA_VXLAN_LINK, U32.pack(socket.if_nametoindex(opts["dev"])))
            elif opts.get("dev"):
                data += attr(IFLA_VXLAN_LINK, U32.pack(ns.index(opts["dev"])))
            if opts.get("gbp"):
                data += attr(IFLA_VXLAN_GBP, b"")
            info += attr(IFLA_INFO_DATA, data)
        elif op.kind == "ipip":
            # The attributes flannel's netlink library sends: local, remote if any, pmtudisc,
            # ttl 0 (inherit), tos 0.
            opts = dict(op.ipip)
            data = attr(IFLA_IPTUN_LOCAL, ip4(opts["local"]))
            if opts.get("remote"):
                data += attr(IFLA_IPTUN_REMOTE, ip4(opts["remote"]))
            data += (attr(IFLA_IPTUN_PMTUDISC, U8.pack(int(opts.get("pmtudisc", True))))
                     + attr(IFLA_IPTUN_TTL, U8.pack(0)) + attr(IFLA_IPTUN_TOS, U8.pack(0)))
            info += attr(IFLA_INFO_DATA, data)
        elif op.kind == "bridge":
            info += attr(IFLA_INFO_DATA, attr(IFLA_BR_STP_STATE, U32.pack(0)))
        attrs.append(attr(IFLA_LINKINFO, info))
        return message(RTM_NEWLINK, CREATE, ifinfomsg(ns.allocate(op.name), IFF_UP if op.up else 0, IFF_UP), *attrs)

    def _route(self, ns: Namespace, op: P.Route) -> bytearray:
        dst, prefixlen = _network(op.dst)
        attrs = [attr(RTA_TABLE, U32.pack(RT_TABLE_MAIN))]
        if prefixlen:
            attrs.append(attr(RTA_DST, dst))
        flags = RTNH_F_ONLINK if op.onlink else 0
        if len(op.nexthops) == 1:
            hop = op.nexthops[0]
            attrs.append(attr(RTA_OIF, U32.pack(ns.index(hop.dev))))
            if hop.via:
                attrs.append(attr(RTA_GATEWAY, ip4(hop.via)))
            scope = RT_SCOPE_UNIVERSE if hop.via or op.scope == "global" else RT_SCOPE_LINK
            rtm_flags = flags
        else:
            hops = b""
            for h in op.nexthops:
                gw = attr(RTA_GATEWAY, ip4(h.via)) if h.via else b""
                hops += RTNEXTHOP.pack(RTNEXTHOP.size + len(gw), flags, 0, ns.index(h.dev)) + gw
            attrs.append(attr(RTA_MULTIPATH, hops))
            scope, rtm_flags = RT_SCOPE_UNIVERSE, 0
        return message(RTM_NEWROUTE, CREATE,
                        RTMSG.pack(socket.AF_INET, prefixlen, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, scope,
                                    RTN_UNICAST, rtm_flags),
                        *attrs)

    def close(self):
        for ns in self.namespaces.values():
            ns.close()
        self.namespaces.clear()
        self._open.clear()
        netns.release_walk_root()


def is_stitch(op) -> bool:
    """A VXLAN link op that a machine's agent makes from the machine's namespace."""
    return isinstance(op, P.Link) and op.kind == "vxlan" and bool(dict(op.vxlan).get("underlay"))


def _devs(op) -> list[str]:
    """The devices an op names (they must exist for its message to be encoded)."""
    if isinstance(op, P.Route):
        return [h.dev for h in op.nexthops]
    return [op.dev] if hasattr(op, "dev") else []


@functools.lru_cache(maxsize=8192)
def _network(cidr: str) -> tuple[bytes, int]:
    """(network address packed, prefix length): a fabric's routers all route to the same
    few thousand subnets, parsed once (IPv4Network costs ~6 us; 97,000 routes at 10,000)."""
    net = IPv4Network(cidr)
    return net.network_address.packed, net.prefixlen


# ---- netlink wire format ------------------------------------------------------------------


