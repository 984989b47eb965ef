"""Scheduler instrumentation: request lifecycle inside the scheduler and one span per
scheduling decision, forward launch and result processing.

Per-request state rides on the Req object (attribute ``_sgt``) so the per-iteration work
is one attribute read and a length check per running request.
"""
from __future__ import annotations

from time import time_ns

from sglang_tracing import semconv as sc
from sglang_tracing.config import TraceConfig
from sglang_tracing.runtime import nvtx_ranges, recorder
from sglang_tracing.runtime.ids import new_span_id, request_trace_key
from sglang_tracing.runtime.records import PARENT_IS_REQUEST_ROOT
from sglang_tracing.patches import _compat, _hooks, iteration, profile_steps

_SCHED = "sglang.srt.managers.scheduler.Scheduler"
_REQ = "sglang.srt.managers.schedule_batch.Req"

_config: TraceConfig | None = None
_arrivals: dict[str, int] = {}  # rid -> arrival ns, until the request is first scheduled
_is_leader = True  # TP rank 0 writes the per-request spans; every rank writes batch spans
_policy = ""


class _ReqTrace:
    __slots__ = ("arrival", "scheduled", "match", "chunks", "tokens", "n_out", "done")

    def __init__(self, arrival: int):
        self.arrival = arrival
        self.scheduled = 0
        self.match: tuple[int, int, int] | None = None  # (start, end, matched tokens)
        self.chunks: list[tuple[int, int, int, int]] = []  # (start, end, tokens, forward span id)
        self.tokens: list[int] = []  # wall time of each output token
        self.n_out = 0
        self.done = False


def _trace_of(req) -> _ReqTrace:
    st = req.__dict__.get("_sgt")
    if st is None:
        st = req._sgt = _ReqTrace(_arrivals.pop(req.rid, 0) or time_ns())
    return st


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
def _on_init(scheduler) -> None:
    global _is_leader, _policy
    tp_rank = _compat.scheduler_rank(scheduler, "tp_rank")
    _is_leader = tp_rank in (0, None)
    policy = getattr(getattr(scheduler, "policy", None), "policy", "")
    _policy = getattr(policy, "value", None) or str(policy)
    rec = recorder.start(_config, "scheduler", tp_rank)
    nvtx_ranges.enable()
    from sglang_tracing.patches import gpu_state

    gpu_state.start_for_scheduler(rec, scheduler)


def _on_request(rec, token, start, end, result, scheduler, recv_req, *a, **k):
    _arrivals[recv_req.rid] = start


def _on_round_input(rec, token, start, end, result, req, *a, **k):
    st = _trace_of(req)
    if not st.scheduled:
        st.match = (start, end, _compat.prefix_len(req))


def _before_schedule(rec, scheduler, *a, **k):
    iteration.reset()
    sid = new_span_id()
    nvtx_ranges.push(sc.SCHEDULE, sid)
    return sid


def _after_schedule(rec, sid, start, end, plan, scheduler, *a, **k):
    nvtx_ranges.pop()
    batch = plan.batch_to_run
    if batch is None:
        if _config.capture_steps:
            profile_steps.on_idle(_config)
        return
    extend = batch.forward_mode.is_extend()
    new_seqs = 0
    if extend:
        for req in batch.reqs:
            st = _trace_of(req)
            if not st.scheduled:
                st.scheduled = start
                new_seqs += 1
    if _config.batch_spans:
        running = plan.running_batch
        rec.emit(sc.SCHEDULE, start, end, {
            sc.SCHED_POLICY: _policy,
            sc.FORWARD_MODE: _mode(batch),
            sc.BATCH_SIZE: len(batch.reqs),
            sc.BATCH_TOKENS: batch.extend_num_tokens if extend else len(batch.reqs),
            sc.SCHED_NEW_SEQS: new_seqs,
            sc.SCHED_RUNNING: running.batch_size() if running is not None else 0,
            sc.SCHED_QUEUED: len(scheduler.waiting_queue),
            sc.SCHED_CACHE_LOOKUP_NS: iteration.cache_lookup_ns,
            sc.SCHED_KV_ALLOC_NS: iteration.kv_alloc_ns,
            sc.ITERATION: iteration.next_index(),
        }, span_id=sid)


def _before_run_batch(rec, scheduler, batch, *a, **k):
    sid = new_span_id()
    iteration.current_forward = sid
    nvtx_ranges.push(sc.FORWARD, sid)
    return sid


def _pop_range(rec, sid):
    nvtx_ranges.pop()


def _end_run_batch(rec, sid):
    iteration.current_forward = 0
    nvtx_ranges.pop()


