"""The scheduler-process and detokenizer bookkeeping on its own: the patches' hook functions driven
directly with a recorder that keeps what they emit (as opentelemetry-python-contrib tests an
instrumentation against an in-memory exporter) and stand-ins for SGLang's Req, batches and results.
No server; every expected number below is written from the fake inputs."""
from __future__ import annotations

import types

import pytest

from sglang_tracing import semconv as sc
from sglang_tracing.config import TraceConfig
from sglang_tracing.patches import detokenizer, kv_allocation, model_runner, radix_cache, scheduler
from sglang_tracing.patches._wrappers import Call
from sglang_tracing.patches.forward_gpu_times import GpuAnchor, GpuEvents
from sglang_tracing.patches.state import DetokenizerState, SchedulerState
from sglang_tracing.runtime import recorder
from sglang_tracing.runtime.records import PARENT_IS_REQUEST_ROOT
from sglang_tracing.runtime.sink import SpanSink
from span_log import SpanLog


# ---- stand-ins for SGLang objects (only the fields the patches read) ----
class Mode:
    def __init__(self, name: str):
        self.name = name

    def is_extend(self) -> bool:
        return self.name in ("EXTEND", "MIXED")


class Length:
    def to_json(self):
        return {"type": "length", "length": 3}


class Req:
    def __init__(self, rid: str, prompt: list[int]):
        self.rid = rid
        self.origin_input_ids = prompt
        self.output_ids: list[int] = []
        self.prefix_len = 0  # tokens already in the KV cache when the next extend starts
        self.extend_input_len = 0
        self.cached_tokens = 0
        self.finished_reason = None

    def finished(self) -> bool:
        return self.finished_reason is not None


class Batch:
    def __init__(self, mode: str, reqs: list[Req], extend_lens: list[int] | None = None):
        self.forward_mode = Mode(mode)
        self.reqs = reqs
        self.extend_lens = extend_lens
        self.extend_num_tokens = sum(extend_lens) if extend_lens else 0

    def batch_size(self) -> int:
        return len(self.reqs)


class Result:
    """A batch result: the patches know it by identity only."""


def _scheduler(waiting: int = 0):
    return types.SimpleNamespace(waiting_queue=[object()] * waiting, enable_overlap=False)


class Loop:
    """Drives the scheduler hooks the way SGLang's event loop calls them, at times the test chooses."""

    def __init__(self, st: SchedulerState, rec: SpanLog):
        self.st, self.rec, self.sched = st, rec, _scheduler()

    def arrive(self, req: Req, t: int) -> None:
        scheduler._on_request(self.st, Call(self.rec, start_ns=t, end_ns=t + 5), self.sched,
                              types.SimpleNamespace(rid=req.rid))

    def round_input(self, req: Req, t0: int, t1: int) -> None:
        scheduler._on_round_input(self.st, Call(self.rec, start_ns=t0, end_ns=t1), req)

    def schedule(self, batch: Batch | None, t0: int, t1: int, running: Batch | None = None, between=None) -> int:
        sid = scheduler._before_schedule(self.st, Call(self.rec), self.sched)
        if between is not None:
            between()
        plan = types.SimpleNamespace(batch_to_run=batch, running_batch=running)
        scheduler._after_schedule(self.st, Call(self.rec, sid, t0, t1, plan), self.sched)
        return sid

    def run(self, batch: Batch, t0: int, t1: int, forward=None) -> tuple[int, Result]:
        result = Result()
        sid = scheduler._before_run_batch(self.st, Call(self.rec), self.sched, batch)
        if forward is not None:
            forward()
        scheduler._after_run_batch(self.st, Call(self.rec, sid, t0, t1, result), self.sched, batch)
        return sid, result

    def process(self, batch: Batch, result: Result, t0: int, t1: int) -> int:
        sid = scheduler._before_process(self.st, Call(self.rec), self.sched, batch, result)
        scheduler._after_process(self.st, Call(self.rec, sid, t0, t1, None), self.sched, batch, result)
        return sid


def _state(level: str = "batch", **kw) -> SchedulerState:
    return SchedulerState(TraceConfig("/nonexistent", level=level, **kw))


