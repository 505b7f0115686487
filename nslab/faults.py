"""`nslab break`: the faults flannel clusters really hit, made on purpose in a running lab,
recorded in its record before the kernel is touched and undone exactly.

Each break is a list of *changes*, each a small dict naming one kernel entry in one of the
lab's namespaces and what it held before: a plan entry deleted (route, neighbour, FDB; by
its index in the recorded plan), a sysctl, a device's MTU, MAC or state, a blackhole
route, the FORWARD policy, a rule of the plan's iptables text deleted, a conntrack entry
inserted (conntrack -I; undone with -D), a dataplane daemon killed by the PID and start
time in the lab's record (while a recorded break names it, the lab agent does not restart
it: runtime/agent.held; the undo waits for it to run again).  The break is
written to the lab's record (state.breaks, status "breaking") before the first change and
marked "made" after the last; undo marks it "undoing", reverts the changes newest first and
only then drops it from the record.  Every change and its revert is idempotent (set the
recorded value; re-add what is missing, ignoring "exists"; delete, ignoring "gone"), so a
break or undo killed half-way (kill -9) is finished by `nslab break --undo ID`, and `down`
removes a broken lab like any other: every change is inside the lab's own namespaces.

A record read back is input: each change is validated (the namespace is the lab's and
verifiably so, the device is one the plan made, the sysctl key is a per-namespace one, the
plan index names an op of that namespace) before anything is reverted.

`nslab doctor` never reads this record: it compares the kernel with the plan.
"""
from __future__ import annotations

import errno
import ipaddress
import json
import os
import re
import signal
import struct
import subprocess
import time
from dataclasses import dataclass
from typing import Callable

from . import lab as labmod
from . import plan as P
from . import spawn, state
from .apply import iptables, netns
from .apply.applier import Applier
from .errors import ApplyError, NslabError, UsageError

MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
DEV_RE = re.compile(r"[A-Za-z0-9_.@-]{1,15}")
VALUE_RE = re.compile(r"[0-9]{1,10}( [0-9]{1,10}){0,3}")
FLANNEL_DEVS = ("flannel.", "flannel0", "tunl", "flannel.ipip")


@dataclass(frozen=True)
class Fault:
    name: str
    usage: str            # its arguments after NODE
    summary: str          # one line: what is changed
    real: str             # the real event, and where flannel's, kube-proxy's or the kernel's docs describe it
    make: Callable        # (Ctx, args) -> [change]


class Ctx:
    """What a fault needs to choose its target: the record, the plan, the node."""

    def __init__(self, st: state.LabState, plan: P.Plan, node: str):
        self.st, self.plan, self.node = st, plan, node
        self.ns = st.nodes[node]
        self.ops = [(i, op) for i, op in enumerate(plan.ops) if op.ns == self.ns]

    def of(self, cls) -> list[tuple[int, object]]:
        return [(i, op) for i, op in self.ops if isinstance(op, cls)]

    def notes(self) -> dict:
        n = self.plan.notes.get(self.node)
        return n if isinstance(n, dict) else {}

    def flannel_dev(self) -> str | None:
        dev = self.notes().get("device")
        return dev if isinstance(dev, str) and dev in self.devs() else None

    def devs(self) -> list[str]:
        out = []
        for _, op in self.of(P.Link):
            out.append(op.name)
        for op in self.plan.ops:
            if isinstance(op, P.Link) and op.peer and op.peer.ns == self.ns:
                out.append(op.peer.name)
        return out

    def underlay(self) -> str | None:
        """The node's NIC: the VXLAN device's underlay (flannel's --iface), else the device a
        route to another node's pods or the default route leaves by, else its first device."""
        for _, op in self.of(P.Link):
            if op.kind == "vxlan" and dict(op.vxlan).get("dev"):
                return dict(op.vxlan)["dev"]
        routes = [op for _, op in self.of(P.Route) if op.nexthops and op.nexthops[0].via]
        for op in sorted(routes, key=lambda op: not _is_pod_entry(self, op)):
            if not op.nexthops[0].dev.startswith(FLANNEL_DEVS):
                return op.nexthops[0].dev
        devs = [d for d in self.devs() if not d.startswith(FLANNEL_DEVS + ("cni", "veth")) and d != "lo"]
        return devs[0] if devs else None

    def link_mtu(self, dev: str) -> int:
        for op in self.plan.ops:
            if isinstance(op, P.Link) and op.ns == self.ns and op.name == dev:
                return op.mtu
            if isinstance(op, P.Link) and op.peer and op.peer.ns == self.ns and op.peer.name == dev:
                return op.peer.mtu
        raise UsageError(f"{self.node} has no device {dev!r} that the lab made (devices: {', '.join(self.devs())})")

    def forwards(self) -> bool:
        return any(op.key == "net.ipv4.ip_forward" and op.value.strip() == "1" for _, op in self.of(P.Sysctl))


