"""The runtime pieces on their own: exporter process (file + OTLP collector), plugin inertness, hooks."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from sglang_tracing import semconv as sc
from sglang_tracing.runtime.ids import request_root_span_id
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


def _export(out: Path, role: str, records: list, endpoint: str | None = None) -> list[dict]:
    """Run one exporter process over ``records`` until end of pipe; the spans it wrote to ``out``."""
    argv = [sys.executable, "-m", "sglang_tracing.runtime.exporter", "--out", str(out)]
    proc = subprocess.Popen(argv + (["--otlp-endpoint", endpoint] if endpoint else []), stdin=subprocess.PIPE)
    proc.stdin.write(encode_message(MSG_RESOURCE, {"service.name": "sglang", sc.RES_ROLE: role}))
    proc.stdin.write(encode_message(MSG_RECORDS, records))
    proc.stdin.close()  # end of pipe: the exporter writes what it has and exits
    proc.wait(30)
    deadline = time.time() + 10
    while out.with_name(out.name + ".active").exists() and time.time() < deadline:
        time.sleep(0.05)
    return [sp for line in out.read_text().splitlines() for rs in json.loads(line)["resourceSpans"]
            for ss in rs["scopeSpans"] for sp in ss["spans"]]


def test_exporter_writes_file_and_collector(tmp_path):
    """A request's spans from two processes join one trace: the scheduler's child names the tokenizer's root
    as its parent. The collector gets the same spans as the file (read back with OpenTelemetry's protobuf)."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    httpd = HTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    root = (sc.REQUEST, 5, 25, request_root_span_id("abc"), 0, "req:abc", {sc.RID: "abc"}, ())  # as the tokenizer
    tokenizer = _export(tmp_path / "spans-tokenizer.jsonl", "tokenizer", [root])
    records = [(sc.REQUEST_DECODE, 10, 20, 7, PARENT_IS_REQUEST_ROOT, "req:abc",
                {sc.RID: "abc", sc.TOKEN_TIMES: [10, 15, 20]}, ()),
               (sc.FORWARD, 1, 2, 8, 0, "", {sc.BATCH_SIZE: 3}, (("x", 1, {}),))]
    scheduler = _export(tmp_path / "spans-scheduler.jsonl", "scheduler", records,
                        f"http://127.0.0.1:{httpd.server_port}")
    httpd.shutdown()
    (root_span,) = tokenizer
    decode, forward = (next(s for s in scheduler if s["name"] == n) for n in (sc.REQUEST_DECODE, sc.FORWARD))
    assert decode["traceId"] == root_span["traceId"] and decode["parentSpanId"] == root_span["spanId"]
    assert forward["traceId"] != root_span["traceId"] and not forward.get("parentSpanId")
    assert len(decode["traceId"]) == 32 and int(decode["traceId"], 16) != 0  # W3C: 16 bytes, not all zero
    assert _Collector.bodies, "nothing reached the OTLP collector"
    wire = set()
    for body in _Collector.bodies:
        sent = ExportTraceServiceRequest()
        sent.ParseFromString(body)
        wire |= {(sp.name, sp.trace_id.hex(), sp.span_id.hex(), sp.parent_span_id.hex())
                 for rs in sent.resource_spans for ss in rs.scope_spans for sp in ss.spans}
    assert wire == {(s["name"], s["traceId"], s["spanId"], s.get("parentSpanId") or "") for s in scheduler}


def test_plugin_is_inert_without_trace_dir(monkeypatch):
    from sglang.srt.plugins.hook_registry import HookRegistry

    from sglang_tracing import plugin

    monkeypatch.delenv("SGLANG_TRACE_DIR", raising=False)
    before = dict(HookRegistry._hooks)
    plugin.activate()
    assert dict(HookRegistry._hooks) == before and not plugin._activated


def test_plugin_stays_inert_on_an_older_sglang(monkeypatch, tmp_path, caplog):
    """The version guard (``_instruments``, as opentelemetry-python-contrib instrumentors declare it):
    an SGLang older than the patches know is left untouched, with one error line saying why."""
    import tomllib
    from importlib import metadata

    from sglang.srt.plugins.hook_registry import HookRegistry

    from sglang_tracing import plugin

    extra = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]
    assert [r.replace(" ", "") for r in plugin._instruments] == extra["optional-dependencies"]["sglang"]
    real_version = metadata.version
    installed = {"sglang": "0.5.16"}
    monkeypatch.setattr(metadata, "version", lambda name: installed.get(name) or real_version(name))
    monkeypatch.setenv("SGLANG_TRACE_DIR", str(tmp_path / "trace"))
    before = dict(HookRegistry._hooks)
    plugin.activate()
    assert dict(HookRegistry._hooks) == before and not plugin._activated
    assert "sglang 0.5.16 is installed; tracing needs sglang >= 0.5.17" in caplog.text
    for newer in ("0.5.17", "0.5.23", "0.6.0.dev3+g1234"):
        installed["sglang"] = newer
        assert plugin.dependency_conflict() is None, newer


