"""The speculative-decoding experiment: the same workload with and without speculation, side by side
(client throughput, TTFT and ITL per cell) and, for the cell that speculated, what it accepted and what
drafting cost (``speculative.compute`` on its server trace)."""
from __future__ import annotations

import dataclasses

from sglang_tracing.analyzer.analyses import speculative
from sglang_tracing.analyzer.analyses.requests import request_table
from sglang_tracing.analyzer.loaders.backends_experiment import BackendsInputs
from sglang_tracing.analyzer.report import Report

NO_SPEC, SPEC = "no_spec", "spec"
FIGURES = (("output_tok_per_s", "output throughput", "tok/s", "{:.1f}"), ("ttft_ms", "TTFT", "ms", "{:.2f}"),
           ("itl_ms", "mean ITL", "ms", "{:.3f}"))


@dataclasses.dataclass
class CellFigure:
    cell: str
    figure: str  # a column of the cells frame (FIGURES)
    value: float | None
    ratio_to_no_spec: float | None  # None for the no_spec cell itself, or where either side is missing
    speculative: str = ""  # the cell's speculative arguments


@dataclasses.dataclass
class SpecComparison:
    figures: list[CellFigure]
    speculation: speculative.Speculation | None  # of the speculating cell's server trace
    why_no_speculation: str = ""


def compute(inputs: BackendsInputs) -> SpecComparison:
    frame = inputs.cells
    if frame.is_empty() or "cell" not in frame.columns:
        return SpecComparison([], None, "no cells recorded")
    by_cell = {r["cell"]: r for r in frame.iter_rows(named=True)}
    base = by_cell.get(NO_SPEC)
    figures = []
    for cell, row in sorted(by_cell.items()):
        for col, *_ in FIGURES:
            value = row.get(col)
            ratio = (value / base[col] if cell != NO_SPEC and base and base.get(col) and value is not None
                     else None)
            figures.append(CellFigure(cell, col, value, ratio, row.get("speculative") or ""))
    spec_row = by_cell.get(SPEC)
    model = inputs.models.get(spec_row.get("trace_dir")) if spec_row else None
    if model is None:
        return SpecComparison(figures, None, "no trace dir recorded for the spec cell")
    return SpecComparison(figures, speculative.compute(model.spans, request_table(model.spans, model.manifest)))


def describe(result: SpecComparison) -> Report:
    report = Report("spec_experiment", "Speculative decoding: the same workload with and without")
    if not result.figures:
        report.section("No cells recorded").add("cells", "0")
        return report
    side = report.section("Client side (median per request)")
    wording = {col: (label, unit, fmt) for col, label, unit, fmt in FIGURES}
    for f in result.figures:
        label, unit, fmt = wording[f.figure]
        value = None if f.value is None else f"{fmt.format(f.value)} {unit}"
        if value is not None and f.ratio_to_no_spec is not None:
            value += f" (x{f.ratio_to_no_spec:.3f} of {NO_SPEC})"
        note = f.speculative if f.figure == "output_tok_per_s" else (
            "gaps between streamed chunks; several tokens of one step arrive as one chunk" if f.figure == "itl_ms"
            else "")
        side.add(f"{f.cell}: {label}", value, note)
    section = report.section("Where the speculating cell's decode time went")
    if result.speculation is None:
        section.add("server trace", None, result.why_no_speculation)
    else:
        speculative.describe(section, result.speculation)
    return report


def build_report(inputs: BackendsInputs) -> Report:
    return describe(compute(inputs))
