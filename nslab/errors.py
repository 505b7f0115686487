"""Errors a user sees: one sentence, where it is, and the exit code that goes with it."""
from __future__ import annotations


class NslabError(Exception):
    """An error meant for the user (no traceback).  exit_code 2 = bad input."""

    exit_code = 1


class TopologyError(NslabError):
    """Bad input: names the file, line and YAML path (`file:line path: message`)."""

    exit_code = 2

    def __init__(self, file: str, line: int | None, path: str, message: str):
        self.file, self.line, self.path, self.message = file, line, path, message
        where = f"{file}:{line}" if line else file
        super().__init__(f"{where} {path}: {message}" if path else f"{where}: {message}")


class UsageError(NslabError):
    """Bad command-line use (unknown lab, ambiguous lab, ...)."""

    exit_code = 2


class PrerequisiteError(NslabError):
    """Missing privileges or a missing system tool: says what and how to get it."""

    exit_code = 3
