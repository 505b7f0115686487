"""The probe engine: every probe nslab sends, from sockets this process opens inside lab
namespaces (no `ip netns exec`, no fork).  `nslab test`, `nslab trace`, all-pairs and the
Python API (nslab.api.Lab) all send through here.

A socket stays in the namespace it was created in, so each probe socket is opened while
the thread is inside the source's namespace (netns.enter) and then used from here.

- `ping`, `tcp`, `http`, `udp`: one probe each (`send(kind, ...)` picks one), answering an
  `Outcome`; each carries a marker that observe/sniffer.py finds in frames seen elsewhere
  in the lab (also inside VXLAN/IPIP/UDP encapsulation).
- `fire`: a probe sent and not waited for (`nslab trace` watches its path instead).
- `all_pairs`: one raw ICMP socket per source; every source sends an echo request to every
  destination (id = the source's, seq = the destination's index, payload = a per-run
  nonce), replies are collected from all sockets with poll, missing pairs are re-sent a
  few times (the first packets to a neighbour wait for ARP) until a deadline.
"""
from __future__ import annotations

import errno
import os
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

from ..apply import netns
from ..packet import ICMP_ECHO, ICMP_ECHO_REPLY, echo_request, parse_echo_reply

SOL_RAW = 255
ICMP_FILTER = 1            # SOL_RAW option: bitmask of ICMP types this socket does NOT receive
IP_MTU_DISCOVER = 10       # not exported by Python's socket module
IP_PMTUDISC_DO = 2         # its value: never fragment (DF), as `ping -M do`
SO_RCVBUFFORCE = 33        # root may exceed net.core.rmem_max (not namespaced; never changed)
RESEND_AT = (0.4, 1.0, 1.8)   # seconds after the first round: re-send to pairs still missing
ARP_GRACE = 5.0           # the kernel reclaims no ARP entry younger than this (neigh_forced_gc)
LAST_WAIT = 0.5           # all-pairs: seconds of listening after a re-send round, at least
TILE = 100                # all-pairs: first round in tiles of TILE sources x TILE destinations
MAX_ROUNDS = 24           # all-pairs rounds at most, re-sends while the ARP table overflows included
HTTP_MAX = 1 << 20         # bytes of an HTTP response kept


def open_in(ns: str, family: int, kind: int, proto: int = 0) -> socket.socket:
    with netns.enter(ns):
        return socket.socket(family, kind, proto)