def _after_run_batch(rec, sid, start, end, result, scheduler, batch, *a, **k):
    _end_run_batch(rec, sid)
    extend = batch.forward_mode.is_extend()
    reqs = batch.reqs
    chunks = lens = None
    if extend:
        lens = _extend_lens(batch)
        chunks = [(req, n) for req, n in zip(reqs, lens) if _in_prefill(req)]
    attrs = {
        sc.FORWARD_MODE: _mode(batch),
        sc.BATCH_SIZE: len(reqs),
        sc.BATCH_TOKENS: batch.extend_num_tokens if extend else len(reqs),
        sc.BATCH_RIDS: [req.rid for req in reqs],
        sc.OVERLAP: bool(getattr(scheduler, "enable_overlap", False)),
    }
    if extend:
        attrs[sc.BATCH_EXTEND_LENS] = lens
    if len(iteration.launched) > 1024:  # results never processed (aborted batches) must not pile up
        iteration.launched.clear()
    iteration.launched[id(result)] = (sid, start, chunks)
    if _config.batch_spans:
        iteration.emit_forward(rec, sid, start, end, attrs)


def _before_process(rec, scheduler, batch, result, *a, **k):
    sid = new_span_id()
    nvtx_ranges.push(sc.PROCESS_RESULT, sid)
    return sid


def _after_process(rec, sid, start, end, result_none, scheduler, batch, result, *a, **k):
    nvtx_ranges.pop()
    launched = iteration.launched.pop(id(result), None)
    fwd_sid = launched[0] if launched else 0
    if launched and launched[2]:
        for req, tokens in launched[2]:
            _trace_of(req).chunks.append((launched[1], end, tokens, fwd_sid))
    finished = []
    for req in batch.reqs:
        st = req.__dict__.get("_sgt")
        if st is None or st.done:
            continue
        n = len(req.output_ids)
        if n > st.n_out:
            st.tokens.extend([end] * (n - st.n_out))
            st.n_out = n
        if req.finished():
            st.done = True
            finished.append(req)
    if _config.batch_spans:
        iteration.flush_gpu_times(rec)
        rec.emit(sc.PROCESS_RESULT, start, end, {
            sc.FORWARD_MODE: _mode(batch), sc.BATCH_SIZE: len(batch.reqs),
            sc.FORWARD_SPAN_ID: f"{fwd_sid:016x}"}, span_id=sid)
    if _is_leader and finished:
        for req in finished:
            _emit_request(rec, req, req._sgt)
        rec.flush_soon()


def _emit_request(rec, req, st: _ReqTrace) -> None:
    key = request_trace_key(req.rid)
    root = PARENT_IS_REQUEST_ROOT
    rid_attr = {sc.RID: req.rid}
    if st.scheduled:
        rec.emit(sc.REQUEST_QUEUED, st.arrival, st.scheduled, rid_attr, parent=root, trace_key=key)
    if st.match:
        rec.emit(sc.REQUEST_PREFIX_MATCH, st.match[0], st.match[1],
                 {sc.RID: req.rid, sc.MATCHED_TOKENS: st.match[2],
                  sc.PREFIX_DIGESTS: block_digests(req.origin_input_ids)}, parent=root, trace_key=key)
    first_token = st.tokens[0] if st.tokens else (st.chunks[-1][1] if st.chunks else 0)
    if st.chunks:
        prefill_id = new_span_id()
        rec.emit(sc.REQUEST_PREFILL, st.chunks[0][0], first_token, {
            sc.RID: req.rid, sc.PROMPT_TOKENS: len(req.origin_input_ids),
            sc.CACHED_TOKENS: req.cached_tokens, sc.CHUNK_TOKENS: sum(c[2] for c in st.chunks),
            sc.FORWARD_SPAN_ID: f"{st.chunks[-1][3]:016x}"},
            span_id=prefill_id, parent=root, trace_key=key)
        if len(st.chunks) > 1:
            for i, (c_start, c_end, tokens, fwd) in enumerate(st.chunks):
                rec.emit(sc.REQUEST_PREFILL_CHUNK, c_start, c_end, {
                    sc.RID: req.rid, sc.CHUNK_INDEX: i, sc.CHUNK_TOKENS: tokens,
                    sc.FORWARD_SPAN_ID: f"{fwd:016x}"}, parent=prefill_id, trace_key=key)
    if st.tokens:
        rec.emit(sc.REQUEST_DECODE, st.tokens[0], st.tokens[-1], {
            sc.RID: req.rid, sc.OUTPUT_TOKENS: len(st.tokens), sc.TOKEN_TIMES: st.tokens,
            sc.FINISH_REASON: _finish_reason(req)}, parent=root, trace_key=key)


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


def instrument(config: TraceConfig, skipped: list[str]) -> int:
    global _config
    _config = config
    fault = config.inject_fault
    hooks = {
        f"{_SCHED}.__init__": _hooks.after_setup("scheduler_init", _on_init, fault),
        f"{_SCHED}.handle_generate_request": _hooks.around("handle_generate_request", _on_request,
                                                           inject_fault=fault),
        f"{_REQ}.init_next_round_input": _hooks.around("init_next_round_input", _on_round_input,
                                                       inject_fault=fault),
        f"{_SCHED}.get_next_batch_to_run": _hooks.around(
            "schedule", _after_schedule, _before_schedule, _pop_range, fault),
        f"{_SCHED}.run_batch": _hooks.around(
            "run_batch", _after_run_batch, _before_run_batch, _end_run_batch, fault),
        f"{_SCHED}.process_batch_result": _hooks.around(
            "process_batch_result", _after_process, _before_process, _pop_range, fault),
    }
    return _hooks.register(hooks, skipped)
