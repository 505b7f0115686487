"""Link conditions in the kernel: root qdiscs encoded as rtnetlink messages, applied in
batches, read back and removed.

Which qdisc:
- rate alone (with burst/limit): tbf.  Built into this machine's kernel and every stock one.
- any of delay, jitter, loss: one netem, carrying the rate too (netem's own `rate`, as
  `containerlab tools netem` does) -- one qdisc per link end, read back in one piece.  netem
  has no token bucket, so `burst` with netem is refused by units.Conditions.check().

Messages are what `tc qdisc replace dev DEV root ...` of iproute2 6.1 sends, byte for byte
(tests/test_tc_encoding.py holds them against tc's own bytes, captured with strace), except
that tbf's 1 KB rate table (TCA_TBF_RTAB) is left out: the kernel reads it only for a
ratespec of linklayer "unaware", and ours says ethernet, as tc's does.

The wire format (struct, no pyroute2) is netlink.py's, shared with the applier.
"""
from __future__ import annotations

import errno
import gzip
import itertools
import os
import re
import socket
import struct
from dataclasses import replace

from .. import plan as P
from ..plan import Frozen, frozen
from ..errors import NslabError
from ..model.units import (ETH_HLEN, NETEM_DEFAULT_LIMIT, TBF_DEFAULT_LATENCY_US, TBF_MIN_BURST, TICKS_PER_USEC,
                           U32_MAX, Conditions, ConditionsError, effective, format_size)
from . import netns
from .netlink import (IFINFOMSG, IFLA_IFNAME, IFLA_MTU, NLMSG_DONE, NLMSG_ERROR, NLM_F_ACK, NLM_F_DUMP,
                      NLM_F_REQUEST, NLMSGHDR, RTATTR, REPLACE, RTM_DELLINK, RTM_DELQDISC, RTM_GETLINK, RTM_GETQDISC,
                      RTM_NEWLINK, RTM_NEWQDISC, SEND_CHUNK, TCMSG, U32, attr, attrs, extack, ifinfomsg, message,
                      open_route_socket)
from .netlink import messages as replies

# ---- qdisc constants (linux/pkt_sched.h); the wire format is netlink.py's ---------------------
TC_H_ROOT = 0xFFFFFFFF
TCA_KIND, TCA_OPTIONS = 1, 2
TCA_TBF_PARMS, TCA_TBF_RATE64, TCA_TBF_BURST = 1, 4, 6
TCA_NETEM_RATE, TCA_NETEM_RATE64, TCA_NETEM_LATENCY64, TCA_NETEM_JITTER64 = 6, 8, 10, 11
TC_LINKLAYER_ETHERNET = 1
DELETE = NLM_F_REQUEST | NLM_F_ACK
DUMP = NLM_F_REQUEST | NLM_F_DUMP

_RATESPEC = struct.Struct("=BBHhHI")    # cell_log, linklayer, overhead, cell_align, mpu, rate
_TBF_QOPT = struct.Struct("=12s12sIII")  # rate, peakrate, limit, buffer, mtu
_NETEM_QOPT = struct.Struct("=IIIIII")  # latency, limit, loss, gap, duplicate, jitter
_NETEM_RATE = struct.Struct("=IiIi")    # rate, packet_overhead, cell_size, cell_overhead
_U64 = struct.Struct("=Q")
_S64 = struct.Struct("=q")


class TcError(NslabError):
    """The kernel refused a qdisc change (names the device and what was asked)."""


class KernelFeatureError(NslabError):
    """The kernel lacks what the lab needs (a qdisc its conditions name, kube-proxy's ip_vs):
    one sentence, nothing changed."""

    exit_code = 2


# ---- the probe: can this kernel do netem? ------------------------------------------------------
SYS_MODULE = "/sys/module"
LIB_MODULES = "/lib/modules"
PROC_CONFIG = "/proc/config.gz"
MODULES_DISABLED = "/proc/sys/kernel/modules_disabled"


