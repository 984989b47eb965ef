"""The trace model: every source of one analysis as polars frames with fixed schemas.

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

``TraceModel.scan_spans()`` is a LazyFrame over the spans (parquet parts on disk until collected, so
an analysis written against it never holds every span), ``TraceModel.spans`` the whole frame in
memory, sorted by start_ns, read on first use. Several trace dirs (DP replicas, servers, runs) make
one model: the ``server`` column tells their rows apart, ``servers`` lists them.

This module is the model and its schemas only: loaders (``loaders/trace_dir``, ``loaders/nsys``...)
read files into frames in these schemas and return them with a ``Source`` record; a model takes
them with ``with_loaded``, which returns a new model and leaves this one as it was.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import NamedTuple

import polars as pl

SPAN_FIELDS = ("trace_id", "span_id", "parent_id", "name", "start_ns", "end_ns", "role", "pid", "tp_rank")
SPAN_BASE = {"trace_id": pl.String, "span_id": pl.String, "parent_id": pl.String, "name": pl.String,
             "start_ns": pl.Int64, "end_ns": pl.Int64, "role": pl.String, "pid": pl.Int64, "tp_rank": pl.Int64}
EVENT_SCHEMA = {"span_id": pl.String, "name": pl.String, "time_ns": pl.Int64, "trace_id": pl.String,
                "attributes": pl.String}  # the event's attributes as a JSON object (None: it has none)
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


def rows_frame(rows: list[tuple], schema: dict) -> pl.DataFrame:
    """Row tuples in one of these schemas as a frame, in time order where the schema has start_ns."""
    frame = pl.DataFrame(rows, schema=schema, orient="row") if rows else empty(schema)
    return frame.sort("start_ns") if "start_ns" in schema else frame


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


class Loaded(NamedTuple):
    """What a loader returns: frames named as the model's (``kernels``, ``nvtx``...) and where they came from."""

    frames: dict[str, pl.DataFrame]
    source: Source | None  # None: an input the model keeps no provenance for (an ncu profile is its own frames)


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
            scan = self._span_scan if self._span_scan is not None else no_spans().lazy()
            self._spans = scan.collect().sort("start_ns", maintain_order=True)
        return self._spans

    def scan_spans(self) -> pl.LazyFrame:
        """The spans frame as a LazyFrame (unsorted): parquet parts on disk until collected."""
        if self._spans is not None or self._span_scan is None:
            return self.spans.lazy()
        return self._span_scan

    def col(self, name: str) -> bool:
        return name in self.scan_spans().collect_schema()

    def with_loaded(self, *loaded: Loaded, nsys_stats: dict[str, pl.DataFrame] | None = None) -> TraceModel:
        """A new model with each loader's frames appended to this one's and its source listed (ncu frames,
        which a model has none of until given, are taken as they are); this model is left as it was."""
        new = copy.copy(self)
        for frames, source in loaded:
            for name, frame in frames.items():
                have = getattr(new, name)
                joined = frame if have is None else pl.concat([have, frame])
                setattr(new, name, joined.unique(maintain_order=True) if name == "devices" else joined)
            if source is not None:
                new.sources = [*new.sources, source]
        if nsys_stats is not None:
            new.nsys_stats = {**self.nsys_stats, **nsys_stats}
        return new


def no_spans() -> pl.DataFrame:
    return empty(SPAN_BASE).with_columns(dur_ns=pl.lit(0, pl.Int64))


def profiles_only() -> TraceModel:
    """An empty model for analyzing profiler files that came without a trace dir."""
    return TraceModel(manifest={"format": "sglang-tracing", "format_version": 1, "profiles_only": True},
                      spans=no_spans(), events=empty(EVENT_SCHEMA))
