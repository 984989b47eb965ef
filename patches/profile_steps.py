"""``--profile-steps START:N``: a Kineto (torch profiler) trace of N served forwards, written into the trace dir."""
from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)

_seen = 0
_profiler = None
_done = False


def before_forward(config) -> None:
    global _profiler
    if config.profile_steps is None or _done or _profiler is not None:
        return
    start, _count = config.profile_steps
    if _seen == start:
        import torch

        activities = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        _profiler = torch.profiler.profile(activities=activities, record_shapes=True)
        _profiler.__enter__()


def after_forward(config) -> None:
    global _seen, _profiler, _done
    if config.profile_steps is None or _done:
        return
    _seen += 1
    start, count = config.profile_steps
    if _profiler is not None and _seen >= start + count:
        _profiler.__exit__(None, None, None)
        path = os.path.join(config.trace_dir, f"kineto-pid{os.getpid()}.json")
        _profiler.export_chrome_trace(path)
        logger.info("sglang-tracing: Kineto trace of forwards %d..%d written to %s", start, _seen - 1, path)
        _profiler = None
        _done = True
