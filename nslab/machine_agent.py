"""`nslab agent --etcd URL --machine NAME [--underlay IFACE]`: the agent of one machine of
labs across machines (issue 20, item 2).  Not the lab agent (runtime/agent.py, which
serves a lab's pods); this one builds and removes its machine's shards.

- Registers NAME under an etcd lease it keeps alive (coord.KeepAlive, from a child
  process its builds cannot starve); a second agent
  claiming NAME is refused (coord.register_machine, one transaction).  The lease ending
  (the machine gone) removes its record and its shards' status keys with it.
- Watches /nslab/shards/NAME/: each key is a shard spec (coord.parse_shard); the agent
  compiles the lab's topology text exactly as the host did, places it with the same
  machines (compile/placement.place), takes its own plan with its stitch ends
  (placement.shard) and builds it with today's lab.up: its own record, teardown by
  `lab.down`.  A spec deleted: the shard is removed.  Started again (kill -9, a restart),
  it adopts what its record holds: a lab already built here is not built again, one whose
  spec is gone is removed.
- Reports each shard's state under /nslab/status/LAB/NAME, under its lease.
- Faults (item 6): a machine whose lease ends (it vanished) has its record deleted by etcd;
  every agent watches /nslab/machines/ and cuts its stitches to it (the stitch device's
  one FDB entry, 00:00:00:00:00:00 dst ITS-ADDRESS, removed: nothing is sent to it; the
  device, its addresses and routes stay) and puts them back when it registers again --
  flannel's handleSubnetEvents (pkg/backend/vxlan/vxlan_network.go) on a lease's
  EventRemoved / EventAdded, for the links between machines; the cluster's own peers go
  with their subnet leases (flannel_peers).  A `down` that could not reach a machine
  leaves /nslab/pending/NAME/LAB: that machine's agent, when it comes back, removes its
  shard of LAB, the key, and, the last one, the lab's claim and VNIs (coord.finish_pending).
- Serves an authenticated channel on its underlay address, port coord.AGENT_PORT: every
  request must carry the cluster's credential (coord.cluster_token, kept in etcd) as
  `Authorization: Bearer TOKEN`; none is served without it.  GET /v1/labs lists the
  shards here; POST /v1/exec runs a command in a node (`nslab exec`, no TTY); POST
  /v1/run streams the other commands, with a TTY when asked (channel.py).
"""
from __future__ import annotations

import errno
import hmac
import json
import struct
import os
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from . import channel, coord, flannel_peers, spawn, state
from . import lab as labmod
from . import model
from . import plan as P
from .apply.applier import Applier
from .apply.netlink import (AF_BRIDGE, CHANGE, CREATE, NDA_LLADDR, NDMSG, NTF_SELF, NUD_PERMANENT, RTM_DELNEIGH,
                            attr, mac, message)
from .compile import placement
from .errors import NslabError, UsageError

EXEC_TIMEOUT = 60
MAX_REQUEST = 1 << 16
DEFAULT_TTL = 10                # seconds: the machine's etcd lease (--ttl)
ZERO_MAC = "00:00:00:00:00:00"  # a stitch's one FDB entry: every frame to the peer machine
CUT = "_stitches_cut"           # the record's stitches cut from a machine gone: {"ns/dev": machine}
WATCH_QUIET = 5.0               # seconds a watch of the machines may stay quiet before a new listing


def stitch_ends(placed, machine: str, addresses: dict[str, str]) -> list[tuple[str, str, str, str]]:
    """(namespace, device, peer machine, its address) of each stitch end on `machine`."""
    out = []
    for s in placed.stitches:
        for end, other in ((s.a, s.b), (s.b, s.a)):
            if end.machine == machine:
                out.append((end.ns, end.dev, other.machine, addresses[other.machine]))
    return out


