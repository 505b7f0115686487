"""Running a topology's `tests:` section (parsed in model/tests.py) and all-pairs probes.

Probes (observe/probe.py) and the sniffer (observe/sniffer.py) are sockets opened inside
the lab's namespaces by this process: nothing is forked per check."""
from __future__ import annotations

import time
from xml.etree import ElementTree as ET
from dataclasses import dataclass, field

from .. import backends
from .. import console as out
from ..apply import netns
from ..model.tests import IP_MTU_OVERHEAD, Check, underlay_node
from . import probe
from .decode import decode, format_layers, split
from .sniffer import Sniffer


# --- parsing ------------------------------------------------------------------------------------


# --- running -----------------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    probe: str
    expected: str
    ok: bool
    observed: str                                     # one line for the table
    details: list[str] = field(default_factory=list)  # what each expectation saw
    seconds: float = 0.0
    line: int | None = None
    skipped: str | None = None                        # why the test did not run (ok stays True)

    @property
    def status(self) -> str:
        return "SKIP" if self.skipped else "PASS" if self.ok else "FAIL"

    def as_dict(self) -> dict:
        return dict(name=self.name, probe=self.probe, expected=self.expected, ok=self.ok,
                    observed=self.observed, details=self.details, seconds=round(self.seconds, 3), line=self.line,
                    skipped=self.skipped)


@dataclass
class Report:
    lab: str
    results: list[Result]
    seconds: float
    backend: str | None = None                        # the lab's flannel backend, if it has a cluster

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def failed(self) -> list[Result]:
        return [r for r in self.results if not r.ok]

    @property
    def skipped(self) -> list[Result]:
        return [r for r in self.results if r.skipped]

    @property
    def summary(self) -> str:
        passed = len(self.results) - len(self.failed) - len(self.skipped)
        return f"{passed} passed, {len(self.failed)} failed" + (f", {len(self.skipped)} skipped" if self.skipped
                                                                 else "")

    def __str__(self) -> str:
        lines = [f"{r.status} {r.name}: {r.observed}" + ("" if r.ok else f" (expected {r.expected})")
                 for r in self.results]
        return "\n".join(lines + [self.summary])

    def as_dict(self) -> dict:
        return dict(lab=self.lab, backend=self.backend, ok=self.ok, seconds=round(self.seconds, 3),
                    passed=len(self.results) - len(self.failed) - len(self.skipped), failed=len(self.failed),
                    skipped=len(self.skipped), results=[r.as_dict() for r in self.results])


def run(topo, checks: list[Check] | None = None, here: set[str] | None = None) -> Report:
    """Run the checks (default: the topology's own) against the running lab built from `topo`.
    here: the nodes this machine holds (a lab across machines): an expectation watched at
    another machine's node is left to the host (nslab/across.py, watch_part)."""
    t0 = time.monotonic()
    backend = topo.cluster.backend.type if topo.cluster else None
    results = [skip(c, backend) if backend and c.assumes and backend not in c.assumes else run_check(topo, c, here)
               for c in (topo.tests if checks is None else checks)]
    return Report(topo.name, results, time.monotonic() - t0, backend)


def skip(c: Check, backend: str) -> Result:
    """A test written for other backends (`backend:`, or the encap it expects), not run."""
    why = f"written for {' or '.join(c.assumes)}; this lab runs {backend}"
    return Result(c.name, c.probe_text, c.expect_text, True, f"skipped: {why}", line=c.line, skipped=why)


MARKER = "check"             # a test's probe carries probe.new_marker(MARKER)


