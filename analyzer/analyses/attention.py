"""Experiment 5, attention deep-dive: one row of canonical figures per profiled kernel, from any ncu form.

Each canonical field is looked up by raw metric name first (raw page, .ncu-rep, command-line
metrics), then by the details page / console name. Units are normalized (ns, bytes, bytes/s, %).
A field nobody collected stays null and is reported as not collected.
"""
from __future__ import annotations

import re

import polars as pl

_TIME = {"ns": 1, "nsecond": 1, "us": 1e3, "usecond": 1e3, "ms": 1e6, "msecond": 1e6, "s": 1e9, "second": 1e9}
_BYTES = {"byte": 1, "Kbyte": 1e3, "Mbyte": 1e6, "Gbyte": 1e9, "Tbyte": 1e12, "KB": 1e3, "MB": 1e6, "GB": 1e9}

# field -> (raw metric names, human metric names, kind)
FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...], str]] = {
    "duration_ns": (("gpu__time_duration.sum",), ("Duration",), "time"),
    "sm_throughput_pct": (("sm__throughput.avg.pct_of_peak_sustained_elapsed",), ("Compute (SM) Throughput",), "pct"),
    "memory_throughput_pct": (("gpu__compute_memory_throughput.avg.pct_of_peak_sustained_elapsed",),
                              ("Memory Throughput",), "pct"),
    "dram_throughput_pct": (("gpu__dram_throughput.avg.pct_of_peak_sustained_elapsed",
                             "dram__throughput.avg.pct_of_peak_sustained_elapsed"), ("DRAM Throughput",), "pct"),
    "dram_bandwidth_Bps": (("dram__bytes.sum.per_second",), ("Memory Throughput",), "rate"),
    "dram_bytes": (("dram__bytes.sum",), (), "bytes"),
    "dram_read_bytes": (("dram__bytes_read.sum",), (), "bytes"),
    "dram_write_bytes": (("dram__bytes_write.sum",), (), "bytes"),
    "l2_hit_pct": (("lts__t_sector_hit_rate.pct",), ("L2 Hit Rate",), "pct"),
    "l1_hit_pct": (("l1tex__t_sector_hit_rate.pct",), ("L1/TEX Hit Rate",), "pct"),
    "theoretical_occupancy_pct": (("sm__maximum_warps_per_active_cycle_pct",), ("Theoretical Occupancy",), "pct"),
    "achieved_occupancy_pct": (("sm__warps_active.avg.pct_of_peak_sustained_active",), ("Achieved Occupancy",), "pct"),
    "waves_per_sm": (("launch__waves_per_multiprocessor",), ("Waves Per SM",), "plain"),
    "registers_per_thread": (("launch__registers_per_thread",), ("Registers Per Thread",), "plain"),
    "shared_dynamic_bytes": (("launch__shared_mem_per_block_dynamic",), ("Dynamic Shared Memory Per Block",), "bytes"),
    "shared_static_bytes": (("launch__shared_mem_per_block_static",), ("Static Shared Memory Per Block",), "bytes"),
    "block_size": (("launch__block_size",), ("Block Size",), "plain"),
    "grid_size": (("launch__grid_size",), ("Grid Size",), "plain"),
    "limit_registers": (("launch__occupancy_limit_registers",), ("Block Limit Registers",), "plain"),
    "limit_shared_mem": (("launch__occupancy_limit_shared_mem",), ("Block Limit Shared Mem",), "plain"),
    "limit_warps": (("launch__occupancy_limit_warps",), ("Block Limit Warps",), "plain"),
    "limit_blocks": (("launch__occupancy_limit_blocks",), ("Block Limit SM",), "plain"),
    "tensor_pct": (("sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_active",
                    "sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active",
                    "sm__inst_executed_pipe_tensor.avg.pct_of_peak_sustained_active"), (), "pct"),
    "fp32_pct": (("sm__pipe_fma_cycles_active.avg.pct_of_peak_sustained_active",
                  "sm__inst_executed_pipe_fma.avg.pct_of_peak_sustained_active"), (), "pct"),
    "shared_bank_conflicts": (("l1tex__data_bank_conflicts_pipe_lsu_mem_shared.sum",), (), "plain"),
    "global_load_efficiency_pct": (("smsp__sass_average_data_bytes_per_sector_mem_global_op_ld.pct",), (), "pct"),
    "global_store_efficiency_pct": (("smsp__sass_average_data_bytes_per_sector_mem_global_op_st.pct",), (), "pct"),
    "ffma": (("smsp__sass_thread_inst_executed_op_ffma_pred_on.sum", "sm__sass_thread_inst_executed_op_ffma_pred_on.sum"),
             (), "plain"),
    "fadd": (("smsp__sass_thread_inst_executed_op_fadd_pred_on.sum", "sm__sass_thread_inst_executed_op_fadd_pred_on.sum"),
             (), "plain"),
    "fmul": (("smsp__sass_thread_inst_executed_op_fmul_pred_on.sum", "sm__sass_thread_inst_executed_op_fmul_pred_on.sum"),
             (), "plain"),
    "hfma": (("smsp__sass_thread_inst_executed_op_hfma_pred_on.sum", "sm__sass_thread_inst_executed_op_hfma_pred_on.sum"),
             (), "plain"),
    # the full set's roofline inputs: FP32 rates per elapsed cycle, tensor ops, and the peaks ncu measures against
    "fadd_per_cycle": (("smsp__sass_thread_inst_executed_op_fadd_pred_on.sum.per_cycle_elapsed",), (), "plain"),
    "fmul_per_cycle": (("smsp__sass_thread_inst_executed_op_fmul_pred_on.sum.per_cycle_elapsed",), (), "plain"),
    "ffma_per_cycle": (("smsp__sass_thread_inst_executed_op_ffma_pred_on.sum.per_cycle_elapsed",), (), "plain"),
    "sm_cycles": (("sm__cycles_elapsed.avg",), (), "plain"),
    "sm_clock_hz": (("sm__cycles_elapsed.avg.per_second",), (), "freq"),
    "tensor_fp16": (("sm__ops_path_tensor_src_fp16.sum",), (), "plain"),
    "tensor_bf16": (("sm__ops_path_tensor_src_bf16_dst_fp32.sum",), (), "plain"),
    "tensor_tf32": (("sm__ops_path_tensor_src_tf32_dst_fp32.sum",), (), "plain"),
    "tensor_fp8": (("sm__ops_path_tensor_src_fp8_sparsity_off.sum",), (), "plain"),
    "tensor_peak_per_cycle": (("sm__ops_path_tensor_src_fp16.sum.peak_sustained",), (), "plain"),
    "dram_peak_bytes_per_cycle": (("dram__bytes.sum.peak_sustained",), (), "bytes"),
    "dram_clock_hz": (("dram__cycles_elapsed.avg.per_second",), (), "freq"),
}
_HZ = {"hz": 1.0, "khz": 1e3, "mhz": 1e6, "ghz": 1e9, "cycle/second": 1.0, "cycle/nsecond": 1e9,
       "cycle/usecond": 1e6}
