"""The raw record format that crosses from an SGLang process to its exporter process.

A record is a plain tuple so that building one on the hot path costs well under a
microsecond and marshal can serialize it without help:

    (name, start_ns, end_ns, span_id, parent, trace_key, attributes, events)

``parent`` is a span id, 0 for none, or ``PARENT_IS_REQUEST_ROOT`` for a child of the
request's root span (derived from the rid in ``trace_key`` by the exporter).
``events`` is a tuple of ``(name, time_ns, attributes)``.
"""
from __future__ import annotations

import marshal
import struct

PARENT_IS_REQUEST_ROOT = -1
MSG_RESOURCE = 0  # payload: dict of resource attributes (first message)
MSG_RECORDS = 1  # payload: list of records
MSG_SAMPLER = 2  # payload: dict, start the NVML sampler with these settings

_HEADER = struct.Struct("<IB")


def encode_message(kind: int, payload) -> bytes:
    body = marshal.dumps(payload)
    return _HEADER.pack(len(body), kind) + body


def read_message(stream) -> tuple[int, object] | None:
    """Next (kind, payload) from a binary stream, or None at end of stream or on a cut-off message."""
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    size, kind = _HEADER.unpack(header)
    body = stream.read(size)
    if len(body) < size:
        return None
    return kind, marshal.loads(body)
