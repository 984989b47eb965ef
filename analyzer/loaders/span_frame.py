"""Rows from ``otlp_json.read_span_file`` as one polars frame (the reference path's last step)."""
from __future__ import annotations

import polars as pl

from sglang_tracing.analyzer.model import SPAN_BASE, SPAN_FIELDS, no_spans


def spans_frame(rows: list[tuple]) -> pl.DataFrame:
    """Rows from ``read_span_file`` (base fields, then attribute pairs) as one column per attribute key."""
    if not rows:
        return no_spans()
    n = len(rows)
    base = list(zip(*(r[:9] for r in rows)))
    columns = {name: pl.Series(name, values, dtype=SPAN_BASE[name], strict=False)
               for name, values in zip(SPAN_FIELDS, base)}
    attrs: dict[str, list] = {}
    for i, r in enumerate(rows):
        for key, value in r[9]:
            col = attrs.get(key)
            if col is None:
                col = attrs[key] = [None] * n
            col[i] = value
    for key, values in attrs.items():
        if key not in columns:
            columns[key] = pl.Series(key, values, strict=False)
    df = pl.DataFrame(columns)
    return df.with_columns((pl.col("end_ns") - pl.col("start_ns")).alias("dur_ns")).sort("start_ns")
