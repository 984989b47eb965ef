"""The one error type the analyzer raises for bad input; the CLI prints it as one line, exit 2."""
from __future__ import annotations


class TraceError(Exception):
    """Bad or unreadable input: the message names the file and what is wrong with it."""

    def __init__(self, path, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem
