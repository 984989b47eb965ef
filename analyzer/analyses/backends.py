"""Experiment 3, FlashInfer vs Triton: per cell (batch size x sequence length) prefill and decode
time per backend, the winner and its margin, and an analysis written from the numbers."""
from __future__ import annotations

import dataclasses

import polars as pl

from sglang_tracing import semconv as sc
from sglang_tracing.analyzer.analyses.attribution import forward_members, forwards_inside, forwards_of, is_prefill
from sglang_tracing.analyzer.analyses.requests import request_table, user_requests
from sglang_tracing.analyzer.loaders.backends_experiment import BackendsInputs
from sglang_tracing.analyzer.model import TraceModel
from sglang_tracing.analyzer.report import Report


HW = (sc.GPM_SM_UTIL, sc.GPM_TENSOR_UTIL, sc.GPM_DRAM_BW_UTIL)
# (phase, column, what it is): client-side latencies, then the server's GPU time from forward spans
PHASES = (("prefill (TTFT)", "ttft_ms", "client median time to first token"),
          ("decode (ITL)", "itl_ms", "client median inter-token latency"),
          ("prefill GPU", "prefill_gpu_ms", "GPU elapsed time (CUDA events, launch gaps included) of the "
                                            "extend forwards that ran the cell's requests (found by rid), summed; "
                                            "a forward shared with other requests counts by the cell's share of its tokens"),
          ("decode step GPU", "decode_step_gpu_ms", "median GPU elapsed time of the cell's decode steps at the "
                                                    "largest batch the cell reached (steps batched with requests "
                                                    "outside the cell left out)"))
STEPS_SCHEMA = pl.List(pl.Struct({"batch": pl.Int64, "steps": pl.Int64, "median_gpu_ms": pl.Float64}))
PHASE_SCHEMA = {"prefill_gpu_ms": pl.Float64, "decode_step_gpu_ms": pl.Float64, "batch_reached": pl.Int64,
                "shared_forwards": pl.Int64, "outside_forwards": pl.Int64, "steps_by_batch": STEPS_SCHEMA,
                "kv_pool_tokens": pl.Int64}


def _per_cell(frame: pl.DataFrame, models: dict[str, TraceModel], measure, schema: dict) -> pl.DataFrame:
    """``measure(model, row)`` for each cell whose server trace is at hand, as new columns."""
    rows = []
    for r in frame.iter_rows(named=True):
        model = models.get(r.get("trace_dir"))
        rows.append(measure(model, r) if model is not None and r.get("start_ns") else dict.fromkeys(schema))
    return pl.concat([frame, pl.DataFrame(rows, schema=schema)], how="horizontal")


def with_hardware(frame: pl.DataFrame, models: dict[str, TraceModel]) -> pl.DataFrame:
    """Mean NVML/GPM figures over each cell's time window, from its server's trace dir."""
    def measure(model, r):
        c = model.counters
        inside = c.filter(pl.col("t_ns").is_between(r["start_ns"], r["end_ns"]) & pl.col("metric").is_in(HW))
        return {**dict.fromkeys(HW), **dict(inside.group_by("metric").agg(pl.col("value").mean()).iter_rows())}

    return _per_cell(frame, models, measure, dict.fromkeys(HW, pl.Float64))


def cell_rids(row: dict, requests: pl.DataFrame | None) -> list[str]:
    """The rids of a cell's measured requests: from its result.json; for cells that did not record
    them, the server's user requests (internal ones left out) that arrived inside the cell's window."""
    if row.get("rids"):
        return list(row["rids"])
    if requests is None or requests.is_empty():
        return []
    inside = user_requests(requests).filter(pl.col("received_ns").is_between(row["start_ns"], row["end_ns"]))
    return inside["rid"].to_list()


