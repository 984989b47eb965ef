"""The hierarchical-cache and speculative-decoding analyses against figures recomputed from the raw spans.

A child process writes a small trace through the real recorder and exporter (the span names and
attributes the patches write: ``test_hicache_spec_hooks`` checks the patches write them); the analyzer
loads it like any trace dir, and each figure is recomputed here with nothing but ``raw_spans`` (gzip and
json). Scenario: request A computes a 64-token prompt; B hits 48 of its tokens on the device; C finds them
on host and a load-back brings them (its forward starts on the GPU 1 ms before the copy ends); two decode
steps of speculative decoding for two requests, one step delivering several tokens at once, one accepting a
token past the request's end, and a third step run after both requests finished (overlap scheduling)."""
from __future__ import annotations

import statistics
import subprocess
import sys
import textwrap

import polars as pl
import pytest

from sglang_tracing.analyzer import api
from sglang_tracing.analyzer.analyses import hicache, speculative
from sglang_tracing.analyzer.analyses.requests import request_table
from sglang_tracing.analyzer.loaders.trace_dir import load_trace_dir
from sglang_tracing.app.serving import wait_for_exporters

import raw_spans

SCENARIO = textwrap.dedent("""
    import sys
    from sglang_tracing import semconv as sc
    from sglang_tracing.config import TraceConfig
    from sglang_tracing.patches.request_spans import block_digests
    from sglang_tracing.runtime import manifest, recorder
    from sglang_tracing.runtime.ids import request_root_span_id, request_trace_key
    from sglang_tracing.runtime.records import PARENT_IS_REQUEST_ROOT as ROOT

    import os
    os.makedirs(sys.argv[1], exist_ok=True)
    config = TraceConfig(trace_dir=sys.argv[1])
    manifest.write(config)
    rec = recorder.start(config, "scheduler")
    import time
    from sglang_tracing.runtime.exporter import active_marker
    while not os.path.exists(active_marker(rec.span_file)):  # the exporter is up
        time.sleep(0.01)
    MS = 1_000_000
    prefix = list(range(100, 148))
    prompts = {"A": prefix + list(range(900, 916)), "B": prefix + list(range(700, 716)),
               "C": prefix + list(range(500, 516))}
    tiers = {"A": (0, 0, 0), "B": (48, 0, 0), "C": (0, 48, 0)}
    host_tiers = {sc.HICACHE_HOST_TOTAL: 1000, sc.HICACHE_HOST_USED: 48, sc.CACHE_TOTAL: 200, sc.CACHE_USED: 64}
    t = {"A": 10 * MS, "B": 40 * MS, "C": 90 * MS}
    for i, (rid, t0) in enumerate(t.items()):
        key, fwd = request_trace_key(rid), 0x100 + i
        dev, host, storage = tiers[rid]
        rec.emit(sc.REQUEST, t0, t0 + 20 * MS, {sc.RID: rid, sc.PROMPT_TOKENS: 64, sc.CACHED_TOKENS: dev + host + storage,
                 sc.OUTPUT_TOKENS: 3}, span_id=request_root_span_id(rid), trace_key=key)
        rec.emit(sc.REQUEST_PREFIX_MATCH, t0 + 1 * MS, t0 + 1 * MS + 1000, {sc.RID: rid, sc.MATCHED_TOKENS: dev,
                 sc.PREFIX_DIGESTS: block_digests(prompts[rid])}, parent=ROOT, trace_key=key)
        rec.emit(sc.FORWARD, t0 + 2 * MS, t0 + 3 * MS, {sc.FORWARD_MODE: "extend", sc.GPU_START_NS: t0 + 4 * MS,
                 sc.GPU_END_NS: t0 + 8 * MS}, span_id=fwd)
        rec.emit(sc.REQUEST_PREFILL, t0 + 2 * MS, t0 + 9 * MS, {sc.RID: rid, sc.PROMPT_TOKENS: 64,
                 sc.CACHED_TOKENS: dev + host + storage, sc.CACHED_DEVICE: dev, sc.CACHED_HOST: host,
                 sc.CACHED_STORAGE: storage, sc.FORWARD_SPAN_ID: f"{fwd:016x}"}, parent=ROOT, trace_key=key)
        rec.emit(sc.REQUEST_DECODE, t0 + 9 * MS, t0 + 15 * MS, {sc.RID: rid, sc.OUTPUT_TOKENS: 3,
                 sc.TOKEN_TIMES: [t0 + 9 * MS, t0 + 12 * MS, t0 + 15 * MS]}, parent=ROOT, trace_key=key)
    # C: 48 tokens back from host, node 7; its forward starts on the GPU at 94 ms, the copy ends at 95 ms
    rec.emit(sc.HICACHE_LOAD_BACK, 91 * MS, 91 * MS + 500, {sc.RID: "C", sc.HICACHE_TOKENS: 48,
             sc.HICACHE_REQUESTED_TOKENS: 48, sc.HICACHE_BYTES: 48 * 4096, sc.HICACHE_NODE_IDS: [7], **host_tiers})
    rec.emit(sc.HICACHE_LOAD_ISSUE, 91 * MS + 600, 91 * MS + 700, {sc.HICACHE_TOKENS: 48, sc.HICACHE_BYTES: 48 * 4096,
             sc.HICACHE_NODE_IDS: [7], sc.HICACHE_PRODUCER: 0, **host_tiers})
    rec.emit(sc.HICACHE_LOAD_DONE, 99 * MS, 99 * MS + 100, {sc.HICACHE_TOKENS: 48, sc.HICACHE_BYTES: 48 * 4096,
             sc.HICACHE_GPU_NS: 2 * MS, sc.GPU_START_NS: 93 * MS, sc.GPU_END_NS: 95 * MS, sc.HICACHE_NODE_IDS: [7],
             **host_tiers})
    rec.emit(sc.HICACHE_BACKUP, 31 * MS, 31 * MS + 200, {sc.HICACHE_TOKENS: 48, sc.HICACHE_BYTES: 48 * 4096,
             sc.HICACHE_WRITE_BACK: False, sc.HICACHE_NODE_IDS: [7], **host_tiers})
    rec.emit(sc.CACHE_EVICT, 60 * MS, 60 * MS + 300, {sc.CACHE_REQUESTED_TOKENS: 64, sc.CACHE_FREED_TOKENS: 64,
             sc.HICACHE_BYTES: 64 * 4096, sc.HICACHE_EVICTED_AGES_NS: [5 * MS, 9 * MS, 30 * MS],
             sc.HICACHE_EVICTED_NODE_TOKENS: [48, 8, 8], **host_tiers})
    rec.emit(sc.HICACHE_EVICT_HOST, 70 * MS, 70 * MS + 100, {sc.HICACHE_TOKENS: 8, sc.HICACHE_REQUESTED_TOKENS: 8,
             sc.HICACHE_BYTES: 8 * 4096, sc.HICACHE_EVICTED_AGES_NS: [40 * MS], sc.HICACHE_EVICTED_NODE_TOKENS: [8],
             **host_tiers})
    # speculation: requests S and T (6 tokens each asked), two verified steps; S gets 4 then 2 tokens of which
    # the last is past its end (the scheduler stamps 7, the request returns 6), T 2 then 3; a third step, run
    # with overlap scheduling before the second one's result showed both finished, still lists them: its
    # result is processed (229 ms) after their decode spans end (220 ms), before their request spans do (230 ms)
    for rid, t0, times in (("S", 200 * MS, [203, 210, 210, 210, 210, 220, 220]),
                           ("T", 200 * MS, [203, 210, 210, 220, 220, 220])):
        key = request_trace_key(rid)
        rec.emit(sc.REQUEST, t0, t0 + 30 * MS, {sc.RID: rid, sc.PROMPT_TOKENS: 32, sc.CACHED_TOKENS: 0,
                 sc.OUTPUT_TOKENS: 6}, span_id=request_root_span_id(rid), trace_key=key)
        rec.emit(sc.REQUEST_DECODE, times[0] * MS, times[-1] * MS, {sc.RID: rid, sc.OUTPUT_TOKENS: len(times),
                 sc.TOKEN_TIMES: [x * MS for x in times], sc.SPEC_VERIFY_CT: 2,
                 sc.SPEC_REQ_CORRECT: 4 if rid == "S" else 3}, parent=ROOT, trace_key=key)
    for step, (fwd, t0, correct) in enumerate(((0x200, 205 * MS, [3, 1]), (0x201, 215 * MS, [1, 2]),
                                               (0x202, 225 * MS, [5, 2]))):
        rec.emit(sc.FORWARD, t0, t0 + 4 * MS, {sc.FORWARD_MODE: "decode"}, span_id=fwd)
        rec.emit(sc.SPEC_DRAFT, t0, t0 + MS // 2, {sc.SPEC_ALGORITHM: "NGRAMWorker", sc.BATCH_SIZE: 2,
                 sc.SPEC_DRAFT_TOKENS: 4, sc.GPU_DURATION_NS: 100_000 * (step + 1)}, parent=fwd)
        rec.emit(sc.SPEC_VERIFY, t0 + MS, t0 + 3 * MS, {sc.SPEC_ALGORITHM: "NGRAM", sc.BATCH_SIZE: 2,
                 sc.SPEC_DRAFT_TOKENS: 4, sc.GPU_DURATION_NS: 1_500_000}, parent=fwd)
        rec.emit(sc.SPEC_ACCEPT, t0 + 4 * MS, t0 + 5 * MS, {sc.BATCH_RIDS: ["S", "T"], sc.SPEC_CORRECT_DRAFTS: correct,
                 sc.SPEC_DRAFT_TOKENS: 4, sc.FORWARD_SPAN_ID: f"{fwd:016x}"})
    rec.close()
""")


