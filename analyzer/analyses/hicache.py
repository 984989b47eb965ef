"""The hierarchical cache (HiRadixCache): where each request's prefix came from, the tiers over time,
what moved between them, and whether a tier is thrashing.

From the raw spans of ``patches/hiradix_cache.py``: SGLang's own split of a request's cached tokens by
tier (on its prefill span), the load-backs that served it (``load_back`` -> ``load_done`` by radix node
id), and the ages of nodes at eviction against the ages of prefixes at their hits.
"""
from __future__ import annotations

import dataclasses

import polars as pl

from sglang_tracing import semconv as sc
from sglang_tracing.analyzer.analyses.requests import request_table
from sglang_tracing.analyzer.model import TraceModel
from sglang_tracing.analyzer.report import Report, Section, ms

OPS = {  # span -> what it moved, in the tier table
    sc.HICACHE_BACKUP: "backup device->host",
    sc.HICACHE_BACKUP_STORAGE: "backup host->storage",
    sc.HICACHE_LOAD_BACK: "load-back queued host->device",
    sc.HICACHE_LOAD_DONE: "load-back done host->device",
    sc.CACHE_EVICT: "eviction from device",
    sc.HICACHE_EVICT_HOST: "eviction from host",
    sc.HICACHE_PREFETCH: "prefetch storage->host",
    sc.HICACHE_STORAGE_HIT: "storage hit",
}
NOT_USED = "not used: no span of the hierarchical cache in this trace (--enable-hierarchical-cache was off)"
REQUEST_COLUMNS = ("device_matched_tokens", "host_matched_tokens", "storage_matched_tokens", "computed_tokens",
                   "load_back_tokens", "load_back_bytes", "load_back_gpu_ns", "load_back_waited",
                   "load_back_wait_ns")


def _col(spans: pl.DataFrame, name: str, dtype=pl.Int64) -> pl.Expr:
    return pl.col(name) if name in spans.columns else pl.lit(None, dtype).alias(name)


def used(spans: pl.DataFrame) -> bool:
    return spans.height > 0 and spans["name"].is_in([n for n in OPS if n != sc.CACHE_EVICT]).any() or (
        sc.HICACHE_HOST_TOTAL in spans.columns and spans[sc.HICACHE_HOST_TOTAL].drop_nulls().len() > 0)


def tier_events(spans: pl.DataFrame) -> pl.DataFrame:
    """One row per tier operation, in time order. Columns: start_ns, end_ns, dur_ns, op, tokens, bytes,
    gpu_ns (load-back copies timed by CUDA events), device_used, host_used (tokens after the operation), rid."""
    rows = spans.filter(pl.col("name").is_in(list(OPS)) & _col(spans, sc.HICACHE_HOST_TOTAL).is_not_null())
    return rows.select(
        "start_ns", "end_ns", (pl.col("end_ns") - pl.col("start_ns")).alias("dur_ns"),
        pl.col("name").replace_strict(OPS).alias("op"),
        pl.coalesce(_col(spans, sc.HICACHE_TOKENS), _col(spans, sc.CACHE_FREED_TOKENS)).alias("tokens"),
        _col(spans, sc.HICACHE_BYTES).alias("bytes"), _col(spans, sc.HICACHE_GPU_NS).alias("gpu_ns"),
        _col(spans, sc.CACHE_USED).alias("device_used"), _col(spans, sc.HICACHE_HOST_USED).alias("host_used"),
        _col(spans, sc.RID, pl.String).alias("rid"),
    ).sort("start_ns")


def tier_totals(events: pl.DataFrame) -> pl.DataFrame:
    """Per operation: count, tokens, bytes, wall_ns (scheduler time in the call), gpu_ns (copy time)."""
    return (events.group_by("op").agg(pl.len().alias("count"), pl.col("tokens").sum(), pl.col("bytes").sum(),
                                      pl.col("dur_ns").sum().alias("wall_ns"), pl.col("gpu_ns").sum())
            .sort("op"))


