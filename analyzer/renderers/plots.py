"""PNG plots (matplotlib, Agg): draws the plot data a Report carries (report.Plot), one drawing per kind.

matplotlib is the ``plots`` extra: without it nothing is drawn and one note says so.
"""
from __future__ import annotations

import functools
import io
import logging

import polars as pl

from sglang_tracing.analyzer.report import Plot, Report

logger = logging.getLogger(__name__)

LOOKUP_COLORS = {"full": "green", "partial": "orange", "miss": "red"}


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


def _itl(ax, plot: Plot) -> None:
    pts = plot.frames["points"]
    ax.plot(pts["token_index"].to_list(), pts["itl_ms"].to_list(), marker=".", lw=1)
    ax.grid(alpha=0.3)


def _cache(ax, plot: Plot) -> None:
    occupancy, lookups = plot.frames["occupancy"], plot.frames["lookups"]
    x = occupancy["t_s"].to_list()
    ax.step(x, occupancy["used_tokens"].to_list(), where="post", label="KV used (tokens)")
    if "evictable_tokens" in occupancy.columns:
        ax.step(x, occupancy["evictable_tokens"].to_list(), where="post", label="evictable (tokens)")
    for kind, color in LOOKUP_COLORS.items():
        sub = lookups.filter(pl.col("lookup") == kind)
        if sub.height:
            ax.scatter(sub["t_s"].to_list(), [0] * sub.height, c=color, marker="|", s=200,
                       label=f"{kind} ({sub.height})")
    ax.legend(fontsize=7)


def _tp_scaling(ax, plot: Plot) -> None:
    styles = {"measured": {"marker": "o"}, "linear": {"ls": "--"}, "projection": {"marker": "x", "ls": ":"}}
    for name, style in styles.items():
        if name in plot.frames:
            line = plot.frames[name]
            ax.plot(line["tp"].to_list(), line["output_tok_per_s"].to_list(), label=name, **style)
    ax.set_xticks(sorted(set().union(*(f["tp"].to_list() for f in plot.frames.values()))))
    ax.legend()
    ax.grid(alpha=0.3)


# kind -> (figure size in inches, drawing of the data onto the axes)
KINDS = {"itl": ((7, 3.2), _itl), "cache": ((7, 3.2), _cache), "tp_scaling": ((6, 3.2), _tp_scaling)}
# kind -> frame -> the columns its drawing reads (HTA's must_have_columns); a frame marked optional may be absent
MUST_HAVE = {"itl": {"points": ("token_index", "itl_ms")},
             "cache": {"occupancy": ("t_s", "used_tokens"), "lookups": ("t_s", "lookup")},
             "tp_scaling": {"measured": ("tp", "output_tok_per_s"), "linear?": ("tp", "output_tok_per_s"),
                            "projection?": ("tp", "output_tok_per_s")}}


class PlotDataError(ValueError):
    """A plot's frames lack what its kind draws from: a bug in the analysis that built it."""


def check(plot: Plot) -> None:
    """Raise PlotDataError naming the frame and columns a plot of this kind needs but lacks."""
    if plot.kind not in MUST_HAVE:
        raise PlotDataError(f"{plot.file}: unknown plot kind {plot.kind!r} (known: {', '.join(MUST_HAVE)})")
    for frame, columns in MUST_HAVE[plot.kind].items():
        name = frame.rstrip("?")
        if name not in plot.frames:
            if frame.endswith("?"):
                continue
            raise PlotDataError(f"{plot.file}: {plot.kind} plot needs a frame {name!r} with columns {', '.join(columns)}")
        missing = [c for c in columns if c not in plot.frames[name].columns]
        if missing:
            raise PlotDataError(f"{plot.file}: {plot.kind} plot's frame {name!r} lacks {', '.join(missing)}")


def draw(plot: Plot) -> bytes | None:
    """The plot as PNG bytes; None without matplotlib."""
    check(plot)
    plt = _pyplot()
    if plt is None:
        return None
    size, drawing = KINDS[plot.kind]
    fig, ax = plt.subplots(figsize=size)
    drawing(ax, plot)
    ax.set_xlabel(plot.labels.get("x", ""))
    ax.set_ylabel(plot.labels.get("y", ""))
    if plot.labels.get("title"):
        ax.set_title(plot.labels["title"])
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def caption(plot: Plot) -> str:
    """What the plot shows, in words: its title and axes (never its file name)."""
    title, x, y = (plot.labels.get(k, "") for k in ("title", "x", "y"))
    axes = f"{y} by {x}" if x and y else ""
    return ": ".join(p for p in (title, axes) if p) or plot.kind


def captions(report: Report) -> dict[str, str]:
    """Plot file name -> caption."""
    return {p.file: caption(p) for p in report.plots}


def draw_all(report: Report) -> dict[str, bytes]:
    """Every plot of the report drawn: file name -> PNG bytes (empty without matplotlib)."""
    return {p.file: png for p in report.plots if (png := draw(p)) is not None}


def drawable(report: Report) -> list[str]:
    """File names of the plots ``draw_all`` would write (none without matplotlib), without drawing them."""
    return [p.file for p in report.plots] if _pyplot() is not None else []
