"""The hierarchical-cache and speculative-decoding hooks, on CPU where neither feature runs.

HiCache: a real ``HiRadixCache`` (0.5.17's Python tree) with a real token allocator; only its cache
controller and host pool are stand-ins (the real ones need pinned memory and CUDA streams). The hooks
wrap the instance's methods exactly as SGLang's HookRegistry wraps the class's, so SGLang's own
insert / write-through / evict / match / load-back code calls them. On 0.5.23 (no HiRadixCache) the
test checks the UnifiedRadixCache targets' signatures instead. Speculative decoding: the registered
hooks driven with SGLang's real ``NgramVerifyInput``, ``ForwardMode``, ``SpeculativeAlgorithm`` and
``GenerationBatchResult``. Every expected number is written from the inputs."""
from __future__ import annotations

import functools
import importlib
import inspect
import types

import pytest

from sglang_tracing import semconv as sc
from sglang_tracing.config import TraceConfig
from sglang_tracing.patches import _targets, hiradix_cache, request_spans, speculative
from sglang_tracing.patches.forward_gpu_times import GpuAnchor
from sglang_tracing.patches.state import SchedulerState
from sglang_tracing.runtime import recorder

from span_log import SpanLog
from test_patch_bookkeeping import Batch, Req, _Event

BYTES_PER_TOKEN = 4096


def _state() -> SchedulerState:
    return SchedulerState(TraceConfig("/nonexistent", level="batch"))


# ---- stand-ins for the parts of HiCache that need a GPU ----
class HostPool:
    """Host slots on a free list, with the real pool's size / available_size / size_per_token."""

    def __init__(self, size: int):
        self.size, self.size_per_token, self.slots = size, BYTES_PER_TOKEN, list(range(size))

    def alloc(self, n: int):
        import torch

        if n > len(self.slots):
            return None
        out, self.slots = self.slots[:n], self.slots[n:]
        return torch.tensor(out, dtype=torch.int64)

    def release(self, indices) -> None:
        self.slots.extend(indices.tolist())

    def available_size(self) -> int:
        return len(self.slots)

    def clear(self) -> None:
        self.slots = list(range(self.size))


class LoadOp(types.SimpleNamespace):
    pass


class Ack(types.SimpleNamespace):
    pass


class Controller:
    """HiCacheController's bookkeeping without its CUDA streams: writes and loads are queued and
    acknowledged by the test, whose events say how long the copy took on the GPU."""
    write_policy = "write_through"

    def __init__(self, device_allocator, host: HostPool):
        self.mem_pool_device_allocator, self.mem_pool_host = device_allocator, host
        self.ack_write_queue, self.ack_load_queue, self.load_queue = [], [], []

    def reset(self) -> None:
        pass

    def write(self, device_indices, priority=None, node_id=-1):
        return self.mem_pool_host.alloc(len(device_indices))

    def load(self, host_indices, priority=None, node_id=-1):
        device = self.mem_pool_device_allocator.alloc(len(host_indices))
        if device is not None:
            self.load_queue.append(LoadOp(host_indices=host_indices, node_ids=[node_id]))
        return device

    def start_loading(self) -> int:
        if not self.load_queue:
            return -1
        ops, self.load_queue = self.load_queue, []
        self.ack_load_queue.append(Ack(start_event=_Event(1.0), finish_event=_Synced(3.5), timing_enabled=True,
                                       node_ids=[i for op in ops for i in op.node_ids],
                                       num_tokens=sum(len(op.host_indices) for op in ops)))
        return 0

    def evict_device(self, indices) -> int:
        self.mem_pool_device_allocator.free(indices)
        return len(indices)

    def evict_host(self, indices, backup_only=True) -> int:
        self.mem_pool_host.release(indices)
        return len(indices)


class _Synced(_Event):
    def synchronize(self) -> None:
        pass


