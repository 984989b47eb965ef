"""Issue 5: every profiler file in ../shared/realdata is read, and bad input fails cleanly."""
from __future__ import annotations

import csv
import gzip
import os
import re
import shutil
import sqlite3

import polars as pl
import pytest

from sglang_tracing.analyzer.analyses import attention
from sglang_tracing.analyzer.analyses.stats_tables import kernel_summary
from sglang_tracing.errors import TraceError
from sglang_tracing.analyzer.loaders import kineto, ncu, nsys, nsys_stats

from conftest import REALDATA

KERN_SUM_COLUMNS = nsys_stats.COLUMNS["cuda_gpu_kern_sum"]
NSYS_2022 = os.path.join(REALDATA, "nsys_sqlite", "pipit_saxpy-mpi-cuda_nsys_perlmutter0.sqlite.gz")
NSYS_2024 = os.path.join(REALDATA, "nsys_sqlite", "nvfuser_64ee035_h200_hopper_matmul_report1.sqlite.gz")
NSYS_REP = os.path.join(REALDATA, "nsys_rep", "nvfuser_64ee035_h200_hopper_matmul_report1.nsys-rep")
NCU_OLD = os.path.join(REALDATA, "ncu_csv", "leleucas_bert_flashattn_ncu_details.csv.gz")
NCU_NEW = os.path.join(REALDATA, "ncu_csv", "llmperfopt_dsocr_k0013_flash_fwd_splitkv_ncu_details.csv")
NCU_TEXT = os.path.join(REALDATA, "ncu_text", "quantizedmha_run2_fa_kernel_L4_ncu_full.txt")
KINETO = os.path.join(REALDATA, "kineto", "tracelens_h100_hf_Qwen1.5-0.5B-Chat.json.gz")
KERN_SUM = os.path.join(REALDATA, "nsys_csv", "llmperfopt_dsocr_decode_cuda_gpu_kern_sum.csv")


def plain_sqlite(path: str, tmp_path) -> sqlite3.Connection:
    """A connection to the decompressed export, for queries independent of the reader."""
    out = tmp_path / os.path.basename(path).removesuffix(".gz")
    out.write_bytes(gzip.decompress(open(path, "rb").read()))
    return sqlite3.connect(out)


@pytest.mark.parametrize("path, n_kernels, n_nvtx_rows, n_api_calls, gpu", [
    (NSYS_2022, 5, 24, 57, "NVIDIA A100-SXM4-40GB"),  # 95 RUNTIME rows, 38 of them CUDA backtrace records
    (NSYS_2024, 19, 652, 968, "NVIDIA H200"),
])
def test_nsys_sqlite_both_schemas(path, n_kernels, n_nvtx_rows, n_api_calls, gpu):
    con, _ = nsys.open_export(path)
    k = nsys.kernels(con)
    assert k.height == n_kernels
    assert k["name"].str.len_chars().min() > 0  # every name resolved through StringIds
    assert (k["dur_ns"] > 0).all() and k["grid_x"].min() >= 1 and k["block_x"].min() >= 1
    raw_rows = con.execute("select count(*) from NVTX_EVENTS").fetchone()[0]
    assert raw_rows == n_nvtx_rows
    ranges = nsys.nvtx(con)
    assert 0 < ranges.height <= raw_rows and ranges["text"].null_count() == 0
    assert gpu in nsys.devices(con)["name"].to_list()
    calls = nsys.api_calls(con)
    assert calls.height == n_api_calls and calls["name"].str.len_chars().min() > 0
    assert k.join(calls, on="correlation", how="anti").is_empty()  # every kernel has its launch call
    assert nsys.session_start_ns(con) > 1.6e18


