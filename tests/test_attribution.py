"""Issue 13 on the committed H200 data: every figure belongs to the requests it names.

Expected values are computed here from the raw files alone (gzip + json over the span files,
result.json of each cell, sqlite3 over the nsys export), never through the analyzer.
"""
from __future__ import annotations

import csv
import gzip
import json
import shutil
import sqlite3
import statistics
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

import raw_spans
from sglang_tracing import semconv as sc
from sglang_tracing.analyzer import api
from sglang_tracing.analyzer.analyses.requests import for_statistics
from sglang_tracing.analyzer.loaders.trace_dir import load_trace_dir

EXAMPLES = Path(__file__).resolve().parent.parent / "traces" / "examples"
BACKENDS = EXAMPLES / "h200-backends"
LAYER = EXAMPLES / "h200-nsys-layer" / "nsys-triton"
OVERHEAD = EXAMPLES / "h200-llama2-7b-triton"


# ---- independent side ----
def _cells() -> list[dict]:
    return [json.loads(f.read_text()) for f in sorted(BACKENDS.glob("*/result.json"))]


def _forwards(backend: str) -> list[dict]:
    return raw_spans.named(raw_spans.spans(BACKENDS / f"server-{backend}" / "trace"), sc.FORWARD)


def _cell_truth(cell: dict, forwards: list[dict]) -> dict:
    """Prefill GPU (the cell's token share of each extend forward holding a cell rid), the decode steps
    that ran only cell requests grouped by how many, and the forwards inside the window but not the cell's."""
    rids = {r["rid"] for r in cell["requests"]}
    prefill, steps, outside = 0.0, {}, 0
    for f in forwards:
        a = f["attrs"]
        batch = a["sglang.batch.rids"]
        mine = [r for r in batch if r in rids]
        if not mine:
            outside += cell["start_ns"] <= f["start"] <= cell["end_ns"]
            continue
        gpu = a["sglang.forward.gpu_duration_ns"]
        if a["sglang.batch.forward_mode"] in ("extend", "mixed"):
            lens = a["sglang.batch.extend_lens"]
            prefill += gpu * sum(n for r, n in zip(batch, lens) if r in rids) / sum(lens)
        elif a["sglang.batch.forward_mode"] == "decode" and len(mine) == len(batch):
            steps.setdefault(len(batch), []).append(gpu)
    reached = max(steps)
    return {"prefill_ms": prefill / 1e6, "reached": reached, "step_ms": statistics.median(steps[reached]) / 1e6,
            "steps": {n: (len(v), statistics.median(v) / 1e6) for n, v in steps.items()}, "outside": outside}


@pytest.fixture(scope="module")
def truth() -> dict:
    fwd = {b: _forwards(b) for b in ("flashinfer", "triton")}
    return {(c["backend"], c["batch_size"], c["seq_len"]): _cell_truth(c, fwd[c["backend"]]) for c in _cells()}


@pytest.fixture(scope="module")
def phases():
    from sglang_tracing.analyzer.analyses import backends
    from sglang_tracing.analyzer.loaders import backends_experiment

    inputs = backends_experiment.load(BACKENDS)
    frame = backends.with_server_phases(inputs.cells, inputs.models)
    return {(r["backend"], r["batch_size"], r["seq_len"]): r for r in frame.iter_rows(named=True)}


def test_backends_cells_take_the_forwards_of_their_own_rids(truth, phases):
    assert len(phases) == 18
    for key, t in truth.items():
        row = phases[key]
        assert row["prefill_gpu_ms"] == pytest.approx(t["prefill_ms"], abs=1e-6), key
        assert row["decode_step_gpu_ms"] == pytest.approx(t["step_ms"], abs=1e-6), key
        assert row["batch_reached"] == t["reached"], key
        groups = {g["batch"]: g for g in row["steps_by_batch"]}
        assert {n: g["steps"] for n, g in groups.items()} == {n: v[0] for n, v in t["steps"].items()}, key
        for n, (_, median_ms) in t["steps"].items():
            assert groups[n]["median_gpu_ms"] == pytest.approx(median_ms, abs=1e-6), key
        assert row["outside_forwards"] == t["outside"], key


def test_cells_without_recorded_rids_take_user_requests_arriving_in_their_window(phases):
    """Older result.json files lack rids: the server's user requests that arrived inside the cell's window
    stand in (the cell's untimed warm-up ended before it, SGLang's warm-up is internal): same figures."""
    from sglang_tracing.analyzer.analyses import backends
    from sglang_tracing.analyzer.loaders import backends_experiment

    inputs = backends_experiment.load(BACKENDS)
    frame = backends.with_server_phases(inputs.cells.drop("rids"), inputs.models)
    for row in frame.iter_rows(named=True):
        ref = phases[(row["backend"], row["batch_size"], row["seq_len"])]
        for col in ("prefill_gpu_ms", "decode_step_gpu_ms", "batch_reached", "shared_forwards"):
            assert row[col] == ref[col], (row["cell"], col)


