"""Experiment 5, attention deep-dive: one section of canonical figures per profiled kernel, from any ncu
form (figures in ``ncu_metrics``), warp stalls, ncu's own hints ranked by its estimated speedup, and
prefill vs decode where the kernel names say which is which."""
from __future__ import annotations

import dataclasses

import polars as pl

from sglang_tracing.analyzer.analyses.ncu_metrics import kernel_metrics, phase_comparison, ranked_hints
from sglang_tracing.analyzer.analyses.ncu_stalls import warp_stalls
from sglang_tracing.analyzer.report import Report, Section

GROUPS = {
    "Launch configuration": ["grid", "block", "grid_size", "block_size", "registers_per_thread",
                             "shared_dynamic_bytes", "shared_static_bytes"],
    "Occupancy": ["theoretical_occupancy_pct", "achieved_occupancy_pct", "occupancy_limiter", "waves_per_sm"],
    "Compute": ["sm_throughput_pct", "tensor_pct", "fp32_pct", "flop_tensor", "flop_non_tensor"],
    "Roofline": ["arith_intensity_flop_per_byte", "ridge_flop_per_byte", "roofline_side", "achieved_flop_per_s",
                 "pct_of_roof", "tensor_flop_per_byte", "tensor_flop_per_s"],
    "Memory": ["dram_bandwidth_Bps", "dram_throughput_pct", "memory_throughput_pct", "l2_hit_pct", "l1_hit_pct",
               "shared_bank_conflicts", "global_load_efficiency_pct", "global_store_efficiency_pct"],
    "Warp state and scheduler": ["warp_cycles_per_issued", "active_threads_per_warp", "active_warps_per_scheduler",
                                 "eligible_warps_per_scheduler", "no_eligible_pct"],
}
_FLOP_FIELDS = {"flop_tensor", "flop_non_tensor", "arith_intensity_flop_per_byte", "achieved_flop_per_s",
                "pct_of_roof", "roofline_side"}


def _format(field: str, v) -> str:
    if isinstance(v, float):
        if field == "dram_bandwidth_Bps":
            return f"{v / 1e9:.1f} GB/s"
        if field in ("achieved_flop_per_s", "tensor_flop_per_s"):
            return f"{v / 1e12:.2f} TFLOP/s"
        return f"{int(v):,}" if v.is_integer() else f"{v:,.2f}"
    return str(v)


def _missing_why(field: str, row: dict) -> str:
    if field in ("tensor_flop_per_byte", "tensor_flop_per_s"):
        return f"unknown: {row.get('flop_tensor_unknown_why') or 'no DRAM bytes or duration'}"
    if field in ("flop_tensor", "flop_non_tensor") and row.get(f"{field}_unknown_why"):
        return f"unknown: {row[f'{field}_unknown_why']}"
    if field in _FLOP_FIELDS and row.get("flop") is None and row.get("flop_unknown_why"):
        return f"unknown: {row['flop_unknown_why']}"
    if field in ("roofline_side", "pct_of_roof", "ridge_flop_per_byte"):
        return "needs ncu's peaks (sm__ops_path_tensor_src_fp16.sum.peak_sustained, dram__bytes.sum.peak_sustained)"
    if field == "occupancy_limiter" and (row.get("theoretical_occupancy_pct") or 0) >= 100:
        return "none: theoretical occupancy is 100%"
    return "not collected"


def _source(field: str, row: dict) -> str:
    """Where a figure the report prints comes from, when not straight from one ncu metric."""
    if field in ("tensor_flop_per_byte", "tensor_flop_per_s"):
        return "tensor FLOPs only" + ("" if row.get("flop_non_tensor") is not None else
                                      f" ({row.get('flop_non_tensor_unknown_why')})")
    return row.get(f"{field}_source") or ""


