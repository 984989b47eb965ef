"""OTLP-JSON span lines decoded straight into polars columns: the fast path of loading a trace dir.

msgspec decodes each line into typed structs (no dict per span or attribute), and the columns are
built per span name, where every span usually carries the same attribute keys in the same order,
so a key's values are one slice of the flattened attribute list. The result has the columns,
dtypes and values that ``otlp_json.read_span_file`` + ``span_frame.spans_frame`` (the reference path)
give. Input outside what the OpenTelemetry SDK writes for sglang-tracing (kvlist values, nested
arrays, arrays mixing value kinds, a key whose values mix kinds, a bool that is not a JSON bool)
raises ``Unsupported``; the caller then reads that file with the reference path.
"""
from __future__ import annotations

import dataclasses
import json
from itertools import chain
from operator import attrgetter, itemgetter
from typing import Any, Optional

import msgspec
import numpy as np
import polars as pl

from sglang_tracing.analyzer.model import EVENT_SCHEMA, SPAN_BASE, SPAN_FIELDS

_RES_KEYS = ("sglang.role", "process.pid", "sglang.tp_rank")  # semconv.RES_ROLE, RES_PID, RES_TP_RANK


class Unsupported(Exception):
    """A line this decoder does not reproduce exactly: read the file with the reference path."""


class _Scalar(msgspec.Struct, gc=False):
    stringValue: Optional[str] = None
    intValue: Optional[int] = None
    doubleValue: Optional[float] = None
    boolValue: Any = None
    arrayValue: Any = None  # nested arrays and kvlists: Unsupported
    kvlistValue: Any = None


class _Array(msgspec.Struct, gc=False):
    values: list[_Scalar] = []


class _Value(msgspec.Struct, gc=False):
    stringValue: Optional[str] = None
    intValue: Optional[int] = None
    doubleValue: Optional[float] = None
    boolValue: Any = None
    arrayValue: Optional[_Array] = None
    kvlistValue: Any = None


class _KeyValue(msgspec.Struct, gc=False):
    key: str
    value: _Value = msgspec.field(default_factory=_Value)


class _Event(msgspec.Struct, gc=False):
    name: str
    timeUnixNano: int
    attributes: list[_KeyValue] = []


class _Span(msgspec.Struct, gc=False):
    traceId: str
    spanId: str
    name: str
    startTimeUnixNano: int
    endTimeUnixNano: int
    parentSpanId: str = ""
    attributes: list[_KeyValue] = []  # null here (the reference path reads it as none) goes to the reference path
    events: list[_Event] = []


class _ScopeSpans(msgspec.Struct, gc=False):
    spans: list[_Span] = []


class _Resource(msgspec.Struct, gc=False):
    attributes: Optional[list[_KeyValue]] = None


class _ResourceSpans(msgspec.Struct, gc=False):
    resource: _Resource = msgspec.field(default_factory=_Resource)
    scopeSpans: list[_ScopeSpans] = []


class _Request(msgspec.Struct, gc=False):
    resourceSpans: list[_ResourceSpans]


_DECODER = msgspec.json.Decoder(_Request, strict=False)  # strict=False: OTLP writes int64 as "123"
_KINDS = ("stringValue", "intValue", "doubleValue", "boolValue", "arrayValue", "kvlistValue")
_DTYPES = {"stringValue": pl.String, "intValue": pl.Int64, "doubleValue": pl.Float64, "boolValue": pl.Boolean}
DecodeError = (msgspec.DecodeError, msgspec.ValidationError, Unsupported)


def _kind(v) -> str | None:
    for k in _KINDS:
        if getattr(v, k) is not None:
            return k
    return None


def _python(v) -> Any:
    """The value the reference path gives (``otlp_json._value``) for a scalar or array value."""
    kind = _kind(v)
    if kind is None:
        return None
    if kind == "kvlistValue" or (kind == "arrayValue" and not isinstance(v, _Value)):
        raise Unsupported(kind)
    if kind == "arrayValue":
        return [_python(x) for x in v.arrayValue.values]
    if kind == "boolValue" and type(v.boolValue) is not bool:
        raise Unsupported("boolValue")
    return getattr(v, kind)


