"""Experiment 4, the timeline report: a top-down page first (GPU busy, bubbles and what the host did
then, what to look at first, ncu's hints), then what ``nsys stats`` prints (kernels, GPU memory
operations, CUDA API, NVTX ranges, OS runtime) with its semantics, then the SGLang sections (CPU/GPU
overlap of the scheduler, layers and ops, scheduling overhead, KV memory) when the trace has spans."""
from __future__ import annotations

import dataclasses

import polars as pl

from sglang_tracing import semconv as sc
from sglang_tracing.analyzer.analyses import profiler_control, topdown
from sglang_tracing.analyzer.analyses.kernels import (
    by_layer, by_op, cpu_gpu_overlap, describe_layers, forward_gpu_time, project_nvtx,
)
from sglang_tracing.analyzer.analyses.ncu_metrics import ranked_hints
from sglang_tracing.analyzer.analyses.stats_tables import summaries
from sglang_tracing.analyzer.model import Source, TraceModel
from sglang_tracing.analyzer.report import Report, Section, ms, pct

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


def _sources(report: Report, timeline: Timeline) -> None:
    src = report.section("Sources")
    for s in timeline.sources:
        shown = ("kernels", "memops", "cuda_api_calls", "osrt_calls", "nvtx", "annotations", "tables")
        detail = ", ".join(f"{s.counts[k]} {k.replace('_', ' ')}" for k in shown if s.counts.get(k))
        src.add(s.kind, s.path, f"{detail or 'no events'}; alignment: {s.alignment}"
                + (f"; nsys {s.version}" if s.version else ""))
    src.add("spans", str(timeline.span_count), timeline.source_dir or "no trace dir")


def _span_count(model: TraceModel) -> int:
    return model.scan_spans().select(pl.len()).collect(engine="streaming").item()


# ---- computing: what the profile and the spans hold ----
@dataclasses.dataclass
class TopDown:
    """The top-down page: how busy the GPUs were, where their idle time went, what to look at first."""
    names: dict[int, str]  # GPU model by device id (topdown.device_names)
    devices: list[int]  # devices that ran the profiled work
    from_profile: bool  # GPU names from the profiler files (else from the trace manifest's NVML)
    busy: pl.DataFrame  # per device: window, busy, idle and bubble time (topdown.gpu_overview)
    host: dict | None  # what the host did during GPU bubbles (topdown.host_during_bubbles)
    syncs: pl.DataFrame  # synchronizing CUDA calls by name, most time first
    look_first: pl.DataFrame  # ranked: rank, what, at_stake_ms, share_of_window_pct, detail
    hints: pl.DataFrame  # ncu's rule results with an estimated speedup, largest first


@dataclasses.dataclass
class SglangSide:
    """What the scheduler and its spans show next to the GPU."""
    processes: pl.DataFrame  # per (server,) role and pid: spans, active_ms
    ops: pl.DataFrame | None  # GPU time by NVTX op range; None: no kernel joined to a range
    layers: pl.DataFrame | None  # GPU time by layer range
    overlap: dict  # scheduler CPU vs GPU busy time (kernels.cpu_gpu_overlap); empty: not measurable
    per_forward: pl.DataFrame | None  # GPU time per forward by mode and source: forwards, median_ms, total_ms
    batch_spans: dict[str, pl.Series]  # span name -> durations (ns) of the per-batch scheduler spans, less left_out
    longest: dict[str, dict]  # span name -> its longest kept span: dur_ns, mode, nth (of that mode on its process)
    left_out: pl.DataFrame  # scheduler spans our profiler control ran in (profiler_control.spans_with_control)
    peak_memory: float | None  # most GPU memory in use (NVML, bytes)
    nvml_interval_ms: int | None  # how often NVML was sampled (the recorded config)
    cache_spans: int  # prefix-cache spans recorded
    kv_peak: tuple[int, int] | None  # most KV tokens in use, of how many
    evictions: pl.DataFrame  # t_ms (from the first span), freed_tokens, trigger, dur_us


@dataclasses.dataclass
class Timeline:
    tables: dict[str, tuple[pl.DataFrame, str]]  # nsys stats table name -> (table, where it came from)
    top: TopDown
    profiled: bool  # any profiler file loaded
    stats_only: bool  # nsys stats CSVs: totals without a timeline
    streams: pl.DataFrame | None  # kernels and busy time per device and stream
    sglang: SglangSide | None  # None: no spans
    sources: list[Source]  # profiler files loaded beside the trace
    span_count: int
    source_dir: str | None  # the trace dir(s)


