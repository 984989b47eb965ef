"""Scheduler instrumentation: request lifecycle inside the scheduler and one span per
scheduling decision, forward launch and result processing.

Every hook here has the signature of ``patches._wrappers``: the process's ``SchedulerState``, the ``Call``,
then the original's arguments; per-request state rides on the Req object (``state.RequestTrace``).
"""
from __future__ import annotations

from collections.abc import Callable
from time import time_ns

from sglang_tracing import semconv as sc
from sglang_tracing.runtime import nvtx_ranges, recorder, trace_context
from sglang_tracing.runtime.ids import new_span_id
from sglang_tracing.runtime.records import PARENT_IS_REQUEST_ROOT
from sglang_tracing.patches import _compat, _targets
from sglang_tracing.patches._wrappers import Call, after_setup, around
from sglang_tracing.patches.state import Launched, PrefillChunk, PrefillPiece, PrefixMatch, RequestTrace, SchedulerState

_SCHED = "sglang.srt.managers.scheduler.Scheduler"
_REQ = "sglang.srt.managers.schedule_batch.Req"
MAX_LAUNCHED = 1024  # results never processed (aborted batches) must not pile up
ROOT = PARENT_IS_REQUEST_ROOT


def _trace_of(st: SchedulerState, req) -> RequestTrace:
    trace = req.__dict__.get("_sgt")
    if trace is None:
        trace = req._sgt = RequestTrace(st.arrivals.pop(req.rid, 0) or time_ns())
    return trace


def _extend_lens(batch) -> list[int]:
    lens = getattr(batch, "extend_lens", None)
    if lens is not None:
        return list(lens)
    return [getattr(req, "extend_input_len", 0) for req in batch.reqs]


def _in_prefill(req) -> bool:
    """Whether this extend computes prompt tokens (not a decode step riding in a mixed batch)."""
    return _compat.extend_end(req) <= len(req.origin_input_ids)


def _mode(batch) -> str:
    return batch.forward_mode.name.lower()


# ---- hooks ----
def _on_init(st: SchedulerState, call: Call, /, scheduler, *a, **k) -> None:
    tp_rank = _compat.scheduler_rank(scheduler, "tp_rank")
    st.is_leader = tp_rank in (0, None)
    policy = getattr(getattr(scheduler, "policy", None), "policy", "")
    st.policy = getattr(policy, "value", None) or str(policy)
    backend = getattr(getattr(scheduler, "server_args", None), "disaggregation_transfer_backend", "")
    st.pd_backend = str(getattr(backend, "value", backend) or "")
    rec = recorder.start(st.config, "scheduler", tp_rank)
    nvtx_ranges.enable()
    from sglang_tracing.patches import gpu_state

    gpu_state.start_for_scheduler(rec, scheduler)


def _on_request(st: SchedulerState, call: Call, /, scheduler, recv_req, *a, **k):
    st.arrivals[recv_req.rid] = call.start_ns
    origin = trace_context.origin_of(getattr(recv_req, "external_trace_header", None),
                                     getattr(recv_req, "bootstrap_host", None),
                                     getattr(recv_req, "bootstrap_port", None),
                                     getattr(recv_req, "bootstrap_room", None))
    if origin.trace_id is not None:
        st.trace_ids[recv_req.rid] = origin.trace_id


def _on_round_input(st: SchedulerState, call: Call, /, req, *a, **k):
    trace = _trace_of(st, req)
    if not trace.scheduled:
        trace.match = PrefixMatch(call.start_ns, call.end_ns, _compat.prefix_len(req))


def _before_schedule(st: SchedulerState, call: Call, /, scheduler, *a, **k):
    st.detail.poll(call.rec)
    st.cache_lookup_ns = 0
    st.kv_alloc_ns = 0
    sid = new_span_id()
    nvtx_ranges.push(sc.SCHEDULE, sid)
    return sid


