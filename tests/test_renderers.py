"""Issue 22's renderers: one protocol, one "not measured" wording, one row-limit policy that says when it
cuts and where the whole table is (csv, one file per table); issue 21's HTML: numbers right-aligned with
separators, reports linked, plots captioned with what they show, blank columns explained."""
from __future__ import annotations

import csv
import re
from pathlib import Path

import polars as pl
import pytest

from sglang_tracing import semconv as sc
from sglang_tracing.analyzer import api
from sglang_tracing.analyzer.renderers import base, plots
from sglang_tracing.analyzer.renderers.files import FORMATS, write_report
from sglang_tracing.analyzer.report import Plot, Report

import raw_spans

EXAMPLES = Path(__file__).resolve().parent.parent / "traces" / "examples"
ROWS = base.ROW_LIMIT + 7


def _report() -> Report:
    r = Report("demo", "Demo")
    sec = r.section("Big table")
    sec.add("measured", "1 ms", "here")
    sec.add("missing", None, "not collected")
    sec.table = pl.DataFrame({"n": list(range(1_000_000, 1_000_000 + ROWS)), "empty": [None] * ROWS,
                              "name": [f"k{i}" for i in range(ROWS)]}, schema_overrides={"empty": pl.Float64})
    r.section("Small").table = pl.DataFrame({"x": [1, 2]})
    return r


def test_every_format_is_a_renderer_with_its_extension():
    for fmt, renderer in FORMATS.items():
        assert isinstance(renderer.extension, str) and renderer.extension
        names = renderer.files(_report(), {})
        assert names and all(n.endswith("." + renderer.extension) for n in names), fmt


def test_documents_cut_at_one_limit_and_csv_holds_every_row(tmp_path):
    report = _report()
    written = write_report(tmp_path, report, ("text", "md", "html", "csv"))
    (big_csv, small_csv) = [name for _, name in base.tables(report)]
    assert sorted(Path(p).name for p in written if p.endswith(".csv")) == sorted([big_csv, small_csv])
    with open(tmp_path / big_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["n"]) for r in rows] == list(range(1_000_000, 1_000_000 + ROWS))
    text = (tmp_path / "demo.txt").read_text()
    assert sum(1 for line in text.splitlines() if re.search(r"\| k\d+ \|$", line)) == base.ROW_LIMIT
    md = (tmp_path / "demo.md").read_text()
    assert sum(1 for line in md.splitlines() if re.search(r"\| k\d+ \|$", line)) == base.ROW_LIMIT
    html = (tmp_path / "demo.html").read_text()
    assert len(re.findall(r"<td>k\d+</td>", html)) == base.ROW_LIMIT
    for doc in (text, md, html):  # each says it cut, and names the file that holds all of it
        assert big_csv in doc and small_csv not in doc
    head, note = base.shown(report.sections[0].table, big_csv)
    assert head.height == base.ROW_LIMIT and note is not None
    assert base.shown(report.sections[1].table, small_csv) == (report.sections[1].table, None)


def test_one_not_measured_wording_and_blank_columns_said():
    report = _report()
    docs = {fmt: "".join(FORMATS[fmt].files(report, {}).values()) for fmt in ("text", "md", "html")}
    for fmt, doc in docs.items():
        assert doc.count(base.NOT_MEASURED) == 2, fmt  # the missing figure, the blank column's note
    assert base.blank_columns(report.sections[0].table) == ["empty"]


def test_html_numbers_right_aligned_with_separators_and_reports_linked():
    html = FORMATS["html"].files(_report(), {}, others=("story", "radix"))["demo.html"]
    assert "<td class='n'>1,000,000</td>" in html
    assert "href='story.html'" in html and "href='radix.html'" in html


def test_plot_caption_says_what_it_shows_and_kinds_check_their_columns():
    points = pl.DataFrame({"token_index": [1, 2], "itl_ms": [5.0, 6.0]})
    plot = Plot("story_itl.png", "itl", {"points": points}, {"title": "ITL", "x": "token", "y": "ms"})
    assert plots.caption(plot) == "ITL: ms by token"
    r = Report("story", "Story", plots=[plot])
    html = FORMATS["html"].files(r, {"story_itl.png": b"\x89PNG"})["story.html"]
    assert re.findall(r"<figcaption>(.*?)</figcaption>", html) == ["ITL: ms by token"]
    with pytest.raises(plots.PlotDataError):
        plots.check(Plot("x.png", "itl", {"points": points.drop("itl_ms")}))
    with pytest.raises(plots.PlotDataError):
        plots.check(Plot("x.png", "cache", {"occupancy": pl.DataFrame({"t_s": [0.0], "used_tokens": [1]})}))
    plots.check(plot)


def test_analyze_csv_writes_the_whole_request_table(tmp_path):
    trace = EXAMPLES / "h200-ttft-agreement"
    spans = raw_spans.spans(trace)
    decoded = {s["attrs"][sc.RID] for s in raw_spans.named(spans, sc.REQUEST_DECODE)}
    users = [s for s in raw_spans.named(spans, sc.REQUEST)
             if s["attrs"].get(sc.INTERNAL) is None and s["attrs"][sc.RID] in decoded]  # complete: decoded too
    written = api.analyze(str(trace), reports="story", out_dir=str(tmp_path), formats="csv")
    table = next(p for p in written if p.endswith("requests.csv"))  # the story's request list, whole
    with open(table, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["internal"] == "false" and r["complete"] == "true"]
    assert len(rows) == len(users) > base.ROW_LIMIT