def compute(model: TraceModel) -> Timeline:
    tables = summaries(model)
    streams = None
    if model.kernels.height:
        streams = model.kernels.group_by("device", "stream").agg(
            pl.len().alias("kernels"), (pl.col("dur_ns").sum() / 1e6).round(3).alias("busy_ms")).sort("device", "stream")
    profiled = bool(model.kernels.height or model.memops.height or model.cpu_ops.height or model.nvtx.height
                    or model.nsys_stats)
    n_spans = _span_count(model)
    return Timeline(tables, _top_down(model, tables), profiled, bool(model.nsys_stats), streams,
                    _sglang_side(model) if n_spans else None, list(model.sources), n_spans, model.source_dir)


def _top_down(model: TraceModel, tables: dict) -> TopDown:
    activity = topdown.gpu_activity(model.kernels, model.memops)
    busy = topdown.gpu_overview(activity)
    gaps = topdown.bubbles(activity)
    host = topdown.host_during_bubbles(gaps, model.cpu_ops)
    first = topdown.look_first(busy, tables["cuda_gpu_kern_sum"][0], tables["cuda_gpu_mem_time_sum"][0],
                               tables["cuda_gpu_mem_size_sum"][0], topdown.bubbles_after_sync(gaps, model.cpu_ops),
                               host, model.ncu_rules)
    window = int(busy["window_ns"].max()) if busy.height else None
    first = first.with_columns(
        (pl.col("at_stake_ns") / 1e6).round(3).alias("at_stake_ms"),
        ((pl.col("at_stake_ns") / window * 100).round(1) if window else pl.lit(None, pl.Float64))
        .alias("share_of_window_pct")).select("rank", "what", "at_stake_ms", "share_of_window_pct", "detail")
    return TopDown(topdown.device_names(model), sorted(set(activity["device"].to_list())) if activity.height else [],
                   bool(model.devices.height), busy, host, topdown.sync_calls(model.cpu_ops), first,
                   ranked_hints(model.ncu_rules).drop_nulls("speedup_pct"))


def _sglang_side(model: TraceModel) -> SglangSide:
    spans, kernels = model.scan_spans(), model.kernels
    by = (["server"] if len(model.servers) > 1 else []) + ["role", "pid"]
    processes = (spans.group_by(by).agg(pl.len().alias("spans"),
                                        ((pl.col("end_ns").max() - pl.col("start_ns").min()) / 1e6)
                                        .round(1).alias("active_ms")).collect(engine="streaming").sort(by))
    projected = project_nvtx(kernels, model.cpu_ops, model.nvtx)
    ops, layers = (by_op(projected), by_layer(projected)) if projected.height else (None, None)
    left_out = profiler_control.spans_with_control(spans, model.servers)
    sched = profiler_control.kept(spans, left_out)
    batch_spans = {name: sched.filter(pl.col("name") == name).select("dur_ns").collect().to_series()
                   for name in profiler_control.SCHEDULER_SPANS}
    longest = {name: _longest(sched, spans, name) for name, d in batch_spans.items() if d.len()}
    used = model.counters.filter(pl.col("metric") == sc.NVML_MEM_USED)
    cache = spans.filter(pl.col("name").is_in([sc.CACHE_MATCH, sc.CACHE_INSERT, sc.CACHE_EVICT]))
    n_cache = cache.select(pl.len()).collect().item()
    kv_peak = None
    if n_cache and sc.CACHE_USED in cache.collect_schema():
        kv_peak = cache.select(pl.col(sc.CACHE_USED).max(), pl.col(sc.CACHE_TOTAL).max()).collect().row(0)
    return SglangSide(processes, ops, layers, cpu_gpu_overlap(spans, kernels), _per_forward(spans, kernels),
                      batch_spans, longest, left_out, used["value"].max() if used.height else None,
                      model.manifest.get("config", {}).get("nvml_interval_ms"), n_cache, kv_peak, _evictions(spans))


def _longest(kept: pl.LazyFrame, spans: pl.LazyFrame, name: str) -> dict:
    """The longest of the kept spans named ``name``: dur_ns, mode, and nth: which of its process's spans of
    that mode it was, counting every one (1: the first, where one-time work such as a JIT compile lands)."""
    mode = pl.col(sc.FORWARD_MODE) if sc.FORWARD_MODE in spans.collect_schema() else pl.lit(None, pl.String)
    cols = ("server", "pid", "start_ns", "dur_ns", mode.alias("mode"))
    top = (kept.filter(pl.col("name") == name).select(*cols).sort("dur_ns", descending=True).head(1)
           .collect().row(0, named=True))
    mine = spans.filter(pl.col("name") == name).select(*cols)
    nth = mine.filter((pl.col("server") == top["server"]) & (pl.col("pid") == top["pid"])
                      & (pl.col("mode").eq_missing(top["mode"])) & (pl.col("start_ns") <= top["start_ns"]))
    return {"dur_ns": top["dur_ns"], "mode": top["mode"], "nth": nth.select(pl.len()).collect().item()}


