"""Always on, without a server: a real recorder and exporter process writing size-capped parts, a disk that
fills, a trace dir removed, an exporter killed; the keep decisions on their own."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from sglang_tracing import semconv as sc
from sglang_tracing.app.serving import wait_for_exporters
from sglang_tracing.config import TraceConfig, UsageError, always_on_from_env
from sglang_tracing.runtime import recorder as recorder_mod
from sglang_tracing.runtime.recorder import Recorder
from sglang_tracing.runtime.span_files import parts_of
from sglang_tracing.runtime import tail_keep
from sglang_tracing.runtime.tail_keep import BatchKeep, RequestKeep

import raw_spans

T0 = time.time_ns()


def _emit(rec: Recorder, first: int, n: int, flush_every: int = 100) -> None:
    for i in range(first, first + n):
        rec.emit("test.span", T0 + i, T0 + i + 1, {"i": i, "pad": "x" * 200})
        if i % flush_every == flush_every - 1:
            rec.flush()
    rec.flush()


def _close(rec: Recorder) -> None:
    """Close the recorder and wait for its exporter to write everything (once it is up: it may still start)."""
    deadline = time.monotonic() + 30
    while not os.path.exists(rec.span_file) and time.monotonic() < deadline:
        time.sleep(0.05)
    rec.close()
    assert wait_for_exporters(rec.config.trace_dir, 30)


def _manifest(trace_dir) -> None:
    with open(os.path.join(trace_dir, "manifest.json"), "w") as f:
        json.dump({"format": "sglang-tracing", "format_version": 1}, f)


def _written(trace_dir) -> list[int]:
    return sorted(s["attrs"]["i"] for s in raw_spans.named(raw_spans.spans(str(trace_dir)), "test.span"))


def _exporter_of(span_file: str) -> psutil.Process:
    """The exporter process writing ``span_file`` once it is up (the forked one, not its short-lived parent)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for p in psutil.process_iter():
            try:
                if span_file in p.cmdline() and p.ppid() != os.getpid() and os.path.exists(span_file):
                    return p
            except psutil.Error:
                pass
        time.sleep(0.05)
    raise AssertionError("no exporter process for " + span_file)


def _kill(p: psutil.Process) -> None:
    p.send_signal(signal.SIGKILL)
    psutil.wait_procs([p], timeout=10)


def test_parts_rotate_retention_deletes_oldest_and_says_so(tmp_path):
    """~300 bytes a span, 50 KB parts, 3 kept: the oldest parts go, the trace names them, the analyzer
    reads every span of the parts that remain."""
    from sglang_tracing.analyzer.loaders.trace_dir import load_trace_dir

    rec = Recorder(TraceConfig(trace_dir=str(tmp_path), span_file_max_mb=0.05, span_files_keep=3), "scheduler")
    _emit(rec, 0, 2000)
    _close(rec)
    parts = parts_of(rec.span_file)
    assert len(parts) == 3 and parts[-1][0] >= 5  # rotated several times, three left
    assert all(os.path.getsize(p) <= 0.05 * (1 << 20) for _, p in parts[:-1])
    kept = _written(tmp_path)
    assert kept == list(range(kept[0], 2000)) and kept[0] > 0  # the newest records, none missing after the cut
    raw = raw_spans.spans(str(tmp_path))
    deleted = [n for s in raw_spans.named(raw, sc.PARTS_DELETED) for n in s["attrs"][sc.PARTS_DELETED]]
    all_parts = {os.path.basename(rec.span_file)} | {f"{os.path.basename(rec.span_file)[:-6]}.p{i:04d}.jsonl"
                                                     for i in range(1, parts[-1][0] + 1)}
    remaining = {os.path.basename(p) for _, p in parts}
    # deleted parts whose note was itself in a deleted part are not listed; every listed one is gone
    assert set(deleted) <= all_parts - remaining and deleted
    _manifest(tmp_path)
    model = load_trace_dir(tmp_path)
    assert model.spans.filter(model.spans["name"] == "test.span").height == len(kept)


