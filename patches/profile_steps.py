"""Forward-count windows: ``--profile-steps START:N`` records a Kineto (torch profiler) trace of N
served forwards into the trace dir; ``capture_steps`` brackets served forwards START..START+N
(or until the server first goes idle) with cudaProfilerStart/Stop, so
``nsys --capture-range=cudaProfilerApi`` records just those.

Each of these actions can take seconds (nsys starting or flushing its capture, Kineto writing its
trace) inside a scheduler forward span; each is recorded as a ``PROFILER_CONTROL`` span of its own,
so the analyzer can keep our time out of SGLang's."""
from __future__ import annotations

import logging
import os
import time
from time import time_ns

from sglang_tracing import semconv as sc
from sglang_tracing.config import CAPTURE_IDLE_END_S, TraceConfig

logger = logging.getLogger(__name__)


def _in_window(window, index: int) -> bool:
    return window is not None and window[0] <= index < window[0] + window[1]


def _timed(rec, parent: int, action: str, fn, *args):
    """Run one profiler-control action and record its span (also when it raises: the time was spent)."""
    start = time_ns()
    try:
        return fn(*args)
    finally:
        rec.emit(sc.PROFILER_CONTROL, start, time_ns(), {sc.PROFILER_ACTION: action}, parent=parent)


class ForwardWindows:
    """Where a scheduler process stands in its profiling windows (part of its ``SchedulerState``)."""

    __slots__ = ("seen", "profiler", "kineto_done", "capturing", "capture_done", "last_forward")

    def __init__(self):
        self.seen = 0  # served forwards so far
        self.profiler = None  # the torch profiler while its window is open
        self.kineto_done = False
        self.capturing = False  # inside cudaProfilerStart/Stop
        self.capture_done = False
        self.last_forward = 0.0  # time.monotonic() of the last served forward

    def before_forward(self, config: TraceConfig, rec, parent: int) -> None:
        """``parent``: the span id of the scheduler forward this model forward runs in."""
        if (config.profile_steps and not self.kineto_done and self.profiler is None
                and self.seen == config.profile_steps[0]):
            _timed(rec, parent, sc.TORCH_PROFILER_START, self._start_torch_profiler)
        if (config.capture_steps and not self.capturing and not self.capture_done
                and _in_window(config.capture_steps, self.seen)):
            _timed(rec, parent, sc.CAPTURE_START, self._start_capture)

    def on_idle(self, rec) -> None:
        """End the capture window when the server goes idle: nsys only flushes CUDA trace
        buffers at cudaProfilerStop, and a server stopped later by a signal never reaches it."""
        if self.capturing and time.monotonic() - self.last_forward > CAPTURE_IDLE_END_S:
            _timed(rec, 0, sc.CAPTURE_STOP, self._stop_capture)
            logger.info("sglang-tracing: capture window ended at forward %d (server idle)", self.seen)

    def after_forward(self, config: TraceConfig, rec, parent: int) -> None:
        self.seen += 1
        self.last_forward = time.monotonic()
        if self.profiler is not None and self.seen >= sum(config.profile_steps):
            path = os.path.join(config.trace_dir, f"kineto-pid{os.getpid()}.json")
            _timed(rec, parent, sc.KINETO_EXPORT, self._export_kineto, path)
            logger.info("sglang-tracing: Kineto trace of %d forwards written to %s", config.profile_steps[1], path)
        if self.capturing and self.seen >= sum(config.capture_steps):
            _timed(rec, parent, sc.CAPTURE_STOP, self._stop_capture)

    def _start_torch_profiler(self) -> None:
        import torch

        activities = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self.profiler = torch.profiler.profile(activities=activities, record_shapes=True)
        self.profiler.__enter__()

    def _export_kineto(self, path: str) -> None:
        profiler, self.profiler = self.profiler, None
        self.kineto_done = True
        profiler.__exit__(None, None, None)
        profiler.export_chrome_trace(path)

    def _start_capture(self) -> None:
        import torch

        torch.cuda.cudart().cudaProfilerStart()
        self.capturing = True

    def _stop_capture(self) -> None:
        import torch

        torch.cuda.cudart().cudaProfilerStop()
        self.capturing = False
        self.capture_done = True
