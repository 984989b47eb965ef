"""The trace model: every source loaded into polars frames with fixed schemas.

Frames (all times are wall-clock ns, the clock spans and NVML samples are recorded on):

- ``spans``: one row per span. trace_id, span_id, parent_id, name, start_ns, end_ns, role, pid,
  tp_rank, one column per attribute key (names from ``semconv``; in order of first appearance,
  dtype inferred from the values), then dur_ns and server (the trace dir's name, see below).
- ``events``: span events. span_id, name, time_ns, trace_id, server.
- ``counters``: long format. t_ns, gpu, metric, value, source (``nvml``, ``gpm``, ``nsys``), server.
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

Spans are decoded once into parquet parts in the user's cache dir (``loaders/span_store``) and read from
there: ``TraceModel.scan_spans()`` is a LazyFrame over them (only the span names and columns a query
uses are read, so an analysis written against it never holds every span), ``TraceModel.spans`` the
whole frame in memory, sorted by start_ns, read on first use. Columns computed from the recorded
ones are added in ``_derived``, so both see them.

Several trace dirs (DP replicas, servers, runs) load as one model (``load_trace_dirs``): the
``server`` column tells their rows apart, ``servers`` lists them (one dir: its name, the same column).

Clock alignment: spans and NVML samples share ``time.time_ns`` on one host. nsys and Kineto
times are shifted onto it: by the median offset between NVTX ranges and the spans whose ids
they carry, else by the capture's own wall-clock session start.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

import polars as pl

from sglang_tracing.analyzer.errors import TraceError
from sglang_tracing.config import UsageError
from sglang_tracing.analyzer.loaders.files import glob_inputs, read_bytes
from sglang_tracing.analyzer.loaders.otlp_columns import EVENT_SCHEMA, SPAN_BASE, SPAN_FIELDS
from sglang_tracing.semconv import GPM_METRICS, NVML_SAMPLING_STOPPED

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


def empty(schema: dict) -> pl.DataFrame:
    return pl.DataFrame(schema=schema)


@dataclasses.dataclass(frozen=True)
class Source:
    """One profiler input loaded into a model (its provenance; the recorded manifest is left as read)."""

    kind: str  # "nsys", "kineto" or "nsys_stats"
    path: str
    alignment: str  # how its times were put onto the span clock
    offset_ns: int | None = None  # the shift applied to its times, where one was measured
    counts: dict[str, int] = dataclasses.field(default_factory=dict)  # rows loaded: kernels, nvtx, tables...
    devices: list[dict] = dataclasses.field(default_factory=list)  # the GPUs the file names
    version: str | None = None  # of the tool that wrote it, where the file says


class TraceModel:
    """Every source of one analysis. ``spans`` is read into memory on first use (sorted by start_ns);
    ``scan_spans()`` gives the same rows lazily, so an analysis built on it never holds every span."""

    def __init__(self, manifest: dict, spans: pl.DataFrame | None = None, events: pl.DataFrame | None = None,
                 counters: pl.DataFrame | None = None, kernels: pl.DataFrame | None = None,
                 nvtx: pl.DataFrame | None = None, cpu_ops: pl.DataFrame | None = None,
                 memops: pl.DataFrame | None = None, devices: pl.DataFrame | None = None,
                 ncu: pl.DataFrame | None = None, ncu_rules: pl.DataFrame | None = None,
                 nsys_stats: dict[str, pl.DataFrame] | None = None, source_dir: str = "",
                 cut_files: list[str] | None = None, gpu_notes: list[dict] | None = None,
                 span_scan: pl.LazyFrame | None = None, servers: list[dict] | None = None,
                 sources: list[Source] | None = None):
        self.manifest = manifest  # as recorded; never written to
        self._spans = spans
        self._span_scan = span_scan
        self.events = events if events is not None else empty(EVENT_SCHEMA)
        self.counters = counters if counters is not None else empty(COUNTER_SCHEMA)
        self.kernels = kernels if kernels is not None else empty(KERNEL_SCHEMA)
        self.nvtx = nvtx if nvtx is not None else empty(NVTX_SCHEMA)
        self.cpu_ops = cpu_ops if cpu_ops is not None else empty(CPU_OP_SCHEMA)
        self.memops = memops if memops is not None else empty(MEMOP_SCHEMA)
        self.devices = devices if devices is not None else empty(DEVICE_SCHEMA)
        self.ncu = ncu  # long ncu metrics (loaders/ncu.SCHEMA) when a profile was given
        self.ncu_rules = ncu_rules  # ncu's rule hints (loaders/ncu.RULE_SCHEMA)
        self.nsys_stats = nsys_stats or {}
        self.source_dir = source_dir
        self.cut_files = cut_files or []
        self.gpu_notes = gpu_notes or []
        self.servers = servers or []  # one entry per trace dir: server, dir, spans, manifest
        self.sources = sources or []  # profiler files loaded on top, in load order

    @property
    def spans(self) -> pl.DataFrame:
        if self._spans is None:
            scan = self._span_scan if self._span_scan is not None else spans_frame([]).lazy()
            self._spans = scan.collect().sort("start_ns", maintain_order=True)
        return self._spans

    @spans.setter
    def spans(self, frame: pl.DataFrame) -> None:
        self._spans = frame

    def scan_spans(self) -> pl.LazyFrame:
        """The spans frame as a LazyFrame (unsorted): parquet parts on disk until collected."""
        if self._spans is not None or self._span_scan is None:
            return self.spans.lazy()
        return self._span_scan

    def col(self, name: str) -> bool:
        return name in self.scan_spans().collect_schema()


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
            sample.pop(NVML_SAMPLING_STOPPED, None)  # the sampler's last words: no figure
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
                      spans=spans_frame([]), events=empty(EVENT_SCHEMA))


def _derived(scan: pl.LazyFrame, server: str) -> pl.LazyFrame:
    """Columns computed from the recorded ones (added where the spans are read, so lazily too)."""
    return scan.with_columns((pl.col("end_ns") - pl.col("start_ns")).alias("dur_ns"), pl.lit(server).alias("server"))


def server_labels(trace_dirs: list[Path]) -> list[str]:
    """Short distinct names for trace dirs: their paths without the parts they all share at either end
    (``runs/a/trace`` and ``runs/b/trace`` are ``a`` and ``b``); one dir is its own name."""
    parts = [d.resolve().parts for d in trace_dirs]
    if len(parts) == 1:
        return [parts[0][-1] if parts[0] else str(trace_dirs[0])]
    head = len(os.path.commonprefix(parts))
    tail = len(os.path.commonprefix([p[head:][::-1] for p in parts]))
    labels = ["/".join(p[head:len(p) - tail]) for p in parts]
    return labels if all(labels) and len(set(labels)) == len(labels) else [str(d) for d in trace_dirs]


def load_trace_dir(trace_dir: str | Path, use_cache: bool = True, workers: int | None = None,
                   server: str | None = None) -> TraceModel:
    from sglang_tracing.analyzer.loaders.span_store import open_store

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
    server = server or server_labels([trace_dir])[0]
    store = open_store(trace_dir, files, use_cache=use_cache, workers=workers)
    notes = [json.loads(p.read_text()) for p in sorted(trace_dir.glob("gpu-*.json"))]
    return TraceModel(manifest=manifest, events=store.events.with_columns(pl.lit(server).alias("server")),
                      counters=read_counters(trace_dir).with_columns(pl.lit(server).alias("server")),
                      source_dir=str(trace_dir), cut_files=store.cut_files, gpu_notes=notes,
                      span_scan=_derived(store.scan(), server),
                      servers=[{"server": server, "dir": str(trace_dir), "spans": store.spans, "manifest": manifest}])


def load_trace_dirs(trace_dirs: list[str | Path], use_cache: bool = True, workers: int | None = None) -> TraceModel:
    """Several trace dirs (DP replicas, servers, runs) as one model; the ``server`` column tells them apart.
    One dir gives exactly ``load_trace_dir``; the manifest is the first dir's, ``servers`` lists them all."""
    dirs = [Path(d) for d in trace_dirs]
    if len(set(d.resolve() for d in dirs)) < len(dirs):
        raise UsageError("the same trace dir is given twice")
    models = [load_trace_dir(d, use_cache, workers, server=label) for d, label in zip(dirs, server_labels(dirs))]
    if len(models) == 1:
        return models[0]
    return TraceModel(manifest=models[0].manifest,
                      events=pl.concat([m.events for m in models], how="diagonal_relaxed"),
                      counters=pl.concat([m.counters for m in models], how="diagonal_relaxed"),
                      source_dir=", ".join(m.source_dir for m in models),
                      cut_files=[f for m in models for f in m.cut_files],
                      gpu_notes=[n for m in models for n in m.gpu_notes],
                      span_scan=pl.concat([m.scan_spans() for m in models], how="diagonal_relaxed"),
                      servers=[s for m in models for s in m.servers])