def _after_schedule(st: SchedulerState, call: Call, /, scheduler, *a, **k):
    nvtx_ranges.pop()
    rec, start, plan = call.rec, call.start_ns, call.result
    batch = plan.batch_to_run
    if batch is None:
        if st.config.capture_steps:
            st.windows.on_idle(rec)
        return
    extend = batch.forward_mode.is_extend()
    new_seqs = 0
    if extend:
        for req in batch.reqs:
            trace = _trace_of(st, req)
            if not trace.scheduled:
                trace.scheduled = start
                new_seqs += 1
    if st.config.batch_spans:
        running = plan.running_batch
        st.iteration += 1
        rec.emit(sc.SCHEDULE, start, call.end_ns, {
            sc.SCHED_POLICY: st.policy,
            sc.FORWARD_MODE: _mode(batch),
            sc.BATCH_SIZE: len(batch.reqs),
            sc.BATCH_TOKENS: batch.extend_num_tokens if extend else len(batch.reqs),
            sc.SCHED_NEW_SEQS: new_seqs,
            sc.SCHED_RUNNING: running.batch_size() if running is not None else 0,
            sc.SCHED_QUEUED: len(scheduler.waiting_queue),
            sc.SCHED_CACHE_LOOKUP_NS: st.cache_lookup_ns,
            sc.SCHED_KV_ALLOC_NS: st.kv_alloc_ns,
            sc.ITERATION: st.iteration,
        }, span_id=call.token)


def _before_run_batch(st: SchedulerState, call: Call, /, scheduler, batch, *a, **k):
    sid = new_span_id()
    st.current_forward = sid
    nvtx_ranges.push(sc.FORWARD, sid)
    return sid


def _pop_range(st: SchedulerState, call: Call, /, *a, **k):
    nvtx_ranges.pop()


def _end_run_batch(st: SchedulerState, call: Call, /, *a, **k):
    st.current_forward = 0
    nvtx_ranges.pop()


def _after_run_batch(st: SchedulerState, call: Call, /, scheduler, batch, *a, **k):
    _end_run_batch(st, call)
    extend = batch.forward_mode.is_extend()
    reqs = batch.reqs
    prefill = lens = None
    if extend:
        lens = _extend_lens(batch)
        prefill = [PrefillPiece(req, n) for req, n in zip(reqs, lens) if _in_prefill(req)]
    attrs = {
        sc.FORWARD_MODE: _mode(batch),
        sc.BATCH_SIZE: len(reqs),
        sc.BATCH_TOKENS: batch.extend_num_tokens if extend else len(reqs),
        sc.BATCH_RIDS: [req.rid for req in reqs],
        sc.OVERLAP: bool(getattr(scheduler, "enable_overlap", False)),
    }
    if extend:
        attrs[sc.BATCH_EXTEND_LENS] = lens
    if len(st.launched) > MAX_LAUNCHED:
        st.launched.clear()
    sid = call.token
    st.launched[id(call.result)] = Launched(sid, call.start_ns, prefill)
    if st.config.batch_spans:
        st.gpu_times.emit_forward(call.rec, sid, call.start_ns, call.end_ns, attrs)


def _before_process(st: SchedulerState, call: Call, /, scheduler, batch, result, *a, **k):
    sid = new_span_id()
    nvtx_ranges.push(sc.PROCESS_RESULT, sid)
    return sid


