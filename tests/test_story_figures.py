"""Issue 21: the story reads like the plan. Its figures checked on typed results (story.compute,
story_figures) against numbers computed here from the spans frame or by hand."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from sglang_tracing import semconv as sc
from sglang_tracing.analyzer import api
from sglang_tracing.analyzer.analyses import story, story_figures, story_report
from sglang_tracing.analyzer.loaders.trace_dir import load_trace_dir

EXAMPLES = Path(__file__).resolve().parent.parent / "traces" / "examples"
TRITON = EXAMPLES / "h200-llama2-7b-triton"  # 141 user requests, 128 output tokens each, NVML + GPM
LAYER = EXAMPLES / "h200-nsys-layer" / "nsys-triton" / "trace"  # layer ranges and nsys kernels


@pytest.fixture(scope="module")
def triton():
    return story.compute(load_trace_dir(TRITON), "slowest", "llama-2-7b")


def test_run_summary_percentiles_and_throughput(triton):
    roots = (load_trace_dir(TRITON).spans.filter(pl.col("name") == sc.REQUEST)
             .select(pl.col(sc.RID).alias("rid"), "start_ns", "end_ns"))
    stats = triton.requests.filter(pl.col("complete") & pl.col("internal").is_null())
    run = triton.run
    assert run.requests == stats.height == 141
    assert run.ttft_ns[50] == pytest.approx(np.percentile(stats["ttft_ns"].to_numpy(), 50))
    assert run.ttft_ns[99] == pytest.approx(np.percentile(stats["ttft_ns"].to_numpy(), 99))
    gaps = np.concatenate([np.diff(np.array(t)) for t in stats["token_times_ns"].to_list()])
    assert run.itl_ns[90] == pytest.approx(np.percentile(gaps, 90))
    mine = roots.join(stats.select("rid"), on="rid")
    assert run.output_tok_per_s == pytest.approx(141 * 128 / ((mine["end_ns"].max() - mine["start_ns"].min()) / 1e9))
    assert (triton.shape.layers, triton.shape.hidden, triton.shape.heads) == (32, 4096, 32)


def test_milestones_are_ordered_offsets_from_arrival(triton):
    req = triton.request
    offsets = {m.label: m.offset_ns for m in triton.milestones}
    assert offsets["received"] == 0
    assert offsets["GPU begins (prefill launched)"] == req["prefill_start_ns"] - req["received_ns"]
    assert offsets["complete"] == req["e2e_ns"]
    known = [m.offset_ns for m in triton.milestones if m.offset_ns is not None]
    assert known == sorted(known)


def test_itl_at_the_plans_token_marks(triton):
    marks = triton.itl_marks
    times = triton.request["token_times_ns"]
    assert marks["token_index"].to_list() == [1, 32, 64, 127]  # 128 tokens: the last stands in for 128
    for idx, kv, itl in marks.iter_rows():
        assert kv == triton.request["prompt_tokens"] + idx
        assert itl == pytest.approx((times[idx] - times[idx - 1]) / 1e6, abs=1e-3)


def test_a_weak_fit_is_flat_within_noise(triton):
    assert triton.trend["r2"] < story_figures.TREND_MIN_R2
    assert triton.verdict == "flat within noise"
    assert story_figures.trend_verdict({"r2": 0.09, "slope_ns_per_token": 900.0}) == "flat within noise"
    assert story_figures.trend_verdict({"r2": 0.8, "slope_ns_per_token": 900.0}) == "grows with KV length"


def test_kernel_shares_by_name():
    kernels = pl.DataFrame({"name": ["flash_fwd_kernel", "sm90_xmma_gemm_f16", "nvjet_tst_128", "rms_norm"],
                            "total_ns": [30, 50, 10, 10]})
    shares = story_figures.kernel_shares(kernels)
    assert (shares.attention_pct, shares.gemm_pct) == (30.0, 60.0)


def test_the_profiled_pass_gives_layer_and_kernel_figures(triton):
    """The measured trace has no layer ranges or kernels; a profiled pass (layer ranges + nsys) fills them."""
    assert triton.prefill.ops is None and triton.prefill.kernels.is_empty()
    profiled = api.load(str(LAYER), nsys=str(LAYER / "nsys.sqlite.gz"))
    found = story.compute(load_trace_dir(TRITON), "slowest", "llama-2-7b", profiled=profiled)
    assert found.profiled_dir == str(LAYER)
    assert found.profiled.layers.height == 32 and found.profiled.ops.height > 0
    assert found.profiled.kernels["total_ns"].sum() > 0
    report = story_report.describe(found)
    section = next(s for s in report.sections if s.title == "Prefill, from the profiled pass")
    ops = next(c for c in section.children if c.title.startswith("GPU time by op")).table
    assert ops["hotspot"].to_list()[0] != "" and set(ops["hotspot"].to_list()[1:]) == {""}
    assert ops["total_ns"][0] == ops["total_ns"].max()
    by_op = dict(zip(found.profiled.ops["op"], found.profiled.ops["total_ns"]))
    total = sum(by_op.values())
    assert found.profiled.shares.attention_pct == pytest.approx(100 * by_op["attention"] / total)
    gemm = sum(by_op.get(op, 0) for op in ("qkv_proj", "o_proj", "gate_up_proj", "down_proj", "lm_head"))
    assert found.profiled.shares.gemm_pct == pytest.approx(100 * gemm / total)


def test_hardware_rows_read_as_the_plan(triton):
    report = story_report.describe(triton)
    prefill = next(s for s in report.sections if s.title == "Prefill")
    rows = {f.label: f.value for f in prefill.figures}
    means = triton.prefill.hardware_means
    assert rows["prefill: SM active"] == f"{means[sc.GPM_SM_UTIL]:.0f}%"
    assert rows["prefill: HBM bandwidth"] == f"{means[sc.GPM_DRAM_BW_UTIL]:.0f}%"
    assert rows["prefill: GPU memory used"] == f"{means[sc.NVML_MEM_USED] / 1e9:.1f} GB"


def test_every_stamp_once_on_one_clock_in_the_order_it_happened():
    """h200-ttft-agreement (HTTP stamps): each milestone is its raw stamp less the request's arrival, and
    the list reads in time order even where the first byte leaves before the scheduler's token stamp."""
    import raw_spans

    trace = EXAMPLES / "h200-ttft-agreement"
    spans = raw_spans.spans(trace)
    roots = {s["attrs"][sc.RID]: s for s in raw_spans.named(spans, sc.REQUEST)}
    first_byte = {s["attrs"][sc.RID]: s["attrs"][sc.FIRST_BYTE_NS] for s in raw_spans.named(spans, sc.REQUEST_HTTP)
                  if s["attrs"].get(sc.FIRST_BYTE_NS)}
    requests = story.compute(load_trace_dir(trace), "slowest").requests.filter(pl.col("complete"))
    checked = 0
    for req in requests.iter_rows(named=True):
        if req["rid"] not in first_byte:
            continue
        found = story_figures.milestones(req)
        offsets = {m.label: m.offset_ns for m in found}
        assert offsets["first byte sent (TTFT)"] == first_byte[req["rid"]] - roots[req["rid"]]["start"]
        assert offsets["complete"] == roots[req["rid"]]["end"] - roots[req["rid"]]["start"]
        assert [m.offset_ns for m in found] == sorted(m.offset_ns for m in found)
        checked += 1
    assert checked >= 10
