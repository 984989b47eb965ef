"""Issue 16: the fast span loader, its parquet parts and lazy scans, the Perfetto column encoder, and
several trace dirs analyzed together, checked against the reference path, raw JSON and the protobuf
library (never against the code under test)."""
from __future__ import annotations

import gzip
import json
import shutil
import sqlite3
import tempfile
from collections import Counter, defaultdict
from contextlib import closing
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from perfetto.protos.perfetto.trace.perfetto_trace_pb2 import DebugAnnotation, Trace, TrackEvent
from polars.testing import assert_frame_equal

from sglang_tracing import semconv as sc
from sglang_tracing.config import ENV_CACHE_DIR
from sglang_tracing.errors import UsageError
from sglang_tracing.analyzer import api
from sglang_tracing.analyzer.analyses.requests import request_table, user_requests
from sglang_tracing.analyzer.loaders import span_chunks, span_store
from sglang_tracing.analyzer.loaders.files import glob_inputs
from sglang_tracing.analyzer.loaders.otlp_json import read_span_file
from sglang_tracing.analyzer.loaders.span_frame import spans_frame
from sglang_tracing.analyzer.loaders.trace_dir import load_trace_dir, load_trace_dirs
from sglang_tracing.analyzer.renderers import proto_columns as pc

from test_reports import check_perfetto

EXAMPLES = Path(__file__).resolve().parent.parent / "traces" / "examples"
TRACE_DIRS = sorted(m.parent for m in EXAMPLES.rglob("manifest.json"))
TRITON = EXAMPLES / "h200-llama2-7b-triton"
TP1, TP2 = EXAMPLES / "h200x2-tp" / "tp1" / "trace", EXAMPLES / "h200x2-tp" / "tp2" / "trace"
NSYS_DIR = EXAMPLES / "h200-nsys" / "nsys-triton" / "trace"
KEY = ["start_ns", "span_id", "name", "trace_id"]


