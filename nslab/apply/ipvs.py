"""kube-proxy's ipvs mode inside one lab namespace: load IPVS servers (`ipvsadm-restore`)
and ipsets (`ipset restore`), read the IPVS table back.

One process per namespace and call, as for iptables-restore (iptables.run: nsenter on a
checked descriptor of the lab namespace, then the tool).  IPVS keeps its virtual servers,
and the kernel its ipsets, per network namespace: they go with the namespace at teardown;
the plan that holds the texts is recorded before it is applied.
"""
from __future__ import annotations

import re

from ..errors import NslabError
from .iptables import load, run

SERVERS = ("ipvsadm-restore",)
SETS = ("ipset", "restore")


def apply_servers(ns: str, *texts: str, timeout: float | None = None) -> None:
    """Load ipvsadm-restore texts (concatenated) into namespace `ns` with one process."""
    loaded = load(ns, SERVERS, texts, timeout)
    if loaded and loaded[1].returncode != 0:
        raise NslabError(f"ipvsadm-restore in {ns} failed: {_first(loaded[1].stderr)}")


def apply_sets(ns: str, *texts: str, timeout: float | None = None) -> None:
    """Load `ipset restore` texts (concatenated) into namespace `ns` with one process."""
    loaded = load(ns, SETS, texts, timeout)
    if loaded and loaded[1].returncode != 0:
        raise NslabError(f"ipset restore in {ns} failed: {_first(loaded[1].stderr)}")


def _first(stderr: str) -> str:
    return " ".join((stderr.strip().splitlines() or ["no message"])[0].split())


# `ipvsadm -Ln` lines: "TCP  10.96.0.80:8080 rr" and "  -> 10.244.1.2:80   Masq  1  0  0"
_VS = re.compile(r"(TCP|UDP|SCTP)\s+(\S+):(\d+)\s+(\S+)")
_RS = re.compile(r"\s+->\s+(\S+):(\d+)\s+(\w+)\s+(\d+)\s+(\d+)\s+(\d+)")


def servers(ns: str, timeout: float = 30) -> dict[tuple[str, str, int], dict]:
    """`ipvsadm -Ln` in `ns`: {(protocol, vip, port): {"scheduler": "rr", "reals": [{ip, port,
    forward, weight, active, inactive}, ...]}} (real servers in the kernel's order)."""
    proc = run(ns, ("ipvsadm", "-Ln"), timeout=timeout)
    if proc.returncode != 0:
        raise NslabError(f"ipvsadm -Ln in {ns} failed: {_first(proc.stderr)}")
    out: dict = {}
    current = None
    for line in proc.stdout.splitlines():
        m = _VS.match(line)
        if m:
            current = out.setdefault((m.group(1), m.group(2), int(m.group(3))),
                                     {"scheduler": m.group(4), "reals": []})["reals"]
            continue
        m = _RS.match(line)
        if m and current is not None:
            current.append({"ip": m.group(1), "port": int(m.group(2)), "forward": m.group(3),
                            "weight": int(m.group(4)), "active": int(m.group(5)), "inactive": int(m.group(6))})
    return out
