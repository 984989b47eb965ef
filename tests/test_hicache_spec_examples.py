"""The committed GPU example of the hierarchical cache and speculative decoding (``traces/examples/h100-features``,
one H100, made by ``benchmarks/gpu_features.py``): the analyzer's figures on its traces against their
recomputation from the raw spans (``check_*_figures``, ``raw_spans``), the overhead figures of its
results against the per-request client records, and the committed reports against the analyzer."""
from __future__ import annotations

import gzip
import importlib.util
import json
import statistics
from pathlib import Path

import pytest

import raw_spans
from sglang_tracing.analyzer import api
from sglang_tracing.analyzer.analyses import hicache, speculative
from sglang_tracing.analyzer.analyses.requests import request_table
from sglang_tracing.analyzer.loaders.trace_dir import load_trace_dir
from test_hicache_spec_analysis import check_feature_tracks, check_hicache_figures, check_spec_figures

EXAMPLE = Path(__file__).resolve().parent.parent / "traces" / "examples" / "h100-features"
TRACES = ("hicache-traced", "spec-traced", "nospec-traced")
pytestmark = pytest.mark.skipif(not (EXAMPLE / "results.json.gz").exists(),
                                reason="the GPU run of benchmarks/gpu_features.py is not committed")


@pytest.fixture(scope="module")
def results() -> dict:
    with gzip.open(EXAMPLE / "results.json.gz", "rt") as f:
        return json.load(f)


def _rounds_of_rids(rounds: list[dict]) -> dict[str, int]:
    return {q["rid"]: i + 1 for i, r in enumerate(rounds) for q in r["requests"]}


def test_hicache_example_loads_prefixes_back_from_host_every_round_and_its_figures_match_the_raw_spans(results):
    hc = check_hicache_figures(EXAMPLE / "hicache-traced")
    assert {"backup device->host", "eviction from device", "load-back done host->device"} <= set(hc.totals["op"])
    # every measured round (2..) brought prefixes back from the host tier: counted from the raw spans
    round_of = _rounds_of_rids(results["hicache"]["rounds"]["hicache-traced"])
    raw = raw_spans.spans(EXAMPLE / "hicache-traced")
    host_tokens: dict[int, int] = {}
    for p in raw_spans.named(raw, "sglang.request.prefill"):
        r = round_of.get(p["attrs"]["sglang.rid"])
        if r is not None:
            host_tokens[r] = host_tokens.get(r, 0) + p["attrs"]["sglang.request.cached_tokens_host"]
    assert host_tokens[1] == 0 and all(host_tokens[r] > 0 for r in range(2, len(host_tokens) + 1))
    by_rid = dict(zip(hc.requests["rid"], hc.requests["host_matched_tokens"]))
    assert sum(by_rid[rid] for rid in round_of) == sum(host_tokens.values())


def _recompute_figures():
    """The example's own independent check (json, gzip and statistics only), as a module."""
    loaded = importlib.util.spec_from_file_location("recompute_figures", EXAMPLE / "recompute_figures.py")
    module = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(module)
    return module


