"""Packet capture inside a node: tcpdump in the node's namespace.

`Capture` runs one tcpdump and gives its packets three ways: a pcap file (read back with
scapy by `.packets()`), tcpdump's own `-eni` text on our stdout, or a pcap stream over a
pipe (`.records()`) that `nslab capture --decode` turns into note 002's outer/inner tables.
With `lab=` the tcpdump PID is written into the lab's state record, so `nslab down` ends
it; it is taken out again when the capture ends by itself.
"""
from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time
from typing import Iterator

from .. import backends
from .. import console as out
from .. import lab as labmod
from .. import state
from ..errors import NslabError, UsageError
from .. import spawn
from .decode import Names, decode_pcap, rows, summary   # bytes only: no scapy to import

PCAP_MAGIC = {b"\xd4\xc3\xb2\xa1": ("<", 1e-6), b"\xa1\xb2\xc3\xd4": (">", 1e-6),
              b"\x4d\x3c\xb2\xa1": ("<", 1e-9), b"\xa1\xb2\x3c\x4d": (">", 1e-9)}


class Capture:
    """tcpdump -i IFACE inside namespace `ns`; use as a context manager (`.result`).

    pcap: a file to write (None: a temporary file, removed on exit), or "-" for a pcap
    stream read with `.records()`.  text=True: tcpdump prints `-eni` lines on our stdout.
    Starting waits until tcpdump is listening, so packets sent right after are seen.
    """

    def __init__(self, ns: str, iface: str, bpf: str = "", pcap: str | None = None, count: int | None = None,
                 snaplen: int = 262144, text: bool = False, lab: str | None = None, what: str = "tcpdump"):
        self.ns, self.iface, self.bpf, self.count = ns, iface, bpf, count
        self.text, self.lab, self.what = text, lab, what
        self._own_file = pcap is None and not text
        if self._own_file:
            fd, pcap = tempfile.mkstemp(prefix="nslab-", suffix=".pcap")
            os.close(fd)
        self.pcap = pcap if pcap in (None, "-") else os.path.abspath(pcap)
        self.snaplen = snaplen
        self.proc: subprocess.Popen | None = None
        self.listening = ""               # tcpdump's "listening on IFACE, link-type ..." line

    def argv(self) -> list[str]:
        # --immediate-mode: without it tcpdump holds packets in the kernel ring for up to a
        # second and a prompt stop loses them ("received by filter" but not captured).
        argv = [spawn.need("ip"), "netns", "exec", self.ns, spawn.need("tcpdump"), "-i", self.iface,
                "--immediate-mode", "-n"]
        if self.text:
            argv += ["-e", "-l"]          # -l: line-buffered, so a pipe sees each packet at once
        else:   # -U: flush per packet; -Z root: Debian's tcpdump would drop to a user that cannot write the file
            argv += ["-U", "-s", str(self.snaplen), "-Z", "root", "-w", self.pcap]
        if self.count:
            argv += ["-c", str(self.count)]
        if self.bpf:
            argv += self.bpf.split()
        return argv

    def start(self) -> "Capture":
        self.proc = subprocess.Popen(self.argv(), stdout=subprocess.PIPE if self.pcap == "-" else
                                     (None if self.text else subprocess.DEVNULL),
                                     stderr=subprocess.PIPE, start_new_session=self.lab is not None,
                                     cwd=spawn.CWD, env=spawn.env())
        if self.lab:
            _record(self.lab, self.proc.pid, self.what)
        line = self.proc.stderr.readline().decode(errors="replace")   # "tcpdump: listening on IFACE, ..."
        while "verbose output suppressed" in line:                     # text mode says this first
            line = self.proc.stderr.readline().decode(errors="replace")
        if "listening on" not in line:
            rest = self.proc.stderr.read().decode(errors="replace") if self.proc.poll() is not None else ""
            self.proc.kill()
            self.proc.wait()
            self._forget()
            raise NslabError(f"tcpdump on {self.ns}:{self.iface} did not start: "
                             f"{' '.join((line + rest).split())}")
        self.listening = line.strip()
        return self

    def records(self, tee=None) -> Iterator[tuple[float, int, bytes]]:
        """(timestamp, link type, bytes) per packet of a pcap="-" capture, until tcpdump ends.
        tee: a binary file that gets the pcap stream as it is read."""
        out = self.proc.stdout
        head = _read_exact(out, 24)
        if head is None:
            return
        endian, unit = PCAP_MAGIC[head[:4]]
        linktype = struct.unpack(endian + "I", head[20:24])[0]
        if tee:
            tee.write(head)
        while (rec := _read_exact(out, 16)) is not None:
            sec, frac, incl, _ = struct.unpack(endian + "IIII", rec)
            data = _read_exact(out, incl)
            if data is None:
                return
            if tee:
                tee.write(rec + data)
                tee.flush()
            yield sec + frac * unit, linktype, data

    def interrupt(self) -> None:
        """Ask tcpdump to stop as Ctrl-C does (it flushes its file and prints its counts)."""
        if self.proc and self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGINT)
            except ProcessLookupError:
                pass

    def wait(self) -> int:
        rc = self.proc.wait()
        self._forget()
        return rc

    def tail(self) -> str:
        """What tcpdump said after it started (`N packets captured`, or an error)."""
        if self.proc and self.proc.stderr and not self.proc.stderr.closed:
            text = self.proc.stderr.read().decode(errors="replace")
            self.proc.stderr.close()
            return text
        return ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            time.sleep(0.05)                      # let the last packets reach the file
            self.interrupt()
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._forget()
        for f in (self.proc.stdout, self.proc.stderr) if self.proc else ():
            if f:
                f.close()

    def _forget(self) -> None:
        if self.lab and self.proc:
            _unrecord(self.lab, self.proc.pid)
            self.lab = None

    def packets(self) -> list:
        import scapy.layers.inet  # noqa: F401  lazy: start-up (registers the layers rdpcap decodes into)
        import scapy.layers.l2  # noqa: F401  lazy: start-up
        import scapy.layers.vxlan  # noqa: F401  lazy: start-up
        from scapy.utils import rdpcap  # lazy: start-up
        if not os.path.exists(self.pcap) or os.path.getsize(self.pcap) == 0:
            return []
        return list(rdpcap(self.pcap))

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        self.result = self.packets()
        if self._own_file:
            try:
                os.unlink(self.pcap)
            except FileNotFoundError:
                pass