# ---- request lifecycle ----
def _chunked_lifecycle(rec: SpanLog) -> tuple[int, int]:
    """40-token prompt, 16 of them cached, prefilled in two 12-token chunks, then 3 output tokens; the two
    prefill forwards' span ids."""
    st = _state()
    loop = Loop(st, rec)
    req = Req("r1", list(range(100, 140)))
    req.cached_tokens = 16
    loop.arrive(req, 1_000)
    req.prefix_len = 16
    loop.round_input(req, 1_100, 1_150)

    req.extend_input_len = 12
    chunk1 = Batch("EXTEND", [req], [12])
    loop.schedule(chunk1, 2_000, 2_100)
    fwd1, res1 = loop.run(chunk1, 3_000, 3_500)
    loop.process(chunk1, res1, 4_000, 4_200)  # a chunk that does not end the prompt yields no token

    req.prefix_len = 28
    loop.round_input(req, 4_500, 4_550)  # SGLang prepares every round; only the first is the match
    chunk2 = Batch("EXTEND", [req], [12])
    loop.schedule(chunk2, 5_000, 5_100)
    fwd2, res2 = loop.run(chunk2, 6_000, 6_500)
    req.output_ids = [7]
    loop.process(chunk2, res2, 7_000, 7_200)

    for i, t in enumerate((10_000, 12_000)):
        decode = Batch("DECODE", [req])
        loop.schedule(decode, t - 2_000, t - 1_900, running=decode)
        _, res = loop.run(decode, t - 1_000, t - 700)
        req.output_ids = req.output_ids + [8 + i]
        if i == 1:
            req.finished_reason = Length()
        loop.process(decode, res, t, t + 100)
    return fwd1, fwd2


def test_chunked_prefill_then_decode_gives_one_lifecycle():
    rec = SpanLog()
    fwd1, fwd2 = _chunked_lifecycle(rec)
    key, root = "req:r1", PARENT_IS_REQUEST_ROOT
    queued = rec.one(sc.REQUEST_QUEUED)
    assert (queued.start, queued.end, queued.parent, queued.trace_key) == (1_000, 2_000, root, key)
    match = rec.one(sc.REQUEST_PREFIX_MATCH)
    assert (match.start, match.end, match.attrs[sc.MATCHED_TOKENS]) == (1_100, 1_150, 16)
    assert len(match.attrs[sc.PREFIX_DIGESTS]) == 2  # full 16-token blocks of 40 tokens
    prefill = rec.one(sc.REQUEST_PREFILL)
    assert (prefill.start, prefill.end) == (3_000, 7_200)  # first chunk's launch -> first token
    assert prefill.attrs == {sc.RID: "r1", sc.PROMPT_TOKENS: 40, sc.CACHED_TOKENS: 16, sc.CHUNK_TOKENS: 24,
                             sc.FORWARD_SPAN_ID: f"{fwd2:016x}", sc.CHUNK_COUNT: 2, sc.KEEP_REASON: sc.KEPT_ALL}
    assert (prefill.parent, prefill.trace_key) == (root, key)
    chunks = sorted(rec.named(sc.REQUEST_PREFILL_CHUNK), key=lambda s: s.start)
    assert [(c.start, c.end, c.attrs[sc.CHUNK_INDEX], c.attrs[sc.CHUNK_TOKENS], c.attrs[sc.FORWARD_SPAN_ID])
            for c in chunks] == [(3_000, 4_200, 0, 12, f"{fwd1:016x}"), (6_000, 7_200, 1, 12, f"{fwd2:016x}")]
    assert all(c.parent == prefill.span_id and c.trace_key == key for c in chunks)
    decode = rec.one(sc.REQUEST_DECODE)
    assert (decode.start, decode.end) == (7_200, 12_100)
    assert decode.attrs == {sc.RID: "r1", sc.OUTPUT_TOKENS: 3, sc.TOKEN_TIMES: [7_200, 10_100, 12_100],
                            sc.FINISH_REASON: "length", sc.KEEP_REASON: sc.KEPT_ALL}
    assert rec.flushes == 1  # a finished request asks the writer to flush
    assert rec.ended == {"r1": sc.KEPT_ALL}


