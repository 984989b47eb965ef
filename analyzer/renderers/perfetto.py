"""Native Perfetto trace (protobuf through the perfetto package's protos), streamed packet by packet.

Tracks: one process track per SGLang process with a thread track for its spans, one track
per request under a "Requests" group (requests overlap), GPU kernel tracks per device/stream,
NVML/GPM counter tracks per GPU. Flows link a request's prefill to the forward that ran it,
and each forward to the processing of its result. Spans that overlap without nesting go to
extra lanes of their track, so every begin has its end on the same track.
"""
from __future__ import annotations

import functools
import hashlib
from collections import defaultdict
from typing import IO

import polars as pl
from perfetto.protos.perfetto.trace.perfetto_trace_pb2 import TracePacket, TrackEvent
from perfetto.trace_builder.proto_builder import StreamingTraceProtoBuilder

from sglang_tracing import semconv as sc
from sglang_tracing.analyzer.model import TraceModel
from sglang_tracing.runtime.ids import request_trace_key

SEQ = 0x5617
_REQUEST_NAMES = {sc.REQUEST, sc.REQUEST_TOKENIZE, sc.REQUEST_QUEUED, sc.REQUEST_PREFIX_MATCH,
                  sc.REQUEST_PREFILL, sc.REQUEST_PREFILL_CHUNK, sc.REQUEST_DECODE, sc.REQUEST_DETOKENIZE}


