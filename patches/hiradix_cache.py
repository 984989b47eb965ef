"""Hierarchical-cache instrumentation (``--enable-hierarchical-cache``): HiRadixCache's lookups, inserts and
device evictions as the prefix-cache spans (with the host tier's occupancy), and its transfers between tiers:
backups to host (write-through, or write-back at eviction) and to storage, load-backs to the device (queued
per request, issued to the load stream, seen complete with their GPU time), host evictions, and storage
prefetches. Every span carries both tiers' occupancy after the operation.

Raw facts only: which request a transfer served and whether its prefill waited are the analyzer's to work out
(load_back -> load_done share node ids; load_issue is timed inside the scheduling pass that feeds a forward).
SGLang imports ``hiradix_cache`` only when the feature is on, so these hooks apply then and never otherwise.
"""
from __future__ import annotations

import time

from sglang_tracing import semconv as sc
from sglang_tracing.patches import _compat, _hooks, radix_cache
from sglang_tracing.patches.state import RemovedNode, SchedulerState

_CACHE = "sglang.srt.mem_cache.hiradix_cache.HiRadixCache"
MAX_REMOVED = 4096


def _tiers(cache, attrs: dict) -> dict:
    """Device and host occupancy after an operation, on ``attrs``."""
    radix_cache._state(cache, attrs)
    host = getattr(cache, "token_to_kv_pool_host", None)
    if host is not None:
        attrs[sc.HICACHE_HOST_TOTAL] = host.size
        attrs[sc.HICACHE_HOST_USED] = host.size - host.available_size()
    return attrs


def _bytes(cache, tokens: int) -> int:
    host = getattr(cache, "token_to_kv_pool_host", None)
    return tokens * getattr(host, "size_per_token", 0) if host is not None else 0


def _transfer(cache, tokens: int, attrs: dict) -> dict:
    attrs[sc.HICACHE_TOKENS] = tokens
    attrs[sc.HICACHE_BYTES] = _bytes(cache, tokens)
    return _tiers(cache, attrs)


def _on_init(st: SchedulerState, cache) -> None:
    st.hicache = True


def _on_match(st: SchedulerState, rec, token, start, end, result, cache, params, *a, **k):
    st.cache_lookup_ns += end - start
    if not st.config.batch_spans:
        return
    attrs = {sc.CACHE_KEY_TOKENS: len(params.key), sc.CACHE_MATCHED_TOKENS: _compat.matched_len(result),
             sc.HICACHE_HOST_MATCHED: getattr(result, "host_hit_length", 0) or 0}
    req = getattr(params, "req", None)
    if req is not None:
        attrs[sc.RID] = req.rid
    rec.emit(sc.CACHE_MATCH, start, end, _tiers(cache, attrs))


def _on_insert(st: SchedulerState, rec, token, start, end, result, cache, params, *a, **k):
    if not st.config.batch_spans:
        return
    key_len = len(params.key) if params.key is not None else 0
    attrs = {sc.CACHE_KEY_TOKENS: key_len,
             sc.CACHE_NEW_TOKENS: max(0, key_len - getattr(result, "prefix_len", 0))}
    rec.emit(sc.CACHE_INSERT, start, end, _tiers(cache, attrs))


