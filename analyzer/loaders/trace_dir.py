"""Loading trace dirs (what the server recorded) into a trace model.

Spans are decoded once into parquet parts in the user's cache dir (``span_store``) and scanned from
there; columns computed from the recorded ones are added in ``_derived``, where the spans are read,
so the lazy and the in-memory spans both see them. Several trace dirs (DP replicas, servers, runs)
load as one model (``load_trace_dirs``); each dir's rows carry its short name in the ``server`` column.

Clock: spans and NVML samples share ``time.time_ns`` on one host; profiler files loaded on top are
put on that clock by their own loaders (``nsys``, ``kineto``).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import polars as pl

from sglang_tracing.analyzer.loaders.files import glob_inputs, read_bytes
from sglang_tracing.analyzer.loaders.span_store import open_store
from sglang_tracing.analyzer.model import COUNTER_SCHEMA, TraceModel, empty
from sglang_tracing.errors import TraceError, UsageError
from sglang_tracing.semconv import GPM_METRICS, NVML_SAMPLING_STOPPED

logger = logging.getLogger(__name__)
SUPPORTED_FORMAT_VERSIONS = (1,)


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