def test_tail_keep_summary_keeps_figures_not_detail():
    """Tail-based keep on (1 in a million, no threshold crossed): the request keeps its phases and figures
    (gaps 2,900 and 2,000 ns) but not its token times, chunk spans or prefix digests."""
    rec = SpanLog(TraceConfig(trace_dir="unused", keep_one_in=1_000_000, keep_e2e_ms=1))
    _chunked_lifecycle(rec)
    assert rec.ended == {"r1": sc.KEPT_SUMMARY}
    decode = rec.one(sc.REQUEST_DECODE)
    assert (decode.start, decode.end) == (7_200, 12_100) and sc.TOKEN_TIMES not in decode.attrs
    assert (decode.attrs[sc.ITL_P50_NS], decode.attrs[sc.ITL_P99_NS], decode.attrs[sc.ITL_MAX_NS]) == (2_000, 2_900, 2_900)
    assert decode.attrs[sc.KEEP_REASON] == sc.KEPT_SUMMARY and decode.attrs[sc.OUTPUT_TOKENS] == 3
    assert rec.named(sc.REQUEST_PREFILL_CHUNK) == [] and rec.one(sc.REQUEST_PREFILL).attrs[sc.CHUNK_COUNT] == 2
    assert sc.PREFIX_DIGESTS not in rec.one(sc.REQUEST_PREFIX_MATCH).attrs


def test_tail_keep_keeps_a_slow_request_whole():
    """Arrival 1,000 ns, last token 12,100 ns: over a 0.01 us end-to-end threshold, so everything is kept."""
    rec = SpanLog(TraceConfig(trace_dir="unused", keep_one_in=1_000_000, keep_e2e_ms=0.00001))
    _chunked_lifecycle(rec)
    assert rec.ended == {"r1": sc.KEPT_SLOW}
    assert rec.one(sc.REQUEST_DECODE).attrs[sc.TOKEN_TIMES] == [7_200, 10_100, 12_100]
    assert len(rec.named(sc.REQUEST_PREFILL_CHUNK)) == 2


def test_unchunked_prefill_has_no_chunk_spans_and_digests_chain():
    st, rec = _state(), SpanLog()
    loop = Loop(st, rec)
    shared = list(range(16))
    a, b = Req("a", shared + list(range(500, 520))), Req("b", shared + list(range(900, 920)))
    for req, t in ((a, 100), (b, 150)):
        loop.arrive(req, t)
        loop.round_input(req, t + 10, t + 20)
        req.extend_input_len = 36
    batch = Batch("EXTEND", [a, b], [36, 36])
    loop.schedule(batch, 1_000, 1_050)
    fwd, res = loop.run(batch, 2_000, 2_500)
    for req in (a, b):
        req.output_ids = [1]
        req.finished_reason = Length()
    loop.process(batch, res, 3_000, 3_100)

    assert rec.named(sc.REQUEST_PREFILL_CHUNK) == []
    for rid in ("a", "b"):
        prefill = rec.one(sc.REQUEST_PREFILL, rid)
        assert (prefill.start, prefill.end, prefill.attrs[sc.CHUNK_TOKENS]) == (2_000, 3_100, 36)
        decode = rec.one(sc.REQUEST_DECODE, rid)  # one token: decode is the instant of that token
        assert (decode.start, decode.end, decode.attrs[sc.TOKEN_TIMES]) == (3_100, 3_100, [3_100])
    assert [rec.one(sc.REQUEST_QUEUED, r).start for r in ("a", "b")] == [100, 150]
    da = rec.one(sc.REQUEST_PREFIX_MATCH, "a").attrs[sc.PREFIX_DIGESTS]
    db = rec.one(sc.REQUEST_PREFIX_MATCH, "b").attrs[sc.PREFIX_DIGESTS]
    assert len(da) == len(db) == 2 and da[0] == db[0] and da[1] != db[1]  # equal first block only


