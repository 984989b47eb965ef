"""GPU time of forward spans from CUDA events, read without ever blocking the scheduler.

The model-runner patch records a start and an end event around each served forward; the scheduler
patch emits the forward span once its end event has completed (checked at each processed result).
"""
from __future__ import annotations

import collections
from typing import NamedTuple

from sglang_tracing import semconv as sc


class GpuEvents(NamedTuple):
    start: object  # torch.cuda.Event
    end: object


class GpuAnchor(NamedTuple):
    """A CUDA event and the wall time it completed at: event times measured from it land on the span clock."""
    event: object
    wall_ns: int


class PendingForward(NamedTuple):
    span_id: int
    start_ns: int
    end_ns: int
    attrs: dict
    events: GpuEvents


class ForwardGpuTimes:
    __slots__ = ("anchor", "_events", "_pending")

    def __init__(self):
        self.anchor: GpuAnchor | None = None  # recorded once, with one synchronize, on the first served forward
        self._events: dict[int, GpuEvents] = {}  # forward span id -> its model forward's events
        self._pending: collections.deque[PendingForward] = collections.deque()

    def attach(self, forward_span_id: int, events: GpuEvents) -> None:
        self._events[forward_span_id] = events

    def emit_forward(self, rec, sid: int, start: int, end: int, attrs: dict) -> None:
        """Emit a forward span now, or once its GPU duration can be read without a sync."""
        events = self._events.pop(sid, None)
        if events is None:
            rec.emit(sc.FORWARD, start, end, attrs, span_id=sid)
        else:
            self._pending.append(PendingForward(sid, start, end, attrs, events))

    def flush(self, rec) -> None:
        """Emit forward spans whose end event has completed; never blocks on the GPU."""
        pending = self._pending
        while pending:
            fwd = pending[0]
            if not fwd.events.end.query():
                return
            pending.popleft()
            attrs = fwd.attrs
            attrs[sc.GPU_DURATION_NS] = int(fwd.events.start.elapsed_time(fwd.events.end) * 1e6)
            if self.anchor is not None:
                anchor, wall = self.anchor
                attrs[sc.GPU_START_NS] = wall + int(anchor.elapsed_time(fwd.events.start) * 1e6)
                attrs[sc.GPU_END_NS] = wall + int(anchor.elapsed_time(fwd.events.end) * 1e6)
            rec.emit(sc.FORWARD, fwd.start_ns, fwd.end_ns, attrs, span_id=fwd.span_id)
