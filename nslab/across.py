"""A lab over several machines, from the host (issue 20, item 3): `nslab up FILE` with a
`placement:` or `--spread`, and `nslab down LAB`, through etcd ($NSLAB_ETCD or --etcd).

up: the machines named must be registered (their agents run); the lab is compiled and
placed here (compile/placement.py) with the machines' underlay addresses and the smallest
underlay MTU among them, its name claimed in etcd (one transaction), a VNI taken for each
stitch (coord.allocate_vnis), and each machine's shard spec written under
/nslab/shards/MACHINE/LAB: the lab's text, the machines in placement order, the VNIs in
stitch order.  Each agent compiles and places the same text the same way and builds its
own shard (machine_agent.py).  up waits for every machine's status; one that fails, or
none within the timeout, rolls back every machine (the specs deleted: each agent removes
its shard) and the claim and VNIs are given back.

down: the specs deleted, each agent removes its shard; down waits until every status is
gone, then gives back the claim and the VNIs.  A machine whose lease has ended (gone, or
cut off) cannot be reached: down removes everything reachable and leaves the rest pending
in etcd, /nslab/pending/MACHINE/LAB (the claim and the VNIs stay with it); that machine's
agent, when it comes back, removes its shard and the pending key, and the last one gives
back the claim and VNIs (coord.finish_pending) -- as flannel leaves a node's lease to its
expiry rather than to anyone but the node.
"""
from __future__ import annotations

import json
import os
import time

from . import coord
from . import compile as compiler
from .compile import placement
from .errors import NslabError, UsageError

TIMEOUT = 180.0
EXEC_TIMEOUT = 90.0             # the agent gives a command 60 s


def _machines(etcd: coord.Etcd, topo, spread: str | None) -> tuple[list[placement.Machine], int]:
    registered, _ = coord.machines(etcd)
    reg = {m.name: m for m in registered}
    if spread is not None:
        wanted = [m.name for m in placement.parse_machines(spread, "--spread")]
    else:
        _, ms = placement.from_file(topo, None)
        wanted = [m.name for m in ms]
    for name in wanted:
        if name not in reg:
            where = "--spread" if spread is not None else f"{topo.file}: placement:"
            raise UsageError(f"{where} names machine {name}, which is not registered in etcd at {etcd.endpoint} "
                             f"(registered: {', '.join(sorted(reg)) or 'none'}; start `nslab agent` there)")
    return [placement.Machine(n, reg[n].address) for n in wanted], min(reg[n].underlay_mtu for n in wanted)


def place(topo, etcd_url: str | None, spread: str | None, stitch_port: int,
          underlay_mtu: int | None = None) -> placement.Placed:
    """The lab over its machines, as `up` builds it and `up --dry-run` prints it.  With an
    etcd: the machines as registered there (each one named must be), with their underlay
    addresses and the smallest underlay MTU among them (unless `underlay_mtu` is given);
    without: the machines as --spread or the file's placement: names them."""
    if etcd_url is None:
        machines = None if spread is None else placement.parse_machines(spread, "--spread")
        mtu = placement.DEFAULT_UNDERLAY_MTU
    else:
        machines, mtu = _machines(coord.connect(etcd_url), topo, spread)
    return placement.place(topo, compiler.compile_topology(topo), machines, port=stitch_port,
                           underlay_mtu=underlay_mtu or mtu)


def up(topo, etcd_url: str, spread: str | None, stitch_port: int, overrides: dict | None, log=print,
       timeout: float = TIMEOUT) -> tuple[placement.Placed, dict]:
    etcd = coord.connect(etcd_url)
    placed = place(topo, etcd_url, spread, stitch_port)
    machines, mtu = placed.machines, placed.underlay_mtu
    coord.claim_lab(etcd, topo.name, "host")
    try:
        ids = [f"{s.a.node}:{s.a.dev}" for s in placed.stitches]
        taken = coord.allocate_vnis(etcd, topo.name, ids) if ids else {}
        vnis = [taken[i] for i in ids]
        spec = {"lab": topo.name, "file": topo.file, "text": topo.doc.text,
                "machines": [[m.name, m.address] for m in machines], "vnis": vnis, "port": stitch_port,
                "underlay_mtu": mtu, "overrides": {k: v for k, v in (overrides or {}).items()
                                                   if k in ("backend", "proxy_mode")}}
        busy = [m.name for m in machines if placed.plans[m.name].ops]
        coord.put_shards(etcd, busy, spec)
        states = _wait(etcd, topo.name, busy, timeout, "answered")
        failed = {m: s for m, s in states.items() if s["state"] != "up"}
        if failed:
            m, s = sorted(failed.items())[0]
            raise NslabError(f"lab {topo.name}: the shard on {m} failed ({s['error']}); every machine rolled back")
        return placed, states
    except BaseException:
        _remove(etcd, topo.name, timeout)
        raise


