"""What a running traced server is doing now, from the records its exporters have written so far.

``LiveState.feed`` takes what ``span_tail.TraceTail.poll`` returned; ``LiveState.snapshot(now_ns)``
computes a typed ``Snapshot`` (``live_types``): requests in flight, the batch, the cache, the GPU and
sliding-window latencies. Pure: no files, no clock of its own, no terminal.

Requests in flight are followed through the batch-level spans, which the scheduler writes as it goes
(per-request spans are written when a request finishes): the tokenize span brings a rid and its
prompt length, cache lookups its cached tokens, each forward span the rids it ran (and, for an
extend, how many prompt tokens each computed), each result-processing span the time its tokens were
produced. A request leaves the table when its root span (finished) arrives.
"""
from __future__ import annotations

import collections
import math

import numpy as np

from sglang_tracing import semconv as sc
from sglang_tracing.analyzer.analyses.live_types import (
    BatchPanel, CachePanel, DetailPanel, GpuPanel, RequestRow, Snapshot, WindowPanel,
)
from sglang_tracing.config import TOP_RECENT_S, TOP_WINDOW_S

_NAME, _SPAN_ID, _START, _END, _ROLE, _RANK, _ATTRS = 3, 1, 4, 5, 6, 8, 9
PREFILL_MODES = ("extend", "mixed", "prefill")
FINISHED_KEPT = 100_000  # finished requests remembered for the window at most
PENDING_KEPT = 10_000  # forwards waiting for their result span and results waiting for their forward, at most
STALE_NS = 300_000_000_000  # a request in flight without a record this long while others keep coming: gone
PIECES_WAIT_NS = 2_000_000_000  # a finished request's spans come from 3 processes, each flushing on its own


def percentile(values, q: float) -> float | None:
    """numpy's percentile (linear between closest ranks), None for no values."""
    return float(np.percentile(values, q)) if len(values) else None


class _InFlight:
    __slots__ = ("rid", "seen_ns", "prompt", "cached", "extended", "chunks", "chunk_max", "token_ns",
                 "first_token_ns", "scheduled_ns", "share", "n_out", "touched_ns")

    def __init__(self, rid: str, seen_ns: int):
        self.rid, self.seen_ns = rid, seen_ns
        self.touched_ns = seen_ns  # its newest record
        self.prompt = self.cached = None
        self.extended = self.chunks = self.chunk_max = self.n_out = 0
        self.token_ns: list[int] = []  # last two token times
        self.first_token_ns = 0
        self.scheduled_ns = 0
        self.share = None

    def add_token(self, t_ns: int) -> None:
        self.first_token_ns = self.first_token_ns or t_ns
        self.token_ns = (self.token_ns + [t_ns])[-2:]

    def prefill_done(self) -> bool:
        if self.prompt is None:
            return self.chunks > 0 and self.n_out > 0
        return self.extended >= self.prompt - (self.cached or 0)


class _Finished:
    __slots__ = ("finished_ns", "ttft_ns", "itls")

    def __init__(self, finished_ns: int, ttft_ns: int | None, itls: np.ndarray):
        self.finished_ns, self.ttft_ns, self.itls = finished_ns, ttft_ns, itls


