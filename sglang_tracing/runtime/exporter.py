"""Exporter process: raw records in on stdin, OTLP-JSON lines out (and optionally to a collector).

Started by ``Recorder`` with ``python -m sglang_tracing.runtime.exporter --out FILE``.
It exits when its SGLang process closes the pipe or dies, after writing what it received.
Each export batch is one line written with a single ``os.write``, so a kill leaves
whole lines behind; ``span_files.SpanFile`` cuts parts at a size cap, deletes old ones and stops
cleanly on a full disk or a trace dir gone, saying so in the trace and the log.
"""
from __future__ import annotations

import argparse
import io
import logging
import os
import signal
import sys
import time

from opentelemetry.exporter.otlp.json.file import FileSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, TraceFlags

from sglang_tracing import __version__, semconv as sc
from sglang_tracing.runtime.ids import new_span_id, request_root_span_id, rid_of_trace_key, trace_id_for, trace_id_of_key
from sglang_tracing.runtime.trace_context import NotedTraces
from sglang_tracing.runtime.records import MSG_RECORDS, MSG_RESOURCE, MSG_SAMPLER, PARENT_IS_REQUEST_ROOT, read_message
from sglang_tracing.runtime.span_files import SpanFile

logger = logging.getLogger("sglang_tracing.exporter")
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
EXPORTER_NICENESS = 10  # on a host with few cores, bursts of span encoding must not take a request's CPU


class SpanBuilder:
    """Turns raw records into SDK ReadableSpans sharing one Resource."""

    def __init__(self, resource_attrs: dict, noted: NotedTraces | None = None):
        self.resource = Resource.create(resource_attrs)
        self.noted = noted  # requests the tokenizer process put in another trace (a caller's, a PD pair's)
        self.scope = InstrumentationScope(sc.SCOPE, __version__)
        self._trace_ids: dict[str, int] = {}
        self._fallback_trace = trace_id_for(f"process:{resource_attrs.get(sc.RES_PID)}")

    def _trace_id(self, key: str) -> int:
        if not key:
            return self._fallback_trace
        tid = self._trace_ids.get(key)
        if tid is None:
            if len(self._trace_ids) > 100_000:
                self._trace_ids.clear()
            noted = self.noted.get(rid_of_trace_key(key)) if self.noted is not None else None
            tid = self._trace_ids[key] = noted or trace_id_of_key(key)
        return tid

    def build(self, record) -> ReadableSpan:
        name, start, end, span_id, parent, trace_key, attrs, events = record
        trace_id = self._trace_id(trace_key)
        if parent == PARENT_IS_REQUEST_ROOT:
            parent = request_root_span_id(rid_of_trace_key(trace_key))
        parent_ctx = SpanContext(trace_id, parent, False, _SAMPLED) if parent else None
        return ReadableSpan(
            name=name,
            context=SpanContext(trace_id, span_id, False, _SAMPLED),
            parent=parent_ctx,
            resource=self.resource,
            attributes=attrs,
            events=[Event(n, attributes=a, timestamp=t) for n, t, a in events],
            instrumentation_scope=self.scope,
            start_time=start,
            end_time=end,
        )


def _otlp_exporter(endpoint: str):
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        logger.warning("--otlp-endpoint needs opentelemetry-exporter-otlp-proto-http; exporting to files only")
        return None
    return OTLPSpanExporter(endpoint=endpoint.rstrip("/") + "/v1/traces"
                            if not endpoint.rstrip("/").endswith("/v1/traces") else endpoint)


class _Notes:
    """Our own notes about the file (writing stopped, parts deleted) as encoded OTLP lines."""

    def __init__(self):
        self.builder = SpanBuilder({})

    def line(self, name: str, attrs: dict) -> str:
        out = io.StringIO()
        now = time.time_ns()
        FileSpanExporter(stream=out).export([self.builder.build((name, now, now, new_span_id(), 0, "", attrs, ()))])
        return out.getvalue()


def serve(stdin, out_path: str, otlp_endpoint: str | None, max_mb: float = 0, keep_parts: int = 0) -> None:
    notes = _Notes()
    try:
        span_file = SpanFile(out_path, int(max_mb * (1 << 20)), keep_parts,
                             stop_line=lambda reason, attrs: notes.line(sc.WRITING_STOPPED, {sc.STOP_REASON: reason}))
    except OSError as exc:
        logger.warning("cannot write %s (%s): this process's spans are not recorded", out_path, exc)
        while read_message(stdin) is not None:  # keep the pipe drained: the SGLang process never waits on us
            pass
        return
    exporters = [FileSpanExporter(stream=span_file)]
    if otlp_endpoint:
        otlp = _otlp_exporter(otlp_endpoint)
        if otlp is not None:
            exporters.append(otlp)
    noted = NotedTraces(os.path.dirname(os.path.abspath(out_path)))
    builder = SpanBuilder({}, noted)
    sampler = None
    while (msg := read_message(stdin)) is not None:
        kind, payload = msg
        if kind == MSG_RESOURCE:
            builder = notes.builder = SpanBuilder(payload, noted)
        elif kind == MSG_RECORDS:
            spans = [builder.build(r) for r in payload]
            if span_file.deleted:
                spans.append(builder.build(_parts_deleted(span_file)))
            for exporter in exporters:
                try:
                    exporter.export(spans)
                except Exception:  # a collector being down must not stop the file export
                    logger.warning("span export to %s failed", type(exporter).__name__, exc_info=True)
        elif kind == MSG_SAMPLER and sampler is None:
            from sglang_tracing.runtime.gpu_sampler import start_sampler

            sampler = start_sampler(payload)
    if sampler is not None:
        sampler.stop()
    for exporter in exporters:
        exporter.shutdown()
    span_file.close()
    if span_file.stopped:
        logger.warning("%d export batches of %s were not written (%s)", span_file.unwritten_lines, out_path,
                       span_file.stopped)


def _parts_deleted(span_file: SpanFile) -> tuple:
    """A record saying which parts retention deleted (written into the part that follows them)."""
    deleted, span_file.deleted = span_file.deleted, []
    now = time.time_ns()
    return (sc.PARTS_DELETED, now, now, new_span_id(), 0, "",
            {sc.PARTS_DELETED: deleted, sc.PART_INDEX: span_file.index}, ())


def active_marker(out_path: str) -> str:
    """Exists while an exporter may still write ``out_path``; see ``wait_for_exporters``."""
    return out_path + ".active"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="sglang_tracing.runtime.exporter")
    parser.add_argument("--out", required=True)
    parser.add_argument("--otlp-endpoint")
    parser.add_argument("--max-mb", type=float, default=0)
    parser.add_argument("--keep-parts", type=int, default=0)
    args = parser.parse_args(argv)
    marker = active_marker(args.out)
    try:
        open(marker, "w").close()
    except OSError:
        pass  # serve() says why nothing can be written
    # Leave the SGLang process tree: SGLang's shutdown SIGKILLs its descendants, and we
    # must outlive it long enough to write what is still in the pipe.
    if os.fork() > 0:
        os._exit(0)
    try:  # encoding and exporting wait their turn behind the server they record (and a client timing it)
        os.nice(EXPORTER_NICENESS)
    except OSError:
        pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, format="sglang-tracing exporter: %(message)s")
    try:
        serve(sys.stdin.buffer, args.out, args.otlp_endpoint, args.max_mb, args.keep_parts)
    finally:
        try:
            os.unlink(marker)
        except OSError:  # the trace dir was removed (the log said so)
            pass


if __name__ == "__main__":
    main()
