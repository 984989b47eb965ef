"""Prefix-cache instrumentation: match_prefix, insert and evict on every radix-cache class
SGLang ships with the unified ``*Params`` API (``RadixCache``; ``UnifiedRadixCache``, the
default from 0.5.23, whose tree lives in a Rust core; ``RadixCacheCpp``), each span
carrying the cache state after the operation.

SGLang imports a cache class's module only when it picks that class (``RadixCacheCpp``, behind
``SGLANG_EXPERIMENTAL_CPP_RADIX_TREE``, builds a C++ extension on import), so these hooks apply
when SGLang imports the module, never before; a method the class lacks (``RadixCacheCpp.insert``
on 0.5.17) is logged and left out."""
from __future__ import annotations

import sys

from sglang_tracing import semconv as sc
from sglang_tracing.config import TraceConfig
from sglang_tracing.patches import _compat, _hooks, iteration, kv_allocation

CACHE_CLASSES = (
    "sglang.srt.mem_cache.radix_cache.RadixCache",
    "sglang.srt.mem_cache.unified_radix_cache.UnifiedRadixCache",
    "sglang.srt.mem_cache.radix_cache_cpp.RadixCacheCpp",
)
_config: TraceConfig | None = None


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


def _on_match(rec, token, start, end, result, cache, params, *a, **k):
    iteration.add_cache_lookup(end - start)
    if not _config.batch_spans:
        return
    attrs = {sc.CACHE_KEY_TOKENS: len(params.key), sc.CACHE_MATCHED_TOKENS: _compat.matched_len(result)}
    req = getattr(params, "req", None)
    if req is not None:
        attrs[sc.RID] = req.rid
    rec.emit(sc.CACHE_MATCH, start, end, _state(cache, attrs))


def _on_insert(rec, token, start, end, result, cache, params, *a, **k):
    if not _config.batch_spans:
        return
    key_len = len(params.key) if params.key is not None else 0
    attrs = {sc.CACHE_KEY_TOKENS: key_len,
             sc.CACHE_NEW_TOKENS: max(0, key_len - getattr(result, "prefix_len", 0))}
    rec.emit(sc.CACHE_INSERT, start, end, _state(cache, attrs))


def _caller_outside_cache() -> str:
    frame = sys._getframe(3)
    while frame is not None and "mem_cache" in frame.f_code.co_filename:
        frame = frame.f_back
    return frame.f_code.co_name if frame is not None else ""


def _on_evict(rec, token, start, end, result, cache, params, *a, **k):
    attrs = {
        sc.CACHE_REQUESTED_TOKENS: params.num_tokens,
        sc.CACHE_FREED_TOKENS: getattr(result, "num_tokens_evicted", 0) if result is not None else 0,
        sc.CACHE_TRIGGER: kv_allocation.phase or _caller_outside_cache(),
    }
    rec.emit(sc.CACHE_EVICT, start, end, _state(cache, attrs))


def instrument(config: TraceConfig, skipped: list[str]) -> int:
    global _config
    _config = config
    fault = config.inject_fault
    hooks = {}
    for cls in CACHE_CLASSES:
        hooks[f"{cls}.match_prefix"] = _hooks.around("cache_match_prefix", _on_match, inject_fault=fault)
        hooks[f"{cls}.insert"] = _hooks.around("cache_insert", _on_insert, inject_fault=fault)
        hooks[f"{cls}.evict"] = _hooks.around("cache_evict", _on_evict, inject_fault=fault)
    return _hooks.register(hooks, skipped)