def netem_state(sys_module: str = SYS_MODULE, lib_modules: str = LIB_MODULES, config: str = PROC_CONFIG,
                modules_disabled: str = MODULES_DISABLED, release: str | None = None) -> tuple[str, str]:
    """(state, why) -- state 'loaded' (loaded or built in), 'unloaded' (a module the kernel
    loads on first use, as it does for `tc`), 'absent' or 'unknown' (nothing to read).
    Reads files only (as ipip_state does for ipip); never loads anything."""
    release = release or os.uname().release
    if os.path.isdir(os.path.join(sys_module, "sch_netem")):
        return "loaded", "sch_netem is loaded"
    tree = os.path.join(lib_modules, release)
    listed = {}
    for name in ("modules.builtin", "modules.dep"):
        try:
            with open(os.path.join(tree, name), encoding="utf-8", errors="replace") as f:
                listed[name] = any(re.fullmatch(r"sch_netem\.ko(\.\w+)?",
                                                line.split(":", 1)[0].strip().rsplit("/", 1)[-1]) for line in f)
        except OSError:
            pass
    setting = None
    try:
        with gzip.open(config, "rt", encoding="utf-8", errors="replace") as f:
            setting = "n"
            for line in f:
                m = re.fullmatch(r"CONFIG_NET_SCH_NETEM=(\w)\s*", line)
                if m:
                    setting = m.group(1)
                    break
    except (OSError, EOFError, ValueError):
        pass
    if listed.get("modules.builtin") or setting == "y":
        return "loaded", "netem is built into the kernel"
    if listed.get("modules.dep") or setting == "m":
        try:
            with open(modules_disabled) as f:
                if f.read().strip() == "1":
                    return "absent", "sch_netem is a module that is not loaded and module loading is disabled"
        except OSError:
            pass
        return "unloaded", "sch_netem is a module the kernel loads on first use"
    if setting == "n":
        return "absent", "CONFIG_NET_SCH_NETEM is not set in /proc/config.gz"
    if listed:
        return "absent", f"sch_netem is neither built in nor a module in {tree}"
    return "unknown", f"neither {config} nor {tree}/modules.builtin can be read"


def netem_available(**paths) -> bool:
    return netem_state(**paths)[0] in ("loaded", "unloaded")


def require(conditions, hint: str = "", **paths) -> None:
    """Refuse, before anything is sent, conditions this kernel cannot do (netem's part)."""
    wanted = [c for c in conditions if c is not None and c.needs_netem]
    if not wanted:
        return
    state, why = netem_state(**paths)
    if state in ("loaded", "unloaded"):
        return
    raise KernelFeatureError(f"this kernel ({os.uname().release}) has no netem qdisc ({why}), which delay, jitter "
                             f"and loss need; rate alone works (tbf), and a stock Debian kernel has netem"
                             + (f"; {hint}" if hint else ""))


WITHOUT_NETEM_HINT = "--without-netem goes on with the rates alone"


def fit_plan(plan, without_netem: bool = False, **paths) -> None:
    """A plan's Qdisc ops on this kernel: unchanged where it has netem; else refused
    (KernelFeatureError, before anything exists), or with without_netem their delay, jitter
    and loss left out (rates kept, a notice for `nslab up`)."""
    ops = [(i, op, Conditions.from_pairs(op.conditions)) for i, op in enumerate(plan.ops) if isinstance(op, P.Qdisc)]
    netem = [(i, op, c) for i, op, c in ops if c.needs_netem]
    if not netem:
        return
    if not without_netem:
        require([c for _, _, c in netem], hint=WITHOUT_NETEM_HINT, **paths)
        return
    if netem_available(**paths):
        return
    drop = set()
    for i, op, cond in netem:
        rest = cond.without_netem()
        if rest.empty:
            drop.add(i)
        else:
            plan.ops[i] = replace(op, conditions=rest.to_pairs())
    plan.ops[:] = [op for i, op in enumerate(plan.ops) if i not in drop]
    plan.notes.setdefault("_notices", []).append(
        f"this kernel has no netem qdisc: delay, jitter and loss left out on {len(netem)} interface(s) "
        f"(--without-netem); rates are kept")


# ---- encoding ---------------------------------------------------------------------------------
def _tcmsg(ifindex: int, parent: int = TC_H_ROOT, handle: int = 0) -> bytes:
    return TCMSG.pack(socket.AF_UNSPEC, ifindex, handle, parent, 0)


def _ticks(usec: float) -> int:
    """tc_core_time2tick(): microseconds to the kernel's 64 ns ticks, truncated, in a u32."""
    return min(int(int(usec) * TICKS_PER_USEC), U32_MAX)


