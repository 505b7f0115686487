"""The cluster DNS server: what the coredns pod of a lab's cluster answers (compile/dns.py
says why it is built so).  One process in the pod's namespace, listening on :53 UDP and TCP
(CoreDNS's `.:53`), named `coredns` in `ps`/`ss -ulpn`, started and supervised by the lab
agent like the tunnel dataplanes (nslab/runtime/agent.py).  Wire format by dnslib.

Answers, as CoreDNS's kubernetes plugin (plugin/kubernetes, ttl 5) gives them for services:
- A  NAME.NAMESPACE.svc.DOMAIN: the service's cluster IP, or a headless service's endpoints;
- PTR of a cluster IP (d.c.b.a.in-addr.arpa): NAME.NAMESPACE.svc.DOMAIN;
- a name that exists with another type, or one of the names above them (svc.DOMAIN,
  NAMESPACE.svc.DOMAIN): NOERROR with no answer (NODATA), the zone's SOA in authority;
- anything else, in the cluster's domain or outside it: NXDOMAIN at once (kubeadm's
  Corefile forwards other names to the node's resolvers; a lab has none to forward to).

Run by hand inside a namespace:
    python3 -m nslab.runtime.dns dns '' domain=cluster.local a=testappds.default=10.111.222.68
"""
from __future__ import annotations

import ctypes
import os
import re
import selectors
import signal
import socket
import struct
import sys
import threading
import time
from ipaddress import IPv4Address

from dnslib import CLASS, PTR, QTYPE, RCODE, RR, SOA, A, DNSError, DNSRecord

from .agent import enter, wait_go

PORT = 53
TTL = 5                        # the kubernetes plugin's default ttl
SOA_TIMERS = (7200, 1800, 86400, TTL)     # refresh, retry, expire, minimum (negative answers)
LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
PR_SET_NAME = 15
_libc = ctypes.CDLL(None, use_errno=True)


class Zone:
    """The names the server knows: {fqdn: [IPs]} for services, PTRs for cluster IPs."""

    def __init__(self, domain: str, services: dict[str, list[str]], headless: set[str] = frozenset()):
        self.domain = domain.lower()
        self.a: dict[str, list[str]] = {}
        self.ptr: dict[str, str] = {}
        self.names = {self.domain, f"svc.{self.domain}"}       # the empty nodes above the records
        for key, ips in services.items():
            name, namespace = key.split(".")
            fqdn = f"{name}.{namespace}.svc.{self.domain}"
            self.a[fqdn] = ips
            self.names |= {fqdn, f"{namespace}.svc.{self.domain}"}
            if key not in headless:
                self.ptr[".".join(reversed(ips[0].split("."))) + ".in-addr.arpa"] = fqdn
        self.soa = RR(self.domain + ".", QTYPE.SOA, CLASS.IN, TTL,
                      SOA(f"ns.dns.{self.domain}.", f"hostmaster.{self.domain}.", (int(time.time()),) + SOA_TIMERS))

    def answer(self, data: bytes) -> bytes | None:
        """The reply to one query message (None: not a query, nothing to answer)."""
        try:
            q = DNSRecord.parse(data)
        except (DNSError, struct.error, IndexError, ValueError):
            return None
        if q.header.qr or not q.questions:
            return None
        reply = q.reply(ra=1, aa=1)
        if q.header.opcode != 0 or len(q.questions) != 1:
            reply.header.rcode = RCODE.NOTIMP if q.header.opcode != 0 else RCODE.FORMERR
            return reply.pack()
        question = q.questions[0]
        name = str(question.qname).rstrip(".").lower()
        qtype = question.qtype
        in_zone = name == self.domain or name.endswith("." + self.domain)
        if name in self.a and qtype in (QTYPE.A, QTYPE.ANY):
            for ip in self.a[name]:
                reply.add_answer(RR(question.qname, QTYPE.A, CLASS.IN, TTL, A(ip)))
        elif name in self.ptr and qtype in (QTYPE.PTR, QTYPE.ANY):
            reply.add_answer(RR(question.qname, QTYPE.PTR, CLASS.IN, TTL, PTR(self.ptr[name] + ".")))
        elif name in self.names or name in self.ptr:
            if in_zone:
                reply.add_auth(self.soa)                            # NODATA
        else:
            reply.header.rcode = RCODE.NXDOMAIN
            if in_zone:
                reply.add_auth(self.soa)
            else:
                reply.header.aa = 0            # not a name of ours to be authoritative about
        return reply.pack()


