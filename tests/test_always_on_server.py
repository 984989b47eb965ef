"""Always on, with real traced SGLang servers on CPU: faults in our own parts never touch serving, and
nothing recorded is lost without being said.

One server (tail-based keep on, batch spans of kept requests) takes clients that hang up mid-stream, its
scheduler's exporter SIGKILLed mid-load, then its trace dir removed; one writes into a 300 kB tmpfs until it
is full; two are stopped right after their last response with one of our hooks slowed, so the stop lands inside
it; four more are stopped so one after another with nothing slowed.
"""
from __future__ import annotations

import http.client
import json
import signal
import shutil
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest

import raw_spans
from sglang_tracing import semconv as sc
from sglang_tracing.analyzer.analyses.requests import TTFT_FIRST_BYTE, for_statistics, request_table
from sglang_tracing.analyzer.loaders.trace_dir import load_trace_dir
from sglang_tracing.app.serving import wait_for_exporters
from sglang_tracing.models.builder import prompt_of_length

from conftest import start_server, stop_and_drain

pytestmark = pytest.mark.server
EXPORTER = "sglang_tracing.runtime.exporter"


def _exporters(trace_dir: str, role: str) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter():
        try:
            cmd = p.cmdline()
            if EXPORTER in " ".join(cmd) and any(a.startswith(f"{trace_dir}/spans-{role}") for a in cmd):
                found.append(p)
        except psutil.Error:
            pass
    return found