@dataclasses.dataclass
class Chunk:
    """One chunk of lines, as frames per span name (in order of first appearance)."""

    groups: list[tuple[str, pl.DataFrame]]
    events: pl.DataFrame
    keys: list[str]  # attribute keys in order of first appearance in the chunk
    spans: int


def decode_lines(lines: list[bytes]) -> Chunk:
    """Spans and events of whole OTLP-JSON lines; raises ``DecodeError`` for a line it cannot take."""
    spans: list[_Span] = []
    res_cols: tuple[list, list, list] = ([], [], [])
    for raw in lines:
        for rs in _DECODER.decode(raw).resourceSpans:
            res = {kv.key: kv.value for kv in rs.resource.attributes or ()}
            res_values = [_python(res[k]) if k in res else None for k in _RES_KEYS]
            for ss in rs.scopeSpans:
                spans += ss.spans
                for col, value in zip(res_cols, res_values):
                    col += [value] * len(ss.spans)
    return _columns(spans, res_cols)


def _columns(spans: list[_Span], res_cols) -> Chunk:
    names = list(map(attrgetter("name"), spans))
    base = pl.DataFrame({
        "trace_id": pl.Series(list(map(attrgetter("traceId"), spans)), dtype=pl.String),
        "span_id": pl.Series(list(map(attrgetter("spanId"), spans)), dtype=pl.String),
        "parent_id": pl.Series(list(map(attrgetter("parentSpanId"), spans)), dtype=pl.String),
        "name": pl.Series(names, dtype=pl.String),
        "start_ns": pl.Series(list(map(attrgetter("startTimeUnixNano"), spans)), dtype=pl.Int64),
        "end_ns": pl.Series(list(map(attrgetter("endTimeUnixNano"), spans)), dtype=pl.Int64),
        **{f: pl.Series(values, dtype=SPAN_BASE[f], strict=False) for f, values in zip(SPAN_FIELDS[6:], res_cols)},
    }).with_columns(pl.when(pl.col("parent_id") != "").then(pl.col("parent_id")).alias("parent_id"))
    events = _events(spans)
    if not spans:
        return Chunk([], events, [], 0)
    # spans of one name and attribute count nearly always carry the same keys in the same order
    counts = list(map(len, map(attrgetter("attributes"), spans)))
    by_kind = (pl.DataFrame({"name": names, "n": counts}).with_row_index("i")
               .group_by("name", "n", maintain_order=True).agg(pl.col("i")))
    groups, first_seen = [], {}
    for name, _, rows in by_kind.iter_rows():
        rows_np = np.asarray(rows, dtype=np.int64)
        attrs, order = _attribute_columns(_take(spans, rows))
        for key, (span, offset) in order.items():
            pos = (int(rows_np[span]), offset)
            if key not in first_seen or pos < first_seen[key]:
                first_seen[key] = pos
        frame = base[rows_np]
        attrs = {k: s for k, s in attrs.items() if k not in SPAN_BASE}
        groups.append((name, frame.with_columns(**attrs) if attrs else frame))
    keys = [k for k in sorted(first_seen, key=first_seen.__getitem__) if k not in SPAN_BASE]
    return Chunk(groups, events, keys, len(spans))


def _events(spans: list[_Span]) -> pl.DataFrame:
    with_events = np.flatnonzero(np.fromiter(map(len, map(attrgetter("events"), spans)), np.int64, len(spans)))
    rows = [(sp.spanId, ev.name, ev.timeUnixNano, sp.traceId, _event_attributes(ev))
            for sp in _take(spans, with_events.tolist()) for ev in sp.events] if len(with_events) else []
    return pl.DataFrame(rows, schema=EVENT_SCHEMA, orient="row")


def _event_attributes(ev: _Event) -> str | None:
    """An event's attributes as the reference path gives them (a JSON object), None when it has none."""
    return json.dumps({kv.key: _python(kv.value) for kv in ev.attributes}) if ev.attributes else None


