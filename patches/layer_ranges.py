"""Per-layer and per-op NVTX ranges for Llama-family models (``--trace-level layer``).

Torch module hooks push a range before and pop it after each named submodule. With CUDA
graphs on, hooks run only while a graph is captured; a replay is one launch, so per-op
ranges appear only for eager forwards (prefill, or any run with --disable-cuda-graph).
"""
from __future__ import annotations

import logging

from sglang_tracing.runtime import nvtx_ranges

logger = logging.getLogger(__name__)

# attribute name on a Llama submodule -> op name in the range
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


def install(model) -> int:
    """Hook the Llama submodules of ``model``; returns how many ranges were installed."""
    count = 0
    for qualified, module in model.named_modules():
        parts = qualified.split(".")
        leaf = parts[-1]
        if leaf.isdigit() and len(parts) >= 2 and parts[-2] == "layers":
            name = f"layer.{leaf}"
        elif leaf in OPS:
            name = OPS[leaf]
        else:
            continue
        module.register_forward_pre_hook(_push(name))
        module.register_forward_hook(_pop)
        count += 1
    logger.info("sglang-tracing: %d layer/op NVTX ranges installed", count)
    return count
