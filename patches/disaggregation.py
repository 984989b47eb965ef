"""Prefill-decode disaggregation: where a PD request waits on each server.

Prefill server: bootstrap queue (handshake with the decode server), prefill queue, forward (the
scheduler patch), KV send (first chunk handed to the transfer backend until the transfer polls done,
with the bytes SGLang's sender counted) and the metadata (first token) written for the decode side.
Decode server: pre-allocation queue (KV allocated, metadata sent to prefill), KV receive (polled
until complete) and the first decode batch, which outputs prefill's token; later tokens are the
scheduler patch's decode span.

Each hook only stamps a mark on the request (``PdMarks``, riding on the scheduler patch's
``RequestTrace``); the spans are written when the request ends on this server. The targets live in
SGLang's ``disaggregation`` modules, which its scheduler imports in every mode; in a unified server
they are never called.
"""
from __future__ import annotations

from collections.abc import Callable

from sglang_tracing import semconv as sc
from sglang_tracing.patches import _targets, request_spans
from sglang_tracing.patches._wrappers import Call, around
from sglang_tracing.patches.state import SchedulerState

_PREFILL = "sglang.srt.disaggregation.prefill"
_DECODE = "sglang.srt.disaggregation.decode"
_BOOTSTRAP_QUEUE = f"{_PREFILL}.PrefillBootstrapQueue"
_PREFILL_MIXIN = f"{_PREFILL}.SchedulerDisaggregationPrefillMixin"
_PREALLOC_QUEUE = f"{_DECODE}.DecodePreallocQueue"
_TRANSFER_QUEUE = f"{_DECODE}.DecodeTransferQueue"
_METADATA = "sglang.srt.disaggregation.utils.MetadataBuffers"
_PREBUILT = "sglang.srt.managers.scheduler_components.batch_result_processor.SchedulerBatchResultProcessor"


class PdMarks:
    """Wall-clock marks (ns, 0 = not reached) of one request on one PD server."""

    __slots__ = ("queued", "queue_len", "left_queue", "bootstrap_done", "kv_send_start", "kv_chunks",
                 "kv_tokens", "metadata", "kv_done", "kv_bytes", "sglang_latency_s", "preallocated",
                 "kv_received", "first_out")

    def __init__(self, queued: int, queue_len: int):
        self.queued = queued  # entered the bootstrap queue (prefill) or pre-allocation queue (decode)
        self.queue_len = queue_len
        self.left_queue = 0  # prefill: popped from the bootstrap queue into the waiting queue
        self.bootstrap_done = 0  # prefill: the decode side's metadata arrived, the sender is ready
        self.kv_send_start = 0
        self.kv_chunks = 0
        self.kv_tokens = 0
        self.metadata: tuple[int, int] | None = None
        self.kv_done = 0
        self.kv_bytes = -1
        self.sglang_latency_s = -1.0
        self.preallocated = 0  # decode: start of the pass that allocated its KV and sent the indices to prefill
        self.kv_received = 0
        self.first_out = 0  # decode: prefill's token handed to the output streamer


def _marks(st: SchedulerState, req) -> PdMarks | None:
    return request_spans.trace_of(st, req).pd


def _room_attrs(req, mode: str) -> dict:
    return {sc.RID: req.rid, sc.PD_MODE: mode, sc.PD_ROOM: _room(req),
            sc.PD_BOOTSTRAP_ADDR: f"{req.bootstrap_host}:{getattr(req, 'bootstrap_port', '')}"}


def _room(req) -> int:
    room = getattr(req, "bootstrap_room", None)
    return int(room) if room is not None else -1


# ---- prefill server ----
def _on_bootstrap_add(st: SchedulerState, call: Call, /, queue, req, *a, **k):
    if req in queue.queue:  # refused requests (too long) never enter it
        request_spans.trace_of(st, req).pd = PdMarks(call.start_ns, len(queue.queue) - 1)


def _on_pop_bootstrapped(st: SchedulerState, call: Call, /, queue, *a, **k):
    popped = call.result[0] if isinstance(call.result, tuple) else call.result
    for req in popped or ():
        marks = _marks(st, req)
        if marks is not None and not marks.left_queue:
            marks.left_queue = call.end_ns


