"""A running lab as a Python object: what tests (ours and users') drive.

    lab = Lab.up("topologies/spine-leaf.yaml", name="t1")
    assert lab.ping("client", "web-worker3").ok
    with lab.capture("worker1", "enp0s3", "udp port 4789") as cap:
        lab.ping("client", "web-worker3")
    lab.down()
"""
from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from ipaddress import IPv4Address

from . import lab as labmod
from . import state
from .capture import Capture


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

    def down(self) -> list[str]:
        return labmod.down(self.name)

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
        return subprocess.run(["ip", "netns", "exec", self.ns(node), *argv], capture_output=True, text=True,
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