def tbf_options(cond: Conditions, mtu: int = 1500) -> bytes:
    """TCA_OPTIONS of `tc qdisc replace ... tbf rate R burst B latency 50ms` (or `limit`)."""
    cond = effective(cond, mtu)
    rate, burst = cond.rate_bytes, cond.burst
    if burst < mtu + ETH_HLEN:
        raise ConditionsError("burst", f"burst {format_size(burst)} is below a full frame of this link "
                                       f"({mtu + ETH_HLEN}b): such packets would never pass")
    if cond.limit:
        limit = cond.limit * (mtu + ETH_HLEN)    # tbf's limit is bytes; ours is packets
    else:
        limit = rate * TBF_DEFAULT_LATENCY_US / 1e6 + burst
    rate32 = min(rate, U32_MAX)
    # tc_calc_rtable(): cell_log 3 for its default mtu 2047, cell_align -1; tc_calc_xmittime()
    # on the 32-bit rate.  The kernel takes the bucket from TCA_TBF_BURST; buffer is for show.
    ratespec = _RATESPEC.pack(3, TC_LINKLAYER_ETHERNET, 0, -1, 0, rate32)
    buffer = _ticks(1e6 * (burst / rate32))
    parms = _TBF_QOPT.pack(ratespec, b"\0" * 12, min(int(limit), U32_MAX), buffer, 0)
    opts = attr(TCA_TBF_PARMS, parms) + attr(TCA_TBF_BURST, U32.pack(burst))
    if rate >= 1 << 32:
        opts += attr(TCA_TBF_RATE64, _U64.pack(rate))
    return opts


def netem_options(cond: Conditions) -> bytes:
    """TCA_OPTIONS of `tc qdisc replace ... netem delay D J loss L rate R limit N`: the fixed
    tc_netem_qopt followed (not nested) by netem's attributes, as tc lays it out."""
    cond = effective(cond)
    qopt = _NETEM_QOPT.pack(_ticks(cond.delay_us or 0), cond.limit, cond.loss_u32 or 0, 0, 0,
                            _ticks(cond.jitter_us or 0))
    attrs = b""
    if cond.rate_bytes:
        if cond.rate_bytes >= 1 << 32:
            attrs += attr(TCA_NETEM_RATE64, _U64.pack(cond.rate_bytes))
        attrs += attr(TCA_NETEM_RATE, _NETEM_RATE.pack(min(cond.rate_bytes, U32_MAX), 0, 0, 0))
    return qopt + attrs


def encode_set(ifindex: int, cond: Conditions, mtu: int = 1500) -> bytearray:
    """RTM_NEWQDISC: replace the root qdisc of `ifindex` with what `cond` needs."""
    kind = cond.kind
    if kind == "tbf":
        opts = tbf_options(cond, mtu)
    elif kind == "netem":
        opts = netem_options(cond)
    else:
        raise ValueError("no conditions to set (use encode_clear)")
    return message(RTM_NEWQDISC, REPLACE, _tcmsg(ifindex), attr(TCA_KIND, kind.encode() + b"\0"),
                    attr(TCA_OPTIONS, opts))


def encode_clear(ifindex: int) -> bytearray:
    """RTM_DELQDISC of the root qdisc (`tc qdisc del dev DEV root`): back to the default."""
    return message(RTM_DELQDISC, DELETE, _tcmsg(ifindex))


def encode_dump_qdiscs() -> bytearray:
    return message(RTM_GETQDISC, DUMP, _tcmsg(0, parent=0))


def encode_dump_links() -> bytearray:
    return message(RTM_GETLINK, DUMP, ifinfomsg(0))


# ---- decoding ---------------------------------------------------------------------------------
def decode_tbf(opts: bytes) -> Conditions:
    a = attrs(opts, 0, len(opts))
    rate_raw, _peak, _limit, buffer, _mtu = _TBF_QOPT.unpack_from(a[TCA_TBF_PARMS])
    rate = _U64.unpack(a[TCA_TBF_RATE64])[0] if TCA_TBF_RATE64 in a else _RATESPEC.unpack(rate_raw)[5]
    # The kernel reports the bucket as time at rate (64 ns ticks), as tc shows it.
    return Conditions(rate_bytes=rate, burst=round(rate * (buffer << 6) / 1e9))


