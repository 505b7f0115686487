"""`nslab capture --decode` output at 80 and 120 columns and piped: every label, address, MAC,
VNI and port is printed whole (the issue saw `192.168.…` and `52258 > 84…`), and a terminal's
lines fit its width."""
from __future__ import annotations

import io
import json
import os
import re

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN

from nslab import backends, console as out, model
from nslab.observe.capture import decoded_dict, print_decoded
from nslab.observe.decode import Names, decode_pcap, rows

TOPO = os.path.join(os.path.dirname(__file__), "..", "..", "nslab", "topologies")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def flannel_packet():
    """master's pod -> node1's pod over flannel.1 (VXLAN on 8472), as read off master's ens33."""
    topo = model.load(os.path.join(TOPO, "flannel-vxlan.yaml"))
    c = topo.cluster
    master, node1 = c.nodes["master"], c.nodes["node1"]
    under = topo.nodes["master"].iface(c.iface)
    peer = topo.nodes["node1"].iface(c.iface)
    pkt = (Ether(src=under.mac, dst=peer.mac) / IP(src=str(master.ip), dst=str(node1.ip)) /
           UDP(sport=52258, dport=c.backend.port) / VXLAN(vni=c.backend.vni, flags=0x08) /
           Ether(src=master.vtep_mac, dst=node1.vtep_mac) /
           IP(src=str(master.subnet[2]), dst=str(node1.subnet[2])) / ICMP(type=8))
    d = rows(decode_pcap(bytes(pkt), 1, backends.encap_ports(c.backend)), c.backend.type, c.backend.port)
    assert d is not None
    whole = [str(master.ip), str(node1.ip), under.mac, peer.mac, master.vtep_mac, node1.vtep_mac,
             str(master.subnet[2]), str(node1.subnet[2]), f"52258 > {c.backend.port}", str(c.backend.vni),
             "outer", "inner"]
    return d, Names.from_topology(topo), whole


def render(d, names, columns: int | None) -> str:
    buf = io.StringIO()
    console = out.make(terminal=columns is not None, columns=columns, file=buf)
    print_decoded(console, d, names)
    return ANSI.sub("", buf.getvalue())


@pytest.mark.parametrize("columns", [80, 120, None], ids=["80", "120", "piped"])
def test_decode_never_cuts(columns):
    d, names, whole = flannel_packet()
    text = render(d, names, columns)
    assert "…" not in text
    for word in whole:
        assert word in text, (word, text)
    if columns:
        assert max(len(line) for line in text.splitlines()) <= columns, text
    else:                          # piped: one plain line per header, address and name together
        assert len(text.splitlines()) == 3
        assert not set(text) & set("│┃━─")


def test_decode_table_at_120_names_under_addresses():
    d, names, whole = flannel_packet()
    text = render(d, names, 200)
    assert "src MAC" in text and "UDP ports" in text
    assert any(line.lstrip().startswith("outer") for line in text.splitlines())


def test_decode_json_is_complete():
    d, names, whole = flannel_packet()
    doc = json.loads(json.dumps(decoded_dict(d, names)))
    flat = json.dumps(doc)
    for word in whole[:-2]:
        assert word in flat
    assert doc["outer"]["vni"] == int(whole[-3]) and doc["kind"] == "vxlan"
