"""Reading a radix experiment folder: each scenario cell's result and its server's trace."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from sglang_tracing.analyzer.loaders.files import resolve
from sglang_tracing.analyzer.loaders.trace_dir import load_trace_dir
from sglang_tracing.analyzer.model import TraceModel


@dataclasses.dataclass
class Scenario:
    name: str  # cold_start, shared_system_prompt, exact_repeat, cache_pressure
    result: dict  # the cell's result.json (client timings of its requests)
    model: TraceModel | None  # its server's trace (None: run with --url, no trace)


def load(folder: str | Path) -> list[Scenario]:
    """Every recorded scenario cell of ``folder``, in the order the experiment ran them."""
    found = []
    for f in sorted(Path(folder).glob("*/result.json")):
        result = json.loads(f.read_text())
        if "scenario" not in result:
            continue
        trace = result.get("trace_dir")
        trace_dir = resolve(Path(folder), trace) if isinstance(trace, str) else None
        found.append(Scenario(result["scenario"], result,
                              load_trace_dir(str(trace_dir)) if trace_dir and trace_dir.is_dir() else None))
    return sorted(found, key=lambda s: s.result.get("start_ns") or 0)
