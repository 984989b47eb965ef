"""Canonical per-kernel figures from any ncu form and its rule hints (warp stalls: ncu_stalls).

Each canonical field is looked up by raw metric name first (raw page, .ncu-rep, command-line
metrics), then by the details page / console name, optionally pinned to a section. The same human
name can mean different things in different sections ('Memory Throughput' is a % of peak in GPU
Speed Of Light and bytes/s of DRAM in Memory Workload Analysis), so a metric is matched on
(section, name, unit). Units are normalized (ns, bytes, bytes/s, Hz, %). A field nobody collected
stays null; a field ncu printed as 'n/a' is null too and remembered, so totals built from it are
unknown rather than short.
"""
from __future__ import annotations

import polars as pl

_TIME = {"ns": 1, "nsecond": 1, "us": 1e3, "usecond": 1e3, "ms": 1e6, "msecond": 1e6, "s": 1e9, "second": 1e9}
_BYTES = {"byte": 1, "Kbyte": 1e3, "Mbyte": 1e6, "Gbyte": 1e9, "Tbyte": 1e12, "KB": 1e3, "MB": 1e6, "GB": 1e9,
          "TB": 1e12}
_HZ = {"hz": 1.0, "khz": 1e3, "mhz": 1e6, "ghz": 1e9, "cycle/second": 1.0, "cycle/nsecond": 1e9,
       "cycle/usecond": 1e6}
SOL = "GPU Speed Of Light Throughput"
MWA = "Memory Workload Analysis"

# field -> (raw metric names, human names (a name, or (section, name)), kind)
FIELDS: dict[str, tuple[tuple[str, ...], tuple, str]] = {
    "duration_ns": (("gpu__time_duration.sum",), ("Duration",), "time"),
    "sm_throughput_pct": (("sm__throughput.avg.pct_of_peak_sustained_elapsed",), ("Compute (SM) Throughput",), "pct"),
    "memory_throughput_pct": (("gpu__compute_memory_throughput.avg.pct_of_peak_sustained_elapsed",),
                              ((SOL, "Memory Throughput"),), "pct"),
    "dram_throughput_pct": (("gpu__dram_throughput.avg.pct_of_peak_sustained_elapsed",
                             "dram__throughput.avg.pct_of_peak_sustained_elapsed"), ("DRAM Throughput",), "pct"),
    "dram_bandwidth_Bps": (("dram__bytes.sum.per_second",), ((MWA, "Memory Throughput"),), "rate"),
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
    "limit_barriers": (("launch__occupancy_limit_barriers",), ("Block Limit Barriers",), "plain"),
    # Warp State and Scheduler Statistics
    "warp_cycles_per_issued": (("smsp__average_warp_latency_per_inst_issued.ratio",),
                               ("Warp Cycles Per Issued Instruction",), "plain"),
    "active_threads_per_warp": (("smsp__thread_inst_executed_per_inst_executed.ratio",),
                                ("Avg. Active Threads Per Warp",), "plain"),
    "active_warps_per_scheduler": (("smsp__warps_active.avg.per_cycle_active",), ("Active Warps Per Scheduler",),
                                   "plain"),
    "eligible_warps_per_scheduler": (("smsp__warps_eligible.avg.per_cycle_active",),
                                     ("Eligible Warps Per Scheduler",), "plain"),
    "no_eligible_pct": (("smsp__issue_inst0.avg.pct_of_peak_sustained_active",), ("No Eligible",), "pct"),
    "tensor_pct": (("sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_active",
                    "sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active",
                    "sm__inst_executed_pipe_tensor.avg.pct_of_peak_sustained_active"), (), "pct"),
    "fp32_pct": (("sm__pipe_fma_cycles_active.avg.pct_of_peak_sustained_active",
                  "sm__inst_executed_pipe_fma.avg.pct_of_peak_sustained_active"), (), "pct"),
    "shared_bank_conflicts": (("l1tex__data_bank_conflicts_pipe_lsu_mem_shared.sum",), (), "plain"),
    "global_load_efficiency_pct": (("smsp__sass_average_data_bytes_per_sector_mem_global_op_ld.pct",), (), "pct"),
    "global_store_efficiency_pct": (("smsp__sass_average_data_bytes_per_sector_mem_global_op_st.pct",), (), "pct"),
    # FLOP inputs: instruction counts, rates per elapsed cycle, nvprof-style counts, tensor ops
    "ffma": (("smsp__sass_thread_inst_executed_op_ffma_pred_on.sum", "sm__sass_thread_inst_executed_op_ffma_pred_on.sum"),
             (), "plain"),
    "fadd": (("smsp__sass_thread_inst_executed_op_fadd_pred_on.sum", "sm__sass_thread_inst_executed_op_fadd_pred_on.sum"),
             (), "plain"),
    "fmul": (("smsp__sass_thread_inst_executed_op_fmul_pred_on.sum", "sm__sass_thread_inst_executed_op_fmul_pred_on.sum"),
             (), "plain"),
    "hfma": (("smsp__sass_thread_inst_executed_op_hfma_pred_on.sum", "sm__sass_thread_inst_executed_op_hfma_pred_on.sum"),
             (), "plain"),
    "fadd_per_cycle": (("smsp__sass_thread_inst_executed_op_fadd_pred_on.sum.per_cycle_elapsed",), (), "plain"),
    "fmul_per_cycle": (("smsp__sass_thread_inst_executed_op_fmul_pred_on.sum.per_cycle_elapsed",), (), "plain"),
    "ffma_per_cycle": (("smsp__sass_thread_inst_executed_op_ffma_pred_on.sum.per_cycle_elapsed",), (), "plain"),
    "flop_count_sp": (("flop_count_sp.sum", "flop_count_sp"), (), "plain"),
    "flop_count_hp": (("flop_count_hp.sum", "flop_count_hp"), (), "plain"),
    "sm_cycles": (("sm__cycles_elapsed.avg",), (), "plain"),
    "sm_clock_hz": (("sm__cycles_elapsed.avg.per_second",), (), "freq"),
    "tensor_fp16": (("sm__ops_path_tensor_src_fp16.sum",), (), "plain"),
    "tensor_bf16": (("sm__ops_path_tensor_src_bf16_dst_fp32.sum",), (), "plain"),
    "tensor_bf16_bf16": (("sm__ops_path_tensor_src_bf16_dst_bf16.sum",), (), "plain"),
    "tensor_tf32": (("sm__ops_path_tensor_src_tf32_dst_fp32.sum",), (), "plain"),
    "tensor_fp8": (("sm__ops_path_tensor_src_fp8_sparsity_off.sum",), (), "plain"),
    "tensor_peak_per_cycle": (("sm__ops_path_tensor_src_fp16.sum.peak_sustained",), (), "plain"),
    "dram_peak_bytes_per_cycle": (("dram__bytes.sum.peak_sustained",), (), "bytes"),
    "dram_clock_hz": (("dram__cycles_elapsed.avg.per_second",), (), "freq"),
}
TENSOR_FIELDS = ("tensor_fp16", "tensor_bf16", "tensor_bf16_bf16", "tensor_tf32", "tensor_fp8")
NON_TENSOR_FIELDS = ("ffma", "fadd", "fmul", "hfma", "fadd_per_cycle", "fmul_per_cycle", "ffma_per_cycle",
                     "flop_count_sp", "flop_count_hp")
