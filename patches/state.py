"""What the patches remember between hook calls: one state object per SGLang process, and the named
records it holds.

``patches.instrument_all`` builds one ``TokenizerState``, ``SchedulerState`` and ``DetokenizerState``
and hands each to the patches of that process (the scheduler's to the scheduler, KV-allocation,
radix-cache and model-runner patches); each process then uses the one its SGLang component starts.
Single-threaded by construction: one thread per process (the scheduler's loop, the tokenizer
manager's event loop, the detokenizer's loop) drives every hook that touches it.
"""
from __future__ import annotations

import collections
import dataclasses
import socket
from typing import NamedTuple

from sglang_tracing.config import TraceConfig
from sglang_tracing.patches.detail import DetailControl
from sglang_tracing.patches.forward_gpu_times import ForwardGpuTimes
from sglang_tracing.patches.profile_steps import ForwardWindows
from sglang_tracing.runtime.ids import request_trace_key
from sglang_tracing.runtime.trace_context import TraceOrigin


# ---- tokenizer manager process ----
class Arrival(NamedTuple):
    received_ns: int
    prompt: str | None  # only with --record-prompts
    stream: bool | None  # None: not known (a request the arrival hook did not see)
    internal: str | None  # semconv INTERNAL value; None for a user's request


@dataclasses.dataclass(slots=True)
class TokenizerState:
    config: TraceConfig
    received: dict[str, Arrival] = dataclasses.field(default_factory=dict)
    first_output: dict[str, int] = dataclasses.field(default_factory=dict)  # rid -> first output delivered
    origins: dict[str, TraceOrigin] = dataclasses.field(default_factory=dict)  # rid -> the trace it joins
    # the HTTP server (same process): a socket that keeps the kernel stamping received packets
    timestamp_holder: socket.socket | None = None

    def trace_key(self, rid: str) -> str:
        origin = self.origins.get(rid)
        return request_trace_key(rid, origin.trace_id if origin else None)


# ---- scheduler process ----
class PrefixMatch(NamedTuple):
    start_ns: int
    end_ns: int
    matched_tokens: int


class PrefillPiece(NamedTuple):
    """Prompt tokens of one request computed by an extend forward."""
    req: object
    tokens: int


class PrefillChunk(NamedTuple):
    """A prefill piece once its forward's result was processed."""
    start_ns: int  # the forward's launch
    end_ns: int  # its result processed
    tokens: int
    forward_span_id: int


class Launched(NamedTuple):
    """A forward launched by ``run_batch``, until ``process_batch_result`` handles its result."""
    forward_span_id: int
    start_ns: int
    prefill: list[PrefillPiece] | None  # None for a decode forward


class RequestTrace:
    """A request's scheduler-side lifecycle; rides on SGLang's Req object (attribute ``_sgt``), so the
    per-iteration work is one attribute read and a length check per running request."""

    __slots__ = ("arrival", "scheduled", "match", "chunks", "tokens", "n_out", "done", "pd")

    def __init__(self, arrival: int):
        self.arrival = arrival
        self.scheduled = 0
        self.match: PrefixMatch | None = None
        self.chunks: list[PrefillChunk] = []
        self.tokens: list[int] = []  # wall time each output token was handed to the detokenizer
        self.n_out = 0
        self.done = False
        self.pd = None  # a PD request's marks (``disaggregation.PdMarks``)

    def stamp_outputs(self, n_out: int, now: int) -> None:
        """Stamp ``now`` on the output tokens beyond those stamped already (``n_out``: how many exist)."""
        if n_out > self.n_out and not self.done:
            self.tokens.extend([now] * (n_out - self.n_out))
            self.n_out = n_out


class RemovedNode(NamedTuple):
    """A radix node that left a tier of the hierarchical cache, until its eviction span is written."""
    on_host: bool
    age_ns: int  # since its last access
    tokens: int


@dataclasses.dataclass(slots=True)
class SchedulerState:
    config: TraceConfig
    is_leader: bool = True  # TP rank 0 writes the per-request spans; every rank writes batch spans
    policy: str = ""
    arrivals: dict[str, int] = dataclasses.field(default_factory=dict)  # rid -> arrival, until first scheduled
    launched: dict[int, Launched] = dataclasses.field(default_factory=dict)  # id(batch result) -> its forward
    iteration: int = 0  # scheduling passes that picked a batch
    # the scheduling pass in progress
    cache_lookup_ns: int = 0  # time in prefix-cache lookups
    kv_alloc_ns: int = 0  # time in KV allocation
    kv_alloc_phase: str = ""  # the allocation running now (what triggered an eviction)
    current_forward: int = 0  # span id of the forward being launched (parent of model-forward spans)
    # the model runner
    cuda: object = None  # torch.cuda when the runner is on a CUDA device
    layer_ranges: int = 0  # module ranges installed at --trace-level layer (between detail windows)
    gpu_times: ForwardGpuTimes = dataclasses.field(default_factory=ForwardGpuTimes)
    windows: ForwardWindows = dataclasses.field(default_factory=ForwardWindows)
    detail: DetailControl = dataclasses.field(default_factory=DetailControl)  # sglang-trace detail windows
    trace_ids: dict[str, int] = dataclasses.field(default_factory=dict)  # rid -> its given trace id, until emitted
    pd_backend: str = ""  # SGLang's --disaggregation-transfer-backend

    def trace_key(self, rid: str) -> str:
        return request_trace_key(rid, self.trace_ids.get(rid))
    # the hierarchical cache (HiRadixCache) and speculative decoding, where SGLang runs them
    hicache: bool = False
    removed: list[RemovedNode] = dataclasses.field(default_factory=list)
    # draft/verify spans awaiting their GPU events (``speculative.PendingPhase``)
    spec_pending: collections.deque = dataclasses.field(default_factory=collections.deque)


# ---- detokenizer process ----
@dataclasses.dataclass(slots=True)
class DetokenizeShare:
    """A request's detokenizer calls so far."""
    first_start: int
    last_end: int
    calls: int = 0
    share_ns: int = 0  # its share of each batch's time


@dataclasses.dataclass(slots=True)
class DetokenizerState:
    config: TraceConfig
    per_request: dict[str, DetokenizeShare] = dataclasses.field(default_factory=dict)
