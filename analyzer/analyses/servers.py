"""Several trace dirs analyzed together (DP replicas, servers, runs): which were merged, and each
report's figures broken down per server (the ``server`` column of the frames). ``compute`` gives the
typed breakdowns, ``add_to`` puts them into the story, radix and timeline reports."""
from __future__ import annotations

import dataclasses

import polars as pl

from sglang_tracing import semconv as sc
from sglang_tracing.analyzer.analyses import profiler_control
from sglang_tracing.analyzer.analyses.requests import for_statistics, profiler_touched
from sglang_tracing.analyzer.model import TraceModel
from sglang_tracing.analyzer.report import Report, Section


def merged(model: TraceModel) -> bool:
    return len(model.servers) > 1


def request_breakdown(requests: pl.DataFrame) -> pl.DataFrame:
    """Per server: the user's requests (``requests``: requests.user_requests) seen and complete, tokens, and
    TTFT / ITL / end-to-end percentiles (ms) over the ones statistics are over (requests.for_statistics; a
    ``left_out`` column counts the others where there were any)."""
    q = lambda c, p: (pl.col(c).quantile(p, "nearest") / 1e6).round(3)  # noqa: E731
    counts = requests.group_by("server").agg(
        pl.len().alias("requests"), pl.col("complete").sum().alias("complete"),
        pl.col("prompt_tokens").sum().alias("prompt_tokens"), pl.col("cached_tokens").sum().alias("cached_tokens"),
        pl.col("output_tokens").sum().alias("output_tokens"))
    stats = for_statistics(requests)
    quantiles = stats.group_by("server").agg(
        q("ttft_ns", 0.5).alias("ttft_p50_ms"), q("ttft_ns", 0.9).alias("ttft_p90_ms"),
        q("mean_itl_ns", 0.5).alias("itl_p50_ms"), q("e2e_ns", 0.5).alias("e2e_p50_ms"),
        q("e2e_ns", 0.9).alias("e2e_p90_ms"))
    out = counts.join(quantiles, on="server", how="left").sort("server")
    touched = profiler_touched(requests)
    if touched.height:
        out = out.join(touched.group_by("server").len("left_out"), on="server", how="left").with_columns(
            pl.col("left_out").fill_null(0).cast(pl.UInt32))
    return out


def lookup_breakdown(lookups: pl.DataFrame, requests: pl.DataFrame) -> pl.DataFrame:
    """Per server: prefix-cache lookups by result and the prompt tokens they saved."""
    by = lookups.join(requests.select("rid", "server"), on="rid", how="left")
    return (by.group_by("server").agg(
        (pl.col("lookup") == "full").sum().alias("full_hits"), (pl.col("lookup") == "partial").sum().alias("partial_hits"),
        (pl.col("lookup") == "miss").sum().alias("misses"), pl.col("cached_tokens").sum().alias("cached_tokens"),
        (pl.col("cached_tokens").sum() / pl.col("prompt_tokens").sum() * 100).round(1).alias("cached_pct"))
        .sort("server"))


def batch_breakdown(spans: pl.DataFrame | pl.LazyFrame, left_out: pl.DataFrame | None = None) -> pl.DataFrame:
    """Per server: spans, forwards, and the median schedule / forward-launch / result-processing time (ms)
    of the scheduler spans our profiler control did not run in (``left_out``: profiler_control.spans_with_control;
    a ``left_out`` column counts them where there were any)."""
    left_out = left_out if left_out is not None else pl.DataFrame(schema=profiler_control.SCHEMA)
    sched = profiler_control.kept(spans.lazy().filter(pl.col("name").is_in(profiler_control.SCHEDULER_SPANS)),
                                  left_out)
    med = lambda name: (pl.col("dur_ns").filter(pl.col("name") == name).median() / 1e6).round(3)  # noqa: E731
    counts = spans.lazy().group_by("server").agg(pl.len().alias("spans"),
                                                 (pl.col("name") == sc.FORWARD).sum().alias("forwards"))
    medians = sched.group_by("server").agg(med(sc.SCHEDULE).alias("schedule_p50_ms"),
                                           med(sc.FORWARD).alias("forward_launch_p50_ms"),
                                           med(sc.PROCESS_RESULT).alias("result_p50_ms"))
    out = counts.join(medians, on="server", how="left").collect(engine="streaming").sort("server")
    if left_out.height:
        n = left_out.group_by("server").len("left_out")
        out = out.join(n, on="server", how="left").with_columns(pl.col("left_out").fill_null(0).cast(pl.UInt32))
    return out


