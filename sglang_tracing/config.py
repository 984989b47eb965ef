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

# ---- always on: volume bounds and tail-based keep (docs/always-on.md) ----
ENV_FILE_MAX_MB = "SGLANG_TRACE_SPAN_FILE_MAX_MB"  # a span file this large is closed and a new part begun
ENV_FILES_KEEP = "SGLANG_TRACE_SPAN_FILES_KEEP"  # parts kept per process, the one being written included
ENV_KEEP_ONE_IN = "SGLANG_TRACE_KEEP_ONE_IN"  # full detail for 1 in N requests (1: every request)
ENV_KEEP_TTFT_MS = "SGLANG_TRACE_KEEP_TTFT_MS"  # ... and for every request slower than these
ENV_KEEP_ITL_MS = "SGLANG_TRACE_KEEP_ITL_MS"
ENV_KEEP_E2E_MS = "SGLANG_TRACE_KEEP_E2E_MS"
ENV_KEEP_PERCENTILE = "SGLANG_TRACE_KEEP_PERCENTILE"  # ... or above this percentile of the recent window
ENV_KEEP_WINDOW = "SGLANG_TRACE_KEEP_WINDOW"
ENV_BATCH_KEEP = "SGLANG_TRACE_BATCH_KEEP"  # all | kept | N
ENV_MAX_QUEUED = "SGLANG_TRACE_MAX_QUEUED"  # records a process holds for its exporter before dropping (counted)
# Testing aid: "<span name>:<seconds>": emitting that span sleeps first (a stop arriving mid-hook)
ENV_TEST_SLOW_EMIT = "SGLANG_TRACE_TEST_SLOW_EMIT"
BATCH_KEEP_ALL, BATCH_KEEP_KEPT = "all", "kept"
DEFAULT_MAX_QUEUED = 200_000
DEFAULT_KEEP_WINDOW = 1000

# every multi-GPU server we start: NVLink multicast (NVLS) can take a shared host's GPUs out of service
MULTICAST_OFF_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}

LEVELS = ("request", "batch", "layer")

# ---- server identity (prefill-decode disaggregation and any multi-server run) ----
ENV_SERVICE_NAME = "SGLANG_TRACE_SERVICE_NAME"
ENV_INSTANCE = "SGLANG_TRACE_INSTANCE"
ENV_ROLE = "SGLANG_TRACE_ROLE"
ENV_HOST = "SGLANG_TRACE_HOST"
DEFAULT_SERVICE_NAME = "sglang"


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
    # ---- always on ----
    span_file_max_mb: float = 0  # 0: one file per process, never rotated
    span_files_keep: int = 0  # 0: every part kept
    keep_one_in: int = 1
    keep_ttft_ms: float = 0  # 0: no threshold
    keep_itl_ms: float = 0
    keep_e2e_ms: float = 0
    keep_percentile: float = 0  # 0: off; e.g. 99 keeps requests above the window's p99
    keep_window: int = DEFAULT_KEEP_WINDOW
    batch_keep: str = BATCH_KEEP_ALL  # all | kept (those that ran a kept request) | "N" (1 in N)
    max_queued: int = DEFAULT_MAX_QUEUED
    test_slow_emit: str | None = None

    @property
    def tail_keep(self) -> bool:
        """Whether some requests keep only their summary (else every request keeps its full detail)."""
        return self.keep_one_in != 1 or any(
            (self.keep_ttft_ms, self.keep_itl_ms, self.keep_e2e_ms, self.keep_percentile))
    # identity: how this server names itself in its spans and manifest
    service_name: str = DEFAULT_SERVICE_NAME
    service_instance: str | None = None  # default: host:port of the server
    server_role: str | None = None  # default: SGLang's --disaggregation-mode (prefill, decode) or unified
    host_name: str | None = None  # default: the machine's hostname

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
        env.update(self._always_on_env())
        for key, value in ((ENV_SERVICE_NAME, self.service_name), (ENV_INSTANCE, self.service_instance),
                           (ENV_ROLE, self.server_role), (ENV_HOST, self.host_name)):
            if value:
                env[key] = value
        return env

    def _always_on_env(self) -> dict[str, str]:
        values = {ENV_FILE_MAX_MB: self.span_file_max_mb, ENV_FILES_KEEP: self.span_files_keep,
                  ENV_KEEP_ONE_IN: self.keep_one_in, ENV_KEEP_TTFT_MS: self.keep_ttft_ms,
                  ENV_KEEP_ITL_MS: self.keep_itl_ms, ENV_KEEP_E2E_MS: self.keep_e2e_ms,
                  ENV_KEEP_PERCENTILE: self.keep_percentile, ENV_KEEP_WINDOW: self.keep_window,
                  ENV_BATCH_KEEP: self.batch_keep, ENV_MAX_QUEUED: self.max_queued,
                  ENV_TEST_SLOW_EMIT: self.test_slow_emit}
        return {k: str(v) for k, v in values.items() if v is not None}

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
            **always_on_from_env(env),
            service_name=env.get(ENV_SERVICE_NAME) or DEFAULT_SERVICE_NAME,
            service_instance=env.get(ENV_INSTANCE) or None,
            server_role=env.get(ENV_ROLE) or None,
            host_name=env.get(ENV_HOST) or None,
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