def test_retention_needs_a_cap():
    with pytest.raises(UsageError):
        always_on_from_env({"SGLANG_TRACE_SPAN_FILES_KEEP": "3"})
    with pytest.raises(UsageError):
        always_on_from_env({"SGLANG_TRACE_BATCH_KEEP": "some"})


def test_full_disk_stops_cleanly_and_says_where(small_tmpfs):
    """A 300 kB trace dir: writing stops at a whole line with a stop line naming why; every span before it
    is readable; the process recording never notices."""
    from sglang_tracing.analyzer.loaders.trace_dir import load_trace_dir

    _manifest(small_tmpfs)
    rec = Recorder(TraceConfig(trace_dir=str(small_tmpfs)), "scheduler")
    start = time.monotonic()
    _emit(rec, 0, 3000)
    emit_s = time.monotonic() - start
    _close(rec)
    lines = open(rec.span_file, "rb").read().split(b"\n")
    assert lines[-1] == b""  # ends with a whole line
    docs = [json.loads(line) for line in lines[:-1]]
    last = docs[-1]["resourceSpans"][0]["scopeSpans"][0]["spans"]
    assert [s["name"] for s in last] == [sc.WRITING_STOPPED]
    assert last[0]["attributes"][0]["value"]["stringValue"].startswith("ENOSPC")
    written = _written(small_tmpfs)
    assert written == list(range(len(written))) and 0 < len(written) < 3000
    model = load_trace_dir(small_tmpfs, use_cache=False)
    assert model.spans.filter(model.spans["name"] == "test.span").height == len(written)
    assert not model.cut_files and emit_s < 60


def test_trace_dir_removed_stops_writing_and_the_process_goes_on(tmp_path, capfd):
    """The exporter notices its file is gone (rather than writing on into a deleted file) and says so once."""
    trace_dir = tmp_path / "trace"
    rec = Recorder(TraceConfig(trace_dir=str(trace_dir)), "scheduler")
    _emit(rec, 0, 100)
    while not os.path.exists(rec.span_file):  # the exporter is up and writing
        time.sleep(0.05)
    subprocess.run(["rm", "-rf", str(trace_dir)], check=True)
    time.sleep(1.2)  # the exporter checks its file's place once a second
    _emit(rec, 100, 100)
    _emit(rec, 200, 100)
    rec.close()
    err = ""
    deadline = time.monotonic() + 20
    while "were not written" not in err and time.monotonic() < deadline:  # its last words, at the pipe's end
        time.sleep(0.1)
        err += capfd.readouterr().err
    assert not trace_dir.exists() and rec.dropped == 0
    assert err.count("stopped: trace dir removed") == 1, err


def test_killed_exporter_is_replaced_and_the_loss_recorded(tmp_path):
    rec = Recorder(TraceConfig(trace_dir=str(tmp_path)), "scheduler")
    _emit(rec, 0, 500)
    _kill(_exporter_of(rec.span_file))
    _emit(rec, 500, 500)
    _close(rec)
    assert rec.restarts == 1
    raw = raw_spans.spans(str(tmp_path))
    (note,) = raw_spans.named(raw, sc.EXPORTER_LOST)
    written = _written(tmp_path)
    # what the dead exporter wrote, plus the batch it could not take, is everything sent before the note
    assert note["attrs"][sc.RECORDS_SENT] + note["attrs"][sc.RECORDS_UNSENT] >= len([i for i in written if i < 500])
    assert set(range(500, 1000)) - set(written) <= set(range(500, 600))  # at most the batch cut by the kill
    assert len([i for i in written if i >= 500]) >= 400