@pytest.fixture(scope="module")
def scenario_trace(tmp_path_factory):
    """The scenario's trace dir, written once for the module's tests."""
    trace_dir = tmp_path_factory.mktemp("hicache-spec") / "trace"
    subprocess.run([sys.executable, "-c", SCENARIO, str(trace_dir)], check=True, timeout=120)
    assert wait_for_exporters(str(trace_dir), timeout=30)
    return trace_dir


def test_tiers_load_backs_and_thrash_match_the_raw_spans(scenario_trace):
    hc = check_hicache_figures(scenario_trace)
    assert hc.requests.filter(pl.col("rid") == "C")["load_back_wait_ns"][0] == 1_000_000


def check_hicache_figures(trace_dir) -> hicache.HiCache:
    """Every hierarchical-cache figure of the analyzer against its recomputation from the raw spans."""
    raw = raw_spans.spans(trace_dir)
    model = load_trace_dir(str(trace_dir), use_cache=False)
    requests = request_table(model.spans, model.manifest)
    hc = hicache.compute(model.spans, requests)
    assert hc.used
    got = {r["rid"]: r for r in hc.requests.iter_rows(named=True)}

    roots = {s["attrs"]["sglang.rid"]: s for s in raw_spans.named(raw, "sglang.request")}
    for p in raw_spans.named(raw, "sglang.request.prefill"):
        a, rid = p["attrs"], p["attrs"]["sglang.rid"]
        root = roots[rid]["attrs"]
        assert (got[rid]["device_matched_tokens"], got[rid]["host_matched_tokens"], got[rid]["storage_matched_tokens"],
                got[rid]["computed_tokens"]) == (a["sglang.request.cached_tokens_device"],
                                                 a["sglang.request.cached_tokens_host"],
                                                 a["sglang.request.cached_tokens_storage"],
                                                 root["sglang.request.prompt_tokens"] - root["sglang.request.cached_tokens"])
    prefills = {p["attrs"]["sglang.rid"]: p for p in raw_spans.named(raw, "sglang.request.prefill")}
    forwards = {f["span_id"]: f for f in raw_spans.named(raw, "sglang.scheduler.forward")}
    dones = sorted(raw_spans.named(raw, "sglang.hicache.load_done"), key=lambda d: d["start"])
    loaded = [s for s in raw_spans.named(raw, "sglang.hicache.load_back") if s["attrs"]["sglang.hicache.tokens"] > 0]
    for load in loaded:
        rid = load["attrs"]["sglang.rid"]
        done = next(d for d in dones if d["start"] >= load["start"]
                    and set(d["attrs"]["sglang.hicache.node_ids"]) & set(load["attrs"]["sglang.hicache.node_ids"]))
        row = got[rid]
        assert (row["load_back_tokens"], row["load_back_bytes"], row["load_back_gpu_ns"]) == (
            load["attrs"]["sglang.hicache.tokens"], load["attrs"]["sglang.hicache.bytes"],
            done["attrs"].get("sglang.hicache.gpu_duration_ns"))
        fwd = forwards.get(prefills[rid]["attrs"]["sglang.forward.span_id"]) if rid in prefills else None
        if fwd is None or "sglang.forward.gpu_end_ns" not in done["attrs"] \
                or "sglang.forward.gpu_start_ns" not in fwd["attrs"]:
            assert row["load_back_waited"] is None
            continue
        wait = done["attrs"]["sglang.forward.gpu_end_ns"] - fwd["attrs"]["sglang.forward.gpu_start_ns"]
        assert row["load_back_waited"] is (wait > 0) and row["load_back_wait_ns"] == max(wait, 0)
    for rid in set(got) - {s["attrs"]["sglang.rid"] for s in loaded}:
        assert got[rid]["load_back_tokens"] is None and got[rid]["load_back_waited"] is None

    device_ages = [a for s in raw_spans.named(raw, "sglang.cache.evict")
                   for a in s["attrs"].get("sglang.hicache.evicted_ages_ns", [])]
    host_ages = [a for s in raw_spans.named(raw, "sglang.hicache.evict_host")
                 for a in s["attrs"].get("sglang.hicache.evicted_ages_ns", [])]
    hit_median = _median(list(_hit_ages(raw).values()))
    device, host = hc.thrash
    for tier, ages in ((device, device_ages), (host, host_ages)):
        assert (tier.median_evicted_age_ns, tier.median_hit_age_ns) == (_median(ages), hit_median)
        assert tier.thrashing is (None if not ages or hit_median is None else _median(ages) < hit_median)

    totals = {r["op"]: r for r in hc.totals.iter_rows(named=True)}
    for name, op in hicache.OPS.items():
        rows = raw_spans.named(raw, name)
        if rows:
            assert totals[op]["count"] == len(rows)
            assert totals[op]["bytes"] == sum(s["attrs"].get("sglang.hicache.bytes", 0) for s in rows)
    return hc