def _read_exact(f, n: int) -> bytes | None:
    data = f.read(n)
    return data if data is not None and len(data) == n else None


# --- the lab's record of running captures ------------------------------------------------
# Several captures (and the lab agent) change one record: state.update re-reads it under
# the lab's lock, so no one's entry is lost.

def _locked_update(lab: str, change) -> None:
    try:
        state.update(lab, change)
    except state.RecordError:         # unreadable record: the capture runs unrecorded
        pass


def _record(lab: str, pid: int, what: str) -> None:
    _locked_update(lab, lambda st: st.processes.append(
        state.Process(pid=pid, start_time=state.process_start_time(pid) or 0, what=what)))


def _unrecord(lab: str, pid: int) -> None:
    def drop(st):
        st.processes = [p for p in st.processes if p.pid != pid]
    _locked_update(lab, drop)


# --- nslab capture ------------------------------------------------------------------------

def default_iface(topo, node: str) -> str:
    """A cluster node's underlay NIC, a segment's bridge, else the node's first interface."""
    n = topo.nodes[node]
    if topo.cluster is not None and node in topo.cluster.nodes:
        return topo.cluster.nodes[node].underlay
    if n.kind == "switch" and n.bridges:
        return n.bridges[0].name
    return n.ifaces[0].name if n.ifaces else "lo"


def known_ifaces(topo, node: str) -> list[str]:
    n = topo.nodes[node]
    names = [i.name for i in n.ifaces] + [b.name for b in n.bridges] + [t.name for t in n.tunnels]
    if topo.cluster is not None and node in topo.cluster.nodes and topo.cluster.backend.device:
        names.append(topo.cluster.backend.device)
    return names + ["lo", "any"]


def run(lab: str, target: str, pcap: str | None = None, count: int | None = None, bpf: str = "",
        decode: bool = False, as_json: bool = False) -> int:
    """`nslab capture`: returns the exit code.  SIGINT/SIGTERM stop tcpdump cleanly."""

    stopping: list[int] = []
    cap: Capture | None = None

    def on_signal(signum, _frame):
        stopping.append(signum)
        if cap is not None:
            cap.interrupt()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    node, _, iface = target.partition(":")
    ns = labmod.node_namespace(lab, node)
    topo = labmod.topology(lab)
    iface = iface or default_iface(topo, node)
    cap = Capture(ns, iface, bpf, pcap="-" if decode else pcap, count=count, text=not decode and pcap is None,
                  lab=lab, what=f"tcpdump {node}:{iface}")
    try:
        cap.start()
    except NslabError as e:
        if iface not in known_ifaces(topo, node):
            raise UsageError(f"{node} has no interface {iface!r} (interfaces: "
                             f"{', '.join(known_ifaces(topo, node))})") from None
        raise e
    print(f"{cap.listening} ({lab} {node}; Ctrl-C to stop)", file=sys.stderr, flush=True)
    if stopping:
        cap.interrupt()
    if pcap == "-" and not decode:      # -w -: the pcap on stdout (across machines: the host writes the file)
        try:
            for _ in cap.records(tee=sys.stdout.buffer):
                pass
        except BrokenPipeError:
            cap.interrupt()
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    if decode:
        try:
            _decode_loop(cap, topo, f"{node}:{iface}", pcap, as_json)
        except BrokenPipeError:       # `nslab capture ... | head`
            cap.interrupt()
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    rc = cap.wait()
    tail = cap.tail().strip()
    if tail:
        print(tail, file=sys.stderr)
    return 0 if stopping else rc


