"""Field names that moved between SGLang releases (0.5.17 -> 0.5.23), read one way."""
from __future__ import annotations

import sys


def matched_len(match_result) -> int:
    """Tokens a prefix-cache lookup matched on the device."""
    n = getattr(match_result, "device_prefix_len", None)
    return n if n is not None else len(match_result.device_indices)


def prefix_len(req) -> int:
    """Tokens of a request already in the KV cache when its next extend starts."""
    n = getattr(req, "prefix_len", None)
    return n if isinstance(n, int) else len(req.prefix_indices)


def extend_end(req) -> int:
    """Position (in prompt + output tokens) where the request's current extend ends."""
    rng = getattr(req, "extend_range", None)
    if rng is not None:
        return rng.end
    end = getattr(req, "extend_end", None)
    if end is not None:
        return end
    return prefix_len(req) + getattr(req, "extend_input_len", 0)


def scheduler_rank(scheduler, name: str) -> int | None:
    """A scheduler's parallel rank or GPU (``tp_rank``, ``dp_rank``, ``gpu_id``...): on ``scheduler.ps``
    (ParallelState, 0.5.17), on the scheduler (older), or in the process-wide runtime context (0.5.23:
    ``get_parallel()`` / ``get_device()``). None where none of them has it."""
    value = getattr(getattr(scheduler, "ps", None), name, None)
    if value is None:
        value = getattr(scheduler, name, None)
    if value is None:
        value = _runtime_context(name)
    return value if isinstance(value, int) else None


def _runtime_context(name: str):
    ctx = sys.modules.get("sglang.srt.runtime_context")  # read only where SGLang itself imported it
    if ctx is None:
        return None
    try:
        return getattr(ctx.get_device() if name == "gpu_id" else ctx.get_parallel(), name, None)
    except (AttributeError, ValueError):  # not published yet in this process
        return None