def _wait(etcd: coord.Etcd, lab: str, machines: list[str], timeout: float, until: str) -> dict:
    """The machines' statuses of `lab` once `until` holds: "answered" (every machine has
    one, or one has failed), "settled" (every machine still alive has one: its agent has
    handled the spec) or "gone" (no machine still alive has one).  A machine whose lease
    has ended counts as settled and gone: it cleans up when it comes back."""
    deadline = time.monotonic() + timeout
    while True:
        states = {m: s for (_, m), s in coord.statuses(etcd, lab).items()}
        alive = {m.name for m in coord.machines(etcd)[0]}
        if until == "answered":
            waiting = [m for m in machines if m not in states]
            if any(s["state"] == "failed" for s in states.values()):
                waiting = []
        elif until == "settled":
            waiting = [m for m in machines if m in alive and m not in states]
        else:
            waiting = [m for m in states if m in alive]
        if not waiting:
            return states
        if time.monotonic() > deadline:
            raise NslabError(f"lab {lab}: no answer from machine {sorted(waiting)[0]} within {timeout:g} s")
        time.sleep(0.2)


def _remove(etcd: coord.Etcd, lab: str, timeout: float) -> tuple[list[str], list[str]]:
    """Every reachable machine's shard of `lab` removed (each agent handles its spec's
    deletion after its build: the build is waited for first); a machine gone is left a
    pending key.  The claim and the VNIs given back once no machine is pending.
    (the machines, those gone)."""
    machines = coord.lab_shards(etcd, lab)
    _wait(etcd, lab, machines, timeout, "settled")
    gone = set(machines) - coord.machine_names(etcd)[0]
    for m in sorted(gone):              # written before its spec goes: it finishes at its return
        coord.put_pending(etcd, m, lab)
    for m in machines:
        etcd.delete(coord.shard_key(m, lab))
    _wait(etcd, lab, machines, timeout, "gone")
    for m in sorted(set(machines) - gone - coord.machine_names(etcd)[0]):      # gone meanwhile
        gone.add(m)
        coord.put_pending(etcd, m, lab)
    if not gone:
        coord.release_flannel(etcd, lab)
        coord.release_lab(etcd, lab)
    return machines, sorted(gone)


def down(lab: str, etcd_url: str, timeout: float = TIMEOUT) -> tuple[list[str], list[str]]:
    """Remove lab `lab` from every machine: (the machines it was on, those gone, whose part
    stays pending in etcd until they come back)."""
    etcd = coord.connect(etcd_url)
    if not coord.lab_claimed(etcd, lab):
        raise UsageError(f"no lab named {lab!r} runs in the cluster at {etcd.endpoint}")
    return _remove(etcd, lab, timeout)


def down_sentence(lab: str, machines: list[str], gone: list[str]) -> str:
    reached = [m for m in machines if m not in gone]
    if not gone:
        return f"lab {lab} removed from {len(machines)} machine{'s' * (len(machines) != 1)} ({', '.join(machines)})"
    names = ", ".join(gone)
    return (f"lab {lab} removed from {', '.join(reached) or 'no machine'}; {names} "
            f"{'is' if len(gone) == 1 else 'are'} gone: {'its' if len(gone) == 1 else 'their'} part stays "
            f"pending in etcd (/nslab/pending/) and is removed when {'it comes' if len(gone) == 1 else 'they come'} "
            f"back")


def summary(placed: placement.Placed, states: dict) -> list[str]:
    lines = [f"lab {placed.lab} is up over {len(placed.machines)} machines:"]
    for m in placed.machines:
        s = states.get(m.name)
        lines.append(f"  {m.name}  {m.address:<15} {s['namespaces'] if s else 0:>5} namespaces")
    if placed.stitches:
        lines.append(f"  {len(placed.stitches)} VXLAN stitches between machines, UDP port {placed.port}")
    return lines


