"""Reading an experiment folder's cells (result.json) into one frame."""
from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from sglang_tracing.analyzer.loaders.files import resolve


def cells(out: Path) -> pl.DataFrame:
    """One row per cell: the cell's scalar fields, the rids of its measured requests (``rids``, what
    attributes server-side work to the cell) and client medians (TTFT, mean ITL, e2e)."""
    rows = []
    for f in sorted(Path(out).glob("*/result.json")):
        r = json.loads(f.read_text())
        req = pl.DataFrame(r.pop("requests"))
        row = {k: v for k, v in r.items() if not isinstance(v, (list, dict, tuple))}
        if isinstance(row.get("trace_dir"), str):
            row["trace_dir"] = str(resolve(Path(out), row["trace_dir"]))
        row.update(cell=f.parent.name, requests=req.height,
                   rids=req["rid"].to_list() if "rid" in req.columns else None,
                   output_tokens=req["completion_tokens"].max() if "completion_tokens" in req.columns else None,
                   ttft_ms=req["ttft_ns"].median() / 1e6, itl_ms=(req["mean_itl_ns"].median() or 0) / 1e6,
                   e2e_ms=req["e2e_ns"].median() / 1e6)
        rows.append(row)
    return pl.DataFrame(rows, infer_schema_length=None) if rows else pl.DataFrame()