def _median(xs):
    return statistics.median(xs) if xs else None


def _hit_ages(raw) -> dict[str, int]:
    """Age of each hit: its prefix lookup minus the latest finish (or, unfinished, prefill start) of an
    earlier request sharing the blocks it matched."""
    match = {s["attrs"]["sglang.rid"]: s for s in raw_spans.named(raw, "sglang.request.prefix_match")}
    prefill = {s["attrs"]["sglang.rid"]: s for s in raw_spans.named(raw, "sglang.request.prefill")}
    ends = {s["attrs"]["sglang.rid"]: s["end"] for s in raw_spans.named(raw, "sglang.request")}
    digests = {rid: m["attrs"].get("sglang.prefix.block_digests") or [] for rid, m in match.items()}
    ages = {}
    for rid, p in prefill.items():
        a = p["attrs"]
        matched = a.get("sglang.request.cached_tokens_device", 0) + a.get("sglang.request.cached_tokens_host", 0)
        k = matched // 16 - 1
        if matched < 16 or rid not in match or len(digests[rid]) <= k:
            continue
        start = match[rid]["start"]
        touched = [ends[o] if ends.get(o, start) < start else prefill[o]["start"] for o in match
                   if o != rid and o in prefill and len(digests[o]) > k and digests[o][k] == digests[rid][k]
                   and prefill[o]["start"] < start]
        if touched:
            ages[rid] = start - max(touched)
    return ages


