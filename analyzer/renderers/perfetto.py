"""Native Perfetto trace (protobuf), with track events encoded a column at a time.

Tracks: one process track per SGLang process with a thread track for its spans, one track
per request under a "Requests" group (requests overlap), GPU kernel tracks per device/stream,
NVML/GPM counter tracks per GPU. Flows link a request's prefill to the forward that ran it,
and each forward to the processing of its result. Spans that overlap without nesting go to
extra lanes of their track, so every begin has its end on the same track. With several trace
dirs, each server's processes are its own tracks, named with the server.

Track descriptors (thousands) are perfetto protos written one by one; slice and counter events
(millions) are encoded by ``proto_columns`` from frames, in batches.
"""
from __future__ import annotations

from typing import IO

import numpy as np
import polars as pl
from perfetto.protos.perfetto.trace.perfetto_trace_pb2 import TrackEvent

from sglang_tracing import semconv as sc
from sglang_tracing.analyzer.analyses import pd_router
from sglang_tracing.analyzer.model import TraceModel
from sglang_tracing.analyzer.renderers import perfetto_features
from sglang_tracing.analyzer.renderers import proto_columns as pc
from sglang_tracing.analyzer.renderers.perfetto_counters import write_cache_occupancy, write_counters
from sglang_tracing.analyzer.renderers.perfetto_writer import (ARG_NAME, ARG_VALUE, DEBUG, FLOW_IDS, NAME,
                                                               TRACK_UUID, TYPE, Writer, uuid_of)
from sglang_tracing.runtime.ids import REQUEST_TRACE_KEY_PREFIX

_REQUEST_NAMES = {sc.REQUEST, sc.REQUEST_TOKENIZE, sc.REQUEST_QUEUED, sc.REQUEST_PREFIX_MATCH,
                  sc.REQUEST_PREFILL, sc.REQUEST_PREFILL_CHUNK, sc.REQUEST_DECODE, sc.REQUEST_DETOKENIZE,
                  sc.REQUEST_HTTP, *sc.PD_SPANS}
_ARG_COLUMNS = (sc.FORWARD_MODE, sc.BATCH_SIZE, sc.BATCH_TOKENS, sc.GPU_DURATION_NS, sc.SCHED_NEW_SEQS,
                sc.SCHED_QUEUED, sc.SCHED_RUNNING, sc.CACHE_MATCHED_TOKENS, sc.CACHE_NEW_TOKENS,
                sc.CACHE_FREED_TOKENS, sc.PROMPT_TOKENS, sc.CACHED_TOKENS, sc.OUTPUT_TOKENS, sc.RID)


def assign_lanes(spans: list[tuple[int, int, object]]) -> list[list[tuple[int, int, object]]]:
    """Split (start, end, payload) spans into lanes where every span nests or follows properly."""
    lanes: list[list] = []
    stacks: list[list[int]] = []
    for span in sorted(spans, key=lambda s: (s[0], -s[1])):
        start, end, _ = span
        for lane, stack in zip(lanes, stacks):
            while stack and stack[-1] <= start:
                stack.pop()
            if not stack or stack[-1] >= end:
                lane.append(span)
                stack.append(end)
                break
        else:
            lanes.append([span])
            stacks.append([end])
    return lanes


def _linked_forwards(spans: pl.DataFrame) -> pl.Series:
    """Forward span ids that both a forward slice and some other slice refer to."""
    if sc.FORWARD_SPAN_ID not in spans.columns:
        return pl.Series("span_id", [], pl.String)
    referenced = spans.select(pl.col(sc.FORWARD_SPAN_ID).drop_nulls().unique().alias("span_id"))
    forwards = spans.filter(pl.col("name") == sc.FORWARD).select(pl.col("span_id").unique())
    return referenced.join(forwards, on="span_id")["span_id"]


def _pd_flows(spans: pl.DataFrame) -> list[str]:
    """Flow keys of PD requests whose prefill send and decode first batch are both here."""
    if sc.PD_ROOM not in spans.columns:
        return []
    ends = spans.filter(pl.col("name").is_in(sc.PD_FLOW)).group_by(sc.PD_ROOM).agg(pl.col("name").n_unique())
    return [f"pd:{room}" for room in ends.filter(pl.col("name") == len(sc.PD_FLOW))[sc.PD_ROOM].to_list()]


