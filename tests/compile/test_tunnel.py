"""The ipip and udp backends and the userspace dataplanes, without root: plans, the
--backend TYPE[:PORT] override, the kernel-or-userspace swap, and the packet helpers the
daemons use (TTL decrement, flannel's ICMP net-unreachable)."""
from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from nslab import model
from nslab.apply import kernel
from nslab.compile import kernel as compile_kernel
from nslab.runtime import tunnels as tunnel
from nslab import plan as P
from nslab.packet import checksum
from nslab.compile import compile_topology

TOPO = Path(__file__).parent.parent.parent / "topologies"


def plan_of(name: str, backend: str | None = None) -> P.Plan:
    return compile_topology(model.load(str(TOPO / name), overrides={"backend": backend} if backend else None))


def ops(plan, cls, ns=None):
    return [op for op in plan.ops if isinstance(op, cls) and (ns is None or op.ns == ns)]


def fit(plan) -> None:
    """What `nslab up` does: the kernel's ipip state read, then the plan fitted to it."""
    compile_kernel.fit_to_kernel(plan, kernel.ipip_state())


def checksum_ok(header: bytes) -> bool:
    return checksum(header) == 0


# ---- plans ------------------------------------------------------------------------------------
def test_ipip_plan_is_note_001():
    plan = plan_of("spine-leaf.yaml", "ipip")
    w1 = "spine-leaf.worker1"
    (dev,) = ops(plan, P.Link, w1)[-1:]
    assert (dev.name, dev.kind, dev.mtu, dict(dev.ipip)) == \
        ("flannel.ipip", "ipip", 9130, {"local": "10.0.0.21", "remote": None, "pmtudisc": False})
    routes = {r.dst: (r.nexthops[0].via, r.nexthops[0].dev, r.onlink) for r in ops(plan, P.Route, w1)}
    assert routes["10.244.3.0/24"] == ("30.0.0.23", "flannel.ipip", True)     # other rack: encapsulated
    assert routes["10.244.2.0/24"] == ("10.0.0.22", "enp0s3", False)         # DirectRouting kept from the file
    assert [a.address for a in ops(plan, P.Addr, w1) if a.dev == "flannel.ipip"] == ["10.244.1.0/32"]
    assert not ops(plan, P.Daemon)                                            # the kernel path, until fit_to_kernel


def test_udp_plan_is_note_001_with_port_override():
    plan = plan_of("spine-leaf.yaml", "udp:8282")
    w1 = "spine-leaf.worker1"
    tun = [l for l in ops(plan, P.Link, w1) if l.name == "flannel0"][0]
    assert (tun.kind, tun.mtu) == ("tun", 9122)                               # 9150 - 28
    (route,) = [r for r in ops(plan, P.Route, w1) if r.nexthops[0].dev == "flannel0"]
    assert (route.dst, route.nexthops[0].via, route.scope) == ("10.244.0.0/16", None, "global")
    daemon = {d.node: dict(d.config) for d in ops(plan, P.Daemon)}["worker1"]
    assert daemon["port"] == 8282 and daemon["local"] == "10.0.0.21" and daemon["address"] == "10.244.1.0"
    assert "10.244.3.0/24@30.0.0.23" in daemon["routes"].split(",")
    assert "10.244.1.0/24" not in daemon["routes"]                           # its own lease goes via cni0


def test_backend_override_drops_keys_of_the_other_type():
    topo = model.load(str(TOPO / "spine-leaf.yaml"), overrides={"backend": "udp"})
    assert topo.cluster.backend.port == 8285                                 # not vxlan's 4789
    topo = model.load(str(TOPO / "spine-leaf.yaml"), overrides={"backend": "ipip"})
    assert topo.cluster.backend.direct_routing is True


def test_backend_override_port_only_for_vxlan_and_udp():
    from nslab.errors import UsageError
    with pytest.raises(UsageError, match="--backend ipip:99: only vxlan and udp take a port"):
        model.load(str(TOPO / "spine-leaf.yaml"), overrides={"backend": "ipip:99"})


