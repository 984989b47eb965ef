"""Issue 2: a traced real SGLang server on CPU records complete, correct request lifecycles."""
from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import polars as pl
import pytest

import raw_spans
from sglang_tracing import semconv as sc
from sglang_tracing.analyzer.analyses import profiler_control
from sglang_tracing.analyzer.analyses.requests import request_table
from sglang_tracing.analyzer.loaders.trace_dir import load_trace_dir
from sglang_tracing.models.builder import prompt_of_length
from sglang_tracing.app.serving import CPU_ARGS, wait_for_exporters

from conftest import mixed_workload, run_concurrently, start_server, stop_and_drain

pytestmark = pytest.mark.server
LIFECYCLE = (sc.REQUEST, sc.REQUEST_TOKENIZE, sc.REQUEST_QUEUED, sc.REQUEST_PREFIX_MATCH,
             sc.REQUEST_PREFILL, sc.REQUEST_DECODE, sc.REQUEST_DETOKENIZE)


EXPORTER = "sglang_tracing.runtime.exporter"


def exporter_processes(tag: str) -> int:
    """Running exporter processes started by a server launched with ``SGT_TEST_TAG=tag`` in its environment
    (exporters leave the server's process tree on purpose, but inherit its environment)."""
    import psutil

    count = 0
    for p in psutil.process_iter():
        try:
            if EXPORTER in " ".join(p.cmdline()) and p.environ().get("SGT_TEST_TAG") == tag:
                count += 1
        except psutil.Error:  # exited meanwhile, or not ours to read
            pass
    return count


