"""Our own profiler control (nsys capture start/stop, torch profiler start, Kineto export) is timed as spans of
its own, and every statistic over scheduler span durations leaves out the spans it ran in.

The runtime side drives the model-runner and scheduler hooks with the recorder stand-in of
span_log, a clock the test moves and stand-ins for torch's profiler entry points (what
they cost is the test's choice, so every expected time is written from it). The analyzer side checks
the committed H200 traces against figures computed with json over the raw span files."""
from __future__ import annotations

import json
import os
import statistics
import types
from pathlib import Path

import polars as pl
import pytest
import torch

import raw_spans
from sglang_tracing import semconv as sc
from sglang_tracing.analyzer.analyses import diff, profiler_control, servers, timeline
from sglang_tracing.analyzer.loaders.trace_dir import load_trace_dir
from sglang_tracing.config import TraceConfig
from sglang_tracing.patches import model_runner, profile_steps
from sglang_tracing.patches.state import SchedulerState
from sglang_tracing.patches._wrappers import Call
from span_log import SpanLog
from test_patch_bookkeeping import Batch, Loop, Mode, Req, _state

EXAMPLES = Path(__file__).resolve().parent.parent / "traces" / "examples"
LAYER = EXAMPLES / "h200-nsys-layer" / "nsys-triton" / "trace"
TRITON = EXAMPLES / "h200-backends" / "server-triton" / "trace"
FLASHINFER = EXAMPLES / "h200-backends" / "server-flashinfer" / "trace"
MS = 1_000_000
# what each stand-in action costs on the test's clock
START_NS, STOP_NS, PROFILER_START_NS, PROFILER_STOP_NS, EXPORT_NS = 800 * MS, 300 * MS, 50 * MS, 20 * MS, 40 * MS


class Clock:
    def __init__(self):
        self.now = 0

    def __call__(self) -> int:
        return self.now


class FakeCudart:
    """torch.cuda.cudart() for a test without a GPU: nsys starting and flushing its capture take time."""

    def __init__(self, clock: Clock):
        self.clock, self.calls = clock, []

    def cudaProfilerStart(self):
        self.calls.append(("start", self.clock.now))
        self.clock.now += START_NS

    def cudaProfilerStop(self):
        self.calls.append(("stop", self.clock.now))
        self.clock.now += STOP_NS


class FakeProfiler:
    """torch.profiler.profile: entering, leaving and exporting take time; the export writes its file."""

    def __init__(self, clock: Clock, **kwargs):
        self.clock = clock

    def __enter__(self):
        self.clock.now += PROFILER_START_NS
        return self

    def __exit__(self, *exc):
        self.clock.now += PROFILER_STOP_NS

    def export_chrome_trace(self, path):
        Path(path).write_text('{"traceEvents": []}')
        self.clock.now += EXPORT_NS


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(profile_steps, "time_ns", c)
    cudart = FakeCudart(c)
    monkeypatch.setattr(torch.cuda, "cudart", lambda: cudart)
    monkeypatch.setattr(torch.profiler, "profile", lambda **kw: FakeProfiler(c, **kw))
    c.cudart = cudart
    return c


def _serve(st, rec, clock: Clock, n: int) -> list[tuple[int, int, int]]:
    """``n`` decode forwards, one a second: the runner's hook is called 1 ms after the launch, the model
    forward takes 2 ms. Returns (span id, start, end) of each scheduler forward."""
    loop, req, out = Loop(st, rec), Req("p", [1, 2, 3]), []
    forward_batch = types.SimpleNamespace(forward_mode=Mode("DECODE"), batch_size=1)
    for i in range(n):
        t0 = (i + 1) * 1_000 * MS

        def model_forward():
            clock.now = t0 + MS
            token = model_runner._before_forward(st, Call(rec), object())
            start = clock.now  # where the hook starts timing the model forward, after our own work
            clock.now += 2 * MS
            model_runner._after_forward(st, Call(rec, token, start, clock.now), object(), forward_batch)

        sid, _ = loop.run(Batch("DECODE", [req]), t0, t0 + 999 * MS, forward=model_forward)
        out.append((sid, t0, t0 + 999 * MS))
    return out


def _controls(rec: SpanLog) -> list[tuple]:
    return [(s.attrs[sc.PROFILER_ACTION], s.start, s.end, s.parent) for s in rec.named(sc.PROFILER_CONTROL)]