def reference(trace_dir: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Spans and events through the reference path: orjson dicts, one Python row per span."""
    rows, events = [], []
    for f in glob_inputs(trace_dir, "spans-*.jsonl"):
        r, e, _ = read_span_file(f)
        rows += r
        events += e
    schema = {"span_id": pl.String, "name": pl.String, "time_ns": pl.Int64, "trace_id": pl.String,
              "attributes": pl.String}
    return spans_frame(rows), pl.DataFrame(events, schema=schema, orient="row")


def raw_spans(trace_dir: Path) -> list[dict]:
    """Every span of a trace dir, with the json module."""
    out = []
    for f in sorted(trace_dir.glob("spans-*.jsonl*")):
        text = gzip.open(f, "rt").read() if f.suffix == ".gz" else f.read_text()
        for line in text.splitlines():
            for rs in json.loads(line)["resourceSpans"]:
                for ss in rs["scopeSpans"]:
                    out += ss["spans"]
    return out


def assert_same_as_reference(model, trace_dir: Path) -> None:
    ref_spans, ref_events = reference(trace_dir)
    spans = model.spans
    assert spans.columns == ref_spans.columns + ["server"]  # same columns, same order, and the server
    assert_frame_equal(spans.drop("server").sort(KEY), ref_spans.sort(KEY))
    assert_frame_equal(model.events.drop("server"), ref_events)


@pytest.mark.parametrize("trace_dir", TRACE_DIRS, ids=lambda d: "-".join(d.relative_to(EXAMPLES).parts))
def test_fast_loader_gives_the_reference_frames(trace_dir):
    assert len(TRACE_DIRS) == 21  # cpu-pd: 2 loads x (prefill, decode, router, client); h100-features: 3
    model = load_trace_dir(trace_dir, use_cache=False)
    assert_same_as_reference(model, trace_dir)
    raw = raw_spans(trace_dir)
    assert Counter(model.spans["name"].to_list()) == Counter(s["name"] for s in raw)


def cache_entries(trace_dir: Path) -> list[Path]:
    folder = span_store.cache_folder(trace_dir)
    return [p for p in folder.iterdir() if p.is_dir()] if folder.exists() else []


def tree(folder: Path) -> dict[str, tuple]:
    """Every path under ``folder`` (hidden ones too) with its size and mtime."""
    return {str(p.relative_to(folder)): (p.is_dir(), p.stat().st_size if p.is_file() else 0, p.stat().st_mtime_ns)
            for p in folder.rglob("*")}


def test_parallel_chunks_and_the_cache(tmp_path, monkeypatch):
    """Plain files cut into many chunks of whole lines, decoded by worker processes, then the parquet
    parts read back from the user cache; a changed span file invalidates it."""
    d = tmp_path / "t"
    shutil.copytree(TRITON, d)
    for f in d.glob("spans-*.jsonl.gz"):
        (d / f.name[:-3]).write_bytes(gzip.decompress(f.read_bytes()))
        f.unlink()
    monkeypatch.setattr(span_chunks, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(span_chunks, "CHUNK_BYTES", 300_000)
    assert len(span_chunks.plan(sorted(d.glob("spans-*.jsonl")))) > 10
    fresh = load_trace_dir(d, workers=2)
    assert_same_as_reference(fresh, TRITON)
    cached = load_trace_dir(d)
    assert_frame_equal(cached.spans, fresh.spans)
    assert len(cache_entries(d)) == 1
    victim = next(d.glob("spans-tokenizer-*.jsonl"))
    lines = victim.read_bytes().splitlines(keepends=True)
    victim.write_bytes(b"".join(lines[:-1]))  # one export batch fewer
    dropped = sum(len(ss["spans"]) for rs in json.loads(lines[-1])["resourceSpans"] for ss in rs["scopeSpans"])
    assert load_trace_dir(d).spans.height == fresh.spans.height - dropped
    assert len(cache_entries(d)) == 1  # the stale parts are gone


def test_the_cache_lives_outside_the_trace_dir_and_an_added_span_file_invalidates_it(tmp_path, monkeypatch):
    d = tmp_path / "t"
    shutil.copytree(TRITON, d)
    before = tree(d)
    fresh = load_trace_dir(d)
    folder = span_store.cache_folder(d)
    assert folder.is_relative_to(span_store.cache_root()) and not folder.is_relative_to(d)
    assert len(cache_entries(d)) == 1
    with monkeypatch.context() as m:  # the second load reads the parts back; it decodes nothing
        m.setattr(span_store, "_build", lambda *a: pytest.fail("decoded again instead of read from the cache"))
        cached = load_trace_dir(d)
    assert_frame_equal(cached.spans, fresh.spans)
    assert_frame_equal(cached.events, fresh.events)
    assert tree(d) == before  # nothing written into the trace dir
    # one more span file (say a process whose exporter wrote late): the cache no longer matches
    first = gzip.decompress(next(d.glob("spans-tokenizer-*.jsonl.gz")).read_bytes()).splitlines()[0]
    (d / "spans-tokenizer-pid99999.jsonl").write_bytes(first + b"\n")
    added = sum(len(ss["spans"]) for rs in json.loads(first)["resourceSpans"] for ss in rs["scopeSpans"])
    assert added and load_trace_dir(d).spans.height == fresh.spans.height + added
    assert len(cache_entries(d)) == 1  # the stale parts are gone
    shutil.rmtree(d)  # the trace dir is gone: the next build anywhere removes its cache
    other = tmp_path / "u"
    shutil.copytree(TRITON, other)
    load_trace_dir(other)
    assert not folder.exists() and len(cache_entries(other)) == 1


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_CACHE_DIR, str(tmp_path / "mine"))
    assert span_store.cache_root() == tmp_path / "mine"
    monkeypatch.delenv(ENV_CACHE_DIR)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert span_store.cache_root() == tmp_path / "xdg" / "sglang-tracing"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")  # the XDG spec: only absolute paths count
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert span_store.cache_root() == tmp_path / "home" / ".cache" / "sglang-tracing"


def test_a_read_only_trace_dir_is_analyzed_and_left_untouched(tmp_path):
    """(Tests may run as root, whom chmod does not stop: the tree itself is compared.)"""
    d = tmp_path / "t"
    shutil.copytree(EXAMPLES / "h200-ncu-triton", d)
    for p in [d, *d.rglob("*")]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    before = tree(d)
    try:
        written = api.analyze(str(d), out_dir=str(tmp_path / "r"), formats="text")
        again = api.analyze(str(d), out_dir=str(tmp_path / "r2"), formats="text")  # from the cache
        assert tree(d) == before
    finally:
        for p in [d, *d.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
    assert {Path(p).name for p in written} == {Path(p).name for p in again} >= {"story.txt", "timeline.txt"}
    for a, b in zip(sorted(written), sorted(again)):
        if a.endswith(".txt"):
            assert Path(a).read_text() == Path(b).read_text()


def test_profilers_loaded_are_the_models_sources_and_the_manifest_stays_as_recorded():
    kineto = sorted((TP2.parent / "profile").glob("*.trace.json.gz"))[0]
    model = api.load(str(NSYS_DIR), nsys=str(NSYS_DIR / "nsys.sqlite.gz"), kineto=str(kineto))
    assert model.manifest == json.loads((NSYS_DIR / "manifest.json").read_text())
    assert [(s.kind, s.path) for s in model.sources] == [("nsys", str(NSYS_DIR / "nsys.sqlite.gz")),
                                                         ("kineto", str(kineto))]
    nsys, kin = model.sources
    with tempfile.TemporaryDirectory() as tmp:  # counted with plain SQL and json, not by the loaders
        db = Path(tmp) / "nsys.sqlite"
        db.write_bytes(gzip.decompress((NSYS_DIR / "nsys.sqlite.gz").read_bytes()))
        with closing(sqlite3.connect(db)) as con:
            kernels = con.execute("SELECT count(*) FROM CUPTI_ACTIVITY_KIND_KERNEL").fetchone()[0]
    assert nsys.counts["kernels"] == kernels and nsys.alignment.startswith("median offset")
    events = json.loads(gzip.decompress(kineto.read_bytes()))["traceEvents"]
    assert kin.counts["kernels"] == sum(e.get("cat") == "kernel" for e in events)
    assert kin.alignment == "baseTimeNanoseconds"


def test_a_loader_never_changes_the_model_it_is_given():
    """Loaders return frames and a source; ``with_loaded`` gives a new model and leaves the one it was given."""
    from sglang_tracing.analyzer.loaders import nsys

    base = load_trace_dir(NSYS_DIR)
    loaded = nsys.load(str(NSYS_DIR / "nsys.sqlite.gz"), base.spans)
    both = base.with_loaded(loaded)
    assert base.kernels.is_empty() and base.nvtx.is_empty() and base.sources == []
    assert both.sources == [loaded.source] and both.kernels.height == loaded.source.counts["kernels"] > 0
    assert both.nvtx.height == loaded.source.counts["nvtx"] and both.manifest is base.manifest


def test_cut_last_line_in_a_chunked_file(tmp_path, monkeypatch):
    d = tmp_path / "t"
    shutil.copytree(TRITON, d)
    f = next(d.glob("spans-scheduler-*.jsonl.gz"))
    data = gzip.decompress(f.read_bytes())
    f.unlink()
    (d / f.name[:-3]).write_bytes(data[: len(data) - 500])
    monkeypatch.setattr(span_chunks, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(span_chunks, "CHUNK_BYTES", 1_000_000)
    model = load_trace_dir(d, workers=2)
    assert model.cut_files == [str(d / f.name[:-3])]
    assert_same_as_reference(model, d)  # the reference path drops the same half line
    assert load_trace_dir(d).cut_files == model.cut_files  # and says so again from the cache


def test_values_the_fast_decoder_declines_go_to_the_reference_path(tmp_path):
    """A kvlist value and an array mixing kinds: the file is read by the reference path, whole."""
    d = tmp_path / "t"
    shutil.copytree(TP1, d)
    f = next(d.glob("spans-tokenizer-*.jsonl.gz"))
    lines = gzip.decompress(f.read_bytes()).decode().splitlines()
    doc = json.loads(lines[0])
    span = doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    span["attributes"] += [
        {"key": "x.kv", "value": {"kvlistValue": {"values": [{"key": "a", "value": {"intValue": "1"}}]}}},
        {"key": "x.mixed", "value": {"arrayValue": {"values": [{"intValue": "1"}, {"stringValue": "b"}]}}}]
    f.write_bytes(gzip.compress("\n".join([json.dumps(doc), *lines[1:]]).encode() + b"\n"))
    model = load_trace_dir(d, use_cache=False)
    assert_same_as_reference(model, d)
    assert model.spans.filter(pl.col("span_id") == span["spanId"])["x.kv"].to_list() == [{"a": 1}]


def test_lazy_scan_gives_the_in_memory_answers():
    model = load_trace_dir(TRITON)
    lazy = request_table(model.scan_spans())
    assert model._spans is None  # the request table came from the parquet parts, not a spans frame
    assert_frame_equal(lazy.sort("rid"), request_table(model.spans).sort("rid"))
    roots = {s["spanId"]: s for s in raw_spans(TRITON) if s["name"] == sc.REQUEST}
    assert lazy.height == len(roots)


def test_column_encoder_matches_the_protobuf_library():
    values = np.array([0, 1, 127, 128, 300, 2**31, 2**62 + 5, -1, -(2**40)], dtype=np.int64)
    names = pl.Series(["a", None, "ünïcode", "a", "", "long" * 40, None, "b", "a"])
    int_tag, name_tag = pc.tag(DebugAnnotation.DESCRIPTOR, "int_value"), pc.tag(DebugAnnotation.DESCRIPTOR, "name")
    rows = pc.concat(pc.scalar(int_tag, pc.varints(values)), pc.message(name_tag, pc.strings(names)).where(
        names.is_not_null().to_numpy()))
    data, lens = rows.wire()
    at = 0
    for v, name, n in zip(values.tolist(), names.to_list(), lens.tolist()):
        ours = DebugAnnotation()
        ours.ParseFromString(data[at:at + n].tobytes())
        theirs = DebugAnnotation(int_value=v, **({"name": name} if name is not None else {}))
        assert ours == theirs and data[at:at + n].tobytes() == theirs.SerializeToString()
        at += n


def test_perfetto_slices_carry_the_span_times_and_args(tmp_path):
    out = tmp_path / "t.pftrace"
    counts = api.to_perfetto(str(TRITON), str(out))
    check_perfetto(str(out))
    trace = Trace()
    trace.ParseFromString(out.read_bytes())
    begins, ends = defaultdict(Counter), Counter()
    for p in trace.packet:
        ev = p.track_event
        if ev.type == TrackEvent.TYPE_SLICE_BEGIN:
            args = {a.name: getattr(a, a.WhichOneof("value")) for a in ev.debug_annotations}
            begins[ev.name][(p.timestamp, args.get("batch.size"))] += 1
        elif ev.type == TrackEvent.TYPE_SLICE_END:
            ends[p.timestamp] += 1
    raw = raw_spans(TRITON)
    expected = defaultdict(Counter)
    for s in raw:
        size = next((int(a["value"]["intValue"]) for a in s.get("attributes", []) if a["key"] == sc.BATCH_SIZE), None)
        expected[s["name"]][(int(s["startTimeUnixNano"]), size)] += 1
    assert begins == expected
    assert ends == Counter(max(int(s["endTimeUnixNano"]), int(s["startTimeUnixNano"])) for s in raw)
    assert counts["slices"] == len(raw)


def test_several_trace_dirs_merge_with_a_per_server_breakdown(tmp_path):
    model = load_trace_dirs([TP1, TP2])
    assert [s["server"] for s in model.servers] == ["tp1", "tp2"]
    per_server = dict(model.spans.group_by("server").len().iter_rows())
    assert per_server == {"tp1": len(raw_spans(TP1)), "tp2": len(raw_spans(TP2))}
    assert model.counters["server"].unique().sort().to_list() == ["tp1", "tp2"]
    written = api.analyze([str(TP1), str(TP2)], out_dir=str(tmp_path / "r"), formats="text",
                          model_config="llama-2-7b")
    assert {Path(p).name for p in written} >= {"story.txt", "radix.txt", "timeline.txt"}
    story_report, radix_report = api.build_reports(model, ["story", "radix"], model_config="llama-2-7b")
    merged = {f.label: f.value for f in story_report.sections[0].figures}
    assert story_report.sections[0].title == "Trace dirs merged" and set(merged.values()) >= {str(TP1), str(TP2)}
    per_server = next(s for s in story_report.sections if s.title == "Per server").table
    table = request_table(model.scan_spans())
    for server, d in (("tp1", TP1), ("tp2", TP2)):
        roots = [s for s in raw_spans(d) if s["name"] == sc.REQUEST]
        assert table.filter(pl.col("server") == server).height == len(roots)
        alone = load_trace_dir(d)  # the same dir analyzed by itself: its user requests (warm-up left out)
        users = user_requests(request_table(alone.spans, alone.manifest)).height
        assert 0 < users <= len(roots)
        assert per_server.filter(pl.col("server") == server)["requests"].to_list() == [users]
    lookups = next(s for s in radix_report.sections if s.title == "Per server").table
    assert lookups["server"].to_list() == ["tp1", "tp2"]
    counts = api.to_perfetto([str(TP1), str(TP2)], str(tmp_path / "m.pftrace"))
    parsed = check_perfetto(str(tmp_path / "m.pftrace"))
    assert parsed["slices"] == counts["slices"] == len(raw_spans(TP1)) + len(raw_spans(TP2)) + sum(
        1 for d in (TP1, TP2) for s in raw_spans(d) if s["name"] == sc.FORWARD
        and any(a["key"] == sc.GPU_START_NS for a in s.get("attributes", [])))
    (single,) = api.build_reports(load_trace_dir(TP1), ["story"], model_config="llama-2-7b")
    assert not {"Per server", "Trace dirs merged"} & {s.title for s in single.sections}


def test_merging_needs_an_out_dir_and_distinct_dirs(tmp_path):
    from test_reports import cli

    done = cli("analyze", str(TP1), str(TP1), "--out", str(tmp_path / "o"))
    assert done.returncode == 2 and "Traceback" not in done.stderr and "given twice" in done.stderr
    with pytest.raises(UsageError, match="--out is needed"):
        api.analyze([str(TP1), str(TP2)])
    with pytest.raises(UsageError, match="twice"):
        load_trace_dirs([TP1, TP1])


def test_evictions_count_later_misses_per_window():
    """Each eviction counts the requests that arrived strictly between it and the next one and were
    not full hits (ties included), counted here by a plain loop."""
    import random

    from sglang_tracing.analyzer.analyses.radix import evictions

    rng = random.Random(1)
    for _ in range(200):
        starts = sorted(rng.choice([10, 20, 20, 30, 40]) for _ in range(rng.randint(1, 5)))
        arrivals = [(rng.choice([5, 10, 15, 20, 25, 30, 40, 45]), rng.choice(["full", "miss", "partial"]))
                    for _ in range(rng.randint(0, 10))]
        n = len(starts)
        ops = pl.DataFrame({"name": [sc.CACHE_EVICT] * n, "start_ns": starts, "dur_ns": [5] * n})
        lookups = pl.DataFrame(arrivals, schema={"received_ns": pl.Int64, "lookup": pl.String}, orient="row")
        expected = [sum(1 for t, kind in arrivals if kind != "full" and s < t and (i + 1 == n or t < starts[i + 1]))
                    for i, s in enumerate(starts)]
        assert evictions(ops, lookups)["later_requests_missing"].to_list() == expected