LIMITS = {"limit_registers": "registers", "limit_shared_mem": "shared memory", "limit_warps": "warps",
          "limit_blocks": "blocks per SM", "limit_barriers": "barriers"}

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
    unit = (unit or "").strip()
    if kind == "pct":
        return unit == "%"
    if kind == "rate":
        return "/s" in unit
    if kind == "time":
        return unit in _TIME
    return True


def _lookup(entries: dict, raw: tuple, human: tuple, kind: str) -> tuple[float | None, str | None]:
    """(value, name of a matching metric ncu printed as n/a)."""
    na = None
    candidates = [(None, m) for m in raw] + [h if isinstance(h, tuple) else (None, h) for h in human]
    for section, metric in candidates:
        for sec, unit, value, text in entries.get(metric, ()):
            if (section is not None and sec != section) or not _unit_ok(kind, unit):
                continue
            if value is None:
                if (text or "").strip().lower() == "n/a":
                    na = na or metric
                continue
            return _normalize(value, unit, kind), None
    return None, na


def occupancy_limiter(row: dict) -> str | None:
    """What caps theoretical occupancy: the block limit(s) with the fewest blocks, ties named together;
    nothing when theoretical occupancy is already 100%."""
    theoretical = row.get("theoretical_occupancy_pct")
    if theoretical is not None and theoretical >= 100:
        return None
    limits = {label: row.get(f) for f, label in LIMITS.items() if row.get(f) is not None}
    if not limits:
        return None
    low = min(limits.values())
    return " = ".join(label for label, v in limits.items() if v == low)


