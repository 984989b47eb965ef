"""Hierarchical-cache instrumentation (``--enable-hierarchical-cache``): HiRadixCache's lookups, inserts and
device evictions as the prefix-cache spans (with the host tier's occupancy), and its transfers between tiers:
backups to host (write-through, or write-back at eviction) and to storage, load-backs to the device (queued
per request, issued to the load stream, seen complete with their GPU time), host evictions, and storage
prefetches. Every span carries both tiers' occupancy after the operation.

Raw facts only: which request a transfer served and whether its prefill waited are the analyzer's to work out
(load_back -> load_done share node ids; load_issue is timed inside the scheduling pass that feeds a forward).
Two class shapes: ``HiRadixCache`` (0.5.17, a Python tree of TreeNodes) and ``UnifiedRadixCache`` (0.5.23,
a Rust tree core addressed by node ids, whose lookups, inserts and evictions ``radix_cache`` already hooks);
the same handlers read both (a node or its id; an ack's ``num_tokens`` or ``num_tokens_by_pool``). Node
ages at eviction come from ``_record_remove_event``, which only 0.5.17's Python tree calls. SGLang imports
``hiradix_cache`` only when the feature is on, so its hooks apply then and never otherwise.
"""
from __future__ import annotations

import time

from sglang_tracing import semconv as sc
from sglang_tracing.patches import _compat, _targets, radix_cache
from sglang_tracing.patches._wrappers import Call, after_setup, around
from sglang_tracing.patches.state import RemovedNode, SchedulerState

_CACHE = "sglang.srt.mem_cache.hiradix_cache.HiRadixCache"
_UNIFIED = "sglang.srt.mem_cache.unified_radix_cache.UnifiedRadixCache"
MAX_REMOVED = 4096


def _host_pool(cache):
    host = getattr(cache, "token_to_kv_pool_host", None)
    if host is None:
        host = getattr(getattr(cache, "cache_controller", None), "mem_pool_host", None)
    return host


def _node_id(node) -> int:
    return node if isinstance(node, int) else getattr(node, "id", -1)


def _tiers(cache, attrs: dict) -> dict:
    """Device and host occupancy after an operation, on ``attrs``."""
    radix_cache._state(cache, attrs)
    host = _host_pool(cache)
    total = getattr(host, "size", None)
    if isinstance(total, int):
        attrs[sc.HICACHE_HOST_TOTAL] = total
        attrs[sc.HICACHE_HOST_USED] = total - host.available_size()
    return attrs


def _bytes(cache, tokens: int) -> int:
    return tokens * (getattr(_host_pool(cache), "size_per_token", 0) or 0)


def _transfer(cache, tokens: int, attrs: dict) -> dict:
    attrs[sc.HICACHE_TOKENS] = tokens
    attrs[sc.HICACHE_BYTES] = _bytes(cache, tokens)
    return _tiers(cache, attrs)


def _on_init(st: SchedulerState, call: Call, /, cache, *a, **k) -> None:
    st.hicache = True


def _after_init_hicache(st: SchedulerState, call: Call, /, cache, *a, **k):
    st.hicache = True


def _on_match(st: SchedulerState, call: Call, /, cache, params, *a, **k):
    rec, start, end, result = call.rec, call.start_ns, call.end_ns, call.result
    st.cache_lookup_ns += end - start
    if not st.config.batch_spans:
        return
    attrs = {sc.CACHE_KEY_TOKENS: len(params.key), sc.CACHE_MATCHED_TOKENS: _compat.matched_len(result),
             sc.HICACHE_HOST_MATCHED: getattr(result, "host_hit_length", 0) or 0}
    req = getattr(params, "req", None)
    if req is not None:
        attrs[sc.RID] = req.rid
    rec.emit(sc.CACHE_MATCH, start, end, _tiers(cache, attrs))


def _on_insert(st: SchedulerState, call: Call, /, cache, params, *a, **k):
    rec, start, end, result = call.rec, call.start_ns, call.end_ns, call.result
    if not st.config.batch_spans:
        return
    key_len = len(params.key) if params.key is not None else 0
    attrs = {sc.CACHE_KEY_TOKENS: key_len,
             sc.CACHE_NEW_TOKENS: max(0, key_len - getattr(result, "prefix_len", 0))}
    rec.emit(sc.CACHE_INSERT, start, end, _tiers(cache, attrs))


def _on_remove(st: SchedulerState, call: Call, /, cache, node, medium=None, *a, **k):
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


