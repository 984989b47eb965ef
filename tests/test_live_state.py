"""The live view's bookkeeping on records laid out by hand (the CPU server tests drive it on real ones):
chunked prefill, first token, gaps, finished requests, another TP rank's spans, a request gone stale."""
from __future__ import annotations

from sglang_tracing import semconv as sc
from sglang_tracing.analyzer.analyses.live_state import STALE_NS, LiveState, percentile
from sglang_tracing.analyzer.loaders.span_tail import Appended

MS = 1_000_000
_ids = iter(range(1, 10**6))


def span(name: str, start_ms: float, end_ms: float, attrs: dict, role: str = "scheduler", rank=0, sid=None):
    return ("t", sid or f"{next(_ids):016x}", None, name, int(start_ms * MS), int(end_ms * MS), role, 1, rank,
            list(attrs.items()))


def forward(sid: str, start_ms, end_ms, mode, rids, lens=None, rank=0):
    attrs = {sc.FORWARD_MODE: mode, sc.BATCH_RIDS: rids, sc.BATCH_TOKENS: sum(lens) if lens else len(rids)}
    if lens:
        attrs[sc.BATCH_EXTEND_LENS] = lens
    return span(sc.FORWARD, start_ms, end_ms, attrs, rank=rank, sid=sid)


def result(forward_sid: str, end_ms):
    return span(sc.PROCESS_RESULT, end_ms - 0.5, end_ms, {sc.FORWARD_SPAN_ID: forward_sid})


def feed(state: LiveState, *spans) -> None:
    state.feed(Appended(spans=list(spans)))


def test_a_request_through_chunked_prefill_and_decode():
    state = LiveState(window_s=60)
    feed(state, span(sc.REQUEST_TOKENIZE, 0, 1, {sc.RID: "a", sc.PROMPT_TOKENS: 200}, role="tokenizer"),
         span(sc.CACHE_MATCH, 2, 3, {sc.RID: "a", sc.CACHE_KEY_TOKENS: 200, sc.CACHE_MATCHED_TOKENS: 8,
                                     sc.CACHE_TOTAL: 1000, sc.CACHE_USED: 300, sc.CACHE_EVICTABLE: 50,
                                     sc.CACHE_PROTECTED: 8}))
    row = state.snapshot(5 * MS).requests[0]
    assert (row.phase, row.prompt_tokens, row.cached_tokens, row.queue_ms) == ("queued", 200, 8, 5.0)
    feed(state, forward("f1", 10, 20, "extend", ["a"], [64]), result("f1", 22))
    row = state.snapshot(23 * MS).requests[0]
    assert row.phase_text == "prefill 1/3" and row.queue_ms == 10.0  # 200 - 8 - 64 = 128 left: 2 more chunks
    feed(state, forward("f2", 30, 40, "extend", ["a"], [64]), result("f2", 42),
         forward("f3", 50, 60, "extend", ["a", "b"], [64, 1]), result("f3", 62),  # the last chunk: first token
         forward("f4", 70, 75, "decode", ["a", "b"]), result("f4", 77))
    snap = state.snapshot(80 * MS)
    row = next(r for r in snap.requests if r.rid == "a")
    assert (row.phase, row.output_tokens, row.ttft_ms, row.itl_ms) == ("decode", 2, 62.0, 15.0)
    assert row.batch_share == 0.5  # one of the last forward's two tokens
    assert snap.batch.mode == "decode" and snap.batch.size == 2
    assert snap.cache.hit_rate == 8 / 200 and snap.cache.total == 1000


def test_finished_requests_fill_the_window_internal_ones_do_not():
    state = LiveState(window_s=60)
    probe = sc.READINESS_RID_PREFIX + "x"
    for rid, first_byte, times in (("a", 30, [20, 25, 35]), ("b", 50, [40, 60]), (probe, 5, [4])):
        feed(state,
             span(sc.REQUEST, 0, 100, {sc.RID: rid, sc.STREAM: True, sc.OUTPUT_TOKENS: len(times)}, role="tokenizer"),
             span(sc.REQUEST_HTTP, 0, 101, {sc.RID: rid, sc.STREAM: True, sc.FIRST_BYTE_NS: first_byte * MS},
                  role="tokenizer"),
             span(sc.REQUEST_DECODE, times[0], times[-1], {sc.RID: rid, sc.TOKEN_TIMES: [t * MS for t in times]}))
    window = state.snapshot(200 * MS).window
    assert window.finished == 2 and window.ttft_p50_ms == 40.0  # first bytes at 30 and 50 ms
    assert window.itl_p50_ms == percentile([5.0, 10.0, 20.0], 50) == 10.0
    assert state.snapshot(200 * MS + 61 * 10**9).window.finished == 0  # out of the window