def wait_until_up(server, timeout: float = 180) -> None:
    """SGLang answers /health with 503 until its own warm-up request has finished."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(server.url + "/health", timeout=30) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise TimeoutError("SGLang's warm-up did not finish")


@pytest.fixture(scope="module")
def traced_run(tiny_model, tmp_path_factory):
    """One traced server with SGLang's start-up warm-up on (it arrives while the first workload runs):
    the mixed 20-request workload, a long streamed request alone, 300 requests 32 at a time, then a
    health check and a readiness-probe round trip."""
    tmp = tmp_path_factory.mktemp("traced")
    (tmp / "torch_extensions").mkdir()  # fresh: a JIT build there would mean we imported what SGLang had not
    args = [a for a in CPU_ARGS if a != "--skip-server-warmup"]
    tag = uuid.uuid4().hex
    server, trace_dir = start_server(tiny_model, tmp, sglang_args=args,
                                     env={"SGT_TEST_TAG": tag, "TORCH_EXTENSIONS_DIR": str(tmp / "torch_extensions")})
    try:
        mixed = run_concurrently(server, mixed_workload(20), concurrency=4)
        # one long prompt alone: a TTFT long enough that the client's own HTTP costs stay small
        solo = server.generate(prompt_of_length(3000, seed=77), max_new_tokens=24, stream=True)
        load = run_concurrently(server, [prompt_of_length(24, seed=5000 + i) for i in range(300)],
                                concurrency=32, max_new_tokens=4, stream=False)
        exporters = exporter_processes(tag)
        wait_until_up(server)
        urllib.request.urlopen(server.url + "/health_generate", timeout=60).read()
        probe = server.generate("ready", max_new_tokens=1, rid=sc.READINESS_RID_PREFIX + uuid.uuid4().hex)
        time.sleep(1)
    finally:
        stop_and_drain(server, trace_dir)
    return trace_dir, mixed, load, solo, {"exporters": exporters, "probe": probe}


def _rid(resp: dict) -> str:
    return resp["meta_info"]["id"]


def _lifecycle_counts(spans, rids):
    sub = spans.filter(spans["sglang.rid"].is_in(list(rids)) & spans["name"].is_in(LIFECYCLE))
    return sub.group_by("sglang.rid", "name").len()


def test_each_request_has_one_complete_trace(traced_run):
    trace_dir, mixed, *_ = traced_run
    model = load_trace_dir(trace_dir)
    rids = {_rid(r) for r in mixed}
    counts = _lifecycle_counts(model.spans, rids)
    # exactly one span of every lifecycle phase per request
    assert counts.height == len(rids) * len(LIFECYCLE)
    assert counts["len"].to_list() == [1] * counts.height
    # one trace per request, across the tokenizer, scheduler and detokenizer processes
    per_rid = model.spans.filter(model.spans["sglang.rid"].is_in(list(rids))
                                 & model.spans["name"].is_in(LIFECYCLE))
    traces = per_rid.group_by("sglang.rid").agg(n_traces=pl_n_unique("trace_id"), roles=pl_n_unique("role"))
    assert traces["n_traces"].to_list() == [1] * len(rids)
    assert traces["roles"].to_list() == [3] * len(rids)
    # every child points at its request's root span
    roots = dict(per_rid.filter(per_rid["name"] == sc.REQUEST).select("sglang.rid", "span_id").iter_rows())
    for rid, parent in per_rid.filter(per_rid["name"] != sc.REQUEST).select("sglang.rid", "parent_id").iter_rows():
        assert parent == roots[rid]


def pl_n_unique(col):
    import polars as pl

    return pl.col(col).n_unique()


def test_cached_tokens_and_token_times_match_sglang(traced_run):
    trace_dir, mixed, *_ = traced_run
    table = request_table(load_trace_dir(trace_dir).spans)
    by_rid = {row["rid"]: row for row in table.iter_rows(named=True)}
    hits = 0
    for resp in mixed:
        meta = resp["meta_info"]
        row = by_rid[_rid(resp)]
        assert row["cached_tokens"] == meta["cached_tokens"]
        assert row["matched_tokens"] == meta["cached_tokens"]  # our own prefix-match measurement
        assert row["output_tokens"] == meta["completion_tokens"]
        assert len(row["token_times_ns"]) == meta["completion_tokens"]
        assert row["token_times_ns"] == sorted(row["token_times_ns"])
        hits += meta["cached_tokens"] > 0
    assert hits >= 6  # the workload has repeats and a shared prefix: SGLang must have hit


def test_hits_name_the_request_that_inserted_the_prefix(traced_run):
    from sglang_tracing.analyzer.analyses.radix import inserted_by

    trace_dir, mixed, *_ = traced_run
    prompts = {_rid(r): p.split() for r, p in zip(mixed, mixed_workload(20))}
    table = request_table(load_trace_dir(trace_dir).spans).filter(pl_col("rid").is_in(list(prompts)))
    owners = dict(inserted_by(table).iter_rows())
    first_token = dict(table.select("rid", "first_token_ns").iter_rows())
    lookup = dict(table.select("rid", "prefix_match_start_ns").iter_rows())
    hits = [r for r in mixed if r["meta_info"]["cached_tokens"] >= 16]
    assert hits
    for resp in hits:
        rid, cached = _rid(resp), resp["meta_info"]["cached_tokens"]
        owner = owners[rid]
        shared = cached // 16 * 16
        assert prompts[owner][:shared] == prompts[rid][:shared]  # the owner's prompt holds the matched prefix
        # its prefill (which inserts the prompt) was done before the hit looked; arrival order need not
        # be service order (arrival is the kernel's stamp, and the server may read a later one first)
        assert first_token[owner] <= lookup[rid]


def pl_col(name):
    import polars as pl

    return pl.col(name)


def test_no_span_lost_under_concurrency(traced_run):
    trace_dir, _, load, *_ = traced_run
    model = load_trace_dir(trace_dir)
    rids = {_rid(r) for r in load}
    assert len(rids) == 300
    counts = _lifecycle_counts(model.spans, rids)
    assert counts.height == 300 * len(LIFECYCLE)
    table = request_table(model.spans).filter(table_rids(rids))
    assert table["complete"].all()


def table_rids(rids):
    import polars as pl

    return pl.col("rid").is_in(list(rids))


def test_batch_and_cache_spans_recorded(traced_run):
    trace_dir, *_ = traced_run
    model = load_trace_dir(trace_dir)
    names = set(model.spans["name"].unique())
    assert {sc.SCHEDULE, sc.FORWARD, sc.PROCESS_RESULT, sc.MODEL_FORWARD, sc.CACHE_MATCH, sc.CACHE_INSERT} <= names
    fwd = model.spans.filter(model.spans["name"] == sc.FORWARD)
    assert set(fwd[sc.FORWARD_MODE].unique()) >= {"extend", "decode"}
    manifest = json.loads((Path(trace_dir) / "manifest.json").read_text())
    assert manifest["versions"]["sglang"] and manifest["server_args"]["device"] == "cpu"
    # SGLang's default prefix cache: RadixCache up to 0.5.22, UnifiedRadixCache (Rust tree core) after
    version = tuple(int(x) for x in manifest["versions"]["sglang"].split(".")[:3])
    expected = "UnifiedRadixCache" if version >= (0, 5, 23) else "RadixCache"
    cache = model.spans.filter(model.spans["name"].is_in([sc.CACHE_MATCH, sc.CACHE_INSERT]))
    assert set(cache[sc.CACHE_CLASS].unique()) == {expected}
    assert list((Path(trace_dir).parent / "torch_extensions").iterdir()) == []
    note = json.loads(next(Path(trace_dir).glob("gpu-scheduler-*.json")).read_text())
    assert note["sampling"] is False and "cpu" in note["reason"]


def test_traced_processes_each_start_an_exporter(traced_run):
    *_, extra = traced_run
    assert extra["exporters"] == 3  # tokenizer, scheduler, detokenizer: what the inert test counts


def test_inert_without_trace_dir(tiny_model, tmp_path):
    tag = uuid.uuid4().hex
    env = {"SGLANG_TRACE_DIR": "", "SGT_TEST_TAG": tag}
    server, _ = start_server(tiny_model, tmp_path, trace=False, env=env)
    try:
        out = server.generate(prompt_of_length(16), max_new_tokens=3, stream=True)
        assert out["meta_info"]["completion_tokens"] == 3
        assert exporter_processes(tag) == 0  # no process of this server records anything
    finally:
        server.stop()
    assert not (tmp_path / "trace").exists()
    assert not list(tmp_path.rglob("spans-*.jsonl"))


def _serve_briefly(tiny_model, tmp_path, n: int, **server_kwargs):
    """A traced server for ``n`` short requests (3 at a time); returns their responses and the spans."""
    server, trace_dir = start_server(tiny_model, tmp_path, **server_kwargs)
    try:
        outs = run_concurrently(server, [prompt_of_length(20, seed=i) for i in range(n)], concurrency=3)
        time.sleep(1)
    finally:
        stop_and_drain(server, trace_dir)
    assert [o["meta_info"]["completion_tokens"] for o in outs] == [6] * n
    return outs, load_trace_dir(trace_dir).spans


def test_failing_hook_does_not_fail_requests(tiny_model, tmp_path):
    _, spans = _serve_briefly(tiny_model, tmp_path, 6, env={"SGLANG_TRACE_INJECT_FAULT": "process_batch_result"})
    errors = spans.filter(spans["name"] == sc.HOOK_ERROR)
    assert errors[sc.HOOK_NAME].to_list() == ["process_batch_result"]
    # every process reports its recorder's stats now and then: the scheduler's last report counts its failures
    stats = spans.filter((spans["name"] == sc.RECORDER_STATS) & (spans["role"] == "scheduler")).sort("end_ns")
    assert stats[sc.HOOK_ERRORS][-1] >= 6  # at least one failure per processed batch, all counted


@pytest.fixture(scope="module")
def layer_profiled(tiny_model, tmp_path_factory):
    """Three requests at --trace-level layer with a Kineto window over served forwards 0..3: the
    readiness probe's, then the first request's prefill."""
    tmp = tmp_path_factory.mktemp("layer")
    _, spans = _serve_briefly(tiny_model, tmp, 3, tracing_args=["--trace-level", "layer", "--profile-steps", "0:4"])
    return tmp / "trace", spans


def test_layer_level_installs_ranges_on_every_llama_module(tiny_model, layer_profiled):
    _, spans = layer_profiled
    layers = json.loads((Path(tiny_model) / "config.json").read_text())["num_hidden_layers"]
    fwd = spans.filter(pl.col("name") == sc.MODEL_FORWARD)
    # embedding, final norm, lm_head, and per layer: the layer, 2 norms, qkv, attention, o, gate_up, down
    assert fwd.height > 0 and fwd[sc.NVTX_LAYER_RANGES].to_list() == [3 + 8 * layers] * fwd.height


def test_profile_steps_time_their_profiler_control_inside_the_forwards(layer_profiled):
    """--profile-steps 0:4: the torch profiler opens in served forward 0 and Kineto writes its trace in
    forward 3, each a span of its own parented by (and inside) that scheduler forward."""
    trace_dir, spans = layer_profiled
    fwd = spans.filter(pl.col("name") == sc.FORWARD).sort("start_ns")
    control = spans.filter(pl.col("name") == sc.PROFILER_CONTROL).sort("start_ns")
    assert control[sc.PROFILER_ACTION].to_list() == [sc.TORCH_PROFILER_START, sc.KINETO_EXPORT]
    assert control["parent_id"].to_list() == [fwd["span_id"][0], fwd["span_id"][3]]
    inside = control.join(fwd.select("span_id", pl.col("start_ns").alias("f0"), pl.col("end_ns").alias("f1")),
                          left_on="parent_id", right_on="span_id")
    assert inside.filter((pl.col("start_ns") >= pl.col("f0")) & (pl.col("end_ns") <= pl.col("f1"))).height == 2
    assert len(list(Path(trace_dir).glob("kineto-pid*.json"))) == 1
    # the analyzer leaves exactly those two forwards out, with the recorded time, nothing inferred
    model = load_trace_dir(trace_dir)
    left = profiler_control.spans_with_control(model.scan_spans(), model.servers).sort("span_id")
    expected = control.select(pl.col("parent_id").alias("span_id"), (pl.col("end_ns") - pl.col("start_ns"))
                              .alias("control_ns")).sort("span_id")
    assert left.select("span_id", "control_ns").rows() == expected.rows()
    assert left["inferred"].null_count() == 2
    # the requests in flight while they ran (root spans overlapping the control spans, json over the files)
    raw = raw_spans.spans(trace_dir)
    actions = sorted((c["start"], c["end"], c["attrs"][sc.PROFILER_ACTION])
                     for c in raw_spans.named(raw, sc.PROFILER_CONTROL))
    in_flight = {r["attrs"][sc.RID]: "; ".join(a for s, e, a in actions if r["start"] < e and r["end"] > s)
                 for r in raw_spans.named(raw, sc.REQUEST)}
    table = request_table(model.spans, model.manifest, model.servers)
    named = {rid: a for rid, a in table.select("rid", "profiler_control").iter_rows() if a}
    assert named == {rid: a for rid, a in in_flight.items() if a} and named
    assert table["profiler_control_inferred"].null_count() == table.height


def test_profiled_pass_per_layer_time_from_kineto_annotations(tiny_model, layer_profiled):
    """The layer ranges are Kineto user annotations while the torch profiler records; the story's
    per-layer host time of the profiled pass's first request equals the sums read from the Kineto JSON
    here: layer ranges inside the "sglang.model.forward <span id>" annotations of that request's prefill."""
    from sglang_tracing.analyzer.analyses import story, story_report
    from sglang_tracing.analyzer.api import load_input

    trace_dir, _ = layer_profiled
    raw = raw_spans.spans(trace_dir)
    users = [r for r in raw_spans.named(raw, sc.REQUEST) if sc.INTERNAL not in r["attrs"]]
    first = min(users, key=lambda r: r["start"])["attrs"][sc.RID]
    prefill = {f["span_id"] for f in raw_spans.named(raw, sc.FORWARD)
               if first in f["attrs"][sc.BATCH_RIDS] and f["attrs"][sc.FORWARD_MODE] in ("extend", "mixed")}
    model_fwd = {m["span_id"] for m in raw_spans.named(raw, sc.MODEL_FORWARD) if m["parent_id"] in prefill}
    (kineto,) = Path(trace_dir).glob("kineto-pid*.json")
    notes = [e for e in json.loads(kineto.read_text())["traceEvents"]
             if e.get("ph") == "X" and e.get("cat") == "user_annotation"]
    windows = [(e["tid"], e["ts"], e["ts"] + e["dur"]) for e in notes
               if e["name"].startswith(sc.MODEL_FORWARD + " ") and e["name"].split()[-1] in model_fwd]
    layers = json.loads((Path(tiny_model) / "config.json").read_text())["num_hidden_layers"]
    expected: dict[str, float] = {}
    for e in notes:
        if e["name"].startswith(sc.NVTX_LAYER_PREFIX) and any(
                tid == e["tid"] and t0 <= e["ts"] and e["ts"] + e["dur"] <= t1 for tid, t0, t1 in windows):
            expected[e["name"]] = expected.get(e["name"], 0.0) + e["dur"] * 1000
    assert len(windows) == len(model_fwd) >= 1 and len(expected) == layers
    told = story.compute(load_input(str(trace_dir)), first, profiled=load_input(str(trace_dir)))
    found = told.profiled
    got = dict(zip(found.host_layers["layer"].to_list(), found.host_layers["total_ns"].to_list()))
    assert got.keys() == expected.keys()
    for name, ns in expected.items():
        assert abs(got[name] - ns) <= 2 * len(windows), (name, got[name], ns)  # ns rounding of each range
    section = next(s for s in story_report.describe(told).sections if s.title == "Prefill, from the profiled pass")
    by_op = next(c for c in section.children if c.title.startswith("host time by op")).table
    assert set(by_op["op"].to_list()) <= set(sc.NVTX_OPS) and by_op["total_ns"].min() > 0


