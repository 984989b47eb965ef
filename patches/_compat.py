"""Field names that moved between SGLang releases (0.5.17 -> 0.5.23), read one way."""
from __future__ import annotations


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
    """A scheduler's parallel rank or GPU (``tp_rank``, ``dp_rank``, ``gpu_id``...): SGLang 0.5.17 keeps
    them on ``scheduler.ps`` (ParallelState), older releases on the scheduler itself. None if absent."""
    value = getattr(getattr(scheduler, "ps", None), name, None)
    if value is None:
        value = getattr(scheduler, name, None)
    return value if isinstance(value, int) else None