def _hang_up_mid_stream(port: int, prompt: str, after_chunks: int, max_new_tokens: int) -> dict:
    """A streamed request whose client closes the connection after ``after_chunks`` data chunks: its rid, the
    chunks and their data lines' bytes it read, and its clock just before it closed."""
    rid = f"hang-up-{uuid.uuid4().hex}"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    body = {"text": prompt, "rid": rid, "stream": True,
            "sampling_params": {"max_new_tokens": max_new_tokens, "ignore_eos": True}}
    conn.request("POST", "/generate", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    got = read = 0
    while got < after_chunks:
        line = resp.fp.readline()
        if line.startswith(b"data:") and b"[DONE]" not in line:
            got += 1
            read += len(line)
    closed_ns = time.time_ns()
    conn.sock.close()
    conn.close()
    return {"rid": rid, "chunks": got, "bytes": read, "closed_ns": closed_ns}


@pytest.fixture(scope="module")
def faulted(tiny_model, tmp_path_factory):
    """Tail-based keep (1 in 3, plus slow and failed) with batch spans of kept requests. Two clients hang up
    mid-stream; then 4 clients send 40 requests while the scheduler's exporter is SIGKILLed after 10; then
    the trace dir is removed and 4 more requests sent."""
    tmp = tmp_path_factory.mktemp("faulted")
    server, trace_dir = start_server(tiny_model, tmp, tracing_args=[
        "--keep-one-in", "3", "--keep-e2e-ms", "60000", "--batch-keep", "kept"])
    answers, errors, lock = [], [], threading.Lock()
    try:
        hung = [_hang_up_mid_stream(server.port, prompt_of_length(32, seed=70 + i), 3, 400) for i in range(2)]
        killed = threading.Event()

        def client(seed: int) -> None:
            for i in range(10):
                try:
                    out = server.generate(prompt_of_length(24, seed=seed * 100 + i), max_new_tokens=8)
                except Exception as exc:  # any failure is the test's finding
                    with lock:
                        errors.append(repr(exc))
                    continue
                with lock:
                    answers.append(out)
                    if len(answers) == 10 and not killed.is_set():
                        for p in _exporters(trace_dir, "scheduler"):
                            p.send_signal(signal.SIGKILL)
                        killed.set()

        threads = [threading.Thread(target=client, args=(s,)) for s in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        time.sleep(1)  # hung-up requests' aborts reach the tokenizer
        # then the trace dir is removed under the running server (what it held, copied first, is what the
        # tests read): serving goes on, each exporter says once that it stopped
        kept = str(tmp / "trace-before-removal")
        shutil.copytree(trace_dir, kept, ignore=shutil.ignore_patterns("*.active", ".*.reserve"))
        shutil.rmtree(trace_dir)
        time.sleep(1.5)  # an exporter checks its file's place once a second
        after_removal = server.generate_all([prompt_of_length(24, seed=900 + i) for i in range(4)], 8, concurrency=4)
    finally:
        stop_and_drain(server, trace_dir)
    return (kept, hung, answers, errors, killed.is_set(), Path(server.log_path).read_text(), after_removal)


def test_killed_exporter_serving_goes_on_and_the_loss_is_said_once(faulted):
    trace_dir, _, answers, errors, killed, log, _ = faulted
    assert killed and errors == [] and len(answers) == 40
    raw = raw_spans.spans(trace_dir)
    notes = raw_spans.named(raw, sc.EXPORTER_LOST)
    assert len(notes) == 1 and notes[0]["attrs"][sc.EXPORTER_RESTARTS] == 1
    assert log.count("died; started another") == 1
    # the replacement exporter wrote what came after: every request finished after the kill is whole
    after = {r["attrs"][sc.RID] for r in raw_spans.named(raw, sc.REQUEST) if r["start"] > notes[0]["start"]}
    decoded = {d["attrs"][sc.RID] for d in raw_spans.named(raw, sc.REQUEST_DECODE)}
    assert after and after <= decoded


def test_every_request_keeps_a_summary_and_some_their_detail(faulted):
    """Tail-based keep: every answered request is in the table with its figures (TTFT, mean ITL, tokens);
    token times only for kept ones; the table says which."""
    trace_dir, _, answers, _, _, _, _ = faulted
    table = request_table(load_trace_dir(trace_dir).spans)
    rows = {r["rid"]: r for r in table.iter_rows(named=True)}
    (note,) = raw_spans.named(raw_spans.spans(trace_dir), sc.EXPORTER_LOST)
    # requests whose scheduler spans went down with the killed exporter (the note says so): none after it
    lost = [a for a in answers if rows[a["meta_info"]["id"]]["decode_ns"] is None]
    assert len(lost) <= 8 and all(rows[a["meta_info"]["id"]]["received_ns"] < note["start"] for a in lost)
    details = [rows[a["meta_info"]["id"]]["kept"] for a in answers if a not in lost]
    assert set(details) <= {sc.KEPT_SAMPLED, sc.KEPT_SUMMARY}
    assert details.count(sc.KEPT_SUMMARY) > 10 and details.count(sc.KEPT_SAMPLED) > 3
    for a in answers:
        if a in lost:
            continue
        row = rows[a["meta_info"]["id"]]
        assert row["output_tokens"] == a["meta_info"]["completion_tokens"] == 8 and row["mean_itl_ns"] > 0
        assert (row["token_times_ns"] is None) == (row["kept"] == sc.KEPT_SUMMARY)
    # batch spans of kept requests only: a forward that ran only summary requests is not written
    raw = raw_spans.spans(trace_dir)
    kept = {rid for rid, r in rows.items() if r["kept"] != sc.KEPT_SUMMARY}
    forwards = raw_spans.named(raw, sc.FORWARD)
    assert forwards and all(set(f["attrs"][sc.BATCH_RIDS]) & kept for f in forwards)


def test_hung_up_client_recorded_with_its_tokens_and_kept(faulted):
    """SGLang aborts a request whose client hung up: recorded with its finish reason and the tokens it
    got, kept whole (failed), and in TTFT statistics since it got tokens. Its HTTP span is written though
    the response's last byte never came: ended when the hang-up was seen (after the client closed, before
    SGLang's abort ended the request), saying so, with at least what the client read."""
    trace_dir, hung, _, _, _, _, _ = faulted
    table = request_table(load_trace_dir(trace_dir).spans)
    rows = {r["rid"]: r for r in table.iter_rows(named=True)}
    raw = raw_spans.spans(trace_dir)
    roots = {s["attrs"][sc.RID]: s for s in raw_spans.named(raw, sc.REQUEST)}
    http = {s["attrs"][sc.RID]: s for s in raw_spans.named(raw, sc.REQUEST_HTTP)}
    for h in hung:
        row = rows[h["rid"]]
        assert row["finish_reason"] == "abort" and row["kept"] == sc.KEPT_FAILED
        assert 3 <= row["output_tokens"] < 400 and row["ttft_ns"] > 0
        assert h["rid"] in http, "no HTTP span for a client that hung up"
        span = http[h["rid"]]
        assert span["attrs"][sc.HTTP_ENDED_BY] == sc.HTTP_END_DISCONNECT and row["client_disconnected"] is True
        assert span["attrs"][sc.HTTP_BODY_CHUNKS] >= h["chunks"] and span["attrs"][sc.HTTP_BODY_BYTES] >= h["bytes"]
        assert span["attrs"][sc.FIRST_BYTE_NS] < h["closed_ns"] < span["end"] < roots[h["rid"]]["end"]
        assert row["ttft_source"] == TTFT_FIRST_BYTE
    assert {h["rid"] for h in hung} <= set(for_statistics(table)["rid"])


def test_trace_dir_removed_serving_goes_on_and_each_exporter_says_so_once(faulted):
    *_, log, after_removal = faulted
    assert [o["meta_info"]["completion_tokens"] for o in after_removal] == [8] * 4
    stopped = [line for line in log.splitlines() if "stopped: trace dir removed" in line]
    assert stopped and len(stopped) == len({line.split(" stopped")[0] for line in stopped}) <= 3


def test_full_trace_disk_serving_unaffected_trace_says_where_it_stops(tiny_model, tmp_path, small_tmpfs):
    server = None
    try:
        server, trace_dir = start_server(tiny_model, tmp_path)
        assert trace_dir == str(small_tmpfs)
        outs = server.generate_all([prompt_of_length(64, seed=i) for i in range(40)], 16, concurrency=8)
    finally:
        if server is not None:
            server.stop()
    assert wait_for_exporters(trace_dir, timeout=30)
    assert len(outs) == 40 and all(o["meta_info"]["completion_tokens"] == 16 for o in outs)
    raw = raw_spans.spans(trace_dir)
    stops = raw_spans.named(raw, sc.WRITING_STOPPED)
    assert stops and all(s["attrs"][sc.STOP_REASON].startswith("ENOSPC") for s in stops)
    model = load_trace_dir(trace_dir, use_cache=False)
    assert not model.cut_files  # every line whole
    assert model.spans.height == len(raw)
    table = request_table(model.spans)
    assert 0 < table.height and table["complete"].sum() > 0


def test_stopped_right_after_the_last_response_while_our_hooks_record(tiny_model, tmp_path):
    """Servers stopped the moment their last response arrives, with the stop landing inside our hook: the
    first's scheduler takes 0.3 s to emit each finished request's decode span, the second's detokenizer
    as long for each detokenize span (both processes die of SIGTERM). Each waits for its hook, then flushes:
    every request whole (a control run without the wait lost requests of the first)."""
    for i, slowed in enumerate((sc.REQUEST_DECODE, sc.REQUEST_DETOKENIZE)):
        (tmp_path / f"run{i}").mkdir()
        server, trace_dir = start_server(tiny_model, tmp_path / f"run{i}",
                                         env={"SGLANG_TRACE_TEST_SLOW_EMIT": f"{slowed}:0.3"})
        try:
            outs = server.generate_all([prompt_of_length(64, seed=10 * i + k) for k in range(4)], 16,
                                       concurrency=4, stream=True)
        finally:
            stop_and_drain(server, trace_dir)
        rows = {r["rid"]: r for r in request_table(load_trace_dir(trace_dir).spans).iter_rows(named=True)}
        for out in outs:
            row = rows[out["meta_info"]["id"]]
            assert row["complete"] and len(row["token_times_ns"]) == 16, (slowed, row["rid"])
            assert row["detokenize_ns"] is not None, (slowed, row["rid"])


STOPS_IN_A_ROW = 4


def test_stopped_many_times_in_a_row_every_answered_request_whole(tiny_model, tmp_path):
    """The experiments' own stop, many times in a row with nothing slowed: each server is stopped the moment
    its last streamed response arrives, at a different point of its last requests (their lengths differ
    per run). Every request a client got whole is whole in the trace: its tokens and its detokenize span."""
    for run in range(STOPS_IN_A_ROW):
        (tmp_path / f"run{run}").mkdir()
        server, trace_dir = start_server(tiny_model, tmp_path / f"run{run}")
        try:
            outs = server.generate_all([prompt_of_length(40 + 8 * k, seed=100 * run + k) for k in range(3)],
                                       10 + 3 * run, concurrency=3, stream=True)
        finally:
            stop_and_drain(server, trace_dir)
        rows = {r["rid"]: r for r in request_table(load_trace_dir(trace_dir).spans).iter_rows(named=True)}
        for out in outs:
            assert out["meta_info"]["completion_tokens"] == 10 + 3 * run  # the client got it whole
            row = rows[out["meta_info"]["id"]]
            assert row["complete"] and len(row["token_times_ns"]) == 10 + 3 * run, (run, row["rid"])
            assert row["detokenize_ns"] is not None, (run, row["rid"])