STALL_RAW = re.compile(r"^smsp__average_warp_latency_issue_stalled_(\w+)\.ratio$|"
                       r"^smsp__average_warps_issue_stalled_(\w+)_per_issue_active\.ratio$")
STALL_MEANING = {
    "long_scoreboard": "waiting on global/local memory (L1TEX) results: memory-latency bound",
    "short_scoreboard": "waiting on shared memory or MUFU results: shared-memory or special-function bound",
    "barrier": "waiting at __syncthreads: unbalanced work between warps of a block",
    "mio_throttle": "memory-input/output queue full: too many shared-memory or special instructions",
    "lg_throttle": "local/global memory queue full: too many small memory instructions",
    "math_pipe_throttle": "math pipe busy: compute bound on that pipe",
    "wait": "fixed-latency dependency: short instruction chains, little ILP",
    "not_selected": "eligible but another warp was picked: enough parallelism",
    "selected": "issuing: the warp did useful work",
    "dispatch_stall": "dispatcher stall: pipeline conflicts",
    "drain": "waiting for memory stores to drain at exit",
    "imc_miss": "immediate constant cache miss",
    "branch_resolving": "waiting for branch target computation",
    "no_instruction": "instruction cache miss or no instruction fetched",
    "membar": "waiting on a memory barrier",
    "sleeping": "warp sleeping (nanosleep or yield)",
    "tex_throttle": "texture queue full",
    "misc": "miscellaneous hardware reasons",
}


