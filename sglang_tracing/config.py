"""Tracing options, passed from the launcher to every SGLang process through the environment."""
from __future__ import annotations

import dataclasses
import os

from sglang_tracing.errors import UsageError

ENV_DIR = "SGLANG_TRACE_DIR"
ENV_LEVEL = "SGLANG_TRACE_LEVEL"
ENV_OTLP = "SGLANG_TRACE_OTLP_ENDPOINT"
ENV_PROMPTS = "SGLANG_TRACE_RECORD_PROMPTS"
ENV_NVML_MS = "SGLANG_TRACE_NVML_INTERVAL_MS"
ENV_PROFILE_STEPS = "SGLANG_TRACE_PROFILE_STEPS"
ENV_FLUSH_MS = "SGLANG_TRACE_FLUSH_MS"
ENV_CAPTURE_STEPS = "SGLANG_TRACE_CAPTURE_STEPS"  # cudaProfilerStart/Stop window, for nsys capture ranges
DEFAULT_CAPTURE_STEPS = "0:100000"  # every served forward until the server first goes idle
ENV_CACHE_DIR = "SGLANG_TRACE_CACHE_DIR"  # the analyzer's decoded-span cache; default: the user cache dir
# Testing aid: the named hook raises inside our guarded code, proving requests survive it.
ENV_INJECT_FAULT = "SGLANG_TRACE_INJECT_FAULT"

# every multi-GPU server we start: NVLink multicast (NVLS) can take a shared host's GPUs out of service
MULTICAST_OFF_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}

LEVELS = ("request", "batch", "layer")


MIN_NVML_INTERVAL_MS = 100  # GPM returns zeros below this on Hopper (measured on the H200)
CAPTURE_IDLE_END_S = 1.0  # an idle pause this long ends an nsys capture window


@dataclasses.dataclass(frozen=True)
class TraceConfig:
    trace_dir: str
    level: str = "batch"
    otlp_endpoint: str | None = None
    record_prompts: bool = False
    nvml_interval_ms: int = MIN_NVML_INTERVAL_MS
    profile_steps: tuple[int, int] | None = None  # (first forward, count)
    flush_ms: int = 250
    inject_fault: str | None = None
    capture_steps: tuple[int, int] | None = None  # (first forward, count) inside cudaProfilerStart/Stop

    @property
    def batch_spans(self) -> bool:
        return self.level in ("batch", "layer")

    @property
    def layer_ranges(self) -> bool:
        return self.level == "layer"

    def to_env(self) -> dict[str, str]:
        env = {ENV_DIR: os.path.abspath(self.trace_dir), ENV_LEVEL: self.level,
               ENV_NVML_MS: str(self.nvml_interval_ms), ENV_FLUSH_MS: str(self.flush_ms)}
        if self.otlp_endpoint:
            env[ENV_OTLP] = self.otlp_endpoint
        if self.record_prompts:
            env[ENV_PROMPTS] = "1"
        if self.profile_steps:
            env[ENV_PROFILE_STEPS] = "%d:%d" % self.profile_steps
        if self.inject_fault:
            env[ENV_INJECT_FAULT] = self.inject_fault
        if self.capture_steps:
            env[ENV_CAPTURE_STEPS] = "%d:%d" % self.capture_steps
        return env

    @classmethod
    def from_env(cls, environ: os._Environ | dict | None = None) -> TraceConfig | None:
        """The active config, or None when tracing is off (no trace dir set)."""
        env = os.environ if environ is None else environ
        trace_dir = env.get(ENV_DIR)
        if not trace_dir:
            return None
        return cls(
            trace_dir=trace_dir,
            level=validate_level(env.get(ENV_LEVEL, "batch")),
            otlp_endpoint=env.get(ENV_OTLP) or None,
            record_prompts=env.get(ENV_PROMPTS) == "1",
            nvml_interval_ms=validate_nvml_interval(int(env.get(ENV_NVML_MS, MIN_NVML_INTERVAL_MS))),
            profile_steps=parse_profile_steps(env.get(ENV_PROFILE_STEPS)),
            flush_ms=int(env.get(ENV_FLUSH_MS, 250)),
            inject_fault=env.get(ENV_INJECT_FAULT) or None,
            capture_steps=parse_profile_steps(env.get(ENV_CAPTURE_STEPS)),
        )


def validate_level(level: str) -> str:
    if level not in LEVELS:
        raise UsageError(f"trace level must be one of {', '.join(LEVELS)}, not {level!r}")
    return level


def validate_nvml_interval(ms: int) -> int:
    if ms < MIN_NVML_INTERVAL_MS:
        raise UsageError(f"NVML interval must be >= {MIN_NVML_INTERVAL_MS} ms (GPM reads zeros below), not {ms}")
    return ms


def parse_profile_steps(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        start, count = (int(x) for x in text.split(":"))
    except ValueError:
        raise UsageError(f"--profile-steps takes START:N (two integers), not {text!r}") from None
    if start < 0 or count <= 0:
        raise UsageError(f"--profile-steps START must be >= 0 and N > 0, not {text!r}")
    return start, count


# ---- detail on demand: how `sglang-trace detail` reaches a running server's scheduler processes ----
# The request is a small JSON file in the trace dir, replaced atomically; every scheduler rank stats it
# at most every DETAIL_POLL_S between scheduling passes (one os.stat, no thread, no socket).
DETAIL_CONTROL_FILE = "detail-request.json"
DETAIL_POLL_S = 0.1
MAX_DETAIL_FORWARDS = 100_000

# ---- live view (sglang-trace top) ----
TOP_REFRESH_S = 0.5  # the view redraws at least twice a second
TOP_WINDOW_S = 60.0  # sliding window of the p50/p99 TTFT and ITL and the finished count
TOP_RECENT_S = 10.0  # cache hit rate, evictions, tokens/s and GPU idle over the last this many seconds
TOP_TAIL_BYTES = 64 << 20  # on attach, read at most this much of each span file's end