def test_sglang_warmup_no_longer_leaks_into_triton_bs1_len512(truth):
    """SGLang's own warm-up (6 tokens in, 8 out) arrived 600 ms into this cell's window: its prefill
    (15.295 ms) doubled the cell's 14.519 ms when forwards were picked by time."""
    cell = json.loads((BACKENDS / "triton-bs1-len512" / "result.json").read_text())
    all_spans = raw_spans.spans(BACKENDS / "server-triton" / "trace")
    warmup = [s for s in raw_spans.named(all_spans, sc.REQUEST) if s["attrs"][sc.PROMPT_TOKENS] == 6]
    assert len(warmup) == 1 and cell["start_ns"] < warmup[0]["start"] < cell["end_ns"]
    in_window = [f for f in raw_spans.named(all_spans, sc.FORWARD)
                 if cell["start_ns"] <= f["start"] <= cell["end_ns"] and f["attrs"][sc.FORWARD_MODE] == "extend"]
    by_time = sum(f["attrs"][sc.GPU_DURATION_NS] for f in in_window) / 1e6
    assert by_time == pytest.approx(29.813887, abs=1e-6)  # what the report said before
    t = truth[("triton", 1, 512)]
    assert t["prefill_ms"] == pytest.approx(14.519071, abs=1e-6)
    assert t["prefill_ms"] / truth[("flashinfer", 1, 512)]["prefill_ms"] - 1 == pytest.approx(0.139, abs=5e-4)


def test_backends_report_flags_the_batch_it_never_reached(truth, phases, tmp_path):
    """bs32 x 8192 held 26 requests in the KV pool, then 6: the step time is reported at 26."""
    from sglang_tracing.analyzer.analyses import backends

    for b in ("flashinfer", "triton"):
        assert phases[(b, 32, 8192)]["batch_reached"] == 26
    fi = truth[("flashinfer", 32, 8192)]["steps"]
    assert fi[26][0] == 127 and fi[6][0] == 115
    assert (round(fi[26][1], 2), round(fi[6][1], 2)) == (30.79, 10.97)
    frame = pl.DataFrame(list(phases.values()))
    findings = dict(backends.batch_findings(frame))
    text = findings["batch not reached: flashinfer"]
    assert "batch 32, 8192 tokens ran at most 26" in text and "127 steps at 26 (median 30.79 ms)" in text
    assert set(k for k in findings if k.startswith("batch not reached")) == {
        "batch not reached: flashinfer", "batch not reached: triton"}
    # the decode-step winner and the largest gap, from the independent figures
    margins = {(bs, n): truth[("triton", bs, n)]["step_ms"] / truth[("flashinfer", bs, n)]["step_ms"] - 1
               for (_, bs, n) in truth}
    table = backends.compare(frame)
    steps = table.filter(pl.col("phase") == "decode step GPU")
    assert (steps["winner"] == "flashinfer").all() and steps.height == 9
    for r in steps.iter_rows(named=True):
        assert r["margin_pct"] == pytest.approx(margins[(r["batch_size"], r["seq_len"])] * 100, abs=0.05)
    assert max(margins, key=margins.get) == (32, 2048) and round(max(margins.values()) * 100, 1) == 74.9
    prefill = sorted((truth[("triton", bs, n)]["prefill_ms"] / truth[("flashinfer", bs, n)]["prefill_ms"] - 1) * 100
                     for (b, bs, n) in truth if b == "flashinfer")
    fi_wins = [m for m in prefill if m > 0]
    assert len(fi_wins) == 8 and statistics.median(fi_wins) == pytest.approx(11.95, abs=0.05)
    # the rendered report carries the same table
    shutil.copytree(BACKENDS, tmp_path / "b", ignore=shutil.ignore_patterns("reports", "*.html", "*.md", "*.txt"))
    from sglang_tracing.analyzer import experiment_reports

    experiment_reports.write("backends", tmp_path / "b")
    assert "batch not reached: flashinfer" in (tmp_path / "b" / "backends.txt").read_text()


