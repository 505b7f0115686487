"""`cluster.backend` and `--backend` at their edges, where mutation testing found nothing
watching (tests/README.md): ports 1 and 65535 are ports (in the file and on the command
line), `--backend` of the file's own type keeps the file's keys, and an MTU that exactly
fits (the IPv4 minimum, the underlay minus the overhead) is accepted."""
from __future__ import annotations

import pytest

from nslab.errors import TopologyError, UsageError
from nslab.model import load

LAB = """\
name: edges
segments:
  lan: {{subnet: 192.168.56.0/24, mtu: {mtu}}}
cluster:
  network: 10.244.0.0/16
  iface: ens33
  backend: {backend}
  nodes:
    a: {{segment: lan, ip: 192.168.56.10}}
    b: {{segment: lan, ip: 192.168.56.11}}
"""


def backend(text: str, override: str | None = None, mtu: int = 1500):
    topo = load("edges.yaml", text=LAB.format(backend=text, mtu=mtu),
                overrides={"backend": override} if override else None)
    return topo.cluster.backend


@pytest.mark.parametrize("port", [1, 65535])
def test_the_first_and_last_port_are_ports(port):
    assert backend(f"{{type: vxlan, port: {port}}}").port == port
    assert backend("{type: vxlan}", f"vxlan:{port}").port == port
    assert backend("{type: udp}", f"udp:{port}").port == port


@pytest.mark.parametrize("port", [0, 65536])
def test_past_them_is_refused(port):
    with pytest.raises(TopologyError, match=rf"cluster.backend.port: port {port} is not a UDP port \(1 to 65535\)"):
        backend(f"{{type: vxlan, port: {port}}}")
    with pytest.raises(UsageError, match=rf"--backend vxlan:{port}: '{port}' is not a UDP port \(1 to 65535\)"):
        backend("{type: vxlan}", f"vxlan:{port}")


def test_a_port_of_more_than_five_digits_is_refused_before_it_is_read():
    with pytest.raises(UsageError, match=r"--backend vxlan:065535: '065535' is not a UDP port"):
        backend("{type: vxlan}", "vxlan:065535")


def test_backend_of_the_files_own_type_keeps_its_keys():
    assert backend("{type: udp, port: 8300}", "udp").port == 8300
    assert backend("{vni: 7}", "vxlan").vni == 7                    # no type: vxlan, the default
    assert backend("{type: vxlan, vni: 7}", "udp").type == "udp"    # another type: only the shared keys


def test_an_mtu_that_exactly_fits_is_accepted():
    topo = load("edges.yaml", text=LAB.format(backend="{type: vxlan}", mtu=118))   # 118 - 50 = 68, IPv4's minimum
    assert [n.mtu for n in topo.cluster.nodes.values()] == [68, 68]
    topo = load("edges.yaml", text=LAB.format(backend="{type: vxlan, mtu: 1450}", mtu=1500))
    assert [n.mtu for n in topo.cluster.nodes.values()] == [1450, 1450]
