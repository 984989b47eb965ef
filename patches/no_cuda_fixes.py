"""Let SGLang serve with ``--device cpu`` on a host without CUDA.

- RotaryEmbedding imports a vllm op unless SGLang believes it runs on its CPU engine; with no
  CUDA device we tell it so, which selects the native rotary path.
- Tensor parallelism (``--tp N``, gloo): a CUDA build of torch ships libnccl, so SGLang builds a
  PyNccl communicator for each group and fails on the CPU device; without CUDA we ask for none.
"""
from __future__ import annotations

import logging

logger = logging.getLogger(__name__)
_GROUP = "sglang.srt.distributed.parallel_state.GroupCoordinator.__init__"
_ROTARY = "sglang.srt.layers.rotary_embedding.base"


def _no_pynccl(*args, **kwargs):
    kwargs["use_pynccl"] = False
    return args, kwargs


def _native_rotary(base) -> None:
    if hasattr(base, "_is_cpu"):
        base._is_cpu = True


def apply() -> bool:
    import torch

    if torch.cuda.is_available():
        return False
    from sglang_tracing.patches import _targets

    _targets.when_imported(_ROTARY, _native_rotary)
    _targets.register({_GROUP: _no_pynccl}, [], hook_type="before")
    logger.info("sglang-tracing no_cuda_fixes: native RotaryEmbedding, no PyNccl (no CUDA device)")
    return True
