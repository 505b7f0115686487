"""A running lab as a Python object: what tests (ours and users') drive.

    lab = Lab.up("topologies/spine-leaf.yaml", name="t1")
    assert lab.ping("client", "web-worker3").ok
    with lab.capture("worker1", "enp0s3", "udp port 4789") as cap:
        lab.ping("client", "web-worker3")
    assert lab.test().ok                 # the topology's own tests: section
    lab.down()

The pytest plugin (nslab/pytest_plugin.py) hands tests such an object.

Probes (ping, tcp, http_get, udp) go through nslab's one probe engine (observe/probe.py):
sockets opened inside the source's namespace by this process, no `ping` or `curl` forked.
What that changed, against the ping/curl these methods forked before:
- ping: stops at the first reply (ping -c N sent all N); .output is the engine's one line
  (`echo reply from 10.1.1.3 in 0.05 ms, ttl=64`, not ping's text; `.ttl` reads it the
  same way); a send the kernel refuses reads `ping: local error: message too long (...)`,
  returncode 2 as ping's, no reply 1.
- http_get: an HTTP/1.0 GET, the body as stdout; returncodes as curl's (0, 7, 28).
"""
from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from ipaddress import IPv4Address

from . import lab as labmod
from . import state
from .observe import checks, probe, trace
from .observe.capture import Capture
from . import spawn


@dataclass
class PingResult:
    ok: bool
    output: str
    returncode: int

    @property
    def ttl(self) -> int | None:
        m = re.search(r"ttl=(\d+)", self.output)
        return int(m.group(1)) if m else None