def _after_process(st: SchedulerState, call: Call, /, scheduler, batch, result, *a, **k):
    nvtx_ranges.pop()
    rec, end = call.rec, call.end_ns
    launched = st.launched.pop(id(result), None)
    fwd_sid = launched.forward_span_id if launched else 0
    if launched and launched.prefill:
        for piece in launched.prefill:
            _trace_of(st, piece.req).chunks.append(PrefillChunk(launched.start_ns, end, piece.tokens, fwd_sid))
    finished = []
    for req in batch.reqs:
        trace = req.__dict__.get("_sgt")
        if trace is None or trace.done:
            continue
        trace.stamp_outputs(len(req.output_ids), end)  # tokens output_streamer did not see being sent
        if req.finished():
            trace.done = True
            finished.append(req)
    if st.config.batch_spans:
        st.gpu_times.flush(rec)
        st.detail.timer.flush(rec)
        rec.emit(sc.PROCESS_RESULT, call.start_ns, end, {
            sc.FORWARD_MODE: _mode(batch), sc.BATCH_SIZE: len(batch.reqs),
            sc.FORWARD_SPAN_ID: f"{fwd_sid:016x}"}, span_id=call.token)
    for req in finished:
        detail = keep_decision(rec, req, req._sgt, end)
        if not st.is_leader:
            continue
        if req._sgt.pd is not None:  # a decode server's request: its PD spans too
            from sglang_tracing.patches import disaggregation

            disaggregation.emit_decode_side(st, rec, req, req._sgt, detail)
        else:
            emit_request(rec, req, req._sgt, detail, st.trace_key(req.rid))
            st.trace_ids.pop(req.rid, None)
    if st.is_leader and finished:
        rec.flush_soon()


def keep_decision(rec, req, trace: RequestTrace, end: int) -> str:
    """Whether this request keeps its full detail (tail-based keep, decided at its end): semconv.KEPT_*."""
    tokens = trace.tokens
    reason = _finish_reason(req)
    max_itl = max(b - a for a, b in zip(tokens, tokens[1:])) if len(tokens) > 1 else None
    return rec.request_ended(req.rid, reason not in ("stop", "length"), tokens[0] - trace.arrival if tokens else None,
                             max_itl, (tokens[-1] if tokens else end) - trace.arrival)


def emit_request(rec, req, trace: RequestTrace, detail: str = sc.KEPT_ALL, key: str | None = None) -> None:
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
            sc.KEEP_REASON: detail},
            span_id=prefill_id, parent=root, trace_key=key)
        if len(chunks) > 1 and full:
            for i, chunk in enumerate(chunks):
                rec.emit(sc.REQUEST_PREFILL_CHUNK, chunk.start_ns, chunk.end_ns, {
                    sc.RID: req.rid, sc.CHUNK_INDEX: i, sc.CHUNK_TOKENS: chunk.tokens,
                    sc.FORWARD_SPAN_ID: f"{chunk.forward_span_id:016x}"}, parent=prefill_id, trace_key=key)
    if trace.tokens:
        decode = {sc.RID: req.rid, sc.OUTPUT_TOKENS: len(trace.tokens), sc.FINISH_REASON: _finish_reason(req),
                  sc.KEEP_REASON: detail}
        if full:
            decode[sc.TOKEN_TIMES] = trace.tokens
        else:
            decode.update(_itl_figures(trace.tokens))
        rec.emit(sc.REQUEST_DECODE, trace.tokens[0], trace.tokens[-1], decode, parent=root, trace_key=key)


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


def hooks(st: SchedulerState) -> dict[str, Callable]:
    """The scheduler's hooks by target, each bound to the process's state."""
    common = {"state": st, "inject_fault": st.config.inject_fault}
    return {
        f"{_SCHED}.__init__": after_setup("scheduler_init", on_init=_on_init, **common),
        f"{_SCHED}.handle_generate_request": around("handle_generate_request", after=_on_request, **common),
        f"{_REQ}.init_next_round_input": around("init_next_round_input", after=_on_round_input, **common),
        f"{_SCHED}.get_next_batch_to_run": around(
            "schedule", before=_before_schedule, after=_after_schedule, cleanup=_pop_range, **common),
        f"{_SCHED}.run_batch": around(
            "run_batch", before=_before_run_batch, after=_after_run_batch, cleanup=_end_run_batch, **common),
        f"{_SCHED}.process_batch_result": around(
            "process_batch_result", before=_before_process, after=_after_process, cleanup=_pop_range, **common),
    }


def instrument(st: SchedulerState, skipped: list[str]) -> int:
    return _targets.register(hooks(st), skipped)