def _hicache(device_tokens: int, host_tokens: int):
    """A real HiRadixCache tree on CPU: SGLang's RadixCache set-up, HiRadixCache's fields, stand-in transfers."""
    mod = pytest.importorskip("sglang.srt.mem_cache.hiradix_cache", reason="0.5.23 has no HiRadixCache")
    import torch
    from sglang.srt.mem_cache.allocator.token import TokenToKVPoolAllocator
    from sglang.srt.mem_cache.cache_init_params import CacheInitParams
    from sglang.srt.mem_cache.radix_cache import RadixCache

    allocator = TokenToKVPoolAllocator(device_tokens, torch.float16, "cpu", None, need_sort=False)
    cache = mod.HiRadixCache.__new__(mod.HiRadixCache)
    host = HostPool(host_tokens)
    cache.token_to_kv_pool_host, cache.cache_controller = host, Controller(allocator, host)
    cache.prefetch_loaded_tokens_by_reqid, cache.evictable_host_leaves = {}, set()
    cache.ongoing_write_through, cache.ongoing_load_back, cache.ongoing_prefetch, cache.ongoing_backup = {}, {}, {}, {}
    cache.write_through_threshold, cache.load_back_threshold, cache.enable_storage = 1, 10, False
    cache.pp_rank, cache.pp_size, cache.tp_world_size = 0, 1, 1
    cache.attn_cp_group = cache.attn_tp_group = cache.tp_group = None
    cache.metrics_collector, cache.work_list = None, []
    RadixCache.__init__(cache, CacheInitParams(disable=False, req_to_token_pool=None,
                                               token_to_kv_pool_allocator=allocator, page_size=1))
    return cache, allocator


def _hook_instance(cache, st: SchedulerState) -> None:
    """Wrap the instance's methods with our hooks, as HookRegistry wraps the class's."""
    prefix = hiradix_cache._CACHE + "."
    for target, hook in hiradix_cache.hooks(st).items():
        name = target[len(prefix):] if target.startswith(prefix) else None
        if name and name != "__init__":
            original = getattr(type(cache), name)
            setattr(cache, name, functools.partial(hook, original, cache))


def _finish_backups(cache) -> None:
    for ack_id in list(cache.ongoing_write_through):
        cache._finish_write_through_ack(ack_id, release_lock=True)


