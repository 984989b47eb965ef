"""Markdown renderer."""
from __future__ import annotations

from collections.abc import Iterable

import polars as pl

from sglang_tracing.analyzer.renderers import plots
from sglang_tracing.analyzer.report import Report, Section


def table_md(df: pl.DataFrame, max_rows: int = 200) -> list[str]:
    cols = df.columns
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in df.head(max_rows).iter_rows():
        lines.append("| " + " | ".join("" if v is None else str(v).replace("|", "\\|") for v in row) + " |")
    if df.height > max_rows:
        lines.append(f"\n({df.height - max_rows} more rows)")
    return lines


def _section(sec: Section, depth: int, out: list[str]) -> None:
    out += ["", "#" * min(depth, 6) + " " + sec.title, ""]
    for f in sec.figures:
        value = f"**{f.value}**" if f.value is not None else "_not measured_"
        out.append(f"- {f.label}: {value}" + (f" — {f.source}" if f.source else ""))
    if sec.table is not None and not sec.table.is_empty():
        out.append("")
        out += table_md(sec.table)
    for child in sec.children:
        _section(child, depth + 1, out)


def render(report: Report, images: Iterable[str] | None = None) -> str:
    """The document; ``images`` are the file names of its drawn plots (written beside it), those
    plots.draw_all would draw when not given."""
    out = [f"# {report.title}"]
    for sec in report.sections:
        _section(sec, 2, out)
    for name in plots.drawable(report) if images is None else images:
        out += ["", f"![{name}]({name})"]
    return "\n".join(out) + "\n"
