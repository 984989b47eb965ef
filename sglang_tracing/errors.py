"""The errors a user can cause: the CLI prints either as one line on stderr and exits 2 (any other
exception is a bug, and shows its traceback)."""
from __future__ import annotations


class UsageError(ValueError):
    """A user's option or argument is wrong."""


class TraceError(Exception):
    """Bad or unreadable input: the message names the file and what is wrong with it."""

    def __init__(self, path, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem
