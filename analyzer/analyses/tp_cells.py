"""Experiment 6's building blocks, per TP cell: what it achieved, whether its figures are plausible, and
what its all-reduces cost on each rank (waiting for the slower rank vs moving data)."""
from __future__ import annotations

import dataclasses
import re

import polars as pl

from sglang_tracing.analyzer.analyses import collectives
from sglang_tracing.models.facts import dtype_bytes
from sglang_tracing.analyzer.loaders.tp_experiment import TpCell

NVLINK_GB_S_PER_LINK = 25  # per direction, NVLink 3 (A100) and 4 (H100/H200): 12 x 25 and 18 x 25 GB/s


def ring_factor(n: int) -> float:
    """Bytes each rank sends per byte of the buffer in a ring all-reduce (nccl-tests' busbw factor)."""
    return 2 * (n - 1) / n


def nvlink_gb_s(topology: str | None) -> tuple[float | None, str]:
    """Per-direction NVLink bandwidth between the GPUs, from ``nvidia-smi topo -m`` (NV<links>)."""
    links = [int(n) for n in re.findall(r"\bNV(\d+)\b", topology or "")]
    if not links:
        return None, "no NVLink in the recorded topology"
    return min(links) * NVLINK_GB_S_PER_LINK, f"NV{min(links)} x {NVLINK_GB_S_PER_LINK} GB/s per direction"


# ---- per cell ----
def measured_forwards(cell: TpCell) -> pl.DataFrame:
    """Forwards (all ranks) that ran only the measured pass's requests, picked by rid, not by time."""
    rids = [q["rid"] for q in cell.result.get("requests", [])]
    if not rids:
        return cell.forwards.clear()
    return cell.forwards.filter(pl.col("rids").list.eval(pl.element().is_in(rids)).list.all())


def cell_figures(cell: TpCell) -> dict:
    """What a cell achieved, from its own requests (by rid) and rank 0's forwards."""
    r = cell.result
    reqs = r.get("requests", [])
    want_out = r.get("output_len")
    complete = sum(1 for q in reqs if want_out is None or q.get("completion_tokens") == want_out)
    mine = measured_forwards(cell).filter(pl.col("rank") == 0)
    decode = mine.filter(pl.col("mode") == "decode")
    reached = decode["batch"].max() if decode.height else None
    steady = decode.filter((pl.col("batch") == reached) & pl.col("gpu_start_ns").is_not_null())
    step = (steady["gpu_end_ns"] - steady["gpu_start_ns"]).median() if steady.height else None
    timed = mine.filter(pl.col("gpu_start_ns").is_not_null())
    gpu_total = (timed["gpu_end_ns"] - timed["gpu_start_ns"]).sum() if timed.height else None
    window = (timed["gpu_end_ns"].max() - timed["gpu_start_ns"].min()) if timed.height else None
    return {"tp": cell.tp, "requests_complete": complete, "requests_wanted": r.get("requested_requests", len(reqs)),
            "batch_wanted": r.get("concurrency"), "batch_reached": reached, "steady_steps": steady.height,
            "decode_step_gpu_ms": step / 1e6 if step is not None else None,
            "gpu_ms_total": gpu_total / 1e6 if gpu_total else None, "wall_ms": r.get("wall_ns", 0) / 1e6,
            "gpu_busy": gpu_total / window if gpu_total and window else None}


def scaling(table: pl.DataFrame, figures: pl.DataFrame) -> pl.DataFrame:
    base = table.filter(pl.col("tp") == table["tp"].min()).row(0, named=True)
    return table.sort("tp").select(
        "tp", pl.col("ttft_ms").round(3), pl.col("itl_ms").round(3), pl.col("output_tok_per_s").round(1),
        (pl.col("output_tok_per_s") / (base["output_tok_per_s"] * pl.col("tp") / base["tp"]) * 100).round(1)
        .alias("scaling_efficiency_pct"),
        (base["ttft_ms"] / pl.col("ttft_ms")).round(2).alias("ttft_speedup"),
        (base["itl_ms"] / pl.col("itl_ms")).round(2).alias("itl_speedup"),
    ).join(figures.select("tp", "batch_wanted", "batch_reached", "decode_step_gpu_ms", "requests_complete",
                          "requests_wanted"), on="tp", how="left")


