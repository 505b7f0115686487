"""Hostile arguments to `nslab generate` (issue 18): whatever the shape, --name, -o,
--backend, --serve and the rest of the command line say, generate either refuses -- exit 2,
one line, nothing written -- or writes a file whose comments are one line each (the header
echoes the command line and the path), that loads and validates, and whose data is exactly
what generate means for that shape and those options: nothing injected.  A value with a
control character or a line separator anywhere on the command line is always refused.

Property-based (hypothesis), in-process through generate.write (the command's body, what
`nslab generate` runs after parsing its options), each case in a directory of its own.
No root: nothing touches the kernel.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from nslab import generate, lab as labmod  # noqa: F401
from nslab.compile import compile_topology
from nslab.errors import NslabError, UsageError
from nslab.model import yamldoc

SCALE = float(os.environ.get("NSLAB_FUZZ_SCALE", "1"))
VALIDATE_UP_TO = 150        # namespaces: larger fabrics are checked as text (validating them is slow)

# what ends a line or a comment, or breaks YAML, the shell or a terminal
NASTY = ["\n", "\r", "\r\n", "\x85", "\u2028", "\u2029", "\x0b", "\x0c", "\x1b[2J", "\0", "\t", "\ufeff", "\udcff",
         "\u200b", "\xa0", "#", ": ", "<<: {routers: {r: {}}}", "'", '"', " ", "-", "--name", "{", "}", "[",
         "&a", "*a", "!!python/object", "é", "²", "٣", "\U0001f600"]
bits = st.one_of(st.sampled_from(NASTY), st.text(max_size=6))
nasty_text = st.lists(bits, max_size=5).map("".join)
printable = st.text(st.characters(blacklist_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")), max_size=20)


def mostly(clean, nasty=nasty_text, times: int = 4):
    """A clean value `times` in `times + 1` (most cases should get as far as the file), else a
    nasty one.  (st.one_of with a branch repeated does not weigh it.)"""
    return st.sampled_from([True] * times + [False]).flatmap(lambda ok: clean if ok else nasty)


numbers = mostly(st.integers(1, 4).map(str), st.one_of(st.sampled_from(
    ["0", "01", "1024", "²", "٣", "+1", "-1", "1.0", " 2", "9" * 40]), nasty_text), times=12)


def _shape(kind: str):
    """KIND:N,... with as many numbers as the kind takes (now and then one more or less)."""
    arg_names, need = generate.SHAPES[kind][:2]
    return st.builds(lambda sep, args: kind + sep + ",".join(args), st.sampled_from([":", ",", " : "]),
                     mostly(st.lists(numbers, min_size=need, max_size=len(arg_names)),
                            st.lists(numbers, max_size=len(arg_names) + 1), times=8))


shapes = mostly(st.sampled_from(sorted(generate.SHAPES)).flatmap(_shape), times=8)
names = mostly(st.one_of(st.none(), st.from_regex(r"[a-z0-9][a-z0-9_-]{0,34}", fullmatch=True)))
outputs = mostly(st.one_of(st.none(), st.just("gen.yaml"), printable))
# (only cluster shapes take these: mostly absent)
backends = mostly(st.none(), st.one_of(st.sampled_from(["vxlan", "udp", "ipip", "host-gw", "flannel"]), nasty_text),
                  times=6)
serves = mostly(st.none(), st.one_of(st.just("http"), nasty_text), times=6)
extras = mostly(st.just([]), st.lists(nasty_text, min_size=1, max_size=3))


def _breaks(values) -> bool:
    return any(generate.breaks_text(c) for v in values if v is not None for c in v)


@pytest.fixture(autouse=True)
def any_neighbour_table(monkeypatch):
    """Validation here is about the file, on any machine (limits.py is tested on its own)."""
    monkeypatch.setattr("nslab.model.limits.gc_thresh3", lambda: None)


@settings(max_examples=int(400 * SCALE), deadline=None, database=None, print_blob=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                 HealthCheck.data_too_large])
@given(shape=shapes, name=names, output=outputs, backend=backends, serve=serves,
       extra=extras)
def test_generate_arguments(tmp_path_factory, shape, name, output, backend, serve, extra):
    work = Path(tempfile.mkdtemp(dir=tmp_path_factory.getbasetemp()))
    try:
        # -o stays inside this case's directory ('/' would name other directories)
        out = None if output is None else str(work / output.replace("/", "_"))
        argv = ["generate", shape, *(["-o", out] if out is not None else []), *(["--name", name] if name else []),
                *(["--backend", backend] if backend else []), *(["--serve", serve] if serve else []), *extra]
        check(work, argv, shape, out, name or None, backend or None, serve or None)
    finally:
        shutil.rmtree(work)


def check(work: Path, argv, shape, out, name, backend, serve):
    try:
        text, sh = generate.write(shape, out, name=name, backend=backend, serve=serve, argv=argv)
    except NslabError as e:
        message = str(e)
        event(f"refused (exit {e.exit_code})")
        assert len(message.splitlines()) == 1 and "\n" not in message, f"not one line: {message!r}"
        if isinstance(e, UsageError) or e.exit_code == 2:
            assert e.exit_code == 2
            assert not list(work.iterdir()), "refused, but something was written"
        else:                                   # the path itself cannot be written (a directory, too long)
            assert e.exit_code == 1 and message.startswith("cannot write "), message
        return
    event(f"written ({'validated' if generate.node_count(sh) <= VALIDATE_UP_TO else 'as text'})")
    assert not _breaks(argv), f"accepted a line break or control character in {argv!r}"
    if out is not None:
        assert Path(out).read_text(encoding="utf-8") == text
    meant = generate.render(sh, name=name, backend=backend, serve=serve)     # no command line, no path
    got_lines, meant_lines = text.splitlines(), meant.splitlines()
    assert len(got_lines) == len(meant_lines), "a comment spilled onto another line"
    for got, want in zip(got_lines, meant_lines):
        if want.startswith("#"):
            assert got.startswith("#"), got
        else:
            assert got == want
    assert yamldoc.load("gen.yaml", text).data == yamldoc.load("meant.yaml", meant).data
    if generate.node_count(sh) <= VALIDATE_UP_TO:
        path = work / "check.yaml"
        path.write_text(text, encoding="utf-8")
        topo = labmod.load(str(path))
        compile_topology(topo)
        assert topo.name == (name or generate.default_name(sh))
