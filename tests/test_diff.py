"""Issues 20/21, ``sglang-trace diff``: a self-diff shows no change, per-call changes are told from count
changes, different workloads are said, the user's latencies are compared without internal requests."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from sglang_tracing import semconv as sc
from sglang_tracing.analyzer import api
from sglang_tracing.analyzer.analyses import diff
from sglang_tracing.analyzer.renderers import text

import raw_spans

ROOT = Path(__file__).resolve().parent.parent
REAL = ROOT / "tests" / "data" / "realdata"
EXAMPLES = ROOT / "traces" / "examples"
SELF_DIFFED = [REAL / "nsys_sqlite" / "nvfuser_64ee035_h200_hopper_matmul_report1.sqlite.gz",
               REAL / "nsys_sqlite" / "pipit_saxpy-mpi-cuda_nsys_perlmutter0.sqlite.gz",
               REAL / "nsys_csv" / "llmperfopt_dsocr_decode_cuda_gpu_kern_sum.csv",
               REAL / "kineto" / "tracelens_h100_hf_Qwen1.5-0.5B-Chat.json.gz",
               EXAMPLES / "h200-ttft-agreement", EXAMPLES / "h200-backends" / "server-triton" / "trace"]


@pytest.mark.parametrize("path", SELF_DIFFED, ids=lambda p: p.name)
def test_self_diff_shows_no_change(path):
    result = diff.compute(api.load_input(str(path)), api.load_input(str(path)))
    assert result.workload.same and result.workload.reasons == []
    assert result.tables
    for t in result.tables:
        assert t.rows is not None and set(t.rows["status"]) == {"same"}, t.title
        assert set(t.rows["calls"]) == {"same"} and (t.rows["delta_ns"] == 0).all(), t.title
    if result.requests.height:
        assert result.requests["A"].to_list() == result.requests["B"].to_list()


def _kern_sum(path: Path, rows: list[tuple[str, int, int]]) -> str:
    """An nsys stats cuda_gpu_kern_sum CSV of (name, instances, total ns)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Time (%)", "Total Time (ns)", "Instances", "Avg (ns)", "Med (ns)", "Min (ns)", "Max (ns)",
                    "StdDev (ns)", "Name"])
        for name, n, total in rows:
            w.writerow([0, total, n, total / n, total / n, total / n, total / n, 0, name])
    return str(path)


def test_count_changes_are_told_from_per_call_changes(tmp_path):
    """The issue's GEMV: 3 calls of 3.87 us in A, 329,035 of 3.74 us in B: each call got faster, it ran more."""
    gemv, attn = "gemv", "attention"
    a = _kern_sum(tmp_path / "a.csv", [(gemv, 3, 3 * 3870), (attn, 100, 100 * 10_000)])
    b = _kern_sum(tmp_path / "b.csv", [(gemv, 329_035, 329_035 * 3740), (attn, 100, 100 * 12_000)])
    result = diff.compute(api.load_input(a), api.load_input(b))
    rows = {r["name"]: r for r in result.tables[0].rows.iter_rows(named=True)}
    assert (rows[gemv]["status"], rows[gemv]["calls"]) == ("faster", "more")
    assert rows[gemv]["per_call_pct"] == pytest.approx((3740 - 3870) / 3870 * 100)
    assert rows[gemv]["count_effect_ns"] == pytest.approx((329_035 - 3) * 3870)
    assert (rows[attn]["status"], rows[attn]["calls"]) == ("slower", "same")
    report = diff.describe(result)
    kernels = next(s for s in report.sections if s.title == "Kernels")
    worst = next(f for f in kernels.figures if f.label == "largest per-call regression")
    assert worst.source == attn
    assert not result.workload.same  # 103 vs 329,135 kernel launches


def test_traced_runs_compare_user_latencies_without_internal_requests():
    """B holds a readiness probe and SGLang's warm-up: they are in neither the request figures nor the
    span table."""
    a, b = EXAMPLES / "h200-llama2-7b-triton", EXAMPLES / "h200-ttft-agreement"
    result = diff.compute(api.load_input(str(a)), api.load_input(str(b)))
    got = {m: y for m, y in result.requests.select("metric", "B").iter_rows()}
    spans = raw_spans.spans(b)
    roots = [s for s in raw_spans.named(spans, sc.REQUEST) if s["attrs"].get(sc.INTERNAL) is None]
    assert len(roots) == len(raw_spans.named(spans, sc.REQUEST)) - 2
    e2e = sorted(s["end"] - s["start"] for s in roots)
    assert got["requests"] == len(roots)
    assert got["end-to-end p50"] == pytest.approx(e2e[round(0.5 * (len(e2e) - 1))] / 1e6, rel=1e-6)
    assert got["output tokens"] == sum(s["attrs"][sc.OUTPUT_TOKENS] for s in roots)
    spans_table = next(t for t in result.tables if t.title == diff.SPANS)
    assert spans_table.rows.filter(spans_table.rows["name"] == sc.REQUEST)["b_n"][0] == len(roots)
    assert not result.workload.same  # 141 vs 120 requests


def test_diff_report_keeps_every_row_and_prints_long_means_in_seconds():
    a, b = EXAMPLES / "h200-llama2-7b-triton", EXAMPLES / "h200-ttft-agreement"
    report = diff.build_report(api.load_input(str(a)), api.load_input(str(b)))
    spans = next(s for s in report.sections if s.title == diff.SPANS)
    decode = spans.table.filter(spans.table["name"] == sc.REQUEST_DECODE).row(0, named=True)
    assert decode["A_per_call"].endswith(" s")
    assert diff.duration(2_500_000_000) == "2.5 s" and diff.duration(3_870) == "3.87 us"
    assert text.render(report)
