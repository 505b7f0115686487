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


def up(topo, etcd_url: str, spread: str | None, stitch_port: int, overrides: dict | None, log=print,
       timeout: float = TIMEOUT) -> tuple[placement.Placed, dict]:
    etcd = coord.Etcd(etcd_url)
    machines, mtu = _machines(etcd, topo, spread)
    plan = compiler.compile_topology(topo)
    placed = placement.place(topo, plan, machines, port=stitch_port, underlay_mtu=mtu)
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
        for name in busy:
            coord.put_shard(etcd, name, spec)
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
    etcd = coord.Etcd(etcd_url)
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
    from urllib.parse import urlsplit
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=EXEC_TIMEOUT)
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
    etcd = coord.Etcd(etcd_url)
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
        **req) -> int:
    """`nslab COMMAND` for a node of lab `lab`, run by the agent of the machine holding it
    (channel.py); output passed through; its exit code."""
    from . import channel           # lazy: only here
    _, url, token = holder(lab, target.partition(":")[0], etcd_url, reach)
    return channel.run(url, token, dict(req, lab=lab, command=command, target=target))


def trace(lab: str, src: str, dst: str, etcd_url: str, options: dict, reach: dict[str, str] | None = None) -> int:
    """`nslab trace SRC DST` of lab `lab`, run on SRC's machine.  A DST on another machine
    is refused in one sentence: the probe is sniffed on one machine only (not done yet:
    following it over a stitch, issue 20 item 4)."""
    from . import channel           # lazy: only here
    token, machines = parts(lab, etcd_url, reach)
    where = {n: (m, url) for m, url, nodes in machines for n in nodes}
    if src not in where:
        raise UsageError(f"lab {lab} has no node {src} on any machine that answers")
    if dst in where and where[dst][0] != where[src][0]:
        raise UsageError(f"{src} is on machine {where[src][0]} and {dst} on {where[dst][0]}: nslab trace does "
                         f"not follow a probe across machines yet; trace to a node on {where[src][0]}, or "
                         f"capture on the stitch")
    return channel.run(where[src][1], token, {"lab": lab, "command": "trace", "target": src, "dst": dst,
                                              "options": options})


def test(lab: str, etcd_url: str, only: list[str] | None = None, reach: dict[str, str] | None = None):
    """`nslab test -l LAB` for a lab across machines: each test run by the agent of the
    machine holding its source (`nslab test --only NAME --json` there); one report, in the
    topology's order.  A test whose expectation watches a node on another machine (via,
    ttl) fails saying so: a probe is watched on one machine only."""
    import json
    import tempfile
    from . import channel, model    # lazy: only here
    from .observe import checks
    token, machines = parts(lab, etcd_url, reach)
    where = {n: (m, url) for m, url, nodes in machines for n in nodes}
    etcd = coord.Etcd(etcd_url)
    spec = next((coord.shards(etcd, m)[0].get(lab) for m, _, _ in machines), None)
    if spec is None:
        raise NslabError(f"lab {lab}: no machine holds its spec in etcd")
    topo = model.load(spec["file"], text=spec["text"], name=lab, overrides=spec["overrides"] or None)
    tests = [c for c in topo.tests if not only or c.name in only]
    if not tests:
        raise UsageError(f"lab {lab} declares no tests{' of those names' if only else ''}")
    results: dict[str, checks.Result] = {}
    groups: dict[str, list] = {}
    for c in tests:
        home = where.get(c.src, ("?", None))[0]
        away = [n for n in (c.via, c.dst_node if c.ttl is not None else None) if n and where.get(n, (home,))[0] != home]
        if home == "?" or away:
            why = f"{c.src} is on no machine that answers" if home == "?" else \
                f"watches {away[0]} on {where[away[0]][0]}, not {home}: a probe is watched on one machine only"
            results[c.name] = checks.Result(c.name, c.probe_text, c.expect_text, False, why, line=c.line)
        else:
            groups.setdefault(home, []).append(c.name)
    t0 = time.monotonic()
    for machine, names in groups.items():
        with tempfile.TemporaryFile() as f:
            channel.run(where[next(c.src for c in tests if c.name == names[0])][1], token,
                        {"lab": lab, "command": "test", "options": {"json": True, "only": names}}, stdout=f)
            f.seek(0)
            try:
                part = json.load(f)
                results.update({r["name"]: checks.Result(**r) for r in part["results"]})
            except (ValueError, KeyError, TypeError):
                raise NslabError(f"machine {machine}: its test did not answer a report") from None
    return checks.Report(lab, [results[c.name] for c in tests if c.name in results], time.monotonic() - t0,
                         topo.cluster.backend.type if topo.cluster else None)


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
    etcd = coord.Etcd(etcd_url)
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