def test_nsys_kernel_summary_matches_sql(tmp_path):
    """kernel_summary follows cuda_gpu_kern_sum: checked against the same totals computed in SQL."""
    con, _ = nsys.open_export(NSYS_2024)
    ours = kernel_summary(nsys.kernels(con))
    assert ours.columns == KERN_SUM_COLUMNS
    sql = plain_sqlite(NSYS_2024, tmp_path).execute("""select s.value, sum(k.end - k.start), count(*), min(k.end - k.start), max(k.end - k.start)
                         from CUPTI_ACTIVITY_KIND_KERNEL k join StringIds s on k.demangledName = s.id
                         group by s.value""").fetchall()
    by_name = {r["Name"]: r for r in ours.iter_rows(named=True)}
    assert len(by_name) == len(sql)
    for name, total, n, lo, hi in sql:
        r = by_name[name]
        assert (r["Total Time (ns)"], r["Instances"], r["Min (ns)"], r["Max (ns)"]) == (total, n, lo, hi)
        assert r["Avg (ns)"] == pytest.approx(total / n)
    assert ours["Time (%)"].sum() == pytest.approx(100.0)


def test_nsys_stats_csv_reads_into_the_same_schema():
    ref = nsys_stats.read(KERN_SUM)["cuda_gpu_kern_sum"]
    assert ref.columns == KERN_SUM_COLUMNS
    assert ref.height == 46 and ref["Instances"].min() >= 1
    assert ref["Time (%)"].sum() == pytest.approx(100.0, abs=0.5)
    # the same figures recomputed from one-instance-per-row data give the CSV's own totals
    row = ref.row(0, named=True)
    assert row["Avg (ns)"] == pytest.approx(row["Total Time (ns)"] / row["Instances"], rel=1e-3)


def test_nsys_rep_without_nsys_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(TraceError, match="nsys is not on PATH"):
        nsys.open_export(NSYS_REP)


def test_kineto_trace():
    k, ops = kineto.frames(kineto.read(KINETO))
    assert k.height == 1465
    assert k["name"].str.contains("sm90_xmma_gemm").any()
    assert k["start_ns"].min() > 1.7e18  # put on the wall clock by baseTimeNanoseconds
    corr = set(k["correlation"].drop_nulls()) & set(ops["correlation"].drop_nulls())
    assert len(corr) > 1000  # kernels join their launching runtime calls


@pytest.mark.parametrize("path, kernels", [(NCU_OLD, 10), (NCU_NEW, 1), (NCU_TEXT, 1)])
def test_ncu_every_layout(path, kernels):
    long = ncu.read(path)
    assert long["kernel_id"].n_unique() == kernels
    metrics = attention.kernel_metrics(long)
    assert metrics.height == kernels


def test_ncu_new_layout_numbers_and_na():
    long = ncu.read(NCU_NEW)
    assert long.filter(pl.col("text") == "n/a")["value"].null_count() == long.filter(pl.col("text") == "n/a").height
    row = attention.kernel_metrics(long).row(0, named=True)
    assert row["block"] == "(128, 1, 1)" and row["grid"] == "(1, 8, 10)"
    # flash-attn runs flash_fwd_splitkv for prefill as well as decode: the name alone does not say
    assert row["phase"] == "unknown"
    thousands = long.filter(pl.col("text").str.contains(r"^\d{1,3}(,\d{3})+$"))
    assert thousands.height and (thousands["value"] >= 1000).all()


def test_ncu_text_sections():
    row = attention.kernel_metrics(ncu.read(NCU_TEXT)).row(0, named=True)
    assert row["theoretical_occupancy_pct"] == 50.0 and row["achieved_occupancy_pct"] == pytest.approx(31.01)
    assert row["duration_ns"] == pytest.approx(7.85e6)
    assert row["occupancy_limiter"] == "shared memory"  # block limits 24 SM, 4 registers, 3 shared mem, 6 warps


@pytest.mark.parametrize("raw", ["h200-ncu-triton/attention-raw.csv.gz",
                                 "h200-ncu/ncu-flashinfer/trace/attention-raw.csv.gz"])