def _pick(ctx: Ctx, cls, what: str, arg: str | None, key: Callable, prefer: Callable = lambda op: False):
    """The plan op of class cls on the node named by arg (its key), else the preferred one."""
    found = [(i, op) for i, op in ctx.of(cls) if _is_pod_entry(ctx, op)]
    if arg is not None:
        for i, op in found:
            if key(op) == arg:
                return i, op
        raise UsageError(f"{ctx.node} has no {what} {arg!r} (it has: {', '.join(key(op) for _, op in found) or 'none'})")
    if not found:
        raise UsageError(f"{ctx.node} has no {what} of the overlay to break (only cluster nodes have)")
    return sorted(found, key=lambda x: not prefer(x[1]))[0]


def _is_pod_entry(ctx: Ctx, op) -> bool:
    if not isinstance(op, P.Route):
        return True
    env = ctx.notes().get("subnet.env") or {}
    try:
        net = ipaddress.ip_network(env.get("FLANNEL_NETWORK", ""))
        own = ipaddress.ip_network(env.get("FLANNEL_SUBNET", ""), strict=False)
        dst = ipaddress.ip_network(op.dst)
    except ValueError:
        return False
    if dst == net:           # udp: one route for the whole network into flannel0
        return bool(op.nexthops) and op.nexthops[0].dev.startswith(FLANNEL_DEVS)
    return dst.subnet_of(net) and not dst.overlaps(own)


# ---- the catalogue ---------------------------------------------------------------------------------

def _route_missing(ctx: Ctx, args: list[str]) -> list[dict]:
    i, _ = _pick(ctx, P.Route, "pod-subnet route", _arg(args, 0), lambda op: op.dst,
                 lambda op: op.nexthops[0].dev.startswith(FLANNEL_DEVS))
    return [{"kind": "del", "ns": ctx.ns, "op": i}]


def _blackhole(ctx: Ctx, args: list[str]) -> list[dict]:
    i, op = _pick(ctx, P.Route, "pod-subnet route", _arg(args, 0), lambda op: op.dst,
                  lambda op: op.nexthops[0].dev.startswith(FLANNEL_DEVS))
    return [{"kind": "del", "ns": ctx.ns, "op": i}, {"kind": "blackhole", "ns": ctx.ns, "dst": op.dst}]


def _host_gw_across(ctx: Ctx, args: list[str]) -> list[dict]:
    i, op = _pick(ctx, P.Route, "pod-subnet route through the overlay", _arg(args, 0), lambda op: op.dst,
                  lambda op: op.nexthops[0].dev.startswith(FLANNEL_DEVS))
    hop = op.nexthops[0]
    mac = next((n.lladdr for _, n in ctx.of(P.Neigh) if n.address == hop.via), None)
    node_ip = next((f.dst for _, f in ctx.of(P.Fdb) if f.lladdr == mac), None)
    nic = ctx.underlay()
    if not hop.dev.startswith(FLANNEL_DEVS) or node_ip is None or nic is None:
        raise UsageError(f"{ctx.node}'s route to {op.dst} does not go through the VXLAN overlay: host-gw-across-"
                         f"subnets needs a vxlan lab whose nodes sit in different racks (spine-leaf)")
    return [{"kind": "del", "ns": ctx.ns, "op": i},
            {"kind": "route-via", "ns": ctx.ns, "dst": op.dst, "via": node_ip, "dev": nic}]


def _neigh_missing(ctx: Ctx, args: list[str]) -> list[dict]:
    i, _ = _pick(ctx, P.Neigh, "VTEP neighbour", _arg(args, 0), lambda op: op.address)
    return [{"kind": "del", "ns": ctx.ns, "op": i}]


def _fdb_missing(ctx: Ctx, args: list[str]) -> list[dict]:
    i, _ = _pick(ctx, P.Fdb, "FDB entry", _arg(args, 0), lambda op: op.lladdr)
    return [{"kind": "del", "ns": ctx.ns, "op": i}]


def _vtep_mac(ctx: Ctx, args: list[str]) -> list[dict]:
    dev = ctx.flannel_dev()
    link = next((op for _, op in ctx.of(P.Link) if op.name == dev and op.kind == "vxlan"), None)
    if link is None or not link.mac:
        raise UsageError(f"{ctx.node} has no VXLAN device (vtep-mac-changed needs the vxlan backend)")
    new = _arg(args, 0) or _random_mac()
    if not MAC_RE.fullmatch(new.lower()):
        raise UsageError(f"{new!r} is not a MAC address (like 0a:58:0a:f4:03:00)")
    return [{"kind": "link", "ns": ctx.ns, "dev": dev, "attr": "address", "before": _link_now(ctx.ns, dev, "address"),
             "after": new.lower()}]


