"""The csv format: every table of a report whole, one file per table (as ``nsys stats --format csv``),
named as the documents' cut-table notes name them (base.tables)."""
from __future__ import annotations

import polars as pl

from sglang_tracing.analyzer.renderers.base import tables
from sglang_tracing.analyzer.report import Report


def flat(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` with each list column as a JSON array string (e.g. ``[4.51, 4.49]``), as CSV holds it."""
    lists = [c for c, t in frame.schema.items() if isinstance(t, pl.List)]
    return frame.with_columns(
        pl.format("[{}]", pl.col(c).list.eval(pl.element().cast(pl.String)).list.join(", ")).alias(c) for c in lists)


class CsvRenderer:
    extension = "csv"

    def files(self, report: Report, pngs: dict[str, bytes], others: tuple[str, ...] = ()) -> dict[str, str]:
        return {name: flat(sec.table).write_csv() for sec, name in tables(report)}