def _per_forward(spans: pl.LazyFrame, kernels: pl.DataFrame) -> pl.DataFrame | None:
    per_fwd = forward_gpu_time(spans, kernels)
    if not (per_fwd.height and per_fwd["gpu_ns"].drop_nulls().len()):
        return None
    return per_fwd.drop_nulls("gpu_ns").group_by("mode", "source").agg(
        pl.len().alias("forwards"), (pl.col("gpu_ns").median() / 1e6).round(3).alias("median_ms"),
        (pl.col("gpu_ns").sum() / 1e6).round(1).alias("total_ms")).sort("mode")


def _evictions(spans: pl.LazyFrame) -> pl.DataFrame:
    ev = spans.filter(pl.col("name") == sc.CACHE_EVICT).collect().sort("start_ns", maintain_order=True)
    if ev.is_empty():
        return ev
    first = spans.select(pl.col("start_ns").min()).collect(engine="streaming").item()
    return ev.select(((pl.col("start_ns") - first) / 1e6).round(1).alias("t_ms"),
                     pl.col(sc.CACHE_FREED_TOKENS).alias("freed_tokens"), pl.col(sc.CACHE_TRIGGER).alias("trigger"),
                     (pl.col("dur_ns") / 1e3).round(1).alias("dur_us"))


# ---- wording: the timeline as a report ----
def build_report(model: TraceModel) -> Report:
    from sglang_tracing.analyzer.analyses import layer_detail

    report = describe(compute(model))
    layer_detail.add_section(report, layer_detail.compute(model.scan_spans()))
    return report


def describe(timeline: Timeline) -> Report:
    report = Report("timeline", "Timeline (experiment 4)")
    _topdown(report.section("Top-down"), timeline.top, timeline)
    _sources(report, timeline)
    if timeline.streams is not None:
        report.section("GPU streams").table = timeline.streams
    _stats_tables(report, timeline)
    if timeline.sglang is not None:
        _sglang(report, timeline.sglang)
    return report


def _gpus(sec: Section, top: TopDown) -> None:
    names = top.names
    if not names:
        sec.add("GPU", None, "the profile names no GPU (nsys TARGET_INFO_GPU, Kineto deviceProperties, "
                             "trace manifest)")
        return
    shown = [d for d in top.devices if d in names] or sorted(names)
    label = ", ".join(f"{names[d]} (device {d})" for d in shown)
    extra = len(names) - len(shown)
    where = "that ran the profiled work" if top.from_profile else "from the trace manifest (NVML)"
    sec.add("GPU" if len(shown) == 1 else "GPUs", label,
            where + (f"; the node lists {len(names)} GPUs" if extra > 0 else ""))


def _topdown(sec: Section, top: TopDown, timeline: Timeline) -> None:
    _gpus(sec, top)
    if not top.devices:
        why = ("nsys stats CSVs hold totals only; pass the .sqlite or .nsys-rep for the timeline"
               if timeline.stats_only else "no GPU activity loaded (--nsys or --kineto)")
        sec.add("GPU busy", None, why)
    _busy(sec, top.busy)
    _host(sec, top)
    if top.look_first.height:
        sec.child("What to look at first").table = top.look_first
    if top.hints.height:
        sec.child("ncu hints, ranked by estimated speedup").table = top.hints.head(10).with_columns(
            pl.col("speedup_pct").round(1))
    nvtx = timeline.tables["nvtx_sum"][0]
    if nvtx.height:
        first = nvtx.row(0, named=True)
        sec.add("largest NVTX range", f"{first['Range']}: {ms(first['Total Time (ns)'])} over {first['Instances']} "
                                      f"instances ({first['Style']})", "nvtx_sum's first row")


def _busy(sec: Section, busy: pl.DataFrame) -> None:
    for row in busy.iter_rows(named=True):
        dev = f" (device {row['device']})" if busy.height > 1 else ""
        w = row["window_ns"]
        sec.add(f"GPU busy{dev}", f"{ms(row['busy_ns'])} of {ms(w)} ({pct(row['busy_pct'])})",
                f"union of kernels and memcpy/memset from the first GPU operation to the last; kernels alone "
                f"{ms(row['kernel_busy_ns'])}")
        sec.add(f"GPU idle{dev}", f"{ms(row['idle_ns'])}: {row['bubbles']} bubbles > {topdown.BUBBLE_NS / 1e3:.0f} us "
                                  f"totalling {ms(row['bubble_ns'])} (longest {ms(row['longest_bubble_ns'])}), "
                                  f"{ms(row['launch_gap_ns'])} in shorter gaps between operations", "")