def _mtu(ctx: Ctx, args: list[str]) -> list[dict]:
    dev = _arg(args, 0) or ctx.underlay()
    if dev is None:
        raise UsageError(f"{ctx.node} has no device to change the MTU of")
    planned = ctx.link_mtu(dev)
    new = _arg(args, 1) or str(planned - 50)
    if not new.isdigit() or not 68 <= int(new) <= 65535:
        raise UsageError(f"MTU {new!r} is not a number from 68 to 65535")
    return [{"kind": "link", "ns": ctx.ns, "dev": dev, "attr": "mtu", "before": _link_now(ctx.ns, dev, "mtu"),
             "after": int(new)}]


def _link_down(ctx: Ctx, args: list[str]) -> list[dict]:
    dev = _arg(args, 0) or ctx.flannel_dev() or ctx.underlay()
    if dev is None or dev not in ctx.devs():
        raise UsageError(f"{ctx.node} has no device {dev!r} that the lab made (devices: {', '.join(ctx.devs())})")
    return [{"kind": "link", "ns": ctx.ns, "dev": dev, "attr": "state", "before": "up", "after": "down"}]


def _sysctl_change(ctx: Ctx, key: str, after: str) -> dict:
    return {"kind": "sysctl", "ns": ctx.ns, "key": key, "before": _sysctl_now(ctx.ns, key), "after": after}


def _ip_forward(ctx: Ctx, args: list[str]) -> list[dict]:
    if not ctx.forwards():
        raise UsageError(f"{ctx.node} does not forward (the lab set no net.ipv4.ip_forward=1 there): choose a "
                         f"router or a cluster node")
    return [_sysctl_change(ctx, "net.ipv4.ip_forward", "0")]


def _rp_filter(ctx: Ctx, args: list[str]) -> list[dict]:
    return [_sysctl_change(ctx, "net.ipv4.conf.all.rp_filter", "1")]


def _forward_drop(ctx: Ctx, args: list[str]) -> list[dict]:
    if not ctx.forwards():
        raise UsageError(f"{ctx.node} does not forward: its FORWARD chain sees no packet; choose a router or a "
                         f"cluster node")
    return [{"kind": "policy", "ns": ctx.ns, "chain": "FORWARD", "before": _policy_now(ctx.ns), "after": "DROP"}]


def _masq_missing(ctx: Ctx, args: list[str]) -> list[dict]:
    changes = []
    for i, op in ctx.of(P.Iptables):
        for j, (table, chain, spec) in enumerate(iptables.rules_of(op.text)):
            if table == "nat" and chain == "POSTROUTING" and "MASQUERADE" in spec.split() and " ! -d " in f" {spec} ":
                # where it is in the kernel's chain now: the undo puts it back there (rule order
                # is meaning: flannel's RETURN rules must come before its MASQUERADE)
                saved = _saved_spec(table, chain, spec)
                have = iptables.parse_save(iptables.save(ctx.ns, counters=False)).get(table, {}).get(chain)
                specs = [r.spec for r in have.rules] if have is not None else []
                pos = specs.index(saved) + 1 if saved in specs else len(specs) + 1
                changes.append({"kind": "rule", "ns": ctx.ns, "op": i, "line": j, "pos": pos})
    if not changes:
        raise UsageError(f"{ctx.node} has no masquerade rule of flannel's (ipMasq is off, or it is no cluster node)")
    return changes[:1]


def _services(ctx: Ctx) -> tuple:
    """The lab's cluster and its services as kube-proxy sees them (compile/services.py)."""
    from .compile.services import services_of   # lazy: start-up
    cluster = labmod.topology(ctx.st.lab, ctx.st).cluster
    if cluster is None:
        raise UsageError(f"lab {ctx.st.lab} has no cluster (services need one)")
    return cluster, services_of(cluster)


def _endpoint_gone(ctx: Ctx, args: list[str]) -> list[dict]:
    cluster, services = _services(ctx)
    eps = {pod: s.name for s in cluster.services.values() if not s.headless for pod in s.endpoints
           if cluster.pods[pod].node == ctx.node}
    pod = _arg(args, 0) or next(iter(sorted(eps)), None)
    if pod not in eps:
        raise UsageError(f"{ctx.node} runs no endpoint {pod!r} of a service (endpoints there: "
                         f"{', '.join(sorted(eps)) or 'none'})" if pod else
                         f"{ctx.node} runs no endpoint of a service: choose a node that does")
    pod_ctx = Ctx(ctx.st, ctx.plan, pod)
    dev = next(d for d in pod_ctx.devs() if d != "lo")
    # the pod's interface down: as a deleted pod's veth, nothing answers on its IP
    return [{"kind": "link", "ns": pod_ctx.ns, "dev": dev, "attr": "state", "before": "up", "after": "down"}]


