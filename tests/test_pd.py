"""Prefill-decode disaggregation on CPU, for real: a prefill server and a decode server (Mooncake over
TCP), one pair shared by the module, sending their spans to files and to an OTLP/HTTP receiver run
here. The waterfall's TTFT is recomputed from the raw span files (json only) and held against the
client's own clock; a caller's ``traceparent`` must come back from both servers in its trace."""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from sglang_tracing import semconv as sc
from sglang_tracing.analyzer import api
from sglang_tracing.analyzer.analyses import pd
from sglang_tracing.app.otlp_receiver import ReceiverProcess
from sglang_tracing.app.pd import PdPair
from sglang_tracing.app.serving import CPU_ARGS, wait_for_exporters
from sglang_tracing.models.builder import prompt_of_length
from sglang_tracing.runtime.ids import pd_trace_id
from raw_spans import spans as raw_spans

pytest.importorskip("mooncake.engine", reason="PD on CPU needs mooncake-transfer-engine-non-cuda")
EXAMPLES = Path(__file__).resolve().parents[1] / "traces" / "examples"
CALLER_TRACE, CALLER_SPAN = secrets.randbits(128) or 1, secrets.randbits(64) or 1
N_REQUESTS = 6
# a request's own spans (process spans such as cache lookups name rids too, in their process's trace)
REQUEST_SPANS = {sc.REQUEST, sc.REQUEST_HTTP, sc.REQUEST_TOKENIZE, sc.REQUEST_QUEUED, sc.REQUEST_PREFIX_MATCH,
                 sc.REQUEST_PREFILL, sc.REQUEST_DECODE, sc.REQUEST_DETOKENIZE, *sc.PD_SPANS}


# On a host shared with other busy processes, a stamp and the bytes it times can be a scheduler tick
# apart: the pair and its client are woken ahead of the rest (without the right to, they run as they are).
SERVERS_FIRST = ["nice", "-n", "-5"] if hasattr(os, "geteuid") and os.geteuid() == 0 else None


