"""Span files read with json alone (plain or gzip-compressed OTLP-JSON lines): the benchmarks' reader, which
runs on a GPU host that has no analyzer (no polars). A line cut short by a killed writer is skipped."""
from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path


def value(v: dict):
    """An OTLP-JSON attribute value: ints as ints, arrays as lists."""
    if "arrayValue" in v:
        return [value(x) for x in v["arrayValue"].get("values", [])]
    for key in ("stringValue", "intValue", "doubleValue", "boolValue"):
        if key in v:
            return int(v[key]) if key == "intValue" else v[key]
    return None


def spans(trace_dir, pattern: str = "spans-*.jsonl*") -> Iterator[dict]:
    """Every span of the files matching ``pattern``: name, id, parent, start, end (ns), attrs, file."""
    for path in sorted(Path(trace_dir).glob(pattern)):
        with (gzip.open(path, "rt") if path.suffix == ".gz" else open(path)) as f:
            for line in f:
                try:
                    batch = json.loads(line)
                except ValueError:
                    continue
                for rs in batch.get("resourceSpans", ()):
                    for ss in rs.get("scopeSpans", ()):
                        for s in ss.get("spans", ()):
                            yield {"name": s["name"], "id": s["spanId"], "parent": s.get("parentSpanId", ""),
                                   "start": int(s["startTimeUnixNano"]), "end": int(s["endTimeUnixNano"]),
                                   "attrs": {a["key"]: value(a["value"]) for a in s.get("attributes", [])},
                                   "file": path.name}
