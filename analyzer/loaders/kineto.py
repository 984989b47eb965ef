"""Kineto / Chrome-trace JSON (torch profiler, SGLang's /start_profile): kernels, GPU memcpy/memset,
CUDA runtime and driver calls, CPU ops, user annotations (``record_function`` ranges), device names.

Times: ``ts`` and ``dur`` are float microseconds; ``baseTimeNanoseconds`` (torch >= 2.0) puts them on the
wall clock. Kernels and memory operations carry the ``correlation`` id of the runtime/driver call that
launched them.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import polars as pl

from sglang_tracing.errors import TraceError
from sglang_tracing.analyzer.loaders.files import read_bytes
from sglang_tracing.analyzer.model import (
    CPU_OP_SCHEMA, DEVICE_SCHEMA, KERNEL_SCHEMA, MEMOP_SCHEMA, NVTX_SCHEMA, Loaded, Source, rows_frame,
)

CPU_CATEGORIES = ("cpu_op", "cuda_runtime", "cuda_driver")
# the category names of older Kineto (torch 1.8-1.10), by their current name
_CATEGORY = {"kernel": "kernel", "memcpy": "gpu_memcpy", "memset": "gpu_memset", "runtime": "cuda_runtime",
             "driver": "cuda_driver", "operator": "cpu_op"}
ANNOTATION = "user_annotation"  # CPU-side record_function ranges; gpu_user_annotation is their GPU shadow
_MEMCPY = re.compile(r"^Memcpy (\w)to(\w)\b")
_ENDPOINT = {"H": "Host", "D": "Device", "A": "Array", "P": "Peer"}


def read(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise TraceError(path, "no such file")
    raw = read_bytes(path)
    try:
        doc = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        what = "truncated" if isinstance(exc, json.JSONDecodeError) and exc.pos >= len(raw) - 2 else "not valid"
        raise TraceError(path, f"{what} JSON ({getattr(exc, 'msg', exc)})") from None
    events = doc.get("traceEvents") if isinstance(doc, dict) else doc if isinstance(doc, list) else None
    if not isinstance(events, list):
        raise TraceError(path, "not a Chrome/Kineto trace (no traceEvents list)")
    if not events:
        raise TraceError(path, "a Chrome/Kineto trace with no events: nothing to analyze")
    if not any(isinstance(e, dict) for e in events):
        raise TraceError(path, f"not a Chrome/Kineto trace (a list of {len(events)} values, none an event object)")
    return {"events": events, "base_ns": int(doc.get("baseTimeNanoseconds", 0)) if isinstance(doc, dict) else 0,
            "devices": doc.get("deviceProperties", []) if isinstance(doc, dict) else []}


def _ns(ts, base: int) -> int:
    return base + int(round(float(ts) * 1000))


def memop_name(name: str, category: str) -> str:
    """Kineto's 'Memcpy HtoD (Pageable -> Device)' / 'Memset (Device)' as nsys stats names them."""
    if category == "gpu_memset":
        return "[CUDA memset]"
    m = _MEMCPY.match(name)
    if m and m.group(1) in _ENDPOINT and m.group(2) in _ENDPOINT:
        return f"[CUDA memcpy {_ENDPOINT[m.group(1)]}-to-{_ENDPOINT[m.group(2)]}]"
    return f"[CUDA memcpy {name}]"


class BadEvent(ValueError):
    """An event whose time fields are not numbers; ``read`` callers turn it into a TraceError."""


def all_frames(trace: dict) -> dict[str, pl.DataFrame]:
    """kernels, memops, cpu_ops (CPU ops and CUDA runtime/driver calls), nvtx (user annotations) and
    devices, on the wall clock when the trace carries its base time."""
    base = trace["base_ns"]
    kernels, memops, ops, ranges = [], [], [], []
    for i, e in enumerate(trace["events"]):
        if not isinstance(e, dict) or e.get("ph") != "X" or "ts" not in e:
            continue
        try:
            float(e["ts"]), float(e.get("dur", 0))
        except (TypeError, ValueError):
            raise BadEvent(f"event {i} ({e.get('name', '?')!r}) has a ts or dur that is not a number: "
                           f"ts={e['ts']!r}, dur={e.get('dur')!r}") from None
        cat = e.get("cat") or ""
        cat = _CATEGORY.get(cat.lower(), cat)
        start = _ns(e["ts"], base)
        end = start + int(round(float(e.get("dur", 0)) * 1000))
        args = e.get("args") or {}
        tid = e.get("tid") if isinstance(e.get("tid"), int) else None
        if cat == "kernel":
            grid = args.get("grid") or [None] * 3
            block = args.get("block") or [None] * 3
            kernels.append((start, end, end - start, e.get("name", ""), args.get("device"), args.get("stream"),
                            args.get("correlation"), *grid[:3], *block[:3], args.get("registers per thread"),
                            args.get("shared memory"), "kineto"))
        elif cat in ("gpu_memcpy", "gpu_memset"):
            memops.append((start, end, end - start, memop_name(e.get("name", ""), cat), args.get("bytes"),
                           args.get("device"), args.get("stream"), args.get("correlation"), "kineto"))
        elif cat in CPU_CATEGORIES:
            corr = args.get("correlation") if cat != "cpu_op" else None  # a cpu_op's External id is another id space
            ops.append((start, end, e.get("name", ""), tid, corr, cat))
        elif cat == ANNOTATION:
            ranges.append((start, end, e.get("name", ""), "", None, tid, ANNOTATION))
    devices = [(d.get("id"), d.get("name"), d.get("numSms"), d.get("totalGlobalMem"),
                f"{d['computeMajor']}.{d['computeMinor']}" if "computeMajor" in d else None, "kineto")
               for d in trace["devices"] if isinstance(d, dict)]
    return {"kernels": rows_frame(kernels, KERNEL_SCHEMA), "memops": rows_frame(memops, MEMOP_SCHEMA),
            "cpu_ops": rows_frame(ops, CPU_OP_SCHEMA), "nvtx": rows_frame(ranges, NVTX_SCHEMA),
            "devices": rows_frame(devices, DEVICE_SCHEMA)}


def frames(trace: dict) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(kernels, every CPU-side event): CPU ops, CUDA calls and the user annotations (record_function
    ranges, where process groups name their collectives, e.g. gloo:all_reduce)."""
    f = all_frames(trace)
    annotations = f["nvtx"].select("start_ns", "end_ns", pl.col("text").alias("name"), "tid",
                                   pl.lit(None, pl.Int64).alias("correlation"), pl.lit(ANNOTATION).alias("category"))
    return f["kernels"], pl.concat([f["cpu_ops"], annotations]).sort("start_ns")


def load(path: str) -> list[Loaded]:
    """A Kineto trace file, or every kineto-*.json[.gz] of a folder: each file's frames and source."""
    p = Path(path)
    files = sorted(p.glob("kineto-*.json*")) if p.is_dir() else [p]
    if not files:
        raise TraceError(p, "no kineto-*.json files in this folder")
    out = []
    for f in files:
        trace = read(f)
        try:
            fr = all_frames(trace)
        except BadEvent as exc:
            raise TraceError(f, str(exc)) from None
        out.append(Loaded(fr, Source(
            "kineto", str(f), "baseTimeNanoseconds" if trace["base_ns"] else "none (no base time in the file)",
            offset_ns=trace["base_ns"] or None,
            counts={"kernels": fr["kernels"].height, "cpu_ops": fr["cpu_ops"].height,
                    "memops": fr["memops"].height, "annotations": fr["nvtx"].height},
            devices=trace["devices"])))
    return out
