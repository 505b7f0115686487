"""Typer's declaration surface without importing typer: fast CLI start-up.

cli.py declares its commands exactly as with typer (`app = typer.Typer(...)`, `@app.command()`,
`typer.Option(...)`, `typer.Argument(...)`, `raise typer.Exit(n)`), but `typer` there is this
module. Declarations are only recorded, so importing cli.py costs nothing of typer, click or
rich (~0.2 s together, more than the whole start-up budget of 0.12 s).

Running a command then takes one of two roads, both from the same declarations:
- `fast()`: plain `VERB [ARG...] [--opt value] [--flag]` command lines (what users and scripts
  type for up/down/ls/exec/show...) are parsed here, from the recorded options, and the
  command function is called directly;
- anything else (--help, a bad value, an unknown option, completion, an option with a
  callback) goes to the real typer app, built on demand from the same records, so help text,
  error messages and completion stay typer's.
"""
from __future__ import annotations

import inspect
import os
import sys

_PLAIN_KW = {"help", "metavar", "show_default", "hidden", "rich_help_panel",
             "autocompletion"}   # used only while the shell completes, on typer's road


class Exit(Exception):
    """`raise typer.Exit(code)`: leave with this exit code (caught in run())."""

    def __init__(self, code: int = 0):
        super().__init__(code)
        self.exit_code = code


class _Info:
    """What typer.Option/Argument were given, replayed into the real one when typer is needed."""

    kind = ""

    def __init__(self, default=..., *decls: str, **kwargs):
        self.default, self.decls, self.kwargs = default, decls, kwargs

    def real(self):
        import typer  # lazy: start-up
        return getattr(typer, self.kind)(self.default, *self.decls, **self.kwargs)


class _Option(_Info):
    kind = "Option"


class _Argument(_Info):
    kind = "Argument"


def Option(default=..., *decls: str, **kwargs):
    return _Option(default, *decls, **kwargs)


def Argument(default=..., *decls: str, **kwargs):
    return _Argument(default, *decls, **kwargs)


class Typer:
    """Records commands, sub-apps and the callback; `real()` builds the typer app from them."""

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.commands: dict[str, tuple[dict, object]] = {}
        self.groups: dict[str, tuple[Typer, dict]] = {}
        self.callback_fn = None
        self.callback_kw: dict = {}
        self._real = None

    def command(self, name: str | None = None, **kwargs):
        def deco(fn):
            self.commands[name or fn.__name__.lower().replace("_", "-")] = (kwargs, fn)
            return fn
        return deco

    def callback(self, **kwargs):
        def deco(fn):
            self.callback_fn, self.callback_kw = fn, kwargs
            return fn
        return deco

    def add_typer(self, sub: Typer, name: str, **kwargs):
        self.groups[name] = (sub, kwargs)

    def real(self):
        """The typer app these records describe (imports typer: help, completion, odd input)."""
        if self._real is None:
            import typer  # lazy: start-up
            app = typer.Typer(**self.kwargs)
            if self.callback_fn:
                app.callback(**self.callback_kw)(_typer_ready(self.callback_fn))
            for name, (kw, fn) in self.commands.items():
                app.command(name, **kw)(_typer_ready(fn))
            for name, (sub, kw) in self.groups.items():
                app.add_typer(sub.real(), name=name, **kw)
            self._real = app
        return self._real

    def __call__(self, *args, **kwargs):
        return self.real()(*args, **kwargs)


def _typer_ready(fn):
    """Give fn a signature whose defaults are real typer parameter infos."""
    sig = inspect.signature(fn)
    params = [p.replace(default=p.default.real()) if isinstance(p.default, _Info) else p
              for p in sig.parameters.values()]
    fn.__signature__ = sig.replace(parameters=params)
    return fn


def __getattr__(name: str):
    # Anything else typer offers (typer.echo, typer.Context, typer.BadParameter...): the real one.
    import typer  # lazy: start-up
    return getattr(typer, name)


# --- the fast road ----------------------------------------------------------------------------

class _Unsupported(Exception):
    """This command line needs typer (help, odd syntax, a bad value): take the full road."""


def _kind(annotation) -> str:
    t = (annotation if isinstance(annotation, str) else getattr(annotation, "__name__", repr(annotation))).replace(" ", "")
    if t.startswith("Optional[") and t.endswith("]"):
        t = t[9:-1]
    if t.endswith("|None"):
        t = t[:-5]
    if t.startswith(("List[", "list[")) and t.endswith("]"):
        return "list:" + _kind(t[5:-1])
    if t in ("bool", "int", "float", "str"):
        return t
    raise _Unsupported(t)


