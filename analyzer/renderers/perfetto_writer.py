"""Writing a Perfetto trace: stable track uuids, track descriptors one by one, and track events encoded
a column at a time by ``proto_columns``, in batches."""
from __future__ import annotations

import functools
import hashlib
from typing import IO

import numpy as np
import polars as pl
from perfetto.protos.perfetto.trace.perfetto_trace_pb2 import DebugAnnotation, Trace, TracePacket, TrackEvent
from perfetto.trace_builder.proto_builder import StreamingTraceProtoBuilder

from sglang_tracing.analyzer.renderers import proto_columns as pc

SEQ = 0x5617
BATCH = 250_000  # events encoded at once: bounds the encoder's memory
_TP, _TE, _DA = TracePacket.DESCRIPTOR, TrackEvent.DESCRIPTOR, DebugAnnotation.DESCRIPTOR
PACKET = pc.tag(Trace.DESCRIPTOR, "packet")
TIMESTAMP, SEQ_ID, TRACK_EVENT = pc.tag(_TP, "timestamp"), pc.tag(_TP, "trusted_packet_sequence_id"), pc.tag(
    _TP, "track_event")
TYPE, TRACK_UUID, NAME = pc.tag(_TE, "type"), pc.tag(_TE, "track_uuid"), pc.tag(_TE, "name")
FLOW_IDS, DEBUG, DOUBLE_COUNTER = pc.tag(_TE, "flow_ids"), pc.tag(_TE, "debug_annotations"), pc.tag(
    _TE, "double_counter_value")
ARG_NAME = pc.tag(_DA, "name")
ARG_VALUE = {"bool": pc.tag(_DA, "bool_value"), "int": pc.tag(_DA, "int_value"),
              "double": pc.tag(_DA, "double_value"), "string": pc.tag(_DA, "string_value")}



@functools.lru_cache(maxsize=1 << 20)
def uuid_of(key: str) -> int:
    """A stable 63-bit track uuid."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") >> 1 or 1


class Writer:
    def __init__(self, out: IO[bytes]):
        self.out = out
        self.builder = StreamingTraceProtoBuilder(out)
        self.first = True

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

    def events(self, frame: pl.DataFrame, group: list[str], encode) -> None:
        """Track-event packets, one per row of ``frame`` (with ``ts``), in its order; rows sharing the
        ``group`` columns are encoded together by ``encode(rows) -> Rows`` of TrackEvents."""
        for start in range(0, frame.height, BATCH):
            batch = frame.slice(start, BATCH).with_row_index("_pos")
            groups = []
            for _, rows in batch.group_by(group):
                n = rows.height
                packet = pc.concat(pc.scalar(TIMESTAMP, pc.varints(rows["ts"].to_numpy())),
                                   pc.const(SEQ_ID + pc.varint_bytes(SEQ), n), pc.message(TRACK_EVENT, encode(rows)))
                data, lens = pc.message(PACKET, packet).wire()
                groups.append((rows["_pos"].to_numpy().astype(np.int64), data, lens))
            self.out.write(pc.interleave(groups, batch.height).tobytes())