STALE_SPORT = 41053     # the client's UDP source port: a resolver or agent that keeps one socket


def _stale_conntrack(ctx: Ctx, args: list[str]) -> list[dict]:
    cluster, services = _services(ctx)
    udp = [s for s in services if s.protocol == "UDP" and s.endpoints]
    name = _arg(args, 0)
    s = next((s for s in udp if name in (None, s.name)), None)
    if s is None:
        raise UsageError(f"lab {ctx.st.lab} has no UDP service {name or ''} with endpoints (UDP services: "
                         f"{', '.join(x.name for x in udp) or 'none'})".replace("  ", " "))
    pods = sorted(p for p, pod in cluster.pods.items() if pod.node == ctx.node and p in ctx.st.nodes)
    src = str(cluster.pods[pods[0]].ip.ip) if pods else str(cluster.nodes[ctx.node].ip)
    # the old endpoint: an address of the first endpoint's node's pod subnet that no pod has
    # now (its pod was replaced; the new one got another address)
    taken = {str(p.ip.ip) for p in cluster.pods.values()}
    subnet = cluster.nodes[s.endpoints[0].node].subnet
    old = next(str(a) for a in reversed(list(subnet.hosts())) if str(a) not in taken)
    return [{"kind": "conntrack", "ns": ctx.ns, "src": src, "sport": STALE_SPORT, "vip": s.cluster_ip,
             "port": s.port, "old": old, "target": s.target_port}]


def _daemon_dead(ctx: Ctx, args: list[str]) -> list[dict]:
    whats = [op.what for _, op in ctx.of(P.Daemon) if op.kind in ("udp", "ipip")]
    if not whats:
        raise UsageError(f"{ctx.node} runs no userspace dataplane (daemon-dead needs the udp backend or "
                         f"userspace ipip)")
    proc = next((p for p in ctx.st.processes if p.what == whats[0] and state.is_ours(p)), None)
    if proc is None:
        raise UsageError(f"the {whats[0]} is not running (`nslab show` restarts it)")
    return [{"kind": "daemon", "ns": ctx.ns, "what": whats[0], "pid": proc.pid, "start": proc.start_time}]


def _bridge_nf_call(ctx: Ctx, args: list[str]) -> list[dict]:
    if not any(op.kind == "bridge" for _, op in ctx.of(P.Link)):
        raise UsageError(f"{ctx.node} has no bridge (cni0): choose a cluster node that runs pods")
    return [_sysctl_change(ctx, BRIDGE_NF_CALL, "0")]


BRIDGE_NF_CALL = "net.bridge.bridge-nf-call-iptables"


