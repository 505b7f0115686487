"""The tests: section (nslab/model/tests.py, nslab/observe/checks.py) without root: parsing, validation, defaults, and the
reports (table text, JSON, JUnit XML).  Bad input cases with exact messages are the
tests/errors/tests-*.yaml files (run by test_errors.py); running checks against real
labs is tests/integration/test_nslab_test.py."""
from __future__ import annotations

import json
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from nslab import model, packet
from nslab.model import tests as model_tests
from nslab.observe import checks, probe
from nslab.errors import TopologyError

SHIPPED = sorted((Path(__file__).parent.parent.parent / "topologies").glob("*.yaml"))
VETH = """\
hosts: [ns1, ns2]
routers: [r]
links:
  - [{node: ns1, ip: 10.1.1.2/24}, {node: r, ip: 10.1.1.1/24}]
  - [{node: ns2, ip: 10.1.2.2/24}, {node: r, ip: 10.1.2.1/24}]
"""


def load(tests: str, base: str = VETH) -> model.Topology:
    return model.load("t.yaml", base + tests)


def test_every_shipped_topology_declares_tests():
    for path in SHIPPED:
        topo = model.load(str(path))
        assert topo.tests, f"{path.name} has no tests: section"
        assert all(isinstance(c, model_tests.Check) for c in topo.tests)


def test_spine_leaf_tests_as_declared():
    topo = model.load(str(Path(__file__).parent.parent.parent / "topologies" / "spine-leaf.yaml"))
    by_name = {c.name: c for c in topo.tests}
    c = by_name["other rack over vxlan"]
    assert (c.kind, c.src, c.dst, c.dst_ip, c.dst_node) == ("ping", "client", "web-worker3", "10.244.3.2",
                                                            "web-worker3")   # web@worker3 resolved
    assert (c.encap, c.ttl, c.via, c.expect_ok) == ("vxlan", 62, "spine", True)
    assert by_name["pod MTU 9100 (9150 - 50)"].mtu == 9100
    http = by_name["http to the other rack"]
    assert (http.kind, http.port, http.timeout) == ("http", 80, 2.0)
    tcp = by_name["nothing listens on 81"]
    assert (tcp.port, tcp.expect_ok, tcp.expect_text) == (81, False, "failure")
    assert c.line == topo.doc.line(c.path) and c.line > 20


def test_defaults_and_shorthands():
    topo = load("""tests:
  - {ping: [ns1, ns2]}
  - {tcp: [ns1, 10.1.2.2], port: 22, expect: failure}
  - {http: [ns2, ns1], port: 8080, timeout: 0.5, expect: {result: success, ttl: 63, via: r}}
""")
    a, b, c = topo.tests
    assert (a.name, a.expect_ok, a.timeout, a.port, a.dst_ip) == ("ping ns1 -> ns2", True, 1.0, None, "10.1.2.2")
    assert (b.name, b.dst, b.dst_node, b.expect_ok) == ("tcp ns1 -> 10.1.2.2:22 fails", "10.1.2.2", "ns2", False)
    assert (c.port, c.timeout, c.ttl, c.via, c.dst_ip) == (8080, 0.5, 63, "r", "10.1.1.2")
    assert c.expect_text == "success, ttl 63, via r"


def test_an_address_outside_the_lab_is_a_fine_destination_without_ttl():
    c, = load("tests:\n  - {ping: [ns1, 198.51.100.7], expect: failure}\n").tests
    assert (c.dst_ip, c.dst_node) == ("198.51.100.7", None)


def test_no_tests_section_means_no_tests():
    assert load("").tests == []
    assert load("tests: []\n").tests == []


