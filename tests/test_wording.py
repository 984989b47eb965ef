"""Issue 20's misleading wordings: what is missing is said as what it is (no bubbles is not "no CUDA
calls"; a table not given is not "none in the profile"), CUDA API names as nsys prints them, HIP's
blocking copies counted as synchronizing."""
from __future__ import annotations

from pathlib import Path

import polars as pl

from sglang_tracing.analyzer import api
from sglang_tracing.analyzer.analyses import stats_tables, timeline, topdown
from sglang_tracing.analyzer.model import CPU_OP_SCHEMA

KERN_SUM = Path(__file__).resolve().parent / "data" / "realdata" / "nsys_csv" / \
    "llmperfopt_dsocr_decode_cuda_gpu_kern_sum.csv"


def _calls(*names: str) -> pl.DataFrame:
    return pl.DataFrame([(i * 10, i * 10 + 5, n, 1, i, "cuda_runtime") for i, n in enumerate(names)],
                        schema=CPU_OP_SCHEMA, orient="row")


def test_api_names_lose_only_nsys_four_digit_version_suffixes():
    names = stats_tables.api_summary(_calls("cudaLaunchKernel_v7000", "cuGetProcAddress_v2",
                                         "cudaStreamIsCapturing_v10000"))["Name"].to_list()
    assert sorted(names) == ["cuGetProcAddress_v2", "cudaLaunchKernel", "cudaStreamIsCapturing_v10000"]


def test_hip_blocking_copies_are_synchronizing():
    names = pl.Series(["hipMemcpyWithStream", "hipMemcpy", "hipMemcpyAsync", "hipLaunchKernel"])
    assert names.str.contains(topdown.SYNC_CALLS).to_list() == [True, True, False, False]


def test_no_bubbles_is_not_no_api_calls():
    no_gaps = pl.DataFrame(schema={"start_ns": pl.Int64, "end_ns": pl.Int64})
    host = topdown.host_during_bubbles(no_gaps, _calls("cudaLaunchKernel"))
    assert host == {"bubble_ns": 0, "in_sync_ns": 0, "in_other_api_ns": 0, "no_api_ns": 0}
    assert topdown.host_during_bubbles(no_gaps, _calls().clear()) is None


def test_tables_not_given_are_named_as_not_given():
    report = timeline.build_report(api.load(None, nsys=str(KERN_SUM)))
    memops = next(s for s in report.sections if s.title.startswith("GPU memory operations by time"))
    (fig,) = memops.figures
    assert fig.value is None and "cuda_gpu_mem_time_sum" in fig.source
