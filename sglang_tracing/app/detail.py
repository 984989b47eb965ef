"""``sglang-trace detail DIR|URL --level layer --forwards N``: layer-level detail for the next N forwards
of a running traced server, then back to its configured level.

A URL goes through the plugin's route (``patches.control_routes``), a trace dir straight to the request
file the schedulers poll (``runtime.detail_control``). Either way the answer says where CUDA graphs
hide layers.
"""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

from sglang_tracing.analyzer.loaders.span_tail import is_trace_dir
from sglang_tracing.errors import UsageError
from sglang_tracing.runtime import detail_control
from sglang_tracing.runtime.cuda_graphs import graph_note, graph_phases

DETAIL_ROUTE = "/sglang_tracing/detail"


def request_over_http(url: str, level: str, forwards: int) -> dict:
    detail_control.validate(level, forwards)
    body = json.dumps({"level": level, "forwards": forwards}).encode()
    req = urllib.request.Request(url.rstrip("/") + DETAIL_ROUTE, data=body,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as exc:
        why = exc.read().decode(errors="replace")[:300]
        if exc.code in (404, 405):
            why = "not a server traced by sglang-tracing (or tracing is off there)"
        raise UsageError(f"{url} refused the detail request ({exc.code}): {why}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise UsageError(f"cannot reach {url}: {getattr(exc, 'reason', exc)}") from None


def request_in_dir(trace_dir: str, level: str, forwards: int) -> dict:
    if not is_trace_dir(trace_dir):
        raise UsageError(f"{trace_dir} is not a trace dir (no spans-*.jsonl or manifest.json) nor an http(s) URL")
    request = detail_control.write_request(trace_dir, level, forwards)
    try:
        manifest = json.loads((Path(trace_dir) / "manifest.json").read_text())
        phases = graph_phases(SimpleNamespace(**(manifest.get("server_args") or {})))
    except (OSError, ValueError):
        return {**request, "graph_phases": None, "note": "no manifest: whether CUDA graphs hide layers is unknown"}
    return {**request, "graph_phases": phases, "note": graph_note(phases)}


def run(args) -> int:
    if args.target.startswith(("http://", "https://")):
        answer = request_over_http(args.target, args.level, args.forwards)
    else:
        answer = request_in_dir(args.target, args.level, args.forwards)
    if args.json:
        print(json.dumps(answer))
    else:
        print(f"detail {answer['id']}: {answer['level']} level for the next {answer['forwards']} forwards; "
              f"{answer['note']}")
    return 0


def add_arguments(p) -> None:
    p.add_argument("target", metavar="DIR|URL", help="a traced server's URL, or the trace dir it writes")
    p.add_argument("--level", default="layer", help="what to turn on: layer (per-layer NVTX ranges and timing)")
    p.add_argument("--forwards", type=int, default=50, help="for this many forwards of each scheduler rank")
    p.add_argument("--json", action="store_true", help="print the server's answer as JSON")