def with_server_phases(frame: pl.DataFrame, models: dict[str, TraceModel]) -> pl.DataFrame:
    """Per cell, from its server's forward spans that ran the cell's requests (by rid, so the cell's
    untimed warm-up, SGLang's own warm-up and other cells stay out): GPU time of prefill (extend and
    mixed forwards, summed), the decode batch reached and the median decode step at it, decode steps
    per achieved batch, forwards shared with outsiders and other forwards inside the cell's window
    (they share its NVML/GPM means); CUDA events."""
    per_model: dict[int, dict] = {}

    def measure(model, r):
        spans = model.spans
        if id(model) not in per_model:
            pool = spans[sc.CACHE_TOTAL].drop_nulls().max() if sc.CACHE_TOTAL in spans.columns else None
            per_model[id(model)] = {"members": forward_members(spans), "pool": pool}
        known = per_model[id(model)]
        if not r.get("rids") and "requests" not in known:
            known["requests"] = request_table(spans, model.manifest)
        members, pool = known["members"], known["pool"]
        rids = cell_rids(r, known.get("requests"))
        mine = forwards_of(members, rids)
        prefill = mine.filter(is_prefill()).drop_nulls("gpu_ns")
        # batch membership needs no GPU timing (CPU runs have none): only the medians do
        alone = mine.filter((pl.col("mode") == "decode") & (pl.col("outsiders") == 0))
        steps = (alone.group_by(pl.col("members").alias("batch"))
                 .agg(pl.len().cast(pl.Int64).alias("steps"), (pl.col("gpu_ns").median() / 1e6).alias("median_gpu_ms"))
                 .sort("batch"))
        reached = alone["members"].max() if alone.height else None
        at_reached = alone.filter(pl.col("members") == reached)["gpu_ns"].drop_nulls()
        inside = forwards_inside(model.spans, r["start_ns"], r["end_ns"])
        outside = inside.filter(~pl.col("span_id").is_in(mine["span_id"].to_list()))
        return {"prefill_gpu_ms": (prefill["gpu_ns"] * prefill["share"]).sum() / 1e6 if prefill.height else None,
                "decode_step_gpu_ms": at_reached.median() / 1e6 if at_reached.len() else None,
                "batch_reached": reached, "shared_forwards": mine.filter(pl.col("outsiders") > 0).height,
                "outside_forwards": outside.height, "steps_by_batch": steps.to_dicts(),
                "kv_pool_tokens": pool}

    return _per_cell(frame, models, measure, PHASE_SCHEMA)


def steps_by_batch(frame: pl.DataFrame) -> pl.DataFrame:
    """Decode steps per achieved batch size, per cell: backend, batch_size (requested), seq_len, batch
    (requests of the cell in the step), steps, median_gpu_ms."""
    return (frame.select("backend", "batch_size", "seq_len", "steps_by_batch").explode("steps_by_batch")
            .drop_nulls("steps_by_batch").unnest("steps_by_batch")
            .with_columns(pl.col("median_gpu_ms").round(3)).sort("batch_size", "seq_len", "backend", "batch"))


def batch_findings(frame: pl.DataFrame) -> list[tuple[str, str]]:
    """Cells that never ran at their requested batch, and cells whose window held other work."""
    out = []
    short = frame.filter(pl.col("batch_reached") < pl.col("batch_size")).sort("batch_size", "seq_len", "backend")
    for r in short.iter_rows(named=True):
        groups = "; ".join(f"{g['steps']} steps at {g['batch']}" + (f" (median {g['median_gpu_ms']:.2f} ms)"
                                                                   if g["median_gpu_ms"] is not None else "")
                           for g in sorted(r["steps_by_batch"], key=lambda g: -g["steps"])[:3])
        per_req = r["seq_len"] + (r.get("output_tokens") or 0)
        pool = (f"; the KV pool ({r['kv_pool_tokens']:,} tokens) holds {r['kv_pool_tokens'] // per_req} requests of "
                f"{per_req} tokens" if r.get("kv_pool_tokens") and r.get("output_tokens") else "")
        out.append((f"batch not reached: {r['backend']}",
                    f"batch {r['batch_size']}, {r['seq_len']} tokens ran at most {r['batch_reached']} requests per "
                    f"decode step: {groups}{pool}; its decode step GPU is the median at {r['batch_reached']}"))
    busy = frame.filter((pl.col("outside_forwards") > 0) | (pl.col("shared_forwards") > 0))
    for r in busy.sort("batch_size", "seq_len", "backend").iter_rows(named=True):
        out.append((f"other work in the window: {r['backend']}",
                    f"batch {r['batch_size']}, {r['seq_len']} tokens: {r['outside_forwards']} forward(s) of requests "
                    f"outside the cell ran inside its window and {r['shared_forwards']} forward(s) batched a cell request "
                    "with an outsider; GPU times count only the cell's requests, the NVML/GPM means cover the window"))
    return out


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


def verdict(dram_pct: float | None, tensor_pct: float | None) -> str | None:
    """Which GPU resource a cell leaned on, from its GPM means: memory-bound when the HBM bandwidth in use
    (percent of peak) exceeds the tensor-core activity, compute-bound otherwise; None without both."""
    if dram_pct is None or tensor_pct is None:
        return None
    return "memory-bound" if dram_pct > tensor_pct else "compute-bound"


