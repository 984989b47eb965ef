"""Experiment 3, FlashInfer vs Triton: per cell (batch size x sequence length) prefill and decode
time per backend, the winner and its margin, and an analysis written from the numbers."""
from __future__ import annotations

from pathlib import Path

import polars as pl

from sglang_tracing.analyzer.analyses.experiment_cells import cells_or_empty
from sglang_tracing.analyzer.model import TraceModel, load_trace_dir
from sglang_tracing.analyzer.renderers.files import write_report
from sglang_tracing.analyzer.report import Report


HW = ("sm_util_pct", "tensor_util_pct", "dram_bw_util_pct")
# (phase, column, what it is): client-side latencies, then the server's GPU time from forward spans
PHASES = (("prefill (TTFT)", "ttft_ms", "client median time to first token"),
          ("decode (ITL)", "itl_ms", "client median inter-token latency"),
          ("prefill GPU", "prefill_gpu_ms", "GPU elapsed time (CUDA events, launch gaps included) of the "
                                            "cell's extend forwards, summed"),
          ("decode step GPU", "decode_step_gpu_ms", "median GPU elapsed time of the cell's decode forwards"))


def trace_models(frame: pl.DataFrame) -> dict[str, TraceModel]:
    """Each server trace dir the cells name, loaded once (spans and NVML/GPM counters)."""
    dirs = set(frame["trace_dir"].drop_nulls()) if "trace_dir" in frame.columns else set()
    return {d: load_trace_dir(d) for d in sorted(dirs) if Path(d).is_dir()}


def _per_cell(frame: pl.DataFrame, models: dict | None, measure, schema: dict) -> pl.DataFrame:
    """``measure(model, row)`` for each cell whose server trace is at hand, as new columns."""
    models = trace_models(frame) if models is None else models
    rows = []
    for r in frame.iter_rows(named=True):
        model = models.get(r.get("trace_dir"))
        rows.append(measure(model, r) if model is not None and r.get("start_ns") else dict.fromkeys(schema))
    return pl.concat([frame, pl.DataFrame(rows, schema=schema)], how="horizontal")


def with_hardware(frame: pl.DataFrame, models: dict | None = None) -> pl.DataFrame:
    """Mean NVML/GPM figures over each cell's time window, from its server's trace dir."""
    def measure(model, r):
        c = model.counters
        inside = c.filter(pl.col("t_ns").is_between(r["start_ns"], r["end_ns"]) & pl.col("metric").is_in(HW))
        return {**dict.fromkeys(HW), **dict(inside.group_by("metric").agg(pl.col("value").mean()).iter_rows())}

    return _per_cell(frame, models, measure, dict.fromkeys(HW, pl.Float64))


def with_server_phases(frame: pl.DataFrame, models: dict | None = None) -> pl.DataFrame:
    """Per cell, from its server's forward spans inside the cell's window (warm-up excluded): GPU time
    of prefill (extend and mixed forwards, summed) and of one decode step (median); CUDA events."""
    from sglang_tracing.analyzer.analyses.kernels import forward_gpu_time

    forwards: dict[int, pl.DataFrame] = {}

    def measure(model, r):
        if id(model) not in forwards:
            forwards[id(model)] = forward_gpu_time(model.spans, pl.DataFrame()).join(
                model.spans.select("span_id", "start_ns"), on="span_id")
        inside = forwards[id(model)].filter(pl.col("start_ns").is_between(r["start_ns"], r["end_ns"]))
        prefill = inside.filter(pl.col("mode").is_in(["extend", "mixed"]))["gpu_ns"]
        decode = inside.filter(pl.col("mode") == "decode")["gpu_ns"]
        return {"prefill_gpu_ms": prefill.sum() / 1e6 if prefill.count() else None,
                "decode_step_gpu_ms": decode.median() / 1e6 if decode.count() else None}

    return _per_cell(frame, models, measure, {"prefill_gpu_ms": pl.Float64, "decode_step_gpu_ms": pl.Float64})


def compare(frame: pl.DataFrame) -> pl.DataFrame:
    """One row per (batch_size, seq_len, phase): each backend's ms, the winner, its margin in %."""
    rows = []
    for (bs, n), g in frame.group_by(["batch_size", "seq_len"], maintain_order=True):
        for phase, col, _ in PHASES:
            if col not in g.columns:
                continue
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
    out += disagreements(table, "prefill (TTFT)", "prefill GPU") + disagreements(table, "decode (ITL)", "decode step GPU")
    return out


def disagreements(table: pl.DataFrame, client: str, gpu: str, points: float = 10.0) -> list[tuple[str, str]]:
    """Cells where the client's margin and the GPU's differ by more than ``points`` percentage points:
    that part of the gap lies outside the forward (arrival batching, scheduling), not in the kernels."""
    if "winner" not in table.columns or table["winner"].null_count() == table.height:
        return []  # one backend: nothing to compare

    def signed(phase: str, name: str) -> pl.DataFrame:
        rows = table.filter((pl.col("phase") == phase) & pl.col("winner").is_not_null())
        ref = rows["winner"].min() if rows.height else None  # one backend's view: positive = it wins
        return rows.select("batch_size", "seq_len", pl.col("winner").alias(f"{name}_winner"),
                           pl.col("margin_pct").alias(f"{name}_margin"),
                           pl.when(pl.col("winner") == ref).then(pl.col("margin_pct"))
                           .otherwise(-pl.col("margin_pct")).alias(f"{name}_signed"))

    both = signed(client, "c").join(signed(gpu, "g"), on=["batch_size", "seq_len"])
    off = both.filter((pl.col("c_signed") - pl.col("g_signed")).abs() > points)
    return [(f"{client} vs {gpu}", f"batch {r['batch_size']}, {r['seq_len']} tokens: client {r['c_winner']} by "
             f"{r['c_margin']:.1f}%, GPU {r['g_winner']} by {r['g_margin']:.1f}% "
             f"({abs(r['c_signed'] - r['g_signed']):.0f} points apart): time outside the forward (arrival batching, "
             "scheduling, CPU work between forwards) shapes what the client sees here")
            for r in off.iter_rows(named=True)]


def write(out: Path) -> list[str]:
    report = Report("backends", "Attention backends (experiment 3)")
    frame = cells_or_empty(out, report, "backend")
    if frame is None:
        return write_report(out, report)
    models = trace_models(frame)
    frame = with_hardware(with_server_phases(frame, models), models)
    table = compare(frame)
    cells_section = report.section("Per cell")
    for phase, col, what in PHASES:
        cells_section.add(phase, what)
    if "warmup_start_ns" in frame.columns:
        cells_section.add("warm-up", "each cell ran once untimed first (same shapes, other prompts)")
    cells_section.table = table
    raw = report.section("Measurements")
    raw.table = frame.select(
        "backend", "batch_size", "seq_len", pl.col("ttft_ms").round(3), pl.col("itl_ms").round(3),
        pl.col("prefill_gpu_ms").round(3), pl.col("decode_step_gpu_ms").round(3),
        pl.col("output_tok_per_s").round(1), *[pl.col(m).round(1) for m in HW]).sort("backend", "batch_size", "seq_len")
    if all(frame[m].null_count() == frame.height for m in HW):
        raw.add("hardware columns", None, "no NVML/GPM samples (CPU run, or no GPU sampling)")
    ana = report.section("Analysis (computed from the table)")
    for label, text in analysis(table):
        ana.add(label, text)
    return write_report(out, report)
