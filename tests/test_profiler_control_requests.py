"""Requests in flight while our profiler control ran are named in the request table and kept out of the
request statistics (story selection and summary, per-server percentiles, radix sequence), but stay in the
exported table.

Expected values come from the committed H200 traces read with gzip + json alone (tests/raw_spans.py): the
forwards at which the manifest's capture_steps / profile_steps act, the request root spans whose
lifetime (start -> end) overlaps them, and the latencies of the rest."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import polars as pl
import pytest

import raw_spans
from sglang_tracing import semconv as sc
from sglang_tracing.analyzer import api
from sglang_tracing.analyzer.analyses import profiler_control, radix, servers, story, story_report
from sglang_tracing.analyzer.analyses.requests import for_statistics, request_table
from sglang_tracing.analyzer.loaders.trace_dir import load_trace_dir, load_trace_dirs

EXAMPLES = Path(__file__).resolve().parent.parent / "traces" / "examples"
LAYER = EXAMPLES / "h200-nsys-layer" / "nsys-triton" / "trace"
NSYS = EXAMPLES / "h200-nsys" / "nsys-triton" / "trace"
TRITON = EXAMPLES / "h200-backends" / "server-triton" / "trace"
FLASHINFER = EXAMPLES / "h200-backends" / "server-flashinfer" / "trace"
MS = 1_000_000


class Raw:
    """One committed trace dir as plain Python: its request roots and the forwards its manifest names."""

    def __init__(self, trace_dir: Path):
        spans = raw_spans.spans(trace_dir)
        config = json.loads((trace_dir / "manifest.json").read_text())["config"]
        forwards = sorted(raw_spans.named(spans, sc.FORWARD), key=lambda s: s["start"])  # one scheduler process
        self.roots = {s["attrs"][sc.RID]: s for s in raw_spans.named(spans, sc.REQUEST)}
        phases = [{s["attrs"][sc.RID] for s in raw_spans.named(spans, name)} for name in (sc.REQUEST_PREFILL,
                                                                                          sc.REQUEST_DECODE)]
        self.complete = set(self.roots) & phases[0] & phases[1]  # root, prefill and decode recorded
        # every one of these traces predates recorded control spans
        assert not raw_spans.named(spans, sc.PROFILER_CONTROL)
        self.actions = []  # (action, forward)
        if config.get("capture_steps"):
            start, n = config["capture_steps"]
            assert start + n > len(forwards)  # the capture never stopped inside a forward
            self.actions.append((sc.CAPTURE_START, forwards[start]))
        if config.get("profile_steps"):
            start, n = config["profile_steps"]
            self.actions += [(sc.TORCH_PROFILER_START, forwards[start]), (sc.KINETO_EXPORT, forwards[start + n - 1])]

    def touched(self) -> dict[str, str]:
        """rid -> the actions (in time order, "; "-joined) whose forward overlapped the request's root span."""
        out = {}
        for rid, root in self.roots.items():
            hit = [a for a, f in self.actions if root["start"] < f["end"] and root["end"] > f["start"]]
            if hit:
                out[rid] = "; ".join(hit)
        return out

    def warmups(self) -> set[str]:
        """SGLang's startup warm-up: its 6-word prompt is the only one under 16 tokens in these traces."""
        return {rid for rid, r in self.roots.items() if r["attrs"][sc.PROMPT_TOKENS] < 16}

    def e2e(self, rid: str) -> int:
        return self.roots[rid]["end"] - self.roots[rid]["start"]

    def kept(self) -> list[str]:
        """The user's requests no action touched: the ones every statistic is over."""
        return [rid for rid in self.roots if rid not in self.warmups() and rid not in self.touched()]


def _nearest(values: list[int], q: float) -> int:
    return sorted(values)[round(q * (len(values) - 1))]