def plausibility(row: dict, fig: dict) -> list[str]:
    """Why a cell's figures cannot be taken at face value (empty: none found)."""
    flags = []
    if row["scaling_efficiency_pct"] is not None and row["scaling_efficiency_pct"] > 100 and row["tp"] > 1:
        flags.append(f"scaling efficiency {row['scaling_efficiency_pct']:.0f}% > 100%: the smaller TP cell was "
                     "slowed by something else (warm-up, KV pool, batch reached)")
    if fig["requests_complete"] < (fig["requests_wanted"] or 0):
        flags.append(f"only {fig['requests_complete']} of {fig['requests_wanted']} requests completed")
    if fig["batch_wanted"] and fig["batch_reached"] is not None and fig["batch_reached"] < fig["batch_wanted"]:
        flags.append(f"decode batch reached {fig['batch_reached']}, not the {fig['batch_wanted']} asked for")
    if fig["batch_reached"] is None:
        flags.append("no decode forward of this cell's requests in its trace")
    if fig["gpu_ms_total"] and fig["wall_ms"] and fig["gpu_ms_total"] > fig["wall_ms"] * 1.01:
        flags.append(f"GPU time {fig['gpu_ms_total']:.0f} ms > wall time {fig['wall_ms']:.0f} ms")
    if fig["decode_step_gpu_ms"] and row["itl_ms"] and fig["decode_step_gpu_ms"] > row["itl_ms"] * 1.05:
        flags.append(f"decode step GPU time {fig['decode_step_gpu_ms']:.2f} ms > client ITL {row['itl_ms']:.2f} ms")
    return flags


# ---- all-reduce per rank ----
@dataclasses.dataclass
class AllReduce:
    """One TP size's all-reduces in SGLang's profile pass (the pass after the measured one), per rank."""
    calls: pl.DataFrame  # every call: rank, family, times, transfer_ns, wait_ns, forward, mode, tokens
    source: str  # where they were found: GPU kernels or CPU ops
    problem: str | None  # why waiting was not split from transfer (None: it was)
    summary: pl.DataFrame  # per rank, mode and implementation (collectives.per_rank_summary), per layer if known
    families: list[str]  # the implementations seen
    first_call: pl.DataFrame  # per rank, its waiting and the share of it in a forward's first call
    lag_profile: pl.DataFrame  # per rank, CPU launch lag behind the earliest rank (launch_lag), profile pass
    lag_measured: pl.DataFrame  # the same over the measured pass
    profile_busy: dict[int, float | None]  # rank -> share of the profile pass with a kernel running
    skew_profile: pl.DataFrame  # per rank and mode, forward time beyond the quickest rank's (forward_skew)
    skew_measured: pl.DataFrame  # the same over the measured pass


def allreduce(cell: TpCell, model_config: dict | None) -> AllReduce | None:
    """Calls of the profile pass per rank, split into waiting and transfer, joined to forwards."""
    calls, source = collectives.per_rank_calls(cell.profile_kernels, cell.profile_ops)
    if calls.is_empty():
        return None
    calls, problem = collectives.split_wait(calls)
    clock = "gpu" if source == "GPU kernels" else "cpu"
    calls = collectives.assign_forwards(calls, cell.forwards, clock)
    per_token = (model_config or {}).get("hidden_size")
    per_token = per_token * dtype_bytes(model_config) if per_token else None
    summary = collectives.per_rank_summary(calls, per_token, cell.tp)
    profiled = cell.forwards.filter(pl.col("forward").is_in(calls["forward"].drop_nulls().unique().implode()))
    return AllReduce(calls, source, problem, _per_layer(summary, (model_config or {}).get("num_hidden_layers")),
                     sorted(set(calls["family"].to_list())), collectives.first_call_wait_share(calls),
                     launch_lag(profiled), launch_lag(measured_forwards(cell)),
                     {r: collectives.busy_share(k) for r, k in sorted(cell.profile_kernels.items())},
                     collectives.forward_skew(profiled), collectives.forward_skew(measured_forwards(cell)))


def _per_layer(summary: pl.DataFrame, layers: int | None) -> pl.DataFrame:
    """The summary's times per forward also per layer (us), where the model's layer count is known."""
    if not layers:
        return summary
    return summary.with_columns((pl.col("ms_per_forward") / layers * 1e3).round(1).alias("us_per_layer"),
                                (pl.col("wait_ms_per_forward") / layers * 1e3).round(1).alias("wait_us_per_layer"),
                                (pl.col("transfer_ms_per_forward") / layers * 1e3).round(1)
                                .alias("transfer_us_per_layer"))


def launch_lag(forwards: pl.DataFrame) -> pl.DataFrame:
    """Per rank, the median time by which its CPU starts a forward after the earliest rank starts the same
    forward (host clock, shared by the ranks of one host)."""
    if forwards.is_empty():
        return pl.DataFrame()
    return (forwards.with_columns(lag=pl.col("cpu_start_ns") - pl.col("cpu_start_ns").min().over("forward"))
            .group_by("rank").agg(cpu_lag_us=pl.col("lag").median() / 1e3).sort("rank"))