def test_each_profiler_action_is_a_span_inside_the_forward_it_ran_in(clock, tmp_path):
    st = SchedulerState(TraceConfig(str(tmp_path), profile_steps=(0, 2), capture_steps=(1, 2)))
    rec = SpanLog()
    (f0, t0, _), (f1, t1, _), (f2, t2, _), (_, t3, _) = _serve(st, rec, clock, 4)
    kineto_at = t1 + MS + START_NS + 2 * MS
    assert _controls(rec) == [
        # forward 0 opens the Kineto window before its model forward
        (sc.TORCH_PROFILER_START, t0 + MS, t0 + MS + PROFILER_START_NS, f0),
        # forward 1 opens the nsys capture; after its model forward the Kineto window closes
        (sc.CAPTURE_START, t1 + MS, t1 + MS + START_NS, f1),
        (sc.KINETO_EXPORT, kineto_at, kineto_at + PROFILER_STOP_NS + EXPORT_NS, f1),
        # forward 2 is the capture's last
        (sc.CAPTURE_STOP, t2 + 3 * MS, t2 + 3 * MS + STOP_NS, f2),
    ]
    assert clock.cudart.calls == [("start", t1 + MS), ("stop", t2 + 3 * MS)]
    assert (tmp_path / f"kineto-pid{os.getpid()}.json").exists()
    # the model forward spans keep their own times: the actions ran outside them
    assert [(s.start, s.end) for s in rec.named(sc.MODEL_FORWARD)] == [
        (t0 + MS + PROFILER_START_NS, t0 + MS + PROFILER_START_NS + 2 * MS), (t1 + MS + START_NS, kineto_at),
        (t2 + MS, t2 + 3 * MS), (t3 + MS, t3 + 3 * MS)]


def test_a_capture_ended_by_an_idle_server_is_a_span_outside_any_forward(clock):
    st, rec = _state(capture_steps=(0, 100)), SpanLog()
    (f0, t0, _), = _serve(st, rec, clock, 1)
    loop = Loop(st, rec)
    loop.schedule(None, 5_000 * MS, 5_001 * MS)  # idle, but not yet for CAPTURE_IDLE_END_S
    assert [c[0] for c in _controls(rec)] == [sc.CAPTURE_START]
    st.windows.last_forward -= 2  # the last forward was more than a second ago
    clock.now = 6_000 * MS
    loop.schedule(None, 6_000 * MS, 6_001 * MS)
    assert _controls(rec) == [(sc.CAPTURE_START, t0 + MS, t0 + MS + START_NS, f0),
                              (sc.CAPTURE_STOP, 6_000 * MS, 6_000 * MS + STOP_NS, 0)]
    loop.schedule(None, 7_000 * MS, 7_001 * MS)
    assert len(_controls(rec)) == 2  # stopped once


def test_nothing_is_recorded_or_called_without_profiling_windows(clock):
    st, rec = _state(), SpanLog()
    _serve(st, rec, clock, 3)
    Loop(st, rec).schedule(None, 10, 11)
    assert rec.named(sc.PROFILER_CONTROL) == [] and clock.cudart.calls == []
    assert {s.name for s in rec.spans} == {sc.FORWARD, sc.MODEL_FORWARD}


# ---- the analyzer: one rule, recorded or inferred ----
def _frame(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema={"server": pl.String, "pid": pl.Int64, "span_id": pl.String, "name": pl.String,
                                      "start_ns": pl.Int64, "end_ns": pl.Int64, sc.PROFILER_ACTION: pl.String})


def test_recorded_actions_leave_out_the_scheduler_spans_they_ran_in():
    """Recorded control spans, two processes: only the span of the same process that the action overlaps
    is left out, with the action's time inside it; a stop between forwards leaves nothing out."""
    span = lambda sid, name, s, e, pid=1, action=None: dict(server="a", pid=pid, span_id=sid, name=name,  # noqa: E731
                                                            start_ns=s, end_ns=e, **{sc.PROFILER_ACTION: action})
    spans = _frame([
        span("f0", sc.FORWARD, 0, 1_000 * MS),
        span("c0", sc.PROFILER_CONTROL, 100 * MS, 900 * MS, action=sc.CAPTURE_START),
        span("p0", sc.PROCESS_RESULT, 1_000 * MS, 1_100 * MS), span("f1", sc.FORWARD, 1_200 * MS, 1_300 * MS),
        span("c1", sc.PROFILER_CONTROL, 1_400 * MS, 1_700 * MS, action=sc.CAPTURE_STOP),  # idle stop: between spans
        span("g0", sc.FORWARD, 0, 1_000 * MS, pid=2),  # another process at the same time
    ])
    config = {"capture_steps": [0, 9]}  # recorded spans win: nothing is inferred beside them
    left = profiler_control.spans_with_control(spans, [{"server": "a", "manifest": {"config": config}}])
    assert left.select("span_id", "action", "control_ns", "inferred").rows() == [("f0", sc.CAPTURE_START, 800 * MS,
                                                                                   None)]
    assert profiler_control.kept(spans, left).collect()["span_id"].to_list() == ["c0", "p0", "f1", "c1", "g0"]
    assert profiler_control.describe(left, sc.FORWARD) == "1 left out: it contained our nsys capture start, 800.0 ms"
    assert profiler_control.describe(left, sc.SCHEDULE) is None