def _normalize(value: float | None, unit: str, kind: str) -> float | None:
    if value is None:
        return None
    unit = (unit or "").strip()
    if kind == "time":
        return value * _TIME.get(unit, 1)
    if kind == "bytes":
        return value * _BYTES.get(unit.split("/")[0], 1)
    if kind == "rate":
        base = unit.split("/")[0] if "/" in unit else None
        return value * _BYTES[base] if base in _BYTES else None
    if kind == "freq":
        return value * _HZ[unit.lower()] if unit.lower() in _HZ else None
    return value


def _unit_ok(kind: str, unit: str) -> bool:
    """Human names are ambiguous ('Memory Throughput' is a % and a byte/s); the unit decides."""
    unit = (unit or "").strip()
    if kind == "pct":
        return unit == "%"
    if kind == "rate":
        return "/s" in unit
    return True


def kernel_metrics(long: pl.DataFrame) -> pl.DataFrame:
    """One row per (kernel_id, kernel_name) with every canonical field (null when not collected),
    plus flop, arithmetic_intensity, occupancy_limiter and the launch block/grid."""
    rows = []
    for (kid, name), g in long.group_by(["kernel_id", "kernel_name"], maintain_order=True):
        by_metric = {}
        for metric, unit, value in g.select("metric", "unit", "value").iter_rows():
            by_metric.setdefault(metric, (unit, value))
        row = {"kernel_id": kid, "kernel_name": name,
               "block": g["block"].drop_nulls().first() if g["block"].drop_nulls().len() else None,
               "grid": g["grid"].drop_nulls().first() if g["grid"].drop_nulls().len() else None}
        for field, (raw, human, kind) in FIELDS.items():
            value = None
            for m in raw:
                if m in by_metric:
                    value = _normalize(by_metric[m][1], by_metric[m][0], kind)
                    break
            if value is None:
                for m in human:
                    if m in by_metric and _unit_ok(kind, by_metric[m][0]):
                        value = _normalize(by_metric[m][1], by_metric[m][0], kind)
                        break
            row[field] = value
        rows.append(row)
    df = pl.DataFrame(rows, infer_schema_length=None)
    limits = ["limit_registers", "limit_shared_mem", "limit_warps", "limit_blocks"]
    return roofline(df).with_columns(
        pl.when(pl.any_horizontal([pl.col(c).is_not_null() for c in limits]))
        .then(pl.concat_list(limits).list.arg_min().replace_strict(
            list(range(4)), ["registers", "shared memory", "warps", "blocks per SM"], default=None))
        .otherwise(None).alias("occupancy_limiter"),
        classify_phase(pl.col("kernel_name")).alias("phase"),
    )