def _attribute_columns(group: tuple[_Span, ...]) -> tuple[dict[str, pl.Series], dict[str, tuple[int, int]]]:
    """One Series per attribute key over ``group``, and where each key first appears (span, offset)."""
    lists = list(map(attrgetter("attributes"), group))
    counts = list(map(len, lists))
    flat = list(chain.from_iterable(lists))
    keys = list(map(attrgetter("key"), flat))
    values = list(map(attrgetter("value"), flat))
    n, width = len(group), counts[0]
    first = keys[:width]
    if width and counts.count(width) == n and len(set(first)) == width and keys == first * n:
        # every span has the same keys in the same order: a key's values are one stride of the list
        return ({k: _series(k, values[j::width]) for j, k in enumerate(first)},
                {k: (0, j) for j, k in enumerate(first)})
    span_of = np.repeat(np.arange(n, dtype=np.int64), counts)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1])) if n else np.zeros(0, np.int64)
    positions = (pl.DataFrame({"key": keys}, schema={"key": pl.String}).with_row_index("p")
                 .group_by("key", maintain_order=True).agg(pl.col("p")))
    columns, order = {}, {}
    for key, pos in positions.iter_rows():
        pos = np.asarray(pos, dtype=np.int64)
        vals = _take(values, pos.tolist())
        series = _series(key, vals)
        spans_with_key = span_of[pos]
        order[key] = (int(spans_with_key[0]), int(pos[0] - starts[spans_with_key[0]]))
        gather = np.full(n, len(vals), dtype=np.int64)
        gather[spans_with_key] = np.arange(len(vals))  # a key twice on one span: the last one wins
        columns[key] = series.extend_constant(None, 1).gather(gather)
    return columns, order


def _take(items: list, index: list[int]) -> tuple:
    return itemgetter(*index)(items) if len(index) != 1 else (items[index[0]],)


def _series(key: str, vals: list[_Value]) -> pl.Series:
    """The column of one attribute key from its values, typed as the reference path infers it."""
    kind = next((k for k in map(_kind, vals) if k is not None), None)
    if kind is None:
        return pl.Series(key, [None] * len(vals))
    xs = list(map(attrgetter(kind), vals))
    if xs.count(None) and any(_kind(v) not in (None, kind) for v, x in zip(vals, xs) if x is None):
        raise Unsupported(f"{key}: values of several kinds")
    if kind == "kvlistValue":
        raise Unsupported("kvlistValue")
    if kind == "arrayValue":
        return _array_series(key, xs)
    if kind == "boolValue" and any(type(x) is not bool for x in xs if x is not None):
        raise Unsupported("boolValue")
    return pl.Series(key, xs, dtype=_DTYPES[kind])


def _array_series(key: str, arrays: list[_Array | None]) -> pl.Series:
    items = [a.values if a is not None else None for a in arrays]
    elements = list(chain.from_iterable(v for v in items if v))
    if not elements:
        return pl.Series(key, [None if v is None else [] for v in items], strict=False)
    kind = _kind(elements[0])
    xs = list(map(attrgetter(kind), elements)) if kind in _DTYPES else []
    if kind not in _DTYPES or xs.count(None) or (kind == "boolValue" and any(type(x) is not bool for x in xs)):
        raise Unsupported(f"{key}: array of mixed or nested values")
    lengths = np.fromiter((-1 if v is None else len(v) for v in items), dtype=np.int64, count=len(items))
    return _lists(key, pl.Series(xs, dtype=_DTYPES[kind]), lengths)


def _lists(key: str, flat: pl.Series, lengths: np.ndarray) -> pl.Series:
    """A list column from its elements in order and each row's length (-1 for a null row)."""
    n = len(lengths)
    rows = np.repeat(np.arange(n, dtype=np.int64), np.maximum(lengths, 0))
    grouped = pl.DataFrame({"row": rows, key: flat}).group_by("row", maintain_order=True).agg(pl.col(key))
    full = pl.DataFrame({"row": np.arange(n, dtype=np.int64), "len": lengths}).join(grouped, on="row", how="left",
                                                                                   maintain_order="left")
    empty = pl.lit([], dtype=pl.List(flat.dtype))
    return full.select(pl.when(pl.col("len") == 0).then(empty).otherwise(pl.col(key)).alias(key)).to_series()