def test_a_prefix_backed_up_evicted_and_loaded_back_through_real_hiradix_code(monkeypatch):
    from sglang.srt.mem_cache.base_prefix_cache import EvictParams, InitLoadBackParams, InsertParams, \
        MatchPrefixParams
    from sglang.srt.mem_cache.radix_cache import RadixKey

    st, rec = _state(), SpanLog()
    monkeypatch.setattr(recorder, "_recorder", rec)
    cache, allocator = _hicache(device_tokens=64, host_tokens=100)
    _hook_instance(cache, st)
    prefix = list(range(100, 140))  # 40 tokens

    cache.insert(InsertParams(key=RadixKey(prefix), value=allocator.alloc(40)))  # write-through: backed up at once
    backup = rec.one(sc.HICACHE_BACKUP)
    assert (backup.attrs[sc.HICACHE_TOKENS], backup.attrs[sc.HICACHE_BYTES]) == (40, 40 * BYTES_PER_TOKEN)
    assert backup.attrs[sc.HICACHE_WRITE_BACK] is False
    assert (backup.attrs[sc.HICACHE_HOST_TOTAL], backup.attrs[sc.HICACHE_HOST_USED]) == (100, 40)
    _finish_backups(cache)

    cache.evict(EvictParams(num_tokens=40))  # a backed-up leaf is demoted: device slots freed, host copy kept
    evict = rec.one(sc.CACHE_EVICT)
    assert evict.attrs[sc.CACHE_FREED_TOKENS] == 40 and evict.attrs[sc.HICACHE_BYTES] == 40 * BYTES_PER_TOKEN
    assert evict.attrs[sc.HICACHE_EVICTED_NODE_TOKENS] == [40] and evict.attrs[sc.HICACHE_EVICTED_AGES_NS][0] >= 0
    assert evict.attrs[sc.CACHE_USED] == 0 and evict.attrs[sc.HICACHE_HOST_USED] == 40

    req = types.SimpleNamespace(rid="r1")
    match = cache.match_prefix(MatchPrefixParams(key=RadixKey(prefix + [1, 2]), req=req))
    m = rec.one(sc.CACHE_MATCH)
    assert (m.attrs[sc.CACHE_MATCHED_TOKENS], m.attrs[sc.HICACHE_HOST_MATCHED], m.attrs[sc.RID]) == (0, 40, "r1")

    cache.init_load_back(InitLoadBackParams(best_match_node=match.best_match_node,
                                            host_hit_length=match.host_hit_length, mem_quota=64, req=req))
    load = rec.one(sc.HICACHE_LOAD_BACK)
    node_id = match.best_match_node.id
    assert (load.attrs[sc.RID], load.attrs[sc.HICACHE_TOKENS], load.attrs[sc.HICACHE_REQUESTED_TOKENS]) == ("r1", 40, 40)
    assert load.attrs[sc.HICACHE_NODE_IDS] == [node_id] and load.attrs[sc.CACHE_USED] == 40

    assert cache.ready_to_load_host_cache() == 0  # SGLang's return value passes through
    issue = rec.one(sc.HICACHE_LOAD_ISSUE)
    assert (issue.attrs[sc.HICACHE_TOKENS], issue.attrs[sc.HICACHE_NODE_IDS], issue.attrs[sc.HICACHE_PRODUCER]) == \
        (40, [node_id], 0)
    assert cache.ready_to_load_host_cache() == -1 and len(rec.named(sc.HICACHE_LOAD_ISSUE)) == 1  # nothing queued

    st.gpu_times.anchor = GpuAnchor(_Event(0.5), 7_000_000)
    cache.loading_check(finish_count=1)
    done = rec.one(sc.HICACHE_LOAD_DONE)
    assert (done.attrs[sc.GPU_START_NS], done.attrs[sc.GPU_END_NS]) == (7_500_000, 10_000_000)
    assert (done.attrs[sc.HICACHE_TOKENS], done.attrs[sc.HICACHE_GPU_NS], done.attrs[sc.HICACHE_NODE_IDS]) == \
        (40, 2_500_000, [node_id])
    cache.loading_check(finish_count=0)
    assert len(rec.named(sc.HICACHE_LOAD_DONE)) == 1

    cache.evict(EvictParams(num_tokens=40))  # demoted again, then dropped from host
    cache.evict_host(40)
    host_evict = rec.one(sc.HICACHE_EVICT_HOST)
    assert (host_evict.attrs[sc.HICACHE_TOKENS], host_evict.attrs[sc.HICACHE_REQUESTED_TOKENS]) == (40, 40)
    assert host_evict.attrs[sc.HICACHE_EVICTED_NODE_TOKENS] == [40] and host_evict.attrs[sc.HICACHE_HOST_USED] == 0
    assert rec.failures == [] and st.removed == []


def test_host_pressure_evicts_host_inside_a_backup_and_each_eviction_keeps_its_own_nodes(monkeypatch):
    from sglang.srt.mem_cache.base_prefix_cache import EvictParams, InsertParams
    from sglang.srt.mem_cache.radix_cache import RadixKey

    st, rec = _state(), SpanLog()
    monkeypatch.setattr(recorder, "_recorder", rec)
    cache, allocator = _hicache(device_tokens=64, host_tokens=50)
    _hook_instance(cache, st)
    cache.insert(InsertParams(key=RadixKey(list(range(0, 30))), value=allocator.alloc(30)))
    _finish_backups(cache)
    cache.evict(EvictParams(num_tokens=30))
    cache.insert(InsertParams(key=RadixKey(list(range(500, 530))), value=allocator.alloc(30)))  # host full: 20 left
    _finish_backups(cache)
    assert [s.attrs[sc.HICACHE_TOKENS] for s in rec.named(sc.HICACHE_BACKUP)] == [30, 30]
    host_evict = rec.one(sc.HICACHE_EVICT_HOST)
    assert host_evict.attrs[sc.HICACHE_TOKENS] == 30 and host_evict.attrs[sc.HICACHE_EVICTED_NODE_TOKENS] == [30]
    assert rec.one(sc.CACHE_EVICT).attrs[sc.HICACHE_EVICTED_NODE_TOKENS] == [30]
    assert rec.failures == []


