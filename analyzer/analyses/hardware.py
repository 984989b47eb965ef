"""Hardware state per phase: NVML/GPM samples averaged over the time a set of spans covered."""
from __future__ import annotations

import polars as pl

# Decode floor: HBM bandwidth (bytes/s) by GPU name, from vendor datasheets.
PEAK_BANDWIDTH = {"H200": 4.8e12, "H100 80GB HBM3": 3.35e12, "H100": 3.35e12, "A100-SXM4-80GB": 2.039e12,
                  "A100-SXM4-40GB": 1.555e12, "A100": 1.555e12, "L4": 0.3e12, "RTX 5090": 1.792e12}


def peak_bandwidth(gpu_name: str | None) -> float | None:
    if not gpu_name:
        return None
    for key in sorted(PEAK_BANDWIDTH, key=len, reverse=True):
        if key in gpu_name:
            return PEAK_BANDWIDTH[key]
    return None


def phase_state(counters: pl.DataFrame, windows: pl.DataFrame) -> pl.DataFrame:
    """Mean of each metric over samples inside any of ``windows`` (start_ns, end_ns).

    Columns: metric, source, mean, samples. Empty when no sample falls inside.
    """
    if counters.is_empty() or windows.is_empty():
        return pl.DataFrame(schema={"metric": pl.String, "source": pl.String, "mean": pl.Float64,
                                    "samples": pl.UInt32})
    w = windows.select("start_ns", "end_ns").sort("start_ns")
    c = counters.sort("t_ns").join_asof(w, left_on="t_ns", right_on="start_ns", strategy="backward")
    inside = c.filter(pl.col("t_ns") <= pl.col("end_ns"))
    return inside.group_by("metric", "source").agg(pl.col("value").mean().alias("mean"),
                                                   pl.len().alias("samples")).sort("metric")