# ---- per-layer GPU time of the selected request (SQL over the nsys export) ----
def _layer_ms_by_model_forward() -> dict[str, float]:
    """Median over layers of the kernel time launched inside each layer range, per model-forward range."""
    db = sqlite3.connect(":memory:")
    with gzip.open(LAYER / "trace" / "nsys.sqlite.gz") as f:
        data = f.read()
    db.deserialize(data)
    rows = db.execute("""
        with r as (select coalesce(n.text, s.value) t, n.start, n.end, n.globalTid g from NVTX_EVENTS n
                   left join StringIds s on s.id = n.textId where n.eventType = 59),
        f as (select substr(t, length('sglang.model.forward ') + 1) id, start, end, g from r
              where t like 'sglang.model.forward %'),
        l as (select r.t layer, r.start, r.end, r.g, f.id from r join f on r.g = f.g and r.start >= f.start
              and r.end <= f.end where r.t like 'layer.%')
        select l.id, l.layer, sum(k.end - k.start) from l
        join CUPTI_ACTIVITY_KIND_RUNTIME rt on rt.globalTid = l.g and rt.start between l.start and l.end
        join CUPTI_ACTIVITY_KIND_KERNEL k on k.correlationId = rt.correlationId group by l.id, l.layer""").fetchall()
    per: dict[str, list[int]] = {}
    for fid, _, ns in rows:
        per.setdefault(fid, []).append(ns)
    return {fid: statistics.median(v) / 1e6 for fid, v in per.items() if len(v) == 32}


def test_story_layer_time_is_the_selected_requests_own():
    from sglang_tracing.analyzer.analyses import story, story_report

    layer_ms = _layer_ms_by_model_forward()
    spans = raw_spans.spans(LAYER / "trace")
    forwards = {s["span_id"]: s for s in raw_spans.named(spans, sc.FORWARD)}
    by_rid = {}
    for m in raw_spans.named(spans, sc.MODEL_FORWARD):
        fwd = forwards.get(m["parent_id"])
        if m["span_id"] in layer_ms and fwd["attrs"][sc.FORWARD_MODE] == "extend":
            (rid,) = fwd["attrs"][sc.BATCH_RIDS]
            by_rid[rid] = layer_ms[m["span_id"]]
    warmup = [s["attrs"][sc.RID] for s in raw_spans.named(spans, sc.REQUEST) if s["attrs"][sc.PROMPT_TOKENS] == 6]
    assert len(by_rid) == 3 and by_rid[warmup[0]] == pytest.approx(0.136, abs=1e-3)  # 6-token warm-up prefill
    clients = [r["rid"] for r in json.loads((LAYER / "result.json").read_text())["requests"]]
    assert sorted(round(by_rid[r], 3) for r in clients) == [0.344, 0.346]  # two 512-token prefills

    model = api.load(str(LAYER / "trace"), nsys=str(LAYER / "trace" / "nsys.sqlite.gz"))
    computed = story.compute(model, "slowest")
    rid = computed.request["rid"]
    assert rid in clients
    report = story_report.describe(computed)
    prefill = next(s for s in report.sections if s.title == "Prefill")
    figure = next(f for f in prefill.figures if f.label == "GPU time per layer")
    assert figure.value.startswith(f"median {by_rid[rid]:.3f} ms over 32 layers")
    assert "ran this request alone" in figure.source


# ---- internal requests ----
def test_internal_requests_are_listed_apart_not_counted():
    """The overhead trace: per server one warm-up pass (1 + 32 requests), then 3 rounds of 4 + 32
    (benchmarks/results); SGLang's own warm-up comes on top and stays out of every statistic."""
    from sglang_tracing.analyzer.analyses import story

    bench = json.loads((Path(__file__).resolve().parent.parent / "benchmarks" / "results"
                        / "overhead-h200-llama2-7b-triton.json").read_text())["args"]
    users = 1 + bench["concurrency"] + bench["rounds"] * (bench["batch1_samples"] + bench["concurrency"])
    roots = raw_spans.named(raw_spans.spans(OVERHEAD), sc.REQUEST)
    assert users == 141 and len(roots) == users + 1
    warmup = min((r for r in roots if r["attrs"][sc.PROMPT_TOKENS] < 16), key=lambda r: r["start"])
    computed = story.compute(load_trace_dir(OVERHEAD), "slowest")
    assert (computed.users.height, computed.users.filter(pl.col("complete")).height) == (users, users)
    assert computed.internal["rid"].to_list() == [warmup["attrs"][sc.RID]]
    assert warmup["attrs"][sc.RID] not in for_statistics(computed.requests)["rid"].to_list()
    assert computed.run.requests == users
    assert computed.request["rid"] != warmup["attrs"][sc.RID]  # the slowest is a user's request