def underlay_address(iface: str | None) -> tuple[str, str, int]:
    """(interface, its first IPv4 address, its MTU): `iface`, or the first interface other
    than lo with an IPv4 address."""
    out = subprocess.run([spawn.need("ip"), "-j", "-4", "addr", "show"] + (["dev", iface] if iface else []),
                         cwd=spawn.CWD, env=spawn.env(), capture_output=True, text=True)
    try:
        links = json.loads(out.stdout or "[]")
    except ValueError:
        links = []
    for link in links:
        addrs = [a.get("local") for a in link.get("addr_info", []) if a.get("family") == "inet"]
        if link.get("ifname") != "lo" and addrs:
            return link["ifname"], addrs[0], int(link.get("mtu", 1500))
    raise UsageError(f"--underlay {iface}: no IPv4 address on it" if iface
                     else "no interface with an IPv4 address: name the underlay with --underlay IFACE")


class Agent:
    def __init__(self, endpoint: str, machine: str, underlay: str | None = None, ttl: int = DEFAULT_TTL,
                 port: int = coord.AGENT_PORT, log=print):
        self.etcd = coord.connect(endpoint)
        self.name, self.ttl, self.port, self.log = machine, ttl, port, log
        self.iface, self.address, self.mtu = underlay_address(underlay)
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.lease = 0
        self.keepalive = None
        self.learners: dict[str, flannel_peers.Learner] = {}
        self.ends: dict[str, list[tuple[str, str, str, str]]] = {}     # lab -> its stitch ends here
        self.alive: set[str] | None = None          # the machines registered (None: not read yet)

    # ---- membership -----------------------------------------------------------------------
    def lease_file(self) -> str:
        return os.path.join(state.RUN_DIR, f".agent-{self.name}.lease")

    def _adopt_lease(self) -> int:
        """The lease this machine's previous agent held (kill -9, a restart), if etcd still
        has it and the machine's record is under it: the name stays ours, no gap."""
        try:
            with open(self.lease_file()) as f:
                lease = int(f.read().strip(), 16)
        except (OSError, ValueError):
            return 0
        kv = self.etcd.get(f"{coord.PREFIX}/machines/{self.name}")
        if kv is None or kv.lease != lease or self.etcd.keepalive(lease) <= 0:
            return 0
        return lease

    def register(self) -> None:
        self.lease = self._adopt_lease()
        if not self.lease:
            self.lease = self.etcd.grant(self.ttl)
            try:
                coord.register_machine(self.etcd, self.name, self.address, self.mtu, self.lease)
            except BaseException:
                self.etcd.revoke(self.lease)
                raise
        os.makedirs(state.RUN_DIR, exist_ok=True)
        with open(self.lease_file(), "w") as f:
            f.write(f"{self.lease:x}\n")
        self.keepalive = coord.KeepAlive(self.etcd, self.lease, self.ttl, on_lost=self._lost)
        self.token = coord.cluster_token(self.etcd)
        self.log(f"machine {self.name}: {self.address} on {self.iface} (MTU {self.mtu}), lease {self.lease:x}")

    def _lost(self, reason: str) -> None:
        self.log(f"machine {self.name}: lease lost ({reason}); exiting (shards stay, a restart adopts them)")
        os.kill(os.getpid(), signal.SIGTERM)

    # ---- shards -----------------------------------------------------------------------------
    def local_shards(self) -> list[str]:
        """Labs built here by an agent (their record says which machine's shard they are)."""
        out = []
        for lab in state.labs():
            try:
                st = state.load(lab)
            except NslabError:
                continue
            if st is not None and (st.info.get("_shard") or {}).get("machine") == self.name:
                out.append(lab)
        return out

    def _placed(self, spec: dict):
        """The lab's topology and placement, compiled from etcd's text as the host did."""
        lab = spec["lab"]
        # the file's name only (for messages): etcd's text is parsed, no path is read
        topo = model.load(os.path.basename(spec["file"]) or f"{lab}.yaml", text=spec["text"], name=lab,
                          overrides=spec["overrides"] or None)
        plan = labmod.plan_for_this_kernel(topo)
        machines = [placement.Machine(n, a) for n, a in spec["machines"]]
        placed = placement.place(topo, plan, machines, port=spec["port"], underlay_mtu=spec["underlay_mtu"])
        return topo, placed

    def shard_record(self, lab: str):
        """Lab `lab`'s record here if it is one of this machine's shards, else None."""
        return state.load(lab) if lab in self.local_shards() else None

    def build(self, spec: dict) -> None:
        lab = spec["lab"]
        with self.lock:
            if state.load(lab) is not None:
                self.log(f"lab {lab}: shard already built here (adopted)")
                try:
                    topo, placed = self._placed(spec)
                    self.ends[lab] = stitch_ends(placed, self.name, dict(spec["machines"]))
                    self._learn(lab, topo, placed)
                except Exception as e:
                    self.log(f"lab {lab}: flannel leases: {e}")
                self._sync_stitches(lab)
                st = state.load(lab)
                self._status(lab, "up", len(st.namespaces) if st else 0)
                return
            try:
                topo, placed = self._placed(spec)
                mine = placement.shard(placed, self.name, dict(spec["machines"]), spec["vnis"], self.iface)
                # the cluster's peers on other machines come from their leases in etcd
                flannel_peers.strip_remote_peers(mine, topo, placed.where, self.name)
                mine.notes["_shard"] = {"machine": self.name, "stitches": len(placed.stitches)}
                with flannel_peers.APPLY_LOCK:
                    _, st = labmod.up(topo, overrides=spec["overrides"], plan=mine)
                self.ends[lab] = stitch_ends(placed, self.name, dict(spec["machines"]))
                self._sync_stitches(lab)
                self._learn(lab, topo, placed)
                self.log(f"lab {lab}: shard up, {len(st.namespaces)} namespaces")
                self._status(lab, "up", len(st.namespaces))
            except Exception as e:   # any failure is the shard's: reported, the host rolls back
                self.log(f"lab {lab}: shard failed: {e}")
                self._status(lab, "failed", error=str(e) or type(e).__name__)

    def _learn(self, lab: str, topo, placed) -> None:
        """Flannel across machines (flannel_peers): this machine's nodes' leases written,
        the others' watched."""
        if lab in self.learners or not flannel_peers.spans(topo, placed.where):
            return
        learner = flannel_peers.Learner(self.etcd, lab, topo, placed.where, self.name, self.lease, self.log)
        learner.start()
        self.learners[lab] = learner

    def _unlearn(self, lab: str) -> None:
        learner = self.learners.pop(lab, None)
        if learner is not None:
            learner.stop()

    def remove(self, lab: str) -> None:
        with self.lock:
            self.ends.pop(lab, None)
            try:
                self._unlearn(lab)
                if lab in self.local_shards():
                    with flannel_peers.APPLY_LOCK:
                        removed = labmod.down(lab)
                    self.log(f"lab {lab}: shard removed ({len(removed)} namespaces)")
            except NslabError as e:
                self.log(f"lab {lab}: removing the shard: {e}")
            self.etcd.delete(coord.status_key(lab, self.name))

    def _status(self, lab: str, what: str, namespaces: int = 0, error: str = "") -> None:
        coord.put_status(self.etcd, lab, self.name, what, self.lease, namespaces, error)

    # ---- stitches to machines gone ----------------------------------------------------------
    def _sync_stitches(self, lab: str) -> None:
        """Lab `lab`'s stitch ends here as the machines' leases say: each end to a machine
        gone is cut (its FDB entry removed), each cut one to a machine registered again is
        put back -- flannel's handleSubnetEvents (vxlan_network.go): EventRemoved deletes
        the peer's FDB entry (and ARP entry and route), EventAdded adds it, as a lease ends
        or appears.  Level-triggered from the record, as flannel's LeaseWatcher.Reset after
        a listing: a restarted agent finds what it cut.  Callers hold self.lock."""
        ends, alive = self.ends.get(lab), self.alive
        st = state.load(lab)
        if not ends or alive is None or st is None:
            return
        cut = dict(st.info.get(CUT) or {})
        todo = [(ns, dev, peer, addr, f"{ns}/{dev}" in cut) for ns, dev, peer, addr in ends
                if (peer in alive) == (f"{ns}/{dev}" in cut)]
        if not todo:
            return
        with flannel_peers.APPLY_LOCK:
            self._cut_or_restore(lab, st, todo)

    def _cut_or_restore(self, lab: str, st, todo: list) -> None:
        applier = Applier()
        try:
            for ns, dev, peer, addr, was_cut in todo:
                if ns not in st.namespaces or state.namespace_problem(st, ns):
                    self.log(f"lab {lab}: namespace {ns} is not the record's; its stitch not touched")
                    continue
                op = P.Fdb(ns, dev, ZERO_MAC, addr)
                handle = applier.open_namespace(ns)
                if was_cut:             # the machine is back: the entry again, then the record
                    _stitch_fdb(applier, handle, op, add=True)
                    state.update(lab, lambda s, k=f"{ns}/{dev}": (s.info.get(CUT) or {}).pop(k, None))
                    self.log(f"lab {lab}: stitch {ns}:{dev} to {peer} put back ({peer} is registered again)")
                else:                   # recorded first, then cut
                    state.update(lab, lambda s, k=f"{ns}/{dev}": s.info.setdefault(CUT, {}).__setitem__(k, peer))
                    _stitch_fdb(applier, handle, op, add=False)
                    self.log(f"lab {lab}: stitch {ns}:{dev} to {peer} cut ({peer}'s lease ended)")
        except NslabError as e:
            self.log(f"lab {lab}: stitches: {e}")
        finally:
            applier.close()

    def watch_machines(self) -> None:
        """The machines registered, listed and watched (a change or a quiet watch: listed
        again); each local shard's stitches synced with them at every listing, not only when
        the machines change: a cut or put-back that failed (logged) is tried again."""
        prefix = f"{coord.PREFIX}/machines/"
        while not self.stopping.is_set():
            try:
                alive, rev = coord.machine_names(self.etcd)
                with self.lock:
                    self.alive = alive
                    for lab in list(self.ends):
                        self._sync_stitches(lab)
                with self.etcd.watch(prefix, start_revision=rev + 1, timeout=WATCH_QUIET) as events:
                    next(events, None)          # one change (or quiet): list again
            except Exception as e:      # noqa: BLE001 - the watcher outlives any one bad turn
                self.log(f"machines: {e or type(e).__name__}; listing again")
                self.stopping.wait(1)

    def finish_pending(self) -> None:
        """`nslab down` ran while this machine was gone: its shards of those labs removed,
        then the pending keys (coord.finish_pending gives back a lab's claim with the last)."""
        for lab in coord.pending(self.etcd, self.name):
            if lab in self.local_shards():
                self.remove(lab)
            state.remove_stale_links(lab)        # a reboot took the record, not /etc/netns
            coord.finish_pending(self.etcd, self.name, lab)
            self.log(f"lab {lab}: `down` ran while {self.name} was gone; its part here removed")

    def reconcile(self) -> int:
        """Build what etcd assigns here and is not built; remove what was built here and is
        no longer assigned.  The revision read at (to watch from)."""
        self.finish_pending()
        specs, rev, bad = coord.shards(self.etcd, self.name)
        for sentence in bad:
            self.log(f"ignored: {sentence}")
        for lab in self.local_shards():
            if lab not in specs:
                self.remove(lab)
        for spec in specs.values():
            self.build(spec)
        return rev

    def watch(self) -> None:
        rev = self.reconcile()
        prefix = f"{coord.PREFIX}/shards/{self.name}/"
        while not self.stopping.is_set():
            try:
                with self.etcd.watch(prefix, start_revision=rev + 1, timeout=5) as events:
                    for ev in events:
                        rev = max(rev, ev.kv.mod_revision)
                        if ev.type == "DELETE":     # built or failed: removed, its status too
                            self.remove(ev.kv.key[len(prefix):])
                            continue
                        try:
                            self.build(coord.parse_shard(self.etcd, ev.kv, self.name))
                        except coord.EtcdError as e:
                            self.log(f"ignored: {e}")
            except coord.EtcdError as e:
                self.log(f"watch: {e}; reading again")
                time.sleep(1)
                rev = self.reconcile()

    # ---- the channel --------------------------------------------------------------------------
    def serve(self) -> ThreadingHTTPServer:
        agent = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _answer(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _allowed(self) -> bool:
                given = self.headers.get("Authorization", "")
                if hmac.compare_digest(given.encode(), f"Bearer {agent.token}".encode()):
                    return True
                self._answer(401, {"error": "the cluster's credential is required"})
                return False

            def do_GET(self):
                if not self._allowed():
                    return
                if self.path != "/v1/labs":
                    return self._answer(404, {"error": f"no {self.path[:80]}"})
                labs = []
                for lab in agent.local_shards():
                    st = state.load(lab)
                    labs.append({"lab": lab, "namespaces": len(st.namespaces) if st else 0,
                                 "nodes": sorted(st.nodes) if st else []})
                self._answer(200, {"machine": agent.name, "labs": labs})

            def do_POST(self):
                if not self._allowed():
                    return
                if self.path == "/v1/run":          # the other commands, streamed (channel.py)
                    return channel.serve_run(self, agent.shard_record)
                if self.path != "/v1/exec":
                    return self._answer(404, {"error": f"no {self.path[:80]}"})
                size = int(self.headers.get("Content-Length") or 0)
                if not 0 < size <= MAX_REQUEST:
                    return self._answer(400, {"error": "a JSON body of at most 64 KiB"})
                try:
                    req = json.loads(self.rfile.read(size))
                    lab, node, argv = req["lab"], req["node"], req["argv"]
                    if not (isinstance(lab, str) and isinstance(node, str) and isinstance(argv, list) and argv
                            and all(isinstance(a, str) for a in argv)):
                        raise ValueError
                except (ValueError, KeyError, TypeError):
                    return self._answer(400, {"error": "expected {\"lab\", \"node\", \"argv\": [...]}"})
                if lab not in agent.local_shards():
                    return self._answer(404, {"error": f"no shard of lab {lab[:40]!r} on {agent.name}"})
                try:
                    proc = subprocess.run(spawn.python("nslab.cli", "exec", "-l", lab, node, "--", *argv),
                                          cwd=spawn.CWD, env=spawn.env(), capture_output=True, text=True,
                                          timeout=EXEC_TIMEOUT)
                except subprocess.TimeoutExpired:
                    return self._answer(200, {"rc": 124, "stdout": "", "stderr": f"timed out after {EXEC_TIMEOUT} s"})
                self._answer(200, {"rc": proc.returncode, "stdout": proc.stdout[-65536:],
                                   "stderr": proc.stderr[-65536:]})

        server = channel.server((self.address, self.port), Handler, self.etcd.credentials)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    def run(self) -> None:
        self.register()
        server = self.serve()
        threading.Thread(target=self.watch_machines, name="machines", daemon=True).start()
        def stop(*_):
            self.stopping.set()
            raise SystemExit(0)
        signal.signal(signal.SIGTERM, stop)
        try:
            self.watch()
        finally:
            server.shutdown()
            if self.keepalive is not None:
                # the shards stay (a restarted agent adopts them); the lease ends with us
                self.keepalive.stop(revoke=False)


def _stitch_fdb(applier: Applier, handle, op: P.Fdb, add: bool) -> None:
    """Delete or add back a stitch's one FDB entry.  Deleted by its MAC alone (every remote
    of the all-zeros entry: a stitch has one), since the kernel matches a remote by its
    device too and the stitch's underlay device is in the machine's namespace, not the
    lab's; added back with NLM_F_CREATE|NLM_F_EXCL (the kernel refuses NLM_F_REPLACE for
    the all-zeros entry), its route to the peer looked up in the machine's namespace
    again.  One already there, or already gone, is what was wanted."""
    applier.seq += 1
    if add:
        data = applier.encode(handle, op)[0]
        struct.pack_into("=HI", data, 6, CREATE, applier.seq)
    else:
        data = message(RTM_DELNEIGH, CHANGE, NDMSG.pack(AF_BRIDGE, handle.index(op.dev), NUD_PERMANENT, NTF_SELF, 0),
                       attr(NDA_LLADDR, mac(op.lladdr)))
        struct.pack_into("=I", data, 8, applier.seq)
    applier.send(handle, [(applier.seq, bytes(data), op)], ignore=(errno.EEXIST,) if add else Applier.GONE)
