"""What every renderer shares: one protocol (a renderer knows its file extension and turns a Report into
files), one wording for a figure that was not measured, and one row-limit policy that says when it cuts
a table and where the whole table is (the csv renderer writes one file per table, as
``nsys stats --format csv`` does)."""
from __future__ import annotations

import re
from typing import Protocol

import polars as pl

from sglang_tracing.analyzer.report import Report, Section

NOT_MEASURED = "not measured"
_ID_COLUMNS = {"pid", "tid", "device", "stream", "kernel_id", "rank", "correlation", "id", "index"}
ROW_LIMIT = 25  # rows a document shows of one table; the csv format holds every row


class Renderer(Protocol):
    extension: str  # of the main file: txt, md, html, csv

    def files(self, report: Report, pngs: dict[str, bytes], others: tuple[str, ...] = ()) -> dict[str, str]:
        """File name -> content. ``pngs``: the report's plots already drawn (file name -> PNG bytes);
        ``others``: the names of the reports written beside this one (documents may link to them)."""
        ...


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:40] or "table"


def tables(report: Report) -> list[tuple[Section, str]]:
    """Every non-empty table in document order, with the csv file the csv renderer writes it to."""
    out: list[tuple[Section, str]] = []

    def walk(sec: Section) -> None:
        if sec.table is not None and not sec.table.is_empty():
            out.append((sec, f"{report.name}-{len(out) + 1:02d}-{_slug(sec.title)}.csv"))
        for child in sec.children:
            walk(child)

    for sec in report.sections:
        walk(sec)
    return out


def table_files(report: Report) -> dict[int, str]:
    """id(section) -> its csv file name (tables)."""
    return {id(sec): name for sec, name in tables(report)}


def shown(table: pl.DataFrame, csv_file: str | None) -> tuple[pl.DataFrame, str | None]:
    """The rows a document shows, and the note that says the table was cut and where all of it is
    (None when nothing was cut)."""
    if table.height <= ROW_LIMIT:
        return table, None
    where = f"the whole table: --format csv writes {csv_file}" if csv_file else "the whole table: --format csv"
    return table.head(ROW_LIMIT), f"showing {ROW_LIMIT} of {table.height:,} rows; {where}"


def blank_columns(table: pl.DataFrame) -> list[str]:
    """Columns with no value in any row: a document says so, rather than leave them silently blank."""
    return [c for c in table.columns if table[c].null_count() == table.height]


def blank_note(table: pl.DataFrame) -> str | None:
    blank = blank_columns(table)
    if not blank:
        return None
    return f"{', '.join(blank)}: blank in every row ({NOT_MEASURED} in this input)"


def cell(v, column: str = "") -> str:
    """A table value as every document prints it: integers with thousands separators (ids without),
    floats to six significant digits (three decimals from 1,000 up), NaN as NaN, nothing as blank."""
    if v is None:
        return ""
    if isinstance(v, float):
        if v != v:
            return "NaN"
        if v.is_integer() and abs(v) < 1e15:
            v = int(v)
        else:
            return f"{v:,.3f}".rstrip("0").rstrip(".") if abs(v) >= 1000 else f"{v:.6g}"
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v) if column in _ID_COLUMNS else f"{v:,}"
    return str(v)


def numeric(table: pl.DataFrame) -> list[bool]:
    """Per column: whether it holds numbers (right-aligned in every document)."""
    return [dt.is_numeric() for dt in table.dtypes]