def _on_evict(st: SchedulerState, call: Call, /, cache, params, *a, **k):
    rec, start, end, result = call.rec, call.start_ns, call.end_ns, call.result
    ages, tokens = _take_removed(st, on_host=False)
    st.removed.clear()  # host copies dropped with their device nodes (write-back under host pressure)
    freed = getattr(result, "num_tokens_evicted", 0) if result is not None else 0
    attrs = {sc.CACHE_REQUESTED_TOKENS: params.num_tokens, sc.CACHE_FREED_TOKENS: freed,
             sc.CACHE_TRIGGER: st.kv_alloc_phase or radix_cache._caller_outside_cache(),
             sc.HICACHE_BYTES: _bytes(cache, freed),
             sc.HICACHE_EVICTED_AGES_NS: ages, sc.HICACHE_EVICTED_NODE_TOKENS: tokens}
    rec.emit(sc.CACHE_EVICT, start, end, _tiers(cache, attrs))


def _before_evict_host(st: SchedulerState, call: Call, /, cache, *a, **k) -> int:
    return _host_pool(cache).available_size()


def _on_evict_host(st: SchedulerState, call: Call, /, cache, num_tokens, *a, **k):
    rec, available_before, start, end = call.rec, call.token, call.start_ns, call.end_ns
    ages, tokens = _take_removed(st, on_host=True)
    freed = _host_pool(cache).available_size() - available_before if available_before is not None else 0
    rec.emit(sc.HICACHE_EVICT_HOST, start, end, _transfer(cache, freed, {
        sc.HICACHE_REQUESTED_TOKENS: num_tokens, sc.HICACHE_EVICTED_AGES_NS: ages,
        sc.HICACHE_EVICTED_NODE_TOKENS: tokens}))


def _on_backup(st: SchedulerState, call: Call, /, cache, node, write_back=False, *a, **k):
    rec, start, end, result = call.rec, call.start_ns, call.end_ns, call.result
    if not result:  # not backed up (parent not on host yet, or host full)
        return
    rec.emit(sc.HICACHE_BACKUP, start, end, _transfer(cache, result, {
        sc.HICACHE_WRITE_BACK: bool(write_back), sc.HICACHE_NODE_IDS: [node.id]}))


def _on_unified_backup(st: SchedulerState, call: Call, /, cache, node_id, *a, **k):
    """0.5.23: one node's device -> host copy (write-through, or write-back at eviction: not told apart)."""
    rec, start, end, host_indices = call.rec, call.start_ns, call.end_ns, call.result
    if host_indices is None:
        return
    rec.emit(sc.HICACHE_BACKUP, start, end, _transfer(cache, len(host_indices), {sc.HICACHE_NODE_IDS: [node_id]}))


def _on_backup_storage(st: SchedulerState, call: Call, /, cache, node, backup_len=None, *a, **k):
    rec, start, end = call.rec, call.start_ns, call.end_ns
    key = getattr(node, "key", None)
    tokens = backup_len if backup_len is not None else (len(key) if key is not None else 0)
    rec.emit(sc.HICACHE_BACKUP_STORAGE, start, end, _transfer(cache, tokens, {sc.HICACHE_NODE_IDS: [_node_id(node)]}))


def _loaded_tokens(result) -> int:
    """init_load_back's result: (device indices, node) on 0.5.17, (tokens, node id) on 0.5.23."""
    if not result:
        return 0
    first = result[0]
    return first if isinstance(first, int) else (len(first) if first is not None else 0)


def _on_load_back(st: SchedulerState, call: Call, /, cache, params, *a, **k):
    rec, start, end, result = call.rec, call.start_ns, call.end_ns, call.result
    loaded = _loaded_tokens(result)
    attrs = {sc.HICACHE_REQUESTED_TOKENS: getattr(params, "host_hit_length", 0) or 0,
             sc.HICACHE_NODE_IDS: [_node_id(params.best_match_node)]}
    req = getattr(params, "req", None)
    if req is not None:
        attrs[sc.RID] = req.rid
    rec.emit(sc.HICACHE_LOAD_BACK, start, end, _transfer(cache, loaded, attrs))


def _before_issue(st: SchedulerState, call: Call, /, cache, *a, **k) -> tuple[int, list[int]] | None:
    controller = getattr(cache, "cache_controller", None)  # None: 0.5.23 loads through its linker
    if controller is None:
        return None
    queue = controller.load_queue
    return sum(len(op.host_indices) for op in queue), [i for op in queue for i in op.node_ids]


def _on_issue(st: SchedulerState, call: Call, /, cache, *a, **k):
    rec, queued, start, end, producer = call.rec, call.token, call.start_ns, call.end_ns, call.result
    if producer is None or producer < 0 or not queued:
        return
    tokens, node_ids = queued
    rec.emit(sc.HICACHE_LOAD_ISSUE, start, end, _transfer(cache, tokens, {
        sc.HICACHE_PRODUCER: producer, sc.HICACHE_NODE_IDS: node_ids}))


