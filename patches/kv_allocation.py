"""KV-cache allocation timing (``alloc_for_extend`` / ``alloc_for_decode``), summed per scheduling pass.

``phase`` tells the cache patch which allocation triggered an eviction.
"""
from __future__ import annotations

from sglang_tracing.config import TraceConfig
from sglang_tracing.patches import _hooks, iteration

_MODULE = "sglang.srt.mem_cache.allocation"
phase = ""


def _enter(name: str):
    def before(rec, *a, **k):
        global phase
        phase = name

    return before


def _leave(rec, token, start=0, end=0, *a, **k):
    global phase
    phase = ""
    if end:
        iteration.add_kv_alloc(end - start)


def instrument(config: TraceConfig, skipped: list[str]) -> int:
    fault = config.inject_fault
    return _hooks.register({
        f"{_MODULE}.{fn}": _hooks.around(fn, _leave, _enter(fn), _leave, fault)
        for fn in ("alloc_for_extend", "alloc_for_decode")
    }, skipped)
