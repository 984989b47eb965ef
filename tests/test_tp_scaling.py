"""Issue 12: collectives recognised by what they are, wait vs transfer per rank, rank labels, and the
TP report on the committed two-H200 recording, checked against figures computed here from the raw
files (plain json over the Kineto and OTLP-JSON files), not by the analysis' own code."""
from __future__ import annotations

import gzip
import json
import statistics
import sys
from pathlib import Path

import polars as pl
import pytest

from sglang_tracing.analyzer.analyses import collectives, tp_scaling
from sglang_tracing.analyzer.loaders import tp_experiment

EXAMPLE = Path(__file__).parent.parent / "traces" / "examples" / "h200x2-tp"

# names as they appear in real profiles (SGLang custom all-reduce v1/v2, NCCL 2.2x, torch symmetric
# memory, gloo/c10d CPU ops) and compute kernels that must not count
COLLECTIVE_NAMES = {
    "void (anonymous namespace)::all_reduce_kernel<__nv_bfloat16, 2, false>(...)": ("custom all-reduce", "all_reduce"),
    "void cross_device_reduce_1stage<half, 2>(RankData*, RankSignals, Signal*, half*, int, int)":
        ("custom all-reduce", "all_reduce"),
    "ncclDevKernel_AllReduce_Sum_bf16_RING_LL(ncclDevKernelArgsStorage<4096ul>)": ("NCCL", "all_reduce"),
    "ncclKernel_AllGather_RING_LL_Sum_int8_t(ncclDevComm*, unsigned long, ncclWork*)": ("NCCL", "all_gather"),
    "ncclDevKernel_ReduceScatter_Sum_f32_RING_LL(ncclDevKernelArgsStorage<4096ul>)": ("NCCL", "reduce_scatter"),
    "void c10d::symmetric_memory::one_shot_all_reduce_kernel<float, 16, 8>(...)": ("symmetric memory", "all_reduce"),
    "gloo:all_reduce": ("gloo", "all_reduce"),
    "c10d::allreduce_": ("c10d", "all_reduce"),
}
COMPUTE_NAMES = ["void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float>>(...)",
                 "void at::native::elementwise_kernel_with_index<int, broadcast_fn>",
                 "nvjet_sm90_hsh_256x128_64x4_1x2_h_bz_coopA_NTN", "_fwd_kernel_stage1"]


def test_collectives_recognised_by_what_they_are():
    frame = pl.DataFrame({"name": list(COLLECTIVE_NAMES) + COMPUTE_NAMES})
    got = {r["name"]: (r["family"], r["op"]) for r in collectives.classify(frame).iter_rows(named=True)}
    assert got == COLLECTIVE_NAMES


def test_wait_is_the_excess_over_the_quickest_rank():
    # call 0: rank 0 arrived last (2 us); call 1: rank 1 arrived last (3 us)
    calls = pl.DataFrame({"rank": [0, 1, 0, 1], "call": [0, 0, 1, 1], "dur_ns": [2000, 9000, 7000, 3000]})
    split, problem = collectives.split_wait(calls)
    assert problem is None
    assert split.sort("call", "rank")["transfer_ns"].to_list() == [2000, 2000, 3000, 3000]
    assert split.sort("call", "rank")["wait_ns"].to_list() == [0, 7000, 4000, 0]
    uneven, problem = collectives.split_wait(calls.head(3))
    assert "rank 0: 2, rank 1: 1" in problem and uneven["wait_ns"].null_count() == 3


def test_scheduler_ranks_read_from_sglang_parallel_state(monkeypatch):
    from sglang_tracing.patches import _compat

    monkeypatch.delitem(sys.modules, "sglang.srt.runtime_context", raising=False)  # a test before may load it

    class PS:
        tp_rank, gpu_id = 1, 1

    class New:  # SGLang 0.5.17 keeps ranks on Scheduler.ps
        ps = PS()

    class Old:
        tp_rank, gpu_id = 3, 2

    assert [_compat.scheduler_rank(New(), "tp_rank"), _compat.scheduler_rank(New(), "gpu_id")] == [1, 1]
    assert [_compat.scheduler_rank(Old(), "tp_rank"), _compat.scheduler_rank(Old(), "gpu_id")] == [3, 2]
    assert _compat.scheduler_rank(object(), "tp_rank") is None


