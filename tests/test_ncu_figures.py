"""Issue 20: ncu figures the file holds are reported, each checked against the csv module's reading of
a real details CSV (RTX 5090, flash_fwd_splitkv; tests/data/realdata/README.md)."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from sglang_tracing.analyzer.analyses import attention
from sglang_tracing.analyzer.analyses.ncu_metrics import kernel_metrics
from sglang_tracing.analyzer.loaders import ncu
from sglang_tracing.analyzer.model import profiles_only

DETAILS = Path(__file__).resolve().parent / "data" / "realdata" / "ncu_csv" / \
    "llmperfopt_dsocr_k0013_flash_fwd_splitkv_ncu_details.csv"
UNITS = {"byte": 1, "Kbyte": 1e3, "Mbyte": 1e6, "Gbyte": 1e9, "ns": 1, "us": 1e3, "ms": 1e6}


def _rows() -> list[dict]:
    with open(DETAILS, newline="") as f:
        return list(csv.DictReader(f))


def _metric(rows: list[dict], name: str) -> dict:
    return next(r for r in rows if r["Metric Name"] == name)


def _number(row: dict) -> float:
    return float(row["Metric Value"].replace(",", "")) * UNITS.get(row["Metric Unit"], 1)


def test_tensor_flops_sum_the_measured_paths_and_name_the_na_one():
    rows = _rows()
    assert _metric(rows, "sm__ops_path_tensor_src_bf16_dst_bf16.sum")["Metric Value"] == "n/a"
    measured = _number(_metric(rows, "sm__ops_path_tensor_src_bf16_dst_fp32.sum"))
    seconds = _number(_metric(rows, "gpu__time_duration.sum")) / 1e9
    got = kernel_metrics(ncu.read(DETAILS)).row(0, named=True)
    assert got["flop_tensor"] == measured == 335_544_320
    assert "sm__ops_path_tensor_src_bf16_dst_bf16.sum" in got["flop_tensor_source"]
    assert got["tensor_flop_per_s"] == pytest.approx(measured / seconds)


def test_dram_bandwidth_from_bytes_over_duration_without_memory_workload_analysis(tmp_path):
    rows = _rows()
    raw = tmp_path / "no-mwa.csv"
    with open(raw, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), quoting=csv.QUOTE_ALL)
        w.writeheader()
        w.writerows(r for r in rows if r["Section Name"] != "Memory Workload Analysis")
    nbytes = _number(_metric(rows, "dram__bytes_read.sum")) + _number(_metric(rows, "dram__bytes_write.sum"))
    seconds = _number(_metric(rows, "gpu__time_duration.sum")) / 1e9
    got = kernel_metrics(ncu.read(raw)).row(0, named=True)
    assert got["dram_bandwidth_Bps"] == pytest.approx(nbytes / seconds)
    assert got["dram_bandwidth_Bps_source"].startswith("derived")
    # with the section, ncu's own figure stays (and no derivation is claimed)
    full = kernel_metrics(ncu.read(DETAILS)).row(0, named=True)
    mwa = next(r for r in rows if r["Section Name"] == "Memory Workload Analysis"
               and r["Metric Name"] == "Memory Throughput")
    assert mwa["Metric Unit"] == "Gbyte/s"
    assert full["dram_bandwidth_Bps"] == pytest.approx(float(mwa["Metric Value"]) * 1e9)
    assert full.get("dram_bandwidth_Bps_source") is None


def test_grid_and_block_sizes_from_the_launch_dimensions():
    row = _rows()[0]
    dims = lambda s: [int(x) for x in s.strip("()").split(",")]  # noqa: E731
    grid, block = dims(row["Grid Size"]), dims(row["Block Size"])
    got = kernel_metrics(ncu.read(DETAILS)).row(0, named=True)
    assert got["grid_size"] == grid[0] * grid[1] * grid[2] == 80
    assert got["block_size"] == block[0] * block[1] * block[2] == 128
    model = profiles_only()
    model.ncu, model.ncu_rules = ncu.read_profile(str(DETAILS))
    report = attention.build_report(model)
    launch = next(c for s in report.sections for c in s.children if c.title == "Launch configuration")
    shown = {f.label: f.value for f in launch.figures}
    assert shown["grid_size"] == "80" and shown["block_size"] == "128"
