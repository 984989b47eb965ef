"""The PD client's own stamps of each request as a trace dir (one span per request, OTLP-JSON written the
way the recorder's exporter writes them), so the analyzer joins them to the servers' spans by rid and the
waterfall starts where the user's request did: its first byte sent, through to the first chunk it read."""
from __future__ import annotations

import os

from opentelemetry.exporter.otlp.json.file import FileSpanExporter

from sglang_tracing import semconv as sc
from sglang_tracing.app.otlp_receiver import write_manifest
from sglang_tracing.runtime.exporter import SpanBuilder
from sglang_tracing.runtime.ids import new_span_id, request_trace_key

SPAN_FILE = "spans-client.jsonl"


def write_client_dir(out_dir: str, stamps: list[dict], command: list[str] | None = None) -> str:
    """``stamps``: the client's dict of each request (rid, sent_ns, first_ns, first_kernel_ns, done_ns)."""
    os.makedirs(out_dir, exist_ok=True)
    builder = SpanBuilder({sc.RES_SERVICE_NAME: sc.CLIENT_ROLE, sc.RES_ROLE: sc.CLIENT_ROLE, sc.RES_PID: os.getpid()})
    spans = []
    for stamp in stamps:
        attrs = {sc.RID: stamp["rid"], sc.CLIENT_FIRST_CHUNK_NS: stamp["first_ns"]}
        if stamp.get("first_kernel_ns"):
            attrs[sc.CLIENT_FIRST_KERNEL_NS] = stamp["first_kernel_ns"]
        spans.append(builder.build((sc.CLIENT_REQUEST, stamp["sent_ns"], stamp["done_ns"], new_span_id(), 0,
                                    request_trace_key(stamp["rid"]), attrs, ())))
    with open(os.path.join(out_dir, SPAN_FILE), "w") as f:
        FileSpanExporter(stream=f).export(spans)
    write_manifest(out_dir, sc.CLIENT_ROLE, command, received_over=None)
    return out_dir
