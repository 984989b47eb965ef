"""PNG plots (matplotlib, Agg). Each takes analysis frames and returns PNG bytes, or None.

matplotlib is the ``plots`` extra: without it every plot is None and one note says so.
"""
from __future__ import annotations

import functools
import io
import logging

import polars as pl

from sglang_tracing import semconv as sc

logger = logging.getLogger(__name__)


@functools.cache
def _pyplot():
    """matplotlib.pyplot on the Agg backend, or None (noted once) when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        logger.warning("PNG plots skipped: matplotlib is not installed (pip install 'sglang-tracing[plots]')")
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _figure():
    plt = _pyplot()
    if plt is None:
        raise ModuleNotFoundError("No module named 'matplotlib'", name="matplotlib")
    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    _figure().close(fig)
    return buf.getvalue()


def itl_plot(tokens: pl.DataFrame, rid: str) -> bytes | None:
    pts = tokens.drop_nulls("itl_ns")
    plt = _pyplot()
    if pts.is_empty() or plt is None:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.plot(pts["token_index"].to_list(), (pts["itl_ns"] / 1e6).to_list(), marker=".", lw=1)
    ax.set_xlabel("output token index")
    ax.set_ylabel("ITL (ms)")
    ax.set_title(f"Inter-token latency, request {rid[:12]}")
    ax.grid(alpha=0.3)
    return _png(fig)


def cache_plot(occupancy: pl.DataFrame, lookups: pl.DataFrame) -> bytes | None:
    if occupancy.is_empty() or sc.CACHE_USED not in occupancy.columns:
        return None
    plt = _pyplot()
    if plt is None:
        return None
    t0 = occupancy["start_ns"].min()
    fig, ax = plt.subplots(figsize=(7, 3.2))
    x = ((occupancy["start_ns"] - t0) / 1e9).to_list()
    ax.step(x, occupancy[sc.CACHE_USED].to_list(), where="post", label="KV used (tokens)")
    if sc.CACHE_EVICTABLE in occupancy.columns:
        ax.step(x, occupancy[sc.CACHE_EVICTABLE].to_list(), where="post", label="evictable (tokens)")
    colors = {"full": "green", "partial": "orange", "miss": "red"}
    for kind, color in colors.items():
        sub = lookups.filter(pl.col("lookup") == kind)
        if sub.height:
            ax.scatter(((sub["received_ns"] - t0) / 1e9).to_list(), [0] * sub.height, c=color, marker="|",
                       s=200, label=f"{kind} ({sub.height})")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("tokens")
    ax.set_title("Cache occupancy and lookups")
    ax.legend(fontsize=7)
    return _png(fig)


def tp_scaling_plot(table: pl.DataFrame, projection: pl.DataFrame | None) -> bytes | None:
    """Output throughput per TP size: measured, linear from the smallest, and projected sizes."""
    plt = _pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(table["tp"].to_list(), table["output_tok_per_s"].to_list(), marker="o", label="measured")
    base = table.row(0, named=True)
    sizes = sorted(set(table["tp"].to_list()) | set(projection["tp"].to_list() if projection is not None else []))
    ax.plot(sizes, [base["output_tok_per_s"] * t / base["tp"] for t in sizes], "--", label="linear")
    if projection is not None:
        p = projection.filter(pl.col("kind") == "projection")
        ax.plot(p["tp"].to_list(), p["output_tok_per_s"].to_list(), marker="x", ls=":", label="projection")
    ax.set_xlabel("TP size")
    ax.set_ylabel("output tok/s")
    ax.set_xticks(sizes)
    ax.legend()
    ax.grid(alpha=0.3)
    return _png(fig)
