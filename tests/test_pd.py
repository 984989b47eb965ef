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
from sglang_tracing.app.client_spans import write_client_dir
from sglang_tracing.app.experiments.pd import router_available
from sglang_tracing.app.otlp_receiver import ReceiverProcess, write_manifest
from sglang_tracing.app.pd import PdClient, PdPair, Router, served_by_router
from sglang_tracing.app.serving import CPU_ARGS, wait_for_exporters
from sglang_tracing.models.builder import prompt_of_length
from sglang_tracing.runtime.ids import pd_trace_id
from raw_spans import spans as raw_spans

pytest.importorskip("mooncake.engine", reason="PD on CPU needs mooncake-transfer-engine-non-cuda")
EXAMPLES = Path(__file__).resolve().parents[1] / "traces" / "examples"
CALLER_TRACE, CALLER_SPAN = secrets.randbits(128) or 1, secrets.randbits(64) or 1
N_REQUESTS = 6
N_ROUTED = 4  # then through sglang-router, two in flight
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
        routed = _through_the_router(pair, root, prompts[:N_ROUTED]) if router_available() else None
    finally:
        pair.stop()
        drained = all([wait_for_exporters(d) for d in dirs])  # they export to the receiver until the end
        receiver.stop()
    assert drained, "exporter processes did not finish"
    return {"dirs": dirs, "outs": outs, "caller": caller, "invalid": invalid, "receiver": receiver,
            "bootstrap_port": pair.bootstrap_port, "routed": routed, "root": root,
            "urls": (pair.prefill.url, pair.decode.url)}


def _through_the_router(pair: PdPair, root: Path, prompts: list[str]) -> list[dict]:
    """sglang-router in PD mode in front of the pair, its spans received over OTLP/gRPC into ``router/``;
    the client's stamps of each request written to ``client/``, as the experiment does."""
    receiver = ReceiverProcess(str(root / "router"), label="router")
    assert receiver.grpc_endpoint, "grpcio is needed to receive sglang-router's spans"
    router = Router(pair, str(root / "router.log"), receiver.grpc_endpoint)
    try:
        client = PdClient(pair.prefill.url, pair.decode.url, pair.bootstrap_port, router.url)
        router.wait_ready(client)
        write_manifest(str(root / "router"), sc.ROUTER_ROLE, router.cmd)
        with _client_first():
            routed = client.generate_all(prompts, max_new_tokens=4, concurrency=2)
        receiver.wait_for(lambda spans: len(served_by_router(spans)) > len(prompts))  # + its readiness probe
    finally:
        router.stop()
        receiver.stop()
    write_client_dir(str(root / "client"), [out["client"] for out in routed])
    return routed


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
    sends = [s for s in prefill if s["name"] == sc.PD_KV_SEND  # SGLang's /health probes (the router's) fake theirs
             and not s["attrs"][sc.RID].startswith(tuple(sc.INTERNAL_RID_PREFIXES))]
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
    """traces/examples/cpu-pd, client -> sglang-router -> both servers, with the client's stamps: each
    request's waterfall runs from the client's send to the first chunk it read (result.json's stamps,
    read here with json), its first stage ends at the router's span start, the servers' TTFT is router
    span start -> decode's first bytes, and the router's picks are the workers on its command line."""
    for load in (1, 4):
        cell = EXAMPLES / "cpu-pd" / f"load-{load}"
        dirs = [str(cell / side) for side in ("prefill", "decode", "router", "client")]
        model = api.load(dirs)
        story = pd.compute(model.spans, model.servers, model.events)
        client = {r["rid"]: r for r in json.loads((cell / "result.json").read_text())["requests"]}
        router_start = {s["trace_id"]: s["start"] for s in raw_spans(cell / "router") if s["parent_id"] is None}
        decode = raw_spans(cell / "decode")
        assert story.requests.height == len(client) == 8 and story.client_joined == 8  # the command's 8 requests
        assert story.offset.zero_within
        for row in story.requests.iter_rows(named=True):
            c = client[row["decode_rid"]]
            assert sum(row[name] for name in pd.STAGE_NAMES) == pytest.approx(row["ttft_ms"], abs=1e-6)
            assert row["ttft_ms"] == pytest.approx((c["first_chunk_ns"] - c["sent_ns"]) / 1e6, abs=1e-3)
            start = router_start[_first(decode, sc.REQUEST, row["decode_rid"])["trace_id"]]
            assert row["client: send until arrival"] == pytest.approx((start - c["sent_ns"]) / 1e6, abs=1e-3)
            first_byte = _first(decode, sc.REQUEST_HTTP, row["decode_rid"])["attrs"][sc.FIRST_BYTE_NS]
            assert row["server_ttft_ms"] == pytest.approx((first_byte - start) / 1e6, abs=1e-3)
        command = json.loads((cell / "router" / "manifest.json").read_text())["command"]
        urls = (command[command.index("--prefill") + 1], command[command.index("--decode") + 1])
        assert story.router_picks.pairs.rows() == [(*urls, 8)]
    written = api.analyze(dirs, reports="timeline", out_dir=str(tmp_path), formats="text")
    assert {"pd.txt", "pd-requests.csv"} <= {Path(p).name for p in written}