@functools.lru_cache(maxsize=1 << 20)
def uuid_of(key: str) -> int:
    """A stable 63-bit track uuid."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") >> 1 or 1


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


class _Writer:
    def __init__(self, out: IO[bytes]):
        self.builder = StreamingTraceProtoBuilder(out)
        self.first = True
        self.flows: dict[str, list] = defaultdict(list)

    def packet(self) -> TracePacket:
        p = self.builder.create_packet()
        p.trusted_packet_sequence_id = SEQ
        if self.first:
            p.sequence_flags = TracePacket.SEQ_INCREMENTAL_STATE_CLEARED
            self.first = False
        return p

    def track(self, uuid: int, name: str, parent: int = 0, pid: int | None = None, tid: int | None = None,
              counter_unit: str | None = None) -> int:
        p = self.packet()
        d = p.track_descriptor
        d.uuid = uuid
        if parent:
            d.parent_uuid = parent
        if pid is not None and tid is None:
            d.process.pid = pid
            d.process.process_name = name
        elif tid is not None:
            d.thread.pid = pid
            d.thread.tid = tid
            d.thread.thread_name = name
        else:
            d.name = name
        if counter_unit is not None:
            d.counter.unit_name = counter_unit
        self.builder.write_packet(p)
        return uuid

    def slices(self, track: int, spans: list[tuple[int, int, dict]]) -> int:
        """Write spans on ``track`` (and lane sub-tracks if they overlap); returns lanes used."""
        lanes = assign_lanes(spans)
        for i, lane in enumerate(lanes):
            uuid = track if i == 0 else self.track(uuid_of(f"{track}:lane{i}"), f"lane {i}", parent=track)
            stack: list[int] = []
            for start, end, info in lane:
                while stack and stack[-1] <= start:
                    self._end(uuid, stack.pop())
                self._begin(uuid, start, info)
                stack.append(end)
            while stack:
                self._end(uuid, stack.pop())
        return len(lanes)

    def _begin(self, track: int, ts: int, info: dict) -> None:
        p = self.packet()
        p.timestamp = ts
        ev = p.track_event
        ev.type = TrackEvent.TYPE_SLICE_BEGIN
        ev.track_uuid = track
        ev.name = info["name"]
        for flow in info.get("flows", ()):
            ev.flow_ids.append(flow)
        for key, value in info.get("args", {}).items():
            ann = ev.debug_annotations.add()
            ann.name = key
            if isinstance(value, bool):
                ann.bool_value = value
            elif isinstance(value, int):
                ann.int_value = value
            elif isinstance(value, float):
                ann.double_value = value
            else:
                ann.string_value = str(value)
        self.builder.write_packet(p)

    def _end(self, track: int, ts: int) -> None:
        p = self.packet()
        p.timestamp = ts
        p.track_event.type = TrackEvent.TYPE_SLICE_END
        p.track_event.track_uuid = track
        self.builder.write_packet(p)

    def counter(self, track: int, ts: int, value: float) -> None:
        p = self.packet()
        p.timestamp = ts
        p.track_event.type = TrackEvent.TYPE_COUNTER
        p.track_event.track_uuid = track
        p.track_event.double_counter_value = value
        self.builder.write_packet(p)


_ARG_COLUMNS = (sc.FORWARD_MODE, sc.BATCH_SIZE, sc.BATCH_TOKENS, sc.GPU_DURATION_NS, sc.SCHED_NEW_SEQS,
                sc.SCHED_QUEUED, sc.SCHED_RUNNING, sc.CACHE_MATCHED_TOKENS, sc.CACHE_NEW_TOKENS,
                sc.CACHE_FREED_TOKENS, sc.PROMPT_TOKENS, sc.CACHED_TOKENS, sc.OUTPUT_TOKENS, sc.RID)


def _flow_id(key: str) -> int:
    return uuid_of("flow:" + key)


def _linked_forwards(spans: pl.DataFrame) -> set[str]:
    """Forward span ids that both a forward slice and some other slice refer to."""
    if sc.FORWARD_SPAN_ID not in spans.columns:
        return set()
    referenced = set(spans[sc.FORWARD_SPAN_ID].drop_nulls().to_list())
    forwards = set(spans.filter(pl.col("name") == sc.FORWARD)["span_id"].to_list())
    return referenced & forwards


def render(model: TraceModel, out: IO[bytes]) -> dict:
    """Write ``model`` as a Perfetto trace; returns counts of what was written."""
    w = _Writer(out)
    spans = model.spans
    args = [c for c in _ARG_COLUMNS if c in spans.columns]
    linked = _linked_forwards(spans)
    fwd_col = sc.FORWARD_SPAN_ID if sc.FORWARD_SPAN_ID in spans.columns else None
    per_track: dict[int, list] = defaultdict(list)
    tracks_written: dict[int, bool] = {}
    requests_group = uuid_of("requests")
    w.track(requests_group, "Requests")
    short = [a.split(".", 1)[-1] for a in args]
    def col(c):
        return pl.col(c) if c and c in spans.columns else pl.lit(None, pl.String)

    cols = [col(c).alias(f"c{i}") for i, c in enumerate(
        ["name", "start_ns", "end_ns", "span_id", "role", "pid", "tp_rank", sc.RID, fwd_col, *args])]
    for name, start, end, span_id, role, pid, tp_rank, rid, fwd, *values in spans.select(cols).iter_rows():
        flows = []
        if name == sc.FORWARD:
            if span_id in linked:
                flows.append(_flow_id(span_id))
        elif fwd_col and fwd in linked and name != sc.REQUEST_PREFILL_CHUNK:
            flows.append(_flow_id(fwd))
        info = {"name": name, "flows": flows, "args": {k: v for k, v in zip(short, values) if v is not None}}
        if name in _REQUEST_NAMES and rid:
            uuid = uuid_of(request_trace_key(rid))
            if uuid not in tracks_written:
                tracks_written[uuid] = bool(w.track(uuid, f"request {rid[:12]}", parent=requests_group))
        else:
            pid = pid or 0
            uuid = uuid_of(f"thread:{pid}")
            if uuid not in tracks_written:
                label = (role or "process") + (f" tp{tp_rank}" if tp_rank is not None else "")
                proc = uuid_of(f"proc:{pid}")
                w.track(proc, f"sglang {label}", pid=pid)
                tracks_written[uuid] = bool(w.track(uuid, f"{label} spans", parent=proc, pid=pid, tid=pid))
        per_track[uuid].append((start, max(end, start), info))
    if sc.GPU_START_NS in spans.columns:
        gpu = spans.filter(pl.col("name") == sc.FORWARD).drop_nulls(sc.GPU_START_NS)
        for pid, start, end, mode, span_id in gpu.select("pid", sc.GPU_START_NS, sc.GPU_END_NS, sc.FORWARD_MODE,
                                                         "span_id").iter_rows():
            uuid = uuid_of(f"gpu-forward:{pid}")
            if uuid not in tracks_written:
                tracks_written[uuid] = bool(w.track(uuid, "GPU forwards (CUDA events)", parent=uuid_of(f"proc:{pid}")))
            per_track[uuid].append((start, max(end, start), {"name": f"forward {mode} (GPU)", "flows": [],
                                                             "args": {"span_id": span_id}}))
    n_slices = 0
    for uuid, items in per_track.items():
        w.slices(uuid, items)
        n_slices += len(items)
    n_kernels = _write_kernels(w, model.kernels)
    n_nvtx = _write_nvtx(w, model.nvtx)
    n_counters = _write_counters(w, model.counters) + _write_cache_occupancy(w, spans)
    return {"slices": n_slices, "kernels": n_kernels, "nvtx": n_nvtx, "counter_samples": n_counters,
            "flows": len(linked), "tracks": len(tracks_written)}


def _write_nvtx(w: _Writer, nvtx: pl.DataFrame) -> int:
    """Profiler NVTX ranges that are not our spans again (layer/op ranges, libraries' own), per thread."""
    ranges = nvtx.filter(pl.col("span_id").is_null())
    if ranges.is_empty():
        return 0
    root = w.track(uuid_of("nvtx"), "NVTX ranges (profiler)")
    for (tid,), frame in ranges.partition_by(["tid"], as_dict=True).items():
        track = w.track(uuid_of(f"nvtx:{tid}"), f"thread {tid}", parent=root)
        w.slices(track, [(s, max(e, s), {"name": t or ""}) for s, e, t in
                         frame.sort("start_ns").select("start_ns", "end_ns", "text").iter_rows()])
    return ranges.height


def _write_kernels(w: _Writer, kernels: pl.DataFrame) -> int:
    if kernels.is_empty():
        return 0
    gpu_root = w.track(uuid_of("gpu"), "GPU")
    groups = kernels.partition_by(["device", "stream"], as_dict=True)
    for (device, stream), frame in groups.items():
        track = w.track(uuid_of(f"gpu:{device}:{stream}"), f"GPU {device} stream {stream}", parent=gpu_root)
        w.slices(track, [(s, max(e, s), {"name": n}) for s, e, n in
                         frame.select("start_ns", "end_ns", "name").iter_rows()])
    return kernels.height


def _write_cache_occupancy(w: _Writer, spans: pl.DataFrame) -> int:
    """KV tokens used and evictable after each prefix-cache operation, per scheduler process."""
    if sc.CACHE_USED not in spans.columns:
        return 0
    ops = spans.filter(pl.col(sc.CACHE_USED).is_not_null()).sort("end_ns")
    n = 0
    for (pid,), frame in ops.partition_by(["pid"], as_dict=True).items():
        for metric in (sc.CACHE_USED, sc.CACHE_EVICTABLE):
            track = w.track(uuid_of(f"cache:{pid}:{metric}"), f"KV cache {metric.rsplit('.', 1)[-1]}",
                            parent=uuid_of(f"proc:{pid}"), counter_unit="tokens")
            for t, v in frame.select("end_ns", metric).drop_nulls().iter_rows():
                w.counter(track, t, float(v))
                n += 1
    return n


def _write_counters(w: _Writer, counters: pl.DataFrame) -> int:
    if counters.is_empty():
        return 0
    for (gpu, metric), frame in counters.partition_by(["gpu", "metric"], as_dict=True).items():
        unit = metric.rsplit("_", 1)[-1]
        track = w.track(uuid_of(f"counter:{gpu}:{metric}"), f"GPU {gpu} {metric}", counter_unit=unit)
        for t, v in frame.sort("t_ns").select("t_ns", "value").iter_rows():
            w.counter(track, t, v)
    return counters.height