def _router_pick_slices(spans: pl.DataFrame, events: pl.DataFrame, uuids: dict[str, int]) -> pl.DataFrame:
    """sglang-router's pick of each request: a slice inside its request span, from its arrival to the
    pick event, named for the pair it picked (the URLs also as args)."""
    chosen = pd_router.picks(events).requests
    if chosen.is_empty():
        return pl.DataFrame()
    rows = chosen.join(spans.select("span_id", "start_ns", "_proc"), on="span_id")
    return rows.select(
        ("thread:" + pl.col("_proc")).replace_strict(uuids, default=None, return_dtype=pl.UInt64).alias("track"),
        "start_ns", pl.max_horizontal("start_ns", "pick_ns").alias("end_ns"),
        pl.format("router pick: prefill {} / decode {}", "prefill_url", "decode_url").alias("name"),
        "prefill_url", "decode_url").drop_nulls("track")


def _span_frame(model: TraceModel) -> pl.DataFrame:
    """The span columns the trace shows, read from the lazy scan (not every attribute)."""
    scan = model.scan_spans()
    have = scan.collect_schema()
    wanted = ["name", "start_ns", "end_ns", "span_id", "role", "pid", "tp_rank", "server", sc.RID,
              sc.FORWARD_SPAN_ID, sc.GPU_START_NS, sc.GPU_END_NS, sc.CACHE_USED, sc.CACHE_EVICTABLE, sc.PD_ROOM,
              *_ARG_COLUMNS, *perfetto_features.COLUMNS]
    return scan.select(list(dict.fromkeys(c for c in wanted if c in have))).collect().sort("start_ns", maintain_order=True)