def test_a_hung_up_request_has_a_ttft_only_if_a_byte_reached_the_socket():
    """Both clients hung up (their HTTP spans say so); one had its first byte at 30 ms, the other none,
    though its first output was delivered at 20 ms: only the first has a TTFT."""
    state = LiveState(window_s=60)
    for rid, first_byte in (("sent", 30), ("none", None)):
        http = {sc.RID: rid, sc.STREAM: True, sc.HTTP_ENDED_BY: sc.HTTP_END_DISCONNECT}
        if first_byte:
            http[sc.FIRST_BYTE_NS] = first_byte * MS
        feed(state, span(sc.REQUEST, 0, 100, {sc.RID: rid, sc.STREAM: True, sc.OUTPUT_TOKENS: 2,
                                              sc.FIRST_OUTPUT_NS: 20 * MS}, role="tokenizer"),
             span(sc.REQUEST_HTTP, 0, 40, http, role="tokenizer"),
             span(sc.REQUEST_DECODE, 20, 25, {sc.RID: rid, sc.TOKEN_TIMES: [20 * MS, 25 * MS]}))
    window = state.snapshot(200 * MS).window
    assert window.finished == 2 and window.ttft_p50_ms == window.ttft_p99_ms == 30.0
    assert window.itl_p50_ms == 5.0  # both got tokens: both in the ITL figures


def test_other_ranks_are_left_out_and_stale_requests_leave():
    state = LiveState()
    feed(state, forward("r1", 0, 5, "extend", ["a"], [10], rank=1))
    assert state.snapshot(6 * MS).requests == []
    feed(state, forward("f1", 0, 5, "extend", ["a"], [10]),
         span(sc.SCHEDULE, STALE_NS / MS + 10, STALE_NS / MS + 11, {}))  # others' records keep coming
    snap = state.snapshot(STALE_NS + 20 * MS)
    assert snap.requests == [] and snap.stale_requests == 1


def test_gpu_panel_shows_the_newest_sample():
    state = LiveState()
    note = {"process": "scheduler-tp0-pid1", "sampling": True, "reason": "NVML and GPM available"}
    rows = [{"t_ns": t * MS, "gpu": 0, sc.GPM_SM_UTIL: sm, sc.GPM_TENSOR_UTIL: 40.0, sc.GPM_DRAM_BW_UTIL: 70.0,
             sc.NVML_POWER: 512.5, sc.NVML_MEM_USED: 2**30, sc.NVML_MEM_TOTAL: 2**31}
            for t, sm in ((100, 10.0), (200, 90.0))]
    state.feed(Appended(nvml=rows[::-1], gpu_notes={"scheduler-tp0-pid1": note}))
    gpu = state.snapshot(250 * MS).gpu
    assert gpu.available and (gpu.sm_util, gpu.power_w, gpu.mem_used, gpu.sample_age_s) == (90.0, 512.5, 2**30, 0.05)


def test_a_first_chunk_cut_short_counts_chunks_of_the_budget():
    """Chunked at 64: "b" gets the 24 tokens "a"'s last chunk left of a forward, then full chunks."""
    state = LiveState(window_s=60)
    feed(state, span(sc.REQUEST_TOKENIZE, 0, 1, {sc.RID: "a", sc.PROMPT_TOKENS: 104}, role="tokenizer"),
         span(sc.REQUEST_TOKENIZE, 0, 1, {sc.RID: "b", sc.PROMPT_TOKENS: 200}, role="tokenizer"),
         forward("f1", 10, 20, "extend", ["a"], [64]), result("f1", 22),
         forward("f2", 30, 40, "extend", ["a", "b"], [40, 24]), result("f2", 42))
    row = next(r for r in state.snapshot(43 * MS).requests if r.rid == "b")
    assert row.phase_text == "prefill 1/4"  # 176 left: 3 more chunks of 64, not 8 of 24
