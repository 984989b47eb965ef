"""What a process still holds when it is stopped reaches its exporter: a real recorder and exporter in a
child process that dies of SIGTERM (as SGLang's scheduler does when its process group is stopped)."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap

from sglang_tracing.app.serving import wait_for_exporters

CHILD = textwrap.dedent("""
    import os, signal, sys, time
    from sglang_tracing.config import TraceConfig
    from sglang_tracing.runtime import recorder
    from sglang_tracing.runtime.exporter import active_marker
    rec = recorder.start(TraceConfig(trace_dir=sys.argv[1], flush_ms=600_000), "scheduler")  # no periodic flush
    while not os.path.exists(active_marker(rec.span_file)):  # the exporter is up (as in a serving process)
        time.sleep(0.01)
    for i in range(int(sys.argv[2])):
        rec.emit("test.span", i, i + 1, {"i": i})
    if sys.argv[3] == "default":
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # what the process had without our handler
    os.kill(os.getpid(), signal.SIGTERM)
""")


def _spans_written(trace_dir) -> list[int]:
    found = []
    for path in trace_dir.glob("spans-*.jsonl"):
        for line in path.read_text().splitlines():
            for rs in json.loads(line)["resourceSpans"]:
                for ss in rs["scopeSpans"]:
                    found += [int(a["value"]["intValue"]) for s in ss["spans"] if s["name"] == "test.span"
                              for a in s["attributes"] if a["key"] == "i"]
    return sorted(found)


def _run(tmp_path, handler: str) -> tuple[int, list[int]]:
    trace_dir = tmp_path / handler
    done = subprocess.run([sys.executable, "-c", CHILD, str(trace_dir), "50", handler], timeout=60)
    assert wait_for_exporters(str(trace_dir), timeout=30)
    return done.returncode, _spans_written(trace_dir)


def test_sigterm_flushes_what_the_process_holds_then_still_kills_it(tmp_path):
    code, written = _run(tmp_path, "ours")
    assert code == -signal.SIGTERM  # it died of the signal, as before
    assert written == list(range(50))


def test_without_the_flush_those_records_are_lost(tmp_path):
    """The control: the same child with SIGTERM at its default loses every queued record."""
    code, written = _run(tmp_path, "default")
    assert code == -signal.SIGTERM and written == []
