"""Protobuf fields encoded a column at a time: one numpy operation per field for all rows.

A Perfetto trace of a million spans has millions of packets; building one protobuf message object
per packet costs microseconds each. Here every row's bytes are built together: ``Rows`` holds the
encoded bytes of many rows back to back with each row's length, and fields are concatenated row
by row. Field numbers and wire types come from the message descriptors of the perfetto package's
protos, never typed in; the tests parse the output back with those protos.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import polars as pl
from google.protobuf.descriptor import FieldDescriptor

_WIRE = {FieldDescriptor.TYPE_DOUBLE: 1, FieldDescriptor.TYPE_FIXED64: 1, FieldDescriptor.TYPE_STRING: 2,
         FieldDescriptor.TYPE_MESSAGE: 2, FieldDescriptor.TYPE_BYTES: 2}  # the rest: varint (0)


@dataclasses.dataclass
class Rows:
    data: np.ndarray  # uint8: every row's bytes, back to back
    lens: np.ndarray  # int64: each row's byte count

    @staticmethod
    def empty(n: int) -> Rows:
        return Rows(np.zeros(0, np.uint8), np.zeros(n, np.int64))

    def where(self, mask: np.ndarray) -> Rows:
        """Rows where ``mask`` is set; the others become empty (an absent optional field)."""
        return Rows(self.data[np.repeat(mask, self.lens)], np.where(mask, self.lens, 0))

    def take(self, index: np.ndarray) -> Rows:
        """Rows picked (and repeated) by index, e.g. encoded dictionary entries by code."""
        lens = self.lens[index]
        src = (np.cumsum(self.lens) - self.lens)[index]
        out_start = np.cumsum(lens) - lens
        return Rows(self.data[np.repeat(src - out_start, lens) + np.arange(int(lens.sum()))], lens)


def tag(descriptor, name: str) -> bytes:
    field = descriptor.fields_by_name[name]
    return varint_bytes((field.number << 3) | _WIRE.get(field.type, 0))


def varint_bytes(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def const(data: bytes, n: int) -> Rows:
    return Rows(np.tile(np.frombuffer(data, np.uint8), n), np.full(n, len(data), np.int64))


def varints(values: np.ndarray) -> Rows:
    """Base-128 varints (negative int64 as their 10-byte two's complement, as protobuf writes int64)."""
    v = np.asarray(values).astype(np.int64).view(np.uint64)
    lens = np.ones(len(v), np.int64)
    rest = v >> np.uint64(7)
    while rest.any():
        lens += rest > 0
        rest >>= np.uint64(7)
    shifts = np.arange(10, dtype=np.uint64) * np.uint64(7)
    groups = ((v[:, None] >> shifts) & np.uint64(0x7F)).astype(np.uint8)
    pos = np.arange(10)[None, :]
    groups |= np.where(pos < lens[:, None] - 1, 0x80, 0).astype(np.uint8)
    return Rows(groups[pos < lens[:, None]], lens)


def fixed64(values: np.ndarray, dtype: str) -> Rows:
    return Rows(np.ascontiguousarray(values, dtype=dtype).view(np.uint8), np.full(len(values), 8, np.int64))


def strings(values: pl.Series) -> Rows:
    """UTF-8 bytes of each value (nulls empty), encoded once per distinct value."""
    frame = pl.DataFrame({"v": values.cast(pl.String)})
    uniques = frame.select(pl.col("v").drop_nulls().unique(maintain_order=True)).with_row_index("code")
    codes = frame.join(uniques, on="v", how="left", maintain_order="left")["code"].fill_null(0).to_numpy()
    encoded = [s.encode() for s in uniques["v"].to_list()] or [b""]
    table = Rows(np.frombuffer(b"".join(encoded), np.uint8).copy(), np.array([len(e) for e in encoded], np.int64))
    return table.take(codes.astype(np.int64)).where(values.is_not_null().to_numpy())


def concat(*parts: Rows) -> Rows:
    """Row i of the result is row i of every part, in order."""
    lens = np.sum([p.lens for p in parts], axis=0) if parts else np.zeros(0, np.int64)
    out = np.empty(int(lens.sum()), np.uint8)
    offset = np.cumsum(lens) - lens
    for p in parts:
        if p.data.size:
            src_start = np.cumsum(p.lens) - p.lens
            out[np.repeat(offset - src_start, p.lens) + np.arange(p.data.size)] = p.data
        offset = offset + p.lens
    return Rows(out, lens)


def message(field_tag: bytes, payload: Rows) -> Rows:
    """A length-delimited field (a string, bytes or a nested message) around each row's payload."""
    return concat(const(field_tag, len(payload.lens)), varints(payload.lens), payload)


def scalar(field_tag: bytes, encoded: Rows) -> Rows:
    return concat(const(field_tag, len(encoded.lens)), encoded)
