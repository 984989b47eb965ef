"""Issue 14: analyses put plot data (frames) in the Report; only the renderers draw it (that no module below
the renderers imports matplotlib or a renderer is checked with every other import in test_layering)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import raw_spans
from sglang_tracing import semconv as sc
from sglang_tracing.analyzer.analyses import radix, story_report
from sglang_tracing.analyzer.loaders.trace_dir import load_trace_dir

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "traces" / "examples"
TRITON = EXAMPLES / "h200-llama2-7b-triton"
DRAWING = ("matplotlib", "sglang_tracing.analyzer.renderers")


def test_building_every_report_draws_nothing():
    """In a fresh interpreter: every report built, none rendered, and neither matplotlib nor a renderer loaded."""
    code = f"""
import sys
from sglang_tracing.analyzer import api, experiment_reports
model = api.load({str(TRITON)!r})
reports = api.build_reports(model, list(api.REPORTS))
reports += [experiment_reports.build(n, {str(EXAMPLES)!r} + f) for n, f in
            (("tp_scaling", "/h200x2-tp"), ("backends", "/h200-backends"))]
assert {{p.file for r in reports for p in r.plots}} == {{"story_itl.png", "radix_cache.png", "tp_scaling.png"}}
print(sorted(m for m in sys.modules if m.startswith({DRAWING!r})))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_story_itl_plot_is_the_recorded_token_gaps():
    """The ITL plot's points, against the decode span's token times read with json alone."""
    decode = [s for s in raw_spans.named(raw_spans.spans(TRITON), sc.REQUEST_DECODE)
              if len(s["attrs"].get(sc.TOKEN_TIMES, [])) > 100][0]
    rid, times = decode["attrs"][sc.RID], decode["attrs"][sc.TOKEN_TIMES]
    report = story_report.build_report(load_trace_dir(str(TRITON)), rid[:16])
    (plot,) = report.plots
    assert (plot.file, plot.kind, plot.labels["title"]) == ("story_itl.png", "itl",
                                                             f"Inter-token latency, request {rid[:12]}")
    points = plot.frames["points"]
    assert points["token_index"].to_list() == list(range(1, len(times)))
    assert points["itl_ms"].to_list() == pytest.approx([(b - a) / 1e6 for a, b in zip(times, times[1:])], abs=1e-9)


def test_radix_cache_plot_is_the_recorded_occupancy():
    """KV tokens in use after every cache operation, seconds from the first one, against the raw spans."""
    ops = [s for s in raw_spans.spans(TRITON) if s["name"] in (sc.CACHE_MATCH, sc.CACHE_INSERT, sc.CACHE_EVICT)]
    t0 = min(s["start"] for s in ops)
    expected = sorted(((s["start"] - t0) / 1e9, s["attrs"][sc.CACHE_USED]) for s in ops)
    (plot,) = radix.build_report(load_trace_dir(str(TRITON))).plots
    occupancy = plot.frames["occupancy"]
    assert occupancy["t_s"].to_list() == sorted(occupancy["t_s"].to_list())  # drawn as a step line in time order
    got = sorted(zip(occupancy["t_s"].to_list(), occupancy["used_tokens"].to_list()))
    assert [u for _, u in got] == [u for _, u in expected]
    assert [t for t, _ in got] == pytest.approx([t for t, _ in expected], abs=1e-9)