def test_without_an_exporter_records_are_dropped_and_counted_not_queued(tmp_path, monkeypatch):
    """No exporter can be started again: memory stays bounded (nothing queued), every record counted."""
    monkeypatch.setattr(recorder_mod, "MAX_RESTARTS", 0)
    rec = Recorder(TraceConfig(trace_dir=str(tmp_path)), "scheduler")
    _emit(rec, 0, 10)
    _kill(_exporter_of(rec.span_file))
    _emit(rec, 10, 10)  # the flush that finds the pipe broken
    for i in range(50_000):
        rec.emit("test.span", i, i + 1, {"i": i})
    assert len(rec._queue) == 0 and rec.dropped >= 50_000
    rec.close()


def test_percentile_window_keeps_the_slow_tail():
    """Requests of 1..100 ms in a repeating order, window of 100: once the window is full, only those over
    its p90 (90 ms) keep their detail."""
    keep = RequestKeep(TraceConfig(trace_dir="unused", keep_percentile=90, keep_window=100, keep_one_in=10**9))
    decided = [keep.decide(f"r{i}", False, None, None, (i % 100 + 1) * 1_000_000) for i in range(300)]
    late = decided[100:]
    slow = [i for i, d in enumerate(late, start=100) if d == sc.KEPT_SLOW_PERCENTILE]
    assert all((i % 100 + 1) > 90 for i in slow) and len(slow) == 2 * 9  # 92..100 of each later round...
    assert keep.decide("x", True, None, None, 1) == sc.KEPT_FAILED


def test_one_in_n_agrees_across_processes_by_rid():
    a, b = (RequestKeep(TraceConfig(trace_dir="unused", keep_one_in=4)) for _ in range(2))
    rids = [f"rid-{i}" for i in range(2000)]
    da = [a.decide(r, False, 1, 1, 1) for r in rids]
    assert da == [b.decide(r, False, 1, 1, 1) for r in rids]
    assert 350 < da.count(sc.KEPT_SAMPLED) < 650


def _forward(sid: int, rids: list[str]) -> tuple:
    return (sc.FORWARD, 0, 1, sid, 0, "", {sc.BATCH_RIDS: rids}, ())


def test_batch_records_kept_only_where_they_ran_a_kept_request():
    keep = BatchKeep("kept")
    sched = (sc.SCHEDULE, 0, 1, 7, 0, "", {sc.ITERATION: 1}, ())
    result = (sc.PROCESS_RESULT, 0, 1, 8, 0, "", {sc.FORWARD_SPAN_ID: f"{11:016x}"}, ())
    assert keep.offer(sched) == [] and keep.offer(_forward(11, ["a", "b"])) == [] and keep.offer(result) == []
    assert keep.offer(_forward(12, ["b"])) == []
    assert keep.decided("a", False) == []  # b still running
    assert keep.decided("b", False) == []  # neither kept: forward 11 and 12 dropped
    assert keep.dropped == 4 and keep.held == 0
    keep.offer(_forward(13, ["c"]))
    assert keep.decided("c", True) == [_forward(13, ["c"])]
    other = ("sglang.request", 0, 1, 9, 0, "", {}, ())
    assert keep.offer(other) == [other]  # request spans are never held
    detok = (sc.DETOKENIZE_BATCH, 0, 1, 10, 0, "", {sc.BATCH_SIZE: 1}, ())
    assert keep.offer(detok) == [detok] and keep.held == 0  # its process never learns the decisions


def test_forward_recorded_after_its_requests_ended_is_not_held_for_ever():
    """Overlap scheduling (SGLang's default on GPU): the batch launched before a request's last result was
    processed still runs it, and its forward span (waiting for its CUDA end event) reaches the recorder after
    the request was decided. An H100 soak held 9,024 such records at its end, none released while idle."""
    keep = BatchKeep("kept")
    result = (sc.PROCESS_RESULT, 0, 1, 30, 0, "", {sc.FORWARD_SPAN_ID: f"{21:016x}"}, ())
    assert keep.offer(_forward(20, ["a", "b"])) == []
    assert keep.decided("a", False) == [] and keep.decided("b", True) == [_forward(20, ["a", "b"])]
    assert keep.offer(_forward(21, ["a", "b"])) == [_forward(21, ["a", "b"])]  # b kept: written at once
    assert keep.offer(result) == [result]  # its result processing follows it
    assert keep.offer(_forward(22, ["a"])) == [] and keep.dropped == 1  # only a (not kept): left out at once
    assert keep.offer(_forward(23, ["a", "c"])) == []  # c still running
    assert keep.decided("c", False) == [] and keep.held == 0


