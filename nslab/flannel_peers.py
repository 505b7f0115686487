"""Flannel across machines as flannel does it (issue 20, item 5).

When a lab's cluster spans machines, each machine's agent:
- writes the network config (flannel's net-conf.json: Network, SubnetLen, Backend) at
  <prefix>/config and, for each cluster node it holds, the node's subnet lease at
  <prefix>/subnets/10.244.1.0-24 = {"PublicIP", "PublicIPv6", "BackendType",
  "BackendData": {"VNI", "VtepMAC"}} -- flannel's keys and JSON, pkg/subnet/etcd/registry.go
  (createSubnet, one transaction) and lease.LeaseAttrs (coord.py writes and reads them);
  the prefix is flannel's default --etcd-prefix /coreos.com/network (coord.flannel_prefix);
- learns the nodes on other machines only from those leases: its shard's plan holds no
  entry for them (strip_remote_peers), a Learner lists the leases and watches the prefix as
  flanneld's etcd subnet manager does (getSubnets, then watchSubnets from the revision
  after), and for each remote lease installs in every local cluster node the entries the
  backend installs for a peer (flannel's handleSubnetEvents: vxlan's neighbour, FDB and
  route, or a direct route; host-gw's route; ipip's route) -- the backend's own ops()
  for that peer, so the same code as a lab on one machine.  A lease removed (deleted, or
  expired with its machine's etcd lease): its entries go.
- records each learned lease in the lab's record (state.info["_flannel_peers"]) before its
  entries are made; they are removed by the same ops' undo, and go with the namespaces at
  `down` like everything else in them.

Everything read from etcd is input: a lease is used only if coord's checks pass (subnet
key, IPv4 PublicIP, unicast VtepMAC, VNI, backend) and it fits the lab's cluster (its
backend and VNI, a subnet of SubnetLen inside Network that no local node holds, a PublicIP
outside the pod network); entries are made only in the lab's own namespaces, verified
against its record.

The udp backend's peers are not kernel entries but its proxy's routing table: flannel's
processSubnetEvents (pkg/backend/udp/udp_network_amd64.go) sends the proxy setRoute(subnet,
PublicIP, port) / removeRoute(subnet) for each lease added or removed.  Here the shard's
udp daemon keeps only its own machine's peers from the plan and reads the others from a
file in the lab's run directory (udp-NODE.routes, SUBNET@PUBLICIP a line) that the Learner
rewrites from the recorded leases; the daemon reads it again when it changes
(runtime/tunnels.run_udp) and after a restart.
"""
from __future__ import annotations

import dataclasses
import json
import os
import threading
from ipaddress import IPv4Address, IPv4Network

from . import backends, coord, state
from . import plan as P
from .apply.applier import Applier
from .errors import NslabError

KERNEL = frozenset({"vxlan", "host-gw", "ipip"})     # backends whose peers are kernel entries
LEARNED = KERNEL | {"udp"}                          # ... or the udp proxy's routing table
RECORD = "_flannel_peers"
# One Applier at a time in a process: apply/netns keeps process-wide state (the sysctl
# walks' procfs instance, which Applier.close releases), so the agent's threads -- a
# build, each lab's Learner, the stitches' sync -- take turns with the kernel.
APPLY_LOCK = threading.RLock()
WATCH_QUIET = 5.0          # seconds a watch may stay quiet before the leases are listed again


def spans(topo, where: dict[str, str]) -> bool:
    """The lab's cluster has nodes on more than one machine."""
    c = topo.cluster
    return c is not None and len({where[n] for n in c.nodes}) > 1


def _local(topo, where: dict[str, str], machine: str) -> list:
    return [n for n in topo.cluster.nodes.values() if where[n.name] == machine]


def _peer_ops(cluster, node, peer, ns: str) -> list:
    """What the backend installs in `node` for `peer` alone: its ops with the two nodes
    minus its ops with `node` alone (the node's own device and address)."""
    be = backends.get(cluster.backend.type)
    alone = be.ops(dataclasses.replace(cluster, nodes={node.name: node}), node, lambda _: ns)
    both = be.ops(dataclasses.replace(cluster, nodes={node.name: node, "\0peer": peer}), node, lambda _: ns)
    return [op for op in both if op not in alone]


