"""Which trace a request's spans join: a caller's (W3C ``traceparent`` on the HTTP request), its PD
pair's (prefill and decode servers derive one id from the bootstrap room both are given), or its own
(derived from the rid, as before).

The header is read by OpenTelemetry's own ``TraceContextTextMapPropagator``; an invalid one is
ignored, as the W3C spec asks. The propagator is imported only when a request carries the header.
"""
from __future__ import annotations

from typing import NamedTuple

from sglang_tracing import semconv as sc
from sglang_tracing.runtime.ids import pd_trace_id

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
