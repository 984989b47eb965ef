"""The trace model: every source loaded into polars frames with fixed schemas.

Frames (all times are wall-clock ns, the clock spans and NVML samples are recorded on):

- ``spans``: one row per span. trace_id, span_id, parent_id, name, start_ns, end_ns, dur_ns,
  role, pid, tp_rank, and one column per attribute key (names from ``semconv``).
- ``events``: span events. span_id, trace_id, name, time_ns.
- ``counters``: long format. t_ns, gpu, metric, value, source (``nvml``, ``gpm``, ``nsys``).
- ``kernels``: GPU kernels. start_ns, end_ns, dur_ns, name, device, stream, correlation,
  grid_x/y/z, block_x/y/z, registers, shared_bytes, source (``nsys``, ``kineto``).
- ``nvtx``: NVTX ranges. start_ns, end_ns, text, domain, span_id (parsed from the text), tid, style
  (``PushPop`` / ``StartEnd`` from nsys, ``user_annotation`` from Kineto).
- ``cpu_ops``: CPU-side calls: start_ns, end_ns, name, tid, correlation, category (``cuda_runtime``,
  ``cuda_driver``, ``osrt`` from nsys; ``cpu_op``, ``cuda_runtime``, ``cuda_driver`` from Kineto).
- ``memops``: GPU memory operations. start_ns, end_ns, dur_ns, operation (nsys stats names:
  ``[CUDA memcpy Host-to-Device]``, ``[CUDA memset]``), bytes, device, stream, correlation, source.
- ``devices``: GPUs the profiler saw. device, name, sm_count, memory_bytes, cc, source.
- ``ncu``: Nsight Compute metrics, long: kernel_id, kernel_name, section, metric, unit, value, text;
  ``ncu_rules``: ncu's own rule results (loaders/ncu.RULE_SCHEMA), with their estimated speedups.
- ``nsys_stats``: ``nsys stats`` CSV tables (report name -> frame), when only those were given.

Clock alignment: spans and NVML samples share ``time.time_ns`` on one host. nsys and Kineto
times are shifted onto it: by the median offset between NVTX ranges and the spans whose ids
they carry, else by the capture's own wall-clock session start.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import polars as pl

from sglang_tracing.analyzer.errors import TraceError
from sglang_tracing.analyzer.loaders.files import glob_inputs, read_bytes
from sglang_tracing.analyzer.loaders.otlp_json import SPAN_FIELDS, read_span_file
from sglang_tracing.semconv import GPM_METRICS

logger = logging.getLogger(__name__)
SUPPORTED_FORMAT_VERSIONS = (1,)

KERNEL_SCHEMA = {"start_ns": pl.Int64, "end_ns": pl.Int64, "dur_ns": pl.Int64, "name": pl.String,
                 "device": pl.Int64, "stream": pl.Int64, "correlation": pl.Int64,
                 "grid_x": pl.Int64, "grid_y": pl.Int64, "grid_z": pl.Int64,
                 "block_x": pl.Int64, "block_y": pl.Int64, "block_z": pl.Int64,
                 "registers": pl.Int64, "shared_bytes": pl.Int64, "source": pl.String}
NVTX_SCHEMA = {"start_ns": pl.Int64, "end_ns": pl.Int64, "text": pl.String, "domain": pl.String,
               "span_id": pl.String, "tid": pl.Int64, "style": pl.String}
COUNTER_SCHEMA = {"t_ns": pl.Int64, "gpu": pl.Int64, "metric": pl.String, "value": pl.Float64,
                  "source": pl.String}
CPU_OP_SCHEMA = {"start_ns": pl.Int64, "end_ns": pl.Int64, "name": pl.String, "tid": pl.Int64,
                 "correlation": pl.Int64, "category": pl.String}
MEMOP_SCHEMA = {"start_ns": pl.Int64, "end_ns": pl.Int64, "dur_ns": pl.Int64, "operation": pl.String,
                "bytes": pl.Int64, "device": pl.Int64, "stream": pl.Int64, "correlation": pl.Int64,
                "source": pl.String}
DEVICE_SCHEMA = {"device": pl.Int64, "name": pl.String, "sm_count": pl.Int64, "memory_bytes": pl.Int64,
                 "cc": pl.String, "source": pl.String}
SPAN_BASE = {"trace_id": pl.String, "span_id": pl.String, "parent_id": pl.String, "name": pl.String,
             "start_ns": pl.Int64, "end_ns": pl.Int64, "role": pl.String, "pid": pl.Int64,
             "tp_rank": pl.Int64}


def empty(schema: dict) -> pl.DataFrame:
    return pl.DataFrame(schema=schema)


@dataclasses.dataclass
class TraceModel:
    manifest: dict
    spans: pl.DataFrame
    events: pl.DataFrame
    counters: pl.DataFrame = dataclasses.field(default_factory=lambda: empty(COUNTER_SCHEMA))
    kernels: pl.DataFrame = dataclasses.field(default_factory=lambda: empty(KERNEL_SCHEMA))
    nvtx: pl.DataFrame = dataclasses.field(default_factory=lambda: empty(NVTX_SCHEMA))
    cpu_ops: pl.DataFrame = dataclasses.field(default_factory=lambda: empty(CPU_OP_SCHEMA))
    memops: pl.DataFrame = dataclasses.field(default_factory=lambda: empty(MEMOP_SCHEMA))
    devices: pl.DataFrame = dataclasses.field(default_factory=lambda: empty(DEVICE_SCHEMA))
    ncu: pl.DataFrame | None = None  # long ncu metrics (loaders/ncu.SCHEMA) when a profile was given
    ncu_rules: pl.DataFrame | None = None  # ncu's rule hints (loaders/ncu.RULE_SCHEMA)
    nsys_stats: dict[str, pl.DataFrame] = dataclasses.field(default_factory=dict)
    source_dir: str = ""
    cut_files: list[str] = dataclasses.field(default_factory=list)
    gpu_notes: list[dict] = dataclasses.field(default_factory=list)

    def col(self, name: str) -> bool:
        return name in self.spans.columns


def spans_frame(rows: list[tuple]) -> pl.DataFrame:
    """Rows from ``read_span_file`` (base fields, then attribute pairs) as one column per attribute key."""
    if not rows:
        return empty(SPAN_BASE).with_columns(dur_ns=pl.lit(0, pl.Int64))
    n = len(rows)
    base = list(zip(*(r[:9] for r in rows)))
    columns = {name: pl.Series(name, values, dtype=SPAN_BASE[name], strict=False)
               for name, values in zip(SPAN_FIELDS, base)}
    attrs: dict[str, list] = {}
    for i, r in enumerate(rows):
        for key, value in r[9]:
            col = attrs.get(key)
            if col is None:
                col = attrs[key] = [None] * n
            col[i] = value
    for key, values in attrs.items():
        if key not in columns:
            columns[key] = pl.Series(key, values, strict=False)
    df = pl.DataFrame(columns)
    return df.with_columns((pl.col("end_ns") - pl.col("start_ns")).alias("dur_ns")).sort("start_ns")


def read_manifest(trace_dir: Path) -> dict:
    path = trace_dir / "manifest.json"
    if not path.exists():
        raise TraceError(path, "missing: not a sglang-tracing trace dir (no manifest.json)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise TraceError(path, f"not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != "sglang-tracing":
        raise TraceError(path, "not a sglang-tracing manifest (no \"format\": \"sglang-tracing\")")
    version = manifest.get("format_version")
    if version not in SUPPORTED_FORMAT_VERSIONS:
        raise TraceError(path, f"unknown format_version {version!r} (this analyzer reads "
                               f"{', '.join(map(str, SUPPORTED_FORMAT_VERSIONS))})")
    return manifest


def read_counters(trace_dir: Path) -> pl.DataFrame:
    rows = []
    for path in glob_inputs(trace_dir, "nvml-*.jsonl"):
        lines = read_bytes(path).decode(errors="replace").splitlines()
        for i, line in enumerate(lines, 1):
            try:
                sample = json.loads(line)
            except json.JSONDecodeError:
                if i == len(lines):
                    break  # cut off by a kill
                raise TraceError(path, f"line {i}: not valid JSON") from None
            t, gpu = sample.pop("t_ns"), sample.pop("gpu")
            for metric, value in sample.items():
                source = "gpm" if metric in _GPM_FIELDS else "nvml"
                rows.append((t, gpu, metric, float(value), source))
    if not rows:
        return empty(COUNTER_SCHEMA)
    return pl.DataFrame(rows, schema=COUNTER_SCHEMA, orient="row").sort("t_ns")


_GPM_FIELDS = frozenset(GPM_METRICS)


def profiles_only() -> TraceModel:
    """An empty model for analyzing profiler files that came without a trace dir."""
    return TraceModel(manifest={"format": "sglang-tracing", "format_version": 1, "profiles_only": True},
                      spans=spans_frame([]), events=empty({"span_id": pl.String, "name": pl.String,
                                                          "time_ns": pl.Int64, "trace_id": pl.String}))


CACHE_DIR = ".sglang-trace-cache"


def _cache_key(files: list[Path]) -> str:
    import hashlib

    h = hashlib.blake2b(digest_size=12)
    for f in files:
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()


def _read_cached(trace_dir: Path, key: str) -> tuple[pl.DataFrame, pl.DataFrame] | None:
    folder = trace_dir / CACHE_DIR / key
    try:
        return pl.read_parquet(folder / "spans.parquet"), pl.read_parquet(folder / "events.parquet")
    except (OSError, pl.exceptions.PolarsError):
        return None


def _write_cache(trace_dir: Path, key: str, spans: pl.DataFrame, events: pl.DataFrame) -> None:
    """Parquet copy of the parsed spans: later runs skip JSON decoding. Best effort (read-only dirs)."""
    import shutil

    root = trace_dir / CACHE_DIR
    try:
        if root.exists():
            shutil.rmtree(root)
        (root / key).mkdir(parents=True)
        spans.write_parquet(root / key / "spans.parquet")
        events.write_parquet(root / key / "events.parquet")
    except OSError:
        logger.debug("no parsed-span cache for %s", trace_dir)


def load_trace_dir(trace_dir: str | Path, use_cache: bool = True) -> TraceModel:
    trace_dir = Path(trace_dir)
    if not trace_dir.is_dir():
        raise TraceError(trace_dir, "not a directory")
    files = glob_inputs(trace_dir, "spans-*.jsonl")
    if not files:
        if not any(trace_dir.iterdir()):
            raise TraceError(trace_dir, "empty directory: no manifest.json and no spans-*.jsonl")
    manifest = read_manifest(trace_dir)
    if not files:
        raise TraceError(trace_dir, "no spans-*.jsonl files: the server recorded nothing")
    still_writing = list(trace_dir.glob("*.active"))
    key = _cache_key(files)
    cached = _read_cached(trace_dir, key) if use_cache and not still_writing else None
    cut: list[str] = []
    if cached is not None:
        span_frame, ev = cached
    else:
        spans, events = [], []
        for path in files:
            s, e, was_cut = read_span_file(path)
            spans += s
            events += e
            if was_cut:
                cut.append(str(path))
        ev_schema = {"span_id": pl.String, "name": pl.String, "time_ns": pl.Int64, "trace_id": pl.String}
        ev = pl.DataFrame(events, schema=ev_schema, orient="row") if events else empty(ev_schema)
        span_frame = spans_frame(spans)
        if use_cache and not still_writing and not cut:
            _write_cache(trace_dir, key, span_frame, ev)
    notes = [json.loads(p.read_text()) for p in sorted(trace_dir.glob("gpu-*.json"))]
    return TraceModel(manifest=manifest, spans=span_frame, events=ev, counters=read_counters(trace_dir),
                      source_dir=str(trace_dir), cut_files=cut, gpu_notes=notes)