def test_requests_during_overlap_their_lifetime_on_their_own_server():
    """Hand-made windows: a request counts when received before a window's end and finished after its
    start (one that never finished is still in flight); touching a window's edge is not overlapping."""
    windows = pl.DataFrame({"server": ["a", "a", "b"], "pid": [1, 1, 2],
                            "action": [sc.TORCH_PROFILER_START, sc.KINETO_EXPORT, sc.CAPTURE_START],
                            "start_ns": [100, 500, 100], "end_ns": [200, 600, 900],
                            "inferred": [None, None, "capture_steps 0:10 in the manifest"]})
    requests = pl.DataFrame({
        "rid": ["both", "first", "edge", "between", "open", "other"], "server": ["a"] * 5 + ["b"],
        "received_ns": [50, 150, 200, 250, 550, 890], "finished_ns": [700, 300, 400, 450, None, 1000]})
    got = profiler_control.requests_during(requests, windows).sort("rid")
    assert got.rows() == [
        ("both", f"{sc.TORCH_PROFILER_START}; {sc.KINETO_EXPORT}", None),
        ("first", sc.TORCH_PROFILER_START, None),
        ("open", sc.KINETO_EXPORT, None),
        ("other", sc.CAPTURE_START, "capture_steps 0:10 in the manifest")]


def test_recorded_control_spans_are_the_windows():
    """A recorded action's window is its own span, not the forward around it: a request that finished
    inside the forward but before the action began is not touched."""
    rows = [dict(server="a", pid=1, span_id="f0", name=sc.FORWARD, start_ns=0, end_ns=1_000 * MS, action=None),
            dict(server="a", pid=1, span_id="c0", name=sc.PROFILER_CONTROL, start_ns=600 * MS, end_ns=900 * MS,
                 action=sc.KINETO_EXPORT)]
    spans = pl.DataFrame(rows).rename({"action": sc.PROFILER_ACTION})
    manifest = {"config": {"profile_steps": [0, 1]}}  # recorded spans win: nothing is inferred beside them
    windows = profiler_control.action_windows(spans, [{"server": "a", "manifest": manifest}])
    assert windows.select("action", "start_ns", "end_ns", "inferred").rows() == [(sc.KINETO_EXPORT, 600 * MS, 900 * MS,
                                                                                  None)]
    requests = pl.DataFrame({"rid": ["early", "late"], "server": ["a", "a"], "received_ns": [0, 500 * MS],
                             "finished_ns": [550 * MS, 950 * MS]})
    assert profiler_control.requests_during(requests, windows)["rid"].to_list() == ["late"]


@pytest.mark.parametrize("trace_dir", [LAYER, NSYS, TRITON, FLASHINFER], ids=["layer", "nsys", "triton", "flashinfer"])
def test_the_request_table_names_the_requests_in_flight_at_the_inferred_actions(trace_dir):
    raw = Raw(trace_dir)
    model = load_trace_dir(trace_dir)
    table = request_table(model.scan_spans(), model.manifest, model.servers)
    named = {r: a for r, a in table.select("rid", "profiler_control").iter_rows() if a is not None}
    assert named == raw.touched()
    source = table.filter(pl.col("profiler_control").is_not_null())["profiler_control_inferred"].unique().to_list()
    config = json.loads((trace_dir / "manifest.json").read_text())["config"]
    key = "capture_steps" if config.get("capture_steps") else "profile_steps"
    assert source == [f"{key} {config[key][0]}:{config[key][1]} in the manifest"]


def test_committed_traces_touch_these_requests():
    """What the rule finds in the committed traces (the figures the report quotes): the first served
    forward held the capture start in the nsys runs, forwards 1 and 3 the Kineto window in the backends runs."""
    layer, nsys, triton, flashinfer = Raw(LAYER), Raw(NSYS), Raw(TRITON), Raw(FLASHINFER)
    # nsys-layer: the first 512-token request and SGLang's warm-up, both in flight during the 2.47 s first forward
    first = min(layer.roots, key=lambda r: layer.roots[r]["start"])
    assert layer.touched().keys() == layer.warmups() | {first} and len(layer.kept()) == 1
    assert len(nsys.touched()) == 1 and not nsys.touched().keys() & nsys.warmups()
    assert round(nsys.e2e(next(iter(nsys.touched()))) / MS, 3) == 538.936  # the trace's slowest before
    assert len(triton.touched()) == 1 and not triton.touched().keys() & triton.warmups()
    assert len(flashinfer.touched()) == 2 and len(flashinfer.touched().keys() & flashinfer.warmups()) == 1
    # the backends cells' client medians are over their measured rids (result.json): none was touched
    measured = {r["rid"] for f in (EXAMPLES / "h200-backends").glob("*/result.json")
                for r in json.loads(f.read_text())["requests"]}
    assert len(measured) == 2 * 123 and not measured & (triton.touched().keys() | flashinfer.touched().keys())