def test_diy_ipip_tunnels_as_ip_tunnel_add():
    plan = plan_of("diy-ipip.yaml")
    (t1,) = [l for l in ops(plan, P.Link, "diy-ipip.ns1") if l.kind == "ipip"]
    assert (t1.name, t1.mtu, dict(t1.ipip)) == \
        ("tunl1", 1480, {"local": "10.10.10.2", "remote": "10.10.20.2", "pmtudisc": True})
    (addr,) = [a for a in ops(plan, P.Addr, "diy-ipip.ns1") if a.dev == "tunl1"]
    assert (addr.address, addr.peer) == ("10.10.100.10/32", "10.10.200.10")


# ---- kernel or userspace -----------------------------------------------------------------------
def fake_kernel(root: Path, monkeypatch, ipip: str) -> None:
    """Point the probe at a made-up /sys/module and /lib/modules/<release> under `root`, whose
    ipip is 'loaded', 'builtin', 'unloaded' (in modules.dep only) or 'absent'."""
    sys_module, tree = root / "sys-module", root / "lib-modules" / os.uname().release
    (sys_module / "vxlan").mkdir(parents=True)
    tree.mkdir(parents=True)
    dep = ["kernel/net/ipv4/ip_tunnel.ko.xz:", "kernel/net/ipv4/tunnel4.ko.xz:",
           "kernel/net/ipv6/sit.ko.xz: kernel/net/ipv4/ip_tunnel.ko.xz kernel/net/ipv4/tunnel4.ko.xz",
           "kernel/drivers/net/ipipx.ko.xz:"]                     # a name that only starts like ipip
    builtin = ["kernel/net/ipv4/ip_gre.ko"]
    if ipip == "loaded":
        (sys_module / "ipip").mkdir()
    elif ipip == "builtin":
        builtin.append("kernel/net/ipv4/ipip.ko")
    elif ipip == "unloaded":
        dep.append("kernel/net/ipv4/ipip.ko.xz: kernel/net/ipv4/ip_tunnel.ko.xz kernel/net/ipv4/tunnel4.ko.xz")
    (tree / "modules.dep").write_text("\n".join(dep) + "\n")
    (tree / "modules.builtin").write_text("\n".join(builtin) + "\n")
    monkeypatch.setattr(kernel, "SYS_MODULE", str(sys_module))
    monkeypatch.setattr(kernel, "LIB_MODULES", str(root / "lib-modules"))


@pytest.fixture
def no_kernel_ipip(monkeypatch, tmp_path):
    fake_kernel(tmp_path, monkeypatch, "absent")
    monkeypatch.delenv("NSLAB_IPIP", raising=False)


@pytest.mark.parametrize("ipip, state", [("loaded", "loaded"), ("builtin", "loaded"), ("unloaded", "unloaded"),
                                         ("absent", "absent")])
def test_ipip_state_is_read_from_sys_module_and_the_module_tree(tmp_path, monkeypatch, ipip, state):
    fake_kernel(tmp_path, monkeypatch, ipip)
    assert kernel.ipip_state() == state
    assert kernel.ipip_module_available() is (state == "loaded")


