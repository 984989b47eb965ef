"""Experiment 4, the timeline report: a top-down page first (GPU busy, bubbles and what the host did
then, what to look at first, ncu's hints), then what ``nsys stats`` prints (kernels, GPU memory
operations, CUDA API, NVTX ranges, OS runtime) with its semantics, then the SGLang sections (CPU/GPU
overlap of the scheduler, layers and ops, scheduling overhead, KV memory) when the trace has spans."""
from __future__ import annotations

import polars as pl

from sglang_tracing import semconv as sc
from sglang_tracing.analyzer.analyses import topdown
from sglang_tracing.analyzer.analyses.kernels import (
    by_layer, by_op, cpu_gpu_overlap, describe_layers, forward_gpu_time, project_nvtx,
)
from sglang_tracing.analyzer.analyses.summaries import summaries
from sglang_tracing.analyzer.model import TraceModel
from sglang_tracing.analyzer.report import Report, Section, ms, pct

TOP = 25
# each nsys stats table: section title, what is missing when the profile has none of it
TABLES = {
    "cuda_gpu_kern_sum": ("Kernels (nsys cuda_gpu_kern_sum)", "no kernels loaded (--nsys or --kineto)"),
    "cuda_gpu_mem_time_sum": ("GPU memory operations by time (nsys cuda_gpu_mem_time_sum)",
                              "no memcpy/memset in the profile (nsys 2024.5+ leaves empty tables out)"),
    "cuda_gpu_mem_size_sum": ("GPU memory operations by size, MB = 10^6 bytes (nsys cuda_gpu_mem_size_sum)",
                              "no memcpy/memset in the profile"),
    "cuda_api_sum": ("CUDA API, runtime and driver (nsys cuda_api_sum)",
                     "no CUDA API calls in the profile (nsys --trace=cuda; Kineto cuda_runtime/cuda_driver)"),
    "nvtx_sum": ("NVTX ranges (nsys nvtx_sum; Kineto user annotations)",
                 "no NVTX ranges in the profile (no NVTX_EVENTS table, or no annotations)"),
    "osrt_sum": ("OS runtime (nsys osrt_sum)", "no OS runtime calls in the profile (nsys --trace=osrt)"),
}


def _sources(report: Report, model: TraceModel) -> None:
    src = report.section("Sources")
    for s in model.sources:
        shown = ("kernels", "memops", "cuda_api_calls", "osrt_calls", "nvtx", "annotations", "tables")
        detail = ", ".join(f"{s.counts[k]} {k.replace('_', ' ')}" for k in shown if s.counts.get(k))
        src.add(s.kind, s.path, f"{detail or 'no events'}; alignment: {s.alignment}"
                + (f"; nsys {s.version}" if s.version else ""))
    src.add("spans", str(_span_count(model)), model.source_dir or "no trace dir")


def _span_count(model: TraceModel) -> int:
    return model.scan_spans().select(pl.len()).collect(engine="streaming").item()


def _gpus(sec: Section, model: TraceModel, activity: pl.DataFrame) -> None:
    names = topdown.device_names(model)
    used = sorted(set(activity["device"].to_list())) if activity.height else []
    if not names:
        sec.add("GPU", None, "the profile names no GPU (nsys TARGET_INFO_GPU, Kineto deviceProperties, "
                             "trace manifest)")
        return
    shown = [d for d in used if d in names] or sorted(names)
    label = ", ".join(f"{names[d]} (device {d})" for d in shown)
    extra = len(names) - len(shown)
    where = "that ran the profiled work" if model.devices.height else "from the trace manifest (NVML)"
    sec.add("GPU" if len(shown) == 1 else "GPUs", label,
            where + (f"; the node lists {len(names)} GPUs" if extra > 0 else ""))