def test_speculative_steps_and_request_columns_match_the_raw_spans(scenario_trace):
    spec = check_spec_figures(scenario_trace)
    # the scenario's numbers by hand: 2 steps x 2 requests x 3 drafts proposed, 3+1 and 1+2 accepted; the third
    # step reached nobody (5+1 and 2+1 tokens dropped); S's second step took 1 token past its 6
    assert (spec.total("proposed"), spec.total("accepted"), spec.algorithm) == (12, 7, "NGRAMWorker")
    assert (spec.total("after_finish_lanes"), spec.total("after_finish_tokens")) == (2, 9)
    by_rid = {r["rid"]: r for r in spec.requests.iter_rows(named=True)}
    assert [by_rid[rid]["accepted_per_step"] for rid in "ST"] == [[4, 2], [2, 3]]
    assert [by_rid[rid]["tokens_not_returned"] for rid in "ST"] == [1, 0]
    assert [by_rid[rid]["zero_gaps"] for rid in "ST"] == [3, 3]
    assert spec.verify_ct_agreement() == (2, 2)
    assert spec.tokens_returned_per_step == pytest.approx(10 / 4)


def check_spec_figures(trace_dir) -> speculative.Speculation:
    """Every speculative-decoding figure of the analyzer against its recomputation from the raw spans: a
    request-step counts only if the step's result was processed before the request's decode span ended (the
    scheduler stamps the request's last tokens there; a later step reached a finished request and SGLang
    dropped it), and a request's token times stop at the tokens its request span says it returned."""
    raw = raw_spans.spans(trace_dir)
    model = load_trace_dir(str(trace_dir), use_cache=False)
    requests = request_table(model.spans, model.manifest)
    spec = speculative.compute(model.spans, requests)
    accepts = sorted(raw_spans.named(raw, "sglang.spec.accept"), key=lambda s: s["start"])
    decodes = {d["attrs"]["sglang.rid"]: d for d in raw_spans.named(raw, "sglang.request.decode")}
    returned = {s["attrs"]["sglang.rid"]: s["attrs"].get("sglang.request.output_tokens")
                for s in raw_spans.named(raw, "sglang.request")}
    per_rid: dict[str, list[int]] = {}
    after: dict[str, list[int]] = {}
    proposed = accepted = 0
    for a in accepts:
        for rid, c in zip(a["attrs"]["sglang.batch.rids"], a["attrs"]["sglang.spec.correct_drafts"]):
            if rid in decodes and a["start"] > decodes[rid]["end"]:
                after.setdefault(rid, []).append(c + 1)
                continue
            per_rid.setdefault(rid, []).append(c + 1)
            proposed += a["attrs"]["sglang.spec.draft_tokens"] - 1
            accepted += c
    assert spec.used and spec.steps.height == len(accepts)
    assert (spec.total("proposed"), spec.total("accepted")) == (proposed, accepted)
    assert spec.acceptance_rate == (accepted / proposed if proposed else None)
    lanes = sum(map(len, per_rid.values()))
    assert spec.tokens_per_step == pytest.approx((accepted + lanes) / lanes)
    assert (spec.total("after_finish_lanes"), spec.total("after_finish_tokens")) == (
        sum(map(len, after.values())), sum(map(sum, after.values())))
    for phase in ("draft", "verify"):
        assert spec.total(f"{phase}_gpu_ns") == sum(s["attrs"].get("sglang.forward.gpu_duration_ns", 0)
                                                    for s in raw_spans.named(raw, f"sglang.spec.{phase}"))
    assert spec.total("verify_ns") == sum(s["end"] - s["start"] for s in raw_spans.named(raw, "sglang.spec.verify"))
    got = {r["rid"]: r for r in spec.requests.iter_rows(named=True)}
    returned_steps = returned_tokens = 0
    for rid, d in decodes.items():
        times = d["attrs"]["sglang.request.token_times_ns"][:returned[rid]]  # the tokens the client got
        if rid not in per_rid and rid not in after:  # the hierarchical-cache requests: no speculation
            assert got[rid]["accepted_per_step"] is None and got[rid]["spec_steps"] is None
            continue
        gaps = [b - a for a, b in zip(times, times[1:])]
        assert got[rid]["accepted_per_step"] == per_rid.get(rid, [])
        assert got[rid]["steps_after_finish"] == len(after.get(rid, []))
        verify_ct = d["attrs"].get("sglang.request.spec_verify_ct")
        assert got[rid]["sglang_verify_ct"] == verify_ct
        assert got[rid]["spec_steps"] == (verify_ct if verify_ct is not None else len(per_rid.get(rid, [])))
        assert got[rid]["tokens_not_returned"] == max(0, d["attrs"]["sglang.request.output_tokens"] - returned[rid])
        assert got[rid]["zero_gaps"] == sum(g == 0 for g in gaps)
        steps = [g for g in gaps if g > 0]
        assert got[rid]["step_itl_mean_ns"] == (statistics.mean(steps) if steps else None)
        if got[rid]["spec_steps"]:
            assert got[rid]["tokens_per_forward"] == (returned[rid] - 1) / got[rid]["spec_steps"]
            returned_steps += got[rid]["spec_steps"]
            returned_tokens += returned[rid] - 1
    assert spec.tokens_returned_per_step == pytest.approx(returned_tokens / returned_steps)
    dist = dict(spec.accept_distribution().iter_rows())
    assert dist == {n: sum(x == n for xs in per_rid.values() for x in xs) for n in {x for xs in per_rid.values() for x in xs}}
    return spec


