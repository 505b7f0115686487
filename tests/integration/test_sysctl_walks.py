"""Namespace sysctls are written through private procfs instances (issue 12: under /proc
every namespace's ipv4/ipv6 directories hang off one dentry and each first lookup walks all
of them).  The values must land in the right namespace, also when one instance serves
several namespaces, and the instance must not be /proc."""
from __future__ import annotations

import os

import pytest

from nslab.apply import netns

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (real namespaces)")


def _anonymous_namespace(write_forwarding: int) -> tuple[int, int]:
    """A namespace held by an fd (never named), ip_forward written inside; (fd, the walk's
    root device)."""
    def inside():
        with netns.sysctl_walks():
            netns.write_sysctl("net.ipv4.ip_forward", write_forwarding)
            netns.write_sysctl("net.ipv6.conf.all.disable_ipv6", 1)
            return os.fstat(netns._walk_cache[("proc",)]).st_dev if ("proc",) in netns._walk_cache else None
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        netns.unshare(netns.CLONE_NEWNET)
        fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        dev = inside()
    finally:
        netns.setns(home)
        os.close(home)
    return fd, dev


def _read_in(fd: int, key: str) -> str:
    with netns.Entered(fd):
        return netns.read_sysctl(key)


def test_each_namespace_gets_its_own_value_through_shared_private_instances(root_unchanged, monkeypatch):
    before = open("/proc/sys/net/ipv4/ip_forward").read()
    made, instances, fresh = [], [], netns._fresh_procfs
    monkeypatch.setattr(netns, "_fresh_procfs", lambda: instances.append(fresh()) or instances[-1])
    try:
        for i in range(netns.PROC_ROOT_SHARE + 3):            # two instances, the first one shared by 32
            made.append(_anonymous_namespace(i % 2))
        devices = [dev for _, dev in made]
        assert None not in devices, "no private procfs instance (fsopen) on this kernel"
        assert os.stat("/proc").st_dev not in devices          # never the host's /proc
        assert len(instances) == 2                              # the first one served PROC_ROOT_SHARE namespaces
        for i, (fd, _) in enumerate(made):
            assert _read_in(fd, "net.ipv4.ip_forward") == str(i % 2), i
            assert _read_in(fd, "net.ipv6.conf.all.disable_ipv6") == "1"
    finally:
        netns.release_walk_root()
        for fd, _ in made:
            os.close(fd)
    assert open("/proc/sys/net/ipv4/ip_forward").read() == before


def test_lab_devices_have_no_ipv6(root_unchanged, lab_factory):
    """The plan writes only net.ipv6.conf.all.disable_ipv6: the kernel copies it to `default`,
    so the veths made afterwards have IPv6 off too (no link-local address, no router
    solicitation or MLD report in the notes' captures)."""
    import subprocess
    lab = lab_factory("diy-veth.yaml")
    for node in ("ns1", "ns2"):
        ns = lab.ns(node)
        with netns.enter(ns):
            assert netns.read_sysctl("net.ipv6.conf.default.disable_ipv6") == "1"
            devices = [d for d in os.listdir("/proc/sys/net/ipv6/conf") if d not in ("all", "default", "lo")]
            assert devices and all(netns.read_sysctl(f"net.ipv6.conf.{d}.disable_ipv6") == "1" for d in devices)
        out = subprocess.run(["ip", "-n", ns, "-6", "addr"], capture_output=True, text=True, check=True).stdout
        assert out.strip() == "", out
