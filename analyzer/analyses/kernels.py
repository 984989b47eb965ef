"""Experiment 4 analyses over kernels and spans: CPU/GPU overlap, per-forward and per-request GPU time, NVTX
projection (kernel totals with nsys stats semantics are in ``stats_tables``)."""
from __future__ import annotations

import polars as pl

from sglang_tracing import semconv as sc


def merge_intervals(frame: pl.DataFrame) -> pl.DataFrame:
    """Union of [start_ns, end_ns) intervals as disjoint sorted intervals."""
    if frame.is_empty():
        return pl.DataFrame(schema={"start_ns": pl.Int64, "end_ns": pl.Int64})
    f = frame.select("start_ns", "end_ns").sort("start_ns")
    f = f.with_columns(pl.col("end_ns").cum_max().shift(1).alias("prev_end"))
    f = f.with_columns((pl.col("prev_end").is_null() | (pl.col("start_ns") > pl.col("prev_end"))).cum_sum().alias("g"))
    return f.group_by("g").agg(pl.col("start_ns").min(), pl.col("end_ns").max()).sort("start_ns").drop("g")


def total_ns(iv: pl.DataFrame) -> int:
    return int((iv["end_ns"] - iv["start_ns"]).sum()) if iv.height else 0


def intersection_ns(a: pl.DataFrame, b: pl.DataFrame) -> int:
    """Total length of the intersection of two disjoint sorted interval sets."""
    i = j = total = 0
    A, B = a.rows(), b.rows()
    while i < len(A) and j < len(B):
        lo, hi = max(A[i][0], B[j][0]), min(A[i][1], B[j][1])
        if hi > lo:
            total += hi - lo
        if A[i][1] < B[j][1]:
            i += 1
        else:
            j += 1
    return total


def cpu_gpu_overlap(spans: pl.DataFrame | pl.LazyFrame, kernels: pl.DataFrame, bubble_ns: int = 50_000) -> dict:
    """Busy and idle time of the scheduler CPU thread and of the GPU over the window both were active."""
    if kernels.is_empty():
        return {}
    cpu = spans.lazy().filter(pl.col("name").is_in([sc.SCHEDULE, sc.FORWARD, sc.PROCESS_RESULT])).select(
        "start_ns", "end_ns").collect()
    if cpu.is_empty():
        return {}
    gpu_iv, cpu_iv = merge_intervals(kernels), merge_intervals(cpu)
    lo = max(gpu_iv["start_ns"].min(), cpu_iv["start_ns"].min())
    hi = min(gpu_iv["end_ns"].max(), cpu_iv["end_ns"].max())
    if hi <= lo:
        return {}
    clip = lambda iv: iv.with_columns(pl.col("start_ns").clip(lo, hi), pl.col("end_ns").clip(lo, hi)).filter(
        pl.col("end_ns") > pl.col("start_ns"))
    gpu_iv, cpu_iv = clip(gpu_iv), clip(cpu_iv)
    window, g, c = hi - lo, total_ns(gpu_iv), total_ns(cpu_iv)
    both = intersection_ns(gpu_iv, cpu_iv)
    gaps = (gpu_iv["start_ns"].shift(-1) - gpu_iv["end_ns"]).drop_nulls()
    bubbles = gaps.filter(gaps > bubble_ns)
    return {"window_ns": window, "gpu_busy_ns": g, "cpu_busy_ns": c, "both_busy_ns": both,
            "gpu_idle_while_cpu_busy_ns": c - both, "cpu_idle_while_gpu_busy_ns": g - both,
            "both_idle_ns": window - g - c + both, "bubbles": bubbles.len(), "bubble_ns": int(bubbles.sum() or 0),
            "bubble_threshold_ns": bubble_ns}


def forward_gpu_time(spans: pl.DataFrame | pl.LazyFrame, kernels: pl.DataFrame) -> pl.DataFrame:
    """GPU ns of each forward span: its CUDA-event duration when recorded, else the kernels that
    started between its launch and the next forward's launch. Columns: span_id, mode, gpu_ns, source."""
    spans = spans.lazy()
    schema = spans.collect_schema()
    mode = pl.col(sc.FORWARD_MODE) if sc.FORWARD_MODE in schema else pl.lit(None, pl.String)
    out = spans.filter(pl.col("name") == sc.FORWARD).select(
        "span_id", "start_ns", mode.alias("mode"),
        (pl.col(sc.GPU_DURATION_NS) if sc.GPU_DURATION_NS in schema else pl.lit(None, pl.Int64)).alias("event_ns"),
    ).collect().sort("start_ns", maintain_order=True)
    if out.is_empty():
        return pl.DataFrame(schema={"span_id": pl.String, "mode": pl.String, "gpu_ns": pl.Int64, "source": pl.String})
    if not kernels.is_empty():
        k = kernels.select("start_ns", "dur_ns").sort("start_ns").join_asof(
            out.select("span_id", pl.col("start_ns").alias("fwd_start")), left_on="start_ns", right_on="fwd_start")
        by_fwd = k.drop_nulls("span_id").group_by("span_id").agg(pl.col("dur_ns").sum().alias("kernel_ns"))
        out = out.join(by_fwd, on="span_id", how="left")
    else:
        out = out.with_columns(pl.lit(None, pl.Int64).alias("kernel_ns"))
    return out.select("span_id", "mode",
                      pl.coalesce("event_ns", "kernel_ns").alias("gpu_ns"),
                      pl.when(pl.col("event_ns").is_not_null()).then(pl.lit("cuda events"))
                      .when(pl.col("kernel_ns").is_not_null()).then(pl.lit("kernels")).otherwise(None).alias("source"))