def test_decode_riding_in_a_mixed_batch_is_not_a_prefill_chunk():
    st, rec = _state(), SpanLog()
    loop = Loop(st, rec)
    old, new = Req("old", list(range(8))), Req("new", list(range(50, 60)))
    loop.arrive(old, 10)
    old.extend_input_len = 8
    first = Batch("EXTEND", [old], [8])
    loop.schedule(first, 100, 110)
    _, res = loop.run(first, 200, 300)
    old.output_ids = [1]
    loop.process(first, res, 400, 450)

    loop.arrive(new, 500)
    old.prefix_len, old.extend_input_len = 8, 1  # its next token: position 9 of 8 prompt tokens
    new.extend_input_len = 10
    mixed = Batch("MIXED", [old, new], [1, 10])
    loop.schedule(mixed, 600, 650)
    fwd, res = loop.run(mixed, 700, 900)
    old.output_ids, new.output_ids = [1, 2], [5]
    old.finished_reason = new.finished_reason = Length()
    loop.process(mixed, res, 1_000, 1_100)

    assert rec.one(sc.REQUEST_PREFILL, "old").attrs[sc.CHUNK_TOKENS] == 8  # its own extend only
    assert rec.one(sc.REQUEST_DECODE, "old").attrs[sc.TOKEN_TIMES] == [450, 1_100]
    new_prefill = rec.one(sc.REQUEST_PREFILL, "new")
    assert (new_prefill.start, new_prefill.end, new_prefill.attrs[sc.CHUNK_TOKENS]) == (700, 1_100, 10)
    assert new_prefill.attrs[sc.FORWARD_SPAN_ID] == f"{fwd:016x}"
    sched = rec.named(sc.SCHEDULE)
    assert [s.attrs[sc.SCHED_NEW_SEQS] for s in sched] == [1, 1]  # "old" was scheduled before


# ---- batch spans ----
def test_forward_process_and_schedule_spans_describe_their_batch():
    st, rec = _state(), SpanLog()
    st.policy = "lpm"
    loop = Loop(st, rec)
    loop.sched = _scheduler(waiting=5)
    reqs = [Req(f"q{i}", list(range(20))) for i in range(3)]
    for r in reqs:
        r.extend_input_len = 20
    prefill = Batch("EXTEND", reqs, [20, 20, 20])
    sched1 = loop.schedule(prefill, 1_000, 1_040)
    fwd1, res1 = loop.run(prefill, 2_000, 2_600)
    proc1 = loop.process(prefill, res1, 3_000, 3_050)
    decode = Batch("DECODE", reqs[:2])
    loop.schedule(decode, 4_000, 4_010, running=decode)
    fwd2, res2 = loop.run(decode, 5_000, 5_200)
    loop.process(decode, res2, 6_000, 6_020)

    forwards = rec.named(sc.FORWARD)
    assert [(f.span_id, f.start, f.end) for f in forwards] == [(fwd1, 2_000, 2_600), (fwd2, 5_000, 5_200)]
    assert forwards[0].attrs == {sc.FORWARD_MODE: "extend", sc.BATCH_SIZE: 3, sc.BATCH_TOKENS: 60,
                                 sc.BATCH_RIDS: ["q0", "q1", "q2"], sc.OVERLAP: False,
                                 sc.BATCH_EXTEND_LENS: [20, 20, 20]}
    assert forwards[1].attrs == {sc.FORWARD_MODE: "decode", sc.BATCH_SIZE: 2, sc.BATCH_TOKENS: 2,
                                 sc.BATCH_RIDS: ["q0", "q1"], sc.OVERLAP: False}
    processed = rec.named(sc.PROCESS_RESULT)
    assert [p.attrs[sc.FORWARD_SPAN_ID] for p in processed] == [f"{fwd1:016x}", f"{fwd2:016x}"]
    assert (processed[0].span_id, processed[0].start, processed[0].end) == (proc1, 3_000, 3_050)
    s1, s2 = rec.named(sc.SCHEDULE)
    assert (s1.span_id, s1.start, s1.end) == (sched1, 1_000, 1_040)
    assert s1.attrs == {sc.SCHED_POLICY: "lpm", sc.FORWARD_MODE: "extend", sc.BATCH_SIZE: 3, sc.BATCH_TOKENS: 60,
                        sc.SCHED_NEW_SEQS: 3, sc.SCHED_RUNNING: 0, sc.SCHED_QUEUED: 5,
                        sc.SCHED_CACHE_LOOKUP_NS: 0, sc.SCHED_KV_ALLOC_NS: 0, sc.ITERATION: 1}
    assert (s2.attrs[sc.ITERATION], s2.attrs[sc.SCHED_RUNNING], s2.attrs[sc.BATCH_TOKENS]) == (2, 2, 2)
    assert st.launched == {}  # every launched forward's result was processed


