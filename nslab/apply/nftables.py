"""nftables inside one lab namespace: load `nft -f` text, read a table back.

One process per namespace and call, as for iptables-restore (iptables.run: nsenter on a
checked descriptor of the lab namespace, then nft): `nft -f -` reads the whole text and
commits it as one netlink transaction, so a node's tables appear complete or not at all,
never one object at a time.  The tables live in the lab's namespaces and go with them; the
plan that holds the text is recorded before it is applied.
"""
from __future__ import annotations

import json
import re

from ..errors import NslabError
from .iptables import load, run

LOAD = ("nft", "-f", "-")


def apply(ns: str, *texts: str, timeout: float | None = None) -> None:
    """Load the texts (concatenated) into namespace `ns` with one `nft -f -`: one transaction."""
    loaded = load(ns, LOAD, texts, timeout)
    if loaded and loaded[1].returncode != 0:
        raise NslabError(f"nft -f in {ns} failed: {_explain(loaded[1].stderr)}")


def _explain(stderr: str) -> str:
    """nft names the failing line (`/dev/stdin:12:5-9: Error: ...`); its first error line."""
    lines = [line for line in stderr.splitlines() if "Error" in line]
    return " ".join((lines[0] if lines else stderr).split()) or "no message"


def table(ns: str, name: str, family: str = "ip", timeout: float = 30) -> list[dict] | None:
    """`nft -j list table FAMILY NAME` in `ns`: its JSON objects (chains, rules, sets, maps
    with their elements), or None where the namespace has no such table."""
    if not re.fullmatch(r"[A-Za-z_.][A-Za-z0-9_./-]*", name) or family not in ("ip", "ip6", "inet"):
        raise ValueError(f"not an nftables table: {family} {name!r}")
    proc = run(ns, ("nft", "-j", "list", "table", family, name), timeout=timeout)
    if proc.returncode != 0:
        if "No such file or directory" in proc.stderr:
            return None
        raise NslabError(f"nft list table {family} {name} in {ns} failed: {' '.join(proc.stderr.split())}")
    return json.loads(proc.stdout).get("nftables", [])
