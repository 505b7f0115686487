"""The agent's /v1/run request validation (nslab/channel.py): what a request may ask the
machine's own nslab to run.  No kernel, no agent: command_argv alone."""
from __future__ import annotations

import types

import pytest

from nslab import channel

SHARD = types.SimpleNamespace(nodes={"client": "lab1.client", "leaf01": "lab1.leaf01"})


def shards(lab):
    return SHARD if lab == "lab1" else None


def argv(**req):
    return channel.command_argv(dict({"lab": "lab1"}, **req), shards)


def test_commands_become_the_machines_own_nslab_argv():
    assert argv(command="exec", target="client", argv=["sh", "-c", "tty"]) == \
        ["exec", "-l", "lab1", "client", "--", "sh", "-c", "tty"]
    assert argv(command="show", options={"json": True}) == ["show", "-l", "lab1", "--json"]
    assert argv(command="link-set", target="leaf01:eth0", options={"rate": "10mbit"}) == \
        ["link", "set", "-l", "lab1", "leaf01:eth0", "--rate=10mbit"]
    assert argv(command="capture", target="leaf01:eth0", options={"count": 2, "filter": "icmp"}) == \
        ["capture", "-l", "lab1", "leaf01:eth0", "--count=2", "--filter=icmp"]
    assert argv(command="trace", target="client", dst="10.0.0.254") == ["trace", "-l", "lab1", "client", "10.0.0.254"]
    # across machines: the pcap back on the stream; a trace's and a test's parts; rewire
    assert argv(command="capture", target="leaf01:eth0", options={"write": "-", "count": 2}) == \
        ["capture", "-l", "lab1", "leaf01:eth0", "--count=2", "--write=-"]
    assert argv(command="trace-part", options={"src": "client", "dst": "svc/web", "send": True}) == \
        ["trace-part", "-l", "lab1", "--dst=svc/web", "--send", "--src=client"]
    assert argv(command="watch-part", options={"node": ["leaf01", "client"]}) == \
        ["watch-part", "-l", "lab1", "--node=leaf01", "--node=client"]
    assert argv(command="rewire") == ["rewire", "-l", "lab1"]


@pytest.mark.parametrize("req, error", [
    (dict(command="rm", target="client"), ValueError),                                # not a command served
    (dict(command="capture", target="leaf01:eth0", options={"write": "/etc/x"}), ValueError),  # names a file
    (dict(command="capture", target="leaf01:eth0", options={"write": "./-"}), ValueError),
    (dict(command="trace-part", options={"src": "client", "send": "yes"}), ValueError),
    (dict(command="link-set", target="leaf01:eth0", options={"rate": True}), ValueError),
    (dict(command="show", options={"json": "yes"}), ValueError),
    (dict(command="exec", target="web-worker3", argv=["true"]), LookupError),         # not a node of this shard
    (dict(command="exec", target="-l", argv=["true"]), ValueError),                   # an option, not a name
    (dict(command="exec", target="client", argv=[]), ValueError),
    (dict(command="exec", target="client", argv=["a\0b"]), ValueError),
    (dict(command="shell"), ValueError),                                              # no target
    (dict(command="show", lab="../etc"), ValueError),
    (dict(command="show", lab="other"), LookupError),                                 # not a shard here
])
def test_requests_outside_the_rules_are_refused(req, error):
    with pytest.raises(error):
        channel.command_argv(dict({"lab": "lab1"}, **req), shards)
