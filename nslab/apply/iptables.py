"""iptables inside one lab namespace: apply iptables-restore text, read counters back.

One process per namespace and call: `nsenter --net=<fd> iptables-restore -w --noflush`
(nsenter setns()es into the namespace and execs iptables-restore, so it is one child, never
one per rule).  The namespace is opened first and its identity checked on that very file
descriptor, which is what the child enters: the host's namespace is refused (the same
guard as nslab.netns), and nothing can swap the namespace between the check and the exec.

Works with either iptables flavour: nft (rules live in the namespace's own nftables tables)
or legacy (-w waits for the host-wide xtables lock other namespaces' iptables share).
"""
from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass, field

from . import netns
from ..errors import NslabError, PrerequisiteError
from .. import spawn

RESTORE = ("iptables-restore", "-w", "--noflush")
SAVE = ("iptables-save", "-c")


def _tool(name: str) -> str:
    path = spawn.tool(name)
    if path is None:
        raise PrerequisiteError(f"{name} is not installed (apt-get install {spawn.PACKAGES.get(name, name)})")
    return path


def _open_lab_ns(ns: str) -> int:
    """An fd on lab namespace `ns`; refuses anything that is the host's namespace."""
    try:
        fd = os.open(netns.path(ns), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NslabError(f"network namespace {ns} does not exist") from None
    try:
        if os.fstat(fd).st_ino in netns._host_netns_inodes():
            raise NslabError(f"refusing to run iptables in {ns}: it is the host's network namespace")
    except BaseException:
        os.close(fd)
        raise
    return fd


def run(ns: str, argv: tuple, *, input: str | None = None, timeout: float) -> subprocess.CompletedProcess:
    """System tool argv (iptables-restore, nft, ...) inside lab namespace `ns`: one nsenter
    child that execs it, fed `input` on stdin."""
    nsenter = _tool("nsenter")
    tool = _tool(argv[0])
    fd = _open_lab_ns(ns)
    try:
        # /proc/self/fd/N: nsenter resolves it in its own fd table, where pass_fds put our fd.
        return subprocess.run([nsenter, f"--net=/proc/self/fd/{fd}", tool, *argv[1:]], pass_fds=(fd,),
                              input=input, capture_output=True, text=True, timeout=timeout, cwd=spawn.CWD,
                              env=spawn.env())
    except subprocess.TimeoutExpired:
        size = f" with {input.count(chr(10))} lines of input" if input else ""
        raise NslabError(f"{argv[0]} in {ns} did not finish in {timeout:.0f} s{size}") from None
    finally:
        os.close(fd)


def timeout_for(text: str) -> float:
    """How long a restore of `text` may take: a minute, plus a second per 250 lines (a node
    with 1,000 services of 10 endpoints, 43,000 lines, took iptables-nft-restore 25 s on a
    loaded 2-core machine; nft loads the same services in 2 s)."""
    return 60 + text.count("\n") / 250


def load(ns: str, argv: tuple, texts: tuple[str, ...],
         timeout: float | None) -> tuple[str, subprocess.CompletedProcess] | None:
    """The texts (concatenated, each ending its line) fed to one `argv` (a loader that reads
    stdin: iptables-restore, nft -f -) in `ns`: (text, process), or None for no text."""
    text = "".join(t if t.endswith("\n") else t + "\n" for t in texts if t)
    if not text:
        return None
    return text, run(ns, argv, input=text, timeout=timeout or timeout_for(text))


def apply(ns: str, *texts: str, timeout: float | None = None) -> None:
    """Load iptables-restore text (several texts are concatenated: each keeps its own
    *table ... COMMIT sections) into namespace `ns` with one iptables-restore.  --noflush:
    rules already there stay, chains declared in the text are (re)created empty."""
    loaded = load(ns, RESTORE, texts, timeout)
    if loaded and loaded[1].returncode != 0:
        raise NslabError(f"iptables-restore in {ns} failed: {_explain(loaded[1].stderr, loaded[0])}")


def _explain(stderr: str, text: str) -> str:
    """iptables-restore names the failing line by number; quote it."""
    msg = " ".join(stderr.split()) or "no message"
    m = re.search(r"line (\d+) failed", stderr)
    if m:
        lines = text.splitlines()
        n = int(m.group(1))
        if 0 < n <= len(lines):
            msg += f" (line {n}: {lines[n - 1]})"
    return msg


# --- reading back -----------------------------------------------------------------------------

@dataclass
class Rule:
    chain: str
    spec: str               # the rule as iptables-save prints it, without "-A CHAIN"
    packets: int
    bytes: int


@dataclass
class Chain:
    name: str
    policy: str | None      # ACCEPT/DROP for built-in chains, None for user chains
    packets: int            # the policy's counters (built-in chains)
    bytes: int
    rules: list[Rule] = field(default_factory=list)


_CHAIN = re.compile(r"^:(\S+) (\S+) \[(\d+):(\d+)\]$")
_RULE = re.compile(r"^(?:\[(\d+):(\d+)\] )?-A (\S+)(?: (.*))?$")


def parse_save(text: str) -> dict[str, dict[str, Chain]]:
    """`iptables-save [-c]` output -> {table: {chain: Chain}}, chains and rules in order."""
    tables: dict[str, dict[str, Chain]] = {}
    table = None
    for n, line in enumerate(text.splitlines(), 1):
        if not line or line.startswith("#") or line == "COMMIT":
            continue
        if line.startswith("*"):
            table = tables.setdefault(line[1:], {})
            continue
        if table is None:
            raise ValueError(f"iptables-save line {n} is outside a table: {line!r}")
        m = _CHAIN.match(line)
        if m:
            name, policy, pk, by = m.groups()
            table[name] = Chain(name, None if policy == "-" else policy, int(pk), int(by))
            continue
        m = _RULE.match(line)
        if not m:
            raise ValueError(f"iptables-save line {n} not understood: {line!r}")
        pk, by, chain, spec = m.groups()
        if chain not in table:
            raise ValueError(f"iptables-save line {n}: rule for undeclared chain {chain}")
        table[chain].rules.append(Rule(chain, spec or "", int(pk or 0), int(by or 0)))
    return tables


def save(ns: str, *, counters: bool = True, timeout: float = 30) -> str:
    """`iptables-save [-c]` inside namespace `ns` (one process)."""
    proc = run(ns, SAVE if counters else SAVE[:1], timeout=timeout)
    if proc.returncode != 0:
        raise NslabError(f"iptables-save in {ns} failed: {' '.join(proc.stderr.split())}")
    return proc.stdout


def tables(ns: str, timeout: float = 30) -> dict[str, dict[str, Chain]]:
    """Every table, chain and rule of namespace `ns`, with packet and byte counters."""
    return parse_save(save(ns, timeout=timeout))


def as_saved(texts: list[str], _cache: dict = {}) -> dict:
    """iptables-restore texts (a plan's) as iptables itself writes them back: loaded into a
    throwaway network namespace (`unshare --net`, gone with the process) and saved, so they
    compare with the kernel's iptables-save byte for byte (iptables rewrites what it reads:
    `-d X` -> `-d X/32`, `--or-mark 0x00004000` -> `--set-xmark 0x4000/0x4000`, matches
    reordered).  The host's namespace is not touched.  Cached per text."""
    text = "".join(t if t.endswith("\n") else t + "\n" for t in texts)
    if not text:
        return {}
    if text not in _cache:
        r = subprocess.run([spawn.need("unshare"), "--net", "--", "sh", "-c",
                            "iptables-restore -w --noflush && iptables-save"], input=text, capture_output=True, text=True,
                           cwd=spawn.CWD, env=spawn.env(), timeout=60)
        if r.returncode:
            raise NslabError(f"iptables-restore refuses rules nslab wrote: {_explain(r.stderr, text)}")
        _cache[text] = parse_save(r.stdout)
    return _cache[text]


def rules_of(text: str) -> list[tuple[str, str, str]]:
    """(table, chain, spec) of each `-A CHAIN spec` line of iptables-restore text, in order."""
    out, table = [], None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith("-A ") and table:
            parts = line.split(" ", 2)
            out.append((table, parts[1], parts[2] if len(parts) > 2 else ""))
    return out


def missing(ns: str, rules: list[tuple[str, str, str]], timeout: float = 60) -> list[tuple[str, str, str]]:
    """Those of `rules` (table, chain, spec) namespace `ns` does not hold, asked of iptables
    itself (`-C`, which compares rules as iptables reads them, whatever their spelling):
    one iptables-restore --noflush of -C lines, which changes nothing; it stops at the first
    rule missing, so that one is noted and the rest asked again (one process when all hold)."""
    pending, gone = list(rules), []
    while pending:
        lines, where, table = [], {}, None
        for rule in pending:
            if rule[0] != table:
                if table is not None:
                    lines.append("COMMIT")
                table = rule[0]
                lines.append(f"*{table}")
            lines.append(f"-C {rule[1]} {rule[2]}")
            where[len(lines)] = rule
        lines.append("COMMIT")
        proc = run(ns, RESTORE, input="\n".join(lines) + "\n", timeout=timeout)
        if proc.returncode == 0:
            break
        m = re.search(r"line (\d+) failed", proc.stderr)
        rule = where.get(int(m.group(1))) if m else None
        if rule is None:                    # not a -C line: the table or chain itself is not there
            m2 = re.search(r"line (\d+)", proc.stderr)
            n = int(m2.group(1)) if m2 else 0
            rule = next((where[k] for k in sorted(where) if k > n), None) if n else None
            if rule is None:
                raise NslabError(f"iptables-restore in {ns} could not check rules: "
                                 f"{' '.join(proc.stderr.split())}")
        gone.append(rule)
        pending.remove(rule)
    return gone
