"""Experiment 3, FlashInfer vs Triton: per cell (batch size x sequence length) prefill and decode
time per backend, the winner and its margin, and an analysis written from the numbers."""
from __future__ import annotations

from pathlib import Path

import polars as pl

from sglang_tracing.analyzer.analyses.experiment_cells import cells_or_empty
from sglang_tracing.analyzer.renderers.files import write_report
from sglang_tracing.analyzer.report import Report


HW = ("sm_util_pct", "tensor_util_pct", "dram_bw_util_pct")


def with_hardware(frame: pl.DataFrame) -> pl.DataFrame:
    """Mean NVML/GPM figures over each cell's time window, from its server's trace dir."""
    from sglang_tracing.analyzer.model import read_counters

    counters: dict[str, pl.DataFrame] = {}
    rows = []
    for r in frame.iter_rows(named=True):
        d = r.get("trace_dir")
        values = dict.fromkeys(HW)
        if d and r.get("start_ns") and Path(d).is_dir():
            c = counters.setdefault(d, read_counters(Path(d)))
            inside = c.filter(pl.col("t_ns").is_between(r["start_ns"], r["end_ns"]) & pl.col("metric").is_in(HW))
            values.update(dict(inside.group_by("metric").agg(pl.col("value").mean()).iter_rows()))
        rows.append(values)
    return pl.concat([frame, pl.DataFrame(rows, schema=dict.fromkeys(HW, pl.Float64))], how="horizontal")


def compare(frame: pl.DataFrame) -> pl.DataFrame:
    """One row per (batch_size, seq_len, phase): each backend's ms, the winner, its margin in %."""
    rows = []
    for (bs, n), g in frame.group_by(["batch_size", "seq_len"], maintain_order=True):
        for phase, col in (("prefill (TTFT)", "ttft_ms"), ("decode (ITL)", "itl_ms")):
            vals = {b: v for b, v in zip(g["backend"], g[col]) if v}
            if not vals:
                continue
            best = min(vals, key=vals.get)
            others = [v for b, v in vals.items() if b != best]
            margin = (min(others) / vals[best] - 1) * 100 if others else None
            rows.append({"batch_size": bs, "seq_len": n, "phase": phase, **{f"{b}_ms": round(v, 3) for b, v in vals.items()},
                         "winner": best if others else None, "margin_pct": round(margin, 1) if margin is not None else None})
    return pl.DataFrame(rows, infer_schema_length=None).sort("phase", "batch_size", "seq_len")


def analysis(table: pl.DataFrame) -> list[tuple[str, str]]:
    """Findings derived from the comparison table."""
    out = []
    for phase, g in table.group_by("phase", maintain_order=True):
        decided = g.drop_nulls("winner")
        if decided.is_empty():
            continue
        counts = decided.group_by("winner").len().sort("len", descending=True)
        top, wins = counts.row(0)
        med = decided.filter(pl.col("winner") == top)["margin_pct"].median()
        out.append((phase[0], f"{top} wins {wins} of {decided.height} cells, median margin {med:.1f}%"))
        big = decided.sort("margin_pct", descending=True).row(0, named=True)
        out.append((phase[0] + " largest gap", f"{big['winner']} by {big['margin_pct']:.1f}% at batch {big['batch_size']}, "
                                            f"{big['seq_len']} tokens"))
    return out


def write(out: Path) -> list[str]:
    report = Report("backends", "Attention backends (experiment 3)")
    frame = cells_or_empty(out, report, "backend")
    if frame is None:
        return write_report(out, report)
    table = compare(frame)
    report.section("Per cell").table = table
    raw = report.section("Measurements")
    raw.table = with_hardware(frame).select(
        "backend", "batch_size", "seq_len", pl.col("ttft_ms").round(3), pl.col("itl_ms").round(3),
        pl.col("output_tok_per_s").round(1), *[pl.col(m).round(1) for m in HW]).sort("backend", "batch_size", "seq_len")
    if all(with_hardware(frame)[m].null_count() == frame.height for m in HW):
        raw.add("hardware columns", None, "no NVML/GPM samples (CPU run, or no GPU sampling)")
    ana = report.section("Analysis (computed from the table)")
    for label, text in analysis(table):
        ana.add(label, text)
    return write_report(out, report)
