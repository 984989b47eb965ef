"""Plain-text tree renderer (the plan's layout).

Tables are drawn here, not by polars' repr: the last column (where kernel names, ranges and hints go)
is printed in full, and other long text is shortened only as far as values stay distinct, so two
kernel variants never print the same."""
from __future__ import annotations

import polars as pl

from sglang_tracing.analyzer.renderers.base import NOT_MEASURED, blank_note, cell, numeric, shown, table_files
from sglang_tracing.analyzer.report import Report, Section

CELL_WIDTH = 60


def _shorten(values: list[str], width: int) -> list[str]:
    """Cut values to ``width`` characters (with '…'), widening until distinct values stay distinct."""
    distinct = len(set(values))
    longest = max((len(v) for v in values), default=0)
    while width < longest:
        cut = [v if len(v) <= width else v[: width - 1] + "…" for v in values]
        if len(set(cut)) == distinct:
            return cut
        width += 20
    return values


def table_text(df: pl.DataFrame) -> list[str]:
    """An ASCII-markdown table; numbers right-aligned, the last column in full."""
    cols = [[cell(v, c) for v in df[c].to_list()] for c in df.columns]
    cols = [c if i == len(cols) - 1 else _shorten(c, CELL_WIDTH) for i, c in enumerate(cols)]
    right = numeric(df)
    widths = [max([len(name)] + [len(v) for v in c]) for name, c in zip(df.columns, cols)]
    last = len(cols) - 1

    def line(cells):
        parts = [(v.rjust(w) if right[i] else v.ljust(w)) if i < last else v for i, (v, w) in
                 enumerate(zip(cells, widths))]
        return "| " + " | ".join(parts) + " |"

    out = [line(df.columns), "|" + "|".join("-" * (w + 2) for w in widths[:last] + [len(df.columns[last])]) + "|"]
    out += [line(row) for row in zip(*cols)]
    return out


def _figure_line(f) -> str:
    value = f.value if f.value is not None else NOT_MEASURED
    src = f"  [{f.source}]" if f.source else ""
    return f"{f.label}: {value}{src}"


def _section(sec: Section, prefix: str, last: bool, out: list[str], files: dict[int, str]) -> None:
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
            _section(item, inner, is_last, out, files)
        else:
            rows, cut = shown(item, files.get(id(sec)))
            for line in table_text(rows):
                out.append(f"{inner}   {line}")
            for note in (cut, blank_note(item)):
                if note:
                    out.append(f"{inner}   ({note})")


def render(report: Report) -> str:
    out = [report.title, "=" * len(report.title)]
    files = table_files(report)
    for i, sec in enumerate(report.sections):
        _section(sec, "", i == len(report.sections) - 1, out, files)
    return "\n".join(out) + "\n"


class TextRenderer:
    """The plain-text tree (the plan's layout)."""
    extension = "txt"

    def files(self, report: Report, pngs: dict[str, bytes], others: tuple[str, ...] = ()) -> dict[str, str]:
        return {f"{report.name}.{self.extension}": render(report)}
