"""Prefix-cache instrumentation: match_prefix, insert and evict on every radix-cache class
SGLang ships with the unified ``*Params`` API (``RadixCache``; ``UnifiedRadixCache``, the
default from 0.5.23, whose tree lives in a Rust core; ``RadixCacheCpp``), each span
carrying the cache state after the operation.

SGLang imports a cache class's module only when it picks that class (``RadixCacheCpp``, behind
``SGLANG_EXPERIMENTAL_CPP_RADIX_TREE``, builds a C++ extension on import), so these hooks apply
when SGLang imports the module, never before; a method the class lacks (``RadixCacheCpp.insert``
on 0.5.17) is logged and left out."""
from __future__ import annotations

import os
import sys

from sglang_tracing import semconv as sc
from sglang_tracing.patches import _compat, _targets
from sglang_tracing.patches._wrappers import Call, around
from sglang_tracing.patches.state import SchedulerState

CACHE_CLASSES = (
    "sglang.srt.mem_cache.radix_cache.RadixCache",
    "sglang.srt.mem_cache.unified_radix_cache.UnifiedRadixCache",
    "sglang.srt.mem_cache.radix_cache_cpp.RadixCacheCpp",
)


def _state(cache, attrs: dict) -> dict:
    allocator = getattr(cache, "token_to_kv_pool_allocator", None)
    if allocator is not None:
        total = allocator.size
        attrs[sc.CACHE_TOTAL] = total
        attrs[sc.CACHE_USED] = total - allocator.available_size()
    attrs[sc.CACHE_EVICTABLE] = cache.evictable_size()
    attrs[sc.CACHE_PROTECTED] = cache.protected_size()
    attrs[sc.CACHE_CLASS] = type(cache).__name__
    return attrs


def _on_match(st: SchedulerState, call: Call, /, cache, params, *a, **k):
    st.cache_lookup_ns += call.end_ns - call.start_ns
    if not st.config.batch_spans:
        return
    attrs = {sc.CACHE_KEY_TOKENS: len(params.key), sc.CACHE_MATCHED_TOKENS: _compat.matched_len(call.result)}
    req = getattr(params, "req", None)
    if req is not None:
        attrs[sc.RID] = req.rid
    call.rec.emit(sc.CACHE_MATCH, call.start_ns, call.end_ns, _state(cache, attrs))


def _on_insert(st: SchedulerState, call: Call, /, cache, params, *a, **k):
    if not st.config.batch_spans:
        return
    key_len = len(params.key) if params.key is not None else 0
    attrs = {sc.CACHE_KEY_TOKENS: key_len,
             sc.CACHE_NEW_TOKENS: max(0, key_len - getattr(call.result, "prefix_len", 0))}
    call.rec.emit(sc.CACHE_INSERT, call.start_ns, call.end_ns, _state(cache, attrs))


# code an eviction request passes through on its way here: the cache classes, our hooks, SGLang's hook wrapper
_PASSED_THROUGH = ("mem_cache", os.path.dirname(os.path.abspath(__file__)), "hook_registry")


def _caller_outside_cache() -> str:
    """The function that asked for an eviction outside a KV allocation (a retraction, a cache flush...)."""
    frame = sys._getframe(1)
    while frame is not None and any(part in frame.f_code.co_filename for part in _PASSED_THROUGH):
        frame = frame.f_back
    return frame.f_code.co_name if frame is not None else ""


def _on_evict(st: SchedulerState, call: Call, /, cache, params, *a, **k):
    result = call.result
    attrs = {
        sc.CACHE_REQUESTED_TOKENS: params.num_tokens,
        sc.CACHE_FREED_TOKENS: getattr(result, "num_tokens_evicted", 0) if result is not None else 0,
        sc.CACHE_TRIGGER: st.kv_alloc_phase or _caller_outside_cache(),
    }
    call.rec.emit(sc.CACHE_EVICT, call.start_ns, call.end_ns, _state(cache, attrs))


def hooks(st: SchedulerState) -> dict:
    common = {"state": st, "inject_fault": st.config.inject_fault}
    out = {}
    for cls in CACHE_CLASSES:
        out[f"{cls}.match_prefix"] = around("cache_match_prefix", after=_on_match, **common)
        out[f"{cls}.insert"] = around("cache_insert", after=_on_insert, **common)
        out[f"{cls}.evict"] = around("cache_evict", after=_on_evict, **common)
    return out


def instrument(st: SchedulerState, skipped: list[str]) -> int:
    return _targets.register(hooks(st), skipped)