def test_spec_example_verifies_drafts_and_its_figures_match_the_raw_spans(results):
    spec = check_spec_figures(EXAMPLE / "spec-traced")
    assert spec.steps.height > 0 and spec.total("proposed") > 0
    # the example's independent recomputation (its README's figures) gives the same corrected figures
    figures = _recompute_figures().speculative(results)
    checks = figures["consistency"]
    assert (spec.total("accepted"), spec.total("proposed")) == (figures["accepted"], figures["proposed"])
    assert spec.tokens_per_step == pytest.approx(figures["tokens_per_request_step_mean"], rel=1e-9)
    assert (spec.total("after_finish_lanes"), spec.total("after_finish_tokens")) == (
        checks["entries_after_finish"], checks["tokens_accepted_after_finish"])
    assert spec.request_total("tokens_not_returned") == checks["tokens_not_returned"]
    assert spec.request_total("zero_gaps") == figures["spec_zero_gaps"]
    assert spec.tokens_returned_per_step == pytest.approx(checks["returned_tokens_per_request_step"], rel=1e-9)
    # what SGLang and the client saw: every user request's steps and accepted drafts are SGLang's own counts,
    # its tokens are those the client got, and its gaps between steps are the client's streamed chunks
    model = load_trace_dir(str(EXAMPLE / "spec-traced"))
    table = request_table(model.spans, model.manifest).join(spec.requests, on="rid")
    rows = {r["rid"]: r for r in table.iter_rows(named=True)}
    sglang = {d["attrs"]["sglang.rid"]: d["attrs"] for d in raw_spans.named(raw_spans.spans(EXAMPLE / "spec-traced"),
                                                                           "sglang.request.decode")}
    client = [q for r in results["spec"]["rounds"]["spec-traced"] for q in r["requests"]]
    assert len(client) == 192
    for q in client:
        row, counts = rows[q["rid"]], sglang[q["rid"]]
        assert len(row["accepted_per_step"]) == counts["sglang.request.spec_verify_ct"]
        assert sum(row["accepted_per_step"]) - len(row["accepted_per_step"]) == counts["sglang.request.spec_correct_drafts"]
        assert len(row["token_times_ns"]) == q["completion_tokens"]
        assert sum(g > 0 for g in row["itl_ns"]) == len(q["itls_ns"])
    for name in ("nospec-traced", "spec-traced"):  # neither feature is reported where it was off
        model = load_trace_dir(str(EXAMPLE / name))
        table = request_table(model.spans, model.manifest)
        assert speculative.compute(model.spans, table).used is (name == "spec-traced")
        assert not hicache.compute(model.spans, table).used


@pytest.mark.parametrize("phase", ["hicache", "spec"])
def test_overhead_summary_is_the_median_of_the_rounds_recomputed_from_each_request(results, phase):
    """results.json's medians, min/max and traced/untraced ratios, from each round's request records:
    throughput = output tokens / round wall, TTFT and ITL = medians over the round's requests."""
    entry = results[phase]
    assert results["gpu"].startswith("NVIDIA H100") and set(results["runs"]) == {"hicache", "spec"}
    base = f"{phase}-untraced"
    per_round = {}
    for name, rounds in entry["rounds"].items():
        assert len(rounds) == 6 and entry["pools"][name] == entry["pools"][base]  # equal KV pools
        per_round[name] = [{"tok_per_s": sum(q["completion_tokens"] for q in r["requests"]) / r["wall_s"],
                            "ttft_ms": statistics.median(q["ttft_ns"] for q in r["requests"]) / 1e6,
                            "itl_ms": statistics.median(q["mean_itl_ns"] for q in r["requests"]) / 1e6}
                           for r in rounds[1:]]  # round 1 fills the caches
    for name, rows in per_round.items():
        for figure in ("tok_per_s", "ttft_ms", "itl_ms"):
            values = [row[figure] for row in rows]
            got = entry["summary"][name][figure]
            assert (got["median"], got["min"], got["max"]) == pytest.approx(
                (statistics.median(values), min(values), max(values)), rel=1e-9)
            base_median = statistics.median(row[figure] for row in per_round[base])
            assert got[f"ratio_to_{base}"] == pytest.approx(statistics.median(values) / base_median, rel=1e-9)


@pytest.mark.parametrize("name", ["hicache-traced", "spec-traced"])
def test_perfetto_shows_the_example_tier_transfers_and_draft_verify_steps(name, tmp_path):
    check_feature_tracks(EXAMPLE / name, tmp_path / "t.pftrace")


def test_committed_reports_are_what_the_analyzer_writes_now(tmp_path, monkeypatch):
    """analysis/<trace>/: the text reports and the per-request table as `sglang-trace analyze` writes them
    (rerun its command in the example's README after changing an analysis)."""
    monkeypatch.chdir(EXAMPLE)  # the reports name the trace dir as given: relative, as in the README
    for name in TRACES:
        out = tmp_path / name
        api.analyze(name, reports="story,radix,timeline", out_dir=str(out), formats="text")
        committed = EXAMPLE / "analysis" / name
        for report in ("story.txt", "radix.txt", "timeline.txt"):
            assert (out / report).read_text() == (committed / report).read_text(), f"{name}/{report}"
        with gzip.open(committed / "requests.csv.gz", "rt") as f:
            assert (out / "requests.csv").read_text() == f.read(), f"{name}/requests.csv"
