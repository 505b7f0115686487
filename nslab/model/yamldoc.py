"""YAML loading that remembers where every value came from, so each validation error can
name file, line and YAML path (`links[2].ns1.ip`).

A topology file is untrusted input, so loading is bounded: the document is composed from
parser events without recursion, nesting is limited to MAX_DEPTH levels and the document
may expand (aliases counted at their full size) to at most MAX_NODES values; an alias bomb
or a file of ten thousand `[` is refused as soon as the count passes the limit.

What nslab reads is YAML 1.1 (PyYAML's safe schema) with these decisions:
- anchors, aliases and merge keys (`<<: *defaults`) work; a key written explicitly wins
  over a merged one, and an earlier source over a later one (`<<: [*a, *b]`: a's); `<<`
  is a key like any other, so a mapping may hold it once (a second `<<:` is a duplicate
  key: it could add keys nobody sees among the ones written);
- keys are text: a plain key YAML would read as null, a boolean, a number (`~:`, `no:`,
  `1:`) is refused, because it is almost always a name that lost its meaning; quote it;
- dates (`2024-01-02`) and base-60 numbers (`1:30`, which swallows MAC-like values) are
  kept as the text written; nothing in a topology is a date;
- integers are limited to MAX_INT_DIGITS digits; tags other than YAML's standard scalar
  and collection tags (`!foo`, `!!python/...`, `!!binary`, `!!set`) are refused.
"""
from __future__ import annotations

import os
import re
from typing import Any

import yaml
from yaml.events import (AliasEvent, DocumentStartEvent, MappingEndEvent, MappingStartEvent, ScalarEvent,
                         SequenceEndEvent, SequenceStartEvent, StreamEndEvent)

from ..errors import TopologyError

# A 10,000-node topology written out in full (every host a mapping with its address) is
# about 1 MB and 120,000 YAML values; the cap leaves four times that.  Building 500,000
# values takes about a second and at most MAX_LOAD_MB (the whole validating process):
# memory stays bounded whatever the file does.  What that rests on: the data costs about
# its values, and nothing else is kept per expanded value -- a line is found on demand in
# the composed nodes, which aliases share (Doc.line), so 60 levels of aliases cost no more
# than a flat list (a path per value kept 315 MB for a 2.3 KB file, issue 18).
MAX_NODES = 500_000
MAX_LOAD_MB = 150
# Topology files nest about 6 levels (cluster.pods.NAME.env.KEY); 64 is generous and far
# from Python's recursion limit (the build below recurses once per level).
MAX_DEPTH = 64
MAX_FILE_BYTES = 16 * 1024 * 1024   # ~16 times the 10,000-node file
MAX_INT_DIGITS = 30                 # 64-bit values fit in 20 digits (Python refuses > 4,300)

_TAG = "tag:yaml.org,2002:"
STR, INT, FLOAT, BOOL, NULL = (_TAG + t for t in ("str", "int", "float", "bool", "null"))
TIMESTAMP, MERGE, SEQ, MAP = (_TAG + t for t in ("timestamp", "merge", "seq", "map"))
_SCALAR_TAGS = {STR, INT, FLOAT, BOOL, NULL, TIMESTAMP, MERGE}
_NOT_TEXT = {NULL: "null", BOOL: "a boolean", INT: "a number", FLOAT: "a number"}


class _Refused(ValueError):
    """A value nslab does not read; the message stands alone (no value prefix)."""

try:    # libyaml's parser: about 30x faster on large files; the same events
    from yaml import CSafeLoader as _FastLoader
except ImportError:     # pragma: no cover - PyYAML without libyaml
    _FastLoader = yaml.SafeLoader


def format_path(path: tuple) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


