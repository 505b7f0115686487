"""Interface indexes are unique across a lab (issue 11): apply picks them from one counter for
every namespace, as one host's kernel would, so a veth's `@ifN` names its peer and never
collides with a device of its own namespace."""
from __future__ import annotations

import json
import re
import subprocess

import pytest

pytestmark = pytest.mark.root


def links(lab, node) -> list[dict]:
    out = subprocess.run(["ip", "-n", lab.ns(node), "-j", "link", "show"], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_spine_leaf_bridge_ports_name_their_peer_index(lab_factory):
    """Note 003: `bridge link show` prints `vethXXXX@if3`; before, the peer's index was the
    one of the worker's own underlay (index 2 in both), and iproute2 printed `@enp0s3`."""
    lab = lab_factory("spine-leaf.yaml")
    shown = subprocess.run(["ip", "netns", "exec", lab.ns("worker1"), "bridge", "link", "show"],
                           capture_output=True, text=True, check=True).stdout
    ports = re.findall(r"^\d+: (veth[0-9a-f]+)@(\S+):", shown, re.M)
    assert ports, shown
    assert all(re.fullmatch(r"if\d+", peer) for _, peer in ports), shown


def test_every_index_of_the_lab_is_unique(lab_factory):
    lab = lab_factory("spine-leaf.yaml")
    seen: dict[int, str] = {}
    for node in lab.state["nodes"]:
        for link in links(lab, node):
            if link["ifname"] == "lo":
                continue
            where = f"{node}:{link['ifname']}"
            assert link["ifindex"] not in seen, f"{where} and {seen.get(link['ifindex'])} share index {link['ifindex']}"
            seen[link["ifindex"]] = where
    assert len(seen) > 20