def test_hicache_targets_exist_with_the_arguments_the_hooks_read():
    """Each installed SGLang has one of the two shapes; every target the hooks name there resolves,
    and the parameters the handlers take by name are the method's own."""
    found = 0
    for module, cls in ((hiradix_cache._CACHE.rsplit(".", 1)), (hiradix_cache._UNIFIED.rsplit(".", 1))):
        try:
            klass = getattr(importlib.import_module(module), cls)
        except ImportError:
            continue
        targets = [t for t in hiradix_cache.hooks(_state()) if t.startswith(f"{module}.{cls}.")]
        for target in targets:
            method = getattr(klass, target.rsplit(".", 1)[1], None)
            if method is None:
                continue
            found += 1
            params = list(inspect.signature(method).parameters)
            if target.endswith(".evict_host"):
                assert params[1] == "num_tokens"
            if target.endswith(".init_load_back"):
                assert params[1] == "params"
    assert found >= 6


def test_request_prefill_span_carries_sglangs_tier_split_only_with_the_hierarchical_cache():
    req = Req("t", list(range(64)))
    req._cache_breakdown_computed = True
    req.cached_tokens_device, req.cached_tokens_host, req.cached_tokens_storage = 16, 32, 0
    assert request_spans._cache_tiers(req, hicache=True) == {sc.CACHED_DEVICE: 16, sc.CACHED_HOST: 32,
                                                         sc.CACHED_STORAGE: 0}
    assert request_spans._cache_tiers(req, hicache=False) == {}


# ---- speculative decoding ----
class _Cuda:
    """torch.cuda's Event for the hooks: each new event completes at the next time of ``times``."""

    def __init__(self, times: list[float]):
        self.times = list(times)
        self.made: list[_Event] = []

    def Event(self, enable_timing=False):  # noqa: N802 (torch's name)
        event = _Event(self.times.pop(0))
        event.record = lambda: None
        self.made.append(event)
        return event


def _spec_batch(n_reqs: int, draft_tokens: int, mode: str = "DECODE"):
    import torch
    from sglang.srt.model_executor.forward_batch_info import ForwardMode
    from sglang.srt.speculative.ngram_info import NgramVerifyInput
    from sglang.srt.speculative.spec_info import SpeculativeAlgorithm

    reqs = [Req(f"s{i}", list(range(16))) for i in range(n_reqs)]
    batch = Batch("DECODE", reqs)
    batch.forward_mode = getattr(ForwardMode, mode)
    batch.spec_algorithm = SpeculativeAlgorithm.NGRAM
    batch.spec_info = NgramVerifyInput(draft_token_num=draft_tokens, new_seq_lens=torch.full((n_reqs,), 16),
                                       accept_lens=torch.ones(n_reqs, dtype=torch.int32))
    return batch


def test_a_speculative_step_gives_draft_verify_and_accept_under_its_forward(monkeypatch):
    from sglang.srt.managers.utils import GenerationBatchResult

    st, rec = _state(), SpanLog()
    monkeypatch.setattr(recorder, "_recorder", rec)
    st.cuda = _Cuda([10.0, 10.5, 11.0, 14.0])  # draft 0.5 ms, verify 3 ms on the GPU
    st.gpu_times.anchor = GpuAnchor(_Event(0.0), 1_000_000_000)
    hooks = speculative.hooks(st)
    draft = hooks[speculative.DRAFTS[0]]
    verify = hooks[speculative._TARGET]
    batch = _spec_batch(3, draft_tokens=8)
    worker = type("NGRAMWorker", (), {})()
    st.current_forward = 0xF0
    assert draft(lambda w, b: "drafted", worker, batch) == "drafted"
    result = GenerationBatchResult(speculative_num_draft_tokens=8)
    assert verify(lambda w, b, **k: result, worker, batch, is_verify=True) is result
    assert verify(lambda w, b, **k: "plain", worker, batch) == "plain"  # not a verify: no span
    st.current_forward = 0
    assert rec.spans == []  # GPU spans wait for their events
    result.num_correct_drafts_per_req_cpu = [7, 0, 3]
    speculative.on_result(st, rec, batch, result, 0xF0, 500, 600)
    d, v, a = rec.one(sc.SPEC_DRAFT), rec.one(sc.SPEC_VERIFY), rec.one(sc.SPEC_ACCEPT)
    assert d.parent == v.parent == 0xF0
    assert (d.attrs[sc.GPU_DURATION_NS], v.attrs[sc.GPU_DURATION_NS]) == (500_000, 3_000_000)
    assert v.attrs[sc.GPU_START_NS] == 1_000_000_000 + 11_000_000
    assert d.attrs[sc.SPEC_ALGORITHM] == "NGRAMWorker" and v.attrs[sc.SPEC_ALGORITHM] == "NGRAM"
    assert d.attrs[sc.SPEC_DRAFT_TOKENS] == v.attrs[sc.SPEC_DRAFT_TOKENS] == 8 and d.attrs[sc.BATCH_SIZE] == 3
    assert a.attrs[sc.SPEC_CORRECT_DRAFTS] == [7, 0, 3] and a.attrs[sc.BATCH_RIDS] == ["s0", "s1", "s2"]
    assert a.attrs[sc.SPEC_DRAFT_TOKENS] == 8 and a.attrs[sc.FORWARD_SPAN_ID] == f"{0xF0:016x}"
    assert rec.failures == [] and not st.spec_pending


