"""Writing analysis frames for other tools: CSV (list columns as JSON arrays) and Parquet."""
from __future__ import annotations

from pathlib import Path

import polars as pl

from sglang_tracing.analyzer.renderers.csv_tables import flat


def write_table(frame: pl.DataFrame, out: Path, stem: str) -> list[str]:
    """``frame`` as ``out/stem.parquet`` (list columns kept) and ``out/stem.csv`` (each list column as a
    JSON array string, e.g. ``[4.51, 4.49]``); returns the paths written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    parquet, csv = out / f"{stem}.parquet", out / f"{stem}.csv"
    frame.write_parquet(parquet)
    flat(frame).write_csv(csv)
    return [str(csv), str(parquet)]
