"""`nslab script` prints every value as exactly one shell word.

validate keeps names and keys to safe characters (tests/errors/script-*, sysctl-*); the
script does not rely on it.  Plans of real topologies get every name-like value (namespace,
device, master, MAC, sysctl key and value, vxlan dev, scope, hosts names, lab name)
replaced twice: by plain markers, and by hostile text full of shell metacharacters.  Both
scripts must tokenize (shlex, with shell operators as separate tokens) to the same
sequence once each marker is read as its hostile text: a value that split into two words,
or ended a quote, a comment or a command, would change the sequence.  `sh -n` must accept
the hostile script.  And the printed removal line, run after the printed script, leaves
nothing behind (root).
"""
from __future__ import annotations

import dataclasses
import itertools
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from nslab import model
from nslab import plan as P
from nslab.compile import compile_topology
from nslab.compile.script import removal, render, render_op

REPO = Path(__file__).resolve().parent.parent.parent
TOPOLOGIES = ["flannel-vxlan.yaml", "spine-leaf-ecmp.yaml", "diy-ipip.yaml", "containers.yaml", "vxlan-3node.yaml"]
GOLDEN = sorted((REPO / "tests" / "golden").glob("*.yaml"))
HOSTILE = "x;touch${IFS}/tmp/p;# 'q' \"d\" `id` $(id) \\ *?[a] ~ & | < > %s {a,b} !"
NEWLINE = HOSTILE + "\nreboot\r\n# "


class Subst:
    """Maps each original value to a marker (and the marker to a hostile text), consistently."""

    def __init__(self, hostile: str | None):
        self.hostile, self.seen, self.counter = hostile, {}, itertools.count()

    def __call__(self, value):
        if value is None:
            return None
        if value not in self.seen:
            marker = f"M{next(self.counter):04d}Z"
            self.seen[value] = marker if self.hostile is None else f"{self.hostile}{marker}"
        return self.seen[value]


def _swap(op, s: Subst):
    """op with its name-like fields replaced (addresses stay: the renderer parses them)."""
    r = dataclasses.replace
    if isinstance(op, P.Netns):
        return op if op.container is not None else r(op, ns=s(op.ns))   # containers.script_lines: H3's
    changes = {"ns": s(op.ns)}
    for field in ("dev", "name", "master", "mac", "lladdr", "key", "value", "node", "scope"):
        if hasattr(op, field) and getattr(op, field) is not None:
            changes[field] = s(getattr(op, field))
    if isinstance(op, P.Route):
        changes["nexthops"] = tuple(r(h, dev=s(h.dev)) for h in op.nexthops)
    if isinstance(op, P.Link):
        if op.peer is not None:
            changes["peer"] = r(op.peer, ns=s(op.peer.ns), name=s(op.peer.name), mac=s(op.peer.mac))
        if op.vxlan:
            changes["vxlan"] = tuple((k, s(v) if k == "dev" and v else v) for k, v in op.vxlan)
    return r(op, **changes)


def _swapped(plan: P.Plan, hostile: str | None) -> P.Plan:
    s = Subst(hostile)
    out = P.Plan(lab=s(plan.lab))
    out.ops = [_swap(op, s) for op in plan.ops]
    out.hosts = {s(name): addr for name, addr in plan.hosts.items()}
    return out


