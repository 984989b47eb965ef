"""A small OTLP trace receiver: what a collector would get from ``--otlp-endpoint`` (ours, OTLP/HTTP)
or ``--otlp-traces-endpoint`` (``sglang-router``'s, OTLP/gRPC, when ``grpcio`` is installed), written as
OTLP-JSON lines the analyzer reads.

``POST /v1/traces`` with an ``ExportTraceServiceRequest`` in protobuf (or OTLP-JSON), or the gRPC
``TraceService/Export``; each export is one line of ``spans-<label>.jsonl`` in ``out_dir``, ids in hex
as the OTLP-JSON spec asks. A trace dir needs a manifest: ``write_manifest`` writes one naming what
sent the spans.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from sglang_tracing.runtime import manifest as manifest_mod

_ID_KEYS = ("traceId", "spanId", "parentSpanId")


def _hex_ids(node):
    """protobuf's JSON form writes bytes as base64; OTLP-JSON wants hex."""
    if isinstance(node, dict):
        return {k: (base64.b64decode(v).hex() if k in _ID_KEYS and isinstance(v, str) else _hex_ids(v))
                for k, v in node.items()}
    if isinstance(node, list):
        return [_hex_ids(x) for x in node]
    return node


def decode(body: bytes, content_type: str) -> dict:
    if "json" in content_type:
        return json.loads(body)
    from google.protobuf.json_format import MessageToDict
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    message = ExportTraceServiceRequest()
    message.ParseFromString(body)
    return _hex_ids(MessageToDict(message))


class QuietOtlpHandler(BaseHTTPRequestHandler):
    """An OTLP/HTTP endpoint's handler: answers an accepted export with an empty 200, logs nothing."""

    def accepted(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


class OtlpReceiver:
    """Receives spans on a free local port until ``stop``; ``requests`` holds what arrived, decoded."""

    def __init__(self, out_dir: str | None = None, label: str = "otlp"):
        self.requests: list[dict] = []
        self.out_path = os.path.join(out_dir, f"spans-{label}.jsonl") if out_dir else None
        if out_dir:
            os.makedirs(out_dir, exist_ok=True)
        self._lock = threading.Lock()
        receiver = self

        class Handler(QuietOtlpHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    decoded = decode(body, self.headers.get("Content-Type", ""))
                except Exception as exc:  # a malformed export is refused, the receiver goes on
                    self.send_error(400, f"not an OTLP trace export: {exc}")
                    return
                receiver._keep(decoded)
                self.accepted()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="otlp-receiver", daemon=True)
        self._thread.start()
        self._grpc = None
        self.grpc_port = self._start_grpc()

    def _start_grpc(self) -> int:
        """The gRPC side on a port of its own; 0 when grpcio is not installed."""
        try:
            from concurrent import futures

            import grpc
            from google.protobuf.json_format import MessageToDict
            from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
        except ImportError:
            return 0
        receiver = self

        class Service(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request, context):
                receiver._keep(_hex_ids(MessageToDict(request)))
                return trace_service_pb2.ExportTraceServiceResponse()

        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), self._grpc)
        port = self._grpc.add_insecure_port("127.0.0.1:0")
        self._grpc.start()
        return port

    def _keep(self, decoded: dict) -> None:
        with self._lock:
            self.requests.append(decoded)
            if self.out_path:
                with open(self.out_path, "a") as f:
                    f.write(json.dumps(decoded, separators=(",", ":")) + "\n")

    def spans(self) -> list[dict]:
        """Every span received: its OTLP-JSON dict plus ``service`` (its resource's service.name)."""
        with self._lock:
            return spans_of(self.requests)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._grpc is not None:
            self._grpc.stop(grace=2).wait()


def spans_of(exports: list[dict]) -> list[dict]:
    out = []
    for req in exports:
        for rs in req.get("resourceSpans", []):
            attrs = {a["key"]: a.get("value", {}) for a in rs.get("resource", {}).get("attributes", [])}
            service = attrs.get("service.name", {}).get("stringValue")
            for ss in rs.get("scopeSpans", []):
                out += [{**span, "service": service} for span in ss.get("spans", [])]
    return out


class ReceiverProcess:
    """``OtlpReceiver`` in a process of its own (decoding exports takes the GIL, which a client timing
    requests in this process must not wait for); what it received is read back from its file."""

    def __init__(self, out_dir: str, label: str = "otlp"):
        self.out_path = os.path.join(out_dir, f"spans-{label}.jsonl")
        self.proc = subprocess.Popen([sys.executable, "-m", "sglang_tracing.app.otlp_receiver", "--out-dir", out_dir,
                                      "--label", label], stdout=subprocess.PIPE, text=True, start_new_session=True)
        line = self.proc.stdout.readline().split()
        if len(line) != 2 or not all(p.isdigit() for p in line):
            self.proc.kill()
            raise RuntimeError(f"the OTLP receiver did not start: {' '.join(line)!r}")
        self.port, self.grpc_port = int(line[0]), int(line[1])
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.grpc_endpoint = f"127.0.0.1:{self.grpc_port}" if self.grpc_port else None  # host:port, as gRPC has it

    def spans(self) -> list[dict]:
        if not os.path.exists(self.out_path):
            return []
        with open(self.out_path) as f:
            return spans_of([json.loads(line) for line in f if line.endswith("\n")])

    def wait_for(self, predicate, timeout: float = 30) -> bool:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if predicate(self.spans()):
                return True
            time.sleep(0.2)
        return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sglang_tracing.app.otlp_receiver")
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--label", default="otlp")
    args = parser.parse_args(argv)
    receiver = OtlpReceiver(args.out_dir, args.label)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: done.set())
    print(receiver.port, receiver.grpc_port, flush=True)
    parent = os.getppid()
    while not done.wait(1.0):
        if os.getppid() != parent:  # whoever started it is gone: no receiver is left behind
            break
    receiver.stop()


if __name__ == "__main__":
    main()


def write_manifest(out_dir: str, role: str, command: list[str] | None = None,
                   received_over: str | None = "OTLP/HTTP") -> str:
    """A manifest for spans another program sent (the router's), or wrote (the PD client's stamps,
    ``received_over`` None): who it was, on which host."""
    path = os.path.join(out_dir, manifest_mod.MANIFEST)
    data = {"format": "sglang-tracing", "format_version": manifest_mod.FORMAT_VERSION, "command": command or [],
            "identity": {"service_name": role, "server_role": role, "host_name": socket.gethostname()},
            "host": {"hostname": socket.gethostname()}, "server_args": {}}
    if received_over:
        data["received_over"] = received_over
    with open(path, "w") as f:
        json.dump(data, f, indent=1)
    return path