class Doc:
    """Plain Python data (dicts, lists, scalars) plus the composed nodes it was built from
    (for the line of any path), and the text it was read from (`up` records that text:
    observers re-read it, never the file)."""

    def __init__(self, file: str, data: Any, root: "_Node | None", text: str | None = None):
        self.file, self.data, self.root, self.text = file, data, root, text
        self._keys: dict[int, dict] = {}    # id(mapping node) -> {key: (value node, key's line)}

    @property
    def display_name(self) -> str:
        return os.path.basename(self.file)

    def line(self, path: tuple) -> int | None:
        """The line of the deepest value on `path` the file has: a mapping entry's key line,
        a list item's own line, the root's first line (None for an empty file).  Found by
        walking the composed nodes (an alias's value is the anchored node: its lines)."""
        node = self.root
        if node is None:
            return None
        line = node.line
        for part in path:
            if node.kind == "q" and isinstance(part, int) and 0 <= part < len(node.value):
                node = node.value[part]
                line = node.line
            elif node.kind == "m" and isinstance(part, str) and part in self._entries(node):
                node, line = self._entries(node)[part]
            else:
                break
        return line

    def _entries(self, node: "_Node") -> dict:
        """A mapping node's keys as load() resolved them: merged ones first (an earlier
        source wins), then the written ones over them.  Built once per node, on demand."""
        entries = self._keys.get(id(node))
        if entries is None:
            entries = {}
            pairs = list(zip(node.value[::2], node.value[1::2]))
            for k, v in pairs:
                if k.kind == "s" and k.tag == MERGE and v.kind in "mq":
                    for src in (v.value if v.kind == "q" else [v]):
                        for sk, sv in zip(src.value[::2], src.value[1::2]):
                            if sk.kind == "s":
                                entries.setdefault(sk.value, (sv, sk.line))
            for k, v in pairs:
                if k.kind == "s" and k.tag != MERGE:
                    entries[k.value] = (v, k.line)
            self._keys[id(node)] = entries
        return entries

    def error(self, path: tuple, message: str) -> TopologyError:
        return TopologyError(self.display_name, self.line(path), format_path(path), message)


class _Node:
    """A composed YAML node (aliases share the anchored one).  kind: 's', 'q' (sequence), 'm'."""
    __slots__ = ("kind", "tag", "value", "line", "size", "height", "plain")

    def __init__(self, kind, tag, value, line, plain=False):
        self.kind, self.tag, self.value, self.line, self.plain = kind, tag, value, line, plain
        self.size, self.height = 1, 1


def _syntax_error(name: str, text: str, e: yaml.YAMLError) -> TopologyError:
    mark = getattr(e, "problem_mark", None)
    line = mark.line + 1 if mark is not None else None
    if isinstance(e, yaml.reader.ReaderError):
        # str(e) is two lines (the character, then "in <unicode string>, position N")
        line = text.count("\n", 0, e.position) + 1 if isinstance(e.position, int) else None
        problem = f"unacceptable character #x{e.character:04x}: {e.reason}" if isinstance(e.character, int) \
            else str(e.reason)
    else:
        problem = getattr(e, "problem", None) or str(e)
    return TopologyError(name, line, "", f"YAML syntax error: {' '.join(str(problem).split())}")


def _syntax_error_of(name: str, text: str, fast_error: yaml.YAMLError) -> TopologyError:
    """PyYAML's own wording of a syntax error (it says what it found: "expected ',' or ']',
    but got ':'"), else libyaml's.  Only on the error path: the pure-Python parser is slow."""
    if _FastLoader is not yaml.SafeLoader:
        try:
            for _ in yaml.parse(text, Loader=yaml.SafeLoader):
                pass
        except yaml.YAMLError as e:
            return _syntax_error(name, text, e)
    return _syntax_error(name, text, fast_error)


