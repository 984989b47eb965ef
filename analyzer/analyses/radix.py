"""Experiment 2, RadixCache analysis: lookups, reuse, evictions and what they cost."""
from __future__ import annotations

import dataclasses

import polars as pl

from sglang_tracing import semconv as sc
from sglang_tracing.analyzer.analyses.attribution import forward_members, is_prefill
from sglang_tracing.analyzer.analyses.profiler_control import describe_requests
from sglang_tracing.analyzer.analyses.requests import for_statistics, profiler_touched, request_table
from sglang_tracing.analyzer.model import TraceModel
from sglang_tracing.analyzer.report import Plot, Report, Section, ms


def classify_lookups(requests: pl.DataFrame) -> pl.DataFrame:
    """Per request: lookup result from SGLang's cached tokens.

    full: every prompt token but the last was cached (SGLang always recomputes the last one);
    partial: some cached; miss: none. Columns: rid, received_ns, prompt_tokens, cached_tokens,
    computed_tokens, lookup, prefill_ns.
    """
    done = requests.filter(pl.col("cached_tokens").is_not_null() & (pl.col("cached_tokens") >= 0))
    return done.select(
        "rid", "received_ns", "prompt_tokens", "cached_tokens",
        (pl.col("prompt_tokens") - pl.col("cached_tokens")).alias("computed_tokens"),
        (100 * pl.col("cached_tokens") / pl.col("prompt_tokens")).alias("hit_pct"),
        pl.when(pl.col("cached_tokens") == 0).then(pl.lit("miss"))
        .when(pl.col("cached_tokens") >= pl.col("prompt_tokens") - 1).then(pl.lit("full"))
        .otherwise(pl.lit("partial")).alias("lookup"),
        "prefill_ns", *[c for c in ("prefill_start_ns", "finished_ns") if c in done.columns],
    ).sort("received_ns")