def test_scheduler_ranks_from_the_runtime_context(monkeypatch):
    """SGLang 0.5.23 keeps ranks process-wide (runtime_context.get_parallel / get_device)."""
    import types

    from sglang_tracing.patches import _compat

    ctx = types.ModuleType("sglang.srt.runtime_context")
    ctx.get_parallel = lambda: types.SimpleNamespace(tp_rank=1, dp_rank=0)
    ctx.get_device = lambda: types.SimpleNamespace(gpu_id=1)
    monkeypatch.setitem(sys.modules, "sglang.srt.runtime_context", ctx)
    assert [_compat.scheduler_rank(object(), n) for n in ("tp_rank", "gpu_id", "pp_rank")] == [1, 1, None]


def _otlp_spans(path: Path):
    for line in gzip.open(path, "rt"):
        for rs in json.loads(line)["resourceSpans"]:
            for ss in rs["scopeSpans"]:
                for s in ss["spans"]:
                    attrs = {}
                    for a in s.get("attributes", []):
                        v = a["value"]
                        attrs[a["key"]] = (int(v["intValue"]) if "intValue" in v else v.get("stringValue") if
                                           "stringValue" in v else [x.get("stringValue") for x in
                                                                    v.get("arrayValue", {}).get("values", [])])
                    yield s["name"], attrs


def _raw_allreduce_durations(rank: int) -> list[int]:
    doc = json.load(gzip.open(EXAMPLE / "tp2" / "profile" / f"tp-TP-{rank}.trace.json.gz"))
    ks = sorted((e["ts"], e["dur"]) for e in doc["traceEvents"] if e.get("cat") == "kernel"
                and ("all_reduce" in e["name"] or "AllReduce" in e["name"]))
    return [d for _, d in ks]


def _raw_decode_steps(tp: int) -> list[int]:
    """GPU ns of each full-batch (32) decode forward on rank 0 that ran only the cell's measured requests."""
    rids = {q["rid"] for q in json.loads((EXAMPLE / f"tp{tp}" / "result.json").read_text())["requests"]}
    steps = []
    for f in (EXAMPLE / f"tp{tp}" / "trace").glob("spans-scheduler-tp0-*.jsonl.gz"):
        for name, at in _otlp_spans(f):
            if (name == "sglang.scheduler.forward" and at.get("sglang.batch.forward_mode") == "decode"
                    and at.get("sglang.batch.size") == 32 and set(at["sglang.batch.rids"]) <= rids):
                steps.append(at["sglang.forward.gpu_end_ns"] - at["sglang.forward.gpu_start_ns"])
    return steps


@pytest.fixture(scope="module")
def example_result():
    inputs = tp_experiment.load(EXAMPLE)
    return inputs, tp_scaling.compute(inputs)


def test_two_h200_ranks_and_their_collectives(example_result):
    inputs, _ = example_result
    files = sorted(p.name.split("-pid")[0] for p in (EXAMPLE / "tp2" / "trace").glob("spans-scheduler-*"))
    assert files == ["spans-scheduler-tp0", "spans-scheduler-tp1"]
    a = tp_scaling.allreduce(inputs.cells[2], inputs.model_config)
    r0, r1 = _raw_allreduce_durations(0), _raw_allreduce_durations(1)
    assert len(r0) == len(r1) == 650  # 10 profiled forwards x (2 per layer x 32 + embedding)
    transfer = [min(a_, b) for a_, b in zip(r0, r1)]
    waits = {0: sum(a_ - t for a_, t in zip(r0, transfer)), 1: sum(b - t for b, t in zip(r1, transfer))}
    summary = a.summary.group_by("rank").agg(pl.col("wait_ms").sum(), pl.col("calls").sum()).sort("rank")
    assert summary["calls"].to_list() == [650, 650]
    for rank in (0, 1):  # Kineto durations are microseconds
        assert summary.filter(pl.col("rank") == rank)["wait_ms"][0] == pytest.approx(waits[rank] / 1e3, rel=1e-3)
    assert waits[1] > 5 * waits[0]  # the profile pass: rank 1 waits for rank 0
    assert set(a.families) == {"NCCL", "custom all-reduce"}
    decode = a.summary.filter(pl.col("mode") == "decode")
    assert decode["calls_per_forward"].to_list() == [65.0, 65.0]
    assert decode["median_msg_bytes"].to_list() == [32 * 4096 * 2] * 2  # batch 32 x hidden 4096 x fp16