def test_records_no_forward_follows_are_not_held_without_bound():
    """A process with cache spans but no forward (none will settle them): held up to a bound, then written."""
    keep = BatchKeep("kept")
    out = []
    for i in range(tail_keep.MAX_HELD // 10 + 1):
        out += keep.offer((sc.CACHE_MATCH, 0, 1, i + 1, 0, "", {}, ()))
    assert len(out) == tail_keep.MAX_HELD // 10 + 1 and keep.held == 0


def test_batch_one_in_n_keeps_a_forward_with_its_result():
    keep = BatchKeep("3")
    out = []
    for sid in range(300):
        out += keep.offer(_forward(sid, ["a"]))
        out += keep.offer((sc.PROCESS_RESULT, 0, 1, 1000 + sid, 0, "", {sc.FORWARD_SPAN_ID: f"{sid:016x}"}, ()))
    forwards = [r[3] for r in out if r[0] == sc.FORWARD]
    results = [int(r[6][sc.FORWARD_SPAN_ID], 16) for r in out if r[0] == sc.PROCESS_RESULT]
    assert forwards == results == list(range(0, 300, 3))


def test_trace_dir_made_read_only_keeps_writing_the_open_part(tmp_path, capfd):
    """A read-only bind mount over the trace dir while running: the open part takes every line (past its
    cap: no new part can be made), the exporter says so once, nothing is lost."""
    trace_dir = tmp_path / "trace"
    rec = Recorder(TraceConfig(trace_dir=str(trace_dir), span_file_max_mb=0.05), "scheduler")
    _emit(rec, 0, 50)
    while not os.path.exists(rec.span_file):
        time.sleep(0.05)
    time.sleep(0.5)
    if subprocess.run(["mount", "--bind", str(trace_dir), str(trace_dir)]).returncode != 0:
        pytest.skip("cannot bind-mount here (needs root)")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(trace_dir)], check=True)
        _emit(rec, 50, 1000)
        rec.close()
        err = ""
        deadline = time.monotonic() + 20
        while "grows past its cap" not in err and time.monotonic() < deadline:
            time.sleep(0.1)
            err += capfd.readouterr().err
        time.sleep(1)  # the exporter drains the pipe
        assert _written(trace_dir) == list(range(1050)) and rec.dropped == 0
        assert err.count("grows past its cap") == 1, err
    finally:
        subprocess.run(["umount", "-l", str(trace_dir)])


