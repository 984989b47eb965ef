"""The PD report: describes a computed ``pd.PdStory`` (where TTFT goes across prefill and decode)."""
from __future__ import annotations

import polars as pl

from sglang_tracing.analyzer.analyses.pd import STAGE_NAMES, PdStory
from sglang_tracing.analyzer.report import Report


def _ms(value) -> str | None:
    return None if value is None else f"{value / 1e6:+.3f} ms"


def _readable(frame: pl.DataFrame) -> pl.DataFrame:
    """Floats to 4 significant figures for reading (the typed story keeps them whole)."""
    return frame.with_columns(pl.selectors.float().round_sig_figs(4))


def build_report(story: PdStory) -> Report:
    report = Report("pd", "Prefill-decode disaggregation: where each request's TTFT went")
    reqs = story.requests
    head = report.section("Servers and join")
    head.add("prefill server(s)", ", ".join(story.prefill_servers))
    head.add("decode server(s)", ", ".join(story.decode_servers))
    head.add("requests joined", str(reqs.height), "prefill and decode halves matched by bootstrap room and address")
    routed = reqs.filter(pl.col("router_ms").is_not_null())
    if routed.height:
        head.add("through sglang-router", f"{routed.height} of {reqs.height}",
                 "its request span joined by the trace id it passed to both servers; without the client's stamps "
                 "the waterfall starts at its arrival and ends at decode's first bytes (its relay of them back "
                 "to the client is not in its spans)")
    if story.client_joined is not None:
        head.add("client stamps joined", f"{story.client_joined} of {reqs.height}",
                 "by rid; the waterfall then runs from the client's send to the first chunk it read")
    for side, n in story.unjoined.items():
        if n:
            head.add(f"{side} requests without their other half", str(n), "left out of the waterfall")
    off = story.offset
    clock = report.section("Clock offset (decode clock minus prefill clock)")
    if off.offset_ns is None:
        clock.add("offset", None, "no request recorded both the handshake and the KV transfer on both sides")
    else:
        if off.same_host:
            verdict = {True: "0 lies within the causal bounds: verified", False: "0 lies OUTSIDE the causal bounds",
                       None: "no bounds to verify it"}[off.zero_within]
            clock.add("offset used", _ms(off.offset_ns), f"one host, one clock; {verdict}")
        else:
            clock.add("estimate", _ms(off.offset_ns), "two hosts: the middle of the causal bounds")
        clock.add("causal bounds", f"[{_ms(off.lower_ns)}, {_ms(off.upper_ns)}]",
                  "lower: decode sent KV indices before prefill's handshake ended; "
                  "upper: prefill began sending before decode saw the KV complete")
        if not off.consistent:
            clock.add("warning", "bounds cross",
                      "a request broke causality by the recorded stamps: the estimate is their middle all the same")
    ttft = reqs["ttft_ms"]
    wf = report.section("TTFT waterfall (decode clock, stages add up to TTFT)")
    wf.add("requests", str(reqs.height))
    if reqs.height:
        if story.client_joined:
            wf.add("TTFT p50", f"{ttft.quantile(0.5):.3f} ms", "the client's: its request sent -> first chunk read")
            wf.add("servers' TTFT p50", f"{reqs['server_ttft_ms'].quantile(0.5):.3f} ms",
                   "arrival at sglang-router (or either server) -> decode's first response bytes")
            early = reqs.filter(pl.col("arrival_before_send_ms") > 0)
            if early.height:
                wf.add("server arrivals stamped before the client's send", str(early.height),
                       f"by up to {early['arrival_before_send_ms'].max():.3f} ms: impossible on one clock, so the "
                       "stamp is early; the waterfall starts at the send all the same")
        else:
            wf.add("TTFT p50", f"{ttft.quantile(0.5):.3f} ms", "arrival (at sglang-router when its spans are here, "
                   "else the earliest HTTP arrival at either server) -> decode's first response bytes")
    wf.table = _readable(story.percentiles)
    if story.router_picks is not None:
        picked = report.section("sglang-router's picks (prefill and decode URL per request, from its pick event)")
        picked.add("requests with a pick", f"{story.router_picks.requests.height} of {reqs.height}")
        picked.table = story.router_picks.pairs
    load = report.section("Dominant stage by load (requests in flight at arrival)")
    load.table = _readable(story.by_load)
    kv = report.section("KV transfer")
    sent = reqs.filter(pl.col("kv_gb_s").is_not_null())
    if sent.height:
        kv.add("bytes per request (median)", f"{sent['kv_bytes'].median():.0f} B", "as SGLang's sender counted")
        kv.add("bandwidth p50", f"{sent['kv_gb_s'].quantile(0.5):.3f} GB/s",
               "bytes / (first chunk handed to the backend -> transfer polled done); the link's capacity is "
               "not recorded, so compare with it by hand")
        kv.add("send duration p50", f"{sent['kv_send_ms'].quantile(0.5):.3f} ms")
    else:
        kv.add("bandwidth", None, "no KV send with bytes recorded")
    table = report.section("Requests (both servers' figures, ms)")
    stages = [n for n in STAGE_NAMES if n in story.percentiles["stage"].to_list()]
    table.table = _readable(reqs.select("room", "prefill_rid", "decode_rid", "in_flight", "prompt_tokens",
                                        "output_tokens", *stages, "ttft_ms", "kv_bytes", "kv_gb_s", "decode_ms"))
    return report


def build_loads_report(stories: dict[str, PdStory]) -> Report:
    """Which stage dominates TTFT in each run (one run per load)."""
    report = Report("pd-loads", "Prefill-decode disaggregation: the dominant TTFT stage at each load")
    rows = []
    for label, story in stories.items():
        shares = story.percentiles.filter(pl.col("stage") != "ttft_ms").sort("mean_share_pct", descending=True)
        top = shares.row(0, named=True) if shares.height else {"stage": None, "mean_share_pct": None}
        reqs = story.requests
        rows.append({"run": label, "requests": reqs.height,
                     "ttft_p50_ms": reqs["ttft_ms"].quantile(0.5) if reqs.height else None,
                     "dominant_stage": top["stage"], "dominant_share_pct": top["mean_share_pct"],
                     "kv_gb_s_p50": reqs["kv_gb_s"].quantile(0.5) if reqs.height else None})
    section = report.section("Dominant stage (largest mean share of TTFT) by run")
    section.table = _readable(pl.DataFrame(rows, schema={
        "run": pl.String, "requests": pl.Int64, "ttft_p50_ms": pl.Float64, "dominant_stage": pl.String,
        "dominant_share_pct": pl.Float64, "kv_gb_s_p50": pl.Float64}))
    for label, story in stories.items():
        section = report.section(f"{label}: stage percentiles (ms)")
        section.table = _readable(story.percentiles)
    return report