def test_two_h200_scaling_figures_match_raw_spans(example_result):
    inputs, analysis = example_result
    table = analysis.table
    for tp in (1, 2):
        result = json.loads((EXAMPLE / f"tp{tp}" / "result.json").read_text())
        row = table.filter(pl.col("tp") == tp).row(0, named=True)
        assert row["decode_step_gpu_ms"] == pytest.approx(statistics.median(_raw_decode_steps(tp)) / 1e6, rel=1e-6)
        assert row["batch_reached"] == 32 and row["requests_complete"] == 64
        tput = sum(q["completion_tokens"] for q in result["requests"]) / (result["wall_ns"] / 1e9)
        assert row["output_tok_per_s"] == pytest.approx(tput, abs=0.1)
    t1, t2 = (table.filter(pl.col("tp") == n).row(0, named=True) for n in (1, 2))
    assert t2["scaling_efficiency_pct"] == pytest.approx(t2["output_tok_per_s"] / (2 * t1["output_tok_per_s"]) * 100,
                                                        abs=0.1)
    assert analysis.flags == {1: [], 2: []}  # warmed up: nothing above 100%, every request complete, batch 32 reached


def test_implausible_cells_are_flagged_not_advised():
    fig = {"requests_complete": 60, "requests_wanted": 64, "batch_wanted": 32, "batch_reached": 26,
           "gpu_ms_total": 900.0, "wall_ms": 800.0, "decode_step_gpu_ms": 7.0}
    row = {"tp": 2, "scaling_efficiency_pct": 249.0, "itl_ms": 6.0}
    flags = tp_scaling.plausibility(row, fig)
    assert len(flags) == 5
    assert any("249%" in f for f in flags) and any("60 of 64" in f for f in flags)
    assert any("reached 26" in f for f in flags) and any("900 ms > wall" in f for f in flags)


def test_projection_labelled_with_its_error(example_result):
    """The naive projection (TP=1 alone: its decode step split perfectly, bandwidth-only all-reduces) recomputed
    here from the raw files: TP=1's decode steps from its spans, both cells' ITLs from result.json, the layer
    count from the manifest, the H200 pair's NVLink from its recorded topology (NV18, 25 GB/s a link each way)."""
    _, result = example_result
    table = result.projection.table
    assert table["kind"].to_list() == ["measured", "measured", "projection", "projection"]
    step1 = statistics.median(_raw_decode_steps(1)) / 1e6
    itl = {tp: statistics.median(q["mean_itl_ns"] for q in json.loads((EXAMPLE / f"tp{tp}" / "result.json")
                                                                      .read_text())["requests"]) / 1e6
           for tp in (1, 2)}
    manifest = json.loads((EXAMPLE / "tp1" / "trace" / "manifest.json").read_text())
    layers, hidden = manifest["model_config"]["num_hidden_layers"], manifest["model_config"]["hidden_size"]
    msg_bytes, link_bytes_per_s = 32 * hidden * 2, 18 * 25e9  # decode batch 32 x hidden x fp16; NV18
    naive_step2 = step1 / 2 + (2 * layers + 1) * msg_bytes * 1.0 / link_bytes_per_s * 1e3  # 2(n-1)/n = 1 at n=2
    naive_itl2 = naive_step2 + (itl[1] - step1)  # TP=1's CPU overhead beyond its GPU step, kept
    tp2 = table.filter(pl.col("tp") == 2).row(0, named=True)
    assert tp2["naive_itl_ms (TP=1 alone)"] == pytest.approx(naive_itl2, abs=0.01)
    assert result.projection.naive_error_pct == pytest.approx((naive_itl2 / itl[2] - 1) * 100, abs=0.1)


def test_topology_table_speedups_and_whole_numbers(example_result):
    """Issue 21: the recorded ``nvidia-smi topo -m`` (with its escape codes) as a table, TTFT speedup beside
    ITL speedup, and whole numbers as integers in the tables the report shows."""
    _, result = example_result
    raw = json.loads((EXAMPLE / "tp2" / "result.json").read_text())["topology"]
    assert "\x1b[" in raw and "\x1b" not in result.topology
    rows = {r["device"]: r for r in result.topology_rows.iter_rows(named=True)}
    assert set(rows) == {"GPU0", "GPU1"} and rows["GPU0"]["GPU1"] == rows["GPU1"]["GPU0"] == "NV18"
    t = {r["tp"]: r for r in result.table.iter_rows(named=True)}
    assert t[2]["ttft_speedup"] == pytest.approx(t[1]["ttft_ms"] / t[2]["ttft_ms"], abs=0.01)
    assert t[2]["itl_speedup"] == pytest.approx(t[1]["itl_ms"] / t[2]["itl_ms"], abs=0.01)
    shown = tp_scaling.integral(result.allreduce[2].summary)
    assert shown.schema["median_msg_bytes"] == pl.Int64
    assert shown["median_msg_bytes"].to_list() == result.allreduce[2].summary["median_msg_bytes"].cast(pl.Int64).to_list()
    assert tp_scaling.integral(pl.DataFrame({"x": [1.5, 2.0]})).schema["x"] == pl.Float64
