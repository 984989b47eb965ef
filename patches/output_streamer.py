"""SchedulerOutputStreamer instrumentation: each output token is stamped the moment the scheduler
hands it to the detokenizer (``stream_output``), before it is sent, so "first token computed" can
never come after the first response byte on the same host clock.

``scheduler._after_process`` stamps what this hook did not see (an SGLang without the streamer
class, or tokens of a request never streamed): both share ``RequestTrace.stamp_outputs``.
"""
from __future__ import annotations

from collections.abc import Callable
from time import time_ns

from sglang_tracing.patches import _targets
from sglang_tracing.patches._wrappers import Call, around
from sglang_tracing.patches.state import SchedulerState

_STREAMER = "sglang.srt.managers.scheduler_components.output_streamer.SchedulerOutputStreamer"


def _before_stream(st: SchedulerState, call: Call, /, streamer, reqs, return_logprob=None, skip_req=None, *a,
                   **k) -> None:
    now = time_ns()
    for req in reqs:
        trace = req.__dict__.get("_sgt")
        if trace is not None and req is not skip_req:
            trace.stamp_outputs(len(req.output_ids), now)


def hooks(st: SchedulerState) -> dict[str, Callable]:
    common = {"state": st, "inject_fault": st.config.inject_fault}
    return {f"{_STREAMER}.stream_output": around("stream_output", before=_before_stream, **common)}


def instrument(st: SchedulerState, skipped: list[str]) -> int:
    return _targets.register(hooks(st), skipped)
