"""Per-layer and per-op host time from Kineto user annotations (a profiled pass at ``--trace-level layer``).

While a torch profiler records, our ranges are also ``record_function`` ranges (``runtime.nvtx_ranges``):
the model forward as ``"sglang.model.forward <span id>"``, inside it ``layer.<i>`` and the op names of
``semconv.NVTX_OPS``. A forward's annotation joins its span by that id; the layer and op annotations on
its thread inside it are that forward's. Without GPU kernels (a CPU run) this host time is the only
per-layer figure a Kineto trace gives.
"""
from __future__ import annotations

import polars as pl

from sglang_tracing import semconv as sc

LAYER_SCHEMA = {"layer": pl.String, "total_ns": pl.Int64, "ranges": pl.UInt32, "index": pl.Int64}
OP_SCHEMA = {"op": pl.String, "total_ns": pl.Int64, "ranges": pl.UInt32, "share_pct": pl.Float64}


def forward_annotations(nvtx: pl.DataFrame, model_forward_ids: list[str]) -> pl.DataFrame:
    """The annotations of these model-forward spans (ids as 16 hex digits): span_id, f_start, f_end, tid."""
    prefix = sc.MODEL_FORWARD + " "
    return (nvtx.filter(pl.col("text").str.starts_with(prefix))
            .select(pl.col("text").str.strip_prefix(prefix).alias("span_id"), pl.col("start_ns").alias("f_start"),
                    pl.col("end_ns").alias("f_end"), "tid")
            .filter(pl.col("span_id").is_in(model_forward_ids)))


def _inside(nvtx: pl.DataFrame, forwards: pl.DataFrame, keep: pl.Expr) -> pl.DataFrame:
    """Annotations chosen by ``keep`` that lie inside one of ``forwards`` on its thread."""
    ranges = nvtx.filter(keep).select("text", "start_ns", "end_ns", "tid")
    return (ranges.join(forwards, on="tid", how="inner")
            .filter((pl.col("start_ns") >= pl.col("f_start")) & (pl.col("end_ns") <= pl.col("f_end")))
            .with_columns((pl.col("end_ns") - pl.col("start_ns")).alias("dur_ns")))


def layer_host_time(nvtx: pl.DataFrame, model_forward_ids: list[str]) -> pl.DataFrame:
    """Host time per decoder layer over these forwards, in layer order: layer, total_ns, ranges, index."""
    fwd = forward_annotations(nvtx, model_forward_ids)
    if fwd.is_empty():
        return pl.DataFrame(schema=LAYER_SCHEMA)
    inside = _inside(nvtx, fwd, pl.col("text").str.starts_with(sc.NVTX_LAYER_PREFIX))
    return (inside.group_by(pl.col("text").alias("layer"))
            .agg(pl.col("dur_ns").sum().alias("total_ns"), pl.len().alias("ranges"))
            .with_columns(pl.col("layer").str.strip_prefix(sc.NVTX_LAYER_PREFIX).cast(pl.Int64, strict=False)
                          .alias("index")).sort("index").select(list(LAYER_SCHEMA)))


def op_host_time(nvtx: pl.DataFrame, model_forward_ids: list[str]) -> pl.DataFrame:
    """Host time per op range over these forwards, longest first: op, total_ns, ranges, share_pct (of
    the ops' total)."""
    fwd = forward_annotations(nvtx, model_forward_ids)
    if fwd.is_empty():
        return pl.DataFrame(schema=OP_SCHEMA)
    inside = _inside(nvtx, fwd, pl.col("text").is_in(sc.NVTX_OPS))
    out = (inside.group_by(pl.col("text").alias("op"))
           .agg(pl.col("dur_ns").sum().alias("total_ns"), pl.len().alias("ranges")))
    return (out.with_columns((pl.col("total_ns") / pl.col("total_ns").sum() * 100).round(1).alias("share_pct"))
            .sort("total_ns", descending=True).select(list(OP_SCHEMA)))
