"""Terminal output, decided in one place: width, wrapping, colour and progress for a terminal
versus a pipe.

- On a terminal: colour, rich tables at the terminal's width. A table that does not fit drops
  its optional columns, then becomes one record per line; names, addresses and MACs are never
  cut with "…".
- Piped (or NO_COLOR/TERM=dumb): plain text, no box drawing, every line complete at its natural
  width (grep, awk and `ip netns exec` get whole names), whatever COLUMNS says.
- Progress: a bar on stderr's terminal for work that has taken over a second; nothing when
  stderr is piped (the command's own last line is the summary).

rich is imported only when something rich is printed: plain lines (`say`, `warn`) cost nothing
at start-up.
"""
from __future__ import annotations

import os
import sys
import time

PROGRESS_AFTER = float(os.environ.get("NSLAB_PROGRESS_AFTER") or 1.0)   # seconds of work before a bar shows


def is_terminal(stream=None) -> bool:
    stream = stream or sys.stdout
    try:
        return stream.isatty() and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):
        return False


def ascii_digits(text: str) -> bool:
    """A small whole number in ASCII digits (str.isdigit() also takes '²', which int() refuses)."""
    return text.isascii() and text.isdigit() and len(text) <= 6


def width(stream=None) -> int | None:
    """The width output must fit: the terminal's (COLUMNS overrides), None when piped (unbounded)."""
    if not is_terminal(stream):
        return None
    cols = os.environ.get("COLUMNS", "")
    if ascii_digits(cols) and int(cols) > 0:
        return int(cols)
    try:
        return os.get_terminal_size((stream or sys.stdout).fileno()).columns
    except OSError:
        return 80


def plural(n: int, word: str, many: str | None = None) -> str:
    """'1 node', '2 nodes', '1 entry', '3 entries' (give `many` where 's' is not the plural)."""
    return f"{n} {word if n == 1 else many or word + 's'}"


def say(text: str = "") -> None:
    """One plain line on stdout (no markup, no rich)."""
    sys.stdout.write(text + "\n")


def warn(text: str) -> None:
    """One plain line on stderr."""
    sys.stdout.flush()
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def make(stderr: bool = False, terminal: bool | None = None, columns: int | None = None, file=None):
    """A rich Console for this stream: on a terminal its width; piped: no colour, no wrapping
    (soft_wrap) and a width no table reaches, so nothing is ever cut.  No emoji codes: a MAC
    such as 9a:cd:83:... printed 9a💿83:... (rich reads :cd: as an emoji's name). No markup either:
    strings print as they are, so a file name or test name such as `x[/bold]` is text, not a tag
    (styles go in Text objects). `terminal`/`columns` force a layout (tests); `file`: write there
    instead of the stream."""
    from rich.console import Console  # lazy: start-up
    stream = sys.stderr if stderr else sys.stdout
    tty = is_terminal(stream) if terminal is None else terminal
    # rich reads COLUMNS/LINES itself with isdigit() and int(): COLUMNS=² raised ValueError
    environ = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES") or ascii_digits(v)}
    if tty:
        c = Console(stderr=stderr, highlight=False, emoji=False, markup=False, width=columns or width(stream) or 80,
                    force_terminal=True if terminal else None, file=file, _environ=environ)
        c.nslab_limit = c.width
    else:
        c = Console(stderr=stderr, highlight=False, emoji=False, markup=False, soft_wrap=True, no_color=True,
                    width=10_000, force_terminal=False, file=file, _environ=environ)
        c.nslab_limit = None
    return c


class Lazy:
    """A console made on first use: importing rich is paid only by commands that print with it."""

    def __init__(self, stderr: bool = False):
        self._stderr, self._console = stderr, None

    def __getattr__(self, name):
        if self._console is None:
            self._console = make(self._stderr)
        return getattr(self._console, name)


def fits(console) -> int | None:
    """The width a console's lines must fit, None when unbounded (piped)."""
    return getattr(console, "nslab_limit", console.width)


def table_width(columns: list[str], rows: list[list[str]], compact: bool = False) -> int:
    """Columns a rich table of these cells takes unwrapped: default box "│ a │ b │" = sum + 3 per
    column + 1; compact (no edge, blank separators) = sum + 3 per gap."""
    from rich.cells import cell_len  # lazy: start-up
    cells = sum(max([cell_len(columns[i])] + [cell_len(line) for r in rows for line in r[i].split("\n")])
                for i in range(len(columns)))
    return cells + (3 * (len(columns) - 1) if compact else 3 * len(columns) + 1)