def shared_rids(requests: pl.DataFrame) -> int:
    """Request ids seen on more than one server (the request table keys on the rid alone)."""
    return requests.group_by("rid").agg(pl.col("server").n_unique()).filter(pl.col("server") > 1).height


# ---- computing: the breakdowns each report asks for ----
@dataclasses.dataclass
class Breakdowns:
    sources: list[dict]  # per trace dir: server, dir, spans, sglang (its version; None where not recorded)
    requests: pl.DataFrame | None = None  # request_breakdown, for the story (None: not asked for)
    touched: pl.DataFrame | None = None  # the user requests our profiler control ran during (profiler_touched)
    shared_rids: int = 0  # request ids seen on several servers
    lookups: pl.DataFrame | None = None  # lookup_breakdown, for the radix report
    batches: pl.DataFrame | None = None  # batch_breakdown, for the timeline
    left_out: pl.DataFrame | None = None  # scheduler spans our profiler control ran in (spans_with_control)


def compute(model: TraceModel, reports: set[str]) -> Breakdowns:
    """The per-server figures the named reports (story, radix, timeline) carry."""
    from sglang_tracing.analyzer.analyses.radix import classify_lookups
    from sglang_tracing.analyzer.analyses.requests import request_table, user_requests

    out = Breakdowns([{"server": s["server"], "dir": s["dir"], "spans": s["spans"],
                       "sglang": (s["manifest"].get("versions") or {}).get("sglang")} for s in model.servers])
    if reports & {"story", "radix"}:
        requests = user_requests(request_table(model.scan_spans(), model.manifest, model.servers))
        if "story" in reports:
            out.requests, out.touched = request_breakdown(requests), profiler_touched(requests)
            out.shared_rids = shared_rids(requests)
        if "radix" in reports:
            out.lookups = lookup_breakdown(classify_lookups(for_statistics(requests)), requests)
    if "timeline" in reports:
        out.left_out = profiler_control.spans_with_control(model.scan_spans(), model.servers)
        out.batches = batch_breakdown(model.scan_spans(), out.left_out)
    return out


# ---- wording: the breakdowns in the reports ----
def add_to(reports: list[Report], breakdowns: Breakdowns) -> None:
    """Each report opens with the merged dirs and gets a per-server section."""
    for report in reports:
        if report.name in ("story", "radix", "timeline"):
            report.sections.insert(0, sources_section(breakdowns.sources))
        if report.name == "story":
            _story(report.section("Per server"), breakdowns)
        elif report.name == "radix":
            report.section("Per server").table = breakdowns.lookups
        elif report.name == "timeline":
            sec = report.section("Per server")
            sec.table = breakdowns.batches
            for (server,), g in breakdowns.left_out.group_by("server", maintain_order=True):
                sec.add(f"server {server}", profiler_control.describe(g),
                        "scheduler spans our profiler control ran in: not in the medians")


def sources_section(sources: list[dict]) -> Section:
    """Which trace dirs were merged, under which server name, with how many spans each."""
    sec = Section("Trace dirs merged")
    for s in sources:
        sec.add(f"server {s['server']}", s["dir"], f"{s['spans']} spans, SGLang {s['sglang'] or '?'}")
    return sec


def _story(sec: Section, breakdowns: Breakdowns) -> None:
    sec.table = breakdowns.requests
    for (server,), g in breakdowns.touched.group_by("server", maintain_order=True):
        sec.add(f"server {server}", profiler_control.describe_requests(g),
                "requests our profiler control ran during: not in the percentiles")
    clash = breakdowns.shared_rids
    sec.add("request ids on several servers", str(clash),
            "0 expected (SGLang's rids are random); a shared rid's request is counted once" if clash else
            "each request belongs to one server")