def test_reports_say_not_used_or_describe_the_features_and_the_table_gains_columns(scenario_trace, tmp_path):
    trace_dir = scenario_trace
    out = tmp_path / "reports"
    api.analyze(str(trace_dir), reports="story,radix", out_dir=str(out), formats="text")
    model = load_trace_dir(str(trace_dir), use_cache=False)
    from sglang_tracing.analyzer.analyses import radix, story_report

    titles = [s.title for s in radix.build_report(model).sections] + [s.title for s in story_report.build_report(model).sections]
    assert "Cache tiers (hierarchical cache)" in titles and "Speculative decoding" in titles
    paths = api.requests(str(trace_dir), str(out))
    table = pl.read_parquet(next(p for p in paths if p.endswith(".parquet")))
    assert set(hicache.REQUEST_COLUMNS) | set(speculative.REQUEST_COLUMNS) <= set(table.columns)
    empty = pl.DataFrame({"name": ["sglang.scheduler.forward"], "start_ns": [0], "end_ns": [1]})
    assert not hicache.compute(empty, requests=pl.DataFrame()).used
    assert not speculative.compute(empty, pl.DataFrame()).used


def test_perfetto_puts_tier_transfers_and_draft_verify_on_their_own_tracks(scenario_trace, tmp_path):
    names = check_feature_tracks(scenario_trace, tmp_path / "t.pftrace")
    assert "KV cache host_used_tokens" in names