@pytest.mark.parametrize("trace_dir", [LAYER, NSYS, TRITON, FLASHINFER], ids=["layer", "nsys", "triton", "flashinfer"])
def test_story_selects_and_counts_only_untouched_user_requests(trace_dir):
    raw = Raw(trace_dir)
    kept = [r for r in raw.kept() if r in raw.complete]  # the story picks among complete requests
    by_e2e = sorted(kept, key=raw.e2e)
    model = load_trace_dir(trace_dir)
    requests = request_table(model.scan_spans(), model.manifest, model.servers)
    for which, rid in (("slowest", by_e2e[-1]), ("p50", by_e2e[(len(by_e2e) - 1) // 2]),
                       ("first", min(kept, key=lambda r: raw.roots[r]["start"]))):
        assert story.select_request(requests, which)["rid"] == rid, which
    computed = story.compute(model, "slowest")
    assert computed.request["rid"] == by_e2e[-1]
    users_touched = set(raw.touched()) - raw.warmups()
    complete = computed.requests.filter(pl.col("complete"))
    assert sorted(for_statistics(complete)["rid"]) == sorted(kept)
    assert computed.run.requests == len(kept)
    apart = computed.touched
    assert sorted(apart["rid"]) == sorted(users_touched)
    for rid, e2e_ns in apart.select("rid", "e2e_ns").iter_rows():
        assert e2e_ns == raw.e2e(rid)


def test_story_of_a_touched_request_asked_for_by_rid_says_so():
    raw = Raw(NSYS)
    rid = next(iter(raw.touched()))
    report = story_report.build_report(load_trace_dir(NSYS), rid[:12])
    head = {f.label: f for f in next(s for s in report.sections if s.title.startswith("Request ")).figures}
    line = head["our profiler control in flight"]
    assert line.value == sc.CAPTURE_START
    assert "left out of every statistic" in line.source and "capture_steps 0:100000" in line.source


def test_per_server_percentiles_leave_out_touched_requests():
    """h200-backends, both servers merged: the e2e / TTFT percentiles are over the untouched user requests,
    the counts over all of them, and a left_out column says how many were left out."""
    model = load_trace_dirs([FLASHINFER, TRITON])  # labelled server-flashinfer, server-triton
    reports = [story_report.build_report(model, "slowest")]
    servers.add_to(reports, servers.compute(model, {"story"}))
    section = next(s for s in reports[0].sections if s.title == "Per server")
    rows = {r["server"]: r for r in section.table.iter_rows(named=True)}
    assert len(rows) == 2
    for trace_dir in (FLASHINFER, TRITON):
        raw = Raw(trace_dir)
        row = rows[trace_dir.parent.name]
        users = set(raw.roots) - raw.warmups()
        e2e = [raw.e2e(r) for r in raw.kept()]
        assert (row["requests"], row["left_out"]) == (len(users), len(users & set(raw.touched())))
        assert row["e2e_p50_ms"] == round(_nearest(e2e, 0.5) / MS, 3)
        assert row["e2e_p90_ms"] == round(_nearest(e2e, 0.9) / MS, 3)
    notes = [f for f in section.figures if f.label.startswith("server ")]
    assert len(notes) == 2 and all("in flight while our profiler control ran" in f.value for f in notes)


def test_radix_sequence_leaves_out_touched_requests_and_says_so():
    raw = Raw(TRITON)
    report = radix.build_report(load_trace_dir(TRITON))
    seq = next(s for s in report.sections if s.title == "Request sequence")
    touched = set(raw.touched())
    assert sorted(seq.table["rid"]) == sorted(raw.kept())
    assert {f.label: f.value for f in seq.figures}["left out: our profiler control"] == str(len(touched))
    listed = {c.title: c.table for c in seq.children}["left out: our profiler control"]
    assert sorted(listed["rid"]) == sorted(touched)


def test_exported_table_keeps_touched_requests_with_the_column(tmp_path):
    raw = Raw(NSYS)
    paths = api.requests(str(NSYS), out_dir=str(tmp_path))
    with open(next(p for p in paths if p.endswith(".csv")), newline="") as f:
        rows = {r["rid"]: r for r in csv.DictReader(f)}
    assert sorted(rows) == sorted(raw.roots)
    assert {rid: r["profiler_control"] for rid, r in rows.items() if r["profiler_control"]} == raw.touched()
    for rid in raw.touched():
        assert float(rows[rid]["e2e_ms"]) == pytest.approx(raw.e2e(rid) / MS, abs=1e-6)
