"""Issue 21: the experiments' own reports as typed results, checked against the recorded files read here
with plain json (the backends' per-cell bound, one cell per row)."""
from __future__ import annotations

import gzip
import json
import statistics
from pathlib import Path

from sglang_tracing.analyzer.analyses import backends
from sglang_tracing.analyzer.loaders import backends_experiment

BACKENDS = Path(__file__).resolve().parent.parent / "traces" / "examples" / "h200-backends"


def _gpm_means(server: str, start: int, end: int) -> tuple[float, float]:
    (f,) = (BACKENDS / f"server-{server}" / "trace").glob("nvml-*.jsonl.gz")
    rows = [json.loads(line) for line in gzip.open(f, "rt")]
    inside = [r for r in rows if start <= r["t_ns"] <= end]
    return (statistics.mean(r["dram_bw_util_pct"] for r in inside),
            statistics.mean(r["tensor_util_pct"] for r in inside))


def test_backends_one_row_per_cell_with_a_bound_from_the_counters():
    result = backends.compute(backends_experiment.load(BACKENDS))
    cells = sorted(p.parent.name for p in BACKENDS.glob("*-bs*-len*/result.json"))
    shapes = {tuple(int(x) for x in c.split("-bs")[1].split("-len")) for c in cells}
    assert sorted(result.cells.select("batch_size", "seq_len").rows()) == sorted(shapes)  # 9 rows, not 36
    for cell in cells:
        r = json.loads((BACKENDS / cell / "result.json").read_text())
        dram, tensor = _gpm_means(r["backend"], r["start_ns"], r["end_ns"])
        row = result.frame.filter((result.frame["backend"] == r["backend"]) & (result.frame["batch_size"] == r["batch_size"])
                                  & (result.frame["seq_len"] == r["seq_len"])).row(0, named=True)
        assert row["bound"] == ("memory-bound" if dram > tensor else "compute-bound"), cell
    assert backends.verdict(20.0, 60.0) == "compute-bound" and backends.verdict(None, 60.0) is None