def run_check(topo, c: Check, here: set[str] | None = None) -> Result:
    t0 = time.monotonic()
    marker = probe.new_marker(MARKER)
    nodes = topo.nodes
    watch: dict[str, tuple[str, str | None]] = {}
    if c.encap:    # a pod's or cluster node's probe: on that node's underlay; else anywhere it leaves src
        cn = underlay_node(topo, c.src)
        watch["encap"] = (nodes[cn].ns, topo.cluster.nodes[cn].underlay) if cn else (nodes[c.src].ns, None)
    if c.via and (here is None or c.via in here):
        watch["via"] = (nodes[c.via].ns, None)
    if c.ttl is not None and (here is None or c.dst_node in here):
        watch["ttl"] = (nodes[c.dst_node].ns, None)
    src_ns = nodes[c.src].ns
    for ns in [src_ns] + [ns for ns, _ in watch.values()]:
        if not netns.exists(ns):
            return Result(c.name, c.probe_text, c.expect_text, False, f"namespace {ns} is gone", line=c.line)
    with Sniffer(watch) as sniffer:         # one packet socket per role, keyed by role
        out = probe.send(c.kind, src_ns, c.dst_ip, c.port, marker, c.timeout)
        seen: dict[str, list] = {role: [] for role in watch}
        for f in sniffer.frames(marker):
            seen[f.node].append((f.iface, f.outgoing, f.hatype, f.data))
    details = [out.detail]
    ok = out.ok == c.expect_ok
    observed = out.detail if not out.ok else "reached" if c.kind != "http" else out.detail.split("-> ", 1)[-1]
    if out.ok:
        obs = [observed]
        if c.encap:
            got, why = _encap(topo, seen["encap"], watch["encap"][1])
            details.append(f"encap: {why}")
            obs.append(f"encap {got}")
            ok &= got == c.encap
        ok &= watched(topo, c, {c.dst_node: seen["ttl"]} if "ttl" in seen else {},
                      {c.via: seen["via"]} if "via" in seen else {}, details, obs)
        if c.mtu:
            got, why = _mtu(src_ns, c.dst_ip, c.mtu, c.timeout)
            details.append(f"mtu: {why}")
            obs.append(f"mtu {c.mtu}" if got else f"mtu not {c.mtu}")
            ok &= got
        if c.source or c.endpoint:
            # nslab's HTTP server answers "<pod> <its ip:port> answered <peer ip:port>"
            words = out.reply.partition(b"\r\n\r\n")[2].decode(errors="replace").split()
            pod, peer = (words[0], words[3].rsplit(":", 1)[0]) if len(words) == 4 else ("?", "?")
            details.append(f"answered by {pod}, which saw {peer}")
            obs.append(f"endpoint {pod}, source {peer}")
            ok &= c.source in (None, peer) and c.endpoint in (None, pod)
        observed = ", ".join(obs)
    return Result(c.name, c.probe_text, c.expect_text, ok, observed, details, time.monotonic() - t0, c.line)


def watched(topo, c: Check, at_dst: dict, at_via: dict, details: list[str], obs: list[str]) -> bool:
    """The ttl and via expectations of `c` from the frames seen at its destination node and
    its via node ({node: [(iface, outgoing, hatype, data)]}; one not given: not evaluated
    here); what each saw appended to details and obs."""
    ok = True
    if c.ttl is not None and c.dst_node in at_dst:
        got = _ttl(topo, at_dst[c.dst_node], c.dst_ip)
        details.append(f"ttl at {c.dst_node}: {got if got is not None else 'probe not seen there'}")
        obs.append(f"ttl {got if got is not None else '?'}")
        ok &= got == c.ttl
    if c.via and c.via in at_via:
        where = sorted({f"{iface} {'out' if outgoing else 'in'}" for iface, outgoing, _, _ in at_via[c.via]})
        details.append(f"via {c.via}: " + (", ".join(where) if where else "probe not seen there"))
        obs.append(f"via {c.via}" if where else f"not via {c.via}")
        ok &= bool(where)
    return ok


WATCHED_ORDER = ("encap", "ttl", "via", "not via", "mtu", "endpoint", "answered by")   # as run_check adds them


def add_watched(topo, c: Check, r: Result, frames: dict) -> None:
    """Across machines: the ttl/via expectations of `c` watched on another machine
    (frames: {node: [(iface, outgoing, hatype, data)]}) judged, and folded into its result
    where run_check puts them, so the report reads as a local one.  Only when the probe got
    through, as run_check judges them."""
    first, *rest = r.observed.split(", ")
    if not (first == "reached" or (c.kind == "http" and first.startswith("HTTP/"))):
        return
    details: list[str] = []
    obs: list[str] = []
    r.ok &= watched(topo, c, frames, frames, details, obs)

    def rank(text: str) -> int:
        return next((i for i, p in enumerate(WATCHED_ORDER) if text.startswith(p)), len(WATCHED_ORDER))
    r.observed = ", ".join([first] + sorted(rest + obs, key=rank))
    r.details = r.details[:1] + sorted(r.details[1:] + details, key=rank)