def _lease_peer(node, lease: coord.SubnetLease):
    """A remote lease as a cluster node the backend's ops() can take (what flannel's
    handleSubnetEvents reads from a lease: PublicIP, subnet, VtepMAC)."""
    return dataclasses.replace(node, name="\0peer", ip=IPv4Address(lease.public_ip), subnet=lease.subnet,
                               vtep_mac=str(lease.backend_data.get("VtepMAC", "")).lower(), path=(), pods=[])


def strip_remote_peers(plan, topo, where: dict[str, str], machine: str) -> int:
    """Remove from `machine`'s shard plan the entries its cluster nodes would get for nodes
    on other machines: those come from the leases.  The number of ops removed."""
    if not spans(topo, where) or topo.cluster.backend.type not in LEARNED:
        return 0
    cluster = topo.cluster
    if cluster.backend.type == "udp":
        return _strip_udp_routes(plan, cluster, where, machine)
    drop = set()
    for node in _local(topo, where, machine):
        for peer in cluster.nodes.values():
            if where[peer.name] != machine:
                drop.update(_peer_ops(cluster, node, peer, topo.nodes[node.name].ns))
    before = len(plan.ops)
    plan.ops = [op for op in plan.ops if op not in drop]
    return before - len(plan.ops)


def routes_file(node: str) -> str:
    return f"udp-{node}.routes"


def _strip_udp_routes(plan, cluster, where: dict[str, str], machine: str) -> int:
    """udp: each local node's proxy keeps the routes to its machine's peers and reads the
    others' from its routes file (learned from the leases).  The number of routes removed."""
    removed = 0
    for i, op in enumerate(plan.ops):
        if not (isinstance(op, P.Daemon) and op.kind == "udp" and where.get(op.node) == machine):
            continue
        config = dict(op.config)
        kept = []
        for item in filter(None, config.get("routes", "").split(",")):
            subnet = item.partition("@")[0]
            owner = next((n.name for n in cluster.nodes.values() if str(n.subnet) == subnet), None)
            if owner is not None and where.get(owner) != machine:
                removed += 1
            else:
                kept.append(item)
        config["routes"] = ",".join(kept)
        config["routes_file"] = routes_file(op.node)
        plan.ops[i] = dataclasses.replace(op, config=tuple(config.items()))
    return removed


def own_lease(cluster, node) -> coord.SubnetLease:
    """A node's lease as flanneld writes it (vxlan's BackendData: VNI and VtepMAC)."""
    be = cluster.backend
    data = {"VNI": be.vni, "VtepMAC": node.vtep_mac} if be.type == "vxlan" else {}
    return coord.SubnetLease(node.subnet, str(node.ip), be.type, data)


def own_lease_of(cluster, local: list, lease: coord.SubnetLease) -> bool:
    """`lease` is one this machine's nodes publish, as they publish it."""
    return any(own_lease(cluster, n) == dataclasses.replace(lease, lease=own_lease(cluster, n).lease)
               for n in local if n.subnet == lease.subnet)


def lease_problem(cluster, local: list, lease: coord.SubnetLease) -> str | None:
    """Why `lease` (coord-checked) does not fit the lab's cluster, or None."""
    be = cluster.backend
    if lease.backend_type != be.type:
        return f"BackendType {lease.backend_type} is not the cluster's ({be.type})"
    if be.type == "vxlan" and lease.backend_data.get("VNI", 1) != be.vni:
        return f"VNI {lease.backend_data.get('VNI', 1)} is not the cluster's ({be.vni})"
    if not lease.subnet.subnet_of(cluster.network) or lease.subnet.prefixlen != cluster.subnet_len:
        return f"subnet {lease.subnet} is not a /{cluster.subnet_len} of the network {cluster.network}"
    if any(n.subnet == lease.subnet for n in local):
        return f"subnet {lease.subnet} is a node's on this machine"
    ip = IPv4Address(lease.public_ip)
    if ip in cluster.network or ip.is_loopback or ip.is_multicast or ip.is_unspecified or ip.is_link_local:
        return f"PublicIP {ip} is not a node address"
    if any(n.ip == ip for n in local):
        return f"PublicIP {ip} is a node's on this machine"
    return None


