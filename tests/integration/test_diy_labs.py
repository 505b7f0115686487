"""Note 003's DIY labs, built for real and checked the way the note checks them."""
from __future__ import annotations

import re
import subprocess

import pytest

pytestmark = pytest.mark.root


def mac_of(lab, node, iface) -> str:
    return lab.exec(node, "cat", f"/sys/class/net/{iface}/address", check=True).stdout.strip()


def ping(lab, node, dst, count=1):
    proc = lab.exec(node, "ping", "-c", str(count), "-W", "2", dst, timeout=20)
    assert proc.returncode == 0, f"ping {dst} from {node} failed:\n{proc.stdout}{proc.stderr}"
    return proc.stdout


def test_diy_veth_ping_and_peer_ifindex(lab_factory):
    lab = lab_factory("diy-veth.yaml")
    out = ping(lab, "ns1", "10.1.1.3")
    assert re.search(r"from 10\.1\.1\.3: icmp_seq=1 ttl=64 ", out), out
    stats = lab.exec("ns1", "ethtool", "-S", "veth0", check=True).stdout
    m = re.search(r"peer_ifindex: (\d+)", stats)
    assert m, stats
    ifindex = lab.exec("ns2", "cat", "/sys/class/net/veth1/ifindex", check=True).stdout.strip()
    assert m.group(1) == ifindex
    # indexes are unique across the lab: the two ends differ, so peer_ifindex names one end only
    own = lab.exec("ns1", "cat", "/sys/class/net/veth0/ifindex", check=True).stdout.strip()
    assert own != ifindex


def test_diy_bridge_ping_and_learned_macs(lab_factory):
    lab = lab_factory("diy-bridge.yaml")
    ping(lab, "ns1", "10.1.1.3")
    mac1, mac2 = mac_of(lab, "ns1", "veth0"), mac_of(lab, "ns2", "veth1")
    fdb = lab.exec("br0", "bridge", "fdb", "show", "br", "br0", check=True).stdout
    assert re.search(rf"^{mac1} dev br-veth0 master br0\s*$", fdb, re.M), fdb
    assert re.search(rf"^{mac2} dev br-veth1 master br0\s*$", fdb, re.M), fdb


def start_capture(lab, node, iface, count, bpf=()):
    """tcpdump -l -c COUNT, returned once it is listening."""
    proc = lab.popen(node, "tcpdump", "-l", "-n", "-e", "-i", iface, "-c", count, *bpf,
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Plain readline, not select(): after one readline() the second line may already sit in
    # Python's buffer, where select() on the pipe would never see it.  EOF ends the loop
    # if tcpdump dies.
    seen = ""
    for line in proc.stderr:
        seen += line
        if "listening on" in line:
            return proc
    proc.kill()
    proc.wait()
    pytest.fail(f"tcpdump did not start listening: {seen}")


def test_diy_ip_forward_ttl_and_arp_then_icmp(lab_factory):
    lab = lab_factory("diy-ip-forward.yaml")
    out = ping(lab, "ns1", "10.1.2.2")
    assert re.search(r"from 10\.1\.2\.2: icmp_seq=1 ttl=63 ", out), out

    lab.exec("ns1", "ip", "neigh", "flush", "dev", "v1", check=True)
    cap = start_capture(lab, "ns1", "v1", 4, ["arp", "or", "icmp"])
    try:
        ping(lab, "ns1", "10.1.2.2")
        try:
            captured, err = cap.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            cap.kill()
            captured, err = cap.communicate()
    finally:
        if cap.poll() is None:
            cap.kill()
            cap.wait()
    lines = captured.splitlines()
    arp = next((i for i, l in enumerate(lines) if re.search(r"ARP.*Request who-has 10\.1\.1\.1 tell 10\.1\.1\.2", l)),
               None)
    req = next((i for i, l in enumerate(lines) if "10.1.1.2 > 10.1.2.2: ICMP echo request" in l), None)
    rep = next((i for i, l in enumerate(lines) if "10.1.2.2 > 10.1.1.2: ICMP echo reply" in l), None)
    assert None not in (arp, req, rep) and arp < req < rep, captured + err
