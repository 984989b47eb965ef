"""Scheduler instrumentation: request lifecycle inside the scheduler and one span per
scheduling decision, forward launch and result processing.

Every hook here has the signature of ``patches._wrappers``: the process's ``SchedulerState``, the ``Call``,
then the original's arguments; per-request state rides on the Req object (``state.RequestTrace``).
"""
from __future__ import annotations

from collections.abc import Callable

from sglang_tracing import semconv as sc
from sglang_tracing.runtime import nvtx_ranges, recorder, trace_context
from sglang_tracing.runtime.ids import new_span_id
from sglang_tracing.patches import _compat, _targets, speculative
from sglang_tracing.patches._wrappers import Call, after_setup, around
from sglang_tracing.patches.request_spans import emit_request, keep_decision, trace_of
from sglang_tracing.patches.state import Launched, PrefillChunk, PrefillPiece, PrefixMatch, SchedulerState

_SCHED = "sglang.srt.managers.scheduler.Scheduler"
_REQ = "sglang.srt.managers.schedule_batch.Req"
MAX_LAUNCHED = 1024  # results never processed (aborted batches) must not pile up


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
    trace = trace_of(st, req)
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
            trace = trace_of(st, req)
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
            trace_of(st, piece.req).chunks.append(PrefillChunk(launched.start_ns, end, piece.tokens, fwd_sid))
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
        speculative.on_result(st, rec, batch, result, fwd_sid, call.start_ns, end)
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
            emit_request(rec, req, req._sgt, detail, st.trace_key(req.rid), st.hicache)
            st.trace_ids.pop(req.rid, None)
    if st.is_leader and finished:
        rec.flush_soon()


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
