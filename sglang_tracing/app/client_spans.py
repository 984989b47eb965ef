"""The PD client's own stamps of each request as a trace dir (one span per request, OTLP-JSON), so
the analyzer joins them to the servers' spans by rid and the waterfall starts where the user's
request did: its first byte sent, through to the first chunk it read."""
from __future__ import annotations

import json
import os
import random

from sglang_tracing import semconv as sc
from sglang_tracing.app.otlp_receiver import write_manifest

SPAN_FILE = "spans-client.jsonl"


def _attr(key: str, value) -> dict:
    return {"key": key, "value": {"stringValue": value} if isinstance(value, str) else {"intValue": str(value)}}


def write_client_dir(out_dir: str, stamps: list[dict], command: list[str] | None = None) -> str:
    """``stamps``: the client's dict of each request (rid, sent_ns, first_ns, first_kernel_ns, done_ns)."""
    os.makedirs(out_dir, exist_ok=True)
    spans = []
    for stamp in stamps:
        attrs = [_attr(sc.RID, stamp["rid"]), _attr(sc.CLIENT_FIRST_CHUNK_NS, stamp["first_ns"])]
        if stamp.get("first_kernel_ns"):
            attrs.append(_attr(sc.CLIENT_FIRST_KERNEL_NS, stamp["first_kernel_ns"]))
        spans.append({"traceId": f"{random.getrandbits(128) or 1:032x}", "spanId": f"{random.getrandbits(64) or 1:016x}",
                      "name": sc.CLIENT_REQUEST, "kind": 3, "startTimeUnixNano": str(stamp["sent_ns"]),
                      "endTimeUnixNano": str(stamp["done_ns"]), "attributes": attrs})
    resource = {"attributes": [_attr(sc.RES_SERVICE_NAME, sc.CLIENT_ROLE), _attr("sglang.role", sc.CLIENT_ROLE),
                               _attr("process.pid", os.getpid())]}
    line = {"resourceSpans": [{"resource": resource, "scopeSpans": [{"scope": {"name": "sglang_tracing"},
                                                                    "spans": spans}]}]}
    with open(os.path.join(out_dir, SPAN_FILE), "w") as f:
        f.write(json.dumps(line) + "\n")
    write_manifest(out_dir, sc.CLIENT_ROLE, command, received_over=None)
    return out_dir