def _topdown(report: Report, model: TraceModel, tables: dict) -> None:
    sec = report.section("Top-down")
    activity = topdown.gpu_activity(model.kernels, model.memops)
    _gpus(sec, model, activity)
    if activity.is_empty():
        why = ("nsys stats CSVs hold totals only; pass the .sqlite or .nsys-rep for the timeline"
               if model.nsys_stats else "no GPU activity loaded (--nsys or --kineto)")
        sec.add("GPU busy", None, why)
    overview = topdown.gpu_overview(activity)
    for row in overview.iter_rows(named=True):
        dev = f" (device {row['device']})" if overview.height > 1 else ""
        w = row["window_ns"]
        sec.add(f"GPU busy{dev}", f"{ms(row['busy_ns'])} of {ms(w)} ({pct(row['busy_pct'])})",
                f"union of kernels and memcpy/memset from the first GPU operation to the last; kernels alone "
                f"{ms(row['kernel_busy_ns'])}")
        sec.add(f"GPU idle{dev}", f"{ms(row['idle_ns'])}: {row['bubbles']} bubbles > {topdown.BUBBLE_NS / 1e3:.0f} us "
                                  f"totalling {ms(row['bubble_ns'])} (longest {ms(row['longest_bubble_ns'])}), "
                                  f"{ms(row['launch_gap_ns'])} in shorter gaps between operations", "")
    gaps = topdown.bubbles(activity)
    host = topdown.host_during_bubbles(gaps, model.cpu_ops)
    if host and host["bubble_ns"]:
        b = host["bubble_ns"]
        sec.add("host during GPU bubbles",
                f"{pct(host['in_sync_ns'] / b * 100)} in synchronizing CUDA calls, "
                f"{pct(host['in_other_api_ns'] / b * 100)} in other CUDA calls, "
                f"{pct(host['no_api_ns'] / b * 100)} in no CUDA call",
                "no CUDA call: the GPU waited for host-side work (Python, data, CPU ops) or the host was idle")
    elif activity.height:
        sec.add("host during GPU bubbles", None, "no CUDA API calls in the profile" if not host else "no bubbles")
    syncs = topdown.sync_calls(model.cpu_ops)
    if syncs.height:
        top = syncs.row(0, named=True)
        sec.add("host blocked in synchronizing calls", f"{ms(int(syncs['total_ns'].sum()))} over "
                f"{int(syncs['calls'].sum())} calls (most in {top['name']}: {ms(top['total_ns'])})",
                "costs GPU time only where the GPU then sat idle (ranked below as GPU idle after synchronizing calls)")
    first = topdown.look_first(overview, tables["cuda_gpu_kern_sum"][0], tables["cuda_gpu_mem_time_sum"][0],
                               tables["cuda_gpu_mem_size_sum"][0], topdown.bubbles_after_sync(gaps, model.cpu_ops),
                               host, model.ncu_rules)
    if first.height:
        window = int(overview["window_ns"].max()) if overview.height else None
        sec.child("What to look at first").table = first.with_columns(
            (pl.col("at_stake_ns") / 1e6).round(3).alias("at_stake_ms"),
            ((pl.col("at_stake_ns") / window * 100).round(1) if window else pl.lit(None, pl.Float64))
            .alias("share_of_window_pct")).select("rank", "what", "at_stake_ms", "share_of_window_pct", "detail")
    if model.ncu_rules is not None and model.ncu_rules.height:
        from sglang_tracing.analyzer.analyses.ncu_metrics import ranked_hints

        hints = ranked_hints(model.ncu_rules).drop_nulls("speedup_pct")
        if hints.height:
            sec.child("ncu hints, ranked by estimated speedup").table = hints.head(10).with_columns(
                pl.col("speedup_pct").round(1))
    nvtx = tables["nvtx_sum"][0]
    if nvtx.height:
        top = nvtx.row(0, named=True)
        sec.add("largest NVTX range", f"{top['Range']}: {ms(top['Total Time (ns)'])} over {top['Instances']} "
                                      f"instances ({top['Style']})", "nvtx_sum's first row")


