"""State of the scheduler iteration in progress, shared by the scheduler, cache and model-runner patches.

Single-threaded by construction: one scheduler thread per process drives all of it.
"""
from __future__ import annotations

import collections

from sglang_tracing import semconv as sc

cache_lookup_ns = 0  # time in prefix-cache lookups during this scheduling pass
kv_alloc_ns = 0  # time in KV allocation during this scheduling pass
current_forward = 0  # span id of the forward being launched (parent of model-forward spans)
launched: dict[int, tuple] = {}  # id(batch result) -> (forward span id, launch start ns, prefill chunks)
_index = 0
# Forward spans waiting for their CUDA events: (span id, start, end, attrs, event pair)
_pending_gpu: collections.deque = collections.deque()
_gpu_events: dict[int, tuple] = {}  # forward span id -> (start event, end event) from the model runner
# (CUDA event, wall ns when it completed): recorded once, with one synchronize, on the first served
# forward; event times measured from it land on the span clock
gpu_anchor: tuple | None = None


def reset() -> None:
    global cache_lookup_ns, kv_alloc_ns
    cache_lookup_ns = 0
    kv_alloc_ns = 0


def add_cache_lookup(ns: int) -> None:
    global cache_lookup_ns
    cache_lookup_ns += ns


def add_kv_alloc(ns: int) -> None:
    global kv_alloc_ns
    kv_alloc_ns += ns


def next_index() -> int:
    global _index
    _index += 1
    return _index


def attach_gpu_events(forward_span_id: int, events: tuple) -> None:
    _gpu_events[forward_span_id] = events


def emit_forward(rec, sid: int, start: int, end: int, attrs: dict) -> None:
    """Emit a forward span now, or once its GPU duration can be read without a sync."""
    events = _gpu_events.pop(sid, None)
    if events is None:
        rec.emit(sc.FORWARD, start, end, attrs, span_id=sid)
    else:
        _pending_gpu.append((sid, start, end, attrs, events))


def flush_gpu_times(rec) -> None:
    """Emit forward spans whose end event has completed; never blocks on the GPU."""
    while _pending_gpu:
        sid, start, end, attrs, (ev_start, ev_end) = _pending_gpu[0]
        if not ev_end.query():
            return
        _pending_gpu.popleft()
        attrs[sc.GPU_DURATION_NS] = int(ev_start.elapsed_time(ev_end) * 1e6)
        if gpu_anchor is not None:
            anchor, wall = gpu_anchor
            attrs[sc.GPU_START_NS] = wall + int(anchor.elapsed_time(ev_start) * 1e6)
            attrs[sc.GPU_END_NS] = wall + int(anchor.elapsed_time(ev_end) * 1e6)
        rec.emit(sc.FORWARD, start, end, attrs, span_id=sid)
