"""Issue 6: experiment runners end to end on CPU with real SGLang (RadixCache scenarios, TP scaling)."""
from __future__ import annotations

import gzip
import json
import os
import statistics
import subprocess
import sys

import pytest

pytestmark = pytest.mark.server


def run_experiment(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sglang_tracing", "experiment", *args, "--cpu"],
                          capture_output=True, text=True, timeout=1200)


def test_radix_scenarios_and_resume(tmp_path):
    out = tmp_path / "radix"
    done = run_experiment("radix", "--num-requests", "6", "--prompt-len", "512", "--output-len", "4",
                          "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    results = {s: json.loads((out / s / "result.json").read_text())
               for s in ("cold_start", "shared_system_prompt", "exact_repeat", "cache_pressure")}
    cached = {s: [r["cached_tokens"] for r in res["requests"]] for s, res in results.items()}
    assert cached["cold_start"] == [0] * 6
    assert cached["exact_repeat"][1:] == [511] * 5  # every repeat hits all but the last prompt token
    assert all(c >= 256 for c in cached["shared_system_prompt"][1:])
    radix_txt = (out / "cache_pressure" / "reports" / "radix.txt").read_text()
    assert "eviction events: 0" not in radix_txt and "alloc_for_extend" in radix_txt
    assert "full hits: 5" in (out / "exact_repeat" / "reports" / "radix.txt").read_text()
    # a rerun resumes: every cell is done, so no server starts and nothing is rewritten
    stamp = os.path.getmtime(out / "cold_start" / "result.json")
    again = run_experiment("radix", "--num-requests", "6", "--prompt-len", "512", "--output-len", "4",
                           "--out", str(out))
    assert again.returncode == 0 and os.path.getmtime(out / "cold_start" / "result.json") == stamp


def test_tp_scaling_on_cpu(tmp_path):
    out = tmp_path / "tp"
    args = ("tp", "--tp-sizes", "1,2", "--num-requests", "8", "--prompt-len", "128", "--output-len", "8",
            "--concurrency", "4", "--out", str(out))
    done = run_experiment(*args)
    assert done.returncode == 0, done.stderr[-2000:]
    for size in (1, 2):
        res = json.loads((out / f"tp{size}" / "result.json").read_text())
        assert res["tp"] == size and len(res["requests"]) == 8 and "gloo" in res["topology"]
        assert all(r["completion_tokens"] == 8 for r in res["requests"])
        spans = sorted(p.name.split("-pid")[0] for p in (out / f"tp{size}" / "trace").glob("spans-scheduler-*"))
        assert spans == [f"spans-scheduler-tp{r}" for r in range(size)]  # one file per rank, each its own rank
    report = (out / "tp_scaling.txt").read_text()
    assert "scaling_efficiency_pct" in report and "All-reduce at TP=2" in report
    # all-reduce from SGLang's own profiler, one trace per rank: gloo ops counted here with plain json
    from sglang_tracing.analyzer.analyses import tp_scaling
    from sglang_tracing.analyzer.loaders import tp_experiment

    raw = {}
    for f in (out / "tp2" / "profile").glob("*.trace.json.gz"):
        events = json.load(gzip.open(f))["traceEvents"]
        raw[int(f.name.split("TP-")[1][0])] = sum(1 for e in events if e.get("name") == "gloo:all_reduce")
    inputs = tp_experiment.load(out)
    a = tp_scaling.allreduce(inputs.cells[2], inputs.model_config)
    assert a.source == "CPU ops" and a.families == ["gloo"]
    calls = a.calls.group_by("rank").len().sort("rank")["len"].to_list()
    assert calls == [raw[0], raw[1]] and raw[0] > 0
    layers = json.loads((out / "model" / "tiny-llama" / "config.json").read_text())["num_hidden_layers"]
    per_forward = set(a.summary["calls_per_forward"].to_list())
    assert per_forward == {2 * layers + 1}  # attention and MLP per layer, plus the embedding
    # a re-render (every cell recorded) starts no server and rewrites nothing that was recorded
    stamps = {p: p.stat().st_mtime for p in out.glob("tp*/result.json")}
    again = run_experiment(*args)
    assert again.returncode == 0 and {p: p.stat().st_mtime for p in out.glob("tp*/result.json")} == stamps
    assert not (out / "topology.txt").exists() and (out / "tp_scaling.png").stat().st_size > 5000


def test_backends_grid_on_cpu(tmp_path):
    out = tmp_path / "backends"
    done = run_experiment("backends", "--backends", "torch_native", "--batch-sizes", "1,2", "--seq-lens", "64,128",
                          "--output-len", "4", "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    cells = sorted(p.parent.name for p in out.glob("*/result.json"))
    assert cells == ["torch_native-bs1-len128", "torch_native-bs1-len64", "torch_native-bs2-len128",
                     "torch_native-bs2-len64"]
    for c in cells:
        res = json.loads((out / c / "result.json").read_text())
        assert len(res["requests"]) == res["batch_size"]
        assert all(r["cached_tokens"] == 0 for r in res["requests"])  # distinct prompts per cell
    assert (out / "backends.txt").exists()
    # the analysis' per-cell figures: client medians as result.json holds them, no GPU figure on a CPU run
    from sglang_tracing.analyzer.analyses import backends
    from sglang_tracing.analyzer.loaders import backends_experiment

    inputs = backends_experiment.load(out)
    frame = backends.with_hardware(backends.with_server_phases(inputs.cells, inputs.models), inputs.models)
    assert sorted(frame["cell"]) == cells
    for row in frame.iter_rows(named=True):
        requests = json.loads((out / row["cell"] / "result.json").read_text())["requests"]
        assert row["ttft_ms"] == pytest.approx(statistics.median(r["ttft_ns"] for r in requests) / 1e6)
        assert row["prefill_gpu_ms"] is None and all(row[m] is None for m in backends.HW)  # not measured, not 0
