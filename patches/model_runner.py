"""ModelRunner instrumentation: model-forward spans with GPU time from CUDA events,
per-layer/per-op NVTX ranges at ``--trace-level layer``, and ``--profile-steps`` Kineto capture."""
from __future__ import annotations

import logging
from time import time_ns

from sglang_tracing import semconv as sc
from sglang_tracing.config import TraceConfig
from sglang_tracing.runtime import nvtx_ranges
from sglang_tracing.runtime.ids import new_span_id
from sglang_tracing.patches import _hooks, iteration, layer_ranges, profile_steps

logger = logging.getLogger(__name__)
_RUNNER = "sglang.srt.model_executor.model_runner.ModelRunner"

_config: TraceConfig | None = None
_cuda = None  # torch.cuda when the runner is on a CUDA device
_layer_ranges = 0  # module ranges installed at --trace-level layer


def _on_load_model(runner) -> None:
    global _cuda, _layer_ranges
    if str(getattr(runner, "device", "")).startswith("cuda"):
        import torch

        _cuda = torch.cuda
    if _config.layer_ranges:
        nvtx_ranges.enable()
        _layer_ranges = layer_ranges.install(runner.model)
        replayed = layer_ranges.graph_phases(runner.server_args) if _cuda is not None else []
        if replayed:
            logger.warning("sglang-tracing: --trace-level layer: %s forwards replay CUDA graphs, so they show no "
                           "per-layer ranges (add --disable-prefill-cuda-graph or --disable-cuda-graph to see them)",
                           " and ".join(replayed))


def _before_forward(rec, runner, *a, **k):
    fwd = iteration.current_forward
    if not fwd:  # warm-up or CUDA-graph capture, not a served batch
        return None
    sid = new_span_id()
    profile_steps.before_forward(_config)
    events = None
    if _cuda is not None and _config.batch_spans:  # forward spans (which carry GPU time) are batch level
        if iteration.gpu_anchor is None:
            anchor = _cuda.Event(enable_timing=True)
            anchor.record()
            anchor.synchronize()
            iteration.gpu_anchor = (anchor, time_ns())
        events = (_cuda.Event(enable_timing=True), _cuda.Event(enable_timing=True))
        events[0].record()
    nvtx_ranges.push(sc.MODEL_FORWARD, sid)  # last: the range opens where the span's clock starts
    return fwd, sid, events


def _cleanup_forward(rec, token):
    if token is not None:
        nvtx_ranges.pop()


def _after_forward(rec, token, start, end, result, runner, forward_batch, *a, **k):
    if token is None:
        return
    fwd, sid, events = token
    nvtx_ranges.pop()
    if events is not None:
        events[1].record()
        iteration.attach_gpu_events(fwd, events)
    profile_steps.after_forward(_config)
    if _config.batch_spans:
        attrs = {sc.FORWARD_MODE: forward_batch.forward_mode.name.lower(), sc.BATCH_SIZE: forward_batch.batch_size}
        if _layer_ranges:
            attrs[sc.NVTX_LAYER_RANGES] = _layer_ranges
        rec.emit(sc.MODEL_FORWARD, start, end, attrs, span_id=sid, parent=fwd)


def instrument(config: TraceConfig, skipped: list[str]) -> int:
    global _config
    _config = config
    fault = config.inject_fault
    return _hooks.register({
        f"{_RUNNER}.load_model": _hooks.after_setup("load_model", _on_load_model, fault),
        f"{_RUNNER}.forward": _hooks.around("model_forward", _after_forward, _before_forward,
                                            _cleanup_forward, fault),
    }, skipped)