def parse_config(args: list[str]) -> Zone:
    """domain=D a=NAME.NAMESPACE=IP headless=NAME.NAMESPACE=IP,IP ... (compile/dns.py's
    records), each checked:
    they come from the lab's record, which is input too."""
    domain, services, headless = None, {}, set()
    for arg in args:
        key, _, value = arg.partition("=")
        if key == "domain" and all(LABEL.fullmatch(x) for x in value.split(".")):
            domain = value
        elif key == "address":
            IPv4Address(value)                 # the pod's own: checked, said in the log
        elif key in ("a", "headless") and value.count("=") == 1:
            name, ips = value.split("=")
            parts = name.split(".")
            addresses = ips.split(",")
            if len(parts) != 2 or not all(LABEL.fullmatch(x) for x in parts) or name in services:
                raise ValueError(f"bad service name {name!r}")
            services[name] = [str(IPv4Address(a)) for a in addresses]
            if key == "headless":
                headless.add(name)
        else:
            raise ValueError(f"bad argument {arg!r}")
    if domain is None:
        raise ValueError("no domain=")
    return Zone(domain, services, headless)


def _serve_tcp(zone: Zone, conn: socket.socket) -> None:
    """DNS over TCP (RFC 7766): two-byte length, message; until the client closes."""
    conn.settimeout(5.0)
    try:
        with conn:
            while True:
                head = conn.recv(2, socket.MSG_WAITALL)
                if len(head) < 2:
                    return
                data = conn.recv(struct.unpack("!H", head)[0], socket.MSG_WAITALL)
                out = zone.answer(data)
                if out is None:
                    return
                conn.sendall(struct.pack("!H", len(out)) + out)
    except OSError:
        pass


def main(argv: list[str]) -> int:
    """python3 -m nslab.runtime.dns [--netns NS] [--ready-fd FD] [--go-fd FD] [--run-dir DIR] dns DEV key=value ..."""
    opts = {}
    while argv and argv[0].startswith("--"):
        opts[argv[0][2:]] = argv[1]
        argv = argv[2:]
    if len(argv) < 2 or argv[0] != "dns":
        print(main.__doc__, file=sys.stderr)
        return 2
    if "go-fd" in opts:                  # recorded by the agent before we act
        wait_go(int(opts["go-fd"]), opts.get("run-dir"))
    try:
        zone = parse_config(argv[2:])
    except ValueError as e:
        print(f"refusing to run: {e}", file=sys.stderr)
        return 2
    _libc.prctl(PR_SET_NAME, ctypes.c_char_p(b"coredns"), 0, 0, 0)
    problem = enter(opts["netns"]) if "netns" in opts else None
    if problem:
        print(f"refusing to run: {problem}", file=sys.stderr)
        return 1
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    udp.bind(("0.0.0.0", PORT))
    tcp.bind(("0.0.0.0", PORT))
    tcp.listen(64)
    sel = selectors.DefaultSelector()
    sel.register(udp, selectors.EVENT_READ, "udp")
    sel.register(tcp, selectors.EVENT_READ, "tcp")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"{time.strftime('%H:%M:%S')} dns server pid {os.getpid()}: {len(zone.a)} services in {zone.domain}",
          flush=True)
    if "ready-fd" in opts:
        os.write(int(opts["ready-fd"]), b"ready\n")
        os.close(int(opts["ready-fd"]))
    run_dir = opts.get("run-dir")
    last_check = time.monotonic()
    while True:
        for key, _ in sel.select(timeout=0.5):
            if key.data == "udp":
                try:
                    data, peer = udp.recvfrom(65535)
                except OSError:
                    continue
                out = zone.answer(data)
                if out is not None:
                    try:
                        udp.sendto(out, peer)
                    except OSError:
                        pass
            else:
                try:
                    conn, _ = tcp.accept()
                except OSError:
                    continue
                threading.Thread(target=_serve_tcp, args=(zone, conn), daemon=True).start()
        if time.monotonic() - last_check > 0.5:
            last_check = time.monotonic()
            if run_dir and not os.path.isdir(run_dir):   # the lab is gone: never outlive it
                return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