def check_feature_tracks(trace_dir, out) -> set[str]:
    """The Perfetto export of ``trace_dir``: the tier transfers and draft/verify spans each on their own
    track, their CUDA-event windows on the GPU track (counted from the raw spans); the track names."""
    from perfetto.protos.perfetto.trace.perfetto_trace_pb2 import Trace, TrackEvent

    from test_reports import check_perfetto

    raw = raw_spans.spans(trace_dir)
    api.to_perfetto(str(trace_dir), str(out))
    check_perfetto(str(out))
    trace = Trace()
    trace.ParseFromString(out.read_bytes())
    names = {p.track_descriptor.uuid: p.track_descriptor.name for p in trace.packet if p.HasField("track_descriptor")}
    per_track: dict[str, list[str]] = {}
    for p in trace.packet:
        if p.HasField("track_event") and p.track_event.type == TrackEvent.TYPE_SLICE_BEGIN:
            per_track.setdefault(names[p.track_event.track_uuid], []).append(p.track_event.name)
    tier_names = [s["name"] for s in raw if s["name"].startswith("sglang.hicache.")]
    spec_names = [s["name"] for s in raw if s["name"].startswith("sglang.spec.")]
    assert sorted(per_track.get("HiCache tier transfers", [])) == sorted(tier_names)
    assert sorted(per_track.get("speculative draft / verify", [])) == sorted(spec_names)
    gpu_windows = [s for s in raw if s["name"] in ("sglang.hicache.load_done", "sglang.spec.draft", "sglang.spec.verify")
                   and "sglang.forward.gpu_start_ns" in s["attrs"]]
    assert len(per_track.get("GPU copies and draft / verify (CUDA events)", [])) == len(gpu_windows)
    return set(names.values())