CATALOGUE = {f.name: f for f in (
    Fault("vtep-mac-changed", "[MAC]", "the node's flannel.<VNI> gets a new MAC; its peers keep the old one",
          "a node rebooted or flanneld recreated flannel.<VNI> with a new MAC; the other nodes' neighbour and "
          "FDB entries kept the old one (flannel-io/flannel issues 1036 `reboot bug` and 1795 `wrong VtepMAC "
          "after flannel.1 first up`: the peers' entries are only rewritten when they see the lease change)",
          _vtep_mac),
    Fault("host-gw-across-subnets", "[POD-SUBNET]",
          "the route to another rack's pods becomes host-gw's (via the node's IP)",
          "host-gw routes a pod subnet via the node's own IP, which only works when every node shares one L2 "
          "segment (flannel's docs, Backends: host-gw `requires direct layer2 connectivity`); across racks "
          "the next hop is never answered (ARP for an address that is not on the wire)",
          _host_gw_across),
    Fault("fdb-missing", "[MAC]", "one FDB entry of the node's flannel.<VNI> is deleted",
          "flannel's vxlan backend adds `bridge fdb append MAC dev flannel.<VNI> dst IP self permanent` per remote "
          "node (pkg/backend/vxlan/vxlan_network.go handleSubnetEvents); a lost entry leaves the kernel without the "
          "remote VTEP's IP (bridge(8) fdb)",
          _fdb_missing),
    Fault("neigh-missing", "[ADDRESS]", "one VTEP neighbour entry of the node is deleted",
          "flannel adds `ip neigh replace VTEP-IP lladdr MAC dev flannel.<VNI> nud permanent` per remote node "
          "before the FDB entry and route; without it the inner frame has no destination MAC (ip-neighbour(8))",
          _neigh_missing),
    Fault("route-missing", "[POD-SUBNET]", "the node's route to another node's pod subnet is deleted",
          "flannel's route to a remote lease removed by hand or by another agent (flannel re-adds host-gw and "
          "ipip routes every 10 s: pkg/backend/route_network.go routeCheck; vxlan does not)",
          _route_missing),
    Fault("blackhole-route", "[POD-SUBNET]", "the route to another node's pod subnet becomes a blackhole",
          "a `blackhole` route left behind (Calico and kube-router install them for their own blocks; "
          "ip-route(8): the packets are discarded silently)",
          _blackhole),
    Fault("mtu-mismatch", "[DEVICE [MTU]]", "one device's MTU is lowered (default: the underlay NIC, by 50)",
          "one node's NIC or flannel device with a smaller MTU than the rest: packets that fit everywhere else are "
          "dropped there (flannel sets flannel.<VNI> to the NIC's MTU - 50: pkg/backend/vxlan/device.go)",
          _mtu),
    Fault("ip-forward-off", "", "net.ipv4.ip_forward=0 on a router or cluster node",
          "a node rebooted without its sysctl.d file, or a hardening script (kubeadm's preflight checks "
          "/proc/sys/net/ipv4/ip_forward; kernel Documentation/networking/ip-sysctl.rst)",
          _ip_forward),
    Fault("forward-drop", "", "the iptables FORWARD policy becomes DROP",
          "Docker sets the FORWARD policy to DROP when it starts (docs.docker.com, `Docker and iptables`); "
          "flannel's own FORWARD ACCEPT rules for the pod network are what keeps pods reachable",
          _forward_drop),
    Fault("link-down", "[DEVICE]", "a device is set down (default: flannel.<VNI>, else the NIC)",
          "a NIC or flannel's device going down: the kernel drops every route through it and its neighbours",
          _link_down),
    Fault("rp-filter", "", "strict reverse-path filtering (net.ipv4.conf.all.rp_filter=1) on the node",
          "distributions that ship rp_filter=1; on a node whose replies leave by another interface than the "
          "request came in (an asymmetric path) strict mode drops them (ip-sysctl.rst rp_filter)",
          _rp_filter),
    Fault("masq-missing", "", "flannel's MASQUERADE rule for pod -> outside traffic is deleted",
          "flannel's ip-masq rules (pkg/ip/iptables.go MasqRules) removed by an iptables flush: pods still reach "
          "each other, but traffic to the outside leaves with a pod source address and gets no answer",
          _masq_missing),
    Fault("endpoint-gone", "[POD]", "a service endpoint pod on the node loses its network (eth0 down)",
          "a pod deleted or crashed while kube-proxy still holds its endpoint (kube-proxy programs the "
          "EndpointSlices it is told about, with a delay: kubernetes.io, Virtual IPs and Service Proxies); "
          "connections DNATed to it get no answer",
          _endpoint_gone),
    Fault("stale-conntrack", "[SERVICE]", "a UDP conntrack entry to the service still DNATs to an old endpoint",
          "UDP has no connection to end: after an endpoint change kube-proxy deletes the conntrack entries "
          "that DNAT to the old endpoint (pkg/proxy/conntrack/cleanup.go, `conntrack -D --orig-dst VIP "
          "--dst-nat OLD -p udp`); without that a client that keeps its source port keeps sending to the old "
          "endpoint (kubernetes issues 48370, 59368)",
          _stale_conntrack),
    Fault("daemon-dead", "", "the node's udp or userspace ipip dataplane is killed and kept down",
          "flanneld with the udp backend forwards every packet in userspace (flannel's docs, Backends: udp, "
          "`use only for debug`): when the process dies the TUN device stays and traffic stops",
          _daemon_dead),
    Fault("bridge-nf-call-off", "", "net.bridge.bridge-nf-call-iptables=0 on the node",
          "without br_netfilter's hook a reply from an endpoint on the client's own node is bridged on cni0 "
          "and skips the reverse NAT (note 001; kubeadm's preflight requires bridge-nf-call-iptables=1; "
          "kernel Documentation/networking/ip-sysctl.rst, bridge-nf-call-iptables)",
          _bridge_nf_call),
)}


# ---- reading the kernel ----------------------------------------------------------------------------

def _arg(args: list[str], i: int) -> str | None:
    return args[i] if len(args) > i else None


def _random_mac() -> str:
    b = bytearray(os.urandom(6))
    b[0] = (b[0] & 0xFE) | 0x02          # unicast, locally administered (as the kernel's random MACs)
    return ":".join(f"{x:02x}" for x in b)


def _ip(ns: str, *argv: str) -> str:
    r = subprocess.run([spawn.need("ip"), "-n", ns, *argv], capture_output=True, text=True, cwd=spawn.CWD,
                       env=spawn.env())
    if r.returncode:
        raise ApplyError(f"ip -n {ns} {' '.join(argv)}: {' '.join(r.stderr.split())}")
    return r.stdout


