"""Kineto / Chrome-trace JSON (torch profiler, SGLang's /start_profile): kernels, CPU ops, correlation.

Times: ``ts`` is microseconds; ``baseTimeNanoseconds`` (torch >= 2.0) puts them on the wall clock.
"""
from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from sglang_tracing.analyzer.errors import TraceError
from sglang_tracing.analyzer.loaders.files import read_bytes
from sglang_tracing.analyzer.model import CPU_OP_SCHEMA, KERNEL_SCHEMA, TraceModel


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
    return {"events": events, "base_ns": int(doc.get("baseTimeNanoseconds", 0)) if isinstance(doc, dict) else 0,
            "devices": doc.get("deviceProperties", []) if isinstance(doc, dict) else []}


def _ns(ts, base: int) -> int:
    return base + int(round(float(ts) * 1000))


def frames(trace: dict) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(kernels, cpu_ops) on the wall clock when the trace carries its base time."""
    base = trace["base_ns"]
    kernels, ops = [], []
    for e in trace["events"]:
        if e.get("ph") != "X" or "ts" not in e:
            continue
        cat = e.get("cat")
        start = _ns(e["ts"], base)
        end = start + int(round(float(e.get("dur", 0)) * 1000))
        args = e.get("args") or {}
        if cat == "kernel":
            grid = args.get("grid") or [None] * 3
            block = args.get("block") or [None] * 3
            kernels.append((start, end, end - start, e.get("name", ""), args.get("device"), args.get("stream"),
                            args.get("correlation"), *grid[:3], *block[:3], args.get("registers per thread"),
                            args.get("shared memory"), "kineto"))
        elif cat in ("cpu_op", "cuda_runtime", "user_annotation"):
            corr = args.get("correlation", args.get("External id"))
            ops.append((start, end, e.get("name", ""), e.get("tid") if isinstance(e.get("tid"), int) else None,
                        corr))
    k = pl.DataFrame(kernels, schema=KERNEL_SCHEMA, orient="row") if kernels else pl.DataFrame(schema=KERNEL_SCHEMA)
    o = pl.DataFrame(ops, schema=CPU_OP_SCHEMA, orient="row") if ops else pl.DataFrame(schema=CPU_OP_SCHEMA)
    return k.sort("start_ns"), o.sort("start_ns")


def attach(model: TraceModel, path: str) -> dict:
    """Load a Kineto trace file, or every kineto-*.json[.gz] of a folder, into ``model``."""
    p = Path(path)
    files = sorted(p.glob("kineto-*.json*")) if p.is_dir() else [p]
    if not files:
        raise TraceError(p, "no kineto-*.json files in this folder")
    total = 0
    for f in files:
        trace = read(f)
        k, o = frames(trace)
        model.kernels = pl.concat([model.kernels, k])
        model.cpu_ops = pl.concat([model.cpu_ops, o])
        total += k.height
        model.manifest.setdefault("sources", []).append(
            {"kineto": str(f), "kernels": k.height, "cpu_ops": o.height,
             "alignment": "baseTimeNanoseconds" if trace["base_ns"] else "none (no base time in the file)",
             "devices": trace["devices"]})
    return {"kernels": total}
