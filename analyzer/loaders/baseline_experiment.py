"""Reading a baseline experiment folder: the measured cell's result and the profiled pass's, if any."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from sglang_tracing.analyzer.loaders.files import resolve


@dataclasses.dataclass
class BaselineInputs:
    folder: Path
    measured: dict | None  # baseline/result.json: client timings of the measured pass
    profiled: dict | None  # profiled/result.json: the short profiled pass (None: skipped or not yet run)


def _result(folder: Path, cell: str) -> dict | None:
    f = folder / cell / "result.json"
    if not f.exists():
        return None
    result = json.loads(f.read_text())
    if isinstance(result.get("trace_dir"), str):
        result["trace_dir"] = str(resolve(folder, result["trace_dir"]))
    return result


def load(folder: str | Path) -> BaselineInputs:
    folder = Path(folder)
    return BaselineInputs(folder, _result(folder, "baseline"), _result(folder, "profiled"))