def test_ipip_probe_never_loads_a_module(tmp_path, monkeypatch):
    """Hole 5 of issue 9: probing must not load ipip (which adds tunl0 to the root namespace).
    Anything that could load a module -- a process (modprobe, `ip link add`), a netlink or
    other socket (RTM_NEWLINK auto-loads rtnl-link-ipip), a namespace switch, a write -- fails
    the test; only reads under the probed directories are allowed."""
    import builtins
    import socket
    import subprocess
    from nslab.apply import netns
    from nslab.errors import PrerequisiteError
    plans = {mode: [plan_of("diy-ipip.yaml") for _ in range(4)] for mode in ("auto", "kernel", "userspace")}
    calls = []

    def forbidden(what):
        def refuse(*args, **kw):
            calls.append((what, args[:2]))
            raise AssertionError(f"the ipip probe called {what}{args[:2]}")
        return refuse

    for mod, names in ((subprocess, ["Popen", "run", "call", "check_call", "check_output"]),
                       (os, ["system", "fork", "execv", "execve", "execvp", "posix_spawn", "posix_spawnp",
                             "unshare", "setns", "mknod"]),
                       (socket, ["socket", "socketpair"]), (netns, ["unshare", "setns"])):
        for name in names:
            if hasattr(mod, name):
                monkeypatch.setattr(mod, name, forbidden(f"{mod.__name__}.{name}"))
    real_open = builtins.open

    def read_only_open(file, mode="r", *args, **kw):
        path = os.path.abspath(os.fspath(file))
        if set(mode) & set("wax+") or not path.startswith(str(tmp_path)):
            calls.append(("open", path, mode))
            raise AssertionError(f"the ipip probe opened {path} ({mode})")
        return real_open(file, mode, *args, **kw)
    monkeypatch.setattr(builtins, "open", read_only_open)

    for i, ipip in enumerate(("loaded", "builtin", "unloaded", "absent")):
        fake_kernel(tmp_path / ipip, monkeypatch, ipip)
        kernel.ipip_state()
        kernel.ipip_module_available()
        for mode, plan_list in plans.items():
            monkeypatch.setenv("NSLAB_IPIP", mode)
            try:
                fit(plan_list[i])
            except PrerequisiteError:
                assert mode == "kernel" and ipip in ("unloaded", "absent")
    assert not calls


def test_unloaded_module_is_left_unloaded_and_the_user_is_told_how(tmp_path, monkeypatch):
    from nslab.errors import PrerequisiteError
    fake_kernel(tmp_path, monkeypatch, "unloaded")
    monkeypatch.delenv("NSLAB_IPIP", raising=False)
    plan = plan_of("diy-ipip.yaml")
    fit(plan)                         # auto: the userspace encapsulator ...
    assert {l.kind for l in ops(plan, P.Link) if l.name == "tunl1"} == {"tun"}
    assert plan.notes["_notices"][0].startswith(compile_kernel.UNLOADED_NOTE)   # ... and what to do for the kernel's
    assert "`modprobe ipip`" in compile_kernel.UNLOADED_NOTE and "tunl0 to the root namespace" in compile_kernel.UNLOADED_NOTE
    monkeypatch.setenv("NSLAB_IPIP", "kernel")
    with pytest.raises(PrerequisiteError, match=r"not loaded, and nslab never loads it .*run `modprobe ipip` "
                                                r"yourself"):
        fit(plan_of("diy-ipip.yaml"))


def test_fit_to_kernel_swaps_ipip_for_tun_and_encapsulator(no_kernel_ipip):
    plan = plan_of("spine-leaf.yaml", "ipip")
    before = [(type(op), getattr(op, "ns", None), getattr(op, "name", None)) for op in plan.ops]
    fit(plan)
    devices = [l for l in ops(plan, P.Link) if l.name == "flannel.ipip"]
    assert len(devices) == 4 and {l.kind for l in devices} == {"tun"} and {l.mtu for l in devices} == {9130}
    daemons = {d.node: dict(d.config) for d in ops(plan, P.Daemon)}
    assert daemons["worker1"] == {"local": "10.0.0.21", "remote": "any", "pmtudisc": 0}
    assert [(type(op), getattr(op, "ns", None), getattr(op, "name", None)) for op in plan.ops][:len(before)] == before
    assert plan.notes["_notices"][0].startswith(compile_kernel.USERSPACE_NOTE)
    assert plan.notes["worker1"]["dataplane"].startswith(compile_kernel.USERSPACE_NOTE)