def _link_now(ns: str, dev: str, attr: str):
    info = json.loads(_ip(ns, "-j", "link", "show", "dev", dev) or "[]")
    if not info:
        raise NslabError(f"device {dev} is not in {ns}")
    return info[0]["mtu"] if attr == "mtu" else info[0].get("address")


def _sysctl_now(ns: str, key: str) -> str:
    with netns.enter(ns), netns.sysctl_walks():
        return " ".join(netns.read_sysctl(key).split())


def _policy_now(ns: str) -> str:
    chain = iptables.parse_save(iptables.save(ns, counters=False)).get("filter", {}).get("FORWARD")
    return chain.policy if chain is not None and chain.policy else "ACCEPT"


def _saved_spec(table: str, chain: str, spec: str) -> str:
    """A rule as iptables-save writes it (apply/iptables.as_saved), to find it in the kernel."""
    saved = iptables.as_saved([f"*{table}\n-A {chain} {spec}\nCOMMIT\n"])
    rules = saved.get(table, {}).get(chain)
    return rules.rules[0].spec if rules is not None and rules.rules else spec


# ---- validating a recorded change (records read back are input) ---------------------------------

def _check(st: state.LabState, plan: P.Plan, c) -> dict:
    bad = NslabError(f"lab {st.lab}: a recorded break holds a change nslab did not write ({str(c)[:120]}); "
                     f"nslab will not act on it: `nslab down {st.lab}` removes the lab whatever its state")
    if not isinstance(c, dict) or not isinstance(c.get("ns"), str) or c["ns"] not in st.nodes.values():
        raise bad
    labmod.require_own_namespaces(st, [c["ns"]])
    kind = c.get("kind")
    devs = {op.name for op in plan.ops if isinstance(op, P.Link) and op.ns == c["ns"]} | \
        {op.peer.name for op in plan.ops if isinstance(op, P.Link) and op.peer and op.peer.ns == c["ns"]}
    if kind in ("del", "rule"):
        i = c.get("op")
        if type(i) is not int or not 0 <= i < len(plan.ops) or plan.ops[i].ns != c["ns"]:
            raise bad
        op = plan.ops[i]
        if kind == "del" and not isinstance(op, (P.Route, P.Neigh, P.Fdb)):
            raise bad
        if kind == "rule" and (not isinstance(op, P.Iptables) or type(c.get("line")) is not int
                               or not 0 <= c["line"] < len(iptables.rules_of(op.text))
                               or type(c.get("pos")) is not int or not 1 <= c["pos"] <= 100000):
            raise bad
    elif kind == "sysctl":
        if P.sysctl_key_problem(c.get("key")) or not all(isinstance(c.get(k), str) and VALUE_RE.fullmatch(c[k])
                                                          for k in ("before", "after")):
            raise bad
    elif kind == "link":
        attr, values = c.get("attr"), (c.get("before"), c.get("after"))
        if c.get("dev") not in devs or attr not in ("mtu", "address", "state"):
            raise bad
        if attr == "mtu" and not all(type(v) is int and 68 <= v <= 65535 for v in values):
            raise bad
        if attr == "address" and not all(isinstance(v, str) and MAC_RE.fullmatch(v) for v in values):
            raise bad
        if attr == "state" and values != ("up", "down"):
            raise bad
    elif kind == "blackhole":
        try:
            ipaddress.ip_network(c.get("dst"))
        except (TypeError, ValueError):
            raise bad from None
    elif kind == "route-via":
        try:
            ipaddress.ip_network(c.get("dst"))
            ipaddress.ip_address(c.get("via"))
        except (TypeError, ValueError):
            raise bad from None
        if c.get("dev") not in devs:
            raise bad
    elif kind == "conntrack":
        try:
            for k in ("src", "vip", "old"):
                ipaddress.IPv4Address(c.get(k))
        except (TypeError, ValueError):
            raise bad from None
        if not all(type(c.get(k)) is int and 0 < c[k] < 65536 for k in ("sport", "port", "target")):
            raise bad
    elif kind == "daemon":
        whats = {op.what for op in plan.ops if isinstance(op, P.Daemon) and op.ns == c["ns"] and op.kind != "dns"}
        if c.get("what") not in whats or type(c.get("pid")) is not int or c["pid"] < 2 or \
                not isinstance(c.get("start"), (int, float)):
            raise bad
    elif kind == "policy":
        if c.get("chain") != "FORWARD" or not all(c.get(k) in ("ACCEPT", "DROP") for k in ("before", "after")):
            raise bad
    else:
        raise bad
    return c


# ---- making and reverting one change -------------------------------------------------------------

