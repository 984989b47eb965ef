"""What a hook needs of a recorder: the process's ``Recorder`` has it, and so does a test's span log."""
from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class SpanSink(Protocol):
    def emit(self, name: str, start_ns: int, end_ns: int, attrs: dict, span_id: int = 0, parent: int = 0,
             trace_key: str = "", events: tuple = ()) -> None:
        """Record one span (hot path: append, never block)."""

    def flush_soon(self) -> None:
        """Hand what is held to the exporter now (a request finished)."""

    def hook_failed(self, hook: str, exc: BaseException) -> None:
        """Count a failure of our own hook code; it is logged once and never reaches SGLang."""

    def request_ended(self, rid: str, failed: bool, ttft_ns: int | None, max_itl_ns: int | None,
                      e2e_ns: int) -> str:
        """A request finished: whether it keeps its full detail (tail-based keep), as a semconv KEPT_*
        value; batch records held for it are settled."""
