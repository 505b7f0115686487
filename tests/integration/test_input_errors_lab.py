"""Inputs that used to end in a traceback on a running lab (issue 18, hole 7): one sentence and
exit 2 for bad values, and names the kernel holds that are not UTF-8 shown as their escapes."""
from __future__ import annotations

import json
import subprocess

TWO = """
hosts: [a, b]
links:
  - ends: [{node: a, ip: 10.1.1.2/24}, {node: b, ip: 10.1.1.3/24}]
"""


def one_sentence(proc, *words):
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    for w in words:
        assert w in proc.stderr, proc.stderr


def test_bad_numbers_and_a_burst_below_a_frame_are_one_sentence(lab_factory):
    lab = lab_factory(TWO)
    # '²'.isdigit() is True, int('²') raised ValueError
    one_sentence(lab.nslab("trace", "-l", lab.name, "a", "10.1.1.3:²"), "10.1.1.3:²", "port")
    one_sentence(lab.nslab("trace", "-l", lab.name, "a", "10.1.1.3:" + "9" * 5000), "port")
    # the frame check is the device's (its MTU): it raised ConditionsError out of qdisc.apply
    one_sentence(lab.nslab("link", "set", "-l", lab.name, "a:eth0", "--rate", "1mbit", "--burst", "100b"),
                 "--burst", "1514b")
    shown = json.loads(lab.nslab("link", "show", "-l", lab.name, "a:eth0", "--json", check=True).stdout)
    assert shown[0]["kind"] == "noqueue", shown                     # nothing was set
    # a JUnit file that cannot be written: FileNotFoundError's traceback after the tests ran
    proc = lab.nslab("test", "-l", lab.name, "--all-pairs", "--junit", "/nonexistent/x.xml")
    assert proc.returncode == 1 and proc.stderr == "nslab: --junit: cannot write '/nonexistent/x.xml': No such " \
                                                   "file or directory\n", proc.stderr


def test_an_interface_renamed_to_bytes_that_are_not_utf8(lab_factory):
    lab = lab_factory(TWO)
    ns = lab.ns("a")
    for argv in (["link", "set", "dev", "eth0", "down"], ["link", "set", "dev", "eth0", "name", b"\xff\xfe"],
                 ["link", "set", "dev", b"\xff\xfe", "up"]):
        subprocess.run(["ip", "-n", ns, *argv], check=True, timeout=30)
    rows = json.loads(lab.nslab("link", "show", "-l", lab.name, "--json", check=True).stdout)
    assert {(r["node"], r["iface"]) for r in rows} == {("a", r"\xff\xfe"), ("b", "eth0")}, rows
    text = lab.nslab("show", "-l", lab.name, check=True).stdout
    assert r"dev \xff\xfe proto kernel" in text and r"peer a:\xff\xfe" in text, text
    data = json.loads(lab.nslab("show", "-l", lab.name, "--json", check=True).stdout)
    assert r"\xff\xfe" in [link["name"] for link in data["nodes"]["a"]["interfaces"]], data
    # the name as shown is the name `link set` takes
    assert lab.nslab("link", "set", "-l", lab.name, r"a:\xff\xfe", "--rate", "10mbit", check=True).returncode == 0
    assert "rate 10Mbit" in lab.nslab("link", "show", "-l", lab.name, r"a:\xff\xfe", check=True).stdout
    # trace sniffs every interface: a frame whose interface name Python cannot decode is skipped
    proc = lab.nslab("trace", "-l", lab.name, "a", "b", timeout=120)
    assert proc.returncode in (0, 1) and "Traceback" not in proc.stderr, proc.stderr
    assert "trace took" in proc.stdout, proc.stdout


def test_a_sysctl_value_the_kernel_refuses_names_the_file_line_and_key(tmp_path, root_unchanged):
    """An integer in range for YAML but not for the kernel (EINVAL), and a congestion control the
    kernel does not have (ENOENT): `up` ended in an OSError traceback, exit 1.  Now one sentence
    at the file's line and key, exit 2, and nothing of the lab left."""
    from conftest import leftovers, nslab, unique_lab_name
    from nslab import state
    for key, value, why in (("net.ipv4.fib_multipath_hash_policy", "7", "Invalid argument"),
                            ("net.ipv4.tcp_congestion_control", "nosuchcc", "not a choice this kernel has")):
        name = unique_lab_name()
        path = tmp_path / f"{name}.yaml"
        path.write_text(f"name: {name}\nhosts:\n  a: {{}}\n  b:\n    sysctls:\n      {key}: {value}\n"
                        f"links:\n  - [a, b]\n")
        proc = nslab("up", path)
        one_sentence(proc, f"{path.name}:6 hosts.b.sysctls.{key}: the kernel refused {value!r} for {key} ({why})")
        assert not leftovers(name, state.RUN_DIR, []), name