def render(model: TraceModel, out: IO[bytes]) -> dict:
    """Write ``model`` as a Perfetto trace; returns counts of what was written."""
    w = Writer(out)
    spans = _span_frame(model)
    col = lambda c: pl.col(c) if c in spans.columns else pl.lit(None, pl.String)  # noqa: E731
    several = spans["server"].n_unique() > 1 if "server" in spans.columns and spans.height else False
    requests_group = w.track(uuid_of("requests"), "Requests")
    linked = _linked_forwards(spans)
    flow_ids = {s: uuid_of("flow:" + s) for s in linked.to_list()}
    flow_ids.update({k: uuid_of(k) for k in _pd_flows(spans)})
    is_request = col("name").is_in(list(_REQUEST_NAMES)) & col(sc.RID).is_not_null() & (col(sc.RID) != "")
    process_key = (pl.col("server").cast(pl.String) + ":" if several else pl.lit("")) + pl.col("pid").fill_null(0).cast(
        pl.String)
    spans = spans.with_columns(is_request.fill_null(False).alias("_req"), process_key.alias("_proc"))
    uuids: dict[str, int] = {}
    tracks_written = 0
    # request tracks, in order of first appearance; with several servers one per server (a router gives
    # a request's prefill and decode halves one rid)
    request_key = REQUEST_TRACE_KEY_PREFIX + col(sc.RID) + (" (" + pl.col("server").cast(pl.String) + ")" if several
                                                              else pl.lit(""))
    spans = spans.with_columns(pl.when("_req").then(request_key).alias("_req_key"))
    for key in spans.filter("_req")["_req_key"].unique(maintain_order=True).to_list():
        uuids[key] = w.track(uuid_of(key), "request " + key.removeprefix(REQUEST_TRACE_KEY_PREFIX), parent=requests_group)
        tracks_written += 1
    threads = spans.filter(~pl.col("_req")).group_by("_proc", maintain_order=True).agg(
        pl.col("pid").first(), pl.col("role").first(), col("tp_rank").first().alias("tp_rank"),
        col("server").first().alias("server"))
    for key, pid, role, tp_rank, server in threads.iter_rows():
        pid = pid or 0
        label = (role or "process") + (f" tp{tp_rank}" if tp_rank is not None else "")
        proc = w.track(uuid_of(f"proc:{key}"), f"sglang {label}" + (f" ({server})" if several else ""), pid=pid)
        uuids["thread:" + key] = w.track(uuid_of(f"thread:{key}"), f"{label} spans", parent=proc, pid=pid, tid=pid)
        tracks_written += 1
    track_key = pl.when("_req").then(pl.col("_req_key")).otherwise("thread:" + pl.col("_proc"))
    track_key = perfetto_features.route(w, spans, uuids, uuid_of, track_key)
    fwd_col = col(sc.FORWARD_SPAN_ID)
    flow_of = (pl.when(pl.col("name") == sc.FORWARD).then(pl.col("span_id"))
               .when(pl.col("name").is_in(sc.PD_FLOW)).then("pd:" + col(sc.PD_ROOM).cast(pl.String))
               .when(pl.col("name") != sc.REQUEST_PREFILL_CHUNK).then(fwd_col))
    args = [c for c in _ARG_COLUMNS if c in spans.columns]
    slices = spans.select(
        track_key.replace_strict(uuids, return_dtype=pl.UInt64).alias("track"), "start_ns",
        pl.max_horizontal("start_ns", "end_ns").alias("end_ns"), "name",
        flow_of.replace_strict(flow_ids, default=None, return_dtype=pl.UInt64).alias("flow"),
        *[pl.col(c).alias(c.split(".", 1)[-1]) for c in args])
    n_slices = slices.height
    if sc.GPU_START_NS in spans.columns:
        gpu = spans.filter(pl.col("name") == sc.FORWARD).drop_nulls(sc.GPU_START_NS)
        if gpu.height:
            for key, pid in gpu.select("_proc", "pid").unique("_proc", maintain_order=True).iter_rows():
                uuids["gpu:" + key] = w.track(uuid_of(f"gpu-forward:{key if several else pid}"),
                                              "GPU forwards (CUDA events)", parent=uuid_of(f"proc:{key}"))
                tracks_written += 1
            gpu_slices = gpu.select(
                ("gpu:" + pl.col("_proc")).replace_strict(uuids, return_dtype=pl.UInt64).alias("track"),
                pl.col(sc.GPU_START_NS).alias("start_ns"),
                pl.max_horizontal(sc.GPU_START_NS, sc.GPU_END_NS).alias("end_ns"),
                ("forward " + col(sc.FORWARD_MODE).fill_null("None") + " (GPU)").alias("name"),
                pl.col("span_id"))
            slices = pl.concat([slices, gpu_slices], how="diagonal")
            n_slices += gpu_slices.height
    picks = _router_pick_slices(spans, model.events, uuids)
    if picks.height:
        slices = pl.concat([slices, picks], how="diagonal_relaxed")
        n_slices += picks.height
    feature_gpu = perfetto_features.gpu_slices(w, spans, uuids, uuid_of)
    if feature_gpu.height:
        slices = pl.concat([slices, feature_gpu], how="diagonal")
        n_slices += feature_gpu.height
    _write_slices(w, slices)
    n_kernels = _write_kernels(w, model.kernels)
    n_nvtx = _write_nvtx(w, model.nvtx)
    n_counters = write_counters(w, model.counters) + write_cache_occupancy(w, spans, several)
    return {"slices": n_slices, "kernels": n_kernels, "nvtx": n_nvtx, "counter_samples": n_counters,
            "flows": len(flow_ids), "tracks": tracks_written}