def test_sigkill_leaves_readable_lines(tiny_model, tmp_path):
    server, trace_dir = start_server(tiny_model, tmp_path)
    stop = threading.Event()

    def hammer(seed):
        i = 0
        while not stop.is_set():
            try:
                server.generate(prompt_of_length(32, seed=seed * 1000 + i), max_new_tokens=8, timeout=10)
            except Exception:
                return
            i += 1

    threads = [threading.Thread(target=hammer, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    time.sleep(6)
    os.killpg(server.proc.pid, signal.SIGKILL)  # the whole server, mid-run
    stop.set()
    for t in threads:
        t.join(15)
    server.proc.wait(10)
    assert wait_for_exporters(trace_dir, timeout=30)
    files = list(Path(trace_dir).glob("spans-*.jsonl"))
    assert len(files) == 3
    lines = 0
    for f in files:
        for line in f.read_text().splitlines():
            json.loads(line)["resourceSpans"]
            lines += 1
    assert lines > 0
    model = load_trace_dir(trace_dir)
    assert request_table(model.spans)["complete"].sum() > 0


def test_internal_requests_are_labelled_and_kept_apart(traced_run):
    """SGLang's start-up warm-up (sent while the client's first requests may already run), its health
    checks and our readiness probe are internal; every request the client sent is the user's."""
    from sglang_tracing.analyzer.analyses import story

    trace_dir, mixed, load, solo, extra = traced_run
    model = load_trace_dir(trace_dir)
    table = request_table(model.spans, model.manifest)
    clients = {_rid(r) for r in [*mixed, *load, solo]}
    kinds = dict(table.select("rid", "internal").iter_rows())
    assert all(kinds[rid] is None for rid in clients)
    others = {rid: kind for rid, kind in kinds.items() if rid not in clients}
    assert others.pop(_rid(extra["probe"])) == "readiness probe"
    # Server.wait_ready's own round trip, before the workload
    assert [k for rid, k in others.items() if rid.startswith(sc.READINESS_RID_PREFIX)] == ["readiness probe"]
    assert list(others.values()).count("warm-up") == 1  # marked when recorded, not inferred
    assert {k for k in others.values()} == {"warm-up", "health check", "readiness probe"}
    assert all(rid.startswith("HEALTH_CHECK") for rid, k in others.items() if k == "health check")
    found = story.compute(model, "slowest")  # the story's statistics count the client's requests alone
    assert sorted(found.users["rid"].to_list()) == sorted(clients) and found.users["complete"].all()
    assert found.internal.height == len(others) + 1


def test_streamed_ttft_lies_inside_the_clients(traced_run):
    """User-visible TTFT: arrival stamped when the kernel received the request's first bytes (read back
    at accept) or else when uvicorn's protocol read them, end at the first response bytes sent. Both
    stamps lie inside the client's own interval (same host, same clock; the client stamps just before
    writing and as its socket turns readable); a non-streamed request has no first token to show."""
    trace_dir, mixed, load, solo, _ = traced_run
    model = load_trace_dir(trace_dir)
    table = {r["rid"]: r for r in request_table(model.spans, model.manifest).iter_rows(named=True)}
    for resp in [*mixed, solo]:
        row, c = table[_rid(resp)], resp["client"]
        assert row["stream"] is True and row["ttft_source"].startswith("first byte sent")
        # not the ASGI entry; a request whose bytes came after the accept and were read late by a busy loop
        # gets the read moved back by the kernel's age of its bytes ("kernel, ms"), never before they arrived
        assert row["received_by"] in (sc.RECEIVED_BY_KERNEL, sc.RECEIVED_BY_KERNEL_MS, sc.RECEIVED_BY_READ)
        assert c["sent_ns"] <= row["received_ns"] < row["first_byte_ns"] <= c["chunk_ns"][0]
        assert row["ttft_ns"] == row["first_byte_ns"] - row["received_ns"]
    for resp in load:
        row = table[_rid(resp)]
        assert row["stream"] is False and row["ttft_ns"] is None and row["ttft_compute_ns"] > 0
        assert resp["client"]["sent_ns"] <= row["received_ns"] and row["first_byte_ns"] <= resp["client"]["done_ns"]


def test_latency_stamps_order_on_one_clock(traced_run):
    """Read from the raw spans of every streamed user request: received <= first token computed (handed
    to the detokenizer) <= first response byte <= finished, and the TTFT and the
    decode the client sees add up to end-to-end exactly (both measured from the one arrival stamp)."""
    trace_dir, mixed, _, solo, _ = traced_run
    raw = raw_spans.spans(trace_dir)
    by_rid = {name: {s["attrs"][sc.RID]: s for s in raw_spans.named(raw, name)}
              for name in (sc.REQUEST, sc.REQUEST_HTTP, sc.REQUEST_DECODE)}
    for resp in [*mixed, solo]:
        rid = _rid(resp)
        root, http, decode = (by_rid[name][rid] for name in (sc.REQUEST, sc.REQUEST_HTTP, sc.REQUEST_DECODE))
        tokens = decode["attrs"][sc.TOKEN_TIMES]
        first_byte = http["attrs"][sc.FIRST_BYTE_NS]
        assert len(tokens) == resp["meta_info"]["completion_tokens"]
        assert http["start"] == root["start"]  # one arrival stamp for the request and its HTTP layer
        assert root["start"] <= tokens[0] <= first_byte <= root["end"] <= http["end"], rid
        assert tokens[-1] <= root["end"]
        ttft, decode_seen, e2e = first_byte - root["start"], root["end"] - first_byte, root["end"] - root["start"]
        assert ttft > 0 and decode_seen > 0 and ttft + decode_seen == e2e


def test_story_latencies_match_client(traced_run):
    """The story's TTFT and mean ITL for a request agree with the client's, within 5%."""
    from sglang_tracing.analyzer.analyses import story

    trace_dir, *_, solo, _ = traced_run
    c = solo["client"]
    chunks = c["chunk_ns"]
    # SGLang may put two tokens in one streamed chunk under load: gaps are counted in tokens
    tokens = solo["meta_info"]["completion_tokens"]
    assert tokens == 24 and len(chunks) >= 2
    ttft, itl = chunks[0] - c["sent_ns"], (chunks[-1] - chunks[0]) / (tokens - 1)
    req = story.compute(load_trace_dir(trace_dir), _rid(solo)[:12]).request
    assert req["rid"] == _rid(solo)
    ours_ttft, ours_itl = req["ttft_ns"], req["mean_itl_ns"]
    assert req["ttft_source"].startswith("first byte sent")
    where = {"received_by": req["received_by"], "sent_to_received_ns": req["received_ns"] - c["sent_ns"],
             "first_byte_to_client_ns": chunks[0] - req["first_byte_ns"]}  # which end a failure is at
    assert ours_ttft <= ttft and abs(ours_ttft - ttft) / ttft < 0.05, (ours_ttft, ttft, where)
    assert abs(ours_itl - itl) / itl < 0.05, (ours_itl, itl)


def test_stop_right_after_the_last_response_keeps_every_request(tiny_model, tmp_path):
    """A user stops the server the moment their benchmark ends: SGLang SIGKILLs its workers, so what a
    scheduler has not yet handed to its exporter is gone. Every request's record must already be out."""
    server, trace_dir = start_server(tiny_model, tmp_path)
    try:
        kept_alive = _two_on_one_connection(server.port)
        outs = server.generate_all([prompt_of_length(64, seed=i) for i in range(8)], 16, concurrency=8,
                                   stream=True)
    finally:
        stop_and_drain(server, trace_dir)  # no pause: straight after the last response
    model = load_trace_dir(trace_dir)
    table = request_table(model.spans, model.manifest)
    rows = {r["rid"]: r for r in table.iter_rows(named=True)}
    # a kept-alive connection's second request: stamped at the server's read (or, read late, by the
    # kernel's age of its bytes), never before the client sent it
    second = rows[kept_alive[1]["rid"]]
    assert second["received_by"] in (sc.RECEIVED_BY_READ, sc.RECEIVED_BY_KERNEL_MS)
    assert kept_alive[1]["sent_ns"] <= second["received_ns"] <= kept_alive[1]["done_ns"]
    for out in outs:
        row = rows[_rid(out)]
        assert row["complete"], {k: row[k] for k in ("rid", "prefill_ns", "decode_ns", "e2e_ns")}
        assert len(row["token_times_ns"]) == out["meta_info"]["completion_tokens"] == 16
    for out in kept_alive:
        assert rows[out["rid"]]["complete"] and len(rows[out["rid"]]["token_times_ns"]) == 4


def _two_on_one_connection(port: int) -> list[dict]:
    """Two non-streamed requests over one kept-alive HTTP/1.1 connection (http.client)."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    done = []
    for i in range(2):
        body = json.dumps({"text": prompt_of_length(32, seed=900 + i), "rid": f"kept-alive-{uuid.uuid4().hex}",
                           "sampling_params": {"max_new_tokens": 4, "ignore_eos": True}})
        sent = time.time_ns()
        conn.request("POST", "/generate", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200 and not resp.will_close
        out = json.loads(resp.read())
        done.append({"rid": out["meta_info"]["id"], "sent_ns": sent, "done_ns": time.time_ns()})
    conn.close()
    return done
