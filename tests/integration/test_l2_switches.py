"""Mininet's L2 switches for real: `nslab generate linear:3` and `tree:2,2` up, a ping from
the first host to the last arrives with ttl 64 (bridges do not route), every pair of hosts
reaches every other, trace walks through the bridges, a switch added to the running lab
joins the domain (converge), and down leaves nothing.  Unique lab names from conftest.
"""
from __future__ import annotations

import json
import re

import pytest

from conftest import unique_lab_name
from test_generate_up import down_clean, generate, run_tests


def ping_ttl(lab, src: str, dst: str) -> int:
    proc = lab.exec(src, "ping", "-c1", "-W5", dst)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return int(re.search(r"ttl=(\d+)", proc.stdout).group(1))


def all_pairs(lab) -> dict:
    proc = lab.nslab("test", "-l", lab.name, "--all-pairs", "--hosts", "--json", timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] and report["failed"] == 0, report
    return report


@pytest.mark.parametrize("shape,first,last,switches", [
    ("linear:3", "h1", "h3", ["s1", "s2", "s3"]),
    ("tree:2,2", "h1", "h4", ["s2", "s1", "s3"]),
])
def test_mininet_shape_is_one_l2_domain(tmp_path, lab_factory, root_unchanged, shape, first, last, switches):
    name = unique_lab_name()
    lab = lab_factory(generate(tmp_path, shape, name), name=name)
    run_tests(lab)                                      # the file's own tests: ttl 64 both ways
    assert ping_ttl(lab, first, last) == 64
    assert ping_ttl(lab, last, first) == 64
    report = all_pairs(lab)
    n = 3 if shape == "linear:3" else 4
    assert f"{n * (n - 1)}/{n * (n - 1)} reachable" in report["results"][0]["observed"], report
    # trace: the request crosses the bridges in order, never a router
    proc = lab.nslab("trace", "-l", name, first, last, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    path = next(line for line in proc.stdout.splitlines() if line.strip().startswith(f"{first}(eth0) ->"))
    assert [hop.split("(")[0].strip() for hop in path.split("->")][1:-1] == switches, path
    assert "ttl 64" in proc.stdout and "ttl 63" not in proc.stdout
    # each join is a port of both bridges, seen by the kernel
    ports = lab.exec(switches[1], "ip", "-o", "link", "show", "master", "br0", check=True).stdout
    assert f" {switches[0]}@" in ports and f" {switches[2]}@" in ports, ports
    down_clean(lab)


def test_a_switch_joined_to_a_running_lab(tmp_path, lab_factory, root_unchanged):
    """Converge: a new switch with a host, joined to the chain's end, gets the next address
    of the domain and is reached with ttl 64; then removed again."""
    name = unique_lab_name()
    path = generate(tmp_path, "linear:3", name)
    lab = lab_factory(path, name=name)
    text = open(path, encoding="utf-8").read()
    grown = text.replace("hosts: [h1, h2, h3]", "hosts: [h1, h2, h3, h4]") \
        .replace("\ntests:\n", "\n  s4:\n    members: [h4, s3]\ntests:\n")
    with open(path, "w", encoding="utf-8") as f:
        f.write(grown)
    lab.nslab("up", "-q", path, "--name", name, check=True)
    assert ping_ttl(lab, "h1", "h4") == 64
    addr = lab.exec("h4", "ip", "-o", "-4", "addr", "show", "dev", "eth0", check=True).stdout
    assert " 10.0.0.4/24 " in addr, addr
    all_pairs(lab)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    lab.nslab("up", "-q", path, "--name", name, check=True)
    assert set(lab.state["nodes"]) == {"h1", "h2", "h3", "s1", "s2", "s3"}
    assert ping_ttl(lab, "h1", "h3") == 64
    down_clean(lab)
