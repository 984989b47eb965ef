"""Detail windows (``sglang-trace detail``): when they ran and what each decoder layer took inside them.

``compute`` gives a typed ``LayerDetail`` from the spans (None without any layer span or window);
``add_section`` words it into a report. Forwards inside a window ran with per-layer ranges and timing,
so ``profiler_control`` keeps them, and the requests in flight then, out of every statistic, as it does
for --profile-steps.
"""
from __future__ import annotations

import dataclasses

import polars as pl

from sglang_tracing import semconv as sc
from sglang_tracing.analyzer.report import Report


@dataclasses.dataclass(frozen=True)
class LayerDetail:
    windows: pl.DataFrame  # start_ns, end_ns, level, forwards (asked), forwards_served, graph_phases (joined)
    per_layer: pl.DataFrame  # forward_mode, layer, forwards, cpu_ms_median, cpu_ms_max, gpu_ms_median (null off a GPU)
    forwards_with_layers: int  # model forwards that ran their layers eagerly inside a window


def compute(spans: pl.LazyFrame | pl.DataFrame) -> LayerDetail | None:
    spans = spans.lazy()
    schema = spans.collect_schema()
    if sc.DETAIL_LEVEL not in schema and sc.LAYER_INDEX not in schema:
        return None
    windows = pl.DataFrame(schema={"start_ns": pl.Int64, "end_ns": pl.Int64})
    if sc.DETAIL_LEVEL in schema:
        phases = (pl.col(sc.DETAIL_GRAPH_PHASES).cast(pl.List(pl.String)).list.join(", ")
                  if sc.DETAIL_GRAPH_PHASES in schema else pl.lit(None, pl.String))
        windows = spans.filter(pl.col("name") == sc.DETAIL_WINDOW).select(
            "start_ns", "end_ns", pl.col(sc.DETAIL_LEVEL).alias("level"),
            pl.col(sc.DETAIL_FORWARDS).alias("forwards"), pl.col(sc.DETAIL_SERVED).alias("forwards_served"),
            phases.alias("graph_phases")).sort("start_ns").collect()
    per_layer = pl.DataFrame(schema={"forward_mode": pl.String, "layer": pl.Int64, "forwards": pl.UInt32,
                                     "cpu_ms_median": pl.Float64, "cpu_ms_max": pl.Float64,
                                     "gpu_ms_median": pl.Float64})
    forwards = 0
    if sc.LAYER_INDEX in schema:
        gpu = pl.col(sc.GPU_DURATION_NS) if sc.GPU_DURATION_NS in schema else pl.lit(None, pl.Int64)
        layers = spans.filter(pl.col("name") == sc.LAYER).select(
            "parent_id", pl.col(sc.LAYER_INDEX).alias("layer"), (pl.col("end_ns") - pl.col("start_ns")).alias("cpu_ns"),
            gpu.alias("gpu_ns"))
        modes = spans.filter(pl.col("name") == sc.MODEL_FORWARD).select(
            pl.col("span_id").alias("parent_id"), pl.col(sc.FORWARD_MODE).alias("forward_mode"))
        joined = layers.join(modes, on="parent_id", how="left").collect()
        forwards = joined["parent_id"].n_unique()
        per_layer = joined.group_by("forward_mode", "layer").agg(
            pl.col("parent_id").n_unique().alias("forwards"),
            (pl.col("cpu_ns").median() / 1e6).alias("cpu_ms_median"), (pl.col("cpu_ns").max() / 1e6).alias("cpu_ms_max"),
            (pl.col("gpu_ns").median() / 1e6).alias("gpu_ms_median"),
        ).sort("forward_mode", "layer")
    return LayerDetail(windows, per_layer, forwards)


def add_section(report: Report, detail: LayerDetail | None) -> None:
    if detail is None:
        return
    sec = report.section("Detail windows (sglang-trace detail)")
    w = detail.windows
    sec.add("Windows", str(w.height), "sglang_tracing.detail spans: each opened between scheduling passes, "
                                      "closed after its last forward")
    if w.height:
        sec.add("Forwards in windows", str(int(w["forwards_served"].sum())),
                f"asked for {int(w['forwards'].sum())}; their requests are left out of the request statistics")
        hidden = sorted({p for p in w["graph_phases"].drop_nulls().to_list() if p})
        if hidden:
            sec.add("Without layers", ", ".join(hidden), "forwards replayed as CUDA graphs run no Python per layer")
        sec.child("Windows").table = w
    sec.add("Forwards with per-layer times", str(detail.forwards_with_layers),
            "sglang.model.layer spans: host time around each decoder layer; GPU time from CUDA events on a GPU")
    if detail.per_layer.height:
        sec.child("Per layer, by forward mode").table = detail.per_layer
