"""Let SGLang serve with ``--device cpu`` on a host without CUDA.

- RotaryEmbedding imports a vllm op unless SGLang believes it runs on its CPU engine; with no
  CUDA device we tell it so, which selects the native rotary path.
- Tensor parallelism (``--tp N``, gloo): a CUDA build of torch ships libnccl, so SGLang builds a
  PyNccl communicator for each group and fails on the CPU device; without CUDA we ask for none.
- Prefill-decode disaggregation over Mooncake (SGLang 0.5.23): the prefill server copies each KV
  chunk's page indices to pinned host memory behind a CUDA event when the sender says it takes host
  indices; without CUDA the sender says it does not, so the indices are computed on the host as before.
"""
from __future__ import annotations

import logging

logger = logging.getLogger(__name__)
_GROUP = "sglang.srt.distributed.parallel_state.GroupCoordinator.__init__"
_ROTARY = "sglang.srt.layers.rotary_embedding.base"
_MOONCAKE = "sglang.srt.disaggregation.mooncake.conn"


def _no_pynccl(*args, **kwargs):
    kwargs["use_pynccl"] = False
    return args, kwargs


def _native_rotary(base) -> None:
    if hasattr(base, "_is_cpu"):
        base._is_cpu = True


def _host_indices_off(conn) -> None:
    sender = getattr(conn, "MooncakeKVSender", None)
    if getattr(sender, "supports_host_tensor_indices", False):
        sender.supports_host_tensor_indices = False


def apply() -> bool:
    import torch

    if torch.cuda.is_available():
        return False
    from sglang_tracing.patches import _targets

    _targets.when_imported(_ROTARY, _native_rotary)
    _targets.when_imported(_MOONCAKE, _host_indices_off)
    _targets.register({_GROUP: _no_pynccl}, [], hook_type="before")
    logger.info("sglang-tracing no_cuda_fixes: native RotaryEmbedding, no PyNccl, Mooncake KV indices on the "
                "host (no CUDA device)")
    return True