def test_spec_experiment_report_compares_the_cells_and_describes_the_speculating_one(scenario_trace, tmp_path):
    import json

    from sglang_tracing.analyzer import experiment_reports

    trace_dir = scenario_trace
    out = tmp_path / "exp"
    cells = {"no_spec": (100.0, 20e6, 5e6, None), "spec": (150.0, 22e6, 4e6, str(trace_dir))}
    for cell, (tput, ttft, itl, tdir) in cells.items():
        (out / cell).mkdir(parents=True)
        reqs = [{"rid": f"{cell}{i}", "ttft_ns": ttft + i, "mean_itl_ns": itl, "e2e_ns": 1e8, "completion_tokens": 8}
                for i in range(3)]
        (out / cell / "result.json").write_text(json.dumps({"requests": reqs, "output_tok_per_s": tput,
                                                            "trace_dir": tdir, "start_ns": 1}))
    from sglang_tracing.analyzer.analyses import spec_experiment
    from sglang_tracing.analyzer.loaders import backends_experiment

    typed = spec_experiment.compute(backends_experiment.load(out))
    ratios = {(f.cell, f.figure): f.ratio_to_no_spec for f in typed.figures}
    assert ratios[("spec", "output_tok_per_s")] == pytest.approx(150 / 100)
    assert ratios[("spec", "ttft_ms")] == pytest.approx((22e6 + 1) / (20e6 + 1))
    assert ratios[("spec", "itl_ms")] == pytest.approx(4e6 / 5e6)
    assert ratios[("no_spec", "ttft_ms")] is None and typed.speculation is not None
    report = experiment_reports.build("spec", out)
    figures = {f.label: f.value for s in report.sections for f in s.figures}
    assert figures["spec: output throughput"] == f"150.0 tok/s (x{150 / 100:.3f} of no_spec)"
    assert figures["spec: TTFT"] == f"{(22e6 + 1) / 1e6:.2f} ms (x{(22e6 + 1) / (20e6 + 1):.3f} of no_spec)"
    # the speculating cell's trace is described: the scenario's steps that reached a request (see above)
    assert (typed.speculation.total("accepted"), typed.speculation.total("proposed")) == (7, 12)
    assert "drafts accepted / proposed" in figures