def _convert(kind: str, raw: str):
    try:
        return int(raw) if kind == "int" else float(raw) if kind == "float" else raw
    except ValueError:
        raise _Unsupported(raw) from None


def parse(fn, kw: dict, args: list[str]) -> dict:
    """Keyword arguments for fn from a command line, or _Unsupported when typer should parse it."""
    if set(kw) - {"help", "hidden", "rich_help_panel", "context_settings"}:
        raise _Unsupported("command settings")
    values: dict = {}
    options: dict[str, tuple[str, str]] = {}     # "--lab" -> (param name, kind)
    positional: list[tuple[str, str, _Argument]] = []
    for p in inspect.signature(fn).parameters.values():
        info = p.default
        if not isinstance(info, _Info) or set(info.kwargs) - _PLAIN_KW:
            raise _Unsupported(p.name)
        kind = _kind(p.annotation)
        if isinstance(info, _Option):
            if not info.decls or any("/" in d for d in info.decls):
                raise _Unsupported(p.name)
            for d in info.decls:
                options[d] = (p.name, kind)
            values[p.name] = [] if kind.startswith("list:") and info.default is None else info.default
        else:
            positional.append((p.name, kind, info))
    if any(k.startswith("list:") for _, k, _ in positional[:-1]):
        raise _Unsupported("list argument before the last")
    if any(k == "bool" for _, k, _ in positional):
        raise _Unsupported("bool argument")
    words: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            words += args[i + 1:]
            break
        if a.startswith("-") and a != "-":
            name, eq, val = a.partition("=") if a.startswith("--") else (a, "", "")
            if name not in options:
                raise _Unsupported(a)           # --help, -h, unknown, -abc bundles
            pname, kind = options[name]
            if kind == "bool":
                if eq:
                    raise _Unsupported(a)
                values[pname] = True
            else:
                if not eq:
                    i += 1
                    if i >= len(args):
                        raise _Unsupported(a)
                    val = args[i]
                if kind.startswith("list:"):
                    values[pname] = [*(values[pname] or []), _convert(kind[5:], val)]
                else:
                    values[pname] = _convert(kind, val)
        else:
            words.append(a)
        i += 1
    for pname, kind, info in positional:
        if kind.startswith("list:"):
            if not words and info.default is ...:
                raise _Unsupported("missing")
            values[pname] = [_convert(kind[5:], w) for w in words] if words else \
                (None if info.default is ... else info.default)
            words = []
        elif words:
            values[pname] = _convert(kind, words.pop(0))
        elif info.default is ...:
            raise _Unsupported("missing")
        else:
            values[pname] = info.default
    if words:
        raise _Unsupported("extra arguments")
    return values


def resolve(app: Typer, argv: list[str]):
    """(function, keyword arguments) for argv on the fast road, or None: use typer."""
    if app.callback_fn is not None or os.environ.get("_NSLAB_COMPLETE") or not argv:
        return None
    verb, rest = argv[0], argv[1:]
    if verb in app.groups:
        sub = app.groups[verb][0]
        return resolve(sub, rest)
    if verb not in app.commands:
        return None
    kw, fn = app.commands[verb]
    try:
        return fn, parse(fn, kw, rest)
    except _Unsupported:
        return None


def main(app: Typer, argv: list[str] | None = None) -> None:
    """Run the command line: fast road when it can, typer otherwise; exits with the code."""
    argv = sys.argv[1:] if argv is None else argv
    found = resolve(app, argv)
    try:
        if found is None:
            from .console import ascii_digits  # lazy: start-up
            for var in ("COLUMNS", "LINES"):   # typer's rich reads them with isdigit() and int(): '²' raised
                if not ascii_digits(os.environ.get(var, "0")):
                    del os.environ[var]
            app.real()(args=argv)
        else:
            fn, values = found
            fn(**values)
    except Exit as e:
        sys.exit(e.exit_code)
    except BrokenPipeError:                    # `nslab ls | head`: as click does, quietly
        sys.stdout = open(os.devnull, "w")
        sys.exit(1)
    except KeyboardInterrupt:
        sys.stderr.write("Aborted.\n")
        sys.exit(1)
    sys.exit(0)