def table(console, columns: list[str], rows: list[list[str]], title: str | None = None,
          optional: tuple[str, ...] = (), compact: bool = False, narrow=None, styles: dict | None = None) -> None:
    """Print a table whose cells are never truncated.

    Piped: plain columns separated by two spaces (a cell's lines joined by ", "). On a
    terminal: a rich table if it fits; else without `optional` columns, dropped one by one in
    their order until it fits; else narrow(console,
    limit) if given, or one record per line (`column: value`). `styles`: a style for cells whose
    whole text is a key (e.g. PASS: green) on a terminal."""
    rows = [[str(c) for c in r] for r in rows]
    limit = fits(console)
    if limit is None:
        if title:
            console.print(title, markup=False, highlight=False)
        console.print(_plain(columns, rows), markup=False, highlight=False)
        return
    keep = list(range(len(columns)))
    for drop in (None, *optional):          # optional columns go one by one, in the order given
        keep = [i for i in keep if columns[i] != drop]
        sub_cols, sub_rows = [columns[i] for i in keep], [[r[i] for i in keep] for r in rows]
        if table_width(sub_cols, sub_rows, compact) <= limit:
            break
    if table_width(sub_cols, sub_rows, compact) > limit:
        if narrow is not None:
            narrow(console, limit)
        else:
            _records(console, columns, rows, title, limit)
        return
    from rich import box  # lazy: start-up
    from rich.table import Table  # lazy: start-up
    t = Table(title=title, title_justify="left", **(dict(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
                                                    if compact else {}))
    for c in sub_cols:
        t.add_column(c, no_wrap=True, overflow="fold")
    from rich.text import Text  # lazy: start-up
    for r in sub_rows:
        t.add_row(*[Text(c, style=(styles or {}).get(c, "")) for c in r])
    console.print(t)


def _plain(columns: list[str], rows: list[list[str]]) -> str:
    flat = [columns] + [[c.replace("\n", ", ") for c in r] for r in rows]
    widths = [max(len(r[i]) for r in flat) for i in range(len(columns))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in flat)


def _records(console, columns, rows, title, limit) -> None:
    """Narrow terminal: one `column: value` line per cell, a blank line between records."""
    from rich.text import Text  # lazy: start-up
    if title:
        console.print(Text(title, style="bold"))
    pad = max(len(c) for c in columns)
    for n, r in enumerate(rows):
        if n:
            console.print()
        for c, v in zip(columns, r):
            if v:             # a column without a name (a status): its value alone heads the record
                line = f"{c.rjust(pad)}: {v.replace(chr(10), ', ')}" if c else v
                console.print(wrap(line, limit, pad + 2), markup=False, highlight=False, soft_wrap=True)


def wrap(line: str, limit: int | None, indent: int = 4, sep: str = " ") -> str:
    """Break a line between `sep`-separated parts to fit `limit`; continuation lines are indented
    (and start with sep's mark, e.g. "| "). A part still too long is broken at spaces; a word
    longer than the line (an address, a name) stays whole. limit None: the line as it is."""
    if limit is None or len(line) <= limit:
        return line
    lead0 = line[:len(line) - len(line.lstrip(" "))]
    mark = sep.strip() + " " if sep.strip() else ""
    lines, cur = [], ""
    for word in line[len(lead0):].split(sep):
        if not cur:
            cur = lead0 + word
            continue
        cand = cur + sep + word
        if len(cand) > limit:
            lines.append(cur)
            cur = " " * indent + mark + word
        else:
            cur = cand
    lines.append(cur)
    if sep != " ":
        lines = [wrap(x, limit, indent, " ") for x in lines]
    return "\n".join(x.rstrip() for x in lines)


class Progress:
    """A progress bar on stderr for work that has lasted over PROGRESS_AFTER seconds; nothing on
    a pipe. Call it as the work goes: progress(phase, done, total); or, for work without steps
    to count, `with Progress(label).running(phase):` (the bar then shows the time elapsed)."""

    def __init__(self, label: str):
        self.label, self.t0 = label, time.monotonic()
        self.bar = self.task = None
        self.enabled = is_terminal(sys.stderr)
        self.done = self.lock = None
        self.phase, self.shown = None, 0.0

    def __call__(self, phase: str, done: int, total: int | None) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if self.bar is None and now - self.t0 < PROGRESS_AFTER:
            return
        # a 10,000-namespace up calls this ~40,000 times: redraw at most 20 times a second
        if self.bar is not None and phase == self.phase and now - self.shown < 0.05:
            return
        self.phase, self.shown = phase, now
        if self.lock is None:
            self._show(phase, done, total)
        else:
            with self.lock:
                self._show(phase, done, total)

    def _show(self, phase: str, done: int, total: int | None) -> None:
        if self.bar is None:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress as Bar,  # lazy: start-up
                                       TextColumn, TimeElapsedColumn)
            self.bar = Bar(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                           TimeElapsedColumn(), console=make(stderr=True), transient=True)
            self.bar.start()
            self.task = self.bar.add_task(f"{self.label}: {phase}", total=total)
        self.bar.update(self.task, description=f"{self.label}: {phase}", completed=done, total=total)

    def running(self, phase: str) -> "Progress":
        if self.enabled:
            import threading  # lazy: start-up
            self.done, self.lock = threading.Event(), threading.Lock()

            def later():
                if not self.done.wait(PROGRESS_AFTER):
                    with self.lock:
                        if not self.done.is_set():
                            self._show(phase, 0, None)
            threading.Thread(target=later, daemon=True).start()
        return self

    def log(self, text: str) -> None:
        """A line of output while the bar may be showing (printed above it)."""
        if self.bar is not None:
            self.bar.console.print(text, markup=False, highlight=False)
        else:
            say(text)

    def close(self) -> None:
        if self.done is not None:
            self.done.set()
        if self.lock is not None:
            with self.lock:
                self._stop()
        else:
            self._stop()

    def _stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