def _stats_tables(report: Report, model: TraceModel, tables: dict) -> None:
    if not (model.kernels.height or model.memops.height or model.cpu_ops.height or model.nvtx.height
            or model.nsys_stats):
        report.section("nsys stats tables").add("tables", None, "no profiler file given (--nsys or --kineto)")
        return
    for name, (title, missing) in TABLES.items():
        table, source = tables[name]
        sec = report.section(title)
        if table.is_empty():
            sec.add("rows", None, missing)
            continue
        sec.add("rows", f"{min(TOP, table.height)} of {table.height} shown" if table.height > TOP else str(table.height),
                f"from {source}; Time (%) is the share of this table's total, not of wall time")
        sec.table = table.head(TOP).with_columns(pl.selectors.float().round(3 if "MB" in table.columns[0] else 1))


def _sglang(report: Report, model: TraceModel) -> None:
    spans, kernels = model.scan_spans(), model.kernels
    threads = report.section("SGLang processes")
    by = (["server"] if len(model.servers) > 1 else []) + ["role", "pid"]
    threads.table = (spans.group_by(by).agg(pl.len().alias("spans"),
                                            ((pl.col("end_ns").max() - pl.col("start_ns").min()) / 1e6)
                                            .round(1).alias("active_ms")).collect(engine="streaming").sort(by))
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

    overlap = report.section("Scheduler CPU vs GPU")
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
    for name, label in ((sc.SCHEDULE, "schedule"), (sc.PROCESS_RESULT, "result processing"),
                        (sc.FORWARD, "forward launch (CPU)")):
        d = spans.filter(pl.col("name") == name).select("dur_ns").collect().to_series()
        sched.add(label, f"median {ms(d.median())}, p99 {ms(d.quantile(0.99))} over {d.len()} batches"
                  if d.len() else None, f"span {name}")

    mem = report.section("Memory")
    used = model.counters.filter(pl.col("metric") == sc.NVML_MEM_USED)
    mem.add("peak GPU memory", f"{used['value'].max() / 2**30:.2f} GiB" if used.height else None,
            "NVML mem_used at 100 ms" if used.height else "no NVML samples")
    cache = spans.filter(pl.col("name").is_in([sc.CACHE_MATCH, sc.CACHE_INSERT, sc.CACHE_EVICT]))
    n_cache = cache.select(pl.len()).collect().item()
    if n_cache and sc.CACHE_USED in cache.collect_schema():
        used, total = cache.select(pl.col(sc.CACHE_USED).max(), pl.col(sc.CACHE_TOTAL).max()).collect().row(0)
        mem.add("peak KV used", f"{used} of {total} tokens", "cache spans")
    ev = spans.filter(pl.col("name") == sc.CACHE_EVICT).collect().sort("start_ns", maintain_order=True)
    if n_cache:
        mem.add("evictions", str(ev.height), "span sglang.cache.evict")
    else:
        mem.add("evictions", None, "no prefix-cache spans in this trace (--trace-level batch records them)")
    if ev.height:
        first = spans.select(pl.col("start_ns").min()).collect(engine="streaming").item()
        mem.child("eviction events").table = ev.select(
            ((pl.col("start_ns") - first) / 1e6).round(1).alias("t_ms"),
            pl.col(sc.CACHE_FREED_TOKENS).alias("freed_tokens"), pl.col(sc.CACHE_TRIGGER).alias("trigger"),
            (pl.col("dur_ns") / 1e3).round(1).alias("dur_us"))


def build_report(model: TraceModel) -> Report:
    report = Report("timeline", "Timeline (experiment 4)")
    tables = summaries(model)
    _topdown(report, model, tables)
    _sources(report, model)
    if model.kernels.height:
        report.section("GPU streams").table = model.kernels.group_by("device", "stream").agg(
            pl.len().alias("kernels"), (pl.col("dur_ns").sum() / 1e6).round(3).alias("busy_ms")).sort("device", "stream")
    _stats_tables(report, model, tables)
    if _span_count(model):
        _sglang(report, model)
    return report
