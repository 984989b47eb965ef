"""Markdown renderer: numbers right-aligned, cut tables say so and where the whole table is."""
from __future__ import annotations

from collections.abc import Iterable

import polars as pl

from sglang_tracing.analyzer.renderers import plots
from sglang_tracing.analyzer.renderers.base import NOT_MEASURED, blank_note, cell, numeric, shown, table_files
from sglang_tracing.analyzer.report import Report, Section


def table_md(df: pl.DataFrame, csv_file: str | None = None) -> list[str]:
    rows, cut = shown(df, csv_file)
    cols = df.columns
    lines = ["| " + " | ".join(cols) + " |", "|" + "".join("---:|" if n else "---|" for n in numeric(df))]
    for row in rows.iter_rows():
        lines.append("| " + " | ".join(cell(v, c).replace("|", "\\|") for v, c in zip(row, cols)) + " |")
    lines += [f"\n_{note}_" for note in (cut, blank_note(df)) if note]
    return lines


def _section(sec: Section, depth: int, out: list[str], files: dict[int, str]) -> None:
    out += ["", "#" * min(depth, 6) + " " + sec.title, ""]
    for f in sec.figures:
        value = f"**{f.value}**" if f.value is not None else f"_{NOT_MEASURED}_"
        out.append(f"- {f.label}: {value}" + (f" — {f.source}" if f.source else ""))
    if sec.table is not None and not sec.table.is_empty():
        out.append("")
        out += table_md(sec.table, files.get(id(sec)))
    for child in sec.children:
        _section(child, depth + 1, out, files)


def render(report: Report, images: Iterable[str] | None = None, others: tuple[str, ...] = ()) -> str:
    """The document; ``images`` are the file names of its drawn plots (written beside it), those
    plots.draw_all would draw when not given; ``others``: reports written beside it, linked."""
    out = [f"# {report.title}"]
    if others:
        out += ["", "Other reports: " + " · ".join(f"[{n}]({n}.md)" for n in others)]
    files = table_files(report)
    for sec in report.sections:
        _section(sec, 2, out, files)
    captions = plots.captions(report)
    for name in plots.drawable(report) if images is None else images:
        out += ["", f"![{captions.get(name, name)}]({name})", "", f"_{captions.get(name, name)}_"]
    return "\n".join(out) + "\n"


class MarkdownRenderer:
    extension = "md"

    def files(self, report: Report, pngs: dict[str, bytes], others: tuple[str, ...] = ()) -> dict[str, str]:
        return {f"{report.name}.{self.extension}": render(report, list(pngs), others)}
