"""Attribution by rid and batch membership: which forwards (and which of their kernels) ran a given
set of requests. A time window alone also catches whatever else ran in it (SGLang's warm-up request,
another cell's stragglers), so every per-request and per-cell GPU figure goes through these."""
from __future__ import annotations

import polars as pl

from sglang_tracing import semconv as sc

MEMBER_SCHEMA = {"span_id": pl.String, "start_ns": pl.Int64, "mode": pl.String, "gpu_ns": pl.Int64,
                 "rid": pl.String, "tokens": pl.Int64}


def forward_members(spans: pl.DataFrame) -> pl.DataFrame:
    """One row per (forward, request in its batch): span_id, start_ns, mode, gpu_ns (CUDA events, null
    when not recorded), rid, tokens (the tokens it computed in that forward: its extend length, 1 in
    a decode step)."""
    if sc.BATCH_RIDS not in spans.columns:
        return pl.DataFrame(schema=MEMBER_SCHEMA)
    fwd = spans.filter((pl.col("name") == sc.FORWARD) & pl.col(sc.BATCH_RIDS).is_not_null())
    lens = (pl.col(sc.BATCH_EXTEND_LENS).cast(pl.List(pl.Int64)) if sc.BATCH_EXTEND_LENS in fwd.columns
            else pl.lit(None, pl.List(pl.Int64)))
    ones = pl.col(sc.BATCH_RIDS).list.eval(pl.lit(1, pl.Int64))
    gpu = pl.col(sc.GPU_DURATION_NS).cast(pl.Int64) if sc.GPU_DURATION_NS in fwd.columns else pl.lit(None, pl.Int64)
    return (fwd.select("span_id", "start_ns", pl.col(sc.FORWARD_MODE).alias("mode"), gpu.alias("gpu_ns"),
                       pl.col(sc.BATCH_RIDS).alias("rid"),
                       pl.when(lens.is_null() | (lens.list.len() != pl.col(sc.BATCH_RIDS).list.len()))
                       .then(ones).otherwise(lens).alias("tokens"))
            .explode(["rid", "tokens"]).cast(MEMBER_SCHEMA))


def forwards_of(members: pl.DataFrame, rids) -> pl.DataFrame:
    """The forwards whose batch holds at least one of ``rids``, one row each: span_id, start_ns, mode,
    gpu_ns, batch_size, members (requests of ``rids`` in it), outsiders (the others), member_tokens,
    tokens, share (member_tokens / tokens: the part of the forward's work that was theirs)."""
    rids = list(rids)
    return (members.with_columns(pl.col("rid").is_in(rids).alias("mine"))
            .group_by("span_id").agg(
                pl.col("start_ns").first(), pl.col("mode").first(), pl.col("gpu_ns").first(),
                pl.len().alias("batch_size"), pl.col("mine").sum().cast(pl.Int64).alias("members"),
                pl.col("tokens").filter(pl.col("mine")).sum().alias("member_tokens"),
                pl.col("tokens").sum().alias("tokens"))
            .filter(pl.col("members") > 0)
            .with_columns((pl.col("batch_size") - pl.col("members")).alias("outsiders"),
                          (pl.col("member_tokens") / pl.col("tokens")).alias("share"))
            .sort("start_ns"))


def is_prefill(mode: pl.Expr = pl.col("mode")) -> pl.Expr:
    return mode.is_in(["extend", "mixed"])


def forwards_inside(spans: pl.DataFrame, start_ns: int, end_ns: int) -> pl.DataFrame:
    """Forward spans that started inside [start_ns, end_ns] (span_id, start_ns, rids): to tell what else
    ran in a window, never to attribute."""
    fwd = spans.filter((pl.col("name") == sc.FORWARD) & pl.col("start_ns").is_between(start_ns, end_ns))
    rids = pl.col(sc.BATCH_RIDS) if sc.BATCH_RIDS in fwd.columns else pl.lit(None, pl.List(pl.String))
    return fwd.select("span_id", "start_ns", rids.alias("rids"))


def kernels_of_forwards(kernels: pl.DataFrame, cpu_ops: pl.DataFrame, nvtx: pl.DataFrame,
                        spans: pl.DataFrame, forward_ids) -> pl.DataFrame:
    """The kernels (same columns as ``kernels``) launched by the given forward spans.

    A kernel belongs to the forward whose NVTX range (named with its span id, or its model-forward
    child's) was open on the launching thread when the launch call ran, found through the launch
    call's correlation id. Where no such range was captured, a kernel belongs to the forward whose
    GPU start/end (CUDA events) bracket its start.
    """
    ids = pl.Series("forward_id", list(forward_ids), pl.String)
    if kernels.is_empty() or ids.is_empty():
        return kernels.clear()
    fwd_spans = spans.filter(pl.col("name") == sc.FORWARD)
    owner = pl.concat([fwd_spans.select("span_id", pl.col("span_id").alias("forward_id")),
                       spans.filter(pl.col("name") == sc.MODEL_FORWARD)
                       .select("span_id", pl.col("parent_id").alias("forward_id"))])
    ranges = (nvtx.drop_nulls("span_id").join(owner, on="span_id")
              .select(pl.col("start_ns").alias("r_start"), pl.col("end_ns").alias("r_end"), "tid", "forward_id",
                      pl.col("text").str.starts_with(sc.FORWARD).alias("outer")))
    k = kernels.with_row_index("_k")
    found = pl.DataFrame(schema={"_k": pl.UInt32, "forward_id": pl.String})
    if not ranges.is_empty() and not cpu_ops.is_empty() and "correlation" in k.columns:
        launches = (cpu_ops.drop_nulls("correlation").unique("correlation", keep="first")
                    .select("correlation", pl.col("start_ns").alias("launch_ns"), "tid"))
        kl = k.drop_nulls("correlation").select("_k", "correlation").join(launches, on="correlation").sort("launch_ns")
        # forward ranges and model-forward ranges each never overlap among themselves; a model-forward
        # range nests inside its forward's, which may not have been captured (capture began inside it)
        per_kind = []
        for outer in (True, False):
            r = ranges.filter(pl.col("outer") == outer).drop("outer").sort("r_start")
            if r.is_empty():
                continue
            hit = kl.join_asof(r, left_on="launch_ns", right_on="r_start", by="tid", strategy="backward",
                               check_sortedness=False)
            per_kind.append(hit.filter(pl.col("launch_ns") <= pl.col("r_end")).select("_k", "forward_id"))
        if per_kind:
            found = pl.concat(per_kind).unique("_k", keep="first")
    if sc.GPU_START_NS in fwd_spans.columns:
        windows = (fwd_spans.drop_nulls(sc.GPU_START_NS)
                   .select(pl.col(sc.GPU_START_NS).cast(pl.Int64).alias("g_start"),
                           pl.col(sc.GPU_END_NS).cast(pl.Int64).alias("g_end"), pl.col("span_id").alias("forward_id"))
                   .sort("g_start"))
        rest = k.join(found, on="_k", how="anti").select("_k", "start_ns").sort("start_ns")
        if windows.height and rest.height:
            by_time = rest.join_asof(windows, left_on="start_ns", right_on="g_start", strategy="backward")
            found = pl.concat([found, by_time.filter(pl.col("start_ns") <= pl.col("g_end")).select("_k", "forward_id")])
    keep = found.filter(pl.col("forward_id").is_in(ids.to_list()))
    return k.join(keep.select("_k"), on="_k", how="semi").drop("_k")