@contextlib.contextmanager
def _client_first():
    """The client, the measuring instrument, is woken the moment bytes arrive: real-time priority while
    it times requests (it sleeps in select between them), where the host allows it."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
        raised = True
    except (OSError, AttributeError):
        raised = False
    try:
        yield
    finally:
        if raised:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


@pytest.fixture(scope="module")
def pd_run(tiny_model, tmp_path_factory):
    """One PD pair: a streamed workload at two in flight, one request carrying a caller's traceparent,
    one carrying an invalid one; the servers stopped and their exporters drained before the tests read."""
    root = tmp_path_factory.mktemp("pd")
    dirs = (str(root / "prefill"), str(root / "decode"))
    receiver = ReceiverProcess(str(root / "collector"))
    pair = PdPair(tiny_model, dirs, CPU_ARGS, str(root), tracing_args=["--otlp-endpoint", receiver.endpoint],
                  wrap=SERVERS_FIRST)
    try:
        pair.wait_ready()
        # the workload, then a caller's traceparent and an invalid one, two in flight throughout
        prompts = [prompt_of_length(24 + 8 * i, seed=i) for i in range(N_REQUESTS + 2)]
        own = [None] * N_REQUESTS + [{"traceparent": f"00-{CALLER_TRACE:032x}-{CALLER_SPAN:016x}-01"},
                                     {"traceparent": "00-zz-yy-01"}]
        with _client_first():
            *outs, caller, invalid = pair.client.generate_all(prompts, max_new_tokens=4, concurrency=2,
                                                              headers_each=own)
        (root / "client.json").write_text(json.dumps([*outs, caller, invalid]))  # for a failure's post-mortem
        caller_hex = f"{CALLER_TRACE:032x}"
        receiver.wait_for(lambda spans: {s["service"] for s in spans if s["traceId"] == caller_hex
                                         and s["name"] in (sc.REQUEST_PREFILL, sc.REQUEST_DECODE)}
                          >= {"sglang-prefill", "sglang-decode"})
    finally:
        pair.stop()
        drained = all([wait_for_exporters(d) for d in dirs])  # they export to the receiver until the end
        receiver.stop()
    assert drained, "exporter processes did not finish"
    return {"dirs": dirs, "outs": outs, "caller": caller, "invalid": invalid, "receiver": receiver,
            "bootstrap_port": pair.bootstrap_port}


def _first(spans, name, rid):
    return next((s for s in spans if s["name"] == name and s["attrs"].get(sc.RID) == rid), None)


def _rid_of_room(spans, room):
    return next(s["attrs"][sc.RID] for s in spans if s["attrs"].get(sc.PD_ROOM) == room)


@pytest.mark.server
def test_waterfall_adds_up_to_the_clients_ttft(pd_run):
    prefill, decode = (raw_spans(d) for d in pd_run["dirs"])
    model = api.load(list(pd_run["dirs"]))
    story = pd.compute(model.spans, model.servers)
    table = {row["room"]: row for row in story.requests.iter_rows(named=True)}
    for out in pd_run["outs"] + [pd_run["caller"], pd_run["invalid"]]:
        room = out["client"]["room"]
        assert out["meta_info"]["completion_tokens"] >= 3  # decode's tokens came back
        p_rid, d_rid = _rid_of_room(prefill, room), _rid_of_room(decode, room)
        # the servers' TTFT from the raw spans: earliest HTTP arrival at either server -> decode's first bytes
        arrival = min(_first(prefill, sc.REQUEST_HTTP, p_rid)["start"], _first(decode, sc.REQUEST_HTTP, d_rid)["start"])
        first_byte = _first(decode, sc.REQUEST_HTTP, d_rid)["attrs"][sc.FIRST_BYTE_NS]
        server_ttft_ms = (first_byte - arrival) / 1e6
        client_ttft_ms = (out["client"]["first_ns"] - out["client"]["sent_ns"]) / 1e6
        row = table[room]
        stages = [row[name] for name in pd.STAGE_NAMES]
        assert all(stage >= 0 for stage in stages)
        assert sum(stages) == pytest.approx(server_ttft_ms, abs=1e-3)
        assert sum(stages) == pytest.approx(client_ttft_ms, rel=0.02)
        # the stages are the recorded boundaries: the prefill forward is the prefill span, where unclamped
        prefill_span = _first(prefill, sc.REQUEST_PREFILL, p_rid)
        assert row["prefill: forward"] <= (prefill_span["end"] - prefill_span["start"]) / 1e6 + 1e-6


@pytest.mark.server
def test_one_trace_per_request_across_both_servers(pd_run):
    prefill, decode = (raw_spans(d) for d in pd_run["dirs"])
    for out in pd_run["outs"]:
        room = out["client"]["room"]
        expected = f"{pd_trace_id('127.0.0.1', pd_run['bootstrap_port'], room):032x}"
        for spans in (prefill, decode):
            rid = _rid_of_room(spans, room)
            mine = [s for s in spans if s["attrs"].get(sc.RID) == rid and s["name"] in REQUEST_SPANS]
            assert {s["trace_id"] for s in mine} == {expected}
            assert {sc.REQUEST, sc.REQUEST_HTTP} <= {s["name"] for s in mine}
    kinds = {s["name"] for s in prefill} | {s["name"] for s in decode}
    assert {sc.PD_BOOTSTRAP, sc.PD_PREFILL_QUEUE, sc.PD_KV_SEND, sc.PD_METADATA_SEND, sc.PD_PREALLOC,
            sc.PD_KV_RECEIVE, sc.PD_FIRST_DECODE} <= kinds
    sends = [s for s in prefill if s["name"] == sc.PD_KV_SEND]
    assert sends and all(s["attrs"][sc.PD_KV_BYTES] > 0 and s["end"] >= s["start"] for s in sends)
    assert not [s for s in prefill + decode if s["name"] == sc.HOOK_ERROR]


@pytest.mark.server
def test_a_callers_traceparent_is_honoured_by_both_servers(pd_run):
    received = pd_run["receiver"].spans()
    caller_hex, span_hex = f"{CALLER_TRACE:032x}", f"{CALLER_SPAN:016x}"
    mine = [s for s in received if s["traceId"] == caller_hex]
    assert {(s["service"], s["name"]) for s in mine} >= {
        ("sglang-prefill", sc.REQUEST), ("sglang-prefill", sc.REQUEST_PREFILL), ("sglang-prefill", sc.PD_KV_SEND),
        ("sglang-decode", sc.REQUEST), ("sglang-decode", sc.REQUEST_DECODE), ("sglang-decode", sc.PD_KV_RECEIVE),
        ("sglang-decode", sc.REQUEST_DETOKENIZE)}
    roots = [s for s in mine if s["name"] == sc.REQUEST]
    assert len(roots) == 2 and {s["parentSpanId"] for s in roots} == {span_hex}
    # an invalid header is ignored: that request joins its PD pair's trace, and was served
    room = pd_run["invalid"]["client"]["room"]
    pd_hex = f"{pd_trace_id('127.0.0.1', pd_run['bootstrap_port'], room):032x}"
    assert {s["service"] for s in received if s["traceId"] == pd_hex and s["name"] == sc.REQUEST} == {
        "sglang-prefill", "sglang-decode"}


@pytest.mark.server
def test_servers_name_themselves_and_the_clock_offset_on_one_host_is_zero(pd_run, tmp_path):
    for d, role in zip(pd_run["dirs"], ("prefill", "decode")):
        identity = json.loads((Path(d) / "manifest.json").read_text())["identity"]
        assert identity["server_role"] == role and identity["service_name"] == f"sglang-{role}"
        assert identity["host_name"] == socket.gethostname()  # SGLang's --host is SGLang's, not our --host-name
    received = pd_run["receiver"].spans()
    assert {s["service"] for s in received} == {"sglang-prefill", "sglang-decode"}
    model = api.load(list(pd_run["dirs"]))
    story = pd.compute(model.spans, model.servers)
    assert story.offset.same_host and story.offset.offset_ns == 0
    assert story.offset.zero_within  # the causal bounds of the joined spans hold the shared clock
    # the CLI: one line per file written, the PD report and table among them
    done = subprocess.run([sys.executable, "-m", "sglang_tracing.app.cli", "analyze", *pd_run["dirs"],
                           "--out", str(tmp_path), "--format", "text"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert {"pd.txt", "pd-requests.csv"} <= {Path(p).name for p in done.stdout.split()}


def test_two_non_pd_dirs_analyze_as_before(tmp_path):
    tp1, tp2 = EXAMPLES / "h200x2-tp" / "tp1" / "trace", EXAMPLES / "h200x2-tp" / "tp2" / "trace"
    model = api.load([str(tp1), str(tp2)])
    assert pd.compute(model.spans, model.servers) is None
    written = api.analyze([str(tp1), str(tp2)], out_dir=str(tmp_path), formats="text", model_config="llama-2-7b")
    names = {Path(p).name for p in written}
    assert {"story.txt", "radix.txt", "timeline.txt"} <= names and not {n for n in names if n.startswith("pd")}


@pytest.mark.server
def test_perfetto_puts_both_servers_on_one_timeline_with_a_flow_per_request(pd_run, tmp_path):
    from perfetto.protos.perfetto.trace.perfetto_trace_pb2 import Trace, TrackEvent

    out = tmp_path / "pd.pftrace"
    api.to_perfetto(list(pd_run["dirs"]), str(out))
    trace = Trace()
    trace.ParseFromString(out.read_bytes())
    names = {p.track_descriptor.uuid: p.track_descriptor.name for p in trace.packet if p.HasField("track_descriptor")}
    ends_by_flow: dict[int, dict[str, int]] = {}
    for p in trace.packet:
        ev = p.track_event
        if ev.type == TrackEvent.TYPE_SLICE_BEGIN and ev.name in sc.PD_FLOW:
            assert len(ev.flow_ids) == 1
            ends_by_flow.setdefault(ev.flow_ids[0], {})[ev.name] = ev.track_uuid
    prefill, decode = (raw_spans(d) for d in pd_run["dirs"])
    rooms = {s["attrs"][sc.PD_ROOM] for s in decode if s["name"] == sc.PD_FIRST_DECODE}
    # one flow per request served by both: from the prefill server's KV send to the decode server's first batch
    assert len(ends_by_flow) == len(rooms) >= N_REQUESTS
    for tracks in ends_by_flow.values():
        assert set(tracks) == set(sc.PD_FLOW) and tracks[sc.PD_KV_SEND] != tracks[sc.PD_FIRST_DECODE]
        assert all(t in names for t in tracks.values())


@pytest.mark.parametrize("header, expected", [
    (f"00-{CALLER_TRACE:032x}-{CALLER_SPAN:016x}-01", (CALLER_TRACE, CALLER_SPAN)),
    ("00-00000000000000000000000000000000-b7ad6b7169203331-01", None),  # all-zero trace id: invalid
    ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b71692033-01", None),  # short span id
    ("not a traceparent", None),
])
def test_traceparent_parsed_by_opentelemetry_and_an_invalid_one_ignored(header, expected, tmp_path):
    from sglang_tracing.runtime import trace_context

    assert trace_context.caller_span({"traceparent": header}) == expected
    origin = trace_context.origin_of({"traceparent": header}, "10.0.0.1", 8998, 42)
    assert origin.trace_id == (expected[0] if expected else pd_trace_id("10.0.0.1", 8998, 42))
    # what the tokenizer process notes, each exporter process reads back (a half-written line waits)
    trace_context.note(str(tmp_path), "rid-a", origin)
    with open(tmp_path / trace_context.CONTEXT_FILE, "a") as f:
        f.write('{"rid": "rid-b", "trace_id": "ab')
    noted = trace_context.NotedTraces(str(tmp_path))
    assert noted.get("rid-a") == origin.trace_id and noted.get("rid-b") is None


def test_the_committed_cpu_example_tells_the_same_story(tmp_path):
    """traces/examples/cpu-pd, through sglang-router: its request spans joined by trace id, the
    waterfall starting at the router's arrival, each request's stages adding up to its TTFT, which the
    raw spans give too (router span start -> decode's first byte)."""
    cell = EXAMPLES / "cpu-pd" / "load-4"
    dirs = [str(cell / side) for side in ("prefill", "decode", "router")]
    model = api.load(dirs)
    story = pd.compute(model.spans, model.servers, model.events)
    router_start = {s["trace_id"]: s["start"] for s in raw_spans(cell / "router") if s["parent_id"] is None}
    decode = raw_spans(cell / "decode")
    assert story.requests.height == 8 and story.offset.zero_within  # the 8 requests of the command
    for row in story.requests.iter_rows(named=True):
        http = _first(decode, sc.REQUEST_HTTP, row["decode_rid"])
        root = _first(decode, sc.REQUEST, row["decode_rid"])
        expected_ms = (http["attrs"][sc.FIRST_BYTE_NS] - router_start[root["trace_id"]]) / 1e6
        assert sum(row[name] for name in pd.STAGE_NAMES) == pytest.approx(row["ttft_ms"], abs=1e-6)
        assert row["ttft_ms"] == pytest.approx(expected_ms, abs=1e-3)
    written = api.analyze(dirs, reports="timeline", out_dir=str(tmp_path), formats="text")
    assert {"pd.txt", "pd-requests.csv"} <= {Path(p).name for p in written}


def test_a_decode_response_that_ended_before_its_first_byte_leaves_the_waterfall():
    """The committed CPU example with one decode-side HTTP span rewritten as a client that hung up before
    its first byte: that request has no first byte the client saw, so no TTFT to split (its first output
    at the tokenizer manager does not stand in); the other 7 stay."""
    import polars as pl

    cell = EXAMPLES / "cpu-pd" / "load-4"
    model = api.load([str(cell / side) for side in ("prefill", "decode", "router")])
    gone = pd.compute(model.spans, model.servers, model.events).requests.row(0, named=True)
    hers = ((pl.col("name") == sc.REQUEST_HTTP) & (pl.col(sc.RID) == gone["decode_rid"])
            & (pl.col("server") == gone["decode_server"]))
    spans = model.spans.with_columns(
        pl.when(hers).then(None).otherwise(pl.col(sc.FIRST_BYTE_NS)).alias(sc.FIRST_BYTE_NS),
        pl.when(hers).then(pl.lit(sc.HTTP_END_DISCONNECT)).otherwise(None).alias(sc.HTTP_ENDED_BY))
    story = pd.compute(spans, model.servers, model.events)
    assert story.requests.height == 7 and gone["decode_rid"] not in story.requests["decode_rid"].to_list()
