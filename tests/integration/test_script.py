"""`nslab script` prints iproute2 commands that, run by hand, build the same lab.

Each case runs the generated script with sh (as a user would paste it), then compares
every node's links, addresses, routes, neighbours and FDB with the same topology built
by `nslab up` under another name, and pings through the hand-built lab."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (real namespaces)")
TOPO = os.path.join(os.path.dirname(__file__), "..", "..", "topologies")
NSLAB = [sys.executable, "-m", "nslab.cli"]


def kernel_view(ns: str, lab: str) -> dict:
    """What `ip`/`bridge` show in a namespace, with the lab name and ifindexes taken out."""
    def run(*argv):
        out = subprocess.run(["ip", "-n", ns, *argv], capture_output=True, text=True, check=True).stdout
        return out
    links = []
    for l in json.loads(run("-d", "-j", "link", "show")):
        info = l.get("linkinfo", {})
        links.append((l["ifname"], l["mtu"], l.get("address"), l.get("master"), info.get("info_kind"),
                      json.dumps(info.get("info_data", {}).get("id")), "UP" in l["flags"]))
    addrs = sorted((a["ifname"], i["local"], i["prefixlen"], i.get("address"))
                   for a in json.loads(run("-j", "addr", "show")) for i in a.get("addr_info", []))
    routes = sorted(run("route", "show").splitlines())
    neigh = sorted(x for x in run("neigh", "show", "nud", "permanent").splitlines())
    fdb = subprocess.run(["bridge", "-n", ns, "fdb", "show"], capture_output=True, text=True).stdout
    fdb = sorted(x for x in fdb.splitlines() if " dst " in x)
    return {"links": sorted(links), "addrs": addrs, "routes": routes, "neigh": neigh, "fdb": fdb}


@pytest.mark.parametrize("topology, src, dst", [
    ("diy-veth.yaml", "ns1", "10.1.1.3"),
    ("diy-bridge.yaml", "ns1", "10.1.1.3"),
    ("diy-ip-forward.yaml", "ns1", "10.1.2.2"),
    ("flannel-vxlan.yaml", "client", "10.244.1.6"),
])
def test_script_builds_the_same_lab(topology, src, dst):
    path = os.path.join(TOPO, topology)
    by_hand, by_nslab = f"t{os.getpid()}sh", f"t{os.getpid()}up"
    script = subprocess.run(NSLAB + ["script", path, "--name", by_hand], capture_output=True, text=True, check=True).stdout
    namespaces = re.findall(r"^ip netns add (\S+)$", script, re.M)
    assert namespaces and all(n.startswith(by_hand + ".") for n in namespaces)
    etc_netns_existed = os.path.isdir("/etc/netns")     # the script's mkdir -p may make it
    try:
        # The hand-built lab shares MACs with nothing: MACs derive from the lab name.
        subprocess.run(["sh", "-e"], input=script, text=True, check=True, capture_output=True)
        subprocess.run(NSLAB + ["up", "-q", path, "--name", by_nslab], check=True, capture_output=True)
        for ns in namespaces:
            node = ns.split(".", 1)[1]
            hand, ours = kernel_view(ns, by_hand), kernel_view(f"{by_nslab}.{node}", by_nslab)
            # MACs differ by construction (derived from the lab name); compare everything else
            for view in (hand, ours):
                view["links"] = [l[:2] + l[3:] for l in view["links"]]
                view["neigh"] = [re.sub(r"lladdr \S+", "lladdr M", x) for x in view["neigh"]]
                view["fdb"] = [re.sub(r"^\S+", "M", x) for x in view["fdb"]]
            assert hand == ours, f"{node} differs"
        ping = subprocess.run(["ip", "netns", "exec", f"{by_hand}.{src}", "ping", "-c1", "-W2", dst],
                              capture_output=True, text=True)
        assert ping.returncode == 0, ping.stdout + ping.stderr
    finally:
        subprocess.run(NSLAB + ["down", by_nslab], capture_output=True)
        for ns in namespaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
            shutil.rmtree(f"/etc/netns/{ns}", ignore_errors=True)
        if not etc_netns_existed:
            try:
                os.rmdir("/etc/netns")      # only if nothing else is in it
            except OSError:
                pass
    assert not [n for n in os.listdir("/run/netns") if n.startswith((by_hand + ".", by_nslab + "."))]