def test_a_prefill_or_unlaunched_step_drafts_nothing_and_a_plain_result_accepts_nothing(monkeypatch):
    from sglang.srt.managers.utils import GenerationBatchResult

    st, rec = _state(), SpanLog()
    monkeypatch.setattr(recorder, "_recorder", rec)
    draft = speculative.hooks(st)[speculative.DRAFTS[0]]
    st.current_forward = 0xF1
    draft(lambda w, b: None, object(), _spec_batch(2, 8, mode="EXTEND"))  # NGRAM's prefill: no drafting
    st.current_forward = 0
    draft(lambda w, b: None, object(), _spec_batch(2, 8))  # CUDA-graph capture: no served forward
    speculative.on_result(st, rec, _spec_batch(2, 8), GenerationBatchResult(), 0xF1, 0, 1)
    assert rec.spans == [] and rec.failures == []


class _ClockEvent:
    """A timing event that takes the next time of its clock each time it is recorded."""

    def __init__(self, clock: list[float]):
        self.clock, self.t_ms, self.done = clock, None, True

    def record(self, stream=None):
        self.t_ms = self.clock.pop(0)

    def query(self) -> bool:
        return self.done

    def elapsed_time(self, other) -> float:
        return other.t_ms - self.t_ms


class _ClockCuda:
    def __init__(self, clock: list[float]):
        self.clock, self.made = clock, []

    def Event(self, enable_timing=False):  # noqa: N802 (torch's name)
        self.made.append(_ClockEvent(self.clock))
        return self.made[-1]


