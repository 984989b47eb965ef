"""What ``nsys stats`` prints, computed from event frames with the same semantics: cuda_gpu_kern_sum,
cuda_gpu_mem_time_sum, cuda_gpu_mem_size_sum, cuda_api_sum, nvtx_sum, osrt_sum.

Per group: total, count, mean, median (mean of the two middle values for an even count), min, max,
sample standard deviation (0 for one instance), and Time (%) as the share of the listed total (not of
wall time). Columns are ``loaders/nsys_stats.COLUMNS``, so a table read from an ``nsys stats`` CSV
stands in for one computed here. Sizes are MB of 10^6 bytes, as nsys prints them.
"""
from __future__ import annotations

import polars as pl

from sglang_tracing.analyzer.loaders.nsys_stats import COLUMNS, COUNT_COLUMNS, TEXT_COLUMNS

API_CATEGORIES = ("cuda_runtime", "cuda_driver")
# CUDA API version suffixes nsys strips from names: four digits (cudaLaunchKernel_v7000 -> cudaLaunchKernel);
# it keeps cuGetProcAddress_v2 and cudaStreamIsCapturing_v10000 as they are
_API_VERSION = r"_v\d{4}$"


def _empty(report: str) -> pl.DataFrame:
    return pl.DataFrame(schema={c: pl.String if c in TEXT_COLUMNS else pl.Int64 if c in COUNT_COLUMNS else pl.Float64
                                for c in COLUMNS[report]})


def _stats(frame: pl.DataFrame, keys: list[str], value: str, report: str, scale: float = 1.0) -> pl.DataFrame:
    """The nsys statistics of ``value`` per ``keys``, named and ordered as ``report``'s columns."""
    cols = COLUMNS[report]
    total = next(c for c in cols if c.startswith("Total"))
    count = next(c for c in cols if c in COUNT_COLUMNS)
    avg, med, low, high, std = (c for c in cols if c.startswith(("Avg", "Med", "Min", "Max", "StdDev")))
    v = pl.col(value) * scale if scale != 1.0 else pl.col(value)
    df = frame.group_by(keys).agg(
        v.sum().alias(total), pl.len().cast(pl.Int64).alias(count), v.mean().alias(avg), v.median().alias(med),
        v.min().alias(low), v.max().alias(high), v.std(ddof=1).fill_null(0.0).alias(std))
    if cols[0] == "Time (%)":
        df = df.with_columns((pl.col(total) / pl.col(total).sum() * 100).alias("Time (%)"))
    return df.select(cols).sort([total, cols[-1]], descending=[True, False])


def kernel_summary(kernels: pl.DataFrame) -> pl.DataFrame:
    """cuda_gpu_kern_sum: per kernel name."""
    if kernels.is_empty():
        return _empty("cuda_gpu_kern_sum")
    return _stats(kernels.rename({"name": "Name"}), ["Name"], "dur_ns", "cuda_gpu_kern_sum")


def memop_time_summary(memops: pl.DataFrame) -> pl.DataFrame:
    """cuda_gpu_mem_time_sum: memcpy per kind and memset, by time."""
    if memops.is_empty():
        return _empty("cuda_gpu_mem_time_sum")
    return _stats(memops.rename({"operation": "Operation"}), ["Operation"], "dur_ns", "cuda_gpu_mem_time_sum")


def memop_size_summary(memops: pl.DataFrame) -> pl.DataFrame:
    """cuda_gpu_mem_size_sum: memcpy per kind and memset, by size (MB = 10^6 bytes)."""
    if memops.is_empty():
        return _empty("cuda_gpu_mem_size_sum")
    return _stats(memops.rename({"operation": "Operation"}), ["Operation"], "bytes", "cuda_gpu_mem_size_sum",
                  scale=1e-6)


def api_summary(cpu_ops: pl.DataFrame, categories: tuple[str, ...] = API_CATEGORIES) -> pl.DataFrame:
    """cuda_api_sum: CUDA runtime and driver calls per function (version suffix dropped)."""
    calls = cpu_ops.filter(pl.col("category").is_in(list(categories)))
    if calls.is_empty():
        return _empty("cuda_api_sum")
    calls = calls.with_columns(pl.col("name").str.replace(_API_VERSION, "").alias("Name"),
                               (pl.col("end_ns") - pl.col("start_ns")).alias("dur"))
    return _stats(calls, ["Name"], "dur", "cuda_api_sum")


def osrt_summary(cpu_ops: pl.DataFrame) -> pl.DataFrame:
    """osrt_sum: OS runtime calls per function."""
    calls = cpu_ops.filter(pl.col("category") == "osrt")
    if calls.is_empty():
        return _empty("osrt_sum")
    calls = calls.with_columns(pl.col("name").alias("Name"), (pl.col("end_ns") - pl.col("start_ns")).alias("dur"))
    return _stats(calls, ["Name"], "dur", "osrt_sum")


def range_names(nvtx: pl.DataFrame) -> pl.Expr:
    """nvtx_sum's Range: 'domain:name' in a named domain, else the name. Our own ranges carry a span id
    each ('<span name> <16 hex>'); they are grouped by span name, or every range would be its own row."""
    text = pl.when(pl.col("span_id").is_not_null()).then(pl.col("text").str.replace(r" [0-9a-f]{16}$", "")) \
        .otherwise(pl.col("text")).fill_null("")
    return pl.when(pl.col("domain").fill_null("") != "").then(pl.col("domain") + ":" + text).otherwise(text)


def nvtx_summary(nvtx: pl.DataFrame) -> pl.DataFrame:
    """nvtx_sum: NVTX push/pop and start/end ranges (and Kineto user annotations) per range name and style."""
    if nvtx.is_empty():
        return _empty("nvtx_sum")
    ranges = nvtx.with_columns(range_names(nvtx).alias("Range"), pl.col("style").alias("Style"),
                               (pl.col("end_ns") - pl.col("start_ns")).alias("dur"))
    return _stats(ranges, ["Range", "Style"], "dur", "nvtx_sum")


def summaries(model) -> dict[str, tuple[pl.DataFrame, str]]:
    """Every nsys stats table for ``model``: (table, where it comes from). Computed from events where the
    model has them, else taken from the ``nsys stats`` CSVs that were given."""
    computed = {
        "cuda_gpu_kern_sum": (kernel_summary(model.kernels), "kernels"),
        "cuda_gpu_mem_time_sum": (memop_time_summary(model.memops), "GPU memcpy/memset"),
        "cuda_gpu_mem_size_sum": (memop_size_summary(model.memops), "GPU memcpy/memset"),
        "cuda_api_sum": (api_summary(model.cpu_ops), "CUDA runtime and driver calls"),
        "nvtx_sum": (nvtx_summary(model.nvtx), "NVTX ranges and Kineto user annotations"),
        "osrt_sum": (osrt_summary(model.cpu_ops), "OS runtime calls"),
    }
    out = {}
    for name, (table, what) in computed.items():
        if table.is_empty() and name in model.nsys_stats:
            out[name] = (model.nsys_stats[name], "nsys stats CSV")
        else:
            out[name] = (table, what)
    return out