def icmp_socket(ns: str, rcvbuf: int = 1 << 21) -> socket.socket:
    """A non-blocking raw ICMP socket in `ns` that receives echo replies only."""
    s = open_in(ns, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    try:
        s.setsockopt(SOL_RAW, ICMP_FILTER, struct.pack("I", ~(1 << ICMP_ECHO_REPLY) & 0xFFFFFFFF))
        s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
        s.setblocking(False)
    except BaseException:
        s.close()
        raise
    return s


def probe_socket(ns: str, proto: str, src: str | None = None, ttl: int | None = None) -> socket.socket:
    """A non-blocking socket for one probe in `ns`: proto icmp (raw, echo replies only),
    tcp or udp; bound to `src` if given (else the kernel picks the source), IP TTL `ttl`
    if given."""
    if proto == "icmp":
        s = icmp_socket(ns, rcvbuf=1 << 18)
    else:
        s = open_in(ns, socket.AF_INET, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
    try:
        s.setblocking(False)
        if ttl:
            s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
        if src or proto != "icmp":
            s.bind((src or "0.0.0.0", 0))
    except BaseException:
        s.close()
        raise
    return s


# --- one probe ---------------------------------------------------------------------------------


@dataclass
class Outcome:
    ok: bool
    detail: str                         # one line: what was seen
    rtt_ms: float | None = None
    ttl: int | None = None              # ping: the echo reply's IP TTL as it arrived
    reply: bytes = b""                  # http: the whole response; udp: the answer
    refused: bool = False               # the destination said no (TCP RST, ICMP port unreachable)
    error: str | None = None            # the kernel refused to send: its strerror ("Message too long")


def new_marker(tag: str = "probe") -> bytes:
    """A marker no other probe carries: found in frames anywhere in the lab by observe/sniffer."""
    return f"nslab-{tag}-".encode() + os.urandom(8).hex().encode()


def marker_payload(size: int) -> bytes:
    """A random marker padded to `size` bytes (an echo payload of a given size)."""
    marker = b"nslab-" + os.urandom(8).hex().encode()
    return (marker + b"." * size)[:max(size, len(marker))]


def _strerror(e: OSError) -> str:
    return e.strerror or ("timed out" if isinstance(e, TimeoutError) else str(e) or type(e).__name__)


def ping(ns: str, dst: str, marker: bytes, timeout: float = 1.0, tries: int = 3,
         dont_fragment: bool = False) -> Outcome:
    """Echo requests from `ns` to `dst` (up to `tries`, spread over `timeout`) until one is
    answered; the payload is `marker`.  dont_fragment: DF set, as `ping -M do`."""
    ident = int.from_bytes(os.urandom(2), "big")
    s = probe_socket(ns, "icmp")
    try:
        if dont_fragment:
            s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
        t0 = time.monotonic()
        sent: dict[int, float] = {}
        error = None
        for seq in range(1, tries + 1):
            try:
                s.sendto(echo_request(ident, seq, marker), (dst, 0))
                sent[seq] = time.monotonic()
            except OSError as e:                       # no route, unreachable: the kernel says so at once
                error = e.strerror
                break
            next_send = t0 + timeout * seq / tries
            while (now := time.monotonic()) < next_send:
                if not select.select([s], [], [], next_send - now)[0]:
                    continue
                while True:
                    try:
                        data = s.recv(65535)
                    except BlockingIOError:
                        break
                    r = parse_echo_reply(data)
                    if r and r[0] == dst and r[1] == ident and r[3] == marker and r[2] in sent:
                        rtt = (time.monotonic() - sent[r[2]]) * 1000
                        return Outcome(True, f"echo reply from {dst} in {rtt:.2f} ms, ttl={data[8]}", rtt, data[8])
        return Outcome(False, f"cannot send to {dst}: {error}" if error else f"no echo reply from {dst} "
                                                                            f"within {timeout:g} s", error=error)
    finally:
        s.close()


def _connect(s: socket.socket, dst: str, port: int, timeout: float) -> float:
    """Connect the blocking-with-timeout socket; ms until connected.  OSError passes up."""
    s.settimeout(timeout)
    t0 = time.monotonic()
    s.connect((dst, port))
    return (time.monotonic() - t0) * 1000


def tcp(ns: str, dst: str, port: int, marker: bytes, timeout: float = 1.0) -> Outcome:
    """TCP connect from `ns`; once connected, send the marker so the flow can be found."""
    with probe_socket(ns, "tcp") as s:
        try:
            rtt = _connect(s, dst, port, timeout)
            s.sendall(marker + b"\r\n")
        except OSError as e:
            return Outcome(False, f"connect to {dst}:{port}: {_strerror(e)}",
                           refused=isinstance(e, ConnectionRefusedError))
    return Outcome(True, f"connected to {dst}:{port} in {rtt:.2f} ms", rtt)


def _content_length(head: bytes) -> int | None:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            return int(value)
    return None


def http(ns: str, dst: str, port: int, marker: bytes, timeout: float = 2.0, path: str = "/") -> Outcome:
    """HTTP/1.0 GET from `ns`; success is a 2xx or 3xx status.  The marker rides in a header;
    the response (up to 1 MiB) is in .reply, rtt_ms is the time until its status line."""
    url = f"http://{dst}:{port}{path}"
    request = (f"GET {path} HTTP/1.0\r\nHost: {dst}\r\nUser-Agent: nslab-test\r\nX-Nslab-Probe: "
               f"{marker.decode()}\r\n\r\n").encode()
    data, rtt = b"", None
    with probe_socket(ns, "tcp") as s:
        try:
            t0 = time.monotonic()
            _connect(s, dst, port, timeout)
            s.sendall(request)
            while len(data) < HTTP_MAX:
                head, sep, body = data.partition(b"\r\n\r\n")
                length = _content_length(head) if sep else None
                if length is not None and len(body) >= length:
                    break                                   # all of it: the server need not close first
                try:
                    chunk = s.recv(65536)
                except TimeoutError:
                    if rtt is None:
                        raise
                    break                                   # a status line came: keep what arrived
                if not chunk:
                    break
                data += chunk
                if rtt is None and b"\r\n" in data:
                    rtt = (time.monotonic() - t0) * 1000
        except OSError as e:
            return Outcome(False, f"GET {url}: {_strerror(e)}", refused=isinstance(e, ConnectionRefusedError))
    status = data.split(b"\r\n", 1)[0].decode(errors="replace")
    parts = status.split()
    ok = len(parts) >= 2 and parts[0].startswith("HTTP/") and parts[1][:1] in ("2", "3")
    return Outcome(ok, f"GET {url} -> {status or 'no response'}", rtt, reply=data)


def udp(ns: str, dst: str, port: int, marker: bytes, timeout: float = 1.0, tries: int = 3) -> Outcome:
    """A datagram carrying `marker` from `ns` to dst:port (up to `tries`, spread over
    `timeout`) until something answers from there.  An ICMP port unreachable is "refused"
    (nothing listens); silence is a failure too (UDP has no other way to say "reached")."""
    with probe_socket(ns, "udp") as s:
        try:
            s.connect((dst, port))          # connected: only dst:port's answers and ICMP errors come back
            t0 = time.monotonic()
            for n in range(1, tries + 1):
                sent = time.monotonic()
                s.send(marker)
                next_send = t0 + timeout * n / tries
                while (now := time.monotonic()) < next_send:
                    if not select.select([s], [], [], next_send - now)[0]:
                        continue
                    try:
                        data = s.recv(65535)
                    except BlockingIOError:
                        continue
                    rtt = (time.monotonic() - sent) * 1000
                    return Outcome(True, f"udp answer from {dst}:{port} in {rtt:.2f} ms ({len(data)} bytes)",
                                   rtt, reply=data)
        except ConnectionRefusedError:
            return Outcome(False, f"udp to {dst}:{port}: refused (ICMP port unreachable)", refused=True)
        except OSError as e:
            return Outcome(False, f"udp to {dst}:{port}: {_strerror(e)}")
    return Outcome(False, f"udp to {dst}:{port}: no answer within {timeout:g} s")


KINDS = ("ping", "tcp", "http", "udp")


def send(kind: str, ns: str, dst: str, port: int | None, marker: bytes, timeout: float) -> Outcome:
    """One probe of `kind` (ping, tcp, http, udp): what `nslab test` sends for a check."""
    if kind == "ping":
        return ping(ns, dst, marker, timeout)
    if kind not in KINDS:
        raise ValueError(f"no probe kind {kind!r} (kinds: {', '.join(KINDS)})")
    if port is None:
        raise ValueError(f"a {kind} probe needs a port")
    return {"tcp": tcp, "http": http, "udp": udp}[kind](ns, dst, port, marker, timeout)


@dataclass
class Fired:
    """A probe sent and not waited for: close `sock` once done watching it."""
    sock: socket.socket
    error: OSError | None      # the kernel refused to send (no route, unreachable, ...)
    t_ns: int                  # CLOCK_REALTIME when it was sent, as packet timestamps
    sport: int                 # tcp/udp source port the kernel gave (0 for icmp)


def fire(ns: str, proto: str, dst: str, port: int | None = None, ident: int = 0, seq: int = 0,
         payload: bytes = b"", src: str | None = None, ttl: int | None = None) -> Fired:
    """Send one probe from `ns` without waiting for an answer: an ICMP echo (id `ident`, seq
    `seq`), a TCP SYN (non-blocking connect) or a UDP datagram (`payload`) to dst[:port]."""
    sock = probe_socket(ns, proto, src, ttl)
    try:
        if proto == "tcp":      # closing it sends RST: the half-open connection is not left in the lab
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sport = sock.getsockname()[1] if proto != "icmp" else 0
        t0 = time.time_ns()
        try:
            if proto == "icmp":
                sock.sendto(echo_request(ident, seq, payload), (dst, 0))
            elif proto == "tcp":
                rc = sock.connect_ex((dst, port))
                if rc not in (0, errno.EINPROGRESS):
                    raise OSError(rc, os.strerror(rc))
            else:
                sock.sendto(payload, (dst, port))
        except OSError as e:
            return Fired(sock, e, t0, sport)
        return Fired(sock, None, t0, sport)
    except BaseException:
        sock.close()
        raise


# --- every pair ----------------------------------------------------------------------------------


def neighbour_table_fulls() -> int | None:
    """How often the kernel's ARP table was full ("neighbor table overflow").  The table is
    shared by every namespace and sized by the root namespace's gc_thresh3 (read only here)."""
    try:
        with open("/proc/net/stat/arp_cache") as f:
            head, *cpus = f.read().split("\n")
        col = head.split().index("table_fulls")
        return sum(int(line.split()[col], 16) for line in cpus if line.strip())
    except (OSError, ValueError, IndexError):
        return None


def gc_thresh3() -> str:
    try:
        with open("/proc/sys/net/ipv4/neigh/default/gc_thresh3") as f:
            return f.read().strip()
    except OSError:
        return "?"


@dataclass
class Endpoint:
    name: str
    ns: str
    ip: str


@dataclass
class AllPairs:
    endpoints: list[Endpoint]
    reachable: int
    missing: list[tuple[str, str]]        # (source, destination) without an answer
    sent: int                             # echo requests sent, re-sends included
    elapsed: float                        # seconds, sockets opened to last reply
    rounds: int = 1
    errors: dict[str, str] = field(default_factory=dict)   # source -> first send error
    sources: int | None = None            # endpoints that sent (default: all of them)

    @property
    def pairs(self) -> int:
        n = len(self.endpoints)
        return (n if self.sources is None else self.sources) * (n - 1)

    @property
    def ok(self) -> bool:
        return not self.missing


def _echo_head_sum(payload: bytes) -> int:
    """The payload's share of an echo request's checksum (RFC 1071, unfolded): a packet's
    checksum is then a few integer operations, not a pass over the payload per pair."""
    if len(payload) % 2:
        payload += b"\0"
    return sum(struct.unpack(f"!{len(payload) // 2}H", payload)) + (ICMP_ECHO << 8)


def _pair_wait(sent: int) -> float:
    """Seconds to wait for stragglers after a round of `sent` echo requests: each round trip
    normally completes inside sendto() (veth runs the receiver's softirq in the sender's
    context), but on a busy machine the kernel defers softirqs to ksoftirqd and the replies
    lag by up to the round's backlog.  Generous: 2 ms per 1,000 requests."""
    return sent * 2e-6


def all_pairs(endpoints: list[Endpoint], timeout: float = 3.0, threads: int = 0,
              sources: set[str] | None = None) -> AllPairs:
    """Echo request from every endpoint to every other one; who answered.  sources: the
    endpoints that send (by name; default all): a machine's part of a lab across machines
    sends from its own namespaces to every endpoint, wherever it is (across.all_pairs).  The deadline is
    `timeout` after the last re-send round, longer for big rounds (_pair_wait).

    The sources are split between `threads` workers (default: one per CPU, at most 4; one
    below 64 endpoints): each sendto() carries the round trip through the lab in the kernel
    with the GIL released, so a second worker uses a second core.  A worker sends its
    sources' requests in diagonals inside tiles (_diagonal_tiles: no destination gets all
    its requests at once), reads its sockets between every 256 sends (receive queues stay
    short), then re-sends what is still missing at RESEND_AT after its first round (a
    lost reply on a busy machine is not a failure until the re-sends go unanswered too).
    While the kernel's ARP table overflows meanwhile (a lab with more dynamic neighbours
    than the machine's table holds) and the re-sends still get answers, it keeps re-sending
    every ARP_GRACE seconds (the table's entries cannot be reclaimed sooner).  Memory is
    n^2 bytes (one answered-flag per pair), packets are built as they are sent."""
    n = len(endpoints)
    here = [i for i in range(n) if sources is None or endpoints[i].name in sources]
    if n > 0xFFFF:
        raise ValueError("at most 65535 endpoints (the ICMP sequence number names the destination)")
    t0 = time.monotonic()
    nonce = os.urandom(8)
    payload = b"nslab all-pairs " + nonce
    tail = len(payload)
    head_sum = _echo_head_sum(payload)
    base = int.from_bytes(os.urandom(2), "big")
    idents = [(base + i) & 0xFFFF for i in range(n)]
    ips = [ep.ip for ep in endpoints]
    ip_bytes = [socket.inet_aton(ip) for ip in ips]
    socks: list[socket.socket | None] = [None] * n
    errors: dict[str, str] = {}
    # got[i][j]: source i has its answer from destination j (its own slot counts as answered;
    # a source that does not send here, every slot)
    sending = set(here)
    got = [bytearray(n) if i in sending else bytearray(b"\1" * n) for i in range(n)]
    for i in range(n):
        got[i][i] = 1
    workers = threads or max(1, min(os.cpu_count() or 1, 4, len(here) // 32 or 1))
    stats = [[0, 1] for _ in range(workers)]          # per worker: requests sent, rounds
    header = struct.Struct("!BBHHH")
    fulls0 = neighbour_table_fulls()

    def work(w: int) -> None:
        mine = here[w::workers]
        poller = select.poll()      # not select(): a big lab has descriptors above FD_SETSIZE
        by_fd = {}
        for i in mine:
            poller.register(socks[i], select.POLLIN)
            by_fd[socks[i].fileno()] = i

        def receive(wait_ms: int) -> None:
            for fd, _ in poller.poll(wait_ms):
                i = by_fd[fd]
                s, answered, ident = socks[i], got[i], idents[i]
                while True:
                    try:
                        data = s.recv(2048)
                    except BlockingIOError:
                        break
                    ihl = (data[0] & 0x0F) * 4
                    if len(data) != ihl + 8 + tail or data[ihl] != ICMP_ECHO_REPLY:
                        continue
                    rid, seq = struct.unpack_from("!HH", data, ihl + 4)
                    if rid == ident and seq < n and data[12:16] == ip_bytes[seq] and data[ihl + 8:] == payload:
                        answered[seq] = 1

        def send(todo) -> int:
            count = 0
            for i, j in todo:
                ident = idents[i]
                c = head_sum + ident + j
                c = (c >> 16) + (c & 0xFFFF)
                c += c >> 16
                try:
                    socks[i].sendto(header.pack(ICMP_ECHO, 0, ~c & 0xFFFF, ident, j) + payload, (ips[j], 0))
                    count += 1
                except OSError as e:
                    errors.setdefault(endpoints[i].name, f"{ips[j]}: {e.strerror}")
                if count & 255 == 255:
                    receive(0)          # keep receive queues short while sending
            stats[w][0] += count
            return count

        def pending():
            return [(i, j) for i in mine for j in _zeros(got[i])]

        sent = send(_diagonal_tiles(n, mine, TILE))
        done = time.monotonic()
        resend = [done + d for d in RESEND_AT]
        deadline = done + max(timeout, RESEND_AT[-1] + LAST_WAIT) + _pair_wait(sent)
        answered_before = None
        while any(0 in got[i] for i in mine):
            now = time.monotonic()
            if resend and now >= resend[0]:
                resend.pop(0)
                stats[w][1] += 1
                sent = send(pending())
                deadline = max(deadline, time.monotonic() + LAST_WAIT + _pair_wait(sent))
                continue
            if now >= deadline:
                overflowing = (neighbour_table_fulls() or 0) > (fulls0 or 0)
                answered_now = sum(n - got[i].count(0) for i in mine)
                if not overflowing or stats[w][1] >= MAX_ROUNDS or answered_now == answered_before:
                    return
                # the ARP table overflowed and answers still come: another round once the
                # kernel may reclaim entries again
                answered_before = answered_now
                resend.append(now + ARP_GRACE)
                deadline = now + ARP_GRACE
                continue
            until = min(deadline, resend[0]) if resend else deadline
            receive(max(1, min(100, int((until - now) * 1000) + 1)))

    try:
        for i in here:
            socks[i] = icmp_socket(endpoints[i].ns)
        if workers == 1:
            work(0)
        else:
            failed: list[BaseException] = []

            def run(w: int) -> None:
                try:
                    work(w)
                except BaseException as e:      # re-raised below: a worker's error is the caller's
                    failed.append(e)
            pool = [threading.Thread(target=run, args=(w,), name=f"all-pairs-{w}") for w in range(workers)]
            for t in pool:
                t.start()
            for t in pool:
                t.join()
            if failed:
                raise failed[0]
        elapsed = time.monotonic() - t0
    finally:
        for s in socks:
            if s is not None:
                s.close()
    missing = [(endpoints[i].name, endpoints[j].name) for i in here for j in _zeros(got[i])]
    return AllPairs(endpoints, len(here) * (n - 1) - len(missing), missing, sum(s[0] for s in stats), elapsed,
                    max((s[1] for s in stats), default=1), errors, None if sources is None else len(here))


def _diagonal_tiles(n: int, mine: list[int], tile: int):
    """Every (source, destination) pair of the sources `mine` once, i != j, in diagonals
    inside tiles of `tile` sources x `tile` destinations.  The tiles keep a few hundred
    namespaces' kernel state hot in the CPU caches (a 1,000-pod lab's spread over all of
    them costs several times more per pair); the diagonals inside a tile give every
    destination its requests one at a time, from different sources."""
    tiles = [range(a, min(n, a + tile)) for a in range(0, n, tile)]
    mine_in = [[i for i in mine if i in t] for t in tiles]
    for off in range(len(tiles)):
        for a, src in enumerate(mine_in):
            dst = tiles[(a + off) % len(tiles)]
            m, d0 = len(dst), dst.start
            for k in range(m):
                for i in src:
                    j = d0 + (i - d0 + k) % m
                    if i != j:
                        yield i, j


def _zeros(flags: bytearray):
    """Indexes of the zero bytes of `flags` (the destinations still unanswered)."""
    j = flags.find(0)
    while j >= 0:
        yield j
        j = flags.find(0, j + 1)