def test_an_idle_pass_emits_nothing_and_counts_no_iteration():
    st, rec = _state(), SpanLog()
    loop = Loop(st, rec)
    loop.schedule(None, 10, 20)
    assert rec.spans == [] and st.iteration == 0


class _Cache:
    token_to_kv_pool_allocator = types.SimpleNamespace(size=1_000, available_size=lambda: 400)

    def evictable_size(self):
        return 250

    def protected_size(self):
        return 50


def test_cache_lookups_and_kv_allocation_sum_per_scheduling_pass():
    st, rec = _state(), SpanLog()
    loop = Loop(st, rec)
    cache, req = _Cache(), Req("c", list(range(32)))
    match = types.SimpleNamespace(device_prefix_len=16)
    params = types.SimpleNamespace(key=req.origin_input_ids, req=req)

    def lookups_and_allocation():
        radix_cache._on_match(st, Call(rec, None, 100, 130, match), cache, params)
        radix_cache._on_match(st, Call(rec, None, 200, 250, match), cache, params)
        kv_allocation._enter("alloc_for_extend")(st, Call(rec))
        radix_cache._on_evict(st, Call(rec, None, 310, 320, types.SimpleNamespace(num_tokens_evicted=64)), cache,
                              types.SimpleNamespace(num_tokens=40))
        kv_allocation._leave(st, Call(rec, None, 300, 340))

    req.extend_input_len = 32
    batch = Batch("EXTEND", [req], [32])
    loop.schedule(batch, 1_000, 1_400, between=lookups_and_allocation)
    loop.schedule(Batch("DECODE", [req]), 2_000, 2_010)  # a pass without lookups starts from zero

    first, second = rec.named(sc.SCHEDULE)
    assert (first.attrs[sc.SCHED_CACHE_LOOKUP_NS], first.attrs[sc.SCHED_KV_ALLOC_NS]) == (30 + 50, 40)
    assert (second.attrs[sc.SCHED_CACHE_LOOKUP_NS], second.attrs[sc.SCHED_KV_ALLOC_NS]) == (0, 0)
    evict = rec.one(sc.CACHE_EVICT)
    assert evict.attrs == {sc.CACHE_REQUESTED_TOKENS: 40, sc.CACHE_FREED_TOKENS: 64,
                           sc.CACHE_TRIGGER: "alloc_for_extend", sc.CACHE_TOTAL: 1_000, sc.CACHE_USED: 600,
                           sc.CACHE_EVICTABLE: 250, sc.CACHE_PROTECTED: 50, sc.CACHE_CLASS: "_Cache"}
    lookups = rec.named(sc.CACHE_MATCH)
    assert [(m.start, m.end, m.attrs[sc.CACHE_MATCHED_TOKENS], m.attrs[sc.CACHE_KEY_TOKENS], m.attrs[sc.RID])
            for m in lookups] == [(100, 130, 16, 32, "c"), (200, 250, 16, 32, "c")]
    assert st.kv_alloc_phase == ""


def test_model_forward_is_a_child_of_the_forward_that_launched_it():
    st, rec = _state(), SpanLog()
    loop = Loop(st, rec)
    req = Req("m", list(range(4)))
    req.extend_input_len = 4
    batch = Batch("EXTEND", [req], [4])
    forward_batch = types.SimpleNamespace(forward_mode=Mode("EXTEND"), batch_size=1)
    assert model_runner._before_forward(st, Call(rec), object()) is None  # outside run_batch: warm-up, not served

    def model_forward():
        token = model_runner._before_forward(st, Call(rec), object())
        model_runner._after_forward(st, Call(rec, token, 2_100, 2_400), object(), forward_batch)

    fwd, _ = loop.run(batch, 2_000, 2_500, forward=model_forward)
    inner = rec.one(sc.MODEL_FORWARD)
    assert (inner.parent, inner.start, inner.end) == (fwd, 2_100, 2_400)
    assert inner.attrs == {sc.FORWARD_MODE: "extend", sc.BATCH_SIZE: 1}
    assert st.current_forward == 0 and st.windows.seen == 1