# ---- a command in a node, through its machine's agent ------------------------------------------

def _agent(url: str, token: str, method: str, path: str, body: dict | None = None) -> dict:
    """One request on an agent's channel (machine_agent.py), with the cluster's credential."""
    import http.client              # lazy: only here
    import json
    from . import channel           # lazy: only here
    conn = channel.http_connection(url, EXEC_TIMEOUT)       # mutual TLS when the cluster has a CA
    try:
        conn.request(method, path, json.dumps(body) if body is not None else None,
                     {"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read(1 << 22)
    except (OSError, http.client.HTTPException) as e:
        raise NslabError(f"the agent at {url} does not answer ({e})") from None
    finally:
        conn.close()
    try:
        answer = json.loads(data)
    except ValueError:
        answer = None
    if resp.status != 200 or not isinstance(answer, dict):
        raise NslabError(f"the agent at {url} refused {path}: "
                         f"{(answer or {}).get('error') if isinstance(answer, dict) else resp.status}")
    return answer


def parts(lab: str, etcd_url: str, reach: dict[str, str] | None = None) -> tuple[str, list[tuple[str, str, list]]]:
    """The cluster's credential and each machine's part of lab `lab`: [(machine, the URL
    its agent answers on from here, the nodes it holds)], in machine order.
    reach: machine -> that URL (the sandbox's forwarders); by default
    http://ADDRESS:7400, its underlay address."""
    etcd = coord.connect(etcd_url)
    if not coord.lab_claimed(etcd, lab):
        raise UsageError(f"no lab named {lab!r} runs here or in the cluster at {etcd.endpoint}")
    token = coord.cluster_token(etcd)
    registered = {m.name: m for m in coord.machines(etcd)[0]}
    out = []
    for (_, machine) in sorted(coord.statuses(etcd, lab)):
        if machine not in registered:
            continue
        url = (reach or {}).get(machine) or f"http://{registered[machine].address}:{coord.AGENT_PORT}"
        shards = _agent(url, token, "GET", "/v1/labs")["labs"]
        nodes = next((s.get("nodes", []) for s in shards if isinstance(s, dict) and s.get("lab") == lab), [])
        out.append((machine, url, nodes))
    return token, out


def holder(lab: str, node: str, etcd_url: str, reach: dict[str, str] | None = None) -> tuple[str, str, str]:
    """(machine, its agent's URL, the credential) of the machine holding `node` of `lab`."""
    token, machines = parts(lab, etcd_url, reach)
    for machine, url, nodes in machines:
        if node in nodes:
            return machine, url, token
    raise UsageError(f"lab {lab} has no node {node} on any machine that answers")


def run(lab: str, command: str, target: str | None, etcd_url: str, reach: dict[str, str] | None = None,
        stdout=None, **req) -> int:
    """`nslab COMMAND` for a node of lab `lab`, run by the agent of the machine holding it
    (channel.py); output passed through (to `stdout`, a binary file, if given); its exit code."""
    from . import channel           # lazy: only here
    _, url, token = holder(lab, target.partition(":")[0], etcd_url, reach)
    return channel.run(url, token, dict(req, lab=lab, command=command, target=target), stdout=stdout)


def _spec(etcd: coord.Etcd, lab: str, machines) -> dict:
    """The lab's shard spec as etcd holds it (its text, overrides, stitch port)."""
    spec = next((coord.shards(etcd, m)[0].get(lab) for m, _, _ in machines), None)
    if spec is None:
        raise NslabError(f"lab {lab}: no machine holds its spec in etcd")
    return spec


class _Part:
    """One machine's part of a command across machines (`nslab trace-part`, `nslab
    watch-part`), run by its agent (channel.py): JSON lines both ways over the channel's
    stream, in a thread of its own."""

    def __init__(self, machine: str, url: str, token: str, req: dict):
        import tempfile
        import threading
        self.machine = machine
        in_r, self.in_w = os.pipe()
        self.out_r, out_w = os.pipe()
        self.err = tempfile.TemporaryFile()
        self.buf = b""
        self.rc = None

        def run():
            from . import channel   # lazy: only here
            with os.fdopen(in_r, "rb") as stdin, os.fdopen(out_w, "wb") as stdout:
                try:
                    self.rc = channel.run(url, token, req, stdin=stdin, stdout=stdout, stderr=self.err)
                except NslabError as e:
                    self.err.write(f"{e}\n".encode())
                    self.rc = 1
        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def send(self, msg: dict) -> None:
        data = (json.dumps(msg) + "\n").encode()
        while data:
            data = data[os.write(self.in_w, data):]

    def receive(self, key: str, timeout: float) -> dict:
        import select
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            ready = select.select([self.out_r], [], [], max(0, left))[0] if left > 0 else []
            chunk = os.read(self.out_r, 1 << 20) if ready else None
            if not chunk:
                self.thread.join(5 if chunk == b"" else 0)
                self.err.seek(0)
                said = self.err.read().decode(errors="replace").strip().splitlines()
                why = said[-1] if said else ("it ended" if chunk == b"" else f"no answer within {timeout:g} s")
                raise NslabError(f"machine {self.machine}: {why}")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        try:
            msg = json.loads(line)
        except ValueError:
            raise NslabError(f"machine {self.machine} answered no JSON") from None
        if not isinstance(msg, dict) or key not in msg:
            raise NslabError(f"machine {self.machine} answered no {key!r}")
        return msg

    def close(self) -> None:
        try:
            os.close(self.in_w)
        except OSError:
            pass
        self.thread.join(30)
        os.close(self.out_r)
        self.err.close()


def trace(lab: str, src: str, dst: str, etcd_url: str, options: dict, reach: dict[str, str] | None = None) -> dict:
    """`nslab trace SRC DST` of lab `lab` across machines: every machine watches its own nodes
    (`nslab trace-part` there, observe/trace.part), the source's machine sends the probe,
    and here the sightings are chained into one path (trace.assemble) at the stitches
    between machines, each stitch a hop of its own ("m1 -> m3: vxlan stitch VNI 5001");
    each machine then explains the hops at its nodes from its own kernel."""
    import random
    from .observe import trace as tracemod
    t_start = time.perf_counter()
    token, machines = parts(lab, etcd_url, reach)
    etcd = coord.connect(etcd_url)
    spec = _spec(etcd, lab, machines)
    topo = _topology(spec, lab)
    where = {n: m for m, _, nodes in machines for n in nodes}
    timeout = float(options.get("timeout", 1.0))
    _, s, _, _, _ = tracemod.arguments(topo, src, dst, options.get("proto", "icmp"), options.get("port"),
                                       options.get("ttl"), timeout)       # bad input: refused here first
    if s.node not in where:
        raise UsageError(f"lab {lab}: {s.node} is on no machine that answers")
    req = {k: v for k, v in options.items() if k in ("proto", "port", "ttl", "timeout")}
    started: dict[str, _Part] = {}
    try:
        for m, url, _ in machines:
            started[m] = _Part(m, url, token, {"lab": lab, "command": "trace-part", "options": dict(
                req, src=src, dst=dst, **({"send": True} if m == where[s.node] else {}))})
        setups = {m: p.receive("ready", EXEC_TIMEOUT) for m, p in started.items()}
        source = started[where[s.node]]
        source.send({"fire": {"ident": random.randint(1, 0xFFFF), "seq": random.randint(1, 0xFFFF)}})
        fired = source.receive("fired", timeout + EXEC_TIMEOUT)["fired"]
        for p in started.values():
            p.send({"nat": fired})
        nats = [tracemod.nat.Nat(n["node"], "", tracemod.nat.Tuple(**n["before"]), tracemod.nat.Tuple(**n["after"]),
                                 n["dnat"], n["snat"], n["rule"]) for p in started.values()
                for n in p.receive("nat", EXEC_TIMEOUT)["nat"]]
        fired["aliases"] = list(dict.fromkeys((n.after.sport, n.after.dport) for n in nats))
        for p in started.values():
            p.send({"aliases": fired["aliases"]})
        obs = [tracemod._obs_from(o) for p in started.values() for o in p.receive("obs", EXEC_TIMEOUT)["obs"]]
        t = _setup_from(tracemod, setups[source.machine]["setup"], topo, fired)
        result = tracemod.assemble(t, obs, nats, fired["t0"])
        for p in started.values():
            p.send({"paths": result})
        for m, p in started.items():
            mine = p.receive("explained", EXEC_TIMEOUT)["explained"]
            for name in ("request", "reply"):
                hops = result[name]["hops"]
                for i, h in mine[name]["hops"].items():
                    hops[int(i)].update(h)
                if hops and where.get(hops[-1]["node"]) == m:
                    result[name]["delivered"], result[name]["drop"] = mine[name]["delivered"], mine[name]["drop"]
    finally:
        for p in started.values():
            p.close()
    _stitch_hops(result, where, etcd, spec)
    tracemod.finish(result, fired["error"], t_start)
    return result


def _topology(spec: dict, lab: str):
    from . import model             # lazy: only here
    return model.load(spec["file"], text=spec["text"], name=lab, overrides=spec["overrides"] or None)


def _setup_from(tracemod, d: dict, topo, fired: dict):
    """The source machine's trace.Setup, as its part reported it, for assembling here."""
    s, dd, p = tracemod.Endpoint(**d["src"]), tracemod.Endpoint(**d["dst"]), d["probe"]
    probe = tracemod.Probe(p["proto"], p["src"], p["dst"], p["port"], fired["ident"], fired["seq"], p["ttl"],
                           tuple(tuple(a) for a in fired.get("aliases") or []))
    return tracemod.Setup(topo.name, topo, d["service"], s, dd, probe, 0, {}, {})


def _stitch_hops(result: dict, where: dict[str, str], etcd: coord.Etcd, spec: dict) -> None:
    """Between a hop out of a node on one machine and the next hop, on another machine: the
    stitch that carried it, as a hop ("m1 -> m3: vxlan stitch VNI 5001"), its VNI as etcd
    holds it."""
    vnis = coord.lab_vnis(etcd, result["lab"])
    address = {m.name: m.address for m in coord.machines(etcd)[0]}
    port = spec.get("port")
    from .observe import trace as tracemod
    for name in ("request", "reply"):
        hops = result[name]["hops"]
        out = []
        for i, h in enumerate(hops):
            out.append(h)
            nxt = hops[i + 1] if i + 1 < len(hops) else None
            if nxt is None or h["dir"] != "out" or where.get(h["node"]) == where.get(nxt["node"]):
                continue
            a, b = where.get(h["node"], "?"), where.get(nxt["node"], "?")
            vni = vnis.get(f"{h['node']}:{h['iface']}") or vnis.get(f"{nxt['node']}:{nxt['iface']}")
            text = f"{a} -> {b}: vxlan stitch VNI {vni}"
            out.append({"node": f"{a} -> {b}", "iface": "stitch", "dir": "", "t_ms": h["t_ms"],
                        "outer": f"ip {address.get(a)} > {address.get(b)} | udp > {port} | vxlan vni {vni}",
                        "inner": h["inner"], "layers": h["layers"], "decisions": [], "note": text,
                        "stitch": {"from": a, "to": b, "vni": vni, "port": port, "local": address.get(a),
                                   "remote": address.get(b), "dev": f"{h['node']}:{h['iface']}",
                                   "peer": f"{nxt['node']}:{nxt['iface']}"}})
        result[name]["hops"] = out
        result[name]["summary"] = tracemod.summary(out)


def all_pairs(lab: str, topo, token: str, machines: list[tuple[str, str, list]], hosts: bool = False):
    """`nslab test --all-pairs` for a lab across machines: every machine holding endpoints
    pings from them to every endpoint, wherever it is (`nslab pairs-part` there, one
    request per machine, all at once: checks.pairs_part); the parts merged here into the
    one result a local run gives (checks.pairs_report).  An endpoint on no machine that
    answers sends nothing: its pairs count as unanswered."""
    import tempfile
    import threading
    from . import channel           # lazy: only here
    from .observe import checks
    started = time.monotonic()
    eps = [e.name for e in checks.pair_endpoints(topo, hosts)]
    held = {n for _, _, nodes in machines for n in nodes}
    busy = [(m, url) for m, url, nodes in machines if set(nodes) & set(eps)]
    answers: dict[str, dict] = {}
    failures: dict[str, str] = {}

    def ask(machine: str, url: str) -> None:
        with tempfile.TemporaryFile() as f, tempfile.TemporaryFile() as err, open(os.devnull, "rb") as nul:
            try:
                rc = channel.run(url, token, {"lab": lab, "command": "pairs-part",
                                              "options": {"hosts": True} if hosts else {}},
                                 stdin=nul, stdout=f, stderr=err)
            except NslabError as e:
                failures[machine] = str(e)
                return
            f.seek(0)
            err.seek(0)
            try:
                answers[machine] = json.load(f)
            except ValueError:
                said = err.read().decode(errors="replace").strip().splitlines()
                failures[machine] = said[-1] if said else f"its part ended with exit code {rc} and no answer"
    threads = [threading.Thread(target=ask, args=b, daemon=True) for b in busy]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        m, why = sorted(failures.items())[0]
        raise NslabError(f"lab {lab}: all pairs: machine {m}: {why}")
    away = [e for e in eps if e not in held]
    if away:                        # nobody sends from them: every pair of theirs unanswered
        answers["?"] = dict(pairs=len(away) * (len(eps) - 1), reachable=0, sent=0, rounds=1, elapsed=0.0,
                            errors={}, overflowed=0, gc_thresh3="?",
                            missing=[[s, d] for s in away for d in eps if d != s])
    got = [answers[m] for m, _ in busy if m in answers] + ([answers["?"]] if away else [])
    return checks.pairs_report(topo, hosts, got, time.monotonic() - started)


def test(lab: str, etcd_url: str, only: list[str] | None = None, reach: dict[str, str] | None = None,
         pairs: bool = False, hosts: bool = False):
    """`nslab test -l LAB` for a lab across machines: each test run by the agent of the
    machine holding its source (`nslab test --only NAME --json` there); one report, in the
    topology's order.  A test whose via or ttl node is on another machine runs alone, that
    node watched meanwhile by its own machine (`nslab watch-part`, checks.watch_part) and
    the expectation judged here from what it saw (checks.watched).  pairs: every pair
    instead (all_pairs())."""
    import tempfile
    from . import channel           # lazy: only here
    from .observe import checks
    token, machines = parts(lab, etcd_url, reach)
    where = {n: (m, url) for m, url, nodes in machines for n in nodes}
    topo = _topology(_spec(coord.connect(etcd_url), lab, machines), lab)
    if pairs:
        return all_pairs(lab, topo, token, machines, hosts)
    tests = [c for c in topo.tests if not only or c.name in only]
    if not tests:
        raise UsageError(f"lab {lab} declares no tests{' of those names' if only else ''}")
    results: dict[str, checks.Result] = {}
    batches: list[tuple[str, list, list[str]]] = []     # (machine, the tests, nodes watched elsewhere)
    for c in tests:
        home = where.get(c.src, ("?", None))[0]
        away = [n for n in dict.fromkeys((c.via, c.dst_node if c.ttl is not None else None))
                if n and where.get(n, (home,))[0] != home]
        if home == "?" or any(n not in where for n in away):
            missing = c.src if home == "?" else next(n for n in away if n not in where)
            results[c.name] = checks.Result(c.name, c.probe_text, c.expect_text, False,
                                            f"{missing} is on no machine that answers", line=c.line)
        elif away:
            batches.append((home, [c], away))
        elif batches and batches[-1][0] == home and not batches[-1][2]:
            batches[-1][1].append(c)
        else:
            batches.append((home, [c], []))
    t0 = time.monotonic()
    for machine, cs, away in batches:
        watchers: dict[str, _Part] = {}
        try:
            for m in dict.fromkeys(where[n][0] for n in away):
                watchers[m] = _Part(m, dict((x, u) for x, u, _ in machines)[m], token, {
                    "lab": lab, "command": "watch-part", "options": {"node": [n for n in away if where[n][0] == m]}})
            for p in watchers.values():
                p.receive("ready", EXEC_TIMEOUT)
            with tempfile.TemporaryFile() as f:
                channel.run(where[cs[0].src][1], token, {"lab": lab, "command": "test", "options": {
                    "json": True, "only": [c.name for c in cs]}}, stdout=f)
                f.seek(0)
                try:
                    part = json.load(f)
                    results.update({r["name"]: checks.Result(**r) for r in part["results"]})
                except (ValueError, KeyError, TypeError):
                    raise NslabError(f"machine {machine}: its test did not answer a report") from None
            frames: dict[str, list] = {}
            for p in watchers.values():
                p.send({"stop": True})
                for node, seen in p.receive("frames", EXEC_TIMEOUT)["frames"].items():
                    frames[node] = [(i, o, h, bytes.fromhex(d)) for i, o, h, d in seen]
        finally:
            for p in watchers.values():
                p.close()
        if away and cs[0].name in results and not results[cs[0].name].skipped:
            checks.add_watched(topo, cs[0], results[cs[0].name], frames)
    return checks.Report(lab, [results[c.name] for c in tests if c.name in results], time.monotonic() - t0,
                         topo.cluster.backend.type if topo.cluster else None)


def test_file(topo, etcd_url: str, spread: str | None, stitch_port: int, overrides: dict | None,
              only: list[str] | None = None, reach: dict[str, str] | None = None, pairs: bool = False,
              hosts: bool = False):
    """`nslab test FILE` across machines: the lab up over its machines, its tests run (test()),
    the lab down again from every machine whatever happened; the report."""
    up(topo, etcd_url, spread, stitch_port, overrides, log=lambda *_: None)
    try:
        return test(topo.name, etcd_url, only, reach, pairs, hosts)
    finally:
        down(topo.name, etcd_url)


def each(lab: str, command: str, etcd_url: str, reach: dict[str, str] | None = None, heading=print) -> int:
    """`nslab COMMAND -l LAB` (one without a node: rewire) run on every machine holding a
    part of lab `lab`, by its agent, under the machine's name; the worst exit code."""
    import sys
    from . import channel           # lazy: only here
    token, machines = parts(lab, etcd_url, reach)
    rc = 0
    for machine, url, _ in machines:
        heading(f"machine {machine}:")
        sys.stdout.flush()
        rc = max(rc, channel.run(url, token, {"lab": lab, "command": command}))
    return rc


def show(lab: str, etcd_url: str, options: dict, reach: dict[str, str] | None = None, heading=print) -> int:
    """`nslab show` of every node of lab `lab`: each machine's part, by its agent.  Text:
    one part after another under the machine's name; --json: one document, the parts'
    nodes (and --brief's rows) merged."""
    import json
    import sys
    import tempfile
    from . import channel           # lazy: only here
    token, machines = parts(lab, etcd_url, reach)
    merged: dict | list | None = None
    rc = 0
    for machine, url, _ in machines:
        req = {"lab": lab, "command": "show", "options": options}
        if not options.get("json"):
            heading(f"machine {machine}:")
            sys.stdout.flush()
            rc = max(rc, channel.run(url, token, req))
            continue
        with tempfile.TemporaryFile() as f:
            rc = max(rc, channel.run(url, token, req, stdout=f))
            f.seek(0)
            try:
                part = json.load(f)
            except ValueError:
                raise NslabError(f"machine {machine}: its show did not answer JSON") from None
        if isinstance(part, list):
            merged = (merged or []) + [dict(r, machine=machine) for r in part]
        elif isinstance(part, dict):
            for entry in (part.get("nodes") or {}).values():
                entry["machine"] = machine
            if merged is None:
                merged = part
            else:
                merged["nodes"].update(part.get("nodes") or {})
    if options.get("json"):
        print(json.dumps(merged if merged is not None else {}, indent=1))
    return rc


def labs(etcd_url: str) -> list[dict]:
    """The labs across machines, as `nslab ls` lists them: each machine that holds a part
    must be alive (its lease) and report it up; else the lab is degraded, naming why.  A
    lab whose `down` waits for machines gone is "removing", naming them."""
    etcd = coord.connect(etcd_url)
    alive = coord.machine_names(etcd)[0]
    waiting = coord.pending(etcd)
    rows = []
    for lab in coord.labs(etcd):
        machines = coord.lab_shards(etcd, lab)
        states = {m: s for (_, m), s in coord.statuses(etcd, lab).items()}
        missing = []
        for m in machines:
            if m not in alive:
                missing.append(f"machine {m} is gone (its lease ended)")
            elif m not in states:
                missing.append(f"machine {m} has not reported its part")
            elif states[m]["state"] != "up":
                missing.append(f"machine {m}: {states[m]['error']}")
        pending = waiting.get(lab, [])
        missing += [f"machine {m} is gone: its part is removed when it comes back (`nslab down` ran)"
                    for m in pending]
        status = "removing" if pending and not machines else "degraded" if missing else "up"
        spec = next((coord.shards(etcd, m)[0].get(lab) for m in machines if m in alive), None) or {}
        rows.append(dict(lab=lab, status=status, missing=missing, machines=machines or pending,
                         backend=(spec.get("overrides") or {}).get("backend"), file=spec.get("file", "?"),
                         nodes=sum(s["namespaces"] for s in states.values()), namespaces=[], processes=[]))
    return rows