def test_hook_passes_result_and_exception_through():
    from sglang_tracing.patches._wrappers import around
    from sglang_tracing.runtime import recorder
    from span_log import SpanLog

    def boom(*a, **k):
        raise ValueError("ours")

    rec = SpanLog()
    hook = around("h", state=None, after=boom)
    with recorder.use(rec):
        assert hook(lambda x: x * 2, 21) == 42  # our failure never reaches the caller
        assert rec.failures == [("h", "ValueError")]

        def original():
            raise KeyError("theirs")

        with pytest.raises(KeyError, match="theirs"):
            hook(original)
    with recorder.use(None):  # tracing off: the fast path calls straight through, our code never runs
        assert hook(lambda: "ok") == "ok"
    assert rec.failures == [("h", "ValueError")]


def test_each_hook_function_sees_one_call_and_the_originals_own_arguments():
    """``before`` -> token; ``after`` reads the token, the original's timing and result, and the original's
    arguments by their own names (a keyword SGLang passes lands on the parameter of that name)."""
    from sglang_tracing.patches._wrappers import around
    from sglang_tracing.runtime import recorder
    from span_log import SpanLog

    seen = []

    def before(state, call, /, cache, key, *, limit=0):
        return ("token", state, key, limit)

    def after(state, call, /, cache, key, *, limit=0):
        seen.append((call.token, call.result, call.start_ns <= call.end_ns, call.rec))

    rec = SpanLog()
    hook = around("lookup", state="st", before=before, after=after)
    with recorder.use(rec):
        assert hook(lambda cache, key, limit=0: key * 2 + limit, "cache", 20, limit=2) == 42
    assert seen == [(("token", "st", 20, 2), 42, True, rec)] and rec.failures == []


def test_a_faulty_hook_is_counted_and_the_set_up_hook_runs_without_a_recorder(caplog):
    """SGLANG_TRACE_INJECT_FAULT naming a hook makes our code raise there: the call goes on, the failure is
    counted; a set-up hook runs before any recorder exists and only logs its failure."""
    from sglang_tracing.patches._wrappers import after_setup, around
    from sglang_tracing.runtime import recorder
    from span_log import SpanLog

    rec, inits = SpanLog(), []
    with recorder.use(rec):
        assert around("h", state=None, inject_fault="h")(lambda: 7) == 7
    assert rec.failures == [("h", "InjectedFault")]
    on_init = after_setup("init", state="st", on_init=lambda st, call, /, obj: inits.append((st, obj, call.rec)))
    with recorder.use(None):
        assert on_init(lambda obj: "built", "obj") == "built"
        assert after_setup("init", state=None, on_init=lambda *a: None, inject_fault="init")(lambda: 1) == 1
    assert inits == [("st", "obj", None)]
    assert [r.levelname for r in caplog.records if "init failed" in r.getMessage()] == ["WARNING"]


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


_ACTIVATE = """
import importlib, json, os, pkgutil, sys
process, later, lazy_target = sys.argv[1:]
importlib.import_module(process)  # what this SGLang process has imported when it loads plugins
from sglang.srt.plugins import load_plugins
from sglang.srt.plugins.hook_registry import HookRegistry
before = set(sys.modules)
load_plugins()
from sglang_tracing.patches import _targets
out = {"new": sorted(set(sys.modules) - before), "registered": sorted(HookRegistry._hooks),
       "waiting": list(_targets.waiting), "built": os.listdir(os.environ["TORCH_EXTENSIONS_DIR"])}
importlib.import_module(later)  # SGLang goes on importing: the hooks waiting for it apply now
owner, attr = lazy_target.rsplit(".", 1)
out["lazy_applied"] = hasattr(getattr(pkgutil.resolve_name(owner), attr), "__wrapped__")
out["cpp_loaded"] = "sglang.srt.mem_cache.radix_cache_cpp" in sys.modules
out["built_after"] = os.listdir(os.environ["TORCH_EXTENSIONS_DIR"])
print(json.dumps(out))
"""


@pytest.mark.parametrize("process, later, lazy_target", [
    ("sglang.srt.managers.scheduler", "sglang.srt.model_executor.model_runner",
     "sglang.srt.model_executor.model_runner.ModelRunner.forward"),
    ("sglang.launch_server", "sglang.srt.entrypoints.http_server",
     "sglang.srt.managers.tokenizer_manager.TokenizerManager._init_req_state"),
])
def test_activation_imports_no_module_sglang_has_not_imported(tmp_path, process, later, lazy_target):
    """Activating the plugin (SGLang's own load_plugins, at the point its scheduler process and its
    ``python -m sglang.launch_server`` call it) adds our modules only: in particular not
    radix_cache_cpp, whose import builds a C++ extension under TORCH_EXTENSIONS_DIR. Hooks on modules
    SGLang imports afterwards apply when it does."""
    ext = tmp_path / "torch_extensions"
    ext.mkdir()
    env = dict(os.environ, SGLANG_TRACE_DIR=str(tmp_path / "trace"), TORCH_EXTENSIONS_DIR=str(ext))
    done = subprocess.run([sys.executable, "-c", _ACTIVATE, process, later, lazy_target], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.splitlines()[-1])
    assert [m for m in out["new"] if not m.startswith("sglang_tracing")] == []
    assert out["built"] == []
    cpp = "sglang.srt.mem_cache.radix_cache_cpp.RadixCacheCpp.insert"
    assert cpp in out["waiting"] and cpp not in out["registered"]
    assert lazy_target in out["waiting"] and out["lazy_applied"]
    assert not out["cpp_loaded"] and out["built_after"] == []  # applying late hooks imported nothing either
    if process.endswith("scheduler"):  # hooks on modules the process has loaded are registered at once
        assert "sglang.srt.managers.scheduler.Scheduler.run_batch" in out["registered"]
        assert "sglang.srt.mem_cache.radix_cache.RadixCache.match_prefix" in out["registered"]


