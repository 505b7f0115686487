"""A running lab as a Python object: what tests (ours and users') drive.

    lab = Lab.up("topologies/spine-leaf.yaml", name="t1")
    assert lab.ping("client", "web-worker3").ok
    with lab.capture("worker1", "enp0s3", "udp port 4789") as cap:
        lab.ping("client", "web-worker3")
    assert lab.test().ok                 # the topology's own tests: section
    lab.down()

The pytest plugin (nslab/pytest_plugin.py) hands tests such an object.
"""
from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from ipaddress import IPv4Address

from . import lab as labmod
from . import state
from .observe import checks, probe, trace
from .observe.capture import Capture


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
    def up(cls, file: str, name: str | None = None, backend: str | None = None) -> "Lab":
        overrides = {"backend": backend} if backend else None
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
        uts = labmod.uts_path(state.lab_dir(self.name), node)
        enter = ["nsenter", f"--uts={uts}"] if os.path.ismount(uts) else []
        return subprocess.run([*enter, "ip", "netns", "exec", self.ns(node), *argv], capture_output=True, text=True,
                              timeout=timeout, check=check)

    def ping(self, src: str, dst: str, count: int = 1, size: int | None = None, dont_fragment: bool = False,
             timeout: float = 2) -> PingResult:
        argv = ["ping", "-n", "-c", str(count), "-W", str(timeout), "-i", "0.2"]
        if size is not None:
            argv += ["-s", str(size)]
        if dont_fragment:
            argv += ["-M", "do"]
        r = self.exec(src, *argv, self.address(dst), timeout=timeout * count + 5)
        return PingResult(ok=r.returncode == 0, output=r.stdout + r.stderr, returncode=r.returncode)

    def http_get(self, src: str, dst: str, port: int = 80, timeout: float = 3) -> subprocess.CompletedProcess:
        return self.exec(src, "curl", "-s", "-m", str(timeout), f"http://{self.address(dst)}:{port}/",
                         timeout=timeout + 5)

    def tcp(self, src: str, dst: str, port: int, timeout: float = 1.0) -> "probe.Outcome":
        """A TCP connect from src to dst:port (in-process, no fork); .ok, .detail."""
        return probe.tcp(self.ns(src), self.address(dst), port, b"nslab-api", timeout)

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