def _on_remove(st: SchedulerState, rec, token, start, end, result, cache, node, medium=None, *a, **k):
    """A node leaves a tier: its age (since its last access) waits for the eviction that removed it."""
    if len(st.removed) >= MAX_REMOVED:  # removals no eviction span collected
        del st.removed[:MAX_REMOVED // 2]
    key = getattr(node, "key", None)
    on_host = medium is not None and getattr(medium, "name", str(medium)) != "GPU"
    st.removed.append(RemovedNode(on_host, int((time.monotonic() - node.last_access_time) * 1e9),
                                  len(key) if key is not None else 0))


def _take_removed(st: SchedulerState, on_host: bool) -> tuple[list[int], list[int]]:
    ages, tokens, kept = [], [], []
    for removed in st.removed:
        if removed.on_host == on_host:
            ages.append(removed.age_ns)
            tokens.append(removed.tokens)
        else:
            kept.append(removed)
    st.removed[:] = kept
    return ages, tokens


def _on_evict(st: SchedulerState, rec, token, start, end, result, cache, params, *a, **k):
    ages, tokens = _take_removed(st, on_host=False)
    freed = getattr(result, "num_tokens_evicted", 0) if result is not None else 0
    attrs = {sc.CACHE_REQUESTED_TOKENS: params.num_tokens, sc.CACHE_FREED_TOKENS: freed,
             sc.CACHE_TRIGGER: st.kv_alloc_phase or radix_cache._caller_outside_cache(),
             sc.HICACHE_BYTES: _bytes(cache, freed),
             sc.HICACHE_EVICTED_AGES_NS: ages, sc.HICACHE_EVICTED_NODE_TOKENS: tokens}
    rec.emit(sc.CACHE_EVICT, start, end, _tiers(cache, attrs))


def _before_evict_host(st: SchedulerState, rec, cache, *a, **k) -> int:
    return cache.token_to_kv_pool_host.available_size()


def _on_evict_host(st: SchedulerState, rec, available_before, start, end, result, cache, num_tokens, *a, **k):
    ages, tokens = _take_removed(st, on_host=True)
    freed = cache.token_to_kv_pool_host.available_size() - available_before if available_before is not None else 0
    rec.emit(sc.HICACHE_EVICT_HOST, start, end, _transfer(cache, freed, {
        sc.HICACHE_REQUESTED_TOKENS: num_tokens, sc.HICACHE_EVICTED_AGES_NS: ages,
        sc.HICACHE_EVICTED_NODE_TOKENS: tokens}))


def _on_backup(st: SchedulerState, rec, token, start, end, result, cache, node, write_back=False, *a, **k):
    if not result:  # not backed up (parent not on host yet, or host full)
        return
    rec.emit(sc.HICACHE_BACKUP, start, end, _transfer(cache, result, {
        sc.HICACHE_WRITE_BACK: bool(write_back), sc.HICACHE_NODE_IDS: [node.id]}))


def _on_backup_storage(st: SchedulerState, rec, token, start, end, result, cache, node, backup_len=None, *a, **k):
    tokens = backup_len if backup_len is not None else len(node.key)
    rec.emit(sc.HICACHE_BACKUP_STORAGE, start, end, _transfer(cache, tokens, {sc.HICACHE_NODE_IDS: [node.id]}))


def _on_load_back(st: SchedulerState, rec, token, start, end, result, cache, params, *a, **k):
    loaded = len(result[0]) if result is not None and result[0] is not None else 0
    attrs = {sc.HICACHE_REQUESTED_TOKENS: getattr(params, "host_hit_length", 0) or 0,
             sc.HICACHE_NODE_IDS: [params.best_match_node.id]}
    req = getattr(params, "req", None)
    if req is not None:
        attrs[sc.RID] = req.rid
    rec.emit(sc.HICACHE_LOAD_BACK, start, end, _transfer(cache, loaded, attrs))


def _before_issue(st: SchedulerState, rec, cache, *a, **k) -> tuple[int, list[int]]:
    queue = cache.cache_controller.load_queue
    return sum(len(op.host_indices) for op in queue), [i for op in queue for i in op.node_ids]


def _on_issue(st: SchedulerState, rec, queued, start, end, producer, cache, *a, **k):
    if producer is None or producer < 0 or not queued:
        return
    tokens, node_ids = queued
    rec.emit(sc.HICACHE_LOAD_ISSUE, start, end, _transfer(cache, tokens, {
        sc.HICACHE_PRODUCER: producer, sc.HICACHE_NODE_IDS: node_ids}))


def _before_loading_check(st: SchedulerState, rec, cache, *a, **k) -> list:
    return list(cache.cache_controller.ack_load_queue)


def _on_loading_check(st: SchedulerState, rec, pending, start, end, result, cache, *a, **k):
    if not pending:
        return
    left = {id(ack) for ack in cache.cache_controller.ack_load_queue}
    for ack in pending:
        if id(ack) in left:
            continue
        attrs = _transfer(cache, getattr(ack, "num_tokens", 0), {sc.HICACHE_NODE_IDS: list(ack.node_ids)})
        if getattr(ack, "timing_enabled", False):  # its finish event was synchronized by loading_check
            attrs[sc.HICACHE_GPU_NS] = int(ack.start_event.elapsed_time(ack.finish_event) * 1e6)
        rec.emit(sc.HICACHE_LOAD_DONE, start, end, attrs)


def _on_prefetch(st: SchedulerState, rec, token, start, end, result, cache, req_id, last_host_node,
                 new_input_tokens, *a, **k):
    if req_id not in getattr(cache, "ongoing_prefetch", {}):  # below threshold or rate limited: nothing asked
        return
    rec.emit(sc.HICACHE_PREFETCH, start, end, _transfer(cache, len(new_input_tokens), {sc.RID: req_id}))


def _on_storage_hit(st: SchedulerState, rec, token, start, end, loaded, cache, req_id, *a, **k):
    rec.emit(sc.HICACHE_STORAGE_HIT, start, end, _transfer(cache, loaded or 0, {sc.RID: req_id}))


def hooks(st: SchedulerState) -> dict:
    fault = st.config.inject_fault

    def around(name, after, before=None):
        return _hooks.around(f"hicache_{name}", after, before, inject_fault=fault, state=st)

    return {
        f"{_CACHE}.__init__": _hooks.after_setup("hicache_init", _on_init, fault, state=st),
        f"{_CACHE}.match_prefix": around("match_prefix", _on_match),
        f"{_CACHE}.insert": around("insert", _on_insert),
        f"{_CACHE}.evict": around("evict", _on_evict),
        f"{_CACHE}._record_remove_event": around("record_remove", _on_remove),
        f"{_CACHE}.evict_host": around("evict_host", _on_evict_host, _before_evict_host),
        f"{_CACHE}.write_backup": around("write_backup", _on_backup),
        f"{_CACHE}.write_backup_storage": around("write_backup_storage", _on_backup_storage),
        f"{_CACHE}.init_load_back": around("init_load_back", _on_load_back),
        f"{_CACHE}.ready_to_load_host_cache": around("load_issue", _on_issue, _before_issue),
        f"{_CACHE}.loading_check": around("loading_check", _on_loading_check, _before_loading_check),
        f"{_CACHE}.prefetch_from_storage": around("prefetch", _on_prefetch),
        f"{_CACHE}.pop_prefetch_loaded_tokens": around("storage_hit", _on_storage_hit),
    }


def instrument(st: SchedulerState, skipped: list[str]) -> int:
    return _hooks.register(hooks(st), skipped)