def inserted_by(requests: pl.DataFrame, block: int = sc.PREFIX_BLOCK) -> pl.DataFrame:
    """For every hit, the earliest earlier request whose prompt shares the matched prefix (to whole
    blocks of ``block`` tokens): the one whose insert the hit reused. Columns: rid, inserted_by."""
    if "prefix_digests" not in requests.columns or requests["prefix_digests"].drop_nulls().is_empty():
        return pl.DataFrame(schema={"rid": pl.String, "inserted_by": pl.String})
    blocks = (requests.select("rid", "received_ns", "prefix_match_start_ns", pl.col("prefix_digests").alias("d"))
              .drop_nulls("d").explode("d").with_columns(pl.int_range(pl.len()).over("rid").alias("k")))
    hits = (requests.filter(pl.col("cached_tokens") >= block)
            .select("rid", "prefix_match_start_ns", (pl.col("cached_tokens") // block - 1).alias("k"))
            .join(blocks.select("rid", "k", "d"), on=["rid", "k"]))
    cand = hits.join(blocks.select(pl.col("rid").alias("other"), "k", "d", pl.col("received_ns").alias("other_received")),
                     on=["k", "d"]).filter((pl.col("other") != pl.col("rid"))
                                           & (pl.col("other_received") < pl.col("prefix_match_start_ns")))
    return (cand.sort("other_received").group_by("rid").agg(pl.col("other").first().alias("inserted_by")))


COLD_SAME_PROMPT = "same prompt, computed cold"  # cold_from: the inserter's own prefill
COLD_SIMILAR = "median miss of the nearest prompt length"  # cold_from: no cold run of this prompt


def with_speedup(lookups: pl.DataFrame) -> pl.DataFrame:
    """Add ``cold_prefill_ns``, ``cold_from`` and, for hits, ``speedup`` (cold prefill over this prefill).
    The cold prefill is the same prompt's own, where the request that inserted it (``inserted_by``) was a miss
    of the same length; otherwise the median prefill of misses of the nearest prompt length."""
    cold = (lookups.filter(pl.col("lookup") == "miss").group_by("prompt_tokens")
            .agg(pl.col("prefill_ns").median().alias("similar_ns")).sort("prompt_tokens"))
    out = (lookups.sort("prompt_tokens").join_asof(cold, on="prompt_tokens", strategy="nearest") if cold.height
           else lookups.with_columns(pl.lit(None, pl.Float64).alias("similar_ns")))
    if "inserted_by" in out.columns:
        inserters = lookups.filter(pl.col("lookup") == "miss").select(
            pl.col("rid").alias("inserted_by"), pl.col("prompt_tokens").alias("_ins_tokens"),
            pl.col("prefill_ns").cast(pl.Float64).alias("same_ns"))
        out = out.join(inserters, on="inserted_by", how="left").with_columns(
            pl.when(pl.col("_ins_tokens") == pl.col("prompt_tokens")).then("same_ns").alias("same_ns")).drop("_ins_tokens")
    else:
        out = out.with_columns(pl.lit(None, pl.Float64).alias("same_ns"))
    hit = pl.col("lookup") != "miss"
    cold_ns = pl.coalesce("same_ns", "similar_ns")
    return out.with_columns(
        pl.when(hit).then(cold_ns).alias("cold_prefill_ns"),
        pl.when(hit & pl.col("same_ns").is_not_null()).then(pl.lit(COLD_SAME_PROMPT))
        .when(hit & pl.col("similar_ns").is_not_null()).then(pl.lit(COLD_SIMILAR)).alias("cold_from"),
        pl.when(hit).then(cold_ns / pl.col("prefill_ns")).alias("speedup"),
    ).drop("same_ns", "similar_ns").sort("received_ns")


def with_batch_others(lookups: pl.DataFrame, spans: pl.LazyFrame) -> pl.DataFrame:
    """Add ``batched_with``: the most other requests in one of the request's prefill forwards (its prefill
    time is then the batch's, not its own; null: no batch recorded)."""
    if sc.BATCH_RIDS not in spans.collect_schema():
        return lookups.with_columns(pl.lit(None, pl.Int64).alias("batched_with"))
    members = forward_members(spans.filter(pl.col("name") == sc.FORWARD).collect())
    sizes = members.group_by("span_id").agg(pl.len().alias("size"), pl.col("mode").first())
    others = (members.join(sizes, on="span_id").filter(is_prefill(pl.col("mode")))
              .group_by("rid").agg((pl.col("size").max() - 1).cast(pl.Int64).alias("batched_with")))
    return lookups.join(others, on="rid", how="left")


def with_cache_state(lookups: pl.DataFrame, ops: pl.DataFrame) -> pl.DataFrame:
    """Add the cache state after each request: ``used_tokens`` and ``total_tokens`` at the last cache
    operation before it finished, and ``used_pct``."""
    if sc.CACHE_USED not in ops.columns or "finished_ns" not in lookups.columns or lookups.is_empty():
        return lookups.with_columns(pl.lit(None, pl.Int64).alias("used_tokens"),
                                    pl.lit(None, pl.Int64).alias("total_tokens"), pl.lit(None, pl.Float64).alias("used_pct"))
    total = pl.col(sc.CACHE_TOTAL) if sc.CACHE_TOTAL in ops.columns else pl.lit(None, pl.Int64)
    state = ops.drop_nulls(sc.CACHE_USED).select(pl.col("start_ns").alias("state_ns"),
                                                 pl.col(sc.CACHE_USED).alias("used_tokens"),
                                                 total.alias("total_tokens")).sort("state_ns")
    return (lookups.sort("finished_ns").join_asof(state, left_on="finished_ns", right_on="state_ns")
            .with_columns((100 * pl.col("used_tokens") / pl.col("total_tokens")).alias("used_pct"))
            .drop("state_ns").sort("received_ns"))


def cache_ops(spans: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    """Cache operations in time order with the cache state after each."""
    names = (sc.CACHE_MATCH, sc.CACHE_INSERT, sc.CACHE_EVICT)
    ops = spans.lazy().filter(pl.col("name").is_in(names))
    schema = ops.collect_schema()
    cols = [c for c in (sc.CACHE_TOTAL, sc.CACHE_USED, sc.CACHE_EVICTABLE, sc.CACHE_PROTECTED,
                        sc.CACHE_MATCHED_TOKENS, sc.CACHE_NEW_TOKENS, sc.CACHE_FREED_TOKENS,
                        sc.CACHE_REQUESTED_TOKENS, sc.CACHE_TRIGGER, sc.CACHE_CLASS) if c in schema]
    return ops.select("name", "start_ns", "dur_ns", *cols).collect().sort("start_ns", maintain_order=True)


def evictions(ops: pl.DataFrame, lookups: pl.DataFrame, t0: int | None = None) -> pl.DataFrame:
    """Evict events: when (ms after ``t0``, the run's first request), the request whose admission caused it
    (the first whose prefill started at or after it), the pool state the span recorded, and the later
    requests that missed (part of) their prefix."""
    ev = ops.filter(pl.col("name") == sc.CACHE_EVICT)
    if ev.is_empty():
        return ev
    # each request that missed counts for the last eviction that started strictly before it arrived,
    # unless it arrived exactly when an eviction started (then for none)
    starts = ev.select(pl.col("start_ns").alias("evict_ns")).with_row_index("i")
    missing = (lookups.filter(pl.col("lookup") != "full").drop_nulls("received_ns").select("received_ns")
               .join(starts.select(pl.col("evict_ns").alias("received_ns")), on="received_ns", how="anti")
               .sort("received_ns")
               .join_asof(starts, left_on="received_ns", right_on="evict_ns", allow_exact_matches=False)
               .group_by("i").len())
    counts = starts.join(missing, on="i", how="left")["len"].fill_null(0).to_list()
    causes = _causes(starts, lookups)
    t0 = t0 if t0 is not None else (lookups["received_ns"].min() if lookups.height else ev["start_ns"].min())
    rows = []
    for row, later, cause in zip(ev.iter_rows(named=True), counts, causes):
        used, total = row.get(sc.CACHE_USED), row.get(sc.CACHE_TOTAL)
        rows.append({"t_ms": round((row["start_ns"] - t0) / 1e6, 3), "duration": ms(row["dur_ns"]),
                     "caused_by": cause, "requested_tokens": row.get(sc.CACHE_REQUESTED_TOKENS),
                     "freed_tokens": row.get(sc.CACHE_FREED_TOKENS),
                     "pool_used_after": used, "pool_total": total,
                     "pool_used_pct": round(100 * used / total, 1) if used is not None and total else None,
                     "evictable_after": row.get(sc.CACHE_EVICTABLE),
                     "trigger": row.get(sc.CACHE_TRIGGER), "later_requests_missing": later})
    return pl.DataFrame(rows)


def _causes(starts: pl.DataFrame, lookups: pl.DataFrame) -> list[str | None]:
    """Per eviction, the rid of the first request whose prefill started at or after it (its admission
    needed the room)."""
    if "prefill_start_ns" not in lookups.columns or lookups.is_empty():
        return [None] * starts.height
    admitted = lookups.drop_nulls("prefill_start_ns").select("rid", "prefill_start_ns").sort("prefill_start_ns")
    found = starts.sort("evict_ns").join_asof(admitted, left_on="evict_ns", right_on="prefill_start_ns",
                                              strategy="forward")
    return found.sort("i")["rid"].to_list()


# ---- computing: what the cache did ----
@dataclasses.dataclass
class CacheSetup:
    """How the cache was configured: from the cache spans and the recorded server args."""
    kv_slots: int | None  # allocator size: the largest total in the cache spans
    page_size: int | None
    eviction_policy: str
    cache_class: str | None  # SGLang's cache class, as the first cache span recorded it
    disabled: bool  # --disable-radix-cache


@dataclasses.dataclass
class Savings:
    """What the hits saved over the user's requests."""
    mean_cached_tokens: float
    cached_share_pct: float  # cached tokens over prompt tokens
    cached_tokens: int  # prompt tokens not computed again
    saved_ns: float | None  # over the hits with a cold figure: cold prefill less their own (None: none had one)
    compared_hits: int  # hits with a cold figure (with_speedup)


@dataclasses.dataclass
class Radix:
    """Every figure of the RadixCache analysis."""
    setup: CacheSetup
    requests: pl.DataFrame  # every request of the trace (request_table), internal ones included
    lookups: pl.DataFrame  # the user's requests: classify_lookups, inserted_by, with_speedup, with_cache_state
    has_digests: bool  # prefix digests recorded, so inserted_by is known
    ops: pl.DataFrame  # cache operations with the cache state after each (cache_ops)
    evictions: pl.DataFrame  # evict events with the later requests that missed (evictions)
    counts: dict[str, int]  # user requests per lookup result (full, partial, miss)
    savings: Savings | None  # None: no user request

    @property
    def internal(self) -> pl.DataFrame:
        """SGLang's warm-up, health checks, readiness probes: not in the sequence or the summary."""
        return self.requests.filter(pl.col("internal").is_not_null())


def compute(model: TraceModel) -> Radix:
    requests = request_table(model.scan_spans(), model.manifest, model.servers)
    ops = cache_ops(model.scan_spans())
    # the user's requests our profiler control did not slow; an internal one (SGLang's warm-up) may be the inserter
    lookups = with_cache_state(with_speedup(classify_lookups(for_statistics(requests))
                                            .join(inserted_by(requests), on="rid", how="left")), ops)
    lookups = with_batch_others(lookups, model.scan_spans())
    has_digests = "prefix_digests" in requests.columns and requests["prefix_digests"].drop_nulls().len() > 0
    return Radix(_setup(ops, model.manifest.get("server_args") or {}), requests, lookups, has_digests, ops,
                 evictions(ops, lookups), dict(lookups.group_by("lookup").len().iter_rows()), _savings(lookups))


def _setup(ops: pl.DataFrame, args: dict) -> CacheSetup:
    total = ops[sc.CACHE_TOTAL].drop_nulls().max() if sc.CACHE_TOTAL in ops.columns and ops.height else None
    cache_class = str(ops[sc.CACHE_CLASS][0]) if sc.CACHE_CLASS in ops.columns and ops.height else None
    return CacheSetup(total, args.get("page_size"), str(args.get("radix_eviction_policy") or "lru"), cache_class,
                      bool(args.get("disable_radix_cache")))


def _savings(lookups: pl.DataFrame) -> Savings | None:
    if not lookups.height:
        return None
    cached = lookups["cached_tokens"].sum()
    compared = lookups.filter((pl.col("lookup") != "miss") & pl.col("cold_prefill_ns").is_not_null()
                              & pl.col("prefill_ns").is_not_null())
    saved = float((compared["cold_prefill_ns"] - compared["prefill_ns"]).sum()) if compared.height else None
    return Savings(lookups["cached_tokens"].mean(), cached / max(1, lookups["prompt_tokens"].sum()) * 100, cached,
                   saved, compared.height)


# ---- wording: the analysis as a report ----
def build_report(model: TraceModel) -> Report:
    return describe(compute(model))


def describe(radix: Radix) -> Report:
    report = Report("radix", "RadixCache analysis (experiment 2)")
    _configuration(report.section("Cache configuration"), radix.setup)
    _sequence(report.section("Request sequence"), radix)
    _evictions(report.section("Evictions"), radix.evictions)
    _summary(report.section("Summary"), radix)
    plot = cache_plot(radix.ops, radix.lookups)
    if plot:
        report.plots.append(plot)
    return report


def _configuration(conf: Section, setup: CacheSetup) -> None:
    conf.add("KV slots (tokens)", str(setup.kv_slots) if setup.kv_slots else None, "allocator size in cache spans")
    conf.add("page size", str(setup.page_size) if setup.page_size else None, "server args")
    conf.add("eviction policy", setup.eviction_policy, "server args")
    conf.add("cache class", setup.cache_class, "cache spans")
    conf.add("radix cache disabled", str(setup.disabled), "server args")


def _sequence(seq: Section, radix: Radix) -> None:
    seq.add("inserted by", "see table" if radix.has_digests else None,
            f"earliest earlier request with the same first tokens, in blocks of {sc.PREFIX_BLOCK}"
            if radix.has_digests else "this trace predates prefix digests")
    t0 = radix.lookups["received_ns"].min() if radix.lookups.height else None
    seq.add("speedup", "cold prefill / this prefill",
            f"cold: {COLD_SAME_PROMPT} where the inserter was a miss of the same length, else the "
            f"{COLD_SIMILAR}; prefill = first chunk launched -> first token, whole batch")
    seq.add("batched_with", "other requests in its prefill forward",
            "above 0, its prefill time (and speedup) is the whole batch's, not its own")
    seq.add("cache after", "used / total tokens", "the last cache operation before the request finished")
    seq.table = radix.lookups.select(
        "rid", ((pl.col("received_ns") - t0) / 1e6).round(3).alias("t_ms"), "prompt_tokens", "cached_tokens",
        pl.col("hit_pct").round(1), "lookup", (pl.col("prefill_ns") / 1e6).round(3).alias("prefill_ms"),
        pl.col("speedup").round(2), "cold_from", "batched_with", pl.col("inserted_by").str.slice(0, 12),
        pl.format("{} / {}", "used_tokens", "total_tokens").alias("cache_after"), pl.col("used_pct").round(1))
    internal = radix.internal
    seq.add("internal requests", str(internal.height),
            "SGLang's warm-up, health checks, readiness probes: not in the sequence or the summary")
    if internal.height:
        seq.child("internal requests").table = internal.select("rid", "internal", "prompt_tokens", "cached_tokens")
    if (touched := profiler_touched(radix.requests)).height:
        seq.add("left out: our profiler control", str(touched.height), describe_requests(touched))
        seq.child("left out: our profiler control").table = touched.select("rid", "profiler_control", "prompt_tokens",
                                                                           "cached_tokens")


def _evictions(ev: Section, table: pl.DataFrame) -> None:
    ev.add("eviction events", str(table.height), "span sglang.cache.evict")
    if table.height:
        ev.table = table


def _summary(summary: Section, radix: Radix) -> None:
    for kind in ("full", "partial", "miss"):
        summary.add(f"{kind} hits" if kind != "miss" else "misses", str(radix.counts.get(kind, 0)),
                    "from SGLang's cached_tokens per request")
    s = radix.savings
    if s is None:
        return
    summary.add("average prefix match", f"{s.mean_cached_tokens:.1f} tokens "
                f"({s.cached_share_pct:.1f}% of prompt tokens)", "")
    summary.add("compute saved", f"{s.cached_tokens} prompt tokens", "sum of cached tokens")
    summary.add("prefill time saved", ms(s.saved_ns),
                f"over {s.compared_hits} hit(s): each one's cold prefill less its own (see speedup)"
                if s.saved_ns is not None else "no hit with a cold prefill to compare")


def cache_plot(ops: pl.DataFrame, lookups: pl.DataFrame) -> Plot | None:
    """KV tokens in use (and evictable) after each cache operation, and each lookup's result at its
    request's arrival; times in seconds from the first cache operation. None without occupancy."""
    if ops.is_empty() or sc.CACHE_USED not in ops.columns:
        return None
    t0 = ops["start_ns"].min()
    seconds = lambda c: ((pl.col(c) - t0) / 1e9).alias("t_s")  # noqa: E731
    tokens = [pl.col(sc.CACHE_USED).alias("used_tokens")]
    if sc.CACHE_EVICTABLE in ops.columns:
        tokens.append(pl.col(sc.CACHE_EVICTABLE).alias("evictable_tokens"))
    return Plot("radix_cache.png", "cache", {"occupancy": ops.select(seconds("start_ns"), *tokens),
                                             "lookups": lookups.select(seconds("received_ns"), "lookup")},
                {"title": "Cache occupancy and lookups", "x": "time (s)", "y": "tokens"})