def _host(sec: Section, top: TopDown) -> None:
    host = top.host
    if host and host["bubble_ns"]:
        b = host["bubble_ns"]
        sec.add("host during GPU bubbles",
                f"{pct(host['in_sync_ns'] / b * 100)} in synchronizing CUDA calls, "
                f"{pct(host['in_other_api_ns'] / b * 100)} in other CUDA calls, "
                f"{pct(host['no_api_ns'] / b * 100)} in no CUDA call",
                "no CUDA call: the GPU waited for host-side work (Python, data, CPU ops) or the host was idle")
    elif top.devices:
        sec.add("host during GPU bubbles", None, "no CUDA API calls in the profile" if not host else "no bubbles")
    if top.syncs.height:
        first = top.syncs.row(0, named=True)
        sec.add("host blocked in synchronizing calls", f"{ms(int(top.syncs['total_ns'].sum()))} over "
                f"{int(top.syncs['calls'].sum())} calls (most in {first['name']}: {ms(first['total_ns'])})",
                "costs GPU time only where the GPU then sat idle (ranked below as GPU idle after synchronizing calls)")


def _stats_tables(report: Report, timeline: Timeline) -> None:
    if not timeline.profiled:
        report.section("nsys stats tables").add("tables", None, "no profiler file given (--nsys or --kineto)")
        return
    stats_only = any(source == "nsys stats CSV" for _, source in timeline.tables.values())
    for name, (title, missing) in TABLES.items():
        table, source = timeline.tables[name]
        sec = report.section(title)
        if table.is_empty():
            sec.add("rows", None, f"not given: no {name} among the nsys stats CSVs" if stats_only else missing)
            continue
        sec.add("rows", f"{table.height:,}", f"from {source}; Time (%) is the share of this table's total, not of wall time")
        sec.table = table.with_columns(pl.selectors.float().round(3 if "MB" in table.columns[0] else 1))


def _sglang(report: Report, side: SglangSide) -> None:
    report.section("SGLang processes").table = side.processes
    ops = report.section("GPU time by layer and op (NVTX projection)")
    if side.ops is not None:
        ops.table = side.ops
        if side.layers.height:
            ops.add("GPU time per layer", describe_layers(side.layers),
                    "kernels launched inside each layer range, all forwards of the capture")
        ops.add("other", "kernels launched outside op ranges",
                "CUDA-graph replays (their ranges ran at capture), sampling, cache writes")
    else:
        ops.add("per-op GPU time", None, "needs --trace-level layer ranges, an nsys capture with CUDA API calls, "
                "and eager forwards (--disable-prefill-cuda-graph)")
    _overlap(report.section("Scheduler CPU vs GPU"), side)
    sched = report.section("Scheduling overhead per batch")
    for name, label in ((sc.SCHEDULE, "schedule"), (sc.PROCESS_RESULT, "result processing"),
                        (sc.FORWARD, "forward launch (CPU)")):
        d, why = side.batch_spans[name], profiler_control.describe(side.left_out, name)
        sched.add(label, f"median {ms(d.median())}, p99 {ms(d.quantile(0.99))} over {d.len()} batches"
                  + _longest_text(side.longest[name]) if d.len() else None,
                  f"span {name}" + (f"; {why}" if why else ""))
    _memory(report.section("Memory"), side)


def _longest_text(longest: dict) -> str:
    nth, mode = longest["nth"], longest["mode"] or "batch"
    suffix = "th" if 10 <= nth % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(nth % 10, "th")
    which = f"the first {mode}" if nth == 1 else f"the {nth}{suffix} {mode} on its process"
    return f"; longest {ms(longest['dur_ns'])} ({which})"


def _overlap(overlap: Section, side: SglangSide) -> None:
    o = side.overlap
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
    if side.per_forward is not None:
        overlap.child("GPU time per forward").table = side.per_forward


def _memory(mem: Section, side: SglangSide) -> None:
    peak = side.peak_memory
    mem.add("peak GPU memory", f"{peak / 2**30:.2f} GiB" if peak is not None else None,
            (f"NVML mem_used every {side.nvml_interval_ms} ms" if side.nvml_interval_ms else "NVML mem_used")
            if peak is not None else "no NVML samples")
    if side.kv_peak:
        used, total = side.kv_peak
        mem.add("peak KV used", f"{used} of {total} tokens", "cache spans")
    if side.cache_spans:
        mem.add("evictions", str(side.evictions.height), "span sglang.cache.evict")
    else:
        mem.add("evictions", None, "no prefix-cache spans in this trace (--trace-level batch records them)")
    if side.evictions.height:
        mem.child("eviction events").table = side.evictions