def roofline(df: pl.DataFrame) -> pl.DataFrame:
    """FLOPs (tensor ops + FP32/FP16 FMA-counted), arithmetic intensity over DRAM bytes, and the kernel's
    place on ncu's roofline: the ridge point from ncu's own FP16 tensor and DRAM peaks, the bound
    side, and achieved FLOP/s as a share of the roof at that intensity."""
    c = pl.col
    counted = 2 * c("ffma").fill_null(0) + c("fadd").fill_null(0) + c("fmul").fill_null(0) + 2 * c("hfma").fill_null(0)
    from_rates = ((2 * c("ffma_per_cycle").fill_null(0) + c("fadd_per_cycle").fill_null(0)
                   + c("fmul_per_cycle").fill_null(0)) * c("sm_cycles"))
    fp32 = (pl.when(c("ffma").is_not_null() | c("hfma").is_not_null()).then(counted)
            .when(c("ffma_per_cycle").is_not_null() & c("sm_cycles").is_not_null()).then(from_rates))
    tensor_cols = ["tensor_fp16", "tensor_bf16", "tensor_tf32", "tensor_fp8"]
    tensor = pl.when(pl.any_horizontal([c(t).is_not_null() for t in tensor_cols])).then(
        pl.sum_horizontal([c(t).fill_null(0) for t in tensor_cols]))
    df = df.with_columns(fp32.alias("flop_non_tensor"), tensor.alias("flop_tensor"))
    flop = pl.when(c("flop_tensor").is_not_null() | c("flop_non_tensor").is_not_null()).then(
        c("flop_tensor").fill_null(0) + c("flop_non_tensor").fill_null(0))
    df = df.with_columns(flop.alias("flop"),
                         pl.coalesce(c("dram_bytes"), c("dram_read_bytes") + c("dram_write_bytes")).alias("dram_bytes"))
    df = df.with_columns(
        pl.when(c("dram_bytes") > 0).then(c("flop") / c("dram_bytes")).alias("arith_intensity_flop_per_byte"),
        (c("flop") / (c("duration_ns") / 1e9)).alias("achieved_flop_per_s"),
        (c("tensor_peak_per_cycle") * c("sm_clock_hz")).alias("peak_flop_per_s"),
        (c("dram_peak_bytes_per_cycle") * c("dram_clock_hz")).alias("peak_dram_Bps"))
    ridge = c("peak_flop_per_s") / c("peak_dram_Bps")
    roof = pl.min_horizontal(c("peak_flop_per_s"), c("arith_intensity_flop_per_byte") * c("peak_dram_Bps"))
    return df.with_columns(
        ridge.alias("ridge_flop_per_byte"),
        pl.when(c("arith_intensity_flop_per_byte") < ridge).then(pl.lit("memory"))
        .when(c("arith_intensity_flop_per_byte") >= ridge).then(pl.lit("compute")).alias("roofline_side"),
        (c("achieved_flop_per_s") / roof * 100).alias("pct_of_roof"))


def classify_phase(name: pl.Expr) -> pl.Expr:
    """prefill or decode from the kernel name, where the name says it (triton and flashinfer kernels)."""
    lower = name.str.to_lowercase()
    return (pl.when(lower.str.contains("decode|stage1|stage2|splitkv")).then(pl.lit("decode"))
            .when(lower.str.contains("prefill|extend|_fwd_kernel$|fwd_kernel")).then(pl.lit("prefill"))
            .otherwise(pl.lit("unknown")))


def warp_stalls(long: pl.DataFrame) -> pl.DataFrame:
    """Per kernel and stall reason: cycles per issued instruction spent stalled, share, meaning."""
    rows = []
    for kid, name, metric, value in long.select("kernel_id", "kernel_name", "metric", "value").iter_rows():
        m = STALL_RAW.match(metric or "")
        if m and value is not None:
            reason = m.group(1) or m.group(2)
            rows.append((kid, name, reason, value))
    if not rows:
        return pl.DataFrame(schema={"kernel_id": pl.Int64, "kernel_name": pl.String, "reason": pl.String,
                                    "cycles": pl.Float64, "share_pct": pl.Float64, "meaning": pl.String})
    df = pl.DataFrame(rows, schema=["kernel_id", "kernel_name", "reason", "cycles"], orient="row")
    df = df.group_by("kernel_id", "kernel_name", "reason").agg(pl.col("cycles").max())
    return (df.with_columns((pl.col("cycles") / pl.col("cycles").sum().over("kernel_id") * 100).alias("share_pct"),
                            pl.col("reason").replace_strict(STALL_MEANING, default="").alias("meaning"))
            .sort(["kernel_id", "cycles"], descending=[False, True]))


