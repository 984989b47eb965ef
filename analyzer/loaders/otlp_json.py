"""Read OTLP-JSON span files (one ExportTraceServiceRequest per line) into plain rows.

No polars here: ``sglang-trace top`` tails span files with this on a serving host that has only the runtime."""
from __future__ import annotations

import json
import logging
from pathlib import Path

try:  # several times faster than json on these large lines; SGLang already depends on it
    from orjson import JSONDecodeError as _DecodeError, loads as _loads
except ImportError:  # pragma: no cover
    from json import JSONDecodeError as _DecodeError, loads as _loads

from sglang_tracing.errors import TraceError
from sglang_tracing.analyzer.loaders.files import read_bytes

logger = logging.getLogger(__name__)


def _value(v: dict):
    if "stringValue" in v:
        return v["stringValue"]
    if "intValue" in v:
        return int(v["intValue"])
    if "doubleValue" in v:
        return float(v["doubleValue"])
    if "boolValue" in v:
        return bool(v["boolValue"])
    if "arrayValue" in v:
        return [_value(x) for x in v["arrayValue"].get("values", [])]
    if "kvlistValue" in v:
        return {kv["key"]: _value(kv["value"]) for kv in v["kvlistValue"].get("values", [])}
    return None


def _attrs(items) -> dict:
    return {kv["key"]: _value(kv.get("value", {})) for kv in items or ()}


def _attr_pairs(items) -> list[tuple[str, object]]:
    return [(kv["key"], _value(kv.get("value", {}))) for kv in items or ()]


def read_span_file(path: Path) -> tuple[list[dict], list[dict], bool]:
    """(spans, events, cut): rows of one file; ``cut`` is True when its last line was left half-written.

    A half-written last line is what a killed writer leaves; anywhere else a bad line is an error.
    """
    spans, events = [], []
    lines = read_bytes(path).split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    cut = False
    for lineno, raw in enumerate(lines, 1):
        try:
            doc = _loads(raw)
            resource_spans = doc["resourceSpans"]
        except (_DecodeError, json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
            if lineno == len(lines) and not raw.endswith(b"}"):
                logger.warning("%s: last line is cut off (writer killed?); ignoring it", path)
                cut = True
                break
            what = "missing resourceSpans" if isinstance(exc, (KeyError, TypeError)) else "not valid JSON"
            raise TraceError(path, f"line {lineno}: {what}") from None
        try:
            for rs in resource_spans:
                res = _attrs(rs.get("resource", {}).get("attributes"))
                for ss in rs.get("scopeSpans", []):
                    for sp in ss.get("spans", []):
                        _add_span(sp, res, spans, events)
        except (KeyError, TypeError, ValueError) as exc:
            raise TraceError(path, f"line {lineno}: malformed span ({exc})") from None
    return spans, events, cut


def _add_span(sp: dict, res: dict, spans: list, events: list) -> None:
    """Append one span as a tuple in ``model.SPAN_FIELDS`` order, its attributes as (key, value) pairs."""
    spans.append((sp["traceId"], sp["spanId"], sp.get("parentSpanId") or None, sp["name"],
                  int(sp["startTimeUnixNano"]), int(sp["endTimeUnixNano"]), res.get("sglang.role"),
                  res.get("process.pid"), res.get("sglang.tp_rank"), _attr_pairs(sp.get("attributes"))))
    for ev in sp.get("events", ()):
        attrs = ev.get("attributes")
        events.append((sp["spanId"], ev["name"], int(ev["timeUnixNano"]), sp["traceId"],
                       json.dumps(_attrs(attrs)) if attrs else None))


def read_line(raw: bytes, spans: list, events: list) -> None:
    """Append the spans and events of one complete line (one ExportTraceServiceRequest), as ``read_span_file``
    does; raises ValueError on a line that is not one."""
    try:
        doc = _loads(raw)
        for rs in doc["resourceSpans"]:
            res = _attrs(rs.get("resource", {}).get("attributes"))
            for ss in rs.get("scopeSpans", []):
                for sp in ss.get("spans", []):
                    _add_span(sp, res, spans, events)
    except (_DecodeError, json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"not an OTLP-JSON line ({type(exc).__name__})") from None