def test_h200_ncu_raw_page_has_stalls(repo_root, raw):
    long = ncu.read(os.path.join(repo_root, "traces/examples", raw))
    stalls = attention.warp_stalls(long)
    assert set(stalls["kernel_id"]) == {0, 1, 2, 3}
    # cycles per issued instruction for each reason: the CSV's own columns, read with the csv module
    with gzip.open(os.path.join(repo_root, "traces/examples", raw), "rt", newline="") as f:
        rows = list(csv.reader(f))
    column = re.compile(r"^smsp__average_warps_issue_stalled_(\w+)_per_issue_active\.ratio$")
    for kernel in rows[2:]:
        expected = {column.match(h).group(1): float(v) for h, v in zip(rows[0], kernel) if column.match(h) and v}
        got = stalls.filter(pl.col("kernel_id") == int(kernel[0]))
        assert dict(zip(got["reason"], got["cycles"])) == pytest.approx(expected)
    if "flashinfer" in raw:  # traces/examples/README.md: long-scoreboard stalls dominate, 32-37%
        top = stalls.group_by("kernel_id").agg(pl.col("reason").first(), pl.col("share_pct").first()).sort("kernel_id")
        assert top["reason"].to_list() == ["long_scoreboard"] * 4
        assert [round(x) for x in top["share_pct"]] == [37, 36, 35, 32]
    metrics = attention.kernel_metrics(long)
    assert metrics["phase"].to_list() == ["prefill", "prefill", "decode", "decode"]
    # roofline from the full set: decode reads KV at ~2 FLOP/byte, far left of the ridge, so its share
    # of the roof is its share of DRAM bandwidth, which ncu measured on its own
    decode = metrics.filter(pl.col("phase") == "decode")
    assert (decode["arith_intensity_flop_per_byte"] < 10).all() and decode["roofline_side"].to_list() == ["memory"] * 2
    assert (decode["pct_of_roof"] - decode["dram_throughput_pct"]).abs().max() < 2
    prefill = metrics.filter(pl.col("phase") == "prefill")
    assert (prefill["flop_tensor"] > 1e9).all()  # causal attention over 512 tokens, 32 heads of 128


# ---- bad input: one-line error naming the file ----
def _truncate(src: str, dst, keep: float) -> str:
    data = open(src, "rb").read()
    with open(dst, "wb") as f:
        f.write(data[: int(len(data) * keep)])
    return str(dst)


def test_truncated_and_foreign_inputs(tmp_path):
    whole = tmp_path / "whole.sqlite"
    whole.write_bytes(gzip.decompress(open(NSYS_2024, "rb").read()))
    with pytest.raises(TraceError, match="SQLite|corrupt|truncated"):
        con, p = nsys.open_export(_truncate(str(whole), tmp_path / "cut.sqlite", 0.3))
        nsys.kernels(con)
    not_nsys = tmp_path / "other.sqlite"
    sqlite3.connect(not_nsys).execute("create table t (x)")
    with pytest.raises(TraceError, match="not an Nsight Systems export"):
        nsys.open_export(not_nsys)
    plain, bad_csv, empty = tmp_path / "kineto.json", tmp_path / "bad.csv", tmp_path / "empty.txt"
    plain.write_bytes(gzip.decompress(open(KINETO, "rb").read())[:50000])
    bad_csv.write_text('"ID","Something"\n"0","1"\n')
    empty.write_text("")
    for read, path, problem in ((kineto.read, plain, "truncated JSON"), (ncu.read, bad_csv, "not an Nsight Compute CSV"),
                                (nsys_stats.read, bad_csv, "not an nsys stats CSV"), (ncu.read, empty, "empty")):
        with pytest.raises(TraceError, match=problem):
            read(path)
    shutil.copy(NCU_TEXT, tmp_path / "x.txt")
    assert ncu.read(tmp_path / "x.txt").height > 0