def kernel_metrics(long: pl.DataFrame) -> pl.DataFrame:
    """One row per (kernel_id, kernel_name) with every canonical field (null when not collected), the
    duration and where it came from, FLOPs and the roofline, the occupancy limiter, the phase, and
    ``na_inputs`` (fields ncu printed as n/a)."""
    rows = []
    for (kid, name), g in long.group_by(["kernel_id", "kernel_name"], maintain_order=True):
        entries: dict[str, list] = {}
        for section, metric, unit, value, text in g.select("section", "metric", "unit", "value", "text").iter_rows():
            entries.setdefault(metric, []).append((section, unit, value, text))
        row = {"kernel_id": kid, "kernel_name": name,
               "block": g["block"].drop_nulls().first() if g["block"].drop_nulls().len() else None,
               "grid": g["grid"].drop_nulls().first() if g["grid"].drop_nulls().len() else None}
        na = []
        for field, (raw, human, kind) in FIELDS.items():
            row[field], missing = _lookup(entries, raw, human, kind)
            if missing:
                na.append(field)
        row["duration_source"] = "gpu__time_duration" if row["duration_ns"] is not None else None
        if row["duration_ns"] is None and row["sm_cycles"] and row["sm_clock_hz"]:
            row["duration_ns"] = row["sm_cycles"] / row["sm_clock_hz"] * 1e9
            row["duration_source"] = "sm__cycles_elapsed.avg / sm__cycles_elapsed.avg.per_second"
        _derived(row)
        row["occupancy_limiter"] = occupancy_limiter(row)
        row["na_inputs"] = ", ".join(na) or None
        rows.append(row)
    df = pl.DataFrame(rows, infer_schema_length=None)
    return roofline(df).with_columns(classify_phase(pl.col("kernel_name")).alias("phase"))


def _measured(row: dict, fields: tuple[str, ...], na: set[str]) -> tuple[float | None, list[str], list[str]]:
    """(sum of the fields measured, or None when none was; raw names of those ncu printed n/a; of those used)."""
    used = [f for f in fields if row.get(f) is not None]
    return (sum(row[f] for f in used) if used else None, [FIELDS[f][0][0] for f in fields if f in na],
            [FIELDS[f][0][0] for f in used])


def _part(kind: str, value: float | None, na: list[str], used: list[str]) -> tuple[float | None, str, str]:
    """(value, why unknown, where a known value comes from) of one FLOP part."""
    if value is None:
        return None, (f"{kind} n/a in the profile ({', '.join(na)})" if na else f"{kind} not collected"), ""
    return value, "", f"sum of {', '.join(used)}" + (f"; n/a, so not in the sum: {', '.join(na)}" if na else "")


def _flops(row: dict) -> tuple[tuple, tuple]:
    """(tensor, non-tensor) FLOP parts, each (value, why unknown, source): what was measured is summed and
    what ncu printed n/a is named, so one n/a path never blanks the paths that were measured."""
    na = set((row.get("na_inputs") or "").split(", "))
    tensor = _part("tensor op counts", *_measured(row, TENSOR_FIELDS, na))
    g = row.get
    forms = (("flop_count_sp", "flop_count_hp"), ("ffma", "fadd", "fmul", "hfma"),
             ("ffma_per_cycle", "fadd_per_cycle", "fmul_per_cycle"))
    form = next((f for f in forms if any(g(x) is not None for x in f)), None)
    na_names = [FIELDS[f][0][0] for fs in forms for f in fs if f in na]
    if form is None:
        return tensor, _part("FP32/FP16 instruction or FLOP counts", None, na_names, [])
    used = [FIELDS[f][0][0] for f in form if g(f) is not None]
    if form[0] == "flop_count_sp":
        value = (g("flop_count_sp") or 0) + (g("flop_count_hp") or 0)
    elif form[0] == "ffma":
        value = 2 * (g("ffma") or 0) + (g("fadd") or 0) + (g("fmul") or 0) + 2 * (g("hfma") or 0)
    elif g("sm_cycles") is None:
        return tensor, _part("FP32/FP16 instruction counts", None, ["sm__cycles_elapsed.avg"], [])
    else:
        value = (2 * g("ffma_per_cycle") if g("ffma_per_cycle") else 0) + (g("fadd_per_cycle") or 0) \
            + (g("fmul_per_cycle") or 0)
        value *= g("sm_cycles")
    return tensor, _part("FP32/FP16 instruction or FLOP counts", value, [n for n in na_names if n not in used], used)


def _launch_size(dims: str | None) -> float | None:
    """ncu's Grid Size / Block Size (blocks, threads) from its '(x, y, z)' grid or block."""
    nums = [int(x) for x in (dims or "").strip("()").split(",") if x.strip().isdigit()]
    return float(nums[0] * nums[1] * nums[2]) if len(nums) == 3 else None