_LATE = """
import inspect, json, logging, sys
logging.basicConfig(level=logging.WARNING)
from sglang.srt.plugins.hook_registry import HookRegistry
from sglang_tracing.patches import _targets
calls = []
def hook(original, *args, **kwargs):
    calls.append(args[1:])
    return original(*args, **kwargs)
skipped = []
now = _targets.register({"latepkg.cache.Cache.match_prefix": hook, "latepkg.cache.Cache.insert": hook,
                         "latepkg.gone.Cache.insert": hook, "json.JSONDecoder.no_such_method": hook}, skipped)
loaded_at_register = "latepkg.cache" in sys.modules
from latepkg.cache import Cache
print(json.dumps({"now": now, "skipped": skipped, "loaded_at_register": loaded_at_register,
                  "result": Cache().match_prefix(41), "calls": calls, "waiting": _targets.waiting,
                  "registered": sorted(HookRegistry._hooks), "source_readable":
                  "def match_prefix" in inspect.getsource(sys.modules["latepkg.cache"])}))
"""


def test_hook_on_a_module_imported_later_applies_then(tmp_path):
    """A target in a module not imported at registration waits for the import, then applies;
    an attribute the class lacks is skipped (logged), never counted as applied."""
    pkg = tmp_path / "latepkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "cache.py").write_text("class Cache:\n    def match_prefix(self, x):\n        return x + 1\n")
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    done = subprocess.run([sys.executable, "-c", _LATE], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.splitlines()[-1])
    assert out["now"] == 0 and out["skipped"] == ["json.JSONDecoder.no_such_method"]
    assert out["loaded_at_register"] is False
    assert out["result"] == 42 and out["calls"] == [[41]]
    assert "latepkg.cache.Cache.match_prefix" in out["registered"]
    assert "latepkg.cache.Cache.insert" not in out["registered"]
    assert out["waiting"] == [] and out["source_readable"]
    assert "latepkg.cache.Cache.insert left untraced" in done.stderr
    assert "latepkg.gone.Cache.insert left untraced" in done.stderr


def test_reset_forgets_hooks_still_waiting_for_their_module(tmp_path, monkeypatch):
    """Like OpenTelemetry's uninstrument: after ``reset`` a module imported later is left as it is."""
    import importlib
    import sys as _sys

    from sglang.srt.plugins.hook_registry import HookRegistry

    from sglang_tracing.patches import _targets

    pkg = tmp_path / "resetpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "cache.py").write_text("class Cache:\n    def match_prefix(self, x):\n        return x + 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    target = "resetpkg.cache.Cache.match_prefix"
    assert _targets.register({target: lambda original, *a, **k: original(*a, **k)}, []) == 0
    assert target in _targets.waiting and _targets._watcher in _sys.meta_path
    _targets.reset()
    assert _targets.waiting == [] and _targets._watcher not in _sys.meta_path
    module = importlib.import_module("resetpkg.cache")
    assert not hasattr(module.Cache.match_prefix, "__wrapped__") and target not in HookRegistry._hooks
    for name in ("resetpkg.cache", "resetpkg"):
        monkeypatch.delitem(_sys.modules, name)


def test_ranges_are_torch_annotations_only_while_a_profiler_records():
    """Kineto records no NVTX: while a torch profiler records, span ranges and layer ranges are also
    record_function ranges of the same names; once it stops, none are opened."""
    import torch

    from sglang_tracing.patches import layer_ranges
    from sglang_tracing.runtime import nvtx_ranges

    layer = layer_ranges.ranged(lambda x: x + 1, None, "layer.0")
    forward = nvtx_ranges.range_name(sc.MODEL_FORWARD, 0xABC)
    assert not nvtx_ranges.follow_torch_profiler() and nvtx_ranges.annotation("x") is None
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        assert nvtx_ranges.follow_torch_profiler()
        nvtx_ranges.push(sc.MODEL_FORWARD, 0xABC)
        assert layer(1) == 2 and layer(2) == 3
        nvtx_ranges.pop()
    assert not nvtx_ranges.follow_torch_profiler()
    assert layer(3) == 4  # after the profiler: no annotation, the result unchanged
    names = [e.name for e in prof.events()]
    assert names.count("layer.0") == 2 and names.count(forward) == 1
    with pytest.raises(ZeroDivisionError):  # the wrapped forward's exception passes through
        layer_ranges.ranged(lambda x: x / 0, None, "layer.1")(1)
