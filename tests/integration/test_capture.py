"""`nslab capture` on real labs: note 002's decoded table while pinging across racks, pcap
files that tcpdump and tshark read, several captures at once, and captures that stop
cleanly on Ctrl-C and on `nslab down`."""
from __future__ import annotations

import itertools
import os
import re
import select
import shutil
import signal
import subprocess
import time

import pytest

from conftest import NSLAB, REPO

pytestmark = pytest.mark.root
_names = itertools.count(1)


def lab_name() -> str:
    return f"cap-{os.getpid()}-{next(_names)}"


class Running:
    """`nslab capture -l LAB ARGS` in the background, returned once tcpdump listens."""

    def __init__(self, lab, *args):
        self.proc = subprocess.Popen(NSLAB + ["capture", "-l", lab.name, *map(str, args)], cwd=REPO, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **lab.env})
        self.err = ""
        deadline = time.monotonic() + 15
        while "listening on" not in self.err:
            assert time.monotonic() < deadline and self.proc.poll() is None, f"capture did not start: {self.finish()}"
            if select.select([self.proc.stderr], [], [], 0.2)[0]:
                self.err += self.proc.stderr.readline()

    def finish(self, timeout: float = 10) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=timeout)
        self.err += err
        return self.proc.returncode, out, self.err


def tcpdumps(lab) -> dict[int, str]:
    return {p["pid"]: p["what"] for p in lab.state["processes"] if p["what"].startswith("tcpdump")}


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def ping(lab, src, dst, count=2):
    r = lab.exec(src, "ping", "-n", "-c", count, "-i", "0.2", "-W", "2", dst)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.fixture
def spine_leaf(lab_factory):
    return lab_factory("spine-leaf.yaml", name=lab_name())


def test_decode_vxlan_across_racks_names_and_vni(spine_leaf):
    lab = spine_leaf
    cap = Running(lab, "worker1", "-c", 4, "--decode", "--filter", "udp port 4789")
    assert len(tcpdumps(lab)) == 1
    ping(lab, "client", "web-worker3")                  # 2 requests out, 2 replies in, all in VXLAN
    rc, out, err = cap.finish()
    assert rc == 0, err
    assert out.count("UDP/VXLAN") == 4 and out.count("outer") == 4 and out.count("inner") == 4, out
    for word in ("src IP", "src MAC", "dst IP", "dst MAC", "VNI", "UDP ports", " 4000 ", "> 4789",
                 "worker1 enp0s3", "leaf01 eth0", "worker1 flannel.4000", "worker3 flannel.4000",
                 "client", "web-worker3", "ICMP echo-request", "ICMP echo-reply"):
        assert word in out, f"{word!r} missing from:\n{out}"
    request = out[out.index("outer"):]
    # piped, columns are "address (name)" cells two or more spaces apart
    outer, inner = (re.split(r"\s{2,}", line) for line in request.splitlines()[0:2])
    outer, inner = [c.split()[0] for c in outer], [c.split()[0] for c in inner]
    assert (outer[0], outer[1], outer[3]) == ("outer", "10.0.0.21", "30.0.0.23")
    assert inner[0:2] == ["inner", "10.244.1.2"] and inner[3] == "10.244.3.2"
    assert "4 packets captured" in err and "Traceback" not in err
    assert tcpdumps(lab) == {}                          # ended by itself: out of the lab's record

    # same rack (DirectRouting): no encapsulation, one line per packet
    cap = Running(lab, "worker1", "-c", 2, "--decode", "--filter", "icmp")
    ping(lab, "client", "web-worker2", count=1)
    rc, out, err = cap.finish()
    assert rc == 0, err
    assert "10.244.1.2 (client) > 10.244.2.2 (web-worker2): ICMP echo-request" in out
    assert "10.244.2.2 (web-worker2) > 10.244.1.2 (client): ICMP echo-reply" in out and "VXLAN" not in out