def _derived(row: dict) -> None:
    """Figures a profile holds without printing them: grid and block sizes from the launch's dimensions,
    DRAM bandwidth from bytes over duration (a raw page without the Memory Workload Analysis section)."""
    for size, dims in (("grid_size", "grid"), ("block_size", "block")):
        if row[size] is None and _launch_size(row.get(dims)) is not None:
            row[size], row[f"{size}_source"] = _launch_size(row[dims]), f"product of the {dims} dimensions"
    read, write = row.get("dram_read_bytes"), row.get("dram_write_bytes")
    dram = row.get("dram_bytes") if row.get("dram_bytes") is not None else (
        read + write if read is not None and write is not None else None)
    if row["dram_bandwidth_Bps"] is None and dram is not None and row.get("duration_ns"):
        what = "dram__bytes.sum" if row.get("dram_bytes") is not None else "dram__bytes_read.sum + dram__bytes_write.sum"
        row["dram_bandwidth_Bps"] = dram / (row["duration_ns"] / 1e9)
        row["dram_bandwidth_Bps_source"] = f"derived: {what} / {row['duration_source']}"


def roofline(df: pl.DataFrame) -> pl.DataFrame:
    """FLOPs (tensor ops + FP32/FP16 FMA-counted; unknown unless both parts are known), arithmetic
    intensity over DRAM bytes, and the kernel's place on ncu's roofline: the ridge point from ncu's
    own FP16 tensor and DRAM peaks, the bound side, and achieved FLOP/s as a share of the roof."""
    parts = [_flops(r) for r in df.iter_rows(named=True)]
    cols = {}
    for i, part in enumerate(("flop_tensor", "flop_non_tensor")):
        cols[part] = pl.Series(part, [p[i][0] for p in parts], pl.Float64)
        cols[f"{part}_unknown_why"] = pl.Series([p[i][1] or None for p in parts], dtype=pl.String)
        cols[f"{part}_source"] = pl.Series([p[i][2] or None for p in parts], dtype=pl.String)
    cols["flop_unknown_why"] = pl.Series(["; ".join(x[1] for x in p if x[1]) or None for p in parts], dtype=pl.String)
    df = df.with_columns(**cols)
    c = pl.col
    df = df.with_columns((c("flop_tensor") + c("flop_non_tensor")).alias("flop"),
                         pl.coalesce(c("dram_bytes"), c("dram_read_bytes") + c("dram_write_bytes")).alias("dram_bytes"))
    df = df.with_columns(  # the tensor part alone: labelled as such, known where the FP32 part is not
        pl.when(c("dram_bytes") > 0).then(c("flop_tensor") / c("dram_bytes")).alias("tensor_flop_per_byte"),
        (c("flop_tensor") / (c("duration_ns") / 1e9)).alias("tensor_flop_per_s"))
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
    """prefill or decode where the kernel name says it (FlashInfer's Prefill*/Decode* kernels, SGLang's
    triton extend ``_fwd_kernel`` and decode ``_fwd_kernel_stage1/2``); else unknown: one attention
    kernel (flash-attn's, split-KV or not) serves both phases."""
    lower = name.str.to_lowercase()
    return (pl.when(lower.str.contains("decode") | name.str.contains(r"^_fwd_kernel_stage[12]$")).then(pl.lit("decode"))
            .when(lower.str.contains("prefill|extend") | (name == "_fwd_kernel")).then(pl.lit("prefill"))
            .otherwise(pl.lit("unknown")))


def ranked_hints(rules: pl.DataFrame | None) -> pl.DataFrame:
    """ncu's rule results that estimate a speedup, largest first (ncu's own estimate, local or global
    as ncu states it), then the other optimization hints."""
    if rules is None or rules.is_empty():
        return pl.DataFrame(schema={"kernel_id": pl.Int64, "speedup_pct": pl.Float64, "speedup_type": pl.String,
                                    "section": pl.String, "rule": pl.String, "text": pl.String})
    hints = rules.filter((pl.col("type") == "OPT") | pl.col("speedup_pct").is_not_null())
    return (hints.sort(["speedup_pct", "kernel_id"], descending=[True, False], nulls_last=True)
            .select("kernel_id", "speedup_pct", "speedup_type", "section", "rule", "text"))


def phase_comparison(metrics: pl.DataFrame) -> pl.DataFrame:
    """Mean of the key figures for prefill vs decode kernels (kernels of unknown phase left out)."""
    keys = ["duration_ns", "sm_throughput_pct", "dram_throughput_pct", "achieved_occupancy_pct", "l2_hit_pct",
            "tensor_pct", "arith_intensity_flop_per_byte", "pct_of_roof"]
    present = [k for k in keys if k in metrics.columns]
    known = metrics.filter(pl.col("phase") != "unknown")
    return known.group_by("phase").agg(pl.len().alias("kernels"), *[pl.col(k).mean() for k in present]).sort("phase")