def _event_order(track: np.ndarray, start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Begin and end events of spans (arrays by span) in the order they are written, per track.

    Per track, spans sorted by (start, longest first, input order) nest when each ends before the
    first later span that starts at or after its end, ends falling due together closing innermost
    first. That order is computed for every track at once. Returns (span index, is begin) per
    event, and per span whether its track really nests (each end closes its own begin and time
    runs forward), so only the tracks that do not need lanes."""
    n = len(track)
    order = np.lexsort((np.arange(n), -end, start, track))
    t, s, e = track[order], start[order], end[order]
    first = np.r_[True, t[1:] != t[:-1]]
    group_start = np.maximum.accumulate(np.where(first, np.arange(n), 0))
    sizes = np.diff(np.r_[np.flatnonzero(first), n])
    i = np.arange(n) - group_start
    rank = np.cumsum(first) - 1
    times, inverse = np.unique(np.concatenate([s, e]), return_inverse=True)
    inverse = inverse.reshape(-1) + np.r_[rank, rank] * (len(times) + 1)  # (track, time) as one sortable integer
    pos = np.searchsorted(inverse[:n], inverse[n:], side="left")  # first span of the track starting at or after e
    size = np.repeat(sizes, sizes)
    due = np.maximum(i + 1, np.where(pos < group_start + size, pos - group_start, size))
    ev_span = np.concatenate([np.arange(n), np.arange(n)])
    ev_begin = np.r_[np.ones(n, bool), np.zeros(n, bool)]
    ev_order = np.lexsort((np.r_[np.zeros(n, np.int64), -i], np.r_[np.ones(n, np.int64), np.zeros(n, np.int64)],
                           np.r_[i, due], np.r_[rank, rank]))
    ev_span, ev_begin = ev_span[ev_order], ev_begin[ev_order]
    depth = np.cumsum(np.where(ev_begin, 1, -1))
    ev_first = np.r_[True, rank[ev_span][1:] != rank[ev_span][:-1]]
    base = np.maximum.accumulate(np.where(ev_first, np.arange(2 * n), 0))
    depth = depth - depth[base] + np.where(ev_begin[base], 1, -1)  # depth within the track
    after_begin, before_end = np.empty(n, np.int64), np.empty(n, np.int64)
    after_begin[ev_span[ev_begin]] = depth[ev_begin]
    before_end[ev_span[~ev_begin]] = depth[~ev_begin] + 1
    ts = np.where(ev_begin, s[ev_span], e[ev_span])
    back_in_time = np.r_[False, (ts[1:] < ts[:-1]) & ~ev_first[1:]]
    bad_rank = np.zeros(rank[-1] + 1 if n else 0, bool)
    bad_rank[rank[after_begin != before_end]] = True
    bad_rank[rank[ev_span[back_in_time]]] = True
    nests = np.empty(n, bool)
    nests[order] = ~bad_rank[rank]
    return order[ev_span], ev_begin, nests


def _write_slices(w: Writer, slices: pl.DataFrame) -> None:
    if slices.is_empty():
        return
    track = slices["track"].to_numpy().astype(np.int64)
    start, end = slices["start_ns"].to_numpy(), slices["end_ns"].to_numpy()
    span, begin, nests = _event_order(track, start, end)
    if not nests.all():
        # spans that overlap without nesting: greedy lanes per track, lane i > 0 its own child track
        redo = np.flatnonzero(~nests)
        by_track: dict[int, list] = {}
        for row, t, s0, e0 in zip(redo.tolist(), track[redo].tolist(), start[redo].tolist(), end[redo].tolist()):
            by_track.setdefault(t, []).append((s0, e0, row))
        lane = track.copy()
        names = slices["name"]
        for t, spans in by_track.items():
            for i, members in enumerate(assign_lanes(spans)):
                if i:
                    rows = [r for _, _, r in members]
                    uuid = w.track(uuid_of(f"{t}:lane{i}"), _lane_name(names.gather(rows), i), parent=t)
                    lane[rows] = uuid
        keep = nests[span]
        sub_span, sub_begin, _ = _event_order(lane[redo], start[redo], end[redo])
        span, begin = np.r_[span[keep], redo[sub_span]], np.r_[begin[keep], sub_begin]
        track = lane
    events = pl.DataFrame({"track": track[span].astype(np.uint64), "ts": np.where(begin, start[span], end[span]),
                           "begin": begin, "row": span})
    payload = slices.drop("track", "start_ns", "end_ns").with_row_index("row").with_columns(pl.col("row").cast(pl.Int64))
    events = events.join(payload, on="row", how="left", maintain_order="left").with_columns(
        pl.when("begin").then(pl.col("name")).alias("_kind"))
    w.events(events, ["_kind"], _slice_events)


def _lane_name(names: pl.Series, i: int) -> str:
    """A track for spans that overlap their track's others, named for what it holds (a request's
    ``detokenize`` overlaps its ``decode``): the spans' last name parts, or ``overlap i`` for a mix."""
    short = sorted({n.rsplit(".", 1)[-1] for n in names.drop_nulls().to_list()})
    return ", ".join(short) if 0 < len(short) <= 3 else f"overlap {i}"