@pytest.mark.parametrize("tests,where,words", [
    ("  - {ping: [ns1, ns2], expect: {ttl: 300}}", "tests[0].expect.ttl", "from 1 to 255"),
    ("  - {ping: [ns1, ns2], expect: {mtu: 20}}", "tests[0].expect.mtu", "below the IPv4 minimum"),
    ("  - {tcp: [ns1, ns2], port: 70000}", "tests[0].port", "not a TCP port"),
    ("  - {ping: [ns1, ns1]}", "tests[0].ping[1]", "both ns1"),
    ("  - {ping: [ns1, ns2], expect: {via: ns2}}", "tests[0].expect.via", "not the destination"),
    ("  - {ping: [ns1, ns2], name: ''}", "tests[0].name", "non-empty string"),
    ("  - {ping: [ns1, ns2], expect: {speed: fast}}", "tests[0].expect.speed", "unknown key 'speed'"),
    ("  - {ping: [ns1, ns2], colour: red}", "tests[0].colour", "unknown key 'colour'"),
    ("  - [ns1, ns2]", "tests[0]", "expected a mapping for this test"),
])
def test_bad_tests(tests, where, words):
    with pytest.raises(TopologyError) as info:
        load("tests:\n" + tests + "\n")
    err = info.value
    assert err.path == where and words in err.message, str(err)
    assert err.line == VETH.count("\n") + 2


def test_tests_do_not_change_the_plan():
    from nslab.compile import compile_topology
    from nslab.compile.script import render
    plain = render(compile_topology(load("")))
    assert render(compile_topology(load("tests:\n  - {ping: [ns1, ns2], expect: {ttl: 63}}\n"))) == plain


# --- reports --------------------------------------------------------------------------------

def report() -> checks.Report:
    return checks.Report("demo", [
        checks.Result("a <b> & c", "ping ns1 -> ns2", "success, ttl 63", True, "reached, ttl 63",
                      ["echo reply", "ttl at ns2: 63"], 0.01, 7),
        checks.Result("broken", "http ns1 -> ns2:80", "success", False, "GET: Connection refused",
                      ["GET http://10.1.2.2:80/: Connection refused"], 0.02, 9),
    ], 0.5)


def test_junit_is_valid_xml_with_one_failure():
    root = ET.fromstring(checks.junit(report(), "/x/demo.yaml"))
    assert root.tag == "testsuites" and root.get("tests") == "2" and root.get("failures") == "1"
    suite, = root
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == ["a <b> & c", "broken"]
    assert cases[0].find("failure") is None and cases[0].get("line") == "7"
    failure = cases[1].find("failure")
    assert "Connection refused" in failure.get("message") and "10.1.2.2:80" in failure.text


def test_report_text_and_json():
    r = report()
    assert not r.ok and [x.name for x in r.failed] == ["broken"]
    assert str(r).splitlines() == ["PASS a <b> & c: reached, ttl 63",
                                   "FAIL broken: GET: Connection refused (expected success)",
                                   "1 passed, 1 failed"]
    data = json.loads(json.dumps(r.as_dict()))
    assert (data["passed"], data["failed"], data["results"][1]["line"]) == (1, 1, 9)


def test_table_names_every_failure(capsys):
    from rich.console import Console
    checks.render(Console(width=200, force_terminal=False), report())
    out = capsys.readouterr().out
    assert "PASS" in out and "FAIL broken (line 9)" in out and "1 passed, 1 failed in 0.50 s" in out


# --- probe packets --------------------------------------------------------------------------

def test_echo_request_checksum_and_reply_parsing():
    pkt = packet.echo_request(0x1234, 7, b"nslab-x")
    assert packet.checksum(pkt) == 0                       # a correct checksum sums to zero
    ip = bytes([0x45, 0, 0, 20 + len(pkt), 0, 0, 0, 0, 64, 1, 0, 0, 10, 0, 0, 2, 10, 0, 0, 1])
    reply = bytes([0, 0]) + pkt[2:]                       # type 0 = echo reply
    assert packet.parse_echo_reply(ip + reply) == ("10.0.0.2", 0x1234, 7, b"nslab-x")
    assert packet.parse_echo_reply(ip + pkt) is None       # a request is not a reply


def test_marker_payload_has_the_asked_size():
    assert len(probe.marker_payload(9072)) == 9072
    assert probe.marker_payload(40) != probe.marker_payload(40)