def always_on_from_env(env) -> dict:
    """The always-on fields of ``TraceConfig`` set in ``env``, validated."""
    def num(key: str, cast=float):
        text = env.get(key)
        if text in (None, ""):
            return None
        try:
            return cast(float(text)) if cast is int else cast(text)
        except ValueError:
            raise UsageError(f"{key} must be a number, not {text!r}") from None

    fields = {"span_file_max_mb": num(ENV_FILE_MAX_MB), "span_files_keep": num(ENV_FILES_KEEP, int),
              "keep_one_in": num(ENV_KEEP_ONE_IN, int), "keep_ttft_ms": num(ENV_KEEP_TTFT_MS),
              "keep_itl_ms": num(ENV_KEEP_ITL_MS), "keep_e2e_ms": num(ENV_KEEP_E2E_MS),
              "keep_percentile": num(ENV_KEEP_PERCENTILE), "keep_window": num(ENV_KEEP_WINDOW, int),
              "max_queued": num(ENV_MAX_QUEUED, int)}
    fields = {k: v for k, v in fields.items() if v is not None}
    if env.get(ENV_BATCH_KEEP):
        fields["batch_keep"] = validate_batch_keep(env[ENV_BATCH_KEEP])
    if env.get(ENV_TEST_SLOW_EMIT):
        fields["test_slow_emit"] = env[ENV_TEST_SLOW_EMIT]
    return validate_always_on(fields)


def validate_always_on(fields: dict) -> dict:
    """Raise UsageError, one line, for an always-on value out of range; return ``fields``."""
    for name in ("span_file_max_mb", "span_files_keep", "keep_ttft_ms", "keep_itl_ms", "keep_e2e_ms"):
        if fields.get(name, 0) < 0:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 0, not {fields[name]}")
    if fields.get("keep_one_in", 1) < 1:
        raise UsageError(f"--keep-one-in must be >= 1 (1: every request), not {fields['keep_one_in']}")
    if not 0 <= fields.get("keep_percentile", 0) < 100:
        raise UsageError(f"--keep-percentile must be in [0, 100), not {fields['keep_percentile']}")
    if fields.get("keep_window", DEFAULT_KEEP_WINDOW) < 10:
        raise UsageError(f"--keep-window must be >= 10 requests, not {fields['keep_window']}")
    if fields.get("span_files_keep", 0) == 1:
        raise UsageError("--span-files-keep must be 0 (all) or >= 2: the part being written is never deleted")
    if fields.get("span_files_keep") and not fields.get("span_file_max_mb"):
        raise UsageError("--span-files-keep needs --span-file-max-mb (parts are cut at that size)")
    if fields.get("max_queued", DEFAULT_MAX_QUEUED) < 1000:
        raise UsageError(f"--max-queued must be >= 1000 records, not {fields['max_queued']}")
    return fields


def validate_batch_keep(text: str) -> str:
    """``all``, ``kept`` or a whole number N >= 1 (1 in N forwards)."""
    if text in (BATCH_KEEP_ALL, BATCH_KEEP_KEPT) or (text.isdigit() and int(text) >= 1):
        return text
    raise UsageError(f"--batch-keep must be all, kept or a whole number N >= 1, not {text!r}")


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
