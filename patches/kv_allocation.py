"""KV-cache allocation timing (``alloc_for_extend`` / ``alloc_for_decode``), summed per scheduling pass.

The allocation in progress is kept in the state, so the cache patch can name what triggered an eviction.
"""
from __future__ import annotations

from sglang_tracing.patches import _targets
from sglang_tracing.patches._wrappers import Call, around
from sglang_tracing.patches.state import SchedulerState

_MODULE = "sglang.srt.mem_cache.allocation"


def _enter(name: str):
    def before(st: SchedulerState, call: Call, /, *a, **k):
        st.kv_alloc_phase = name

    return before


def _leave(st: SchedulerState, call: Call, /, *a, **k):
    """After the allocation, or in its place when it raised (no end time then)."""
    st.kv_alloc_phase = ""
    if call.end_ns:
        st.kv_alloc_ns += call.end_ns - call.start_ns


def hooks(st: SchedulerState) -> dict:
    return {f"{_MODULE}.{fn}": around(fn, state=st, before=_enter(fn), after=_leave, cleanup=_leave,
                                      inject_fault=st.config.inject_fault)
            for fn in ("alloc_for_extend", "alloc_for_decode")}


def instrument(st: SchedulerState, skipped: list[str]) -> int:
    return _targets.register(hooks(st), skipped)