def watch_part(namespaces: dict[str, str], stdin=None, stdout=None) -> None:
    """`nslab watch-part`: a test's probe seen at nodes of this machine, for a test across
    machines whose via or ttl node is here and its source elsewhere (across.test drives it,
    JSON lines): `{"ready"}` once watching, then every frame carrying a test's marker until
    the host says `{"stop"}`, answered as `{"frames": {node: [[iface, outgoing, hatype,
    hex]]}}`.  The host runs one such test at a time."""
    import json
    import select
    import sys
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    tag = f"nslab-{MARKER}-".encode()
    kept: dict[str, list] = {n: [] for n in namespaces}

    def keep(f):
        if tag in f.data and len(kept[f.node]) < 1000:
            kept[f.node].append([f.iface, f.outgoing, f.hatype, f.data.hex()])
    with Sniffer(namespaces) as sniffer:
        sniffer.drain()
        stdout.write(json.dumps({"ready": True}) + "\n")
        stdout.flush()
        while not select.select([stdin.fileno()], [], [], 0)[0]:
            sniffer.read(keep, time.monotonic() + 0.05)
        sniffer.read(keep, time.monotonic() + 0.02)
    stdout.write(json.dumps({"frames": kept}) + "\n")
    stdout.flush()


def encap_ports(topo) -> dict[int, str]:
    """UDP destination ports that carry encapsulated traffic in this lab: the one classifier's
    (VXLAN on 4789 and 8472 in any lab, DIY tunnels included; the cluster backend's port)."""
    return backends.encap_ports(topo.cluster.backend if topo.cluster else None)


def _encap(topo, frames, iface: str | None) -> tuple[str, str]:
    """How the probe left: (vxlan|ipip|udp|none, explanation).  Watching a whole namespace,
    the most encapsulated outgoing frame counts (a tunnel device sends the inner packet too)."""
    best = None
    for name, outgoing, hatype, data in frames:
        if not outgoing:
            continue
        layers = decode(data, hatype, encap_ports(topo))
        got = backends.classify(split(layers)[0]) or "none"
        if best is None or (best[0] == "none" and got != "none"):
            best = (got, f"left {name} as {format_layers(layers)}")
    if best is None:
        return "none", f"not seen leaving on {iface or 'any interface'} (the path did not cross it)"
    return best


def _ttl(topo, frames, dst_ip: str) -> int | None:
    """The TTL of the first arriving frame whose (innermost matching) IP header is for dst_ip."""
    for _, outgoing, hatype, data in frames:
        if outgoing:
            continue
        ips = [l for l in decode(data, hatype, encap_ports(topo)) if l["layer"] == "ip" and l["dst"] == dst_ip]
        if ips:
            return ips[-1]["ttl"]
    return None


def _mtu(ns: str, dst: str, mtu: int, timeout: float) -> tuple[bool, str]:
    size = mtu - IP_MTU_OVERHEAD
    fits = probe.ping(ns, dst, probe.marker_payload(size), timeout, dont_fragment=True)
    over = probe.ping(ns, dst, probe.marker_payload(size + 1), timeout, dont_fragment=True)
    ok = fits.ok and not over.ok
    return ok, (f"payload {size} with DF: {'answered' if fits.ok else fits.detail}; "
                f"{size + 1}: {'answered' if over.ok else over.detail}")


# --- every pair ----------------------------------------------------------------------------------


def pair_endpoints(topo, hosts: bool = False) -> list[probe.Endpoint]:
    """Pods (and hosts, if asked or if the lab has no pods), each with its first address."""
    kinds = ("pod", "host") if hosts else ("pod",)
    eps = [probe.Endpoint(n.name, n.ns, str(n.addresses[0].ip)) for n in topo.nodes.values()
           if n.kind in kinds and n.addresses]
    if not eps and not hosts:
        return pair_endpoints(topo, hosts=True)
    return eps


def run_all_pairs(topo, hosts: bool = False, timeout: float = 3.0) -> Report:
    """Every pod can reach every other pod (`nslab test --all-pairs`), as one result.  Its
    time is the check's whole wall-clock time (choosing the pairs and opening sockets
    included), not only the probes'."""
    started = time.monotonic()
    part = pairs_part(topo, hosts, None, timeout)
    return pairs_report(topo, hosts, [part], time.monotonic() - started)


def pairs_part(topo, hosts: bool = False, here: set[str] | None = None, timeout: float = 3.0) -> dict:
    """Every pair from the endpoints `here` (default: all) to every endpoint, as a JSON
    document: the whole run's, or one machine's part of a lab across machines (`nslab
    pairs-part`, its sources the nodes it holds), which the host merges (pairs_report)."""
    fulls = probe.neighbour_table_fulls()
    eps = pair_endpoints(topo, hosts)
    r = probe.all_pairs(eps, timeout) if here is None else probe.all_pairs(eps, timeout, sources=here)
    return dict(endpoints=len(eps), pairs=r.pairs, reachable=r.reachable, missing=[list(p) for p in r.missing],
                sent=r.sent, rounds=r.rounds, elapsed=r.elapsed, errors=r.errors,
                overflowed=(probe.neighbour_table_fulls() or 0) - (fulls or 0), gc_thresh3=probe.gc_thresh3())


