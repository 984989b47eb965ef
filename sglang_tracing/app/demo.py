"""The main job on its embedded default: a tiny traced SGLang server on CPU answers a few
requests (shared prefixes, repeats, unrelated prompts); the trace is analyzed and exported.

Each run records into a new trace dir (``traces/demo/<timestamp>`` by default) holding the
trace, the served model's config and tokenizer (``model/``), the server log and the reports."""
from __future__ import annotations

import os
import sys
import time

from sglang_tracing.models.builder import build_model_dir, prompt_of_length
from sglang_tracing.app.serving import CPU_ARGS, Server, ServerError, wait_for_exporters
from sglang_tracing.errors import UsageError

DEMO_ROOT = os.path.join("traces", "demo")


def workload(n: int) -> list[str]:
    system = prompt_of_length(64, seed=1)
    prompts = []
    for i in range(n):
        if i % 3 == 0:
            prompts.append(system + " " + prompt_of_length(32, seed=10 + i))
        elif i % 3 == 1:
            prompts.append(prompt_of_length(96, seed=3))
        else:
            prompts.append(prompt_of_length(80, seed=100 + i))
    return prompts


def new_trace_dir(trace_dir: str | None) -> str:
    """``trace_dir`` (absent or empty), or a new ``traces/demo/<timestamp>``; raises ValueError otherwise."""
    trace_dir = os.path.abspath(trace_dir or os.path.join(DEMO_ROOT, time.strftime("%Y%m%d-%H%M%S")))
    if os.path.isdir(trace_dir) and os.listdir(trace_dir):
        raise UsageError(f"{trace_dir} is not empty: each demo run records into a new trace dir "
                         f"(leave out --trace-dir for traces/demo/<timestamp>)")
    os.makedirs(trace_dir, exist_ok=True)
    return trace_dir


def run(trace_dir: str | None = None, requests: int = 12) -> int:
    from sglang_tracing.analyzer import api
    from sglang_tracing.analyzer.analyses.story import MIN_TREND_TOKENS
    from sglang_tracing.launch_server import require_sglang

    require_sglang()
    trace_dir = new_trace_dir(trace_dir)
    log = os.path.join(trace_dir, "server.log")
    output_tokens = 2 * MIN_TREND_TOKENS  # enough decode gaps per request for the story's ITL trend
    model_dir = build_model_dir("tiny-llama", os.path.join(trace_dir, "model"))
    print(f"starting a traced SGLang server on CPU (tiny Llama, dummy weights; log: {log}) ...", flush=True)
    t0 = time.time()
    server = Server(str(model_dir), trace_dir=trace_dir, extra_args=CPU_ARGS, log_path=log)
    try:
        server.wait_ready(timeout=600)
        print(f"ready in {time.time() - t0:.0f} s (one request served); sending {requests} requests, "
              f"{output_tokens} output tokens each, 4 at a time", flush=True)
        outs = server.generate_all(workload(requests), output_tokens, concurrency=4, stream=True)
        cached = sum(o["meta_info"]["cached_tokens"] > 0 for o in outs)
        print(f"{len(outs)} requests answered, {cached} with cached prefix tokens", flush=True)
        time.sleep(1)
    except ServerError as exc:
        print(f"sglang-trace: error: demo failed: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:  # HTTP errors and timeouts are OSErrors
        print(f"sglang-trace: error: demo failed: a request got no answer ({exc}); log: {log}", file=sys.stderr)
        return 1
    finally:
        server.stop()
    wait_for_exporters(trace_dir)
    written = api.analyze(trace_dir)
    pftrace = os.path.join(trace_dir, "trace.pftrace")
    counts = api.to_perfetto(trace_dir, pftrace)
    print(f"\ntrace dir:      {trace_dir}")
    for f in sorted(os.listdir(trace_dir)):
        if f.startswith(("spans-", "manifest", "nvml-", "gpu-")):
            print(f"  {f}")
    print("reports:")
    for p in written:
        print(f"  {p}")
    print(f"perfetto trace: {pftrace} ({counts['slices']} slices; open it at ui.perfetto.dev)")
    print("\n" + open(os.path.join(trace_dir, "reports", "story.txt")).read())
    return 0
