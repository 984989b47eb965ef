"""Issue 6: experiment runners end to end on CPU with real SGLang (RadixCache scenarios, TP scaling)."""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys

import polars as pl
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
    _check_radix_figures(out)
    # a rerun resumes: every cell is done, so no server starts and nothing is rewritten
    stamp = os.path.getmtime(out / "cold_start" / "result.json")
    again = run_experiment("radix", "--num-requests", "6", "--prompt-len", "512", "--output-len", "4",
                           "--out", str(out))
    assert again.returncode == 0 and os.path.getmtime(out / "cold_start" / "result.json") == stamp


def _check_radix_figures(out):
    """Typed radix figures against the raw prefill spans: a hit's speedup is the same prompt's cold prefill
    over its own; evictions name the request whose admission needed room; the scenarios side by side."""
    import raw_spans
    from sglang_tracing import semconv as sc
    from sglang_tracing.analyzer.analyses import radix, radix_scenarios
    from sglang_tracing.analyzer.loaders.radix_experiment import load
    from sglang_tracing.analyzer.loaders.trace_dir import load_trace_dir

    trace = out / "exact_repeat" / "trace"
    prefill = {s["attrs"][sc.RID]: s["end"] - s["start"] for s in raw_spans.named(raw_spans.spans(trace),
                                                                                 sc.REQUEST_PREFILL)}
    found = radix.compute(load_trace_dir(trace)).lookups
    first = found.row(0, named=True)
    assert first["lookup"] == "miss"
    for hit in found.filter(pl.col("lookup") == "full").iter_rows(named=True):
        assert hit["inserted_by"] == first["rid"] and hit["cold_from"] == radix.COLD_SAME_PROMPT
        assert hit["speedup"] == pytest.approx(prefill[first["rid"]] / prefill[hit["rid"]], rel=1e-6)
        assert hit["batched_with"] == 0  # sent one at a time
    pressure = radix.compute(load_trace_dir(out / "cache_pressure" / "trace"))
    rids = set(pressure.lookups["rid"])
    assert pressure.evictions.height and set(pressure.evictions["caused_by"].drop_nulls()) <= rids
    assert (pressure.evictions["pool_used_after"] <= pressure.evictions["pool_total"]).all()
    rows = {r.scenario: r for r in radix_scenarios.compute(load(out)).rows}
    assert list(rows) == ["cold_start", "shared_system_prompt", "exact_repeat", "cache_pressure"]
    assert rows["cold_start"].matched_pct == 0 and rows["cold_start"].speedup == pytest.approx(1.0)
    assert rows["exact_repeat"].matched_pct == pytest.approx(100 * 5 * 511 / (6 * 512))
    assert (out / "radix_scenarios.txt").exists()


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
    from sglang_tracing.analyzer.analyses import backends
    from sglang_tracing.analyzer.loaders import backends_experiment

    result = backends.compute(backends_experiment.load(out))
    assert sorted(result.cells.select("batch_size", "seq_len").rows()) == [(1, 64), (1, 128), (2, 64), (2, 128)]
    assert {"prefill (TTFT)", "decode (ITL)"} <= set(result.table["phase"])
    assert result.frame["bound"].null_count() == result.frame.height  # CPU: no GPM samples, no verdict
    assert (out / "backends.txt").exists()


def test_baseline_rerun_after_interrupt_never_mixes_runs(tmp_path):
    """Ctrl-C mid-run, then a smaller rerun into the same --out: the interrupted cell is recorded again in
    a clean trace dir. Off a terminal the run prints progress lines; it ends with its reports, its trace
    dirs and a five-line summary; the short profiled pass runs on CPU too; the folder is analyzable."""
    import signal

    from sglang_tracing.analyzer.analyses.requests import for_statistics, request_table
    from sglang_tracing.analyzer.analyses.run_summary import lines, summarize
    from sglang_tracing.analyzer.loaders.trace_dir import load_trace_dir

    out = tmp_path / "base"
    cmd = [sys.executable, "-m", "sglang_tracing", "experiment", "baseline", "--cpu", "--prompt-len", "64",
           "--out", str(out)]
    first = subprocess.Popen(cmd + ["--num-requests", "300", "--output-len", "8", "--no-profiled-pass"],
                             stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        progress = []
        for line in first.stderr:  # stderr is a pipe, not a TTY: plain progress lines as requests complete
            if "measured pass: " in line and "/300 requests answered" in line:
                progress.append(line)
                break
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=180)
    finally:
        if first.poll() is None:
            first.kill()
    assert progress and first.returncode == 130
    assert not (out / "baseline" / "result.json").exists() and list((out / "baseline" / "trace").glob("spans-*"))

    again = subprocess.run(cmd + ["--num-requests", "6", "--output-len", "8"], capture_output=True, text=True,
                           timeout=1200)
    assert again.returncode == 0, again.stderr[-2000:]
    trace = out / "baseline" / "trace"
    files = sorted(p.name.split("-pid")[0] for p in trace.glob("spans-*"))
    assert files == ["spans-detokenizer", "spans-scheduler-tp0", "spans-tokenizer"]  # one server's processes
    result = json.loads((out / "baseline" / "result.json").read_text())
    model = load_trace_dir(trace)
    users = for_statistics(request_table(model.spans, model.manifest, model.servers))
    assert sorted(users["rid"]) == sorted(r["rid"] for r in result["requests"]) and users.height == 6
    printed = again.stdout.strip().splitlines()
    assert printed[-5:] == ["  " + line for line in lines(summarize([result]))]
    assert f"  {trace}" in printed and (out / "baseline.txt").exists()
    profiled = json.loads((out / "profiled" / "result.json").read_text())
    assert len(profiled["requests"]) == 4 and list((out / "profiled" / "trace").glob("kineto-*"))
    from sglang_tracing.analyzer import api
    from sglang_tracing.analyzer.analyses import story

    found = story.compute(model, "slowest", profiled=api.load(str(out / "profiled" / "trace")))
    assert found.profiled_dir == str(out / "profiled" / "trace")
    assert found.profiled.forwards.filter(pl.col("mode") == "extend").height >= 1  # its prefill, from that pass
    analyzed = subprocess.run([sys.executable, "-m", "sglang_tracing", "analyze", str(out), "--report", "story",
                               "--format", "text", "--out", str(tmp_path / "reports")],
                              capture_output=True, text=True, timeout=300)
    assert analyzed.returncode == 0, analyzed.stderr
    assert (tmp_path / "reports" / "requests.csv").exists()
