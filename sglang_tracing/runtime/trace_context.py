"""Which trace a request's spans join: a caller's (W3C ``traceparent`` on the HTTP request), its PD
pair's (prefill and decode servers derive one id from the bootstrap room both are given), or its own
(derived from the rid, as before).

The header is read by OpenTelemetry's own ``TraceContextTextMapPropagator``; an invalid one is
ignored, as the W3C spec asks. The propagator is imported only when a request carries the header.
"""
from __future__ import annotations

import json
import os
from typing import NamedTuple

from sglang_tracing import semconv as sc
from sglang_tracing.runtime.ids import pd_trace_id

# Where a request joins a trace other than its rid's, for the processes that cannot tell (the scheduler
# does not see the HTTP headers, the detokenizer sees neither headers nor bootstrap room): written by
# the tokenizer process when the request arrives, read by each exporter process, never on a hot path.
CONTEXT_FILE = "trace-context.jsonl"

TRACEPARENT_HEADERS = ("traceparent", "tracestate")


class TraceOrigin(NamedTuple):
    trace_id: int | None  # None: derived from the rid
    parent_span_id: int  # the caller's span (the root's remote parent), 0 for none
    origin: str  # semconv TRACE_ORIGIN_*


RID_ORIGIN = TraceOrigin(None, 0, sc.TRACE_ORIGIN_RID)


def caller_span(headers) -> tuple[int, int] | None:
    """(trace id, span id) of a valid ``traceparent`` in ``headers`` (any mapping), else None."""
    if not headers or headers.get("traceparent") is None:
        return None
    from opentelemetry.trace import get_current_span
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier = {k: headers.get(k) for k in TRACEPARENT_HEADERS if headers.get(k) is not None}
    ctx = get_current_span(TraceContextTextMapPropagator().extract(carrier)).get_span_context()
    return (ctx.trace_id, ctx.span_id) if ctx.is_valid else None


def origin_of(headers, bootstrap_host=None, bootstrap_port=None, bootstrap_room=None) -> TraceOrigin:
    caller = caller_span(headers)
    if caller is not None:
        return TraceOrigin(caller[0], caller[1], sc.TRACE_ORIGIN_CALLER)
    if bootstrap_room is not None and bootstrap_host is not None:
        return TraceOrigin(pd_trace_id(bootstrap_host, bootstrap_port, bootstrap_room), 0, sc.TRACE_ORIGIN_PD)
    return RID_ORIGIN


def traceparent_of(trace_id: int, span_id: int) -> str:
    return f"00-{trace_id:032x}-{span_id:016x}-01"


def note(trace_dir: str, rid: str, origin: TraceOrigin) -> None:
    """Record a request's trace (one appended line, written whole) for this server's other processes."""
    line = json.dumps({"rid": rid, "trace_id": f"{origin.trace_id:032x}", "origin": origin.origin}) + "\n"
    fd = os.open(os.path.join(trace_dir, CONTEXT_FILE), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


class NotedTraces:
    """The exporter's view of ``CONTEXT_FILE``: rid -> trace id, re-read when the file has grown."""

    def __init__(self, trace_dir: str):
        self.path = os.path.join(trace_dir, CONTEXT_FILE)
        self.by_rid: dict[str, int] = {}
        self._offset = 0

    def get(self, rid: str) -> int | None:
        tid = self.by_rid.get(rid)
        if tid is None and self._grew():
            tid = self.by_rid.get(rid)
        return tid

    def _grew(self) -> bool:
        try:
            if os.path.getsize(self.path) <= self._offset:
                return False
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except OSError:
            return False
        complete = data[:data.rfind(b"\n") + 1]
        self._offset += len(complete)
        for line in complete.splitlines():
            try:
                entry = json.loads(line)
                self.by_rid[entry["rid"]] = int(entry["trace_id"], 16)
            except (ValueError, KeyError, TypeError):
                continue
        return bool(complete)