def test_a_non_leader_rank_writes_batch_spans_only():
    st, rec = _state(), SpanLog()
    st.is_leader = False
    _one_request(Loop(st, rec))
    assert {s.name for s in rec.spans} == {sc.SCHEDULE, sc.FORWARD, sc.PROCESS_RESULT}
    assert rec.flushes == 0


def test_request_level_writes_request_spans_only():
    st, rec = _state(level="request"), SpanLog()
    _one_request(Loop(st, rec))
    assert {s.name for s in rec.spans} == {sc.REQUEST_QUEUED, sc.REQUEST_PREFILL, sc.REQUEST_DECODE}


def _one_request(loop: Loop) -> None:
    req = Req("x", list(range(6)))
    loop.arrive(req, 1)
    req.extend_input_len = 6
    batch = Batch("EXTEND", [req], [6])
    loop.schedule(batch, 10, 11)
    _, res = loop.run(batch, 20, 30)
    req.output_ids, req.finished_reason = [3], Length()
    loop.process(batch, res, 40, 50)


# ---- GPU time of forward spans ----
class _Event:
    def __init__(self, t_ms: float, done: bool = True):
        self.t_ms, self.done = t_ms, done

    def query(self) -> bool:
        return self.done

    def elapsed_time(self, other: _Event) -> float:
        return other.t_ms - self.t_ms


def test_forward_spans_wait_for_their_gpu_events_without_blocking():
    st, rec = _state(), SpanLog()
    times = st.gpu_times
    times.anchor = GpuAnchor(_Event(0.0), 1_000_000)
    first, second = GpuEvents(_Event(1.0), _Event(3.5)), GpuEvents(_Event(4.0), _Event(4.25, done=False))
    times.attach(11, first)
    times.attach(12, second)
    times.emit_forward(rec, 11, 10, 20, {})
    times.emit_forward(rec, 12, 30, 40, {})
    times.emit_forward(rec, 13, 50, 60, {})  # no events (a CPU forward): emitted at once
    assert [s.span_id for s in rec.spans] == [13]
    times.flush(rec)
    assert [s.span_id for s in rec.spans] == [13, 11]  # the second's end event has not completed
    assert rec.spans[1].attrs == {sc.GPU_DURATION_NS: 2_500_000, sc.GPU_START_NS: 2_000_000,
                                  sc.GPU_END_NS: 4_500_000}
    second.end.done = True
    times.flush(rec)
    assert rec.spans[2].span_id == 12 and rec.spans[2].attrs[sc.GPU_DURATION_NS] == 250_000


def test_forward_events_are_taken_again_only_after_their_span_read_them():
    st, rec = _state(), SpanLog()
    times = st.gpu_times
    cuda = types.SimpleNamespace(Event=lambda enable_timing=False: _Event(1.0, done=False))
    pending = times.take_events(cuda)
    times.attach(21, pending)
    times.emit_forward(rec, 21, 0, 1, {})
    times.flush(rec)  # not completed: its pair stays with its span
    fresh = times.take_events(cuda)
    assert fresh is not pending and {id(fresh.start), id(fresh.end)}.isdisjoint({id(pending.start), id(pending.end)})
    pending.end.done = True
    times.flush(rec)
    assert [s.span_id for s in rec.spans] == [21] and times.take_events(cuda) is pending


# ---- detokenizer ----
def test_detokenizer_spans_share_batch_time_among_its_requests():
    st, rec = DetokenizerState(TraceConfig("/nonexistent")), SpanLog()

    def batch(rids, finished, t0, t1):
        recv = types.SimpleNamespace(rids=rids, finished_reasons=[{"type": "stop"} if r in finished else None
                                                                  for r in rids])
        detokenizer._on_batch(st, Call(rec, None, t0, t1), object(), recv)

    batch(["a", "b"], (), 0, 100)  # 50 each
    batch(["a", "b", "c"], ("a",), 200, 260)  # 20 each; a finishes
    batch(["b", "c"], ("b", "c"), 300, 340)  # 20 each
    batch([], (), 400, 410)  # nothing to detokenize: no span
    a, b, c = (rec.one(sc.REQUEST_DETOKENIZE, rid) for rid in "abc")
    assert (a.start, a.end, a.attrs[sc.DETOKENIZE_CALLS], a.attrs[sc.DETOKENIZE_SHARE_NS]) == (0, 260, 2, 70)
    assert (b.start, b.end, b.attrs[sc.DETOKENIZE_CALLS], b.attrs[sc.DETOKENIZE_SHARE_NS]) == (0, 340, 3, 90)
    assert (c.start, c.end, c.attrs[sc.DETOKENIZE_CALLS], c.attrs[sc.DETOKENIZE_SHARE_NS]) == (200, 340, 2, 40)
    assert all(s.parent == PARENT_IS_REQUEST_ROOT and s.trace_key == f"req:{s.attrs[sc.RID]}" for s in (a, b, c))
    assert [s.attrs[sc.BATCH_SIZE] for s in rec.named(sc.DETOKENIZE_BATCH)] == [2, 3, 2]
    assert st.per_request == {}  # finished requests leave nothing behind


