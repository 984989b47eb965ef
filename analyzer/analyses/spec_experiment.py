"""The speculative-decoding experiment: the same workload with and without speculation, side by side
(client throughput, TTFT and ITL per cell) and, for the cell that speculated, what it accepted and what
drafting cost (``speculative.compute`` on its server trace)."""
from __future__ import annotations

from sglang_tracing.analyzer.analyses import speculative
from sglang_tracing.analyzer.analyses.requests import request_table
from sglang_tracing.analyzer.loaders.backends_experiment import BackendsInputs
from sglang_tracing.analyzer.report import Report

NO_SPEC, SPEC = "no_spec", "spec"


def build_report(inputs: BackendsInputs) -> Report:
    report = Report("spec_experiment", "Speculative decoding: the same workload with and without")
    frame = inputs.cells
    if frame.is_empty() or "cell" not in frame.columns:
        report.section("No cells recorded").add("cells", "0")
        return report
    by_cell = {r["cell"]: r for r in frame.iter_rows(named=True)}
    side = report.section("Client side (median per request)")
    base = by_cell.get(NO_SPEC)
    for cell, r in sorted(by_cell.items()):
        ratio = lambda col: (f" (x{r[col] / base[col]:.3f} of no_spec)"  # noqa: E731
                             if base and base.get(col) and cell != NO_SPEC and r.get(col) is not None else "")
        side.add(f"{cell}: output throughput", f"{r['output_tok_per_s']:.1f} tok/s" + ratio("output_tok_per_s"),
                 r.get("speculative", ""))
        side.add(f"{cell}: TTFT", f"{r['ttft_ms']:.2f} ms" + ratio("ttft_ms"))
        side.add(f"{cell}: mean ITL", f"{r['itl_ms']:.3f} ms" + ratio("itl_ms"),
                 "gaps between streamed chunks; several tokens of one step arrive as one chunk")
    spec_row = by_cell.get(SPEC)
    model = inputs.models.get(spec_row.get("trace_dir")) if spec_row else None
    if model is not None:
        speculative.describe(report.section("Where the speculating cell's decode time went"),
                             speculative.compute(model.spans, request_table(model.spans, model.manifest)))
    else:
        report.section("Where the speculating cell's decode time went").add("server trace", None,
                                                                            "no trace dir recorded for the spec cell")
    return report