def test_fit_to_kernel_for_some_nodes_only(no_kernel_ipip, monkeypatch):
    monkeypatch.setenv("NSLAB_IPIP", "userspace:worker3")
    plan = plan_of("spine-leaf.yaml", "ipip")
    fit(plan)
    kinds = {l.ns.split(".")[1]: l.kind for l in ops(plan, P.Link) if l.name == "flannel.ipip"}
    assert kinds == {"master1": "ipip", "worker1": "ipip", "worker2": "ipip", "worker3": "tun"}
    # kernel nodes hand the wire complete packets (no partial checksums for a raw socket)
    tx = {(op.ns.split(".")[1], op.dev, op.on) for op in ops(plan, P.TxChecksum)}
    assert tx == {("master1", "enp0s3", False), ("worker1", "enp0s3", False), ("worker2", "enp0s3", False)}


@pytest.mark.parametrize("ipip", ["loaded", "builtin"])
def test_kernel_mode_with_the_module_keeps_kernel_devices(monkeypatch, tmp_path, ipip):
    fake_kernel(tmp_path, monkeypatch, ipip)
    for mode in ("kernel", "auto"):
        monkeypatch.setenv("NSLAB_IPIP", mode)
        plan = plan_of("spine-leaf.yaml", "ipip")
        fit(plan)
        assert {l.kind for l in ops(plan, P.Link) if l.name == "flannel.ipip"} == {"ipip"}
        assert not ops(plan, P.Daemon) and not ops(plan, P.TxChecksum)


def test_fit_to_kernel_refuses_kernel_mode_without_the_module(no_kernel_ipip, monkeypatch):
    from nslab.errors import PrerequisiteError
    monkeypatch.setenv("NSLAB_IPIP", "kernel")
    with pytest.raises(PrerequisiteError, match="no ipip module"):
        fit(plan_of("diy-ipip.yaml"))


def test_plans_without_ipip_are_left_alone(no_kernel_ipip):
    plan = plan_of("spine-leaf.yaml")
    n = len(plan.ops)
    fit(plan)
    assert len(plan.ops) == n and "_notices" not in plan.notes


# ---- packet helpers ----------------------------------------------------------------------------
def ip_header(ttl=64, proto=6, src="10.244.1.2", dst="10.244.3.2", frag=0x4000) -> bytearray:
    import socket
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0x1234, frag, ttl, proto, 0,
                    socket.inet_aton(src), socket.inet_aton(dst))
    h = h[:10] + struct.pack("!H", checksum(h)) + h[12:]
    return bytearray(h + b"\x9c\x40\x00\x50" + b"\0" * 16)


@pytest.mark.parametrize("ttl", [64, 2, 255, 17])
def test_ttl_decrement_keeps_the_checksum_valid(ttl):
    pkt = ip_header(ttl=ttl)
    assert tunnel._ttl_down(pkt)
    assert pkt[8] == ttl - 1 and checksum_ok(bytes(pkt[:20]))


def test_ttl_one_is_dropped():
    assert not tunnel._ttl_down(ip_header(ttl=1))


def test_net_unreachable_as_flannels_proxy_builds_it():
    import socket
    offender = ip_header()
    reply = tunnel.net_unreachable(bytes(offender), socket.inet_aton("10.244.1.0"))
    assert len(reply) == 20 + 8 + 20 + 8
    assert checksum_ok(reply[:20]) and checksum(reply[20:]) == 0
    ttl, proto = reply[8], reply[9]
    assert (ttl, proto, reply[12:16], reply[16:20]) == (8, 1, socket.inet_aton("10.244.1.0"), offender[12:16])
    assert reply[20:22] == b"\x03\x00" and reply[28:] == bytes(offender[:28])


def test_no_net_unreachable_about_icmp_or_later_fragments():
    import socket
    src = socket.inet_aton("10.244.1.0")
    assert tunnel.net_unreachable(bytes(ip_header(proto=1)), src) is None
    assert tunnel.net_unreachable(bytes(ip_header(frag=0x0010)), src) is None