def with_verdict(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.with_columns(pl.struct(sc.GPM_DRAM_BW_UTIL, sc.GPM_TENSOR_UTIL).map_elements(
        lambda r: verdict(r[sc.GPM_DRAM_BW_UTIL], r[sc.GPM_TENSOR_UTIL]), return_dtype=pl.String).alias("bound"))


def cells_wide(table: pl.DataFrame, frame: pl.DataFrame) -> pl.DataFrame:
    """One row per (batch_size, seq_len): each phase's winner and margin, and each backend's bound."""
    rows = {}
    for r in table.iter_rows(named=True):
        row = rows.setdefault((r["batch_size"], r["seq_len"]), {"batch_size": r["batch_size"], "seq_len": r["seq_len"]})
        row[r["phase"]] = (f"{r['winner']} +{r['margin_pct']:.1f}%" if r["winner"] and r["margin_pct"] is not None
                           else None)
    for r in frame.iter_rows(named=True):
        row = rows.setdefault((r["batch_size"], r["seq_len"]), {"batch_size": r["batch_size"], "seq_len": r["seq_len"]})
        dram, tensor = r.get(sc.GPM_DRAM_BW_UTIL), r.get(sc.GPM_TENSOR_UTIL)
        row[f"{r['backend']} bound"] = (f"{r['bound']} (HBM {dram:.0f}%, TC {tensor:.0f}%)" if r.get("bound")
                                        else None)
    wide = pl.DataFrame(list(rows.values()), infer_schema_length=None).sort("batch_size", "seq_len")
    phases = [p for p, _, _ in PHASES if p in wide.columns]
    return wide.select("batch_size", "seq_len", *phases, *[c for c in wide.columns if c.endswith(" bound")])


@dataclasses.dataclass
class Backends:
    """Every figure of the backends experiment; ``frame`` is None when no cell was recorded."""
    frame: pl.DataFrame | None  # one row per (backend, cell): client, GPU and GPM figures, bound
    table: pl.DataFrame | None  # compare(frame): one row per cell and phase
    cells: pl.DataFrame | None  # cells_wide: one row per cell
    findings: list[tuple[str, str]] = dataclasses.field(default_factory=list)


def compute(inputs: BackendsInputs) -> Backends:
    frame, models = inputs.cells, inputs.models
    if frame.is_empty() or "backend" not in frame.columns:
        return Backends(None, None, None)
    frame = with_verdict(with_hardware(with_server_phases(frame, models), models))
    table = compare(frame)
    return Backends(frame, table, cells_wide(table, frame), analysis(table) + batch_findings(frame))


def build_report(inputs: BackendsInputs) -> Report:
    return describe(compute(inputs))


def describe(result: Backends) -> Report:
    report = Report("backends", "Attention backends (experiment 3)")
    frame, table = result.frame, result.table
    if frame is None:
        report.section("No cells recorded").add("cells", "0")
        return report
    cells_section = report.section("Per cell")
    cells_section.add("each phase", "winner +margin%", "; ".join(f"{phase}: {what}" for phase, _, what in PHASES))
    cells_section.add("<backend> bound", "memory- or compute-bound" if frame["bound"].drop_nulls().len() else None,
                      "HBM bandwidth in use vs tensor-core activity (GPM means over the cell's window)"
                      if frame["bound"].drop_nulls().len() else "no GPM samples (CPU run, or no GPU sampling)")
    if "warmup_start_ns" in frame.columns:
        cells_section.add("warm-up", "each cell ran once untimed first (same shapes, other prompts)")
    cells_section.table = result.cells
    by_phase = report.section("Per cell and phase, each backend's time")
    by_phase.table = table
    raw = report.section("Measurements")
    raw.add("batch_reached", None if frame["batch_reached"].null_count() == frame.height else "see table",
            "most of the cell's requests in one decode step (forward spans' rids), beside the requested batch_size")
    raw.table = frame.select(
        "backend", "batch_size", "batch_reached", "seq_len", pl.col("ttft_ms").round(3), pl.col("itl_ms").round(3),
        pl.col("prefill_gpu_ms").round(3), pl.col("decode_step_gpu_ms").round(3),
        pl.col("output_tok_per_s").round(1), *[pl.col(m).round(1) for m in HW], "bound").sort(
        "backend", "batch_size", "seq_len")
    if all(frame[m].null_count() == frame.height for m in HW):
        raw.add("hardware columns", None, "no NVML/GPM samples (CPU run, or no GPU sampling)")
    steps = report.section("Decode steps per achieved batch")
    steps.add("batch", None if frame["batch_reached"].null_count() == frame.height else "see table",
              "requests of the cell in the step; steps batched with outsiders left out")
    steps.table = steps_by_batch(frame)
    ana = report.section("Analysis (computed from the table)")
    for label, text in result.findings:
        ana.add(label, text)
    return report
