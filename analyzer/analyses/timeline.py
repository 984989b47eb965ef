"""Experiment 4, the timeline report: kernels, CPU/GPU overlap, scheduling overhead, memory."""
from __future__ import annotations

import polars as pl

from sglang_tracing import semconv as sc
from sglang_tracing.analyzer.analyses.kernels import (
    by_layer, by_op, cpu_gpu_overlap, describe_layers, forward_gpu_time, kernel_summary, project_nvtx,
)
from sglang_tracing.analyzer.model import TraceModel
from sglang_tracing.analyzer.report import Report, ms, pct


def build_report(model: TraceModel, top: int = 15) -> Report:
    report = Report("timeline", "Timeline (experiment 4)")
    spans, kernels = model.scan_spans(), model.kernels
    n_spans = spans.select(pl.len()).collect(engine="streaming").item()
    src = report.section("Sources")
    for s in model.manifest.get("sources", []):
        kind = "nsys" if "nsys" in s else "kineto" if "kineto" in s else "?"
        src.add(kind, s.get(kind), f"{s.get('kernels', 0)} kernels; alignment: {s.get('alignment')}")
    src.add("spans", str(n_spans), model.source_dir or "no trace dir")
    threads = report.section("CPU threads and GPU streams")
    if n_spans:
        by = (["server"] if len(model.servers) > 1 else []) + ["role", "pid"]
        threads.table = (spans.group_by(by).agg(pl.len().alias("spans"),
                                                ((pl.col("end_ns").max() - pl.col("start_ns").min()) / 1e6)
                                                .round(1).alias("active_ms")).collect(engine="streaming")
                         .sort(by))
    if kernels.height:
        threads.child("GPU streams").table = kernels.group_by("device", "stream").agg(
            pl.len().alias("kernels"), (pl.col("dur_ns").sum() / 1e6).round(3).alias("busy_ms")).sort("device", "stream")
    else:
        threads.add("GPU streams", None, "no kernels loaded (--nsys or --kineto)")

    top_sec = report.section(f"Kernel top {top} (nsys cuda_gpu_kern_sum semantics)")
    summary = kernel_summary(kernels)
    if summary.height:
        top_sec.table = summary.head(top).with_columns(
            pl.col("Time (%)").round(1), (pl.col("Avg (ns)") / 1e3).round(2).alias("Avg (us)"),
            pl.col("Name").str.slice(0, 80)).select("Time (%)", "Total Time (ns)", "Instances", "Avg (us)", "Name")
    else:
        top_sec.add("kernels", None, "no kernels loaded (--nsys or --kineto)")

    ops = report.section("GPU time by layer and op (NVTX projection)")
    projected = project_nvtx(kernels, model.cpu_ops, model.nvtx)
    if projected.height:
        ops.table = by_op(projected)
        layers = by_layer(projected)
        if layers.height:
            ops.add("GPU time per layer", describe_layers(layers),
                    "kernels launched inside each layer range, all forwards of the capture")
        ops.add("other", "kernels launched outside op ranges",
                "CUDA-graph replays (their ranges ran at capture), sampling, cache writes")
    else:
        ops.add("per-op GPU time", None, "needs --trace-level layer ranges, an nsys capture with CUDA API calls, "
                "and eager forwards (--disable-prefill-cuda-graph)")

    overlap = report.section("CPU-GPU overlap")
    o = cpu_gpu_overlap(spans, kernels)
    if o:
        w = o["window_ns"]
        overlap.add("window", ms(w), "both the scheduler thread and the GPU active")
        overlap.add("GPU busy", f"{ms(o['gpu_busy_ns'])} ({pct(o['gpu_busy_ns'] / w * 100)})", "union of kernels")
        overlap.add("scheduler CPU busy", f"{ms(o['cpu_busy_ns'])} ({pct(o['cpu_busy_ns'] / w * 100)})",
                    "schedule + forward launch + result processing spans")
        overlap.add("GPU idle while CPU busy", ms(o["gpu_idle_while_cpu_busy_ns"]), "")
        overlap.add("CPU idle while GPU busy", ms(o["cpu_idle_while_gpu_busy_ns"]), "")
        overlap.add(f"GPU bubbles > {o['bubble_threshold_ns'] / 1e3:.0f} us",
                    f"{o['bubbles']} totalling {ms(o['bubble_ns'])}", "gaps between kernels")
    else:
        overlap.add("overlap", None, "needs both kernels (--nsys/--kineto) and scheduler spans")
    per_fwd = forward_gpu_time(spans, kernels)
    if per_fwd.height and per_fwd["gpu_ns"].drop_nulls().len():
        overlap.child("GPU time per forward").table = per_fwd.drop_nulls("gpu_ns").group_by("mode", "source").agg(
            pl.len().alias("forwards"), (pl.col("gpu_ns").median() / 1e6).round(3).alias("median_ms"),
            (pl.col("gpu_ns").sum() / 1e6).round(1).alias("total_ms")).sort("mode")

    sched = report.section("Scheduling overhead per batch")
    for name, label in ((sc.SCHEDULE, "schedule"), (sc.PROCESS_RESULT, "result processing"), (sc.FORWARD, "forward launch (CPU)")):
        d = spans.filter(pl.col("name") == name).select("dur_ns").collect().to_series()
        sched.add(label, f"median {ms(d.median())}, p99 {ms(d.quantile(0.99))} over {d.len()} batches" if d.len() else None,
                  f"span {name}")

    mem = report.section("Memory")
    used = model.counters.filter(pl.col("metric") == "mem_used_bytes")
    mem.add("peak GPU memory", f"{used['value'].max() / 2**30:.2f} GiB" if used.height else None,
            "NVML mem_used at 100 ms" if used.height else "no NVML samples")
    cache = spans.filter(pl.col("name").is_in([sc.CACHE_MATCH, sc.CACHE_INSERT, sc.CACHE_EVICT]))
    if sc.CACHE_USED in cache.collect_schema():
        peak = cache.select(pl.len(), pl.col(sc.CACHE_USED).max(), pl.col(sc.CACHE_TOTAL).max()).collect().row(0)
        if peak[0]:
            mem.add("peak KV used", f"{peak[1]} of {peak[2]} tokens", "cache spans")
    ev = spans.filter(pl.col("name") == sc.CACHE_EVICT).collect().sort("start_ns", maintain_order=True)
    mem.add("evictions", str(ev.height), "span sglang.cache.evict")
    if ev.height:
        first = spans.select(pl.col("start_ns").min()).collect(engine="streaming").item()
        mem.child("eviction events").table = ev.select(
            ((pl.col("start_ns") - first) / 1e6).round(1).alias("t_ms"),
            pl.col(sc.CACHE_FREED_TOKENS).alias("freed_tokens"), pl.col(sc.CACHE_TRIGGER).alias("trigger"),
            (pl.col("dur_ns") / 1e3).round(1).alias("dur_us"))
    return report