class Lab:
    def __init__(self, name: str, topo=None, plan=None):
        self.name, self.topo, self.plan = name, topo, plan

    @classmethod
    def up(cls, file: str, name: str | None = None, backend: str | None = None,
           without_netem: bool = False, proxy_mode: str | None = None) -> "Lab":
        """As `nslab up FILE [--name] [--backend] [--without-netem] [--proxy-mode]`; FILE may
        also be a bundled topology's name or a generated fabric's shape (`clos:2,4,10`)."""
        overrides = {k: v for k, v in (("backend", backend), ("proxy_mode", proxy_mode)) if v} or None
        if without_netem:
            overrides = {**(overrides or {}), "without_netem": True}
        topo = labmod.load(file, name=name, overrides=overrides)
        plan, _ = labmod.up(topo, overrides)
        return cls(topo.name, topo, plan)

    @classmethod
    def attach(cls, name: str) -> "Lab":
        """A lab that is already running (brought up by `nslab up` or another process): its
        topology and plan as built, from its record (not its file, which may have changed)."""
        return cls(name, labmod.topology(name), labmod.applied_plan(name))

    def down(self) -> list[str]:
        return labmod.down(self.name)

    # ---- node lookups ---------------------------------------------------------------------
    @property
    def nodes(self) -> dict:
        """name -> nslab.model.Node (kind, ns, ifaces, routes, addresses)."""
        return self.topo.nodes

    def node(self, name: str):
        if name not in self.topo.nodes:
            raise KeyError(f"lab {self.name} has no node {name!r} (nodes: {', '.join(self.topo.nodes)})")
        return self.topo.nodes[name]

    def names(self, kind: str) -> list[str]:
        """Node names of one kind: host, router, switch or pod."""
        return [n.name for n in self.topo.nodes.values() if n.kind == kind]

    @property
    def pods(self) -> list[str]:
        return self.names("pod")

    @property
    def hosts(self) -> list[str]:
        return self.names("host")

    @property
    def routers(self) -> list[str]:
        return self.names("router")

    @property
    def state(self) -> state.LabState:
        return state.load(self.name)

    def ns(self, node: str) -> str:
        return labmod.node_namespace(self.name, node)

    def address(self, name_or_ip: str) -> str:
        """A node's address (its first), or the address given."""
        try:
            return str(IPv4Address(name_or_ip))
        except ValueError:
            addr = self.topo.address_of(name_or_ip) if self.topo else None
            if addr is None:
                raise KeyError(f"lab {self.name} has no addressed node {name_or_ip!r}")
            return str(addr)

    def exec(self, node: str, *argv: str, timeout: float = 30, check: bool = False) -> subprocess.CompletedProcess:
        """argv in the node, as `nslab exec` runs it (its network namespace and hostname)."""
        uts = labmod.uts_of(self.name, node)
        enter = [spawn.need("nsenter"), f"--uts={uts}"] if uts else []      # the user's command: their env
        return subprocess.run([*enter, spawn.need("ip"), "netns", "exec", self.ns(node), *argv], capture_output=True,
                              text=True, timeout=timeout, check=check)

    def ping(self, src: str, dst: str, count: int = 1, size: int | None = None, dont_fragment: bool = False,
             timeout: float = 2) -> PingResult:
        """Echo requests from src to dst (observe/probe.ping, in-process): up to `count`, one
        every `timeout` s, until one is answered.  size: ICMP payload bytes (ping -s, default
        56); dont_fragment: DF set (ping -M do).  .ok, .ttl of the reply, .output one line."""
        size = 56 if size is None else size
        payload = probe.marker_payload(size)[:size]         # exactly `size` bytes, as ping -s
        out = probe.ping(self.ns(src), self.address(dst), payload, timeout * count, max(count, 1), dont_fragment)
        if out.error:                           # as ping says it, exit status 2
            return PingResult(False, f"ping: local error: {out.error.lower()} ({out.detail})", 2)
        return PingResult(out.ok, out.detail, 0 if out.ok else 1)

    def http_get(self, src: str, dst: str, port: int = 80, timeout: float = 3,
                 path: str = "/") -> subprocess.CompletedProcess:
        """HTTP/1.0 GET from src (observe/probe.http, in-process), shaped as `curl -s` ran:
        returncode 0 once any response came (also a 404), 7 refused or unreachable, 28 timed out;
        stdout the body, stderr the probe's one line when it failed."""
        url = f"http://{self.address(dst)}:{port}{path}"
        out = probe.http(self.ns(src), self.address(dst), port, probe.new_marker("api"), timeout, path)
        head, sep, body = out.reply.partition(b"\r\n\r\n")
        if out.reply.startswith(b"HTTP/"):
            code = 0
        else:
            code = 28 if out.detail.endswith("timed out") else 7
        return subprocess.CompletedProcess(["GET", url], code, body.decode(errors="replace") if sep else "",
                                           "" if code == 0 else out.detail)

    def tcp(self, src: str, dst: str, port: int, timeout: float = 1.0) -> "probe.Outcome":
        """A TCP connect from src to dst:port (in-process, no fork); .ok, .detail."""
        return probe.tcp(self.ns(src), self.address(dst), port, probe.new_marker("api"), timeout)

    def udp(self, src: str, dst: str, port: int, timeout: float = 1.0) -> "probe.Outcome":
        """A datagram from src to dst:port, answered by something listening there (.ok,
        .reply), or refused by an ICMP port unreachable (.refused), or not at all."""
        return probe.udp(self.ns(src), self.address(dst), port, probe.new_marker("api"), timeout)

    def test(self, all_pairs: bool = False, hosts: bool = False) -> "checks.Report":
        """Run the topology's tests: section (or every pod pair); .ok, .results, str() for a summary."""
        return checks.run_all_pairs(self.topo, hosts) if all_pairs else checks.run(self.topo)

    def trace(self, src: str, dst: str, proto: str = "icmp", port: int | None = None, ttl: int | None = None,
              timeout: float = 1.0) -> dict:
        """One probe's path hop by hop, as `nslab trace --json` prints it."""
        return trace.trace(self.name, src, dst, proto, port, ttl, timeout)

    def capture(self, node: str, iface: str | None = None, bpf: str = "", **kw) -> Capture:
        """A capture on node:iface (default: the cluster underlay interface, else eth0)."""
        if iface is None:
            cluster = self.topo.cluster if self.topo else None
            iface = cluster.iface if cluster and node in cluster.nodes else "eth0"
        return Capture(self.ns(node), iface, bpf, **kw)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.down()