def decode_netem(opts: bytes) -> Conditions:
    latency, limit, loss, _gap, _dup, jitter = _NETEM_QOPT.unpack_from(opts)
    a = attrs(opts, _NETEM_QOPT.size, len(opts))
    # 64-bit ns values where the kernel sends them (4.17+); ticks are 64 ns.  Rounded back to
    # the microseconds they were set in (the tick conversion loses less than 0.064 us).
    delay_ns = _S64.unpack(a[TCA_NETEM_LATENCY64])[0] if TCA_NETEM_LATENCY64 in a else latency << 6
    jitter_ns = _S64.unpack(a[TCA_NETEM_JITTER64])[0] if TCA_NETEM_JITTER64 in a else jitter << 6
    rate = None
    if TCA_NETEM_RATE in a:
        rate = _NETEM_RATE.unpack_from(a[TCA_NETEM_RATE])[0] or None
    if TCA_NETEM_RATE64 in a:
        rate = _U64.unpack(a[TCA_NETEM_RATE64])[0]
    return Conditions(rate_bytes=rate, delay_us=round(delay_ns / 1000) or None,
                      jitter_us=round(jitter_ns / 1000) or None, loss_u32=loss or None, limit=limit)


@frozen
class Qdisc(Frozen):
    """A root qdisc as read back.  conditions is None for kinds nslab does not set."""
    dev: str
    ifindex: int
    kind: str
    handle: int
    conditions: Conditions | None

    def describe(self) -> str:
        return self.conditions.describe() if self.conditions else f"qdisc {self.kind}"


def decode_qdisc(buf: bytes, pos: int, length: int) -> tuple[int, str, int, int, Conditions | None]:
    """(ifindex, kind, handle, parent, conditions) of one RTM_NEWQDISC message at pos."""
    _fam, ifindex, handle, parent, _info = TCMSG.unpack_from(buf, pos + 16)
    a = attrs(buf, pos + 16 + TCMSG.size, pos + length)
    kind = a.get(TCA_KIND, b"").split(b"\0")[0].decode(errors="backslashreplace")
    opts = a.get(TCA_OPTIONS)
    cond = None
    if opts is not None and kind == "tbf":
        cond = decode_tbf(opts)
    elif opts is not None and kind == "netem":
        cond = decode_netem(opts)
    return ifindex, kind, handle, parent, cond


# ---- talking to the kernel ----------------------------------------------------------------------
_seq = itertools.count(0x7C000000)     # apart from apply's counter, which starts at 1


def send_batch(sock: socket.socket, messages: list[tuple[bytearray, object]]) -> dict[object, tuple[int, str]]:
    """Send all messages (chunked sends, one ack each) and return {tag: (errno, kernel text)}
    for those the kernel refused."""
    pending, chunk = {}, bytearray()
    for data, tag in messages:
        seq = next(_seq) & 0xFFFFFFFF
        struct.pack_into("=I", data, 8, seq)
        pending[seq] = tag
        if len(chunk) + len(data) > SEND_CHUNK:
            sock.send(chunk)
            chunk = bytearray()
        chunk += data
    if chunk:
        sock.send(chunk)
    failed = {}
    while pending:
        buf = sock.recv(1 << 20)
        for mtype, flags, seq, pos, length in replies(buf):
            if mtype == NLMSG_ERROR and seq in pending:
                (code,) = struct.unpack_from("=i", buf, pos + 16)
                tag = pending.pop(seq)
                if code:
                    failed[tag] = (-code, extack(buf, pos, length, flags))
    return failed


def _dump(sock: socket.socket, request: bytearray):
    """Yield (mtype, buf, pos, length) of each reply message of one dump."""
    seq = next(_seq) & 0xFFFFFFFF
    struct.pack_into("=I", request, 8, seq)
    sock.send(request)
    while True:
        buf = sock.recv(1 << 20)
        for mtype, _flags, mseq, pos, length in replies(buf):
            if mseq != seq:
                continue
            if mtype == NLMSG_DONE:
                return
            if mtype == NLMSG_ERROR:
                (code,) = struct.unpack_from("=i", buf, pos + 16)
                if code:
                    raise TcError(f"cannot read qdiscs: {os.strerror(-code)}")
                return
            yield mtype, buf, pos, length


