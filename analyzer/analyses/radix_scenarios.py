"""The radix experiment's scenarios side by side (the plan's A/B/C/D): how much of each prompt the
cache matched, what prefill then cost, and the speedup over computing the same prompts cold."""
from __future__ import annotations

import dataclasses

import polars as pl

from sglang_tracing.analyzer.analyses import radix
from sglang_tracing.analyzer.loaders.radix_experiment import Scenario
from sglang_tracing.analyzer.report import Report

COLD = "cold_start"  # the scenario every other is compared with


@dataclasses.dataclass
class ScenarioRow:
    scenario: str
    requests: int
    matched_pct: float | None  # cached prompt tokens over prompt tokens (SGLang's cached_tokens)
    hits: int  # requests with a full or partial match
    evictions: int  # sglang.cache.evict spans
    prefill_p50_ns: float | None  # server prefill time (first chunk launched -> first token), median
    client_ttft_p50_ns: float | None  # as the client saw it (request sent -> first chunk)
    speedup: float | None  # the cold scenario's prefill p50 over this one's


@dataclasses.dataclass
class Comparison:
    rows: list[ScenarioRow]
    cold_prefill_ns: float | None  # prefill p50 of the cold scenario (None: not recorded)

    @property
    def frame(self) -> pl.DataFrame:
        return pl.DataFrame([dataclasses.asdict(r) for r in self.rows])


def _median(values) -> float | None:
    s = pl.Series([v for v in values if v is not None], dtype=pl.Float64)
    return s.median() if s.len() else None


def compute(scenarios: list[Scenario]) -> Comparison:
    rows = []
    for s in scenarios:
        reqs = s.result.get("requests", [])
        prompt = sum(r.get("prompt_tokens") or 0 for r in reqs)
        prefill, hits, evictions, matched = None, sum((r.get("cached_tokens") or 0) > 0 for r in reqs), 0, None
        if s.model is not None:
            found = radix.compute(s.model)
            prefill = _median(found.lookups["prefill_ns"].to_list())
            evictions = found.evictions.height
            lk = found.lookups
            matched = 100 * lk["cached_tokens"].sum() / lk["prompt_tokens"].sum() if lk.height else None
            hits = lk.filter(pl.col("lookup") != "miss").height
        elif prompt:
            matched = 100 * sum(r.get("cached_tokens") or 0 for r in reqs) / prompt
        rows.append(ScenarioRow(s.name, len(reqs), matched, hits, evictions, prefill,
                                _median(r.get("ttft_ns") for r in reqs), None))
    cold = next((r.prefill_p50_ns for r in rows if r.scenario == COLD), None)
    for r in rows:
        r.speedup = cold / r.prefill_p50_ns if cold and r.prefill_p50_ns else None
    return Comparison(rows, cold)


def describe(c: Comparison) -> Report:
    report = Report("radix_scenarios", "RadixCache scenarios side by side (experiment 2)")
    sec = report.section("Scenarios")
    if not c.rows:
        sec.add("scenarios recorded", "0")
        return report
    sec.add("speedup", "cold_start prefill p50 / scenario prefill p50" if c.cold_prefill_ns else None,
            "same prompt length, same server setup; requests sent one at a time, so no batch held other work"
            if c.cold_prefill_ns else "no cold_start scenario with a trace to compare with")
    sec.table = c.frame.select(
        "scenario", "requests", pl.col("matched_pct").round(1).alias("prefix_matched_pct"), "hits", "evictions",
        (pl.col("prefill_p50_ns") / 1e6).round(3).alias("prefill_p50_ms"),
        (pl.col("client_ttft_p50_ns") / 1e6).round(3).alias("client_ttft_p50_ms"), pl.col("speedup").round(2))
    report.section("Per scenario").add("radix and story reports", "<scenario>/reports/",
                                       "each scenario's own cache sequence, evictions and execution story")
    return report


def build_report(scenarios: list[Scenario]) -> Report:
    return describe(compute(scenarios))
