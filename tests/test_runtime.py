"""The runtime pieces on their own: exporter process (file + OTLP collector), plugin inertness, hooks."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from sglang_tracing import semconv as sc
from sglang_tracing.runtime.ids import request_root_span_id, trace_id_for
from sglang_tracing.runtime.records import MSG_RECORDS, MSG_RESOURCE, PARENT_IS_REQUEST_ROOT, encode_message


class _Collector(BaseHTTPRequestHandler):
    bodies: list[bytes] = []

    def do_POST(self):  # noqa: N802
        _Collector.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_exporter_writes_file_and_collector(tmp_path):
    httpd = HTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    out = tmp_path / "spans.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "sglang_tracing.runtime.exporter", "--out", str(out),
                             "--otlp-endpoint", f"http://127.0.0.1:{httpd.server_port}"], stdin=subprocess.PIPE)
    records = [(sc.REQUEST_DECODE, 10, 20, 7, PARENT_IS_REQUEST_ROOT, "req:abc",
                {sc.RID: "abc", sc.TOKEN_TIMES: [10, 15, 20]}, ()),
               (sc.FORWARD, 1, 2, 8, 0, "", {sc.BATCH_SIZE: 3}, (("x", 1, {}),))]
    proc.stdin.write(encode_message(MSG_RESOURCE, {"service.name": "sglang", sc.RES_ROLE: "scheduler"}))
    proc.stdin.write(encode_message(MSG_RECORDS, records))
    proc.stdin.close()  # end of pipe: the exporter writes what it has and exits
    proc.wait(30)
    deadline = time.time() + 10
    while out.with_name(out.name + ".active").exists() and time.time() < deadline:
        time.sleep(0.05)
    httpd.shutdown()
    line = json.loads(out.read_text().splitlines()[0])
    spans = line["resourceSpans"][0]["scopeSpans"][0]["spans"]
    decode = next(s for s in spans if s["name"] == sc.REQUEST_DECODE)
    assert decode["traceId"] == f"{trace_id_for('req:abc'):032x}"
    assert decode["parentSpanId"] == f"{request_root_span_id('abc'):016x}"
    assert _Collector.bodies, "nothing reached the OTLP collector"


def test_plugin_is_inert_without_trace_dir(monkeypatch):
    from sglang.srt.plugins.hook_registry import HookRegistry

    from sglang_tracing import plugin

    monkeypatch.delenv("SGLANG_TRACE_DIR", raising=False)
    before = dict(HookRegistry._hooks)
    plugin.activate()
    assert dict(HookRegistry._hooks) == before and not plugin._activated


def test_hook_passes_result_and_exception_through(monkeypatch):
    from sglang_tracing.patches import _hooks
    from sglang_tracing.runtime import recorder

    class FakeRecorder:
        failures = []

        def hook_failed(self, name, exc):
            self.failures.append((name, type(exc).__name__))

    def boom(*a, **k):
        raise ValueError("ours")

    monkeypatch.setattr(recorder, "_recorder", FakeRecorder())
    hook = _hooks.around("h", after=boom)
    assert hook(lambda x: x * 2, 21) == 42  # our failure never reaches the caller
    assert FakeRecorder.failures == [("h", "ValueError")]

    def original():
        raise KeyError("theirs")

    with pytest.raises(KeyError, match="theirs"):
        hook(original)
    monkeypatch.setattr(recorder, "_recorder", None)  # tracing off: the fast path calls straight through
    assert _hooks.around("h", after=boom)(lambda: "ok") == "ok"


def test_launcher_rejects_bad_options():
    done = subprocess.run([sys.executable, "-m", "sglang_tracing.launch_server", "--model-path", "x"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "--trace-dir" in done.stderr and "Traceback" not in done.stderr
    done = subprocess.run([sys.executable, "-m", "sglang_tracing.launch_server", "--trace-dir", "/tmp/x",
                           "--profile-steps", "a:b"], capture_output=True, text=True)
    assert done.returncode == 2 and "START:N" in done.stderr


def test_layer_ranges_name_the_graph_replayed_phases():
    """SGLang's own ServerArgs defaults: decode and (0.5.17's breakable) prefill replay CUDA graphs,
    so layer-level ranges show only with graphs disabled; the launcher warns with the flags to add."""
    import dataclasses
    import types

    from sglang.srt.server_args import ServerArgs

    from sglang_tracing.patches.layer_ranges import graph_phases

    if dataclasses.is_dataclass(ServerArgs):
        defaults = {f.name: f.default for f in dataclasses.fields(ServerArgs)}
    else:  # msgspec Struct (SGLang >= 0.5.23)
        import msgspec

        defaults = {f.name: f.default for f in msgspec.structs.fields(ServerArgs)}
    phases = graph_phases(types.SimpleNamespace(**defaults))
    assert phases[0] == "decode"
    if "disable_prefill_cuda_graph" in defaults:
        assert phases == ["decode", "prefill"]
        assert graph_phases(types.SimpleNamespace(**{**defaults, "disable_prefill_cuda_graph": True})) == ["decode"]
    assert graph_phases(types.SimpleNamespace(**{**defaults, "disable_cuda_graph": True})) == []