def links(sock: socket.socket) -> dict[int, tuple[str, int]]:
    """{ifindex: (name, mtu)} of the socket's namespace."""
    out = {}
    for mtype, buf, pos, length in _dump(sock, encode_dump_links()):
        if mtype != RTM_NEWLINK:
            continue
        _fam, _type, index, _flags, _change = IFINFOMSG.unpack_from(buf, pos + 16)
        a = attrs(buf, pos + 16 + IFINFOMSG.size, pos + length)
        # the kernel takes any bytes but '/', ':' and blanks (`ip link set dev eth0 name $'\xff'`):
        # such a name reads as its escapes (\xff), printable, and what `link set` is given back
        name = a.get(IFLA_IFNAME, b"").split(b"\0")[0].decode(errors="backslashreplace")
        mtu = U32.unpack(a[IFLA_MTU])[0] if IFLA_MTU in a else 0
        out[index] = (name, mtu)
    return out


IFLA_STATS64 = 23
IFF_LOWER_UP = 0x10000
STATS64 = struct.Struct("=QQQQ")      # rtnl_link_stats64: rx_packets, tx_packets, rx_bytes, tx_bytes (...)


RTM_NEWSTATS, RTM_GETSTATS = 92, 94
IF_STATS_MSG = struct.Struct("=BxxxII")     # if_stats_msg: family, ifindex, filter_mask
IFLA_STATS_LINK_64 = 1                      # filter_mask bit 0: rtnl_link_stats64 only
RTMGRP_LINK = 1


def _link_state(buf, pos: int, length: int) -> tuple[int, str, bool]:
    """(ifindex, name, up) of one RTM_NEWLINK message, read only as far as the name (up:
    IFF_UP and the carrier, as `ip link` prints UP and LOWER_UP)."""
    _fam, _type, index, flags, _change = IFINFOMSG.unpack_from(buf, pos + 16)
    name = ""
    at, end = pos + 16 + IFINFOMSG.size, pos + length
    while at + 4 <= end:
        alen, atype = RTATTR.unpack_from(buf, at)
        if alen < 4:
            break
        if atype & 0x3FFF == IFLA_IFNAME:
            name = bytes(buf[at + 4: at + alen]).split(b"\0")[0].decode(errors="backslashreplace")
            break
        at += (alen + 3) & ~3
    return index, name, flags & 0x1 != 0 and flags & IFF_LOWER_UP != 0


def link_states(sock: socket.socket) -> dict[int, tuple[str, bool]]:
    """{ifindex: (name, up)} of every device of the socket's namespace (one RTM_GETLINK dump)."""
    out = {}
    for mtype, buf, pos, length in _dump(sock, encode_dump_links()):
        if mtype == RTM_NEWLINK:
            index, name, up = _link_state(buf, pos, length)
            out[index] = (name, up)
    return out


def link_stats(sock: socket.socket) -> dict[int, tuple[int, int, int, int]]:
    """{ifindex: (rx_packets, tx_packets, rx_bytes, tx_bytes)} of every device of the socket's
    namespace: one RTM_GETSTATS dump asking for IFLA_STATS_LINK_64 only (`ip stats show group
    link`'s numbers, those of `ip -s link`).  The kernel then builds one small message a
    device (the counters, ~200 bytes) where RTM_GETLINK builds every attribute of it (~1.5
    kB: its inet/inet6 settings, link info...): `nslab web` reads this every second."""
    out = {}
    request = message(RTM_GETSTATS, DUMP, IF_STATS_MSG.pack(socket.AF_UNSPEC, 0, 1 << (IFLA_STATS_LINK_64 - 1)))
    for mtype, buf, pos, length in _dump(sock, request):
        if mtype != RTM_NEWSTATS:
            continue
        _fam, index, _mask = IF_STATS_MSG.unpack_from(buf, pos + 16)
        at, end = pos + 16 + IF_STATS_MSG.size, pos + length
        while at + 4 <= end:
            alen, atype = RTATTR.unpack_from(buf, at)
            if alen < 4:
                break
            if atype & 0x3FFF == IFLA_STATS_LINK_64 and alen - 4 >= STATS64.size:
                out[index] = STATS64.unpack_from(buf, at + 4)
                break
            at += (alen + 3) & ~3
    return out


