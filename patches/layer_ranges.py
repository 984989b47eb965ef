"""Per-layer and per-op NVTX ranges for Llama-family models (``--trace-level layer``, detail windows).

Each named submodule's ``forward`` is wrapped (an instance attribute, removed by ``Installed.remove``):
the range opens before the original forward and closes after it, with attributes built once per
name. Wrapping instead of torch module hooks keeps ``Module.__call__`` on its hook-free fast path: on
the CPU of ``benchmarks/layer_cost.py``, hooks cost 3.1 us a range and a wrapper 0.2 us, so 259 ranges
(a 32-layer Llama) took 802 us off each eager forward's host time with hooks and 51 us wrapped; the
wrapper now makes no call of ours unless a torch profiler records (see ``ranged``; figures in
benchmarks/README.md).

With CUDA graphs on, wrappers run only while a graph is captured; a replay is one launch, so per-op
ranges appear only for eager forwards. While a torch profiler records, each range is also a Kineto user
annotation of the same name (``nvtx_ranges.annotation``). SGLang 0.5.17 replays graphs for decode and, by default, for
prefill too (its "breakable" prefill graphs, up to 8192 tokens): pass --disable-prefill-cuda-graph
(prefill ranges) or --disable-cuda-graph (all) to see them.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

from sglang_tracing import semconv as sc
from sglang_tracing.runtime import nvtx_ranges
from sglang_tracing.runtime.cuda_graphs import graph_phases  # noqa: F401  (where the patches look for it)

logger = logging.getLogger(__name__)

# attribute name on a Llama submodule -> op name in the range (one of semconv.NVTX_OPS)
OPS = {
    "embed_tokens": "embedding",
    "input_layernorm": "rms_norm",
    "post_attention_layernorm": "rms_norm",
    "qkv_proj": "qkv_proj",
    "attn": "attention",
    "o_proj": "o_proj",
    "gate_up_proj": "gate_up_proj",
    "down_proj": "down_proj",
    "norm": "rms_norm",
    "lm_head": "lm_head",
}
_MISSING = object()


def decoder_layers(model) -> dict[int, object]:
    """The model's decoder layers by index (``...layers.<i>``)."""
    out = {}
    for qualified, module in model.named_modules():
        parts = qualified.split(".")
        if parts[-1].isdigit() and len(parts) >= 2 and parts[-2] == "layers":
            out[int(parts[-1])] = module
    return out


def range_names(model) -> list[tuple[object, str]]:
    """(module, range name) for each decoder layer and each named op of ``model``."""
    out = []
    for qualified, module in model.named_modules():
        parts = qualified.split(".")
        leaf = parts[-1]
        if leaf.isdigit() and len(parts) >= 2 and parts[-2] == "layers":
            out.append((module, f"{sc.NVTX_LAYER_PREFIX}{leaf}"))
        elif leaf in OPS:
            out.append((module, OPS[leaf]))
    return out


class Installed:
    """Wrapped forwards, each removable: the module's own ``forward`` attribute comes back."""

    def __init__(self):
        self._restore: list[tuple[object, object]] = []

    def __len__(self) -> int:
        return len(self._restore)

    def wrap(self, module, make: Callable[[Callable], Callable]) -> None:
        previous = module.__dict__.get("forward", _MISSING)
        module.forward = make(module.forward)
        self._restore.append((module, previous))

    def remove(self) -> None:
        for module, previous in reversed(self._restore):
            if previous is _MISSING:
                module.__dict__.pop("forward", None)
            else:
                module.forward = previous
        self._restore.clear()


def ranged(forward: Callable, attrs, name: str) -> Callable:
    """``forward`` inside an NVTX range with these prebuilt attributes, and a torch profiler user
    annotation named ``name`` while a torch profiler records (Kineto has no NVTX).

    Built for the common case: no profiler records, so a call reads one flag and, where an NVTX tool is
    attached (``attrs`` is not None), calls the domain's push and pop directly. Without a tool (no nsys:
    the nvtx library hands out a no-op domain and ``attrs`` is None) a call only reads the flag.
    """
    flags = nvtx_ranges.flags
    annotated = annotated_wrapper(forward, attrs, name)
    if attrs is None:
        def ranged(*args, **kwargs):
            if flags.annotate:
                return annotated(*args, **kwargs)
            return forward(*args, **kwargs)

        return ranged
    push, pop = nvtx_ranges.domain_push_pop()

    def ranged_nvtx(*args, **kwargs):
        if flags.annotate:
            return annotated(*args, **kwargs)
        push(attrs)
        try:
            return forward(*args, **kwargs)
        finally:
            pop()

    return ranged_nvtx


def annotated_wrapper(forward: Callable, attrs, name: str) -> Callable:
    """``ranged``'s call while a torch profiler records: the NVTX range and a ``record_function`` range."""
    push, pop_nvtx = nvtx_ranges.push_attributes, nvtx_ranges.pop_attributes
    annotation, close = nvtx_ranges.annotation, nvtx_ranges.close

    def annotated(*args, **kwargs):
        push(attrs)
        note = annotation(name)
        try:
            return forward(*args, **kwargs)
        finally:
            close(note)
            pop_nvtx(attrs)

    return annotated


def install(model) -> Installed:
    """NVTX ranges around ``model``'s decoder layers and named ops (ranges must be enabled first)."""
    installed = Installed()
    for module, name in range_names(model):
        attrs = nvtx_ranges.attributes(name)
        installed.wrap(module, lambda forward, a=attrs, n=name: ranged(forward, a, n))
    logger.info("sglang-tracing: %d layer/op NVTX ranges installed", len(installed))
    return installed
