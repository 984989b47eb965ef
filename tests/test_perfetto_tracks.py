"""Issue 21: in the Perfetto file a request's HTTP span sits under its request, overlapping phases go
to tracks named for what they hold, and request track names keep the whole rid."""
from __future__ import annotations

import re
from pathlib import Path

from perfetto.protos.perfetto.trace.perfetto_trace_pb2 import Trace, TrackEvent

import raw_spans
from sglang_tracing import semconv as sc
from sglang_tracing.analyzer import api

TRACE = Path(__file__).resolve().parent.parent / "traces" / "examples" / "h200-ttft-agreement"  # HTTP spans, probes


def test_http_spans_under_their_request_and_tracks_named(tmp_path):
    api.to_perfetto(str(TRACE), str(tmp_path / "t.pftrace"))
    trace = Trace()
    trace.ParseFromString((tmp_path / "t.pftrace").read_bytes())
    names, parents = {}, {}
    for p in trace.packet:
        if p.HasField("track_descriptor"):
            names[p.track_descriptor.uuid] = p.track_descriptor.name
            parents[p.track_descriptor.uuid] = p.track_descriptor.parent_uuid
    spans = raw_spans.spans(TRACE)
    http = raw_spans.named(spans, sc.REQUEST_HTTP)
    rids = {s["attrs"][sc.RID] for s in raw_spans.named(spans, sc.REQUEST)}
    assert http and any(r.startswith(sc.READINESS_RID_PREFIX) for r in rids)
    request_tracks = {n for n in names.values() if n.startswith("request ")}
    assert request_tracks == {f"request {rid}" for rid in rids}  # whole rids, probes' too
    assert not [n for n in names.values() if re.fullmatch(r"lane \d+", n)]
    placed = []
    for p in trace.packet:
        ev = p.track_event
        if p.HasField("track_event") and ev.type == TrackEvent.TYPE_SLICE_BEGIN and ev.name == sc.REQUEST_HTTP:
            rid = next(a.string_value for a in ev.debug_annotations if a.name == "rid")
            track = ev.track_uuid
            if not names[track].startswith("request "):  # an overlap track is a child of its request's
                track = parents[track]
            placed.append(names[track] == f"request {rid}")
    assert len(placed) == len(http) and all(placed)