def open_link_watch() -> socket.socket:
    """A non-blocking NETLINK_ROUTE socket in the calling thread's namespace that receives the
    kernel's link notifications (RTMGRP_LINK, what `ip monitor link` reads): a device
    added, renamed, set down or up, its carrier lost or back."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK, 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 18)
    sock.bind((0, RTMGRP_LINK))
    return sock


def link_changes(watch: socket.socket) -> list[tuple[int, str | None, bool]] | None:
    """The notifications queued on open_link_watch()'s socket: (ifindex, name, up) for a
    device new or changed, (ifindex, None, False) for one deleted; None if some were lost
    (the queue overflowed: read link_states() again)."""
    out = []
    while True:
        try:
            buf = watch.recv(1 << 16)
        except BlockingIOError:
            return out
        except OSError as e:
            if e.errno == errno.ENOBUFS:
                return None
            raise
        for mtype, _flags, _seq, pos, length in replies(buf):
            if mtype == RTM_NEWLINK:
                out.append(_link_state(buf, pos, length))
            elif mtype == RTM_DELLINK:
                index = IFINFOMSG.unpack_from(buf, pos + 16)[2]
                out.append((index, None, False))


def read(sock: socket.socket) -> dict[str, Qdisc]:
    """The root qdisc of every device of the socket's namespace, by device name (for `link
    show`).  A device on the default has kind 'noqueue' (lo, whose default has no handle, is
    not reported at all)."""
    names = links(sock)
    out = {}
    for mtype, buf, pos, length in _dump(sock, encode_dump_qdiscs()):
        if mtype != RTM_NEWQDISC:
            continue
        ifindex, kind, handle, parent, cond = decode_qdisc(buf, pos, length)
        if parent == TC_H_ROOT and ifindex in names:
            dev = names[ifindex][0]
            out[dev] = Qdisc(dev=dev, ifindex=ifindex, kind=kind, handle=handle, conditions=cond)
    return out


def apply(sock: socket.socket, settings: list[tuple[str, int, Conditions | None]], mtu: int | dict = 1500,
          where: str = "") -> None:
    """Set (or, for None or empty conditions, clear) the root qdisc of each (dev, ifindex,
    conditions) in one batch.  Refuses netem on a kernel without it before sending anything.
    `mtu`: one for all, or {dev: mtu} (tbf's burst must hold a frame)."""
    require([c for _, _, c in settings])
    messages = []
    for i, (dev, ifindex, cond) in enumerate(settings):
        if cond is None or cond.empty:
            messages.append((encode_clear(ifindex), i))
        else:
            dev_mtu = mtu.get(dev, 1500) if isinstance(mtu, dict) else mtu
            messages.append((encode_set(ifindex, cond, dev_mtu), i))
    failed = send_batch(sock, messages)
    # Clearing what has nothing set is not an error: the kernel says ENOENT ("Cannot delete
    # qdisc with handle of zero") for the default root.
    problems = []
    for i, (err, text) in sorted(failed.items()):
        dev, _, cond = settings[i]
        cond = None if cond is None or cond.empty else cond
        if not (cond is None and err == errno.ENOENT):
            problems.append((dev, cond, err, text))
    if not problems:
        return
    dev, cond, err, text = problems[0]
    place = f" in {where}" if where else ""
    if cond is not None and cond.kind == "netem" and err == errno.ENOENT:
        raise KernelFeatureError(f"this kernel has no netem qdisc (it refused it on {dev}{place}), which delay, "
                                 f"jitter and loss need; rate alone works (tbf)")
    what = f"{cond.kind} {cond.describe()}" if cond is not None else "removing its conditions"
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    raise TcError(f"the kernel refused {what} on {dev}{place}: {os.strerror(err)}"
                  + (f" ({text})" if text else "") + more)


def clear(sock: socket.socket, devs: list[tuple[str, int]], where: str = "") -> None:
    """Remove the conditions of each (dev, ifindex): its root qdisc goes back to the default."""
    apply(sock, [(dev, ifindex, None) for dev, ifindex in devs], where=where)


# ---- a socket in a lab namespace (for `nslab link` and the tests) ---------------------------------
def open_socket(name: str) -> socket.socket:
    """A NETLINK_ROUTE socket bound to lab namespace `name` (netns.Entered: never the root
    namespace; the calling thread returns to its own)."""
    try:
        fd = os.open(netns.path(name), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise TcError(f"network namespace {name} does not exist") from None
    try:
        with netns.Entered(fd):
            return open_route_socket()
    finally:
        os.close(fd)
