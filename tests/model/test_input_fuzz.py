"""Hostile topology input (issue 9): whatever the file says, `nslab validate` either accepts
it or refuses it with exit 2 and one line `name.yaml:LINE path: message` (or
`name.yaml: message`) -- never a traceback, never a hang, and nothing on the host touched.

Property-based (hypothesis): every shipped topology mutated (values and keys deleted,
replaced, retyped; garbage, huge numbers, unicode, anchors and aliases inserted; the text
itself cut and spliced) plus random YAML documents, more than 500 cases per run, each run
in-process through the code path `nslab validate` takes (lab.load, then compile).  No root
needed: an audit hook fails the case on any write, socket, subprocess, namespace switch or
foreign function call while it validates.

Failing examples found here are kept as tests/errors/*.yaml with their exact messages.
"""
from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nslab import backends, lab as labmod, model  # noqa: F401
from nslab.compile import cluster as flannel  # noqa: F401
from nslab.model import cluster, containers, limits, tests as checks, tunnels as tunnel  # noqa: F401
from nslab.compile import compile_topology
from nslab.errors import NslabError

# (imported up front: a first import inside a case would write __pycache__, a false violation)
ROOT = Path(__file__).resolve().parent.parent.parent
SHIPPED = sorted((ROOT / "topologies").glob("*.yaml"))
SEEDS = {p.name: yaml.safe_load(p.read_text(encoding="utf-8")) for p in SHIPPED}
CASE_SECONDS = 10          # a hard bound per case (SIGALRM): a hang fails, it does not stall the run
DEADLINE_MS = 3000         # hypothesis' own per-case deadline: a generous 2 s + load margin
SCALE = float(os.environ.get("NSLAB_FUZZ_SCALE", "1"))   # more cases for a long exploratory run

KEYS = sorted(model.Parser.TOP_KEYS | model.Parser.NODE_KEYS | model.Parser.SEGMENT_KEYS
              | model.Parser.MEMBER_KEYS | model.Parser.END_KEYS | model.Parser.LINK_KEYS
              | model.Parser.ROUTE_KEYS | cluster.CLUSTER_KEYS | cluster.NODE_KEYS | cluster.POD_KEYS
              | set().union(*(b.keys for b in backends.all()))
              | {"http", "ping", "tcp", "udp", "from", "to", "expect", "result", "encap", "ttl", "mode",
                 "local", "remote", "peer", "pmtudisc", "type", "vni", "port", "links", "<<"})
WORDS = ["spine1", "leaf01", "h1", "r1", "lan", "eth0", "eth1", "br0", "cni0", "flannel.1", "lo", "tunl0",
         "default", "http", "vxlan", "udp", "ipip", "host-gw", "10.0.0.0/24", "10.0.0.1", "10.0.0.1/24",
         "0.0.0.0/0", "0.0.0.0/1", "255.255.255.255/32", "10.244.0.0/16", "02:00:00:00:00:01",
         "ff:ff:ff:ff:ff:ff", "NET_ADMIN", "ALL", "nslab/busybox", "net.ipv4.ip_forward",
         "net.//.kernel.core_pattern", "2024-13-45", "2024-01-02", "1:30", "0x1F", "0o17", "1e999", ".nan",
         "~", "null", "yes", "no", "on", "<<", "éééééééééé", "a\nb", "\u2028", "\x85", "-x", "a b", "a;b",
         "../../etc/passwd", "%d", "x" * 300]
# text splices: YAML syntax that exercises the loader, not the model
SPLICES = ["&a ", "*a", "<<: *a\n", "!foo ", "!!binary ", "!!python/object ", "\0", "[", "]", "{", "}",
           ": ", "- ", "\t", "\n", "\n  ", "---\n", "...\n", "? ", "|\n", "'", '"', "#", "%YAML 1.1\n",
           "\ufeff", "é", "\U0001f600", "9" * 50, "[" * 100, "&b [*a, *a, *a, *a]"]

scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(2 ** 70), max_value=2 ** 70),
    st.sampled_from([0, -1, 1, 67, 68, 65535, 65536, 16777215, 16777216, 9999999, 10 ** 30, 2 ** 64]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(WORDS),
    st.text(max_size=20),
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.one_of(st.sampled_from(KEYS + WORDS), scalars), inner, max_size=4)), max_leaves=12)
keys = st.one_of(st.sampled_from(KEYS + WORDS), st.text(max_size=12), st.none(), st.booleans(), st.integers())


# ---- the property ---------------------------------------------------------------------------

MESSAGE = re.compile(r"(?P<file>[^\s:]+\.yaml)(:(?P<line>[1-9][0-9]*))?( (?P<path>.+?))?: (?P<msg>.+)")
_active = False
_violations: list[str] = []
_WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _audit(event: str, args) -> None:
    """While a case validates: any write, socket, process, namespace or ctypes call is a
    violation (validate must be pure: no root, nothing on the host)."""
    if not _active:
        return
    if event == "open":
        path, mode, flags = (tuple(args) + (None, None, None))[:3]
        writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or \
            (isinstance(flags, int) and flags & _WRITE)
        if writes:
            _violations.append(f"open {path!r} for writing")
    elif event in ("os.mkdir", "os.remove", "os.rmdir", "os.rename", "os.symlink", "os.link", "os.chmod",
                   "os.chown", "os.truncate", "shutil.rmtree", "shutil.move", "subprocess.Popen", "os.system",
                   "os.exec", "os.fork", "os.posix_spawn", "os.kill", "socket.__new__", "socket.bind",
                   "socket.connect", "ctypes.call_function", "ctypes.dlopen", "os.setns"):
        _violations.append(f"{event} {args!r}"[:200])


sys.addaudithook(_audit)


class CaseTimeout(Exception):
    pass


def _alarm(signum, frame):
    raise CaseTimeout(f"validation took over {CASE_SECONDS} s")


def validate(path: Path, backend: str | None = None) -> str | None:
    """What `nslab validate [--backend B] path` does: None if accepted, else the message of
    the NslabError the CLI prints (exit 2).  Anything else escapes and fails the case."""
    global _active
    _violations.clear()
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, CASE_SECONDS)
    _active = True
    try:
        topo = labmod.load(str(path), overrides={"backend": backend} if backend else None)
        compile_topology(topo)
        return None
    except NslabError as e:
        assert e.exit_code == 2, f"exit {e.exit_code} for bad input: {e}"
        return str(e)
    finally:
        _active = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        assert not _violations, f"validate touched the host: {_violations[:3]}"


def check(tmp: Path, text: str, backend: str | None = None) -> None:
    path = tmp / "fuzz.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    message = validate(path, backend)
    if message is None:
        return
    assert len(message.splitlines()) == 1 and "\n" not in message, f"not one line: {message!r}"
    if backend and message.startswith(f"--backend {backend}: "):   # the option's value is wrong, not the file
        return
    m = MESSAGE.fullmatch(message)
    assert m and m["file"] == path.name, f"not `{path.name}:LINE path: message`: {message!r}"
    if m["line"]:
        assert int(m["line"]) <= text.count("\n") + 1, f"line beyond the end of the file: {message!r}"
    assert "Traceback" not in message


def _paths(data, path=()):
    yield path
    if isinstance(data, dict):
        for k, v in data.items():
            yield from _paths(v, path + (k,))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from _paths(v, path + (i,))


def _get(data, path):
    for p in path:
        data = data[p]
    return data