def request_gpu_time(spans: pl.DataFrame | pl.LazyFrame, per_forward: pl.DataFrame) -> pl.DataFrame:
    """Each forward's GPU time split across its requests by their tokens in that forward.
    Columns: rid, prefill_gpu_ns, decode_gpu_ns, gpu_ns."""
    empty = pl.DataFrame(schema={"rid": pl.String, "prefill_gpu_ns": pl.Float64, "decode_gpu_ns": pl.Float64,
                                 "gpu_ns": pl.Float64})
    spans = spans.lazy()
    schema = spans.collect_schema()
    if per_forward.is_empty() or sc.BATCH_RIDS not in schema:
        return empty
    fwd = spans.filter(pl.col("name") == sc.FORWARD).select(
        "span_id", pl.col(sc.BATCH_RIDS).alias("rid"),
        (pl.col(sc.BATCH_EXTEND_LENS) if sc.BATCH_EXTEND_LENS in schema else pl.lit(None, pl.List(pl.Int64)))
        .alias("tokens"))
    fwd = fwd.with_columns(pl.when(pl.col("tokens").is_null()).then(pl.col("rid").list.eval(pl.lit(1)))
                           .otherwise(pl.col("tokens")).alias("tokens"))
    # a forward's token total taken before the explode, so the streaming engine needs no window
    long = (fwd.with_columns(pl.col("tokens").list.sum().alias("batch_tokens")).explode(["rid", "tokens"])
            .join(per_forward.drop_nulls("gpu_ns").lazy(), on="span_id"))
    long = long.with_columns((pl.col("gpu_ns") * pl.col("tokens") / pl.col("batch_tokens")).alias("share_ns"))
    is_prefill = pl.col("mode").is_in(["extend", "mixed"])
    # columns summed, not filters inside the aggregation: those would make the streaming engine
    # fall back to holding every (forward, request) row
    out = long.select("rid", "share_ns", pl.when(is_prefill).then(pl.col("share_ns")).alias("prefill"),
                      pl.when(~is_prefill).then(pl.col("share_ns")).alias("decode")).group_by("rid").agg(
        pl.col("prefill").sum().alias("prefill_gpu_ns"), pl.col("decode").sum().alias("decode_gpu_ns"),
        pl.col("share_ns").sum().alias("gpu_ns")).collect(engine="streaming")
    return out if out.height else empty


def project_nvtx(kernels: pl.DataFrame, cpu_ops: pl.DataFrame, nvtx: pl.DataFrame) -> pl.DataFrame:
    """Each kernel with the op and layer NVTX ranges (``--trace-level layer``) that were open on the
    CPU thread when it was launched, found through the launch call's correlation id (what nsys calls
    NVTX projection). Columns: start_ns, dur_ns, name, op, layer (null where no range was open)."""
    schema = {"start_ns": pl.Int64, "dur_ns": pl.Int64, "name": pl.String, "op": pl.String, "layer": pl.String}
    ops = nvtx.filter(pl.col("text").is_in(sc.NVTX_OPS))
    if kernels.is_empty() or cpu_ops.is_empty() or ops.is_empty():
        return pl.DataFrame(schema=schema)
    launches = (cpu_ops.drop_nulls("correlation").unique("correlation", keep="first")
                .select("correlation", pl.col("start_ns").alias("launch_ns"), "tid"))
    k = kernels.drop_nulls("correlation").join(launches, on="correlation").sort("launch_ns")
    layers = nvtx.filter(pl.col("text").str.starts_with(sc.NVTX_LAYER_PREFIX))
    for column, ranges in (("op", ops), ("layer", layers)):
        r = ranges.select(pl.col("start_ns").alias("r_start"), pl.col("end_ns").alias("r_end"), "tid",
                          pl.col("text").alias(column)).sort("r_start")
        k = k.join_asof(r, left_on="launch_ns", right_on="r_start", by="tid", strategy="backward",
                        check_sortedness=False)  # both sorted by time, hence within each thread
        k = k.with_columns(pl.when(pl.col("launch_ns") <= pl.col("r_end")).then(pl.col(column)).alias(column))
        k = k.drop("r_start", "r_end")
    return k.select("start_ns", "dur_ns", "name", "op", "layer").sort("start_ns")


def by_op(projected: pl.DataFrame) -> pl.DataFrame:
    """GPU time per op range (kernels launched outside any op range: 'other')."""
    total = projected["dur_ns"].sum()
    return (projected.with_columns(pl.col("op").fill_null("other"))
            .group_by("op").agg(pl.col("dur_ns").sum().alias("total_ns"), pl.len().alias("kernels"))
            .with_columns((pl.col("total_ns") / total * 100).round(1).alias("share_pct"))
            .sort("total_ns", descending=True))


def by_layer(projected: pl.DataFrame) -> pl.DataFrame:
    """GPU time per decoder layer, in layer order."""
    return (projected.drop_nulls("layer").group_by("layer").agg(pl.col("dur_ns").sum().alias("total_ns"))
            .with_columns(pl.col("layer").str.strip_prefix(sc.NVTX_LAYER_PREFIX).cast(pl.Int64, strict=False)
                          .alias("index")).sort("index"))


def describe_layers(layers: pl.DataFrame) -> str:
    """``by_layer`` in one line: the median layer and the two extremes, named."""
    from sglang_tracing.analyzer.report import ms

    t = layers["total_ns"]
    lo, hi = int(t.arg_min()), int(t.arg_max())
    return (f"median {ms(int(t.median()))} over {layers.height} layers "
            f"(min {ms(t[lo])} {layers['layer'][lo]}, max {ms(t[hi])} {layers['layer'][hi]})")