def test_an_abort_without_a_token_has_no_ttft_one_with_tokens_keeps_it(tmp_path):
    """Streamed requests aborted by SGLang (their clients hung up): one before any token, one after 2
    (recorded without the HTTP span); two after 2 tokens whose HTTP spans say the client hung up, one
    after its first byte was sent (7 ms in), one before. All stay in the table; a TTFT only for those
    whose client could have seen a token: the first output (5 ms in) without the HTTP span, else its
    first byte."""
    from sglang_tracing.analyzer.analyses.requests import TTFT_NONE_SENT, request_table
    from sglang_tracing.analyzer.loaders.trace_dir import load_trace_dir
    from sglang_tracing.runtime.ids import request_root_span_id, request_trace_key
    from sglang_tracing.runtime.records import PARENT_IS_REQUEST_ROOT

    rec = Recorder(TraceConfig(trace_dir=str(tmp_path)), "tokenizer")
    for rid, tokens in (("none", 0), ("two", 2), ("sent", 2), ("unsent", 2)):
        attrs = {sc.RID: rid, sc.PROMPT_TOKENS: 8, sc.CACHED_TOKENS: 0, sc.OUTPUT_TOKENS: tokens,
                 sc.FINISH_REASON: "abort", sc.FIRST_OUTPUT_NS: T0 + 5_000_000, sc.STREAM: True}
        rec.emit(sc.REQUEST, T0, T0 + 9_000_000, attrs, span_id=request_root_span_id(rid),
                 trace_key=request_trace_key(rid))
    for rid, first_byte, chunks in (("sent", T0 + 7_000_000, 1), ("unsent", None, 0)):
        attrs = {sc.RID: rid, sc.STREAM: True, sc.HTTP_ENDED_BY: sc.HTTP_END_DISCONNECT,
                 sc.HTTP_BODY_CHUNKS: chunks, sc.HTTP_BODY_BYTES: 40 * chunks}
        if first_byte:
            attrs[sc.FIRST_BYTE_NS] = first_byte
        rec.emit(sc.REQUEST_HTTP, T0, T0 + 8_000_000, attrs, parent=PARENT_IS_REQUEST_ROOT,
                 trace_key=request_trace_key(rid))
    _close(rec)
    _manifest(tmp_path)
    rows = {r["rid"]: r for r in request_table(load_trace_dir(tmp_path).spans).iter_rows(named=True)}
    assert rows["none"]["ttft_ns"] is None and rows["none"]["finish_reason"] == "abort"
    assert rows["two"]["ttft_ns"] == 5_000_000 and rows["two"]["client_disconnected"] is None
    assert rows["sent"]["ttft_ns"] == 7_000_000 and rows["sent"]["client_disconnected"] is True
    assert (rows["sent"]["response_chunks"], rows["sent"]["response_bytes"]) == (1, 40)
    assert rows["unsent"]["ttft_ns"] is None and rows["unsent"]["ttft_source"] == TTFT_NONE_SENT
    assert rows["unsent"]["client_disconnected"] is True and rows["unsent"]["output_tokens"] == 2


class _LostGpu:
    """Stands in for pynvml (not SGLang's): a GPU that answers 3 samples, then is lost to NVML."""
    NVML_CLOCK_SM, NVML_CLOCK_MEM = 1, 2

    class NVMLError(Exception):
        pass

    def __init__(self):
        self.calls = 0

    def nvmlInit(self):
        pass

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlGpmQueryDeviceSupport(self, h):
        raise self.NVMLError("GPM not supported")

    def nvmlDeviceGetUtilizationRates(self, h):
        self.calls += 1
        if self.calls > 3:
            raise self.NVMLError("GPU is lost")
        return type("U", (), {"gpu": 50, "memory": 20})()

    def nvmlDeviceGetMemoryInfo(self, h):
        return type("M", (), {"used": 1, "total": 2})()

    def nvmlDeviceGetPowerUsage(self, h):
        return 300_000

    def nvmlDeviceGetClockInfo(self, h, which):
        return 1980


def test_nvml_lost_sampler_stops_says_why_and_the_counters_still_load(tmp_path, monkeypatch, caplog):
    from sglang_tracing.analyzer.loaders.trace_dir import read_counters
    from sglang_tracing.runtime import gpu_sampler

    fake = _LostGpu()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    out = tmp_path / "nvml-scheduler-tp0-pid1.jsonl"
    sampler = gpu_sampler.Sampler(0, 1, str(out))  # 1 ms: the test need not wait
    sampler._thread.join(10)
    assert not sampler._thread.is_alive()  # gave up: no thread left polling a lost GPU
    sampler.stop()
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 4 and "GPU is lost" in lines[-1][sc.NVML_SAMPLING_STOPPED]
    assert fake.calls == 3 + gpu_sampler.MAX_FAILURES
    assert sum("stopped" in r.message for r in caplog.records) == 1
    counters = read_counters(tmp_path)
    assert counters.filter(counters["metric"] == sc.NVML_POWER)["value"].to_list() == [300.0] * 3