def _load_backs(spans: pl.DataFrame) -> pl.DataFrame:
    """Per request: the load-back queued for it and the completion of the copy that carried it."""
    queued = (spans.filter((pl.col("name") == sc.HICACHE_LOAD_BACK) & (_col(spans, sc.HICACHE_TOKENS) > 0))
              .select(pl.col(sc.RID).alias("rid"), pl.col("start_ns").alias("queued_ns"),
                      pl.col(sc.HICACHE_TOKENS).alias("load_back_tokens"),
                      pl.col(sc.HICACHE_BYTES).alias("load_back_bytes"), pl.col(sc.HICACHE_NODE_IDS).alias("node"))
              .explode("node"))
    done = (spans.filter(pl.col("name") == sc.HICACHE_LOAD_DONE)
            .select(pl.col("start_ns").alias("done_ns"), _col(spans, sc.HICACHE_GPU_NS).alias("load_back_gpu_ns"),
                    _col(spans, sc.GPU_END_NS).alias("copy_gpu_end_ns"), pl.col(sc.HICACHE_NODE_IDS).alias("node"))
            .explode("node"))
    if queued.is_empty():
        return pl.DataFrame(schema={"rid": pl.String, "load_back_tokens": pl.Int64, "load_back_bytes": pl.Int64,
                                    "load_back_gpu_ns": pl.Int64, "copy_gpu_end_ns": pl.Int64})
    both = queued.join(done, on="node", how="left").filter(
        pl.col("done_ns").is_null() | (pl.col("done_ns") >= pl.col("queued_ns")))
    return (both.sort("done_ns", nulls_last=True).group_by("rid", maintain_order=True).first()
            .select("rid", "load_back_tokens", "load_back_bytes", "load_back_gpu_ns", "copy_gpu_end_ns"))


def request_tiers(spans: pl.DataFrame, requests: pl.DataFrame) -> pl.DataFrame:
    """Per request (``requests`` from ``request_table``): prefix tokens matched on the device, on host and
    in storage (SGLang's own split, recorded on the prefill span), tokens computed, and the load-back
    that brought its host part: tokens, bytes, GPU copy time, and whether its prefill waited for the copy
    (its forward started on the GPU before the copy ended; wait_ns is that overlap, an upper bound: each
    layer waits only for its own layer's copy)."""
    prefill = spans.filter(pl.col("name") == sc.REQUEST_PREFILL).select(
        pl.col(sc.RID).alias("rid"), _col(spans, sc.CACHED_DEVICE).alias("device_matched_tokens"),
        _col(spans, sc.CACHED_HOST).alias("host_matched_tokens"),
        _col(spans, sc.CACHED_STORAGE).alias("storage_matched_tokens"),
        _col(spans, sc.FORWARD_SPAN_ID, pl.String).alias("forward")).unique("rid", keep="first")
    forwards = spans.filter(pl.col("name") == sc.FORWARD).select(
        pl.col("span_id").alias("forward"), _col(spans, sc.GPU_START_NS).alias("forward_gpu_start_ns"))
    out = (requests.select("rid", (pl.col("prompt_tokens") - pl.col("cached_tokens")).alias("computed_tokens"))
           .join(prefill, on="rid", how="left").join(forwards, on="forward", how="left")
           .join(_load_backs(spans), on="rid", how="left"))
    wait = pl.col("copy_gpu_end_ns") - pl.col("forward_gpu_start_ns")
    return out.with_columns(
        pl.when(wait.is_not_null()).then(wait > 0).alias("load_back_waited"),
        pl.when(wait.is_not_null()).then(pl.max_horizontal(wait, pl.lit(0))).alias("load_back_wait_ns"),
    ).select("rid", *REQUEST_COLUMNS)


def occupancy(spans: pl.DataFrame) -> pl.DataFrame:
    """Both tiers' occupancy after each cache operation: t_ns, device_used, device_total, host_used, host_total."""
    rows = spans.filter(_col(spans, sc.HICACHE_HOST_TOTAL).is_not_null())
    return rows.select(pl.col("end_ns").alias("t_ns"), _col(spans, sc.CACHE_USED).alias("device_used"),
                       _col(spans, sc.CACHE_TOTAL).alias("device_total"),
                       pl.col(sc.HICACHE_HOST_USED).alias("host_used"),
                       pl.col(sc.HICACHE_HOST_TOTAL).alias("host_total")).sort("t_ns")


