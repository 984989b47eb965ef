"""Tail-based keep: which requests keep their full detail, and which batch records are written.

Decided when a request ends, in the process that recorded it: full detail (every token's time, prefill
chunk spans, prefix digests) when it failed or was aborted, was slow (over a threshold, or over a
percentile of the recent window), or is 1 in N (by its rid, so every process and TP rank agrees);
otherwise its spans carry the summary figures only. Batch records (schedule, forward, result, model
forward, cache operations) are kept all, 1 in N forwards, or only those that ran a kept request.
"""
from __future__ import annotations

import bisect
import collections
import zlib

from sglang_tracing import semconv as sc
from sglang_tracing.config import BATCH_KEEP_ALL, BATCH_KEEP_KEPT, TraceConfig

MIN_WINDOW = 20  # requests seen before a percentile means anything
MAX_HELD = 100_000  # batch records held for undecided requests; beyond, the oldest are written (kept)
# requests decided lately, remembered for forwards recorded after their requests ended: with overlap
# scheduling the next batch, launched before a request's last result was processed, still runs it, and a
# forward span waits for its CUDA end event, so it can reach the recorder after the decision
MAX_DECIDED_REMEMBERED = 20_000
MAX_SETTLED_REMEMBERED = 1_000  # forwards settled lately: their result spans may still come


def one_in(key: str | int, n: int) -> bool:
    """Deterministic 1-in-n choice: the same rid (or span id) gives the same answer in every process."""
    if n <= 1:
        return True
    value = key if isinstance(key, int) else zlib.crc32(key.encode())
    return value % n == 0


class _Window:
    """The last ``size`` values, sorted, for a percentile of the recent window."""

    def __init__(self, size: int):
        self._order: collections.deque = collections.deque()
        self._sorted: list[int] = []
        self._size = size

    def above(self, value: int, percentile: float) -> bool:
        """Whether ``value`` is over the window's percentile (before it joins the window)."""
        over = (len(self._sorted) >= MIN_WINDOW
                and value > self._sorted[min(len(self._sorted) - 1, int(len(self._sorted) * percentile / 100))])
        self._order.append(value)
        bisect.insort(self._sorted, value)
        if len(self._order) > self._size:
            del self._sorted[bisect.bisect_left(self._sorted, self._order.popleft())]
        return over


class RequestKeep:
    """The keep decision for each finished request of one process."""

    def __init__(self, config: TraceConfig):
        self.config = config
        self.enabled = config.tail_keep
        ms = 1_000_000
        self._limits = (config.keep_ttft_ms * ms, config.keep_itl_ms * ms, config.keep_e2e_ms * ms)
        self._windows = [_Window(config.keep_window) for _ in range(3)] if config.keep_percentile else None
        self.kept = collections.Counter()  # detail value -> requests

    def decide(self, rid: str, failed: bool, ttft_ns: int | None, max_itl_ns: int | None, e2e_ns: int) -> str:
        """One of the semconv KEPT_* values: why this request keeps its full detail, or KEPT_SUMMARY."""
        detail = self._decide(rid, failed, (ttft_ns, max_itl_ns, e2e_ns))
        self.kept[detail] += 1
        return detail

    def _decide(self, rid: str, failed: bool, figures: tuple) -> str:
        if not self.enabled:
            return sc.KEPT_ALL
        slow = any(limit and value is not None and value > limit for value, limit in zip(figures, self._limits))
        if self._windows is not None:  # every request joins the windows, whatever else decides
            pct = self.config.keep_percentile
            over = [value is not None and w.above(value, pct) for w, value in zip(self._windows, figures)]
            if not slow and not failed and any(over):
                return sc.KEPT_SLOW_PERCENTILE
        if failed:
            return sc.KEPT_FAILED
        if slow:
            return sc.KEPT_SLOW
        if self.config.keep_one_in > 1 and one_in(rid, self.config.keep_one_in):
            return sc.KEPT_SAMPLED
        return sc.KEPT_SUMMARY


BATCH_RECORDS = frozenset({sc.SCHEDULE, sc.FORWARD, sc.PROCESS_RESULT, sc.MODEL_FORWARD, sc.CACHE_MATCH,
                           sc.CACHE_INSERT, sc.CACHE_EVICT, sc.DETOKENIZE_BATCH})