def _tokens(text: str) -> list[str]:
    lex = shlex.shlex(text, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    return list(lex)


def _expected(tokens: list[str], hostile: str) -> list[str]:
    return [re.sub(r"M\d{4}Z", lambda m: hostile + m.group(0), t) for t in tokens]


def _plans():
    for path in [REPO / "topologies" / t for t in TOPOLOGIES] + GOLDEN:
        yield pytest.param(compile_topology(model.load(str(path))), id=path.stem)


@pytest.mark.parametrize("plan", _plans())
def test_every_value_is_one_word(plan):
    benign, hostile = render(_swapped(plan, None)), render(_swapped(plan, HOSTILE))
    assert re.search(r"M\d{4}Z", benign), "the substitution reached nothing"
    assert _tokens(hostile) == _expected(_tokens(benign), HOSTILE)
    check = subprocess.run(["sh", "-n"], input=hostile, capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr


@pytest.mark.parametrize("plan", _plans())
def test_removal_line_is_one_word_per_value(plan):
    benign, hostile = removal(_swapped(plan, None)), removal(_swapped(plan, HOSTILE))
    assert _tokens(hostile) == _expected(_tokens(benign), HOSTILE)
    assert subprocess.run(["sh", "-n"], input=hostile, text=True, timeout=30).returncode == 0


@pytest.mark.parametrize("plan", _plans())
def test_line_breaks_in_values_stay_inside_their_word(plan):
    """A quoted line break is still one word in a command; in a comment it would end the
    comment, so comments fold it away and the removal line refuses to print it."""
    swapped = _swapped(plan, NEWLINE)
    benign = _swapped(plan, None)
    for op, plain in zip(swapped.ops, benign.ops):
        lines, plain_lines = render_op(op), render_op(plain)
        for line, plain_line in zip(lines, plain_lines):
            if plain_line.startswith("#"):
                assert "\n" not in line and "\r" not in line and line.startswith("#")
            else:
                assert _tokens(line) == _expected(_tokens(plain_line), NEWLINE)
    with pytest.raises(ValueError, match="line break"):
        removal(swapped)


def test_sysctl_key_and_value_are_one_word():
    line = render_op(P.Sysctl("lab.h1", "net.x;touch${IFS}/tmp/p;#", "1; reboot"))[0]
    assert shlex.split(line) == ["ip", "netns", "exec", "lab.h1", "sysctl", "-qw",
                                 "net.x;touch${IFS}/tmp/p;#=1; reboot"]


def test_removal_covers_containers_hosts_and_namespaces():
    plan = compile_topology(model.load(str(REPO / "topologies" / "containers.yaml")))
    words = _tokens(removal(plan))
    containers = [f"nslab.{plan.lab}.{op.node}" for op in plan.ops if isinstance(op, P.Netns) and op.container]
    assert containers and words[:3 + len(containers)] == ["docker", "rm", "-f", *containers]
    assert all(ns in words for ns in plan.namespaces)
    assert 'rm -f "/etc/netns/$ns/hosts"; rmdir "/etc/netns/$ns"' in removal(plan)


# --- the printed removal undoes the printed creation (root) --------------------------------

NSLAB = [sys.executable, "-m", "nslab.cli"]


@pytest.mark.root
@pytest.mark.parametrize("topology", ["diy-bridge.yaml", "diy-ip-forward.yaml"])
def test_printed_removal_undoes_the_printed_script(root_unchanged, topology):
    from conftest import unique_lab_name
    lab = unique_lab_name()
    script = subprocess.run(NSLAB + ["script", str(REPO / "topologies" / topology), "--name", lab],
                            capture_output=True, text=True, check=True, timeout=60, cwd=REPO).stdout
    undo = re.search(r"^# to remove it: (.*)$", script, re.M).group(1)
    namespaces = re.findall(r"^ip netns add (\S+)$", script, re.M)
    etc_netns_existed = os.path.isdir("/etc/netns")
    try:
        subprocess.run(["sh", "-e"], input=script, text=True, check=True, capture_output=True, timeout=120)
        assert all(os.path.isfile(f"/etc/netns/{ns}/hosts") for ns in namespaces)
    finally:
        done = subprocess.run(["sh"], input=undo, text=True, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    left = [ns for ns in os.listdir("/run/netns") if ns.startswith(lab + ".")] if os.path.isdir("/run/netns") else []
    left += [p for p in (f"/etc/netns/{ns}" for ns in namespaces) if os.path.lexists(p)]
    assert not left, f"the removal line left {left}"
    if not etc_netns_existed and os.path.isdir("/etc/netns"):
        assert os.listdir("/etc/netns"), "the removal line leaves an /etc/netns it made, empty"
