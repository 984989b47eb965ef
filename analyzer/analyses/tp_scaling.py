"""Experiment 6, tensor-parallel scaling: latency, throughput, efficiency, all-reduce cost, advice."""
from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from sglang_tracing.analyzer.analyses.experiment_cells import cells_or_empty
from sglang_tracing.analyzer.renderers.files import write_report
from sglang_tracing.analyzer.report import Report


def scaling(frame: pl.DataFrame) -> pl.DataFrame:
    base = frame.filter(pl.col("tp") == frame["tp"].min()).row(0, named=True)
    return frame.sort("tp").select(
        "tp", pl.col("ttft_ms").round(3), pl.col("itl_ms").round(3), pl.col("output_tok_per_s").round(1),
        (pl.col("output_tok_per_s") / (base["output_tok_per_s"] * pl.col("tp") / base["tp"]) * 100).round(1)
        .alias("scaling_efficiency_pct"),
        (base["itl_ms"] / pl.col("itl_ms")).round(2).alias("itl_speedup"))


def allreduce_bytes(model_config: dict | None, tokens: int, tp: int) -> int | None:
    """Bytes each rank moves per layer for one forward of ``tokens`` tokens: two all-reduces of the
    hidden state (after attention and after the MLP), ring algorithm: 2 (tp-1)/tp of the buffer each."""
    if not model_config or tp < 2:
        return 0 if tp < 2 else None
    dtype = 2 if str(model_config.get("torch_dtype", "float16")) in ("float16", "bfloat16") else 4
    buffer = tokens * model_config["hidden_size"] * dtype
    return int(2 * 2 * (tp - 1) / tp * buffer)


# where an all-reduce shows in a Kineto trace, most specific first: the collective's GPU kernels
# (NCCL, SGLang's custom all-reduce), the process group backend's op (gloo on CPU), the c10d call
ALLREDUCE_SOURCES = (("kernels", r"(?i)nccl.*all_?reduce|allreduce.*kernel|cross_device_reduce"),
                     ("CPU ops (process-group backend)", r"^(gloo|nccl|mpi|ucc):all_?reduce"),
                     ("CPU ops (c10d)", r"^c10d::all_?reduce"))


def allreduce_time(profile_dir: Path, steps: int, layers: int) -> dict | None:
    """Mean all-reduce time per layer per forward over the ranks' Kineto traces (SGLang's profiler),
    from the most specific source each trace has; overlapping ops count once."""
    from sglang_tracing.analyzer.analyses.kernels import merge_intervals
    from sglang_tracing.analyzer.loaders import kineto

    per_rank, source = [], None
    for f in sorted(Path(profile_dir).glob("*.trace.json*")):
        kernels, ops = kineto.frames(kineto.read(f))
        for source, pattern in ALLREDUCE_SOURCES:
            hits = (kernels if source == "kernels" else ops).filter(pl.col("name").str.contains(pattern))
            if hits.height:
                break
        else:
            continue
        merged = merge_intervals(hits.select("start_ns", "end_ns"))
        per_rank.append(((merged["end_ns"] - merged["start_ns"]).sum(), hits.height))
    if not per_rank or not steps or not layers:
        return None
    busy = sum(b for b, _ in per_rank) / len(per_rank)
    calls = sum(n for _, n in per_rank) / len(per_rank)
    return {"ns_per_layer": busy / (steps * layers), "calls_per_layer": calls / (steps * layers),
            "ranks": len(per_rank), "source": source}


def recommendations(table: pl.DataFrame) -> list[tuple[str, str]]:
    best_tput = table.sort("output_tok_per_s", descending=True).row(0, named=True)
    best_itl = table.sort("itl_ms").row(0, named=True)
    out = [("throughput", f"highest output throughput at TP={best_tput['tp']} ({best_tput['output_tok_per_s']:.0f} tok/s)"),
           ("latency", f"lowest inter-token latency at TP={best_itl['tp']} ({best_itl['itl_ms']:.2f} ms)")]
    poor = table.filter((pl.col("tp") > 1) & (pl.col("scaling_efficiency_pct") < 70))
    if poor.height:
        tps = ", ".join(map(str, poor["tp"].to_list()))
        out.append(("efficiency", f"TP={tps} below 70% scaling efficiency: communication or too little work per "
                                  "rank; prefer data parallelism (more replicas) for throughput there"))
    else:
        out.append(("efficiency", "every TP size keeps >= 70% scaling efficiency"))
    return out


def write(out: Path) -> list[str]:
    report = Report("tp_scaling", "Tensor-parallel scaling (experiment 6)")
    frame = cells_or_empty(out, report, "tp")
    if frame is None:
        return write_report(out, report)
    topo = Path(out) / "topology.txt"
    report.section("Topology").add("nvidia-smi topo -m", topo.read_text().strip()[:2000] if topo.exists() else None)
    table = scaling(frame)
    report.section("Scaling").table = table
    comm = report.section("All-reduce")
    cfg = _model_config(out)
    record = json.loads((Path(out) / "experiment.json").read_text())
    exp = record["runs"][0]["args"] if "runs" in record else record["args"]  # the recording run's options
    for tp in table["tp"].to_list():
        b = allreduce_bytes(cfg, exp.get("concurrency", 1), tp)
        comm.add(f"TP={tp}: bytes per layer per decode step (per rank)", f"{b:,}" if b is not None else None,
                 "2 ring all-reduces of the hidden state, batch = concurrency")
    layers = (cfg or {}).get("num_hidden_layers")
    for r in frame.sort("tp").iter_rows(named=True):
        if r["tp"] < 2:
            continue
        t = allreduce_time(Path(out) / f"tp{r['tp']}" / "profile", r.get("profile_steps"), layers)
        comm.add(f"TP={r['tp']}: all-reduce time per layer per forward",
                 f"{t['ns_per_layer'] / 1e3:.1f} us ({t['calls_per_layer']:.1f} calls)" if t else None,
                 f"SGLang profiler, {r.get('profile_steps')} forwards after the measured pass, mean of "
                 f"{t['ranks']} ranks, {t['source']}" if t else
                 "no all-reduce in the rank traces (no profile recorded, or profiler unavailable)")
    rec = report.section("Recommendations (computed)")
    for label, text in recommendations(table):
        rec.add(label, text)
    report.plots["tp_scaling.png"] = _chart(table)
    return write_report(out, report)


def _model_config(out: Path) -> dict | None:
    for m in Path(out).glob("*/trace/manifest.json"):
        cfg = json.loads(m.read_text()).get("model_config")
        if cfg:
            return cfg
    return None


def _chart(table: pl.DataFrame) -> bytes:
    from sglang_tracing.analyzer.renderers.plots import _figure, _png

    plt = _figure()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(table["tp"].to_list(), table["output_tok_per_s"].to_list(), marker="o", label="measured")
    base = table.row(0, named=True)
    ax.plot(table["tp"].to_list(), [base["output_tok_per_s"] * t / base["tp"] for t in table["tp"]], "--",
            label="linear")
    ax.set_xlabel("TP size")
    ax.set_ylabel("output tok/s")
    ax.set_xticks(table["tp"].to_list())
    ax.legend()
    ax.grid(alpha=0.3)
    return _png(fig)