def _before_loading_check(st: SchedulerState, call: Call, /, cache, *a, **k) -> list:
    controller = getattr(cache, "cache_controller", None)
    return list(controller.ack_load_queue) if controller is not None else []


def _on_loading_check(st: SchedulerState, call: Call, /, cache, *a, **k):
    rec, pending, start, end = call.rec, call.token, call.start_ns, call.end_ns
    if not pending:
        return
    left = {id(ack) for ack in cache.cache_controller.ack_load_queue}
    for ack in pending:
        if id(ack) in left:
            continue
        tokens = getattr(ack, "num_tokens", None)
        if tokens is None:  # 0.5.23: per pool; KV first
            tokens = max((getattr(ack, "num_tokens_by_pool", None) or {0: 0}).values())
        attrs = _transfer(cache, tokens, {sc.HICACHE_NODE_IDS: list(ack.node_ids)})
        if getattr(ack, "num_bytes", 0):
            attrs[sc.HICACHE_BYTES] = ack.num_bytes
        if getattr(ack, "timing_enabled", False):  # its finish event was synchronized by loading_check
            attrs[sc.HICACHE_GPU_NS] = int(ack.start_event.elapsed_time(ack.finish_event) * 1e6)
            anchor = st.gpu_times.anchor  # the forwards' clock: did the prefill start before the copy ended?
            if anchor is not None:
                attrs[sc.GPU_START_NS] = anchor.wall_ns + int(anchor.event.elapsed_time(ack.start_event) * 1e6)
                attrs[sc.GPU_END_NS] = anchor.wall_ns + int(anchor.event.elapsed_time(ack.finish_event) * 1e6)
        rec.emit(sc.HICACHE_LOAD_DONE, start, end, attrs)


def _rid(request) -> str:
    """A request id, or 0.5.23's CacheRequestHandle for one."""
    return request if isinstance(request, str) else str(getattr(request, "rid", request))


def _on_prefetch(st: SchedulerState, call: Call, /, cache, request, last_host_node, new_input_tokens, *a, **k):
    rec, start, end = call.rec, call.start_ns, call.end_ns
    if request not in getattr(cache, "ongoing_prefetch", {}):  # below threshold or rate limited: nothing asked
        return
    rec.emit(sc.HICACHE_PREFETCH, start, end, _transfer(cache, len(new_input_tokens), {sc.RID: _rid(request)}))


def _on_storage_hit(st: SchedulerState, call: Call, /, cache, request, *a, **k):
    rec, start, end, loaded = call.rec, call.start_ns, call.end_ns, call.result
    if loaded:
        rec.emit(sc.HICACHE_STORAGE_HIT, start, end, _transfer(cache, loaded, {sc.RID: _rid(request)}))


def hooks(st: SchedulerState) -> dict:
    common = {"state": st, "inject_fault": st.config.inject_fault}

    def timed(name, after, before=None):
        return around(f"hicache_{name}", after=after, before=before, **common)

    shared = {  # same name, both shapes
        "evict_host": timed("evict_host", _on_evict_host, _before_evict_host),
        "write_backup_storage": timed("write_backup_storage", _on_backup_storage),
        "init_load_back": timed("init_load_back", _on_load_back),
        "ready_to_load_host_cache": timed("load_issue", _on_issue, _before_issue),
        "loading_check": timed("loading_check", _on_loading_check, _before_loading_check),
        "prefetch_from_storage": timed("prefetch", _on_prefetch),
        "pop_prefetch_loaded_tokens": timed("storage_hit", _on_storage_hit),
    }
    setup = {f"{_UNIFIED}.init_hicache": timed("init_hicache", _after_init_hicache),
             f"{_CACHE}.__init__": after_setup("hicache_init", on_init=_on_init, **common),
             f"{_CACHE}.match_prefix": timed("match_prefix", _on_match)}
    if not st.config.batch_spans:  # request level: SGLang's tier split on the prefill span, no tier spans
        return setup
    return {
        **setup,
        **{f"{_CACHE}.{name}": hook for name, hook in shared.items()},
        **{f"{_UNIFIED}.{name}": hook for name, hook in shared.items()},
        f"{_UNIFIED}._execute_kv_backup": timed("write_backup", _on_unified_backup),
        f"{_CACHE}.insert": timed("insert", _on_insert),
        f"{_CACHE}.evict": timed("evict", _on_evict),
        f"{_CACHE}._record_remove_event": timed("record_remove", _on_remove),
        f"{_CACHE}.write_backup": timed("write_backup", _on_backup),
    }


def instrument(st: SchedulerState, skipped: list[str]) -> int:
    return _targets.register(hooks(st), skipped)
