"""Speculative-decoding instrumentation (``--speculative-algorithm``): each decode step's draft phase
(NGRAM's corpus lookup, EAGLE/STANDALONE's draft model) and the target model's verify forward as spans
under the scheduler forward that ran them, with their GPU time from CUDA events on a GPU; and, once the
step's result is processed, how many drafts each request had accepted (``on_result``, called by the
scheduler patch). Raw counts only: accepted length per step, tokens per forward and draft overhead are
the analyzer's.

The verify forward is the target worker's ``forward_batch_generation(..., is_verify=True)``, which every
algorithm calls; other calls of it pass straight through after one keyword lookup.
"""
from __future__ import annotations

from typing import NamedTuple

from sglang_tracing import semconv as sc
from sglang_tracing.runtime.ids import new_span_id
from sglang_tracing.patches import _targets
from sglang_tracing.patches._wrappers import Call, around
from sglang_tracing.patches.forward_gpu_times import GpuEvents
from sglang_tracing.patches.state import SchedulerState

DRAFTS = (  # the draft phase of each algorithm's decode step
    "sglang.srt.speculative.ngram_worker.NGRAMWorker._prepare_for_speculative_decoding",
    "sglang.srt.speculative.eagle_worker_v2.EagleDraftWorker.draft",
    "sglang.srt.speculative.multi_layer_eagle_worker_v2.MultiLayerEagleDraftWorker.draft",
)
_TARGET = "sglang.srt.managers.tp_worker.TpModelWorker.forward_batch_generation"
MAX_PENDING = 1024  # draft/verify spans waiting for their GPU events, at most


class _Phase(NamedTuple):
    parent: int  # the scheduler forward that ran it
    span_id: int
    events: GpuEvents | None


class PendingPhase(NamedTuple):
    """A draft or verify phase until its end event completed; its attributes are built then, off the
    step's critical path (NGRAM drafts synchronously: the GPU waits for the draft's CPU work)."""
    name: str
    start_ns: int
    end_ns: int
    phase: _Phase
    algorithm: str
    batch_size: int
    draft_tokens: int

    def attrs(self) -> dict:
        return {sc.SPEC_ALGORITHM: self.algorithm, sc.BATCH_SIZE: self.batch_size,
                sc.SPEC_DRAFT_TOKENS: self.draft_tokens}


def _begin(st: SchedulerState) -> _Phase | None:
    parent = st.current_forward
    if not parent or not st.config.batch_spans:  # warm-up or CUDA-graph capture, or request level
        return None
    events = None
    if st.cuda is not None:
        events = st.gpu_times.take_events(st.cuda)
        events.start.record()
    return _Phase(parent, new_span_id(), events)


def _emit(rec, item: PendingPhase, attrs: dict) -> None:
    rec.emit(item.name, item.start_ns, item.end_ns, attrs, span_id=item.phase.span_id, parent=item.phase.parent)


def _end(st: SchedulerState, rec, item: PendingPhase) -> None:
    events = item.phase.events
    if events is None:
        _emit(rec, item, item.attrs())
        return
    events.end.record()
    pending = st.spec_pending
    if len(pending) >= MAX_PENDING:  # events that never complete: the oldest goes out without GPU time
        old = pending.popleft()
        _emit(rec, old, old.attrs())
    pending.append(item)


def flush(st: SchedulerState, rec) -> None:
    """Emit draft/verify spans whose end event has completed; never blocks on the GPU."""
    pending = st.spec_pending
    while pending:
        item = pending[0]
        events = item.phase.events
        if not events.end.query():
            return
        pending.popleft()
        attrs = item.attrs()
        attrs[sc.GPU_DURATION_NS] = int(events.start.elapsed_time(events.end) * 1e6)
        anchor = st.gpu_times.anchor
        if anchor is not None:
            attrs[sc.GPU_START_NS] = anchor.wall_ns + int(anchor.event.elapsed_time(events.start) * 1e6)
            attrs[sc.GPU_END_NS] = anchor.wall_ns + int(anchor.event.elapsed_time(events.end) * 1e6)
        st.gpu_times.give_events(events)
        _emit(rec, item, attrs)


def _draft_tokens(worker, batch) -> int:
    for source in (getattr(batch, "spec_info", None), worker):
        n = getattr(source, "draft_token_num", None) or getattr(source, "speculative_num_draft_tokens", None)
        if isinstance(n, int):
            return n
    return 0


def _before_draft(st: SchedulerState, call: Call, /, worker, batch, *a, **k) -> _Phase | None:
    if not batch.forward_mode.is_decode():  # NGRAM's prefill passes through without drafting
        return None
    return _begin(st)


def _after_draft(st: SchedulerState, call: Call, /, worker, batch, *a, **k):
    phase = call.token
    if phase is None:
        return
    _end(st, call.rec, PendingPhase(sc.SPEC_DRAFT, call.start_ns, call.end_ns, phase, type(worker).__name__,
                                    len(batch.reqs), _draft_tokens(worker, batch)))


def _before_verify(st: SchedulerState, call: Call, /, worker, batch=None, *a, **k) -> _Phase | None:
    if not k.get("is_verify") or batch is None:
        return None
    return _begin(st)


def _after_verify(st: SchedulerState, call: Call, /, worker, batch=None, *a, **k):
    phase = call.token
    if phase is None:
        return
    algorithm = getattr(getattr(batch, "spec_algorithm", None), "name", "")
    _end(st, call.rec, PendingPhase(sc.SPEC_VERIFY, call.start_ns, call.end_ns, phase, algorithm, len(batch.reqs),
                                    _draft_tokens(worker, batch)))


def _cleanup(st: SchedulerState, call: Call, /, *a, **k) -> None:
    """The original raised: its events are dropped, nothing is emitted."""


def on_result(st: SchedulerState, rec, batch, result, forward_span_id: int, start: int, end: int) -> None:
    """A processed decode step of a speculative batch: each request's accepted drafts (bonus excluded)."""
    flush(st, rec)
    correct = getattr(result, "num_correct_drafts_per_req_cpu", None)
    if not correct or not st.config.batch_spans:
        return
    rec.emit(sc.SPEC_ACCEPT, start, end, {
        sc.BATCH_RIDS: [req.rid for req in batch.reqs], sc.SPEC_CORRECT_DRAFTS: list(correct),
        sc.SPEC_DRAFT_TOKENS: getattr(result, "speculative_num_draft_tokens", None) or 0,
        sc.FORWARD_SPAN_ID: f"{forward_span_id:016x}"})


def request_attrs(req) -> dict:
    """SGLang's own per-request counts, for the request's decode span (empty without speculation)."""
    verify_ct = getattr(req, "spec_verify_ct", 0)
    if not isinstance(verify_ct, int) or verify_ct <= 0:
        return {}
    return {sc.SPEC_VERIFY_CT: verify_ct, sc.SPEC_REQ_CORRECT: int(getattr(req, "spec_num_correct_drafts", 0))}


def hooks(st: SchedulerState) -> dict:
    common = {"state": st, "inject_fault": st.config.inject_fault, "cleanup": _cleanup}
    out = {target: around("spec_draft", before=_before_draft, after=_after_draft, **common) for target in DRAFTS}
    out[_TARGET] = around("spec_verify", before=_before_verify, after=_after_verify, **common)
    return out


def instrument(st: SchedulerState, skipped: list[str]) -> int:
    return _targets.register(hooks(st), skipped)