def _send(applier: Applier, handle, ops: list, delete: bool) -> None:
    """Add (or delete) plan ops in one namespace; already there (or already gone) is fine."""
    if delete:
        applier.undo(handle, ops)
        return
    messages = []
    for op in ops:
        for data in applier.encode(handle, op):
            applier.seq += 1
            struct.pack_into("=I", data, 8, applier.seq)
            messages.append((applier.seq, bytes(data), op))
    applier.send(handle, messages, ignore=(errno.EEXIST,))


def _own_neighbours(plan: P.Plan, ns: str, dev: str) -> list:
    return [op for op in plan.ops if isinstance(op, P.Neigh) and op.ns == ns and op.dev == dev]


def _change(lab: str, plan: P.Plan, c: dict, forward: bool) -> None:
    kind, ns = c["kind"], c["ns"]
    if kind in ("del", "blackhole"):
        applier = Applier()
        try:
            handle = applier.open_namespace(ns)
            if kind == "del":
                _send(applier, handle, [plan.ops[c["op"]]], delete=forward)
            else:
                try:
                    _ip(ns, "route", "add" if forward else "del", "blackhole", c["dst"])
                except ApplyError as e:
                    if not any(w in str(e) for w in ("File exists", "No such process", "not found")):
                        raise
        finally:
            applier.close()
    elif kind == "route-via":
        argv = ["route", "add" if forward else "del", c["dst"], "via", c["via"], "dev", c["dev"], "onlink"]
        try:
            _ip(ns, *argv)
        except ApplyError as e:
            if not any(w in str(e) for w in ("File exists", "No such process", "not found")):
                raise
    elif kind == "sysctl":
        with netns.enter(ns):
            netns.write_sysctl(c["key"], c["after" if forward else "before"])
    elif kind == "link":
        value = c["after" if forward else "before"]
        if c["attr"] == "state":
            node = next(n for n, x in state.load(lab).nodes.items() if x == ns)
            if value == "down":
                _ip(ns, "link", "set", "dev", c["dev"], "down")
            else:          # up, and the routes, neighbours and FDB entries the kernel dropped
                labmod.set_link(lab, f"{node}:{c['dev']}", up=True)
            return
        _ip(ns, "link", "set", "dev", c["dev"], c["attr"], str(value))
        if c["attr"] == "address":
            # Linux flushes a device's neighbours when its MAC changes (neigh_changeaddr);
            # flanneld, restarted, writes its own again: only the peers keep stale ones.
            applier = Applier()
            try:
                _send(applier, applier.open_namespace(ns), _own_neighbours(plan, ns, c["dev"]), delete=False)
            finally:
                applier.close()
    elif kind == "conntrack":
        _conntrack(ns, c, forward)
    elif kind == "daemon":
        # held down first (the record names it: the agent does not restart it), then killed
        # by the PID and start time recorded: only the process the lab started
        proc = state.Process(pid=c["pid"], start_time=c["start"], what=c["what"])
        if forward and state.is_ours(proc):
            os.kill(proc.pid, signal.SIGKILL)
    elif kind == "policy":
        iptables.apply(ns, f"*filter\n:{c['chain']} {c['after' if forward else 'before']} [0:0]\nCOMMIT\n")
    elif kind == "rule":
        table, chain, spec = iptables.rules_of(plan.ops[c["op"]].text)[c["line"]]
        spec = _saved_spec(table, chain, spec)
        have = iptables.parse_save(iptables.save(ns, counters=False)).get(table, {}).get(chain)
        present = have is not None and any(r.spec == spec for r in have.rules)
        if forward and present:
            iptables.apply(ns, f"*{table}\n-D {chain} {spec}\nCOMMIT\n")
        elif not forward and not present:
            pos = min(c["pos"], len(have.rules) + 1 if have is not None else 1)
            iptables.apply(ns, f"*{table}\n-I {chain} {pos} {spec}\nCOMMIT\n")


def _conntrack(ns: str, c: dict, forward: bool) -> None:
    """Insert (or delete) the stale entry: client -> VIP:port whose reply comes from the old
    endpoint, as the DNAT of an earlier connection left it (conntrack(8) -I/-D)."""
    match = ["-p", "udp", "-s", c["src"], "-d", c["vip"], "--sport", str(c["sport"]), "--dport", str(c["port"])]
    argv = ["-I", *match, "-r", c["old"], "-q", c["src"], "--reply-port-src", str(c["target"]),
            "--reply-port-dst", str(c["sport"]), "-t", "600", "-u", "SEEN_REPLY,ASSURED"] if forward else \
        ["-D", *match]
    r = subprocess.run([spawn.need("ip"), "netns", "exec", ns, spawn.need("conntrack"), *argv], capture_output=True,
                       text=True, cwd=spawn.CWD, env=spawn.env())
    if r.returncode and not any(w in r.stderr for w in ("File exists", "0 flow entries")):
        raise ApplyError(f"conntrack {' '.join(argv)} in {ns}: {' '.join(r.stderr.split())}")


