"""The typed snapshot ``live_state.LiveState.snapshot`` computes; renderers and the terminal view describe it.

Times in ms, rates per second, shares in 0..1; None where the trace does not tell (no GPU, no lookups yet).
"""
from __future__ import annotations

import dataclasses

PHASES = ("queued", "prefill", "decode")


@dataclasses.dataclass(frozen=True)
class RequestRow:
    rid: str
    phase: str  # one of PHASES
    chunk: int | None  # prefill: chunks computed so far
    chunks: int | None  # prefill: chunks in all, estimated from the prompt tokens left and the largest chunk
    prompt_tokens: int | None
    cached_tokens: int | None
    output_tokens: int
    arrived_ns: int  # tokenized (the live view's arrival: the root span comes only at the end)
    queue_ms: float  # arrival -> first forward (still growing while queued)
    ttft_ms: float | None  # arrival -> first token computed (its result processed)
    itl_ms: float | None  # gap between its last two tokens
    batch_share: float | None  # its tokens in the last forward that ran it over that forward's tokens

    @property
    def phase_text(self) -> str:
        if self.phase != "prefill" or self.chunk is None:
            return self.phase
        return f"prefill {self.chunk}/{self.chunks}" if self.chunks else f"prefill {self.chunk}/?"


@dataclasses.dataclass(frozen=True)
class BatchPanel:
    mode: str | None  # the last forward's
    size: int | None
    tokens: int | None
    gpu_ms: float | None  # CUDA-event time of the last forward (None off a GPU)
    overlap: bool | None  # the overlap scheduler is on
    forwards: int  # forwards in the last ``over_s``
    output_tok_per_s: float
    prefill_tok_per_s: float
    gpu_idle_share: float | None  # GPU idle between the forwards of the last ``over_s`` (None without GPU times)
    over_s: float


@dataclasses.dataclass(frozen=True)
class CachePanel:
    total: int | None  # KV pool tokens
    used: int | None
    evictable: int | None
    protected: int | None
    lookups: int  # prefix lookups in the last ``over_s``
    hit_rate: float | None  # matched over looked-up tokens, last ``over_s``
    evictions: int  # last ``over_s``
    evicted_tokens: int
    evictions_total: int  # since the view attached
    evicted_tokens_total: int
    over_s: float


@dataclasses.dataclass(frozen=True)
class GpuPanel:
    available: bool
    reason: str  # why there is no GPU sample ("no GPU: ..."), or what the sampler could read
    gpu: int | None = None
    sm_util: float | None = None  # GPM, percent
    tensor_util: float | None = None
    dram_util: float | None = None
    gpu_util: float | None = None  # NVML, percent
    power_w: float | None = None
    mem_used: int | None = None  # bytes
    mem_total: int | None = None
    sample_age_s: float | None = None


@dataclasses.dataclass(frozen=True)
class WindowPanel:
    window_s: float
    finished: int  # the user's requests finished in the window (internal ones left out)
    ttft_p50_ms: float | None  # user-visible TTFT, as ``sglang-trace requests`` defines it
    ttft_p99_ms: float | None
    itl_p50_ms: float | None  # over every inter-token gap of those requests
    itl_p99_ms: float | None


@dataclasses.dataclass(frozen=True)
class DetailPanel:
    windows: int  # detail windows closed so far
    last: dict | None  # start_ns, end_ns, level, forwards of the last one


@dataclasses.dataclass(frozen=True)
class Snapshot:
    t_ns: int
    trace_dir: str
    newest_record_ns: int
    requests: list[RequestRow]
    batch: BatchPanel
    cache: CachePanel
    gpu: GpuPanel
    window: WindowPanel
    detail: DetailPanel
    skipped_bytes: int  # span-file bytes left unread on attach (older than the tail read)
    stale_requests: int = 0  # requests dropped from the table: no record for 5 minutes while others came

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        for row, obj in zip(out["requests"], self.requests):
            row["phase_text"] = obj.phase_text
        return out
