"""Perfetto tracks of the hierarchical cache and speculative decoding, for ``perfetto.render``: under each
scheduler process, one track for the cache's transfers between tiers (backups, load-backs, evictions,
prefetches), one for the draft / verify / accept phases of speculative decoding, their GPU windows (the
load-back copies and the draft / verify CUDA events) on a GPU track of their own (the host tier's occupancy
is a counter beside the KV cache's: ``perfetto_counters``). Nothing is written for a trace that used neither
feature."""
from __future__ import annotations

import polars as pl

from sglang_tracing import semconv as sc

TIERS = (sc.HICACHE_BACKUP, sc.HICACHE_BACKUP_STORAGE, sc.HICACHE_LOAD_BACK, sc.HICACHE_LOAD_ISSUE,
         sc.HICACHE_LOAD_DONE, sc.HICACHE_EVICT_HOST, sc.HICACHE_PREFETCH, sc.HICACHE_STORAGE_HIT)
SPEC = (sc.SPEC_DRAFT, sc.SPEC_VERIFY, sc.SPEC_ACCEPT)
COLUMNS = (sc.HICACHE_HOST_USED, sc.GPU_DURATION_NS)  # span columns the tracks read, beyond perfetto's own
_TRACKS = (("tiers", TIERS, "HiCache tier transfers"), ("spec", SPEC, "speculative draft / verify"))


def route(w, spans: pl.DataFrame, uuids: dict[str, int], uuid_of, track_key: pl.Expr) -> pl.Expr:
    """``track_key`` with the features' spans moved to their own track per process (tracks declared here)."""
    for prefix, names, title in _TRACKS:
        mine = spans.filter(pl.col("name").is_in(names))
        if mine.is_empty():
            continue
        for key in mine["_proc"].unique(maintain_order=True).to_list():
            uuids[f"{prefix}:{key}"] = w.track(uuid_of(f"{prefix}:{key}"), title, parent=uuid_of(f"proc:{key}"))
        track_key = pl.when(pl.col("name").is_in(names)).then(pl.lit(f"{prefix}:") + pl.col("_proc")).otherwise(track_key)
    return track_key


def gpu_slices(w, spans: pl.DataFrame, uuids: dict[str, int], uuid_of) -> pl.DataFrame:
    """The GPU windows of load-back copies and draft / verify phases (where CUDA events timed them)."""
    if sc.GPU_START_NS not in spans.columns:
        return pl.DataFrame()
    rows = spans.filter(pl.col("name").is_in([sc.HICACHE_LOAD_DONE, sc.SPEC_DRAFT, sc.SPEC_VERIFY])
                        & pl.col(sc.GPU_START_NS).is_not_null())
    if rows.is_empty():
        return pl.DataFrame()
    for key in rows["_proc"].unique(maintain_order=True).to_list():
        uuids[f"feature-gpu:{key}"] = w.track(uuid_of(f"feature-gpu:{key}"), "GPU copies and draft / verify (CUDA events)",
                                              parent=uuid_of(f"proc:{key}"))
    return rows.select(
        ("feature-gpu:" + pl.col("_proc")).replace_strict(uuids, return_dtype=pl.UInt64).alias("track"),
        pl.col(sc.GPU_START_NS).alias("start_ns"), pl.max_horizontal(sc.GPU_START_NS, sc.GPU_END_NS).alias("end_ns"),
        (pl.col("name").str.split(".").list.last() + " (GPU)").alias("name"), pl.col("span_id"))
