"""Protobuf fields encoded a column at a time: one numpy operation per field for all rows.

A Perfetto trace of a million spans has millions of packets; building one protobuf message object
per packet costs microseconds each. Here the fields of many rows are built together: ``Rows`` holds
one row per message as a byte matrix with a mask of the bytes in use (a field absent from a row,
or shorter than the longest, is masked out), so concatenating fields and nesting messages are
matrix stacks, and the wire bytes are read out once, row by row. Field numbers and wire types come
from the message descriptors of the perfetto package's protos, never typed in; the tests parse
the output back with those protos.
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
    data: np.ndarray  # (rows, width) uint8
    used: np.ndarray  # (rows, width) bool: which bytes belong to the row, in order

    @property
    def lens(self) -> np.ndarray:
        return self.used.sum(axis=1, dtype=np.int64)

    def where(self, mask: np.ndarray) -> Rows:
        """The rows where ``mask`` is set; the others empty (an absent optional field)."""
        return Rows(self.data, self.used & mask[:, None])

    def wire(self) -> tuple[np.ndarray, np.ndarray]:
        """(every row's bytes back to back, each row's length)."""
        return self.data[self.used], self.lens


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
    row = np.frombuffer(data, np.uint8)
    return Rows(np.broadcast_to(row, (n, len(row))), np.ones((n, len(row)), bool))


def varints(values: np.ndarray) -> Rows:
    """Base-128 varints (negative int64 as their 10-byte two's complement, as protobuf writes int64)."""
    v = np.asarray(values).astype(np.int64).view(np.uint64)
    width = max(1, (int(v.max()).bit_length() + 6) // 7) if len(v) else 1
    groups = (v[:, None] >> (np.arange(width, dtype=np.uint64) * np.uint64(7))) & np.uint64(0x7F)
    used = np.ones((len(v), width), bool)
    used[:, 1:] = groups[:, 1:][:, ::-1].cumsum(axis=1)[:, ::-1] > 0  # up to the highest non-zero group
    more = np.zeros_like(used)
    more[:, :-1] = used[:, 1:]
    return Rows((groups | np.where(more, 0x80, 0).astype(np.uint64)).astype(np.uint8), used)


def fixed64(values: np.ndarray, dtype: str) -> Rows:
    data = np.ascontiguousarray(values, dtype=dtype).view(np.uint8).reshape(len(values), 8)
    return Rows(data, np.ones((len(values), 8), bool))


def strings(values: pl.Series) -> Rows:
    """UTF-8 bytes of each value (nulls empty), encoded once per distinct value."""
    frame = pl.DataFrame({"v": values.cast(pl.String)})
    uniques = frame.select(pl.col("v").drop_nulls().unique(maintain_order=True)).with_row_index("code")
    codes = frame.join(uniques, on="v", how="left", maintain_order="left")["code"].fill_null(0).to_numpy()
    encoded = [s.encode() for s in uniques["v"].to_list()] or [b""]
    width = max(1, max(map(len, encoded)))
    table = np.zeros((len(encoded), width), np.uint8)
    for i, e in enumerate(encoded):
        table[i, :len(e)] = np.frombuffer(e, np.uint8)
    lens = np.array([len(e) for e in encoded], np.int64)[codes]
    return Rows(table[codes], np.arange(width)[None, :] < lens[:, None]).where(values.is_not_null().to_numpy())


def concat(*parts: Rows) -> Rows:
    """Row i of the result is row i of every part, in order."""
    return Rows(np.hstack([p.data for p in parts]), np.hstack([p.used for p in parts]))


def message(field_tag: bytes, payload: Rows) -> Rows:
    """A length-delimited field (a string, bytes or a nested message) around each row's payload."""
    n = len(payload.data)
    return concat(const(field_tag, n), varints(payload.lens), payload)


def scalar(field_tag: bytes, encoded: Rows) -> Rows:
    return concat(const(field_tag, len(encoded.data)), encoded)


def interleave(groups: list[tuple[np.ndarray, np.ndarray, np.ndarray]], n: int) -> np.ndarray:
    """Bytes of rows encoded in groups, put back in row order: (positions, bytes, lengths) per group."""
    lens = np.zeros(n, np.int64)
    for pos, _, glens in groups:
        lens[pos] = glens
    offsets = np.cumsum(lens) - lens
    out = np.empty(int(lens.sum()), np.uint8)
    for pos, data, glens in groups:
        src = np.cumsum(glens) - glens
        out[np.repeat(offsets[pos] - src, glens) + np.arange(len(data))] = data
    return out
