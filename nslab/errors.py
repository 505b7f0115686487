"""Errors a user sees: one sentence, where it is, and the exit code that goes with it."""
from __future__ import annotations


class NslabError(Exception):
    """An error meant for the user (no traceback).  exit_code 2 = bad input."""

    exit_code = 1


MAX_MESSAGE = 1000     # a message quoting a 1 MB value or listing 10,000 names stays readable


def one_line(text: str) -> str:
    """Text as one printable line: line breaks and other control or invisible characters
    from the input (a key with a newline, U+2028) shown as escapes, never as new lines."""
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    if len(text) > MAX_MESSAGE:
        text = text[: MAX_MESSAGE - 300] + " [...] " + text[-293:]
    return text


class TopologyError(NslabError):
    """Bad input: names the file, line and YAML path (`file:line path: message`), one line."""

    exit_code = 2

    def __init__(self, file: str, line: int | None, path: str, message: str):
        file, path, message = one_line(file), one_line(path), one_line(message)
        self.file, self.line, self.path, self.message = file, line, path, message
        where = f"{file}:{line}" if line else file
        super().__init__(f"{where} {path}: {message}" if path else f"{where}: {message}")


class UsageError(NslabError):
    """Bad command-line use (unknown lab, ambiguous lab, ...)."""

    exit_code = 2


class PrerequisiteError(NslabError):
    """Missing privileges or a missing system tool: says what and how to get it."""

    exit_code = 3


class ApplyError(NslabError):
    """The kernel refused an operation of the plan (the message says which, and why)."""