def test_speculative_phases_record_pooled_events_again_only_once_read(monkeypatch):
    """Each step records a draft and a verify pair; a pair read at a result is recorded again by a later
    step (no new CUDA event), one still pending never is, and every step's spans carry its own times."""
    from sglang.srt.managers.utils import GenerationBatchResult

    st, rec = _state(), SpanLog()
    monkeypatch.setattr(recorder, "_recorder", rec)
    # per step: draft start, draft end, verify start, verify end (ms on the GPU)
    steps = [(10.0, 10.5, 11.0, 14.0), (20.0, 20.25, 21.0, 25.0), (30.0, 30.75, 31.0, 33.0)]
    st.cuda = _ClockCuda([t for step in steps for t in step])
    st.gpu_times.anchor = GpuAnchor(_ClockEvent([0.0]), 1_000_000_000)
    st.gpu_times.anchor.event.record()
    hooks = speculative.hooks(st)
    draft, verify = hooks[speculative.DRAFTS[0]], hooks[speculative._TARGET]
    worker = type("NGRAMWorker", (), {})()

    def step(forward: int, done: bool = True) -> None:
        batch = _spec_batch(2, draft_tokens=8)
        st.current_forward = forward
        draft(lambda w, b: None, worker, batch)
        result = verify(lambda w, b, **k: GenerationBatchResult(speculative_num_draft_tokens=8), worker, batch,
                        is_verify=True)
        st.current_forward = 0
        for event in st.cuda.made:
            event.done = done
        result.num_correct_drafts_per_req_cpu = [8, 2]
        speculative.on_result(st, rec, batch, result, forward, 0, 1)

    step(0xA1)
    step(0xA2, done=False)  # its end events have not completed: nothing emitted, its pairs stay out
    assert len(st.cuda.made) == 4 and len(st.spec_pending) == 2
    step(0xA3)
    assert len(st.cuda.made) == 8  # the third step could not take the second's pairs
    gpu = {(s.parent, s.name): (s.attrs[sc.GPU_START_NS] - 1_000_000_000, s.attrs[sc.GPU_DURATION_NS])
           for s in rec.spans if s.name in (sc.SPEC_DRAFT, sc.SPEC_VERIFY)}
    ms = 1_000_000
    assert gpu == {(0xA1, sc.SPEC_DRAFT): (10 * ms, ms // 2), (0xA1, sc.SPEC_VERIFY): (11 * ms, 3 * ms),
                   (0xA2, sc.SPEC_DRAFT): (20 * ms, ms // 4), (0xA2, sc.SPEC_VERIFY): (21 * ms, 4 * ms),
                   (0xA3, sc.SPEC_DRAFT): (30 * ms, 3 * ms // 4), (0xA3, sc.SPEC_VERIFY): (31 * ms, 2 * ms)}
    assert all(s.attrs[sc.SPEC_DRAFT_TOKENS] == 8 and s.attrs[sc.BATCH_SIZE] == 2
               for s in rec.spans if s.name in (sc.SPEC_DRAFT, sc.SPEC_VERIFY))
    assert not st.spec_pending and rec.failures == []


def test_decode_span_carries_sglangs_own_counts_with_speculation():
    req = Req("d", [1, 2, 3])
    assert speculative.request_attrs(req) == {}
    req.spec_verify_ct, req.spec_num_correct_drafts = 5, 12
    assert speculative.request_attrs(req) == {sc.SPEC_VERIFY_CT: 5, sc.SPEC_REQ_CORRECT: 12}


def test_speculative_targets_resolve_on_the_installed_sglang():
    """The draft and verify targets exist where this SGLang has the algorithm, without importing it."""
    present = [t for t in (*speculative.DRAFTS, speculative._TARGET) if _targets.locate(t)[0] != _targets.MISSING]
    assert speculative._TARGET in present and speculative.DRAFTS[0] in present
    from sglang.srt.managers.tp_worker import TpModelWorker

    assert "is_verify" in inspect.signature(TpModelWorker.forward_batch_generation).parameters


def test_a_failing_hicache_hook_is_counted_and_sglangs_result_passes_through(monkeypatch):
    from sglang.srt.mem_cache.base_prefix_cache import EvictParams, InsertParams
    from sglang.srt.mem_cache.radix_cache import RadixKey

    st, rec = SchedulerState(TraceConfig("/nonexistent", inject_fault="hicache_evict")), SpanLog()
    monkeypatch.setattr(recorder, "_recorder", rec)
    cache, allocator = _hicache(device_tokens=64, host_tokens=100)
    _hook_instance(cache, st)
    cache.insert(InsertParams(key=RadixKey(list(range(40))), value=allocator.alloc(40)))
    _finish_backups(cache)
    result = cache.evict(EvictParams(num_tokens=40))
    assert result.num_tokens_evicted == 40 and allocator.available_size() == 64  # SGLang's eviction happened
    assert rec.failures == [("hicache_evict", "InjectedFault")] and rec.named(sc.CACHE_EVICT) == []
    before = len(rec.spans)
    monkeypatch.setattr(recorder, "_recorder", None)  # not recording: the hooks only call through
    cache.insert(InsertParams(key=RadixKey(list(range(50, 60))), value=allocator.alloc(10)))
    _finish_backups(cache)
    assert cache.evict(EvictParams(num_tokens=10)).num_tokens_evicted == 10 and len(rec.spans) == before


def test_request_level_hooks_only_what_the_prefill_span_needs():
    st = SchedulerState(TraceConfig("/nonexistent", level="request"))
    names = {t.rsplit(".", 1)[1] for t in hiradix_cache.hooks(st)}
    assert names == {"init_hicache", "__init__", "match_prefix"}
    assert {t.rsplit(".", 1)[1] for t in hiradix_cache.hooks(_state())} >= {"init_load_back", "loading_check"}
