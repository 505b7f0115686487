"""YAML loading that remembers where every value came from, so each validation error can
name file, line and YAML path (`links[2].ns1.ip`)."""
from __future__ import annotations

import os
from typing import Any

import yaml

from .errors import TopologyError


def format_path(path: tuple) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


class Doc:
    """Plain Python data (dicts, lists, scalars) plus the line of every path."""

    def __init__(self, file: str, data: Any, lines: dict[tuple, int]):
        self.file, self.data, self.lines = file, data, lines

    @property
    def display_name(self) -> str:
        return os.path.basename(self.file)

    def line(self, path: tuple) -> int | None:
        path = tuple(path)
        while path not in self.lines and path:
            path = path[:-1]
        return self.lines.get(path)

    def error(self, path: tuple, message: str) -> TopologyError:
        return TopologyError(self.display_name, self.line(path), format_path(path), message)


def load(file: str, text: str | None = None) -> Doc:
    name = os.path.basename(file)
    if text is None:
        try:
            with open(file, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            raise TopologyError(name, None, "", f"no such file {file}") from None
        except (IsADirectoryError, UnicodeDecodeError) as e:
            raise TopologyError(name, None, "", f"cannot read {file}: {e}") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e)
        raise TopologyError(name, mark.line + 1 if mark else None, "", f"YAML syntax error: {problem}") from None
    lines: dict[tuple, int] = {}
    constructor = yaml.SafeLoader("")

    def build(n, path):
        lines[path] = n.start_mark.line + 1
        if isinstance(n, yaml.MappingNode):
            out = {}
            for k, v in n.value:
                key = constructor.construct_object(k, deep=True)
                if isinstance(key, (dict, list)):
                    raise TopologyError(name, k.start_mark.line + 1, format_path(path), "a key must be a plain value")
                key = str(key)
                if key in out:
                    raise TopologyError(name, k.start_mark.line + 1, format_path(path + (key,)),
                                        f"duplicate key {key!r}")
                out[key] = build(v, path + (key,))
                lines[path + (key,)] = k.start_mark.line + 1
            return out
        if isinstance(n, yaml.SequenceNode):
            return [build(v, path + (i,)) for i, v in enumerate(n.value)]
        return constructor.construct_object(n, deep=True)

    data = build(node, ()) if node is not None else {}
    return Doc(file, data, lines)
