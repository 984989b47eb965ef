"""GPU time of forward spans from CUDA events, read without ever blocking the scheduler.

The model-runner patch records a start and an end event around each served forward; the scheduler
patch emits the forward span once its end event has completed (checked at each processed result).
Events go back to a pool once read, so a step records events it already has: no CUDA event is created
or destroyed per forward (each creation is a driver call on the step's critical path, where NGRAM's
synchronous draft waits for it).
"""
from __future__ import annotations

import collections
from typing import NamedTuple

from sglang_tracing import semconv as sc


class GpuEvents(NamedTuple):
    start: object  # torch.cuda.Event
    end: object


class EventPool:
    """CUDA timing events, reused once read. ``take`` hands out a start/end pair, ``give`` takes a pair
    whose times were read (both completed: no pending work refers to them); at most ``MAX_FREE`` pairs wait."""

    MAX_FREE = 64
    __slots__ = ("_make", "_free")

    def __init__(self, make):
        self._make = make  # torch.cuda.Event
        self._free: list[GpuEvents] = []

    def take(self) -> GpuEvents:
        if self._free:
            return self._free.pop()
        make = self._make
        return GpuEvents(make(enable_timing=True), make(enable_timing=True))

    def give(self, events: GpuEvents) -> None:
        if len(self._free) < self.MAX_FREE:
            self._free.append(events)


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
    __slots__ = ("anchor", "pool", "_events", "_pending")

    def __init__(self):
        self.anchor: GpuAnchor | None = None  # recorded once, with one synchronize, on the first served forward
        self.pool: EventPool | None = None  # the model forwards' and speculative phases' events, on a GPU
        self._events: dict[int, GpuEvents] = {}  # forward span id -> its model forward's events
        self._pending: collections.deque[PendingForward] = collections.deque()

    def take_events(self, cuda) -> GpuEvents:
        """A start/end pair of timing events of ``cuda`` (torch.cuda), reused where one was given back."""
        if self.pool is None:
            self.pool = EventPool(cuda.Event)
        return self.pool.take()

    def give_events(self, events: GpuEvents) -> None:
        """``events`` were read (both completed): the next forward or phase may record them again."""
        if self.pool is not None:
            self.pool.give(events)

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
            self.give_events(fwd.events)
            rec.emit(sc.FORWARD, fwd.start_ns, fwd.end_ns, attrs, span_id=fwd.span_id)
