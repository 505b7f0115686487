"""Delay and loss on real packets: netem, which Debian's stock kernel has and this project's
development machines lack.  Marked stock_kernel: skipped without netem, run by the VM stage
(tests/vm/run) on the stock kernel under qemu.  Kept short: TCG runs ~20x slower."""
from __future__ import annotations

import re
import statistics
import subprocess

import pytest

from tests.conftest import TIMEOUT_SCALE

pytestmark = [pytest.mark.stock_kernel, pytest.mark.root]

# a's end delays what a sends by 20 ms; b's end is not shaped: ping's round trip is 20 ms
# plus the lab's own (a fraction of a ms; a few under TCG).
DELAY = """
hosts: [a, b]
links:
  - ends: [{node: a, ip: 10.0.0.1/24, conditions: {delay: 20ms}}, {node: b, ip: 10.0.0.2/24}]
"""
# flannel vxlan across one segment; `link set` delays what master sends on its underlay.
VXLAN = """
segments:
  lan: {subnet: 192.168.56.0/24}
cluster:
  network: 10.244.0.0/16
  iface: ens33
  backend: {type: vxlan, vni: 1, port: 8472}
  nodes:
    master: {segment: lan, ip: 192.168.56.133}
    node1: {segment: lan, ip: 192.168.56.134}
  pods:
    client: {node: master, ip: 10.244.0.5}
    nginx: {node: node1, ip: 10.244.1.6}
"""


def ping(lab, node: str, address: str, *args: str) -> str:
    proc = subprocess.run(["ip", "netns", "exec", lab.ns(node), "ping", "-n", *args, address],
                          capture_output=True, text=True, timeout=120 * TIMEOUT_SCALE)
    assert "packet loss" in proc.stdout, proc.stdout + proc.stderr
    return proc.stdout


def rtt_ms(out: str) -> tuple[float, float, float]:
    """(min, median, max) of the replies' times: the median, as the emulated guest (TCG)
    now and then stalls a reply by tens of ms, which an average would carry."""
    times = sorted(float(t) for t in re.findall(r"time=([\d.]+) ms", out))
    assert times, out
    return times[0], statistics.median(times), times[-1]


def loss_percent(out: str) -> float:
    return float(re.search(r"([\d.]+)% packet loss", out).group(1))


def test_delay_and_loss_on_real_pings(lab_factory):
    lab = lab_factory(DELAY)
    ping(lab, "a", "10.0.0.2", "-c", "3", "-i", "0.2")        # ARP resolved before measuring
    lo, median, hi = rtt_ms(ping(lab, "a", "10.0.0.2", "-c", "20", "-i", "0.1"))
    print(f"ping through a 20 ms link end: rtt min/median/max {lo}/{median}/{hi} ms")
    assert 20 <= lo and median <= 25, (lo, median, hi)
    shown = lab.nslab("link", "show", "-l", lab.name, "a:eth0", check=True).stdout
    assert "netem" in shown and "delay 20ms" in shown, shown

    # at runtime: 10 % loss instead of the delay (clear, then set), 1,000 pings at 10 ms
    lab.nslab("link", "clear", "-l", lab.name, "a:eth0", check=True)
    lab.nslab("link", "set", "-l", lab.name, "a:eth0", "--loss", "10%", check=True)
    assert "loss 10%" in lab.nslab("link", "show", "-l", lab.name, "a:eth0", check=True).stdout
    lost = loss_percent(ping(lab, "a", "10.0.0.2", "-q", "-c", "1000", "-i", "0.01", "-W", "2"))
    print(f"1,000 pings through a 10 % loss link end: {lost}% lost")
    assert 5 <= lost <= 15, lost


def test_vxlan_underlay_delay_shows_in_pod_to_pod_traffic(lab_factory):
    # Against the same path unshaped: pod to pod over vxlan costs several ms under TCG.
    lab = lab_factory(VXLAN)
    ping(lab, "client", "10.244.1.6", "-c", "3", "-i", "0.2")
    base = rtt_ms(ping(lab, "client", "10.244.1.6", "-c", "10", "-i", "0.1"))
    lab.nslab("link", "set", "-l", lab.name, "master:ens33", "--delay", "20ms", check=True)
    shaped = rtt_ms(ping(lab, "client", "10.244.1.6", "-c", "10", "-i", "0.1"))
    print(f"pod to pod over vxlan: rtt min/median/max {base} ms; with 20 ms on master's underlay {shaped} ms")
    assert 19 <= shaped[0] - base[0] <= 35, (base, shaped)
    shown = lab.nslab("show", "-l", lab.name, "master", check=True).stdout
    assert "conditions delay 20ms" in shown, shown
