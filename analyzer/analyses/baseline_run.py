"""The baseline experiment's top-level report: what the client saw over the measured pass, and where
the server-side story, the cache and timeline reports and the profiled pass are."""
from __future__ import annotations

from pathlib import Path

from sglang_tracing.analyzer.analyses.run_summary import RunSummary, summarize
from sglang_tracing.analyzer.loaders.baseline_experiment import BaselineInputs
from sglang_tracing.analyzer.report import Report, ms


def compute(inputs: BaselineInputs) -> RunSummary | None:
    return summarize([inputs.measured]) if inputs.measured else None


def describe(summary: RunSummary | None, inputs: BaselineInputs) -> Report:
    report = Report("baseline", "Baseline (experiment 1): the measured pass")
    sec = report.section("Measured pass, as the client saw it")
    if summary is None:
        sec.add("measured pass", None, "not recorded yet (baseline/result.json missing)")
        return report
    sec.add("requests", f"{summary.requests} ({summary.complete} complete)", "client")
    sec.add("TTFT p50 / p99", f"{ms(summary.ttft_p50_ns)} / {ms(summary.ttft_p99_ns)}"
            if summary.ttft_p50_ns is not None else None, "request sent -> first streamed chunk")
    sec.add("ITL p50 / p99", f"{ms(summary.itl_p50_ns)} / {ms(summary.itl_p99_ns)}"
            if summary.itl_p50_ns is not None else None, "every gap between streamed chunks")
    rate = summary.output_tok_per_s
    sec.add("throughput", f"{rate:.1f} output tokens/s" if rate else None,
            f"{summary.output_tokens} output tokens over the pass's wall time")
    sec.add("cache hits", f"{summary.cache_hit_requests} of {summary.requests} requests",
            f"{summary.cached_tokens} prompt tokens from the prefix cache")
    where = report.section("Reports")
    trace = Path(inputs.measured["trace_dir"]) if inputs.measured.get("trace_dir") else None
    where.add("execution story, cache, timeline", str(trace.parent / "reports") if trace else None,
              "story / radix / timeline, and requests.csv" if trace else "run with --url: no server trace")
    if inputs.profiled:
        where.add("profiled pass", inputs.profiled.get("trace_dir"),
                  f"{len(inputs.profiled.get('requests', []))} requests on a second server: layer ranges, eager "
                  f"forwards, Kineto over forwards {inputs.profiled.get('profiled_steps')}; the story's "
                  "per-layer and kernel figures, labelled as its")
    else:
        where.add("profiled pass", None, "not run (--no-profiled-pass, or --url)")
    return report


def build_report(inputs: BaselineInputs) -> Report:
    return describe(compute(inputs), inputs)
