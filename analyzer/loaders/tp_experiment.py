"""Reading a TP-scaling experiment folder (``sglang-trace experiment tp``) into frames for the analysis:
the cells' client results, each cell's forward spans per rank, and each rank's Kineto profile."""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import polars as pl

from sglang_tracing import semconv as sc
from sglang_tracing.analyzer.loaders.experiment_cells import cells
from sglang_tracing.analyzer.loaders import kineto
from sglang_tracing.analyzer.loaders.trace_dir import load_trace_dir

RANK_IN_PROFILE_NAME = re.compile(r"TP-(\d+)")  # SGLang's profiler: <profile_id>-TP-<rank>.trace.json.gz


@dataclasses.dataclass
class TpCell:
    tp: int
    result: dict  # result.json as recorded (client timings per request, options)
    forwards: pl.DataFrame  # every forward of the cell's server, all ranks (see forwards())
    profile_kernels: dict[int, pl.DataFrame]  # rank -> GPU kernels of SGLang's profiler pass
    profile_ops: dict[int, pl.DataFrame]  # rank -> CPU ops of that pass


@dataclasses.dataclass
class TpInputs:
    table: pl.DataFrame  # one row per cell (experiment_cells.cells)
    cells: dict[int, TpCell]
    topology: str | None
    model_config: dict | None
    gpu_name: str | None


def forwards(spans: pl.DataFrame) -> pl.DataFrame:
    """One row per scheduler forward: rank, forward (order on that rank), mode, batch, tokens, rids,
    CPU start/end, GPU start/end (None where the GPU was not timed)."""
    f = spans.filter(pl.col("name") == sc.FORWARD) if "name" in spans.columns else spans
    if f.is_empty():
        return pl.DataFrame(schema={"rank": pl.Int64, "forward": pl.Int64, "mode": pl.String, "batch": pl.Int64,
                                    "tokens": pl.Int64, "rids": pl.List(pl.String), "cpu_start_ns": pl.Int64,
                                    "cpu_end_ns": pl.Int64, "gpu_start_ns": pl.Int64, "gpu_end_ns": pl.Int64})

    def col(name, dtype):
        return pl.col(name).cast(dtype) if name in f.columns else pl.lit(None, dtype)

    return (f.sort("start_ns").select(
        pl.col("tp_rank").fill_null(0).alias("rank"), col(sc.FORWARD_MODE, pl.String).alias("mode"),
        col(sc.BATCH_SIZE, pl.Int64).alias("batch"), col(sc.BATCH_TOKENS, pl.Int64).alias("tokens"),
        col(sc.BATCH_RIDS, pl.List(pl.String)).alias("rids"), pl.col("start_ns").alias("cpu_start_ns"),
        pl.col("end_ns").alias("cpu_end_ns"),
        col(sc.GPU_START_NS, pl.Int64).alias("gpu_start_ns"), col(sc.GPU_END_NS, pl.Int64).alias("gpu_end_ns"))
        .with_columns(forward=pl.int_range(pl.len()).over("rank").cast(pl.Int64)))


def _profiles(folder: Path) -> tuple[dict[int, pl.DataFrame], dict[int, pl.DataFrame]]:
    kernels, ops = {}, {}
    for f in sorted(folder.glob("*.trace.json*")) if folder.is_dir() else []:
        m = RANK_IN_PROFILE_NAME.search(f.name)
        if m is None:
            continue
        k, o = kineto.frames(kineto.read(f))
        kernels[int(m.group(1))], ops[int(m.group(1))] = k, o
    return kernels, ops


def load(out: str | Path) -> TpInputs:
    out = Path(out)
    table = cells(out)
    by_tp: dict[int, TpCell] = {}
    topology, model_config, gpu_name = None, None, None
    if not table.is_empty() and "tp" in table.columns:
        for row in table.iter_rows(named=True):
            result = json.loads((out / row["cell"] / "result.json").read_text())
            trace_dir = row.get("trace_dir")
            fw = forwards(pl.DataFrame())
            if trace_dir and Path(trace_dir).is_dir():
                model = load_trace_dir(trace_dir)
                fw = forwards(model.spans)
                model_config = model_config or model.manifest.get("model_config")
                gpu_name = gpu_name or _gpu_name(model.manifest)
            kernels, ops = _profiles(out / row["cell"] / "profile")
            by_tp[row["tp"]] = TpCell(row["tp"], result, fw, kernels, ops)
            topology = topology or result.get("topology")
    if topology is None and (out / "topology.txt").exists():
        topology = (out / "topology.txt").read_text()
    return TpInputs(table, by_tp, topology, model_config, gpu_name)


def _gpu_name(manifest: dict) -> str | None:
    gpu = manifest.get("gpu") or {}
    devices = gpu.get("devices") if isinstance(gpu, dict) else None
    if devices:
        return devices[0].get("name")
    return gpu.get("name") if isinstance(gpu, dict) else None
