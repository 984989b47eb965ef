"""Issue 21: what a user meets around an experiment, without a server: the closing summary's figures,
clean restarts of interrupted cells, experiment folders where a trace dir is asked for, the launcher's
refusal of a trace dir that holds a run, the options' help and what experiment.json keeps."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from sglang_tracing.analyzer import api
from sglang_tracing.analyzer.analyses import radix_scenarios, run_summary
from sglang_tracing.analyzer.loaders.radix_experiment import Scenario
from sglang_tracing.app import cli
from sglang_tracing.app.experiments.common import Experiment, finish
from sglang_tracing.errors import UsageError


def _request(rng, i: int) -> dict:
    gaps = rng.integers(5_000_000, 20_000_000, size=7).tolist()
    return {"rid": f"r{i}", "ttft_ns": int(rng.integers(10_000_000, 90_000_000)), "itls_ns": gaps,
            "completion_tokens": 8, "prompt_tokens": 100, "cached_tokens": 40 if i % 3 == 0 else 0,
            "finish_reason": "length"}


def test_summary_figures_match_numpy():
    rng = np.random.default_rng(0)
    cells = [{"requests": [_request(rng, i) for i in range(k, k + 9)], "wall_ns": 2_000_000_000} for k in (0, 9)]
    s = run_summary.summarize(cells)
    reqs = [r for c in cells for r in c["requests"]]
    ttft = [r["ttft_ns"] for r in reqs]
    gaps = [g for r in reqs for g in r["itls_ns"]]
    assert s.requests == 18 and s.complete == 18
    assert s.ttft_p50_ns == pytest.approx(np.percentile(ttft, 50))
    assert s.ttft_p99_ns == pytest.approx(np.percentile(ttft, 99))
    assert s.itl_p50_ns == pytest.approx(np.percentile(gaps, 50))
    assert s.itl_p99_ns == pytest.approx(np.percentile(gaps, 99))
    assert s.output_tok_per_s == pytest.approx(18 * 8 / 4.0)
    assert (s.cache_hit_requests, s.cached_tokens, s.prompt_tokens) == (6, 240, 1800)
    assert len(run_summary.lines(s)) == 5


def _args(tmp_path, *extra: str):
    return cli.build_parser().parse_args(["experiment", "baseline", "--cpu", "--out", str(tmp_path / "x"), *extra])


def test_an_interrupted_cell_restarts_clean_and_a_recorded_trace_is_kept(tmp_path):
    exp = Experiment("baseline", _args(tmp_path))
    stale = exp.out / "baseline" / "trace"
    stale.mkdir(parents=True)
    (stale / "spans-scheduler-tp0-pid1.jsonl").write_text("{}\n")  # what a Ctrl-C'd run left
    assert list(exp.fresh_folder("baseline").iterdir()) == []
    # a folder whose trace a recorded cell reads (a backends server) is kept: the next server gets its own
    server = exp.out / "server-triton" / "trace"
    server.mkdir(parents=True)
    (server / "manifest.json").write_text("{}")
    exp.record("triton-bs1-len64", {"requests": [], "trace_dir": str(server)})
    assert exp.fresh_folder("server-triton") == exp.out / "server-triton-2"
    assert (server / "manifest.json").exists()


def test_experiment_json_keeps_options_not_functions(tmp_path):
    exp = Experiment("baseline", _args(tmp_path, "--num-requests", "3"))
    Experiment("baseline", _args(tmp_path))  # a rerun appends its own entry
    runs = json.loads((exp.out / "experiment.json").read_text())["runs"]
    assert [r["args"]["num_requests"] for r in runs] == [3, 16]
    assert "func" not in runs[0]["args"]
    assert all(isinstance(v, (str, int, float, bool, list, type(None))) for v in runs[0]["args"].values())


def test_experiment_help_shows_every_default(monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # argparse wraps at hyphens: "--speculative-" / "algorithm"
    parser = cli.build_parser()
    sub = next(a for a in parser._subparsers._group_actions[0].choices.items() if a[0] == "experiment")[1]
    text = sub.format_help()
    for action in sub._actions:
        if action.default not in (None, False, "") and action.option_strings and action.dest != "help":
            assert f"default: {action.default}" in " ".join(text.split()), action.dest


def _trace(folder, cell: str, result: dict | None = None):
    trace = folder / cell / "trace"
    trace.mkdir(parents=True)
    (trace / "manifest.json").write_text("{}")
    if result is not None:
        (folder / cell / "result.json").write_text(json.dumps(result))
    return str(trace)


def test_an_experiment_folder_is_taken_for_its_trace_dir(tmp_path):
    (tmp_path / "experiment.json").write_text("{}")
    measured = _trace(tmp_path, "baseline", {"requests": []})
    _trace(tmp_path, "profiled", {"requests": [], "profiled_steps": "2:6"})  # reaches the story through baseline
    assert api.trace_dir_of(str(tmp_path)) == measured
    other = _trace(tmp_path, "cold_start", {"requests": []})
    with pytest.raises(UsageError) as err:
        api.trace_dir_of(str(tmp_path))
    assert measured in str(err.value) and other in str(err.value)
    assert api.trace_dir_of(measured) == measured


def test_launch_refuses_a_trace_dir_that_holds_a_run(tmp_path):
    (tmp_path / "spans-scheduler-tp0-pid7.jsonl").write_text("")
    done = subprocess.run([sys.executable, "-m", "sglang_tracing", "launch", "--trace-dir", str(tmp_path), "--",
                           "--model-path", "unused"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "spans-scheduler-tp0-pid7.jsonl" in done.stderr
    from sglang_tracing.launch_server import add_tracing_options, config_from_args
    import argparse

    p = argparse.ArgumentParser()
    add_tracing_options(p)
    assert config_from_args(p.parse_args(["--trace-dir", str(tmp_path), "--append"])).trace_dir == str(tmp_path)
    empty = tmp_path / "new"
    empty.mkdir()
    (empty / "server.log").write_text("")  # a log or a model folder is not a recorded run
    assert config_from_args(p.parse_args(["--trace-dir", str(empty)])).trace_dir == str(empty)


def test_finish_names_reports_trace_dirs_and_summary(tmp_path):
    exp = Experiment("baseline", _args(tmp_path))
    trace = _trace(exp.out, "baseline")
    rng = np.random.default_rng(1)
    exp.record("baseline", {"requests": [_request(rng, i) for i in range(4)], "wall_ns": 10**9, "trace_dir": trace})
    exp.record("profiled", {"requests": [_request(rng, 9)], "wall_ns": 10**9, "profiled_steps": "2:6"})
    out = finish(exp, ["a/story.txt"])
    assert "  a/story.txt" in out and f"  {trace}" in out
    summary = run_summary.summarize([exp.done("baseline")])  # the profiled pass is not in the summary
    assert out[-5:] == ["  " + line for line in run_summary.lines(summary)]


def test_radix_scenarios_side_by_side_from_client_results():
    def scenario(name, cached):
        return Scenario(name, {"requests": [{"prompt_tokens": 512, "cached_tokens": c, "ttft_ns": 10**7}
                                            for c in cached]}, None)
    c = radix_scenarios.compute([scenario("cold_start", [0, 0]), scenario("exact_repeat", [0, 511, 511])])
    rows = {r.scenario: r for r in c.rows}
    assert rows["cold_start"].matched_pct == 0 and rows["cold_start"].hits == 0
    assert rows["exact_repeat"].matched_pct == pytest.approx(100 * 1022 / 1536)
    assert rows["exact_repeat"].hits == 2 and rows["exact_repeat"].speedup is None  # no trace: no prefill time