@st.composite
def mutated(draw):
    """A shipped topology with 1-4 structural mutations, dumped to YAML (shared subtrees
    become anchors and aliases), sometimes with its text spliced afterwards."""
    name = draw(st.sampled_from(sorted(SEEDS)))
    data = yaml.safe_load(yaml.safe_dump(SEEDS[name]))      # a fresh copy
    for _ in range(draw(st.integers(1, 4))):
        paths = list(_paths(data))
        path = draw(st.sampled_from(paths))
        op = draw(st.sampled_from(["replace", "delete", "rename", "insert", "wrap", "unwrap", "share", "retype"]))
        if not path:
            if op in ("replace", "retype"):
                data = draw(values)
            continue
        parent, last = _get(data, path[:-1]), path[-1]
        if op == "replace":
            parent[last] = draw(values)
        elif op == "delete":
            del parent[last]
        elif op == "rename" and isinstance(parent, dict):
            parent[draw(keys)] = parent.pop(last)
        elif op == "insert":
            target = parent[last]
            if isinstance(target, dict):
                target[draw(keys)] = draw(values)
            elif isinstance(target, list):
                target.insert(draw(st.integers(0, len(target))), draw(values))
        elif op == "wrap":
            parent[last] = [parent[last]] if draw(st.booleans()) else {draw(keys): parent[last]}
        elif op == "unwrap" and isinstance(parent[last], (list, dict)) and parent[last]:
            inner = parent[last]
            parent[last] = inner[0] if isinstance(inner, list) else next(iter(inner.values()))
        elif op == "share":      # the same object twice: yaml.dump writes an anchor and an alias
            other = draw(st.sampled_from(paths))
            if other and not other[:len(path)] == path and not path[:len(other)] == other:
                _get(data, other[:-1])[other[-1]] = parent[last]
        elif op == "retype":
            v = parent[last]
            parent[last] = str(v) if not isinstance(v, str) else (int(v) if v.isdigit() and len(v) < 30 else [v])
    try:
        text = yaml.safe_dump(data, allow_unicode=draw(st.booleans()), sort_keys=False,
                              default_flow_style=draw(st.sampled_from([False, None, True])))
    except (yaml.YAMLError, RecursionError):        # a structure yaml cannot write: keep the seed
        text = (ROOT / "topologies" / name).read_text(encoding="utf-8")
    if draw(st.integers(0, 3)) == 0:
        text = draw(spliced(text))
    return text


@st.composite
def spliced(draw, text):
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["insert", "cut", "dup"]))
        if op == "insert":
            text = text[:at] + draw(st.one_of(st.sampled_from(SPLICES), st.text(max_size=8))) + text[at:]
        elif op == "cut":
            text = text[:at] + text[at + draw(st.integers(1, 40)):]
        else:
            end = min(len(text), at + draw(st.integers(1, 80)))
            text = text[:end] + text[at:end] + text[end:]
    return text


def shipped_text():
    return st.sampled_from(SHIPPED).map(lambda p: p.read_text(encoding="utf-8"))


COMMON = dict(deadline=DEADLINE_MS, database=None, print_blob=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.function_scoped_fixture])


# ---- the tests --------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_topologies_are_accepted(seed: Path):
    """The property below means something only if the seeds themselves validate."""
    assert validate(seed) is None


@settings(max_examples=int(300 * SCALE), **COMMON)
@given(text=mutated(), backend=st.one_of(st.none(), st.sampled_from(["udp", "udp:8282", "vxlan:0", "host-gw",
                                                                     "ipip", "foo", "udp:99999", "vxlan:x"])))
def test_mutated_shipped_topologies(tmp_path_factory, text, backend):
    check(tmp_path_factory.getbasetemp(), text, backend)


@settings(max_examples=int(120 * SCALE), **COMMON)
@given(text=shipped_text().flatmap(spliced))
def test_spliced_shipped_text(tmp_path_factory, text):
    check(tmp_path_factory.getbasetemp(), text)


@settings(max_examples=int(100 * SCALE), **COMMON)
@given(doc=st.dictionaries(st.one_of(st.sampled_from(sorted(model.Parser.TOP_KEYS)), keys), values, max_size=6))
def test_random_documents(tmp_path_factory, doc):
    try:
        text = yaml.safe_dump(doc, allow_unicode=True)
    except yaml.YAMLError:
        return
    check(tmp_path_factory.getbasetemp(), text)


@settings(max_examples=int(40 * SCALE), **COMMON)
@given(text=st.text(alphabet=st.sampled_from(list("abh01: -[]{}&*!<>|'\"#\n\t,.?%~@`") + ["é", "\0"]),
                    max_size=200))
def test_random_text(tmp_path_factory, text):
    check(tmp_path_factory.getbasetemp(), text)


def test_the_guard_sees_a_write(tmp_path):
    """The audit hook is what proves 'nothing touched': it must notice a write."""
    global _active
    _active = True
    try:
        with open(tmp_path / "x", "w"):
            pass
    finally:
        _active = False
    assert _violations and "for writing" in _violations[0]
    _violations.clear()
