"""ModelRunner instrumentation: model-forward spans with GPU time from CUDA events,
per-layer/per-op NVTX ranges at ``--trace-level layer`` or in a detail window (``detail``), and the ``--profile-steps`` / ``capture_steps``
windows (``profile_steps``), whose actions are timed as spans of their own."""
from __future__ import annotations

import logging
from time import time_ns
from typing import NamedTuple

from sglang_tracing import semconv as sc
from sglang_tracing.runtime import nvtx_ranges
from sglang_tracing.runtime.ids import new_span_id
from sglang_tracing.patches import _targets, layer_ranges
from sglang_tracing.patches._wrappers import Call, after_setup, around
from sglang_tracing.patches.forward_gpu_times import GpuAnchor, GpuEvents
from sglang_tracing.patches.state import SchedulerState

logger = logging.getLogger(__name__)
_RUNNER = "sglang.srt.model_executor.model_runner.ModelRunner"


class _Forward(NamedTuple):
    """What ``_before_forward`` hands ``_after_forward`` for a served model forward."""
    parent: int  # span id of the scheduler forward that launched it
    span_id: int
    events: GpuEvents | None  # CUDA events around it, on a GPU at batch level


def _on_load_model(st: SchedulerState, call: Call, /, runner, *a, **k) -> None:
    if str(getattr(runner, "device", "")).startswith("cuda"):
        import torch

        st.cuda = torch.cuda
    replayed = layer_ranges.graph_phases(runner.server_args) if st.cuda is not None else []
    st.detail.on_model_loaded(st.config.trace_dir, runner.model, st.cuda, replayed, st.config.layer_ranges)
    if st.config.layer_ranges:
        nvtx_ranges.enable()
        st.layer_ranges = len(layer_ranges.install(runner.model))
        if not nvtx_ranges.tool_attached():
            logger.warning("sglang-tracing: --trace-level layer: no NVTX tool (nsys) is attached to this process, so "
                           "its layer/op ranges reach only a torch profiler while one records (--profile-steps); "
                           "start the server under nsys to record them")
        if replayed:
            logger.warning("sglang-tracing: --trace-level layer: %s forwards replay CUDA graphs, so they show no "
                           "per-layer ranges (add --disable-prefill-cuda-graph or --disable-cuda-graph to see them)",
                           " and ".join(replayed))


def _before_forward(st: SchedulerState, call: Call, /, runner, *a, **k) -> _Forward | None:
    fwd = st.current_forward
    if not fwd:  # warm-up or CUDA-graph capture, not a served batch
        return None
    sid = new_span_id()
    st.windows.before_forward(st.config, call.rec, fwd)
    nvtx_ranges.follow_torch_profiler()  # ranges become Kineto user annotations while a torch profiler records
    events = None
    cuda = st.cuda
    if cuda is not None and st.config.batch_spans:  # forward spans (which carry GPU time) are batch level
        if st.gpu_times.anchor is None:
            anchor = cuda.Event(enable_timing=True)
            anchor.record()
            anchor.synchronize()
            st.gpu_times.anchor = GpuAnchor(anchor, time_ns())
        events = st.gpu_times.take_events(cuda)
        events.start.record()
    nvtx_ranges.push(sc.MODEL_FORWARD, sid)  # last: the range opens where the span's clock starts
    return _Forward(fwd, sid, events)


def _cleanup_forward(st: SchedulerState, call: Call, /, *a, **k):
    if call.token is not None:
        nvtx_ranges.pop()


def _after_forward(st: SchedulerState, call: Call, /, runner, forward_batch, *a, **k):
    token: _Forward | None = call.token
    if token is None:
        return
    nvtx_ranges.pop()
    if token.events is not None:
        token.events.end.record()
        st.gpu_times.attach(token.parent, token.events)
    st.windows.after_forward(st.config, call.rec, token.parent)
    nvtx_ranges.follow_torch_profiler()  # the window may have closed
    st.detail.after_forward(call.rec, token.span_id)
    if st.config.batch_spans:
        attrs = {sc.FORWARD_MODE: forward_batch.forward_mode.name.lower(), sc.BATCH_SIZE: forward_batch.batch_size}
        if st.layer_ranges:
            attrs[sc.NVTX_LAYER_RANGES] = st.layer_ranges
        call.rec.emit(sc.MODEL_FORWARD, call.start_ns, call.end_ns, attrs, span_id=token.span_id, parent=token.parent)


def hooks(st: SchedulerState) -> dict:
    common = {"state": st, "inject_fault": st.config.inject_fault}
    return {
        f"{_RUNNER}.load_model": after_setup("load_model", on_init=_on_load_model, **common),
        f"{_RUNNER}.forward": around("model_forward", before=_before_forward, after=_after_forward,
                                     cleanup=_cleanup_forward, **common),
    }


def instrument(st: SchedulerState, skipped: list[str]) -> int:
    return _targets.register(hooks(st), skipped)
