"""Experiment 2, RadixCache analysis: lookups, reuse, evictions and what they cost."""
from __future__ import annotations

import dataclasses

import polars as pl

from sglang_tracing import semconv as sc
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
        pl.when(pl.col("cached_tokens") == 0).then(pl.lit("miss"))
        .when(pl.col("cached_tokens") >= pl.col("prompt_tokens") - 1).then(pl.lit("full"))
        .otherwise(pl.lit("partial")).alias("lookup"),
        "prefill_ns",
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


def with_speedup(lookups: pl.DataFrame) -> pl.DataFrame:
    """Add ``cold_prefill_ns`` (median prefill of misses of the nearest prompt length) and, for hits,
    ``speedup`` (cold prefill over this prefill)."""
    cold = (lookups.filter(pl.col("lookup") == "miss").group_by("prompt_tokens")
            .agg(pl.col("prefill_ns").median().alias("cold_prefill_ns")).sort("prompt_tokens"))
    if cold.is_empty():
        return lookups.with_columns(pl.lit(None, pl.Float64).alias("cold_prefill_ns"),
                                    pl.lit(None, pl.Float64).alias("speedup"))
    out = lookups.sort("prompt_tokens").join_asof(cold, on="prompt_tokens", strategy="nearest")
    speedup = pl.when(pl.col("lookup") != "miss").then(pl.col("cold_prefill_ns") / pl.col("prefill_ns"))
    return out.with_columns(speedup.otherwise(None).alias("speedup")).sort("received_ns")


def cache_ops(spans: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    """Cache operations in time order with the cache state after each."""
    names = (sc.CACHE_MATCH, sc.CACHE_INSERT, sc.CACHE_EVICT)
    ops = spans.lazy().filter(pl.col("name").is_in(names))
    schema = ops.collect_schema()
    cols = [c for c in (sc.CACHE_TOTAL, sc.CACHE_USED, sc.CACHE_EVICTABLE, sc.CACHE_PROTECTED,
                        sc.CACHE_MATCHED_TOKENS, sc.CACHE_NEW_TOKENS, sc.CACHE_FREED_TOKENS,
                        sc.CACHE_REQUESTED_TOKENS, sc.CACHE_TRIGGER, sc.CACHE_CLASS) if c in schema]
    return ops.select("name", "start_ns", "dur_ns", *cols).collect().sort("start_ns", maintain_order=True)


def evictions(ops: pl.DataFrame, lookups: pl.DataFrame) -> pl.DataFrame:
    """Evict events with the requests that arrived after each and missed (part of) their prefix."""
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
    rows = []
    for row, later in zip(ev.iter_rows(named=True), counts):
        rows.append({"time_ns": row["start_ns"], "duration": ms(row["dur_ns"]),
                     "requested_tokens": row.get(sc.CACHE_REQUESTED_TOKENS),
                     "freed_tokens": row.get(sc.CACHE_FREED_TOKENS), "trigger": row.get(sc.CACHE_TRIGGER),
                     "later_requests_missing": later})
    return pl.DataFrame(rows)


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
    cold_ns_per_token: float | None  # the misses' prefill time per prompt token (None: no miss)

    @property
    def saved_ns(self) -> float | None:
        """Cached tokens priced at the misses' prefill time per token."""
        return self.cached_tokens * self.cold_ns_per_token if self.cold_ns_per_token else None


@dataclasses.dataclass
class Radix:
    """Every figure of the RadixCache analysis."""
    setup: CacheSetup
    requests: pl.DataFrame  # every request of the trace (request_table), internal ones included
    lookups: pl.DataFrame  # the user's requests: classify_lookups, with_speedup, inserted_by
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
    lookups = with_speedup(classify_lookups(for_statistics(requests))).join(inserted_by(requests), on="rid", how="left")
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
    miss = lookups.filter(pl.col("lookup") == "miss")
    per_token = (miss["prefill_ns"].sum() / miss["prompt_tokens"].sum()) if miss.height else None
    return Savings(lookups["cached_tokens"].mean(), cached / max(1, lookups["prompt_tokens"].sum()) * 100, cached,
                   per_token)


# ---- wording: the analysis as a report ----
def build_report(model: TraceModel) -> Report:
    from sglang_tracing.analyzer.analyses import hicache

    report = describe(compute(model))
    hicache.add_to_report(report, model)
    return report


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
    seq.table = radix.lookups.select("rid", "prompt_tokens", "cached_tokens", "computed_tokens", "lookup",
                                     (pl.col("prefill_ns") / 1e6).round(3).alias("prefill_ms"),
                                     pl.col("speedup").round(2), pl.col("inserted_by").str.slice(0, 12))
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
    summary.add("estimated prefill time saved", ms(s.saved_ns),
                "cached tokens x cold prefill time per token (misses)" if s.cold_ns_per_token
                else "no cold request to compare")


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