def _wait_running(lab: str, whats: list[str], timeout: float = 20.0) -> None:
    """After a daemon-dead undo: the agent restarts the dataplane within RESTART_GAP."""
    from .runtime import agent   # lazy: start-up
    end = time.monotonic() + timeout
    while True:
        st = state.load(lab)
        if st is None:
            return
        agent.heal(st)           # agent and warden both gone: nobody else restarts it
        missing = [w for w in whats if not any(p.what == w and state.is_ours(p) for p in st.processes)]
        if not missing:
            return
        if time.monotonic() > end:
            raise NslabError(f"lab {lab}: {missing[0]} did not start again within {timeout:.0f} s "
                             f"(`nslab show -l {lab}` says why)")
        time.sleep(0.2)


# ---- the verbs -----------------------------------------------------------------------------------

def inject(lab: str, fault: str, node: str, args: list[str]) -> dict:
    """Make `fault` on `node`: recorded first, then made; returns the break's record."""
    labmod.require_root()
    if fault not in CATALOGUE:
        raise UsageError(f"no fault {fault!r} in the catalogue (`nslab break --list`: {', '.join(CATALOGUE)})")
    with state.locked(lab) as exists:
        st = state.load(lab) if exists else None
        if st is None or st.status != "up":
            raise UsageError(f"no lab named {lab!r} is up")
        labmod.node_namespace(lab, node, st)
        plan = labmod.applied_plan(lab, st)
        changes = [_check(st, plan, c) for c in CATALOGUE[fault].make(Ctx(st, plan, node), args)]
        entry = {"id": max([b.get("id", 0) for b in st.breaks if isinstance(b.get("id"), int)], default=0) + 1,
                 "fault": fault, "node": node, "args": list(args), "status": "breaking", "made": time.time(),
                 "changes": changes}
        state.update(lab, lambda s: s.breaks.append(entry))          # recorded before the kernel changes
        for c in changes:
            _change(lab, plan, c, forward=True)
        entry["status"] = "made"
        state.update(lab, lambda s: _set_status(s, entry["id"], "made"))
        return entry


def _set_status(st: state.LabState, ident: int, status: str) -> None:
    for b in st.breaks:
        if b.get("id") == ident:
            b["status"] = status


def undo(lab: str, ids: list[int] | None) -> list[dict]:
    """Revert the breaks `ids` (None: all), newest first; returns those reverted."""
    labmod.require_root()
    with state.locked(lab) as exists:
        st = state.load(lab) if exists else None
        if st is None:
            raise UsageError(f"no lab named {lab!r} is running")
        known = {b.get("id"): b for b in st.breaks if isinstance(b, dict)}
        for i in ids or []:
            if i not in known:
                raise UsageError(f"lab {lab} has no break {i} (breaks: {', '.join(map(str, known)) or 'none'})")
        chosen = [known[i] for i in sorted(known, key=lambda x: -x if isinstance(x, int) else 0)
                  if ids is None or i in ids]
        plan = labmod.applied_plan(lab, st)
        for b in chosen:
            changes = b.get("changes")
            if not isinstance(changes, list):
                raise NslabError(f"lab {lab}: break {b.get('id')} in its record has no list of changes")
            changes = [_check(st, plan, c) for c in changes]       # all valid before any is reverted
            state.update(lab, lambda s: _set_status(s, b["id"], "undoing"))
            for c in reversed(changes):
                _change(lab, plan, c, forward=False)
            state.update(lab, lambda s: s.breaks.remove(next(x for x in s.breaks if x.get("id") == b["id"])))
    held = [c["what"] for b in chosen for c in b["changes"] if c.get("kind") == "daemon"]
    if held:
        _wait_running(lab, held)       # outside the lock: the agent records the new process
    return chosen


def default_node(lab: str) -> str:
    """The node a fault is made on when none is named: the first cluster node."""
    plan = labmod.applied_plan(lab)
    st = state.load(lab)
    for node in plan.notes:
        if node in st.nodes:
            return node
    raise UsageError(f"lab {lab} has no cluster node: name the node (nslab break FAULT NODE)")


def recorded(lab: str) -> list[dict]:
    st = state.load(lab)
    return [b for b in (st.breaks if st else []) if isinstance(b, dict)]


def describe(b: dict) -> str:
    args = " ".join(str(a) for a in b.get("args", []))
    status = "" if b.get("status") == "made" else f" [{b.get('status')}: half made or half undone; --undo finishes]"
    return f"{b.get('id')}: {b.get('fault')} on {b.get('node')}" + (f" {args}" if args else "") + status