def test_decode_on_port_8472_note_002(lab_factory):
    lab = lab_factory("vxlan-3node.yaml", name=lab_name())
    cap = Running(lab, "node1:eth0", "-c", 2, "--decode", "--filter", "udp and host 192.168.0.12 and host 192.168.0.13")
    ping(lab, "client", "10.244.2.101", count=1)
    rc, out, err = cap.finish()
    assert rc == 0, err
    assert out.count("UDP/VXLAN") == 2 and "> 8472" in out
    for word in ("192.168.0.12", "node1 eth0", "192.168.0.13", "node2 eth0", "10.244.1.178", "node1 flannel.1",
                 "10.244.2.101", "node2 flannel.1", "web"):
        assert word in out, f"{word!r} missing from:\n{out}"
    assert [line.split()[-4] for line in out.splitlines() if line.startswith("outer")] == ["1", "1"]   # VNI, then "sport > 8472"


def test_pcap_file_for_tcpdump_and_tshark(spine_leaf, tmp_path):
    lab = spine_leaf
    pcap = tmp_path / "w1.pcap"
    cap = Running(lab, "worker1", "-w", pcap, "-c", 4, "--filter", "udp port 4789")
    ping(lab, "client", "web-worker3")
    rc, out, err = cap.finish()
    assert rc == 0, err
    read = subprocess.run(["tcpdump", "-nr", str(pcap)], capture_output=True, text=True)
    assert read.returncode == 0 and read.stdout.count("vni 4000") == 4, read.stdout + read.stderr
    assert "10.0.0.21." in read.stdout and "30.0.0.23.4789" in read.stdout
    if shutil.which("tshark"):
        t = subprocess.run(["tshark", "-r", str(pcap), "-T", "fields", "-e", "vxlan.vni", "-e", "ip.dst"],
                           capture_output=True, text=True)
        assert t.returncode == 0, t.stderr
        rows = [line.split("\t") for line in t.stdout.splitlines()]
        assert len(rows) == 4 and all(r[0] == "4000" for r in rows)
        assert rows[0][1] == "30.0.0.23,10.244.3.2"


def test_two_captures_at_once_both_stopped_by_down(spine_leaf):
    lab = spine_leaf
    a = Running(lab, "worker1", "--decode")
    b = Running(lab, "worker3:flannel.4000")                 # live tcpdump -eni text
    pids = tcpdumps(lab)
    assert sorted(pids.values()) == ["tcpdump worker1:enp0s3", "tcpdump worker3:flannel.4000"]
    assert all(alive(p) for p in pids)
    ping(lab, "client", "web-worker3", count=1)
    time.sleep(0.3)
    lab.down()
    (rc_a, out_a, err_a), (rc_b, out_b, err_b) = a.finish(), b.finish()
    assert (rc_a, rc_b) == (0, 0), err_a + err_b
    assert "UDP/VXLAN" in out_a and "Traceback" not in err_a + err_b
    assert "10.244.1.2 > 10.244.3.2: ICMP echo request" in out_b and "ethertype IPv4" in out_b   # -e: MACs shown
    assert not any(alive(p) for p in pids)


@pytest.mark.parametrize("mode", [[], ["--decode"], ["-w", "PCAP"]])
def test_ctrl_c_stops_cleanly(spine_leaf, tmp_path, mode):
    lab = spine_leaf
    args = [str(tmp_path / "c.pcap") if a == "PCAP" else a for a in mode]
    cap = Running(lab, "worker1", *args)
    (pid,) = tcpdumps(lab)
    ping(lab, "client", "web-worker3", count=1)
    time.sleep(0.3)
    cap.proc.send_signal(signal.SIGINT)
    rc, out, err = cap.finish()
    assert rc in (0, 130) and "Traceback" not in err, err
    assert "packets captured" in err
    assert not alive(pid) and tcpdumps(lab) == {}
    if "-w" in mode:
        read = subprocess.run(["tcpdump", "-nr", args[1]], capture_output=True, text=True)
        assert read.returncode == 0 and "vni 4000" in read.stdout


def test_unknown_interface_is_one_line(spine_leaf):
    r = spine_leaf.nslab("capture", "-l", spine_leaf.name, "worker1:nope", "-c", 1)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("nslab: worker1 has no interface 'nope' (interfaces: enp0s3, ") and "flannel.4000" in line
    assert tcpdumps(spine_leaf) == {}
    r = spine_leaf.nslab("capture", "-l", spine_leaf.name, "nobody")
    assert r.returncode == 2 and r.stderr.startswith("nslab: lab ") and "no node 'nobody'" in r.stderr