def _compose(name: str, text: str) -> _Node | None:
    """The document's node tree, built from parser events with an explicit stack (PyYAML's
    composer recurses once per level).  Counts every value as it is added, aliases at
    their expanded size, and stops at the limits."""
    resolve = yaml.resolver.Resolver().resolve
    anchors: dict[str, _Node] = {}
    stack: list[list] = []      # open collections: [node, anchor, size, height]
    root: _Node | None = None
    total = 0
    documents = 0

    def refuse(line, message):
        raise TopologyError(name, line, "", message)

    def too_many(line):
        refuse(line, f"the document expands to more than {MAX_NODES:,} values (aliases counted at their full "
                     f"size); nslab refuses it rather than run out of memory")

    def too_deep(line):
        refuse(line, f"the document nests deeper than {MAX_DEPTH} levels")

    def place(node):
        """A finished node into the collection being built (its size and height move up);
        the node itself if it is the document's root."""
        if not stack:
            return node
        top = stack[-1]
        top[0].value.append(node)
        top[2] += node.size
        if node.height >= top[3]:
            top[3] = node.height + 1
        return None

    loader = _FastLoader(text)
    try:
        get = loader.get_event
        while True:
            try:
                ev = get()
            except yaml.YAMLError as e:
                raise _syntax_error_of(name, text, e) from None
            cls = ev.__class__
            if cls is ScalarEvent or cls is AliasEvent:
                if cls is ScalarEvent:
                    tag, plain = ev.tag, False
                    if tag is None or tag == "!":
                        plain = tag is None and ev.implicit[0]
                        tag = resolve(yaml.ScalarNode, ev.value, ev.implicit)
                    node = _Node("s", tag, ev.value, ev.start_mark.line + 1, plain)
                    if ev.anchor is not None:
                        anchors[ev.anchor] = node
                else:
                    node = anchors.get(ev.anchor)
                    if node is None:
                        if any(f[1] == ev.anchor for f in stack):
                            refuse(ev.start_mark.line + 1, f"alias *{ev.anchor} refers to the collection it is in "
                                                           f"(a loop)")
                        refuse(ev.start_mark.line + 1, f"alias *{ev.anchor} has no anchor &{ev.anchor} before it")
                total += node.size
                if total > MAX_NODES:
                    too_many(ev.start_mark.line + 1)
                if len(stack) + node.height > MAX_DEPTH:
                    too_deep(ev.start_mark.line + 1)
                root = place(node) or root
            elif cls is MappingStartEvent or cls is SequenceStartEvent:
                if len(stack) >= MAX_DEPTH:
                    too_deep(ev.start_mark.line + 1)
                kind = "m" if cls is MappingStartEvent else "q"
                tag = ev.tag if ev.tag not in (None, "!") else (MAP if kind == "m" else SEQ)
                if ev.anchor is not None:
                    anchors.pop(ev.anchor, None)    # redefined: the old one is gone inside the new one
                stack.append([_Node(kind, tag, [], ev.start_mark.line + 1), ev.anchor, 1, 1])
                total += 1
                if total > MAX_NODES:
                    too_many(ev.start_mark.line + 1)
            elif cls is MappingEndEvent or cls is SequenceEndEvent:
                node, anchor, node.size, node.height = stack.pop()
                if anchor is not None:
                    anchors[anchor] = node
                root = place(node) or root      # its children are counted already: sizes move up
            elif cls is DocumentStartEvent:
                documents += 1
                if documents > 1:
                    refuse(ev.start_mark.line + 1, "a topology file holds one YAML document (found a second '---')")
            elif cls is StreamEndEvent:
                return root
    finally:
        loader.dispose()


def _scalar(node: _Node, constructor) -> Any:
    tag, value = node.tag, node.value
    if tag == STR:
        return value
    if tag not in _SCALAR_TAGS:
        raise _Refused(f"tag {tag.replace(_TAG, '!!')} is not supported (nslab reads plain YAML values)")
    if tag == TIMESTAMP or (node.plain and tag in (INT, FLOAT) and ":" in value):
        return value        # dates and base-60 numbers: the text as written
    if tag == INT and len(value.lstrip("+-").replace("_", "")) > MAX_INT_DIGITS:
        raise ValueError(f"a number of {len(value)} digits is too large (at most {MAX_INT_DIGITS} digits)")
    if tag == MERGE:
        return value
    # the safe constructor's function for the tag, without construct_object's per-node cache
    return constructor.yaml_constructors[tag](constructor, yaml.ScalarNode(tag, value))


