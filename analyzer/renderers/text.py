"""Plain-text tree renderer (the plan's layout)."""
from __future__ import annotations

import polars as pl

from sglang_tracing.analyzer.report import Report, Section

NOT_MEASURED = "not measured"


def _figure_line(f) -> str:
    value = f.value if f.value is not None else NOT_MEASURED
    src = f"  [{f.source}]" if f.source else ""
    return f"{f.label}: {value}{src}"


def _section(sec: Section, prefix: str, last: bool, out: list[str]) -> None:
    out.append(f"{prefix}{'└─ ' if last else '├─ '}{sec.title}")
    inner = prefix + ("   " if last else "│  ")
    items = [("f", f) for f in sec.figures] + [("c", c) for c in sec.children]
    if sec.table is not None and not sec.table.is_empty():
        items.append(("t", sec.table))
    for i, (kind, item) in enumerate(items):
        is_last = i == len(items) - 1
        if kind == "f":
            out.append(f"{inner}{'└─ ' if is_last else '├─ '}{_figure_line(item)}")
        elif kind == "c":
            _section(item, inner, is_last, out)
        else:
            with pl.Config(tbl_rows=200, tbl_cols=-1, fmt_str_lengths=36, tbl_width_chars=220,
                           tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True,
                           tbl_formatting="ASCII_MARKDOWN"):
                text = str(item)
            for line in text.splitlines():
                out.append(f"{inner}   {line}")


def render(report: Report) -> str:
    out = [report.title, "=" * len(report.title)]
    for i, sec in enumerate(report.sections):
        _section(sec, "", i == len(report.sections) - 1, out)
    return "\n".join(out) + "\n"