def phase_comparison(metrics: pl.DataFrame) -> pl.DataFrame:
    """Mean of the key figures for prefill vs decode kernels."""
    keys = ["duration_ns", "sm_throughput_pct", "dram_throughput_pct", "achieved_occupancy_pct", "l2_hit_pct",
            "tensor_pct", "arith_intensity_flop_per_byte", "pct_of_roof"]
    present = [k for k in keys if k in metrics.columns]
    return metrics.group_by("phase").agg(pl.len().alias("kernels"), *[pl.col(k).mean() for k in present]).sort("phase")


def build_report(model):
    from sglang_tracing.analyzer.report import Report

    report = Report("attention", "Attention deep-dive (experiment 5)")
    if model.ncu is None or model.ncu.is_empty():
        report.section("No Nsight Compute data").add("kernels", None, "pass --ncu with a details/raw CSV, "
                                                      "console text or .ncu-rep")
        return report
    metrics = kernel_metrics(model.ncu)
    groups = {
        "Launch configuration": ["grid", "block", "grid_size", "block_size", "registers_per_thread",
                                 "shared_dynamic_bytes", "shared_static_bytes"],
        "Occupancy": ["theoretical_occupancy_pct", "achieved_occupancy_pct", "occupancy_limiter", "waves_per_sm"],
        "Compute": ["sm_throughput_pct", "tensor_pct", "fp32_pct", "flop_tensor", "flop_non_tensor"],
        "Roofline": ["arith_intensity_flop_per_byte", "ridge_flop_per_byte", "roofline_side", "achieved_flop_per_s",
                     "pct_of_roof"],
        "Memory": ["dram_bandwidth_Bps", "dram_throughput_pct", "memory_throughput_pct", "l2_hit_pct", "l1_hit_pct",
                   "shared_bank_conflicts", "global_load_efficiency_pct", "global_store_efficiency_pct"],
    }
    for row in metrics.iter_rows(named=True):
        sec = report.section(f"Kernel {row['kernel_id']}: {row['kernel_name'][:100]} ({row['phase']})")
        sec.add("duration", f"{row['duration_ns'] / 1e3:.2f} us" if row["duration_ns"] is not None else None, "ncu")
        for title, fields in groups.items():
            child = sec.child(title)
            for f in fields:
                v = row.get(f)
                if v is None:
                    child.add(f, None, "not collected")
                elif isinstance(v, float):
                    text = (f"{v / 1e9:.1f} GB/s" if f == "dram_bandwidth_Bps" else
                            f"{v / 1e12:.1f} TFLOP/s" if f == "achieved_flop_per_s" else f"{v:,.2f}")
                    child.add(f, text, "")
                else:
                    child.add(f, str(v), "")
    stalls = warp_stalls(model.ncu)
    st = report.section("Warp stalls")
    if stalls.height:
        top = stalls.sort("cycles", descending=True).group_by("kernel_id", maintain_order=True).head(3)
        st.table = top.select("kernel_id", "reason", pl.col("cycles").round(2), pl.col("share_pct").round(1), "meaning")
        for kid, g in top.group_by("kernel_id", maintain_order=True):
            r = g.row(0, named=True)
            st.add(f"kernel {kid[0]} dominant stall", f"{r['reason']} ({r['share_pct']:.0f}%)", r["meaning"])
    else:
        st.add("stall breakdown", None, "not collected (needs the WarpStateStats section or raw page)")
    cmp = report.section("Prefill vs decode")
    cmp.table = phase_comparison(metrics).with_columns(pl.selectors.float().round(2))
    return report
