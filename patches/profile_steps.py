"""Forward-count windows: ``--profile-steps START:N`` records a Kineto (torch profiler) trace of N
served forwards into the trace dir; ``capture_steps`` brackets served forwards START..START+N
(or until the server first goes idle) with cudaProfilerStart/Stop, so
``nsys --capture-range=cudaProfilerApi`` records just those."""
from __future__ import annotations

import logging
import os
import time

from sglang_tracing.config import CAPTURE_IDLE_END_S

logger = logging.getLogger(__name__)

_seen = 0  # served forwards so far
_profiler = None
_kineto_done = False
_capturing = False
_capture_done = False
_last_forward = 0.0


def _in_window(window, index: int) -> bool:
    return window is not None and window[0] <= index < window[0] + window[1]


def before_forward(config) -> None:
    global _profiler, _capturing
    if config.profile_steps and not _kineto_done and _profiler is None and _seen == config.profile_steps[0]:
        import torch

        activities = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        _profiler = torch.profiler.profile(activities=activities, record_shapes=True)
        _profiler.__enter__()
    if config.capture_steps and not _capturing and not _capture_done and _in_window(config.capture_steps, _seen):
        import torch

        torch.cuda.cudart().cudaProfilerStart()
        _capturing = True


def on_idle(config) -> None:
    """End the capture window when the server goes idle: nsys only flushes CUDA trace
    buffers at cudaProfilerStop, and a server stopped later by a signal never reaches it."""
    global _capturing, _capture_done
    if _capturing and time.monotonic() - _last_forward > CAPTURE_IDLE_END_S:
        import torch

        torch.cuda.cudart().cudaProfilerStop()
        _capturing = False
        _capture_done = True
        logger.info("sglang-tracing: capture window ended at forward %d (server idle)", _seen)


def after_forward(config) -> None:
    global _seen, _profiler, _kineto_done, _capturing, _capture_done, _last_forward
    _seen += 1
    _last_forward = time.monotonic()
    if _profiler is not None and _seen >= sum(config.profile_steps):
        _profiler.__exit__(None, None, None)
        path = os.path.join(config.trace_dir, f"kineto-pid{os.getpid()}.json")
        _profiler.export_chrome_trace(path)
        logger.info("sglang-tracing: Kineto trace of %d forwards written to %s", config.profile_steps[1], path)
        _profiler = None
        _kineto_done = True
    if _capturing and _seen >= sum(config.capture_steps):
        import torch

        torch.cuda.cudart().cudaProfilerStop()
        _capturing = False
        _capture_done = True