def load(file: str, text: str | None = None) -> Doc:
    name = os.path.basename(file)
    if text is None:
        try:
            with open(file, encoding="utf-8") as f:
                text = f.read(MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            raise TopologyError(name, None, "", f"no such file {file}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise TopologyError(name, None, "", f"cannot read {file}: {' '.join(str(e).split())}") from None
    if len(text) > MAX_FILE_BYTES:
        raise TopologyError(name, None, "", f"the file is larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB; "
                                            f"nslab reads topology files up to that size")
    root = _compose(name, text)
    constructor = yaml.SafeLoader("")

    # Where a value is: (where its parent is, its key or index), () for the root -- a link
    # to the parent's, so a value 60 levels deep costs one pair, not a 60-part tuple; the
    # tuple is made only for an error.
    def fail(line, at, message):
        path = []
        while at:
            at, part = at
            path.append(part)
        raise TopologyError(name, line, format_path(tuple(reversed(path))), message)

    def key_of(k: _Node, path) -> str:
        if k.kind != "s":
            fail(k.line, path, "a key must be a plain value, not a list or mapping")
        if k.tag in _NOT_TEXT and k.plain:
            fail(k.line, path, f"key {k.value!r} is {_NOT_TEXT[k.tag]} in YAML, not a name; write it in quotes "
                               f"(\"{k.value}\") if it is one")
        try:
            key = _scalar(k, constructor)
        except (ValueError, OverflowError, TypeError, yaml.YAMLError) as e:
            fail(k.line, path, _why(e) if isinstance(e, _Refused) else f"key {_short(k.value)}: {_why(e)}")
        if not isinstance(key, str):
            fail(k.line, path, f"key {k.value!r} is not text; write it in quotes if it is a name")
        return key

    def build(n: _Node, path):
        if n.kind == "m":
            if n.tag != MAP:
                fail(n.line, path, f"tag {n.tag.replace(_TAG, '!!')} is not supported on a mapping")
            out, merged = {}, []
            for k, v in zip(n.value[::2], n.value[1::2]):
                if k.kind == "s" and k.tag == MERGE:
                    if merged:      # `<<` is a key too: written twice, the second would add keys unseen
                        fail(k.line, (path, "<<"), "duplicate key '<<' (merge several mappings with one "
                                                     "key: <<: [*a, *b])")
                    merged.append((k, v))
                    continue
                key = key_of(k, path)
                if key in out:
                    fail(k.line, (path, key), f"duplicate key {key!r}")
                out[key] = build(v, (path, key))
            for k, v in merged:        # YAML merge keys: explicit keys win, earlier sources win
                sources = v.value if v.kind == "q" else [v]
                for src in sources:
                    if src.kind != "m":
                        fail(k.line, (path, "<<"), "a merge key (<<) takes a mapping or a list of mappings "
                                                     "(<<: *defaults)")
                    for sk, sv in zip(src.value[::2], src.value[1::2]):
                        if sk.kind == "s" and sk.tag == MERGE:
                            fail(sk.line, (path, "<<"), "a merged mapping may not merge again (nested <<)")
                        key = key_of(sk, path)
                        if key not in out:
                            out[key] = build(sv, (path, key))
            return out
        if n.kind == "q":
            if n.tag != SEQ:
                fail(n.line, path, f"tag {n.tag.replace(_TAG, '!!')} is not supported on a list")
            return [build(v, (path, i)) for i, v in enumerate(n.value)]
        try:
            value = _scalar(n, constructor)
        except (ValueError, OverflowError, TypeError, yaml.YAMLError) as e:
            fail(n.line, path, _why(e) if isinstance(e, _Refused) else f"{_short(n.value)}: {_why(e)}")
        if isinstance(value, str) and not _encodable(value):
            fail(n.line, path, f"{_short(value)} is not valid Unicode text (a lone surrogate)")
        if n.tag == MERGE:
            fail(n.line, path, "a merge key (<<) only works as a key: <<: *defaults")
        return value

    data = build(root, ()) if root is not None else {}
    return Doc(file, data, root, text)


def _encodable(s: str) -> bool:
    if s.isascii():
        return True
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _short(value: str) -> str:
    value = ascii(value) if not _encodable(value) else repr(value)
    return value if len(value) <= 60 else value[:50] + "..." + value[-6:]


def _why(e: Exception) -> str:
    if isinstance(e, yaml.YAMLError):
        return " ".join(str(getattr(e, "problem", None) or e).split())
    return " ".join(str(e).split())
