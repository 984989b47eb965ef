"""Reading an attention-backends experiment folder (``sglang-trace experiment backends``) for its report: the
cells' results and the server traces they name."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import polars as pl

from sglang_tracing.analyzer.loaders.experiment_cells import cells
from sglang_tracing.analyzer.loaders.trace_dir import load_trace_dir
from sglang_tracing.analyzer.model import TraceModel


@dataclasses.dataclass
class BackendsInputs:
    cells: pl.DataFrame  # one row per cell (experiment_cells.cells)
    models: dict[str, TraceModel]  # each server trace dir the cells name, loaded once


def load(out: str | Path) -> BackendsInputs:
    frame = cells(Path(out))
    dirs = set(frame["trace_dir"].drop_nulls()) if "trace_dir" in frame.columns else set()
    return BackendsInputs(frame, {d: load_trace_dir(d) for d in sorted(dirs) if Path(d).is_dir()})