def _forwards(trace_dir: Path) -> list[dict]:
    return sorted(raw_spans.named(raw_spans.spans(trace_dir), sc.FORWARD), key=lambda s: s["start"])


def _nearest(values: list[int], q: float) -> int:
    return sorted(values)[round(q * (len(values) - 1))]


def test_layer_trace_forward_launch_leaves_out_the_capture_start():
    """h200-nsys-layer: capture_steps 0:100000, no control spans (recorded before they existed): the first
    served forward, where cudaProfilerStart ran, is left out (inferred). The 10.45 s forward that remains
    is SGLang's first decode (its nsys export shows the scheduler waiting on an nvcc JIT build then)."""
    config = json.loads((LAYER / "manifest.json").read_text())["config"]
    assert config["capture_steps"][0] == 0 and config["profile_steps"] is None
    fwd = _forwards(LAYER)
    kept = [s["end"] - s["start"] for s in fwd[1:]]
    side = timeline.compute(load_trace_dir(LAYER)).sglang
    d = side.batch_spans[sc.FORWARD]
    assert d.len() == len(fwd) - 1 == 34
    assert d.median() == statistics.median(kept)
    assert d.quantile(0.99) == _nearest(kept, 0.99)
    longest = max(fwd[1:], key=lambda s: s["end"] - s["start"])
    first_decode = next(s for s in fwd if s["attrs"][sc.FORWARD_MODE] == "decode")
    assert longest is first_decode
    assert side.longest[sc.FORWARD] == {"dur_ns": longest["end"] - longest["start"], "mode": "decode", "nth": 1}
    assert side.left_out["span_id"].to_list() == [fwd[0]["span_id"]]
    # schedule and result processing spans had no profiler control in them
    assert side.batch_spans[sc.SCHEDULE].len() == len(raw_spans.named(raw_spans.spans(LAYER), sc.SCHEDULE))
    report = timeline.describe(timeline.compute(load_trace_dir(LAYER)))
    line = next(f for s in report.sections if s.title == "Scheduling overhead per batch" for f in s.figures
                if f.label == "forward launch (CPU)")
    assert line.value.startswith(f"median {statistics.median(kept) / 1e6:.3f} ms, ")
    assert "over 34 batches; longest" in line.value and "(the first decode)" in line.value
    assert line.source.endswith("1 left out: it contained our nsys capture start (inferred from capture_steps "
                                "0:100000 in the manifest)")


@pytest.mark.parametrize("trace_dir", [TRITON, FLASHINFER], ids=["triton", "flashinfer"])
def test_kineto_window_edges_are_left_out_of_the_per_server_medians(trace_dir):
    """h200-backends servers ran --profile-steps 1:3: the torch profiler opened in forward 1 and Kineto
    wrote its trace in forward 3. Those two are left out of the median and of the diff's span table."""
    assert json.loads((trace_dir / "manifest.json").read_text())["config"]["profile_steps"] == [1, 3]
    fwd = _forwards(trace_dir)
    kept = [s["end"] - s["start"] for i, s in enumerate(fwd) if i not in (1, 3)]
    model = load_trace_dir(trace_dir)
    left = profiler_control.spans_with_control(model.scan_spans(), model.servers)
    assert sorted(left.select("span_id", "action").rows()) == sorted(
        [(fwd[1]["span_id"], sc.TORCH_PROFILER_START), (fwd[3]["span_id"], sc.KINETO_EXPORT)])
    row = servers.batch_breakdown(model.scan_spans(), left).row(0, named=True)
    assert (row["forwards"], row["left_out"]) == (len(fwd), 2)
    assert row["forward_launch_p50_ms"] == round(statistics.median(kept) / 1e6, 3)
    table = diff.span_table(model.spans, left)
    decode = [s["end"] - s["start"] for i, s in enumerate(fwd) if i not in (1, 3)
              and s["attrs"][sc.FORWARD_MODE] == "decode"]
    got = table.filter(pl.col("Name") == f"{sc.FORWARD} [decode]").row(0, named=True)
    assert (got["Total Time (ns)"], got["Num Calls"]) == (sum(decode), len(decode))