def eviction_ages(spans: pl.DataFrame) -> pl.DataFrame:
    """Per node evicted: tier (device, host), age_ns (since its last access), tokens."""
    if sc.HICACHE_EVICTED_AGES_NS not in spans.columns:
        return pl.DataFrame(schema={"tier": pl.String, "age_ns": pl.Int64, "tokens": pl.Int64})
    rows = spans.filter(pl.col("name").is_in([sc.CACHE_EVICT, sc.HICACHE_EVICT_HOST])
                        & pl.col(sc.HICACHE_EVICTED_AGES_NS).is_not_null())
    return (rows.select(pl.when(pl.col("name") == sc.CACHE_EVICT).then(pl.lit("device")).otherwise(pl.lit("host"))
                        .alias("tier"), pl.col(sc.HICACHE_EVICTED_AGES_NS).alias("age_ns"),
                        pl.col(sc.HICACHE_EVICTED_NODE_TOKENS).alias("tokens"))
            .explode("age_ns", "tokens").drop_nulls("age_ns"))


def hit_ages(requests: pl.DataFrame, tiers: pl.DataFrame, block: int = sc.PREFIX_BLOCK) -> pl.DataFrame:
    """Per prefix hit: tier (device or host: where the deepest matched part was), age_ns (prefix lookup minus
    the last time an earlier request with the same prefix finished or, if none had, started its prefill)."""
    schema = {"rid": pl.String, "tier": pl.String, "age_ns": pl.Int64}
    if "prefix_digests" not in requests.columns or tiers.is_empty():
        return pl.DataFrame(schema=schema)
    hits = (requests.join(tiers, on="rid").filter(
        (pl.col("device_matched_tokens").fill_null(0) + pl.col("host_matched_tokens").fill_null(0)) >= block)
        .select("rid", "prefix_match_start_ns",
                pl.when(pl.col("host_matched_tokens") > 0).then(pl.lit("host")).otherwise(pl.lit("device")).alias("tier"),
                ((pl.col("device_matched_tokens").fill_null(0) + pl.col("host_matched_tokens").fill_null(0)) // block - 1)
                .alias("k")))
    blocks = (requests.select("rid", pl.col("prefix_digests").alias("d"), "finished_ns", "prefill_start_ns")
              .drop_nulls("d").explode("d").with_columns(pl.int_range(pl.len()).over("rid").alias("k")))
    mine = hits.join(blocks.select("rid", "k", "d"), on=["rid", "k"])
    touched = pl.when(pl.col("finished_ns") < pl.col("prefix_match_start_ns")).then(pl.col("finished_ns")) \
        .otherwise(pl.col("prefill_start_ns"))
    others = (mine.join(blocks.rename({"rid": "other"}), on=["k", "d"])
              .filter((pl.col("other") != pl.col("rid")) & (pl.col("prefill_start_ns") < pl.col("prefix_match_start_ns")))
              .with_columns(touched.alias("touched_ns")))
    return (others.group_by("rid", "tier", "prefix_match_start_ns").agg(pl.col("touched_ns").max())
            .select("rid", "tier", (pl.col("prefix_match_start_ns") - pl.col("touched_ns")).alias("age_ns"))
            .sort("rid"))


@dataclasses.dataclass
class Thrash:
    """A tier thrashes when prefixes leave it younger than the age at which they are asked for again."""
    tier: str
    hits: int
    evicted_nodes: int
    median_hit_age_ns: float | None
    median_evicted_age_ns: float | None

    @property
    def thrashing(self) -> bool | None:
        if self.median_hit_age_ns is None or self.median_evicted_age_ns is None:
            return None
        return self.median_evicted_age_ns < self.median_hit_age_ns


def thrash(hits: pl.DataFrame, evictions: pl.DataFrame) -> list[Thrash]:
    """Per tier: the reuse age of every hit (wherever it was served from) against that tier's eviction ages."""
    out = []
    h = hits["age_ns"]
    for tier in ("device", "host"):
        e = evictions.filter(pl.col("tier") == tier)["age_ns"]
        out.append(Thrash(tier, h.len(), e.len(), h.median() if h.len() else None, e.median() if e.len() else None))
    return out


@dataclasses.dataclass
class HiCache:
    used: bool
    events: pl.DataFrame
    totals: pl.DataFrame
    requests: pl.DataFrame  # request_tiers
    occupancy: pl.DataFrame
    thrash: list[Thrash]


def compute(spans: pl.DataFrame, requests: pl.DataFrame) -> HiCache:
    if not used(spans):
        empty = pl.DataFrame()
        return HiCache(False, empty, empty, empty, empty, [])
    events = tier_events(spans)
    tiers = request_tiers(spans, requests)
    return HiCache(True, events, tier_totals(events), tiers, occupancy(spans),
                   thrash(hit_ages(requests, tiers), eviction_ages(spans)))


def add_to_report(report: Report, model: TraceModel) -> None:
    """The radix report's section on the cache tiers ("not used" when the feature was off)."""
    requests = request_table(model.spans, model.manifest, model.servers)
    describe(report.section("Cache tiers (hierarchical cache)"), compute(model.spans, requests), requests)


def describe(section: Section, hc: HiCache, requests: pl.DataFrame) -> None:
    """The radix report's tiers: where prefixes came from, what moved, TTFT by source, thrashing."""
    if not hc.used:
        section.add("hierarchical cache", NOT_USED)
        return
    t = hc.requests
    for label, col in (("prefix tokens matched on device", "device_matched_tokens"),
                       ("prefix tokens loaded back from host", "host_matched_tokens"),
                       ("prefix tokens fetched from storage", "storage_matched_tokens"),
                       ("prompt tokens computed", "computed_tokens")):
        section.add(label, f"{int(t[col].fill_null(0).sum()):,}", "summed over requests; SGLang's own split "
                    "(Req.cached_tokens_device/host/storage)" if col != "computed_tokens" else "prompt - cached")
    loads = t.filter(pl.col("load_back_tokens").is_not_null())
    section.add("requests served by a load-back", f"{loads.height} of {t.height}")
    if loads.height:
        waited = loads.filter(pl.col("load_back_waited").fill_null(False))
        section.add("load-back GPU copy time, median", ms(loads["load_back_gpu_ns"].median()),
                    "CUDA events around the copy (load stream)")
        section.add("prefills that waited for their load-back", f"{waited.height} of {loads.height}",
                    "the forward began on the GPU before the copy ended; the layer-wise overlap makes the "
                    "wait at most " + (ms(waited["load_back_wait_ns"].median()) or "0") + " (median)")
    by_source = _ttft_by_source(t, requests)
    if by_source.height:
        section.add("TTFT by where the prefix came from (median)", "; ".join(
            f"{r['source']} {ms(r['ttft_ns'])} ({r['n']})" for r in by_source.iter_rows(named=True)))
    for th in hc.thrash:
        verdict = {None: "not enough data", True: "thrashing", False: "not thrashing"}[th.thrashing]
        section.add(f"{th.tier} tier: age at hit vs age at eviction (median)",
                    f"{ms(th.median_hit_age_ns)} vs {ms(th.median_evicted_age_ns)}: {verdict}",
                    f"{th.hits} hits, {th.evicted_nodes} nodes evicted; thrashing = prefixes leave the tier "
                    "younger than the age at which they are asked for again")
    section.table = hc.totals.with_columns((pl.col("bytes") / 2**20).round(1).alias("MiB"),
                                           (pl.col("wall_ns") / 1e6).round(3).alias("wall_ms"),
                                           (pl.col("gpu_ns") / 1e6).round(3).alias("gpu_ms")
                                           ).drop("bytes", "wall_ns", "gpu_ns")


def _ttft_by_source(tiers: pl.DataFrame, requests: pl.DataFrame) -> pl.DataFrame:
    """Median TTFT of user requests by the source of their prefix: device hit, host load-back, computed."""
    source = (pl.when(pl.col("host_matched_tokens").fill_null(0) + pl.col("storage_matched_tokens").fill_null(0) > 0)
              .then(pl.lit("host/storage")).when(pl.col("device_matched_tokens").fill_null(0) > 0)
              .then(pl.lit("device hit")).otherwise(pl.lit("computed")))
    users = requests.filter(pl.col("internal").is_null()) if "internal" in requests.columns else requests
    return (users.select("rid", pl.coalesce("ttft_ns", "ttft_compute_ns").alias("ttft_ns")).join(tiers, on="rid")
            .with_columns(source.alias("source")).group_by("source")
            .agg(pl.col("ttft_ns").median(), pl.len().alias("n")).sort("source"))
