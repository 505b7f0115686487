"""Link conditions end to end through the CLI: declared in a topology (`conditions:`), changed
with `nslab link set/clear`, read back with `link show` and `show`, measured with iperf3; on
a kernel without netem (this machine) delay/loss are refused with one sentence and nothing
is made, unless --without-netem.  The netem figures (ping RTT, loss) are in
tests/integration/test_netem.py, run on a stock kernel by the VM stage."""
from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from nslab.apply.qdisc import netem_available
from tests.conftest import TIMEOUT_SCALE, installed, nslab, unique_lab_name

@pytest.fixture(autouse=True)
def _tools():
    installed("iperf3")

# One link at 50 Mbit/s both ways.  TCP goodput is 1448 of each 1514-byte frame: 47.8.
RATE = """
hosts: [a, b]
links:
  - ends: [{node: a, ip: 10.0.0.1/24}, {node: b, ip: 10.0.0.2/24}]
    conditions: {rate: 50mbit}
"""
DELAY = """
hosts: [a, b]
links:
  - ends: [a, b]
    conditions: {rate: 20mbit, delay: 20ms}
"""


def iperf3_mbit(lab, client: str, server: str, address: str, seconds: int = 3) -> float:
    """TCP goodput client -> server as the server received it, in Mbit/s."""
    srv = lab.popen(server, "iperf3", "-s", "-1", "-B", address, stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10 * TIMEOUT_SCALE
        while True:
            proc = subprocess.run(["ip", "netns", "exec", lab.ns(client), "iperf3", "-c", address, "-t",
                                   str(seconds), "-J"], capture_output=True, text=True,
                                  timeout=(seconds + 30) * TIMEOUT_SCALE)
            try:
                result = json.loads(proc.stdout)
            except ValueError:
                result = {"error": proc.stderr}
            error = result.get("error")       # iperf3 -J exits 0 even when it could not connect
            if not error:
                break
            assert time.monotonic() < deadline and "refused" in error, proc.stdout[-2000:]
            time.sleep(0.2)
        return result["end"]["sum_received"]["bits_per_second"] / 1e6
    finally:
        if srv.poll() is None:
            srv.kill()
        srv.wait(timeout=10)


def test_declared_rate_measured_changed_and_cleared(lab_factory):
    lab = lab_factory(RATE)
    ab = iperf3_mbit(lab, "a", "b", "10.0.0.2")
    ba = iperf3_mbit(lab, "b", "a", "10.0.0.1")
    print(f"declared 50mbit: a->b {ab:.1f} Mbit/s, b->a {ba:.1f} Mbit/s")
    assert 45 <= ab <= 55 and 45 <= ba <= 55, (ab, ba)       # within 10 % of 50, both directions

    shown = lab.nslab("link", "show", "-l", lab.name, "--json", check=True)
    rows = {f"{r['node']}:{r['iface']}": r for r in json.loads(shown.stdout)}
    assert rows["a:eth0"]["kind"] == rows["b:eth0"]["kind"] == "tbf"
    assert rows["a:eth0"]["conditions"] == "rate 50Mbit burst 32Kb", rows
    assert "conditions rate 50Mbit" in lab.nslab("show", "-l", lab.name, "a", check=True).stdout

    # at runtime, one end: a -> b slows to 20, b -> a keeps 50; recorded with the lab
    assert lab.nslab("link", "set", "-l", lab.name, "a:eth0", "--rate", "20mbit", check=True).stdout.strip() \
        == "a:eth0: rate 20Mbit"
    ab = iperf3_mbit(lab, "a", "b", "10.0.0.2")
    print(f"link set a:eth0 --rate 20mbit: a->b {ab:.1f} Mbit/s")
    assert 18 <= ab <= 22, ab
    assert lab.state["info"]["_conditions"] == {"a:eth0": {"rate": "20Mbit"}}
    assert "a\u2192 rate 20Mbit; b\u2192 rate 50Mbit" in lab.nslab("graph", "-l", lab.name, check=True).stdout
    out = subprocess.run(["ip", "netns", "exec", lab.ns("a"), "tc", "qdisc", "show", "dev", "eth0"],
                         capture_output=True, text=True, check=True).stdout
    assert "tbf" in out and "rate 20Mbit" in out, out              # tc(8) reads what nslab set

    assert lab.nslab("link", "clear", "-l", lab.name, "a:eth0", check=True).returncode == 0
    ab = iperf3_mbit(lab, "a", "b", "10.0.0.2")
    print(f"link clear a:eth0: a->b {ab:.1f} Mbit/s")
    assert ab > 100, ab
    assert json.loads(lab.nslab("link", "show", "-l", lab.name, "a:eth0", "--json", check=True).stdout) == \
        [{"node": "a", "iface": "eth0", "kind": "noqueue", "conditions": ""}]
    assert lab.state["info"]["_conditions"] == {"a:eth0": {}}


def test_link_set_refuses_bad_values_and_targets(lab_factory):
    lab = lab_factory(RATE)
    for args, words in ((["a:eth0", "--rate", "10mbs"], "unknown unit 'mbs'"),
                        (["a:eth9", "--rate", "1mbit"], "no interface 'eth9'"),
                        (["nosuch:eth0", "--rate", "1mbit"], "no node 'nosuch'"),
                        (["a", "--rate", "1mbit"], "is not NODE:IFACE"),
                        (["a:eth0"], "say what to set")):
        proc = lab.nslab("link", "set", "-l", lab.name, *args)
        assert proc.returncode == 2 and words in proc.stderr and proc.stderr.count("\n") == 1, (args, proc.stderr)
    assert "rate 50Mbit" in lab.nslab("link", "show", "-l", lab.name, "a:eth0", check=True).stdout


@pytest.mark.skipif(netem_available(), reason="this kernel has netem (the refusal is for kernels without it)")
def test_without_netem_up_refuses_in_one_sentence_and_makes_nothing(tmp_path, root_unchanged):
    topo = tmp_path / "delay.yaml"
    topo.write_text(DELAY)
    name = unique_lab_name()
    assert nslab("validate", str(topo)).returncode == 0               # the file is fine
    proc = nslab("up", str(topo), "--name", name)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "no netem qdisc" in proc.stderr and "--without-netem" in proc.stderr
    assert not [ns for ns in os.listdir("/run/netns") if ns.startswith(name + ".")]
    assert not os.path.exists(f"/run/nslab/{name}")

    proc = nslab("up", str(topo), "--name", name, "--without-netem")
    try:
        assert proc.returncode == 0, proc.stderr
        assert "note: this kernel has no netem qdisc: delay, jitter and loss left out on 2 interface(s)" in proc.stdout
        shown = json.loads(nslab("link", "show", "-l", name, "--json", check=True).stdout)
        assert {r["conditions"] for r in shown} == {"rate 20Mbit burst 32Kb"}, shown   # the rate is kept
        proc = nslab("link", "set", "-l", name, "a:eth0", "--loss", "5%")
        assert proc.returncode == 2 and "no netem qdisc" in proc.stderr, proc.stderr
        assert "rate 20Mbit" in nslab("link", "show", "-l", name, "a:eth0", check=True).stdout   # unchanged
        proc = nslab("link", "set", "-l", name, "a:eth0", "--loss", "5%", "--rate", "5mbit", "--without-netem",
                     check=True)
        assert "left out on a:eth0" in proc.stdout and "a:eth0: rate 5Mbit" in proc.stdout
    finally:
        nslab("down", name, check=True)


@pytest.mark.skipif(netem_available(), reason="this kernel has netem (the refusal is for kernels without it)")
def test_the_api_takes_without_netem_as_the_cli_does(tmp_path, root_unchanged):
    from nslab import Lab
    from nslab.errors import NslabError
    topo = tmp_path / "delay.yaml"
    topo.write_text(DELAY)
    name = unique_lab_name()
    with pytest.raises(NslabError, match="no netem qdisc"):
        Lab.up(str(topo), name=name)
    lab = Lab.up(str(topo), name=name, without_netem=True)
    try:
        shown = json.loads(nslab("link", "show", "-l", name, "--json", check=True).stdout)
        assert {r["conditions"] for r in shown} == {"rate 20Mbit burst 32Kb"}, shown
    finally:
        lab.down()