def _on_finalize_bootstrap(st: SchedulerState, call: Call, /, queue, req, *a, **k):
    marks = _marks(st, req)
    if call.result and marks is not None and not marks.bootstrap_done:
        marks.bootstrap_done = call.end_ns


def _on_send_kv_chunk(st: SchedulerState, call: Call, /, sched, req, *a, **k):
    marks = _marks(st, req)
    if marks is None:
        return
    if not marks.kv_send_start:
        marks.kv_send_start = call.start_ns
    marks.kv_chunks += 1
    marks.kv_tokens = int(getattr(req, "start_send_idx", 0) or 0)


def _on_set_buf(st: SchedulerState, call: Call, /, buffers, req, *a, **k):
    marks = _marks(st, req)
    if marks is not None:
        marks.metadata = (call.start_ns, call.end_ns)


def _on_inflight(st: SchedulerState, call: Call, /, sched, *a, **k):
    """Requests whose KV transfer finished (or failed): their spans on this server, written now."""
    rec, done = call.rec, call.result
    for req in done or ():
        trace = request_spans.trace_of(st, req)
        marks = trace.pd
        if marks is None or trace.done:
            continue
        marks.kv_done = call.end_ns
        metric = _transfer_metric(req)
        if metric is not None:
            if metric.transfer_total_bytes is not None:
                marks.kv_bytes = int(metric.transfer_total_bytes)
            if metric.transfer_latency_s is not None:
                marks.sglang_latency_s = float(metric.transfer_latency_s)
        trace.done = True
        detail = request_spans.keep_decision(rec, req, trace, call.end_ns)
        if st.is_leader:
            _emit_prefill(st, rec, req, trace, detail)
    if done:
        rec.flush_soon()


def _transfer_metric(req):
    sender = getattr(req, "disagg_kv_sender", None)
    return sender.get_transfer_metric() if sender is not None and hasattr(sender, "get_transfer_metric") else None


def _emit_prefill(st: SchedulerState, rec, req, trace, detail: str) -> None:
    key = st.trace_key(req.rid)
    marks = trace.pd
    attrs = _room_attrs(req, "prefill")
    request_spans.emit_request(rec, req, trace, detail, key)
    if marks.bootstrap_done or marks.left_queue:
        rec.emit(sc.PD_BOOTSTRAP, marks.queued, marks.bootstrap_done or marks.left_queue,
                 {**attrs, sc.PD_OUTSTANDING: marks.queue_len}, parent=request_spans.ROOT, trace_key=key)
    first_forward = trace.chunks[0].start_ns if trace.chunks else 0
    if marks.left_queue and first_forward:
        rec.emit(sc.PD_PREFILL_QUEUE, marks.left_queue, first_forward, attrs, parent=request_spans.ROOT, trace_key=key)
    if marks.kv_send_start:
        rec.emit(sc.PD_KV_SEND, marks.kv_send_start, marks.kv_done, {
            **attrs, sc.PD_KV_BYTES: marks.kv_bytes, sc.PD_KV_TOKENS: marks.kv_tokens,
            sc.PD_KV_CHUNKS: marks.kv_chunks, sc.PD_SGLANG_LATENCY_S: marks.sglang_latency_s,
            sc.PD_BACKEND: st.pd_backend}, parent=request_spans.ROOT, trace_key=key)
    if marks.metadata:
        rec.emit(sc.PD_METADATA_SEND, marks.metadata[0], marks.metadata[1], attrs, parent=request_spans.ROOT,
                 trace_key=key)
    st.trace_ids.pop(req.rid, None)


# ---- decode server ----
def _on_prealloc_add(st: SchedulerState, call: Call, /, queue, req, is_retracted=False, *a, **k):
    if not is_retracted and any(dr.req is req for dr in queue.queue):
        request_spans.trace_of(st, req).pd = PdMarks(call.start_ns, len(queue.queue) - 1)


