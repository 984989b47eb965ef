"""Let SGLang serve with ``--device cpu`` on a host without CUDA.

RotaryEmbedding imports a vllm op unless SGLang believes it runs on its CPU engine;
with no CUDA device we tell it so, which selects the native rotary path.
"""
from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def apply() -> bool:
    import torch

    if torch.cuda.is_available():
        return False
    try:
        from sglang.srt.layers.rotary_embedding import base
    except ImportError:
        return False
    if hasattr(base, "_is_cpu"):
        base._is_cpu = True
        logger.info("sglang-tracing cpu_compat: native RotaryEmbedding path on CPU")
        return True
    return False