# ---- the registered hooks: state bound, rules kept ----
def test_registered_hooks_bind_the_state_and_keep_the_hook_rules():
    """Through the AROUND wrappers SGLang calls: results pass through, a raising original still resets
    the forward in progress, and a failure of our own is counted while the request goes on."""
    st, rec, before = _state(), SpanLog(), recorder.active()
    with recorder.use(rec):
        _drive_registered_scheduler_hooks(st, rec)
    assert recorder.active() is before  # the test's span log is gone with the block


def _drive_registered_scheduler_hooks(st: SchedulerState, rec: SpanLog) -> None:
    hooks = {target.rsplit(".", 1)[1]: hook for target, hook in scheduler.hooks(st).items()}
    sched, req = _scheduler(), Req("w", list(range(5)))
    hooks["handle_generate_request"](lambda s, r: "queued", sched, types.SimpleNamespace(rid="w"))
    req.extend_input_len = 5
    batch = Batch("EXTEND", [req], [5])
    plan = types.SimpleNamespace(batch_to_run=batch, running_batch=None)
    assert hooks["get_next_batch_to_run"](lambda s: plan, sched) is plan
    result = Result()
    assert hooks["run_batch"](lambda s, b: result, sched, batch) is result

    def fails(s, b):
        assert st.current_forward != 0  # the model runner's forward would find its parent
        raise RuntimeError("theirs")

    with pytest.raises(RuntimeError, match="theirs"):
        hooks["run_batch"](fails, sched, batch)
    assert st.current_forward == 0
    req.output_ids, req.finished_reason = [1], Length()
    assert hooks["process_batch_result"](lambda s, b, r: "done", sched, batch, result) == "done"
    names = [s.name for s in rec.spans]
    assert names.count(sc.FORWARD) == 1 and {sc.REQUEST_QUEUED, sc.REQUEST_PREFILL, sc.REQUEST_DECODE} <= set(names)
    assert rec.one(sc.REQUEST_QUEUED).end == rec.one(sc.SCHEDULE).start

    no_reqs = types.SimpleNamespace(forward_mode=Mode("DECODE"))  # our code fails on it, SGLang's does not
    assert hooks["process_batch_result"](lambda s, b, r: "ok", sched, no_reqs, Result()) == "ok"
    assert rec.failures == [("process_batch_result", "AttributeError")]


def test_an_eviction_outside_allocation_names_the_function_that_asked():
    """Through the registered AROUND wrapper: the trigger is the first caller outside the cache code
    and our own hook frames."""
    st, rec = _state(), SpanLog()
    evict = radix_cache.hooks(st)["sglang.srt.mem_cache.radix_cache.RadixCache.evict"]
    freed = types.SimpleNamespace(num_tokens_evicted=8)

    def retract_decode():
        return evict(lambda cache, params: freed, _Cache(), types.SimpleNamespace(num_tokens=8))

    with recorder.use(rec):
        assert retract_decode() is freed
    assert rec.one(sc.CACHE_EVICT).attrs[sc.CACHE_TRIGGER] == "retract_decode"


def test_the_span_log_and_the_recorder_are_both_span_sinks():
    """The hooks need ``emit``, ``flush_soon`` and ``hook_failed``: the test stand-in has what the real one has."""
    assert isinstance(SpanLog(), SpanSink) and issubclass(recorder.Recorder, SpanSink)
    assert not isinstance(object(), SpanSink)