def test_radix_sequence_holds_the_clients_requests_with_sglangs_cached_tokens():
    """backends servers: every cell ran its requests twice (untimed warm-up, then measured): 2 x 41 per
    sequence length; the client recorded SGLang's cached_tokens for the measured ones."""
    from sglang_tracing.analyzer.analyses import radix
    from sglang_tracing.analyzer.analyses.requests import profiler_touched

    cells = [c for c in _cells() if c["backend"] == "triton"]
    client = {r["rid"]: r["cached_tokens"] for c in cells for r in c["requests"]}
    result = radix.compute(load_trace_dir(BACKENDS / "server-triton" / "trace"))
    table = result.lookups
    # less the bs1-len512 cell's untimed warm-up, in flight during our Kineto window (test_profiler_control_requests)
    assert profiler_touched(result.requests).height == 1
    assert table.height == 2 * sum(c["batch_size"] for c in cells) - 1 == 245
    mine = table.filter(pl.col("rid").is_in(list(client)))
    assert mine.height == len(client)
    for rid, cached, lookup in mine.select("rid", "cached_tokens", "lookup").iter_rows():
        assert cached == client[rid] and (lookup == "miss") == (client[rid] == 0)
    assert result.internal.height == 1


# ---- the request table ----
def test_requests_cli_writes_every_itl(tmp_path):
    done = subprocess.run([sys.executable, "-m", "sglang_tracing", "requests", str(OVERHEAD), "--out", str(tmp_path)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    spans = raw_spans.spans(OVERHEAD)
    roots = {s["attrs"][sc.RID]: s for s in raw_spans.named(spans, sc.REQUEST)}
    times = {s["attrs"][sc.RID]: s["attrs"][sc.TOKEN_TIMES] for s in raw_spans.named(spans, sc.REQUEST_DECODE)}
    with open(tmp_path / "requests.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    frame = pl.read_parquet(tmp_path / "requests.parquet")
    assert len(rows) == frame.height == len(roots) == 142
    assert sum(r["internal"] == "true" for r in rows) == 1
    parquet = {r["rid"]: r for r in frame.iter_rows(named=True)}
    for row in rows:
        rid = row["rid"]
        gaps = [(b - a) / 1e6 for a, b in zip(times[rid], times[rid][1:])]
        assert json.loads(row["itl_ms"]) == pytest.approx(gaps, abs=1e-6)
        assert parquet[rid]["itl_ms"] == pytest.approx(gaps, abs=1e-6)
        assert float(row["e2e_ms"]) == pytest.approx((roots[rid]["end"] - roots[rid]["start"]) / 1e6, abs=1e-6)
        assert int(row["output_tokens"]) == roots[rid]["attrs"][sc.OUTPUT_TOKENS] == len(gaps) + 1


def test_gpu_share_longer_than_the_phase_says_why():
    """h200-nsys-layer, request 17e50a: its 16 decode forwards (json over the raw spans) hold more GPU time
    than its decode phase's wall time; the story says so without blaming a profiler that was not there."""
    from sglang_tracing.analyzer.analyses import story, story_report

    trace = EXAMPLES / "h200-nsys-layer" / "nsys-triton" / "trace"
    spans = raw_spans.spans(trace)
    rid = next(s["attrs"][sc.RID] for s in raw_spans.named(spans, sc.REQUEST) if s["attrs"][sc.RID].startswith("17e50a"))
    decode = next(s for s in raw_spans.named(spans, sc.REQUEST_DECODE) if s["attrs"][sc.RID] == rid)
    times = decode["attrs"][sc.TOKEN_TIMES]
    forwards = [s for s in raw_spans.named(spans, sc.FORWARD) if rid in s["attrs"].get(sc.BATCH_RIDS, [])
                and s["attrs"][sc.FORWARD_MODE] == "decode"]
    assert len(forwards) == len(times) == 16
    gpu = sum(int(f["attrs"][sc.GPU_DURATION_NS]) / len(f["attrs"][sc.BATCH_RIDS]) for f in forwards)
    assert gpu > 1.1 * (times[-1] - times[0])
    assert min(int(f["attrs"][sc.GPU_START_NS]) for f in forwards) < times[0]  # launched before the first token
    computed = story.compute(load_trace_dir(trace), rid[:12])
    assert computed.request["decode_gpu_ns"] == pytest.approx(gpu, rel=1e-9)
    share = next(f for s in story_report.describe(computed).sections if s.title == "Decode" for f in s.figures
                 if f.label == "GPU time (this request's share)")
    assert "overlap scheduling" in share.source and "was attached" not in share.source