def _decode_loop(cap: Capture, topo, where: str, pcap: str | None, as_json: bool = False) -> None:
    console = out.make()
    names = Names.from_topology(topo)
    backend = topo.cluster.backend if topo.cluster is not None else None
    btype, port = (backend.type, backend.port) if backend else ("", None)
    encap = backends.encap_ports(backend)
    keep = open(pcap, "wb") if pcap else None     # --decode -w FILE: keep the bytes too
    t0 = None
    try:
        for n, (ts, linktype, data) in enumerate(cap.records(tee=keep), 1):
            t0 = ts if t0 is None else t0
            layers = decode_pcap(data, linktype, encap)
            d = rows(layers, btype, port)
            if as_json:                # one JSON object per packet and line (JSON Lines: a stream)
                print(json.dumps(dict(n=n, time=round(ts - t0, 6), where=where, bytes=len(data),
                                      **(decoded_dict(d, names) if d else {"summary": summary(layers, names)}))))
            else:
                head = f"#{n} {ts - t0:.6f} {where} {len(data)} bytes"
                if d is None:
                    console.print(out.wrap(f"{head}  {summary(layers, names)}", out.fits(console)), markup=False,
                                  soft_wrap=True)
                else:
                    console.print(f"{head}  {d.kind}", markup=False)
                    print_decoded(console, d, names)
            sys.stdout.flush()
    finally:
        if keep:
            keep.close()


COLUMNS = ["", "src IP", "src MAC", "dst IP", "dst MAC", "protocol", "VNI", "UDP ports"]
FIELDS = ["src_ip", "src_mac", "dst_ip", "dst_mac", "proto", "vni", "ports"]


def decoded_dict(d, names) -> dict:
    """A decoded packet for --json: outer and inner rows, each address with the lab's name for it."""
    def row(r):
        return dict(src_ip=r.src_ip, src_name=names.of_ip(r.src_ip), src_mac=r.src_mac,
                    src_mac_name=names.of_mac(r.src_mac), dst_ip=r.dst_ip, dst_name=names.of_ip(r.dst_ip),
                    dst_mac=r.dst_mac, dst_mac_name=names.of_mac(r.dst_mac), protocol=r.proto, vni=r.vni, ports=r.ports)
    return dict(kind=d.kind, outer=row(d.outer), inner=row(d.inner))


def _cells(d, names, sep: str) -> list[list[str]]:
    """Note 002's rows as text: an address, then (sep) the lab's name for it."""
    def cell(value, name):
        return "-" if value is None else value + (sep.format(name) if name else "")
    return [[label, cell(r.src_ip, names.of_ip(r.src_ip)), cell(r.src_mac, names.of_mac(r.src_mac)),
             cell(r.dst_ip, names.of_ip(r.dst_ip)), cell(r.dst_mac, names.of_mac(r.dst_mac)),
             r.proto, "" if r.vni is None else str(r.vni), r.ports]
            for label, r in (("outer", d.outer), ("inner", d.inner))]


def print_decoded(console, d, names) -> None:
    """Note 002's table where it fits (names under the addresses); piped: plain columns with
    `address (name)`; on a narrow terminal: a few lines per header, every value whole."""
    if out.fits(console) is None:
        out.table(console, COLUMNS, _cells(d, names, " ({})"))
        return

    def narrow(console, limit):
        for label, r in (("outer", d.outer), ("inner", d.inner)):
            extra = "".join(f"  {x}" for x in (r.ports, f"VNI {r.vni}" if r.vni is not None else "") if x)
            console.print(out.wrap(f"{label}  {r.proto}{extra}", limit), markup=False, soft_wrap=True)
            for end, ip, mac in (("src", r.src_ip, r.src_mac), ("dst", r.dst_ip, r.dst_mac)):
                parts = [f"{v} ({n})" if n else v for v, n in ((ip, names.of_ip(ip)), (mac, names.of_mac(mac))) if v]
                console.print(out.wrap(f"  {end}  " + "  ".join(parts or ["-"]), limit, 7), markup=False,
                              soft_wrap=True)
    out.table(console, COLUMNS, _cells(d, names, "\n{}"), compact=True, narrow=narrow)


def table(d, names):
    """Note 002's table (a rich renderable): rows outer/inner; src IP, src MAC, dst IP, dst MAC,
    protocol, VNI, ports, each address with the lab's name for it beneath."""
    from rich import box  # lazy: start-up
    from rich.table import Table  # lazy: start-up
    t = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for col in COLUMNS:
        t.add_column(col, no_wrap=True)
    for r in _cells(d, names, "\n{}"):
        t.add_row(*r)
    return t