@pytest.mark.server
def test_through_the_router_the_waterfall_is_the_clients_ttft_and_names_its_picks(pd_run, tmp_path):
    """Client -> sglang-router -> both servers: with the client's stamps the waterfall runs from the
    client's send to the first chunk it read (its own TTFT, exactly), the send until the router's span
    and the relay back are stages of their own; the router's picks are the pair it was given."""
    if pd_run["routed"] is None:
        pytest.skip("sglang-router is not installed")
    root = pd_run["root"]
    dirs = [*pd_run["dirs"], str(root / "router"), str(root / "client")]
    model = api.load(dirs)
    story = pd.compute(model.spans, model.servers, model.events)
    rows = {row["decode_rid"]: row for row in story.requests.iter_rows(named=True)}
    router_start = {s["trace_id"]: s["start"] for s in raw_spans(root / "router") if s["parent_id"] is None}
    decode = raw_spans(pd_run["dirs"][1])
    assert story.client_joined == len(pd_run["routed"])
    for out in pd_run["routed"]:
        c = out["client"]
        row = rows[c["rid"]]
        stages = [row[name] for name in pd.STAGE_NAMES]
        assert all(stage >= 0 for stage in stages)
        assert sum(stages) == pytest.approx((c["first_ns"] - c["sent_ns"]) / 1e6, abs=1e-3)  # the client's TTFT
        start = router_start[_first(decode, sc.REQUEST, c["rid"])["trace_id"]]
        assert c["sent_ns"] <= start  # one host, one clock: the router saw it after the client sent it
        assert row["client: send until arrival"] == pytest.approx((start - c["sent_ns"]) / 1e6, abs=1e-3)
        # the client's kernel received the first chunk before the client read it; reading it is the last stage
        assert c["first_kernel_ns"] is not None and c["sent_ns"] < c["first_kernel_ns"] <= c["first_ns"]
        assert row["client: wake-up to read them"] <= (c["first_ns"] - c["first_kernel_ns"]) / 1e6 + 1e-3
    picks = story.router_picks
    assert picks.pairs.rows() == [(*pd_run["urls"], len(pd_run["routed"]))]
    assert set(picks.requests["decode_rid"].to_list()) == {out["client"]["rid"] for out in pd_run["routed"]}
    # Perfetto: each pick is a slice on the router's track, named for the pair, the URLs as args
    from perfetto.protos.perfetto.trace.perfetto_trace_pb2 import Trace, TrackEvent

    api.to_perfetto(dirs, str(tmp_path / "pd.pftrace"))
    trace = Trace()
    trace.ParseFromString((tmp_path / "pd.pftrace").read_bytes())
    picked = [{a.name: a.string_value for a in p.track_event.debug_annotations} for p in trace.packet
              if p.track_event.type == TrackEvent.TYPE_SLICE_BEGIN and p.track_event.name.startswith("router pick")]
    assert len(picked) >= len(pd_run["routed"])  # and its readiness probe's
    assert {(a["prefill_url"], a["decode_url"]) for a in picked} == {pd_run["urls"]}


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
