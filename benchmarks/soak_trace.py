"""What the traced server's own trace says about a soak, read from its span files (json, plain or gzip),
independently of the client: every request's root span (output tokens, finish reason), the keep decision
on its decode span, and the recorder's stats spans over time.
"""
from __future__ import annotations

import collections

from sglang_tracing import semconv as sc

import span_json  # the sibling reader (soak.py puts benchmarks/ on the path)


def read(trace_dir: str) -> dict:
    """``requests``: rid -> {output_tokens, finish_reason, internal, start/end (s), keep, http_ended_by};
    ``stats``: the recorder's stats spans in time order."""
    requests: dict[str, dict] = collections.defaultdict(dict)
    stats: list[dict] = []
    for s in span_json.spans(trace_dir):
        a = s["attrs"]
        if s["name"] == sc.REQUEST:
            requests[a.get(sc.RID)].update(
                output_tokens=int(a.get(sc.OUTPUT_TOKENS) or 0), finish_reason=a.get(sc.FINISH_REASON),
                internal=a.get(sc.INTERNAL), start=s["start"] / 1e9, end=s["end"] / 1e9)
        elif s["name"] == sc.REQUEST_DECODE and sc.KEEP_REASON in a:
            requests[a.get(sc.RID)]["keep"] = a[sc.KEEP_REASON]
        elif s["name"] == sc.REQUEST_HTTP:
            requests[a.get(sc.RID)]["http_ended_by"] = a.get(sc.HTTP_ENDED_BY) or "(not recorded)"
        elif s["name"] == sc.RECORDER_STATS:
            stats.append({"t": s["start"] / 1e9, "file": s["file"],
                          "queued_max": int(a.get(sc.QUEUED_MAX) or 0), "queued": int(a.get(sc.QUEUED) or 0),
                          "batch_held": int(a.get(sc.BATCH_HELD) or 0),
                          "batch_left_out": int(a.get(sc.BATCH_LEFT_OUT) or 0),
                          "dropped": int(a.get(sc.DROPPED_SPANS) or 0),
                          "unsent": int(a.get(sc.RECORDS_UNSENT) or 0)})
    stats.sort(key=lambda r: r["t"])
    return {"requests": dict(requests), "stats": stats}


def check_phase(rows: list[dict], trace_requests: dict) -> dict:
    """One traced phase: the client's rows against the trace's root spans of the same rids."""
    roots = {r["rid"]: trace_requests.get(r["rid"], {}) for r in rows}
    missing = [rid for rid, t in roots.items() if "output_tokens" not in t]
    completed = [r for r in rows if r["outcome"] == "completed" and "output_tokens" in roots[r["rid"]]]
    mismatched = [r["rid"] for r in completed if r["tokens"] != roots[r["rid"]]["output_tokens"]]
    return {"in_trace": len(rows) - len(missing), "missing_from_trace": len(missing),
            "missing_examples": missing[:10],
            "trace_output_tokens": sum(t.get("output_tokens", 0) for t in roots.values()),
            "trace_finish_reasons": dict(collections.Counter(str(t.get("finish_reason")) for t in roots.values()
                                                             if "output_tokens" in t)),
            "trace_keep": dict(collections.Counter(t.get("keep", "(no decode span)") for t in roots.values()
                                                   if "output_tokens" in t)),
            "completed_token_mismatches": len(mismatched), "mismatch_examples": mismatched[:10],
            # by the client's outcome: how the trace's HTTP span of each request ended (a hung-up client's
            # should say "client disconnected"), or that it has none
            "trace_http_ended_by": {outcome: dict(collections.Counter(
                roots[r["rid"]].get("http_ended_by", "(no HTTP span)") for r in rows if r["outcome"] == outcome))
                for outcome in sorted({r["outcome"] for r in rows})}}


def unmeasured(trace_requests: dict, measured: set, label: str = "warm-up load") -> dict:
    """Requests in the trace that no measured phase sent (warm-up load, SGLang's and our own internal ones);
    ``label``: what a user request among them is."""
    other = {rid: t for rid, t in trace_requests.items() if rid not in measured and "output_tokens" in t}
    return {"requests": len(other),
            "by_kind": dict(collections.Counter(t.get("internal") or label for t in other.values())),
            "keep": dict(collections.Counter(t.get("keep", "(no decode span)") for t in other.values()))}


def held_over_time(stats: list[dict]) -> dict:
    """Per span file: the recorder's queue high-water mark and its held batch records, first and last."""
    out = {}
    for name in sorted({s["file"] for s in stats}):
        rows = [s for s in stats if s["file"] == name]
        out[name] = {"stats_spans": len(rows), "queued_max_max": max(r["queued_max"] for r in rows),
                     "batch_held_first": rows[0]["batch_held"], "batch_held_last": rows[-1]["batch_held"],
                     "batch_held_max": max(r["batch_held"] for r in rows),
                     "dropped_last": rows[-1]["dropped"], "unsent_last": rows[-1]["unsent"]}
    return out


def by_window(trace_requests: dict, phases: list[dict]) -> list[dict]:
    """For a run without request rows (soak.json before they were kept): each turn's requests and output
    tokens by the trace, taking the user requests whose root span started inside the turn. An untraced
    turn finds none: its server wrote no trace."""
    user = [t for t in trace_requests.values() if "output_tokens" in t and not t.get("internal")]
    out = []
    for p in phases:
        lo, hi = p["t"], p["t"] + p["s"]
        inside = [t for t in user if lo <= t["start"] < hi]
        ended = [t for t in user if lo <= t["end"] < hi]
        out.append({"server": p["server"], "t": p["t"], "s": p["s"], "requests_started": len(inside),
                    "requests_ended": len(ended), "output_tokens": sum(t["output_tokens"] for t in inside),
                    "tok_s": round(sum(t["output_tokens"] for t in inside) / p["s"], 1),
                    "finish_reasons": dict(collections.Counter(str(t["finish_reason"]) for t in inside)),
                    "keep": dict(collections.Counter(t.get("keep", "(no decode span)") for t in inside))})
    return out
