"""Per-layer and per-op NVTX ranges for Llama-family models (``--trace-level layer``).

Torch module hooks push a range before and pop it after each named submodule. With CUDA
graphs on, hooks run only while a graph is captured; a replay is one launch, so per-op
ranges appear only for eager forwards. SGLang 0.5.17 replays graphs for decode and, by
default, for prefill too (its "breakable" prefill graphs, up to 8192 tokens): pass
--disable-prefill-cuda-graph (prefill ranges) or --disable-cuda-graph (all) to see them.
"""
from __future__ import annotations

import logging

from sglang_tracing import semconv as sc
from sglang_tracing.runtime import nvtx_ranges

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


def _push(name: str):
    def pre_hook(module, args):
        nvtx_ranges.push(name)

    return pre_hook


def _pop(module, args, output):
    nvtx_ranges.pop()


def graph_phases(server_args) -> list[str]:
    """The forward phases this server replays as CUDA graphs (where no layer ranges show)."""
    if getattr(server_args, "disable_cuda_graph", False):
        return []

    def replayed(phase: str) -> bool:
        return not (getattr(server_args, f"disable_{phase}_cuda_graph", False)
                    or getattr(server_args, f"cuda_graph_backend_{phase}", None) == "disabled")

    phases = ["decode"] if replayed("decode") else []
    if hasattr(server_args, "disable_prefill_cuda_graph") and replayed("prefill"):
        phases.append("prefill")
    return phases


def install(model) -> int:
    """Hook the Llama submodules of ``model``; returns how many ranges were installed."""
    count = 0
    for qualified, module in model.named_modules():
        parts = qualified.split(".")
        leaf = parts[-1]
        if leaf.isdigit() and len(parts) >= 2 and parts[-2] == "layers":
            name = f"{sc.NVTX_LAYER_PREFIX}{leaf}"
        elif leaf in OPS:
            name = OPS[leaf]
        else:
            continue
        module.register_forward_pre_hook(_push(name))
        module.register_forward_hook(_pop)
        count += 1
    logger.info("sglang-tracing: %d layer/op NVTX ranges installed", count)
    return count