def _kernel_section(report: Report, row: dict) -> None:
    phase = "" if row["phase"] == "unknown" else f" ({row['phase']})"
    sec = report.section(f"Kernel {row['kernel_id']}: {row['kernel_name']}{phase}")
    if row["duration_ns"] is not None:
        sec.add("duration", f"{row['duration_ns'] / 1e3:.2f} us", f"ncu {row['duration_source']}")
    else:
        sec.add("duration", None, "neither gpu__time_duration nor sm__cycles_elapsed.avg with its rate collected")
    for title, fields in GROUPS.items():
        child = sec.child(title)
        for f in fields:
            v = row.get(f)
            child.add(f, None if v is None else _format(f, v), _missing_why(f, row) if v is None else _source(f, row))


def _stalls(report: Report, stalls: pl.DataFrame) -> None:
    st = report.section("Warp stalls")
    if stalls.is_empty():
        st.add("stall breakdown", None, "not collected (needs the WarpStateStats section, its rule text or the raw page)")
        return
    top = stalls.sort("cycles", descending=True).group_by("kernel_id", maintain_order=True).head(3).sort("kernel_id")
    st.table = top.select("kernel_id", "reason", pl.col("cycles").round(2), pl.col("share_pct").round(1), "meaning")
    for (kid,), g in top.group_by("kernel_id", maintain_order=True):
        r = g.row(0, named=True)
        st.add(f"kernel {kid} dominant stall", f"{r['reason']} ({r['share_pct']:.1f}%)",
               f"{r['meaning']} [{r['source']}]" if r["meaning"] else r["source"])


def _hints(report: Report, hints: pl.DataFrame) -> None:
    sec = report.section("ncu's hints, ranked by estimated speedup")
    if hints.is_empty():
        sec.add("hints", None, "the profile has no rule results (details page or console output carry them)")
        return
    sec.table = hints.with_columns(pl.col("speedup_pct").round(1))
    best = hints.row(0, named=True)
    if best["speedup_pct"] is not None:
        sec.add("largest", f"{best['speedup_pct']:.1f}% ({best['speedup_type'] or 'global'}) on kernel "
                           f"{best['kernel_id']}", f"{best['section']}: {best['text'][:160]}")
    sec.add("meaning", "ncu's own estimate of the kernel time a fix would save",
            "local: of the part of the kernel the rule looks at; global: of the whole kernel")


def _phases(report: Report, metrics: pl.DataFrame) -> None:
    sec: Section = report.section("Prefill vs decode")
    known = metrics.filter(pl.col("phase") != "unknown")
    if known.is_empty():
        sec.add("phase", None, "unknown: no kernel name says prefill or decode (FlashInfer Prefill*/Decode*, "
                               "SGLang triton _fwd_kernel / _fwd_kernel_stage1/2)")
        return
    sec.table = phase_comparison(metrics).with_columns(pl.selectors.float().round(2))
    if known.height < metrics.height:
        sec.add("kernels of unknown phase", str(metrics.height - known.height), "left out of the comparison")


@dataclasses.dataclass
class Attention:
    """Every figure of the attention deep-dive; ``metrics`` is None when the trace has no ncu data."""
    metrics: pl.DataFrame | None  # one row per profiled kernel (ncu_metrics.kernel_metrics)
    hints: pl.DataFrame  # ncu's rule results, largest estimated speedup first (ranked_hints)
    stalls: pl.DataFrame  # warp stall reasons per kernel (warp_stalls)


def compute(model) -> Attention:
    if model.ncu is None or model.ncu.is_empty():
        return Attention(None, pl.DataFrame(), pl.DataFrame())
    return Attention(kernel_metrics(model.ncu), ranked_hints(model.ncu_rules), warp_stalls(model.ncu, model.ncu_rules))


def build_report(model) -> Report:
    return describe(compute(model))


def describe(result: Attention) -> Report:
    report = Report("attention", "Attention deep-dive (experiment 5)")
    if result.metrics is None:
        report.section("No Nsight Compute data").add("kernels", None, "pass --ncu with a details/raw CSV, "
                                                      "console text or .ncu-rep")
        return report
    if not result.hints.is_empty():
        _hints(report, result.hints)
    for row in result.metrics.iter_rows(named=True):
        _kernel_section(report, row)
    _stalls(report, result.stalls)
    if result.hints.is_empty():
        _hints(report, result.hints)
    _phases(report, result.metrics)
    return report