def pairs_report(topo, hosts: bool, parts: list[dict], took: float) -> Report:
    """The all-pairs result of `parts` (pairs_part's documents, one per machine: their sums)."""
    n = len(pair_endpoints(topo, hosts))
    pairs, reachable = sum(p["pairs"] for p in parts), sum(p["reachable"] for p in parts)
    missing = [tuple(m) for p in parts for m in p["missing"]]
    sent, rounds = sum(p["sent"] for p in parts), max((p["rounds"] for p in parts), default=1)
    elapsed = max((p["elapsed"] for p in parts), default=0.0)
    errors = {k: v for p in parts for k, v in p["errors"].items()}
    overflowed = sum(p["overflowed"] for p in parts)
    has_pods = any(x.kind == "pod" for x in topo.nodes.values())
    kinds = "hosts" if not has_pods else "pods and hosts" if hosts else "pods"
    details = [f"{reachable}/{pairs} pairs answered in {took:.2f} s ({out.plural(sent, 'echo request')}, "
               f"{out.plural(rounds, 'round')}; probing {elapsed:.2f} s of it)"]
    details += [f"no answer: {s} -> {d}" for s, d in missing[:50]]
    if len(missing) > 50:
        details.append(f"... and {len(missing) - 50} more pairs")
    details += [f"send error from {s}: {e}" for s, e in errors.items()]
    if missing and overflowed > 0:
        details.insert(1, f"the kernel's ARP table overflowed {overflowed} times meanwhile: it is shared by every "
                          f"namespace on this machine and holds {parts[0]['gc_thresh3']} entries "
                          f"(net.ipv4.neigh.default.gc_thresh3 of the root namespace, which nslab never changes); "
                          f"fewer pods per node need fewer entries")
    observed = f"{reachable}/{pairs} reachable in {took:.2f} s"
    ok = not missing and pairs == n * (n - 1) and n > 1
    res = Result(f"all pairs of {n} {kinds}", "ping, every ordered pair", "success",
                 ok, observed if n > 1 else "fewer than two endpoints", details, took)
    return Report(topo.name, [res], took)


# --- reports -------------------------------------------------------------------------------------


def render(console, report: Report) -> None:
    from rich.text import Text  # lazy: start-up
    lab, results = report.lab, report.results
    title = f"lab {lab}: tests" + (f" (flannel backend {report.backend})" if report.backend else "")
    out.table(console, ["", "test", "probe", "expected", "observed"],     # never cut (nslab/console.py)
              [["SKIP" if r.skipped else "PASS" if r.ok else "FAIL", r.name, r.probe, r.expected, r.observed]
               for r in results], title=title, styles={"PASS": "green", "FAIL": "red bold", "SKIP": "yellow"})
    for r in results:
        if not r.ok:
            console.print(Text.assemble(("FAIL", "red"), f" {r.name}" + (f" (line {r.line})" if r.line else "")))
            for d in r.details:
                console.print(f"  {d}", markup=False)
    console.print(f"{report.summary} in {report.seconds:.2f} s")


def junit(report: Report, file: str) -> str:
    """JUnit XML (one testsuite, one testcase per check) for CI systems."""
    lab, results, elapsed = report.lab, report.results, report.seconds
    suites = ET.Element("testsuites", name="nslab", tests=str(len(results)),
                        failures=str(sum(not r.ok for r in results)), time=f"{elapsed:.3f}")
    suite = ET.SubElement(suites, "testsuite", name=f"nslab.{lab}", tests=str(len(results)),
                          failures=str(sum(not r.ok for r in results)), errors="0", skipped=str(len(report.skipped)),
                          time=f"{elapsed:.3f}", file=file)
    for r in results:
        case = ET.SubElement(suite, "testcase", classname=f"nslab.{lab}", name=r.name, time=f"{r.seconds:.3f}")
        if r.line:
            case.set("file", file)
            case.set("line", str(r.line))
        if r.skipped:
            ET.SubElement(case, "skipped", message=r.skipped)
        elif not r.ok:
            fail = ET.SubElement(case, "failure", message=f"expected {r.expected}; observed {r.observed}",
                                 type="nslab.check")
            fail.text = "\n".join(r.details)
        else:
            ET.SubElement(case, "system-out").text = "\n".join(r.details)
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"
