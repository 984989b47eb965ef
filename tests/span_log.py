"""A recorder stand-in that keeps every emitted span (as opentelemetry-python-contrib tests an
instrumentation against an in-memory exporter); it satisfies ``runtime.sink.SpanSink`` like the real one."""
from __future__ import annotations

from typing import NamedTuple

from sglang_tracing import semconv as sc
from sglang_tracing.config import TraceConfig
from sglang_tracing.runtime.tail_keep import RequestKeep


class Span(NamedTuple):
    name: str
    start: int
    end: int
    attrs: dict
    span_id: int
    parent: int
    trace_key: str


class SpanLog:
    """Stands in for the process recorder: keeps every emitted span."""

    def __init__(self, config: TraceConfig | None = None):
        self.spans: list[Span] = []
        self.flushes = 0
        self.failures: list[tuple[str, str]] = []
        self.keep = RequestKeep(config or TraceConfig(trace_dir="unused"))  # the real keep decision
        self.ended: dict[str, str] = {}  # rid -> its keep decision

    def request_ended(self, rid, failed, ttft_ns, max_itl_ns, e2e_ns):
        self.ended[rid] = self.keep.decide(rid, failed, ttft_ns, max_itl_ns, e2e_ns)
        return self.ended[rid]

    def emit(self, name, start_ns, end_ns, attrs, span_id=0, parent=0, trace_key="", events=()):
        self.spans.append(Span(name, start_ns, end_ns, dict(attrs), span_id, parent, trace_key))

    def flush_soon(self):
        self.flushes += 1

    def hook_failed(self, hook, exc):
        self.failures.append((hook, type(exc).__name__))

    def named(self, name: str, rid: str | None = None) -> list[Span]:
        return [s for s in self.spans if s.name == name and (rid is None or s.attrs.get(sc.RID) == rid)]

    def one(self, name: str, rid: str | None = None) -> Span:
        found = self.named(name, rid)
        assert len(found) == 1, (name, rid, found)
        return found[0]