def _slice_events(rows: pl.DataFrame) -> pc.Rows:
    """Encoded TrackEvents of rows of one kind: begins of one name (with flow and args), or ends."""
    n = rows.height
    begin = bool(rows["begin"][0])
    parts = [pc.const(TYPE + pc.varint_bytes(TrackEvent.TYPE_SLICE_BEGIN if begin else TrackEvent.TYPE_SLICE_END), n),
             pc.scalar(TRACK_UUID, pc.varints(rows["track"].to_numpy()))]
    if not begin:
        return pc.concat(*parts)
    parts.append(pc.message(NAME, pc.strings(rows["name"])))
    if "flow" in rows.columns and rows["flow"].null_count() < n:
        flow = rows["flow"]
        parts.append(pc.scalar(FLOW_IDS, pc.fixed64(flow.fill_null(0).to_numpy(), "<u8"))
                     .where(flow.is_not_null().to_numpy()))
    for column in rows.columns:
        if column in ("track", "row", "ts", "begin", "ok", "name", "flow", "_kind", "_pos"):
            continue
        values = rows[column]
        present = values.is_not_null().to_numpy()
        if not present.any():
            continue
        if values.dtype == pl.Boolean:
            encoded = pc.scalar(ARG_VALUE["bool"], pc.varints(values.fill_null(False).cast(pl.Int64).to_numpy()))
        elif values.dtype.is_integer():
            encoded = pc.scalar(ARG_VALUE["int"], pc.varints(values.fill_null(0).cast(pl.Int64).to_numpy()))
        elif values.dtype.is_float():
            encoded = pc.scalar(ARG_VALUE["double"], pc.fixed64(values.fill_null(0).to_numpy(), "<f8"))
        else:
            encoded = pc.message(ARG_VALUE["string"], pc.strings(values.cast(pl.String)))
        name = column.encode()
        annotation = pc.concat(pc.const(ARG_NAME + pc.varint_bytes(len(name)) + name, n), encoded)
        parts.append(pc.message(DEBUG, annotation).where(present))
    return pc.concat(*parts)


def _write_nvtx(w: Writer, nvtx: pl.DataFrame) -> int:
    """Profiler NVTX ranges that are not our spans again (layer/op ranges, libraries' own), per thread."""
    ranges = nvtx.filter(pl.col("span_id").is_null())
    if ranges.is_empty():
        return 0
    root = w.track(uuid_of("nvtx"), "NVTX ranges (profiler)")
    tracks = {tid: w.track(uuid_of(f"nvtx:{tid}"), f"thread {tid}", parent=root)
              for tid in ranges["tid"].unique(maintain_order=True).to_list()}
    _write_slices(w, ranges.sort("start_ns", maintain_order=True).select(
        pl.col("tid").replace_strict(tracks, return_dtype=pl.UInt64).alias("track"), "start_ns",
        pl.max_horizontal("start_ns", "end_ns").alias("end_ns"), pl.col("text").fill_null("").alias("name")))
    return ranges.height


def _write_kernels(w: Writer, kernels: pl.DataFrame) -> int:
    if kernels.is_empty():
        return 0
    gpu_root = w.track(uuid_of("gpu"), "GPU")
    keys = kernels.select("device", "stream").unique(maintain_order=True)
    tracks = {(d, s): w.track(uuid_of(f"gpu:{d}:{s}"), f"GPU {d} stream {s}", parent=gpu_root)
              for d, s in keys.iter_rows()}
    track_of = keys.with_columns(pl.Series("track", list(tracks.values()), pl.UInt64))
    _write_slices(w, kernels.join(track_of, on=["device", "stream"], how="left", maintain_order="left").select(
        "track", "start_ns", pl.max_horizontal("start_ns", "end_ns").alias("end_ns"), "name"))
    return kernels.height