class BatchKeep:
    """Which batch records go out. ``offer(record)`` returns the records to write now (possibly others
    held earlier, possibly none); ``decided(rid, kept)`` settles held records once their requests end.

    1 in N: a forward by its span id, its model forward and result processing with it, a schedule pass
    by its iteration; cache and detokenizer batches by their own span id.
    kept: a forward is held until every request it ran has ended, then written if any kept its detail;
    its model forward and result processing follow it; other batch records (schedule passes, cache
    operations) follow the next forward recorded after them. Detokenizer batches (a process that never
    learns the decisions) are all written.
    """

    def __init__(self, mode: str):
        self.mode = mode
        self.every = int(mode) if mode.isdigit() else 0
        self.dropped = 0  # batch records left out on purpose (not a loss)
        # kept mode: forward span id -> [requests not ended, any kept, records], oldest first
        self._groups: collections.OrderedDict[int, list] = collections.OrderedDict()
        self._by_rid: dict[str, list[int]] = {}  # rid -> forwards that ran it, still held
        self._waiting: list = []  # records that follow the next forward
        self._decided: collections.OrderedDict[str, bool] = collections.OrderedDict()  # rid -> kept, latest last
        self._settled: collections.OrderedDict[int, bool] = collections.OrderedDict()  # forward span id -> written
        self.held = 0

    @property
    def filtering(self) -> bool:
        return self.mode != BATCH_KEEP_ALL and self.mode != "1"

    def offer(self, record: tuple) -> list[tuple]:
        name = record[0]
        if name not in BATCH_RECORDS:
            return [record]
        if self.every:
            keep = one_in(self._key(record), self.every)
            if not keep:
                self.dropped += 1
            return [record] if keep else []
        return self._hold(record) if self.mode == BATCH_KEEP_KEPT else [record]

    @staticmethod
    def _key(record: tuple) -> int:
        name, _, _, span_id, parent, _, attrs, _ = record
        if name == sc.FORWARD:
            return span_id
        if name == sc.MODEL_FORWARD:
            return parent
        if name == sc.PROCESS_RESULT:
            return int(attrs.get(sc.FORWARD_SPAN_ID, "0"), 16)
        if name == sc.SCHEDULE:
            return attrs.get(sc.ITERATION, span_id)
        return span_id

    # ---- kept mode ----
    def _hold(self, record: tuple) -> list[tuple]:
        name = record[0]
        self.held += 1
        if name == sc.FORWARD:
            rids = set(record[6].get(sc.BATCH_RIDS, ()))
            ended = rids.intersection(self._decided)
            open_rids = rids - ended
            self._groups[record[3]] = [len(open_rids), any(self._decided[r] for r in ended),
                                       [*self._waiting, record]]
            self._waiting = []
            for rid in open_rids:
                self._by_rid.setdefault(rid, []).append(record[3])
            if not rids:
                return self._settle(record[3], True)
            if not open_rids:  # every request it ran had ended already
                group = self._groups[record[3]]
                return [*self._settle(record[3], group[1]), *self._over_cap()]
        elif name in (sc.MODEL_FORWARD, sc.PROCESS_RESULT) and self._key(record) in self._groups:
            self._groups[self._key(record)][2].append(record)
        elif name in (sc.MODEL_FORWARD, sc.PROCESS_RESULT) and self._key(record) in self._settled:
            self.held -= 1  # its forward was settled already: the same fate
            if self._settled[self._key(record)]:
                return [record]
            self.dropped += 1
            return []
        elif name == sc.DETOKENIZE_BATCH:  # the detokenizer never learns which requests were kept
            self.held -= 1
            return [record]
        else:
            self._waiting.append(record)
        return self._over_cap()

    def decided(self, rid: str, kept: bool) -> list[tuple]:
        """A request ended (``kept``: with its full detail): the held records it settles."""
        if self.mode == BATCH_KEEP_KEPT:
            self._decided[rid] = kept
            if len(self._decided) > MAX_DECIDED_REMEMBERED:
                self._decided.popitem(last=False)
        out: list[tuple] = []
        for sid in self._by_rid.pop(rid, ()):
            group = self._groups.get(sid)
            if group is None:
                continue
            group[0] -= 1
            group[1] = group[1] or kept
            if group[0] <= 0:
                out.extend(self._settle(sid, group[1]))
        return out

    def _settle(self, sid: int, keep: bool) -> list[tuple]:
        records = self._groups.pop(sid)[2]
        self._settled[sid] = keep
        if len(self._settled) > MAX_SETTLED_REMEMBERED:
            self._settled.popitem(last=False)
        self.held -= len(records)
        if keep:
            return records
        self.dropped += len(records)
        return []

    def _over_cap(self) -> list[tuple]:
        """Over MAX_HELD (requests that never end), the oldest forwards are written as if kept."""
        out: list[tuple] = []
        while self.held > MAX_HELD and self._groups:
            out.extend(self._settle(next(iter(self._groups)), True))
        if len(self._waiting) > MAX_HELD // 10:  # no forward follows them in this process
            out.extend(self._waiting)
            self.held -= len(self._waiting)
            self._waiting = []
        return out