class LiveState:
    def __init__(self, window_s: float = TOP_WINDOW_S, recent_s: float = TOP_RECENT_S):
        self.window_ns, self.recent_ns = int(window_s * 1e9), int(recent_s * 1e9)
        self.level = None
        self.in_flight: dict[str, _InFlight] = {}
        self.pieces: dict[str, dict] = {}  # rid -> per-request spans of a finishing request, until complete
        self.finished: collections.deque[_Finished] = collections.deque(maxlen=FINISHED_KEPT)
        self.done_rids: set[str] = set()
        self.forwards: dict[str, tuple] = {}  # forward span id -> (start, end, attrs) until its result is seen
        self.results: dict[str, int] = {}  # forward span id -> result processed (token time), until its forward
        self.recent_forwards: collections.deque = collections.deque()  # (end, out_tokens, in_tokens, gpu start/end)
        self.last_forward: tuple | None = None
        self.cache_state: tuple | None = None  # (end_ns, attrs) of the newest cache span
        self.lookups: collections.deque = collections.deque()  # (end_ns, key tokens, matched tokens)
        self.evictions: collections.deque = collections.deque()  # (end_ns, freed tokens)
        self.evictions_total = self.evicted_tokens_total = 0
        self.gpu_notes: dict[str, dict] = {}
        self.nvml: dict | None = None
        self.details: list[dict] = []  # closed detail windows
        self.newest_ns = 0
        self.skipped_bytes = 0
        self.stale = 0  # requests dropped from the table after STALE_NS without a record
        self.chunk_budget = 0  # the most prompt tokens an extend forward ran while a prefill stayed unfinished

    # ---- ingest ----
    def feed(self, appended) -> None:
        self.gpu_notes.update(appended.gpu_notes)
        if appended.nvml:
            newest = max(appended.nvml, key=lambda r: r.get("t_ns", 0))
            if self.nvml is None or newest.get("t_ns", 0) >= self.nvml.get("t_ns", 0):
                self.nvml = newest
        spans = sorted(appended.spans, key=lambda s: s[_END])
        for span in spans:
            self._one(span)

    def _one(self, span) -> None:
        name, start, end, attrs = span[_NAME], span[_START], span[_END], dict(span[_ATTRS])
        self.newest_ns = max(self.newest_ns, end)
        if span[_ROLE] == "scheduler" and span[_RANK] not in (0, None):
            return  # every TP rank runs the same batches: rank 0 tells them
        if name == sc.FORWARD:
            self._forward(span[_SPAN_ID], start, end, attrs)
        elif name == sc.PROCESS_RESULT:
            self._result(attrs.get(sc.FORWARD_SPAN_ID), end)
        elif name == sc.REQUEST_TOKENIZE:
            rid = attrs.get(sc.RID)
            if rid is not None and rid not in self.done_rids:
                req = self._req(rid, start)
                req.seen_ns = min(req.seen_ns, start)
                req.prompt = attrs.get(sc.PROMPT_TOKENS, req.prompt)
        elif name in (sc.CACHE_MATCH, sc.CACHE_INSERT, sc.CACHE_EVICT):
            self._cache(name, end, attrs)
        elif name in (sc.REQUEST, sc.REQUEST_HTTP, sc.REQUEST_DECODE):
            self._request_piece(name, start, end, attrs)
        elif name == sc.DETAIL_WINDOW:
            self.details.append({"start_ns": start, "end_ns": end, "level": attrs.get(sc.DETAIL_LEVEL),
                                 "forwards": attrs.get(sc.DETAIL_SERVED)})

    def _req(self, rid: str, seen_ns: int) -> _InFlight:
        req = self.in_flight.get(rid)
        if req is None:
            req = self.in_flight[rid] = _InFlight(rid, seen_ns)
        req.touched_ns = max(req.touched_ns, seen_ns)
        return req

    def _forward(self, sid: str, start: int, end: int, attrs: dict) -> None:
        mode = str(attrs.get(sc.FORWARD_MODE, ""))
        rids = attrs.get(sc.BATCH_RIDS) or []
        lens = attrs.get(sc.BATCH_EXTEND_LENS) or []
        tokens = attrs.get(sc.BATCH_TOKENS) or len(rids)
        out_tokens = prompt_tokens = 0
        token_ns = self.results.pop(sid, None)
        chunked = False
        for i, rid in enumerate(rids):
            if rid in self.done_rids:
                continue
            req = self._req(rid, start)
            n = lens[i] if i < len(lens) else 0
            req.scheduled_ns = req.scheduled_ns or start
            req.share = (n or 1) / tokens if tokens else None
            if mode in PREFILL_MODES and not req.prefill_done():
                req.extended += n
                req.chunks += 1
                req.chunk_max = max(req.chunk_max, n)
                prompt_tokens += n
                if not req.prefill_done():
                    chunked = True
                    continue  # a chunk that produced no token yet
            req.n_out += 1
            out_tokens += 1
            if token_ns is not None:
                req.add_token(token_ns)
        if chunked:  # this forward filled the server's chunk budget (a request's own chunk may have been less)
            self.chunk_budget = max(self.chunk_budget, sum(lens) if lens else 0)
        if token_ns is None:
            if len(self.forwards) >= PENDING_KEPT:
                self.forwards.clear()
            self.forwards[sid] = rids
        gpu = (attrs.get(sc.GPU_START_NS), attrs.get(sc.GPU_END_NS))
        self.recent_forwards.append((end, out_tokens, prompt_tokens, gpu, attrs.get(sc.GPU_DURATION_NS)))
        if self.last_forward is None or start >= self.last_forward[0]:
            self.last_forward = (start, end, mode, len(rids), tokens, attrs.get(sc.GPU_DURATION_NS),
                                 bool(attrs.get(sc.OVERLAP, False)))

    def _result(self, forward_sid: str | None, end: int) -> None:
        if not forward_sid:
            return
        rids = self.forwards.pop(forward_sid, None)
        if rids is None:
            if len(self.results) >= PENDING_KEPT:
                self.results.clear()
            self.results[forward_sid] = end  # its forward span comes later (GPU time read once complete)
            return
        for rid in rids:
            req = self.in_flight.get(rid)
            if req is not None and req.n_out and req.prefill_done():
                req.add_token(end)

    def _cache(self, name: str, end: int, attrs: dict) -> None:
        if sc.CACHE_EVICTABLE in attrs and (self.cache_state is None or end >= self.cache_state[0]):
            self.cache_state = (end, attrs)
        if name == sc.CACHE_MATCH:
            self.lookups.append((end, attrs.get(sc.CACHE_KEY_TOKENS) or 0, attrs.get(sc.CACHE_MATCHED_TOKENS) or 0))
            rid = attrs.get(sc.RID)
            req = self.in_flight.get(rid) if rid is not None else None
            if req is not None and not req.chunks:
                req.cached = attrs.get(sc.CACHE_MATCHED_TOKENS)
        elif name == sc.CACHE_EVICT:
            freed = attrs.get(sc.CACHE_FREED_TOKENS) or 0
            self.evictions.append((end, freed))
            self.evictions_total += 1
            self.evicted_tokens_total += freed

    def _request_piece(self, name: str, start: int, end: int, attrs: dict) -> None:
        rid = attrs.get(sc.RID)
        if rid is None or rid in self.done_rids:
            return
        self.pieces.setdefault(rid, {})[name] = (start, end, attrs)
        self._try_finish(rid)

    def _try_finish(self, rid: str, now_ns: int | None = None) -> None:
        """Count a request finished once its root, decode and (streamed) HTTP spans are all in, or, at
        ``now_ns``, once its root is older than ``PIECES_WAIT_NS`` (an Engine request has no HTTP span)."""
        pieces = self.pieces[rid]
        root = pieces.get(sc.REQUEST)
        if root is None:
            return
        self.in_flight.pop(rid, None)
        internal = root[2].get(sc.INTERNAL) or sc.internal_by_rid(rid)
        decode, http = pieces.get(sc.REQUEST_DECODE), pieces.get(sc.REQUEST_HTTP)
        waiting = ((decode is None and root[2].get(sc.OUTPUT_TOKENS, 0) > 0)
                   or (http is None and root[2].get(sc.STREAM) is not None))
        if waiting and (now_ns is None or now_ns - root[1] < PIECES_WAIT_NS):
            return  # its other spans are on their way (other processes, other flushes)
        del self.pieces[rid]
        self.done_rids.add(rid)
        if internal:
            return
        times = list(decode[2].get(sc.TOKEN_TIMES) or []) if decode else []
        self.finished.append(_Finished(root[1], _ttft(root, http, times), np.diff(np.asarray(times, dtype=np.int64))))

    # ---- snapshot ----
    def snapshot(self, now_ns: int, trace_dir: str = "") -> Snapshot:
        for rid in list(self.pieces):
            self._try_finish(rid, now_ns)
        for rid in [r.rid for r in self.in_flight.values() if self.newest_ns - r.touched_ns > STALE_NS]:
            del self.in_flight[rid]  # e.g. a server killed mid-request, before this one wrote into the same dir
            self.stale += 1
        recent_from = now_ns - self.recent_ns
        for dq in (self.recent_forwards, self.lookups, self.evictions):
            while dq and dq[0][0] < recent_from:
                dq.popleft()
        while self.finished and self.finished[0].finished_ns < now_ns - self.window_ns:
            self.finished.popleft()
        return Snapshot(
            t_ns=now_ns, trace_dir=trace_dir, newest_record_ns=self.newest_ns,
            requests=sorted((self._row(r, now_ns) for r in self.in_flight.values()), key=lambda r: r.arrived_ns),
            batch=self._batch(), cache=self._cache_panel(), gpu=self._gpu(now_ns), window=self._window(),
            detail=DetailPanel(windows=len(self.details), last=self.details[-1] if self.details else None),
            skipped_bytes=self.skipped_bytes, stale_requests=self.stale)

    def _row(self, req: _InFlight, now: int) -> RequestRow:
        if not req.chunks:
            phase, chunk, chunks = "queued", None, None
        elif not req.prefill_done():
            phase, chunk = "prefill", req.chunks
            left = (req.prompt - (req.cached or 0) - req.extended) if req.prompt is not None else None
            # a request's first chunk may be what was left of a forward's budget beside another's last chunk:
            # the chunks to come are of the budget, not of the largest chunk this request ran so far
            size = max(req.chunk_max, self.chunk_budget)
            chunks = req.chunks + math.ceil(left / size) if left and size else None
        else:
            phase, chunk, chunks = "decode", None, None
        queued_until = req.scheduled_ns or now
        first = req.first_token_ns
        return RequestRow(
            rid=req.rid, phase=phase, chunk=chunk, chunks=chunks, prompt_tokens=req.prompt,
            cached_tokens=req.cached, output_tokens=req.n_out, arrived_ns=req.seen_ns,
            queue_ms=(queued_until - req.seen_ns) / 1e6,
            ttft_ms=(first - req.seen_ns) / 1e6 if first else None,
            itl_ms=(req.token_ns[1] - req.token_ns[0]) / 1e6 if len(req.token_ns) == 2 else None,
            batch_share=req.share if req.chunks else None)

    def _batch(self) -> BatchPanel:
        fwds = self.recent_forwards
        span_s = self.recent_ns / 1e9
        gpu = [(s, e) for _, _, _, (s, e), _ in fwds if s and e]
        idle = None
        if len(gpu) > 1:
            busy = sum(e - s for s, e in gpu)
            idle = max(0.0, 1 - busy / (max(e for _, e in gpu) - min(s for s, _ in gpu)))
        last = self.last_forward
        return BatchPanel(
            mode=last[2] if last else None, size=last[3] if last else None, tokens=last[4] if last else None,
            gpu_ms=last[5] / 1e6 if last and last[5] is not None else None, overlap=last[6] if last else None,
            forwards=len(fwds), output_tok_per_s=sum(f[1] for f in fwds) / span_s,
            prefill_tok_per_s=sum(f[2] for f in fwds) / span_s, gpu_idle_share=idle, over_s=span_s)

    def _cache_panel(self) -> CachePanel:
        attrs = self.cache_state[1] if self.cache_state else {}
        key = sum(k for _, k, _ in self.lookups)
        return CachePanel(
            total=attrs.get(sc.CACHE_TOTAL), used=attrs.get(sc.CACHE_USED), evictable=attrs.get(sc.CACHE_EVICTABLE),
            protected=attrs.get(sc.CACHE_PROTECTED), lookups=len(self.lookups),
            hit_rate=sum(m for _, _, m in self.lookups) / key if key else None,
            evictions=len(self.evictions), evicted_tokens=sum(f for _, f in self.evictions),
            evictions_total=self.evictions_total, evicted_tokens_total=self.evicted_tokens_total,
            over_s=self.recent_ns / 1e9)

    def _gpu(self, now: int) -> GpuPanel:
        sampled = [n for n in self.gpu_notes.values() if n.get("sampling")]
        row = self.nvml
        if not sampled:
            reasons = sorted({str(n.get("reason")) for n in self.gpu_notes.values()})
            return GpuPanel(available=False, reason="no GPU: " + ("; ".join(reasons) or "no gpu-*.json note yet"))
        if row is None:
            return GpuPanel(available=False, reason="sampled, but no NVML sample read yet (nvml-*.jsonl)")
        get = row.get
        return GpuPanel(available=True, reason=str(sampled[0].get("reason", "")), gpu=get("gpu"),
                        sm_util=get(sc.GPM_SM_UTIL), tensor_util=get(sc.GPM_TENSOR_UTIL),
                        dram_util=get(sc.GPM_DRAM_BW_UTIL), gpu_util=get(sc.NVML_GPU_UTIL),
                        power_w=get(sc.NVML_POWER), mem_used=get(sc.NVML_MEM_USED),
                        mem_total=get(sc.NVML_MEM_TOTAL), sample_age_s=(now - get("t_ns", now)) / 1e9)

    def _window(self) -> WindowPanel:
        ttfts = [f.ttft_ns / 1e6 for f in self.finished if f.ttft_ns is not None]
        gaps = [f.itls for f in self.finished if len(f.itls)]
        itls = np.concatenate(gaps) / 1e6 if gaps else []  # every gap of each request: sorted at once
        return WindowPanel(window_s=self.window_ns / 1e9, finished=len(self.finished),
                           ttft_p50_ms=percentile(ttfts, 50), ttft_p99_ms=percentile(ttfts, 99),
                           itl_p50_ms=percentile(itls, 50), itl_p99_ms=percentile(itls, 99))


def _ttft(root, http, token_times: list[int]) -> int | None:
    """User-visible TTFT as ``requests.request_table`` defines it: to the first byte sent of a streamed
    request, none for a non-streamed one or one whose response ended before its first byte (the client
    hung up first); without the HTTP stamp, to the first output delivered."""
    received, attrs = root[0], root[2]
    stream = attrs.get(sc.STREAM, http[2].get(sc.STREAM) if http else None)
    first_byte = http[2].get(sc.FIRST_BYTE_NS) if http else None
    if stream and first_byte:
        return first_byte - received
    if http and http[2].get(sc.HTTP_ENDED_BY, sc.HTTP_END_RESPONSE_SENT) != sc.HTTP_END_RESPONSE_SENT:
        return None
    if stream is False:
        return None
    first = attrs.get(sc.FIRST_OUTPUT_NS) or (token_times[0] if token_times else None)
    return first - received if first else None