def _as_record(lease: coord.SubnetLease) -> dict:
    return {"PublicIP": lease.public_ip, "BackendType": lease.backend_type, "BackendData": lease.backend_data}


class Learner:
    """One lab's cluster on one machine: its leases written, the others' watched."""

    def __init__(self, etcd: coord.Etcd, lab: str, topo, where: dict[str, str], machine: str,
                 machine_lease: int, log=print):
        self.etcd, self.lab, self.topo, self.machine, self.log = etcd, lab, topo, machine, log
        self.cluster = topo.cluster
        self.local = _local(topo, where, machine)
        self.machine_lease = machine_lease
        self.prefix = coord.flannel_prefix(etcd, lab)
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

    # ---- what this machine's nodes publish --------------------------------------------------
    def publish(self) -> None:
        # flanneld never writes the config (the operator does); here the lab is the operator
        self.etcd.claim(f"{self.prefix}/config", json.dumps(coord.net_conf(self.cluster)))
        for node in self.local:
            if not coord.put_own_subnet_lease(self.etcd, own_lease(self.cluster, node), self.machine_lease,
                                              self.prefix):
                self.log(f"lab {self.lab}: subnet {node.subnet} of {node.name} is leased by another writer "
                         f"at {self.prefix}; not taken")

    def withdraw(self) -> None:
        for node in self.local:
            key = f"{self.prefix}/subnets/{coord.subnet_key(node.subnet)}"
            kv = self.etcd.get(key)
            if kv is not None and kv.lease == self.machine_lease:
                self.etcd.delete(key)

    # ---- what it learns ------------------------------------------------------------------------
    def start(self) -> None:
        self.publish()
        if self.cluster.backend.type not in LEARNED:
            return
        self.thread = threading.Thread(target=self._run, name=f"flannel-{self.lab}", daemon=True)
        self.thread.start()

    def stop(self, withdraw: bool = True) -> None:
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(WATCH_QUIET + coord.TIMEOUT + 1)
        if withdraw:
            try:
                self.withdraw()
            except coord.EtcdError as e:
                self.log(f"lab {self.lab}: withdrawing its leases: {e}")

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                leases, rev, bad = coord.subnet_leases(self.etcd, self.prefix)      # flannel's getSubnets
                for sentence in bad:
                    self.log(f"lab {self.lab}: ignored: {sentence}")
                self.sync({l.subnet: l for l in leases if self._fits(l)})
                # flannel's watchSubnets, from the revision after the listing
                for kind, x in coord.subnet_events(self.etcd, rev + 1, WATCH_QUIET, self.prefix):
                    if self.stopping.is_set():
                        return
                    if kind == "bad":
                        self.log(f"lab {self.lab}: ignored: {x}")
                    elif kind == "removed":
                        self.forget(x)
                    elif self._fits(x):
                        self.learn(x)
            except Exception as e:      # noqa: BLE001 - the watcher outlives any one bad turn
                self.log(f"lab {self.lab}: flannel leases: {e or type(e).__name__}; listing again")
                self.stopping.wait(1)

    def _fits(self, lease: coord.SubnetLease) -> bool:
        if own_lease_of(self.cluster, self.local, lease):
            return False        # flannel's LeaseWatcher skips its OwnLease, silently
        problem = lease_problem(self.cluster, self.local, lease)
        if problem:
            self.log(f"lab {self.lab}: ignored the lease of {lease.subnet}: {problem}")
        return problem is None

    def recorded(self) -> dict[IPv4Network, coord.SubnetLease]:
        """The leases the record says were learned (input: checked again)."""
        st = state.load(self.lab)
        out = {}
        for key, attrs in ((st.info.get(RECORD) or {}) if st else {}).items():
            try:
                lease = coord.SubnetLease(IPv4Network(key), attrs["PublicIP"], attrs["BackendType"],
                                          attrs["BackendData"])
                coord._check_lease(lease, f"record of lab {self.lab}")
            except (ValueError, TypeError, KeyError, coord.EtcdError):
                self.log(f"lab {self.lab}: record entry {key!r:.60} of learned leases is not valid; ignored")
                continue
            if lease_problem(self.cluster, self.local, lease) is None:
                out[lease.subnet] = lease
        return out

    def sync(self, wanted: dict) -> None:
        """flannel's LeaseWatcher.Reset (pkg/lease/lease.go): after a listing, what the record
        holds and etcd no longer does is removed, what etcd holds is added."""
        have = self.recorded()
        for subnet, lease in have.items():
            if subnet not in wanted:
                self.forget(subnet, lease)
        for lease in wanted.values():
            self.learn(lease)           # a no-op when recorded as it is

    def learn(self, lease: coord.SubnetLease) -> None:
        have = self.recorded().get(lease.subnet)
        if have is not None:
            if dataclasses.replace(have, lease=lease.lease) == lease:
                return
            self.forget(lease.subnet, have)       # changed (flannel: a lease re-acquired elsewhere)
        # recorded before it is made
        if state.update(self.lab, lambda st: st.info.setdefault(RECORD, {}).__setitem__(
                str(lease.subnet), _as_record(lease))) is None:
            return
        self._each_node(lease, install=True)
        self.log(f"lab {self.lab}: learned {lease.subnet} at {lease.public_ip} from etcd")

    def forget(self, subnet: IPv4Network, lease: coord.SubnetLease | None = None) -> None:
        lease = lease or self.recorded().get(subnet)
        if lease is None:
            return
        if self.cluster.backend.type != "udp":
            self._each_node(lease, install=False)
        state.update(self.lab, lambda st: (st.info.get(RECORD) or {}).pop(str(subnet), None))
        if self.cluster.backend.type == "udp":
            self._each_node(lease, install=False)       # the table without it
        self.log(f"lab {self.lab}: removed {subnet} (its lease is gone)")

    def _write_routes(self) -> None:
        """udp: each local node's routes file, from the recorded leases (flannel's
        setRoute / removeRoute, as a table the proxy reads again)."""
        lines = "".join(f"{lease.subnet}@{lease.public_ip}\n" for lease in self.recorded().values())
        for node in self.local:
            path = os.path.join(state.lab_dir(self.lab), routes_file(node.name))
            tmp = path + ".tmp"
            try:
                with open(tmp, "w") as f:
                    f.write(lines)
                os.replace(tmp, path)
            except OSError as e:
                self.log(f"lab {self.lab}: {node.name}'s udp routes: {e}")

    def _each_node(self, lease: coord.SubnetLease, install: bool) -> None:
        st = state.load(self.lab)
        if st is None:
            return
        if self.cluster.backend.type == "udp":
            self._write_routes()        # the record holds the lease (learn) or not (forget) already
            return
        with APPLY_LOCK:
            self._apply(st, lease, install)

    def _apply(self, st, lease: coord.SubnetLease, install: bool) -> None:
        applier = Applier()
        try:
            for node in self.local:
                ns = self.topo.nodes[node.name].ns
                if st.nodes.get(node.name) != ns or state.namespace_problem(st, ns, node.name):
                    self.log(f"lab {self.lab}: namespace {ns} is not the record's; not touched")
                    continue
                ops = _peer_ops(self.cluster, node, _lease_peer(node, lease), ns)
                handle = applier.open_namespace(ns)
                try:
                    if install:
                        applier.run_batch(handle, ops)
                    else:
                        applier.undo(handle, ops)
                except NslabError as e:
                    self.log(f"lab {self.lab}: {node.name}: {e}")
        finally:
            applier.close()

