"""Reading committed span files with nothing but gzip and json: the independent side of the tests
that check the analyzer's figures (no polars, no analyzer code)."""
from __future__ import annotations

import gzip
import json
from pathlib import Path


def _value(v: dict):
    if "arrayValue" in v:
        return [_value(x) for x in v["arrayValue"].get("values", [])]
    (kind, raw), = v.items()
    return int(raw) if kind == "intValue" else raw


def spans(trace_dir) -> list[dict]:
    """Every span of a trace dir: name, span_id, parent_id, start, end, attrs (ints as ints)."""
    out = []
    for path in sorted(Path(trace_dir).glob("spans-*.jsonl*")):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt") as f:
            for line in f:
                if not line.strip():
                    continue
                for rs in json.loads(line)["resourceSpans"]:
                    for ss in rs["scopeSpans"]:
                        for sp in ss["spans"]:
                            out.append({"name": sp["name"], "span_id": sp["spanId"], "trace_id": sp["traceId"],
                                        "parent_id": sp.get("parentSpanId") or None,
                                        "start": int(sp["startTimeUnixNano"]), "end": int(sp["endTimeUnixNano"]),
                                        "attrs": {a["key"]: _value(a["value"]) for a in sp.get("attributes", [])}})
    return out


def named(all_spans: list[dict], name: str) -> list[dict]:
    return [s for s in all_spans if s["name"] == name]