def _on_pop_preallocated(st: SchedulerState, call: Call, /, queue, *a, **k):
    """Stamped with the pass's start: its KV indices went to the prefill server during the pass, so
    the prefill server's handshake cannot end before this (the analyzer's clock bound relies on it)."""
    preallocated = call.result[0] if isinstance(call.result, tuple) else call.result
    for decode_req in preallocated or ():
        marks = _marks(st, decode_req.req)
        if marks is not None and not marks.preallocated:
            marks.preallocated = call.start_ns


def _on_pop_transferred(st: SchedulerState, call: Call, /, queue, *a, **k):
    for req in call.result or ():
        marks = _marks(st, req)
        if marks is not None and not marks.kv_received:
            marks.kv_received = call.end_ns


def _on_prebuilt(st: SchedulerState, call: Call, /, processor, batch, *a, **k):
    """Prefill's token went out: the decode span starts here; a one-token request ends here."""
    rec, end = call.rec, call.end_ns
    finished = []
    for req in batch.reqs:
        trace = request_spans.trace_of(st, req)
        if trace.pd is None or trace.pd.first_out:
            continue
        trace.pd.first_out = end
        trace.stamp_outputs(len(req.output_ids), end)  # prefill's token, unless the output streamer stamped it
        if req.finished() and not trace.done:
            trace.done = True
            finished.append(req)
    for req in finished:
        detail = request_spans.keep_decision(rec, req, req._sgt, end)
        if st.is_leader:
            emit_decode_side(st, rec, req, req._sgt, detail)
    if finished:
        rec.flush_soon()


def emit_decode_side(st: SchedulerState, rec, req, trace, detail: str = sc.KEPT_ALL) -> None:
    """A decode-server request's PD spans (the scheduler patch writes its decode span)."""
    marks = trace.pd
    key = st.trace_key(req.rid)
    attrs = _room_attrs(req, "decode")
    root = request_spans.ROOT
    if marks.preallocated:
        rec.emit(sc.PD_PREALLOC, marks.queued, marks.preallocated, {**attrs, sc.PD_OUTSTANDING: marks.queue_len},
                 parent=root, trace_key=key)
    if marks.preallocated and marks.kv_received:
        rec.emit(sc.PD_KV_RECEIVE, marks.preallocated, marks.kv_received, attrs, parent=root, trace_key=key)
    if marks.kv_received and marks.first_out:
        rec.emit(sc.PD_FIRST_DECODE, marks.kv_received, marks.first_out, attrs, parent=root, trace_key=key)
    request_spans.emit_request(rec, req, trace, detail, key)
    st.trace_ids.pop(req.rid, None)


def hooks(st: SchedulerState) -> dict[str, Callable]:
    common = {"state": st, "inject_fault": st.config.inject_fault}
    return {
        f"{_BOOTSTRAP_QUEUE}.add": around("pd_bootstrap_add", after=_on_bootstrap_add, **common),
        f"{_BOOTSTRAP_QUEUE}.pop_bootstrapped": around("pd_pop_bootstrapped", after=_on_pop_bootstrapped, **common),
        f"{_BOOTSTRAP_QUEUE}.finalize_bootstrap": around("pd_finalize_bootstrap", after=_on_finalize_bootstrap,
                                                         **common),
        f"{_PREFILL_MIXIN}.send_kv_chunk": around("pd_send_kv_chunk", after=_on_send_kv_chunk, **common),
        f"{_PREFILL_MIXIN}.process_disagg_prefill_inflight_queue": around("pd_inflight", after=_on_inflight,
                                                                          **common),
        f"{_METADATA}.set_buf": around("pd_set_buf", after=_on_set_buf, **common),
        f"{_PREALLOC_QUEUE}.add": around("pd_prealloc_add", after=_on_prealloc_add, **common),
        f"{_PREALLOC_QUEUE}.pop_preallocated": around("pd_pop_preallocated", after=_on_pop_preallocated, **common),
        f"{_TRANSFER_QUEUE}.pop_transferred": around("pd_pop_transferred", after=_on_pop_transferred, **common),
        f"{_PREBUILT}.process_batch_result_prebuilt": around("pd_prebuilt", after=_on_prebuilt, **common),
    }


def instrument(st: SchedulerState, skipped: list[str]) -> int:
    return _targets.register(hooks(st), skipped)
