"""KV-cache allocation timing (``alloc_for_extend`` / ``alloc_for_decode``), summed per scheduling pass.

The allocation in progress is kept in the state, so the cache patch can name what triggered an eviction.
"""
from __future__ import annotations

from sglang_tracing.patches import _hooks
from sglang_tracing.patches.state import SchedulerState

_MODULE = "sglang.srt.mem_cache.allocation"


def _enter(name: str):
    def before(st: SchedulerState, rec, *a, **k):
        st.kv_alloc_phase = name

    return before


def _leave(st: SchedulerState, rec, token, start=0, end=0, *a, **k):
    st.kv_alloc_phase = ""
    if end:
        st.kv_alloc_ns += end - start


def hooks(st: SchedulerState) -> dict:
    fault = st.config.inject_fault
    return {f"{_MODULE}.{fn}": _hooks.around(fn, _leave, _enter(fn), _leave, fault, state=st)
            for fn in ("alloc_for_extend", "alloc_for_decode")}


def instrument(st: SchedulerState, skipped: list[str]) -> int:
    return _hooks.register(hooks(st), skipped)
