"""A request's scheduler-side spans, written when it finishes: what the scheduler patch and the
disaggregation patch (a decode server's requests) both write, so neither imports the other for it."""
from __future__ import annotations

from time import time_ns

from sglang_tracing import semconv as sc
from sglang_tracing.runtime.ids import new_span_id, request_trace_key
from sglang_tracing.runtime.records import PARENT_IS_REQUEST_ROOT
from sglang_tracing.patches import speculative
from sglang_tracing.patches.state import RequestTrace, SchedulerState

ROOT = PARENT_IS_REQUEST_ROOT


def trace_of(st: SchedulerState, req) -> RequestTrace:
    """The request's scheduler-side record, riding on SGLang's Req (created at its first sight)."""
    trace = req.__dict__.get("_sgt")
    if trace is None:
        trace = req._sgt = RequestTrace(st.arrivals.pop(req.rid, 0) or time_ns())
    return trace


def keep_decision(rec, req, trace: RequestTrace, end: int) -> str:
    """Whether this request keeps its full detail (tail-based keep, decided at its end): semconv.KEPT_*."""
    tokens = trace.tokens
    reason = _finish_reason(req)
    max_itl = max(b - a for a, b in zip(tokens, tokens[1:])) if len(tokens) > 1 else None
    return rec.request_ended(req.rid, reason not in ("stop", "length"), tokens[0] - trace.arrival if tokens else None,
                             max_itl, (tokens[-1] if tokens else end) - trace.arrival)


def emit_request(rec, req, trace: RequestTrace, detail: str = sc.KEPT_ALL, key: str | None = None,
                 hicache: bool = False) -> None:
    """A request's scheduler spans, in the trace of ``key`` (default: its rid's)."""
    key = key or request_trace_key(req.rid)
    root = PARENT_IS_REQUEST_ROOT
    rid_attr = {sc.RID: req.rid}
    full = detail != sc.KEPT_SUMMARY
    if trace.scheduled:
        rec.emit(sc.REQUEST_QUEUED, trace.arrival, trace.scheduled, rid_attr, parent=root, trace_key=key)
    if trace.match:
        match = {sc.RID: req.rid, sc.MATCHED_TOKENS: trace.match.matched_tokens}
        if full:
            match[sc.PREFIX_DIGESTS] = block_digests(req.origin_input_ids)
        rec.emit(sc.REQUEST_PREFIX_MATCH, trace.match.start_ns, trace.match.end_ns, match, parent=root, trace_key=key)
    chunks = trace.chunks
    first_token = trace.tokens[0] if trace.tokens else (chunks[-1].end_ns if chunks else 0)
    if chunks:
        prefill_id = new_span_id()
        rec.emit(sc.REQUEST_PREFILL, chunks[0].start_ns, first_token, {
            sc.RID: req.rid, sc.PROMPT_TOKENS: len(req.origin_input_ids),
            sc.CACHED_TOKENS: req.cached_tokens, sc.CHUNK_TOKENS: sum(c.tokens for c in chunks),
            sc.FORWARD_SPAN_ID: f"{chunks[-1].forward_span_id:016x}", sc.CHUNK_COUNT: len(chunks),
            sc.KEEP_REASON: detail, **_cache_tiers(req, hicache)},
            span_id=prefill_id, parent=root, trace_key=key)
        if len(chunks) > 1 and full:
            for i, chunk in enumerate(chunks):
                rec.emit(sc.REQUEST_PREFILL_CHUNK, chunk.start_ns, chunk.end_ns, {
                    sc.RID: req.rid, sc.CHUNK_INDEX: i, sc.CHUNK_TOKENS: chunk.tokens,
                    sc.FORWARD_SPAN_ID: f"{chunk.forward_span_id:016x}"}, parent=prefill_id, trace_key=key)
    if trace.tokens:
        decode = {sc.RID: req.rid, sc.OUTPUT_TOKENS: len(trace.tokens), sc.FINISH_REASON: _finish_reason(req),
                  sc.KEEP_REASON: detail, **speculative.request_attrs(req)}
        if full:
            decode[sc.TOKEN_TIMES] = trace.tokens
        else:
            decode.update(_itl_figures(trace.tokens))
        rec.emit(sc.REQUEST_DECODE, trace.tokens[0], trace.tokens[-1], decode, parent=root, trace_key=key)


def _cache_tiers(req, hicache: bool) -> dict:
    """SGLang's split of a request's cached tokens by tier, where the hierarchical cache served it."""
    if not hicache or not getattr(req, "_cache_breakdown_computed", False):
        return {}
    return {sc.CACHED_DEVICE: req.cached_tokens_device, sc.CACHED_HOST: req.cached_tokens_host,
            sc.CACHED_STORAGE: req.cached_tokens_storage}


def _itl_figures(tokens: list[int]) -> dict:
    """A summary-only request's inter-token gaps: median, p99 (nearest rank) and max, ns."""
    gaps = sorted(b - a for a, b in zip(tokens, tokens[1:]))
    if not gaps:
        return {}
    return {sc.ITL_P50_NS: gaps[(len(gaps) - 1) // 2], sc.ITL_P99_NS: gaps[max(0, -(-99 * len(gaps) // 100) - 1)],
            sc.ITL_MAX_NS: gaps[-1]}


def block_digests(ids, block: int = sc.PREFIX_BLOCK) -> list[int]:
    """Chained hashes of each full block of token ids (Python's int/tuple hash: stable across processes)."""
    out, h = [], 0
    for k in range(block, len(ids) + 1, block):
        h = hash((h, tuple(ids[k - block:k])))
        out.append(h)
    return out


def _finish_reason(req) -> str:
    reason = getattr(req, "finished_reason", None)
    if reason is None:
        return ""
    try:
        return str(reason.to_json().get("type", ""))
    except Exception:
        return type(reason).__name__
