"""The main job on its embedded default: a tiny traced SGLang server on CPU answers a few
requests (shared prefixes, repeats, unrelated prompts); the trace is analyzed and exported."""
from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

from sglang_tracing.models.builder import build_model_dir, prompt_of_length
from sglang_tracing.serving import CPU_ARGS, Server, wait_for_exporters


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


def run(trace_dir: str, requests: int = 12) -> None:
    from sglang_tracing.analyzer import api

    trace_dir = os.path.abspath(trace_dir)
    model_dir = build_model_dir("tiny-llama", os.path.join(trace_dir + "-model"))
    print(f"starting a traced SGLang server on CPU (tiny Llama at {model_dir}) ...", flush=True)
    t0 = time.time()
    server = Server(str(model_dir), trace_dir=trace_dir, extra_args=CPU_ARGS,
                    log_path=trace_dir + "-server.log")
    try:
        server.wait_ready(timeout=600)
        print(f"ready in {time.time() - t0:.0f} s; sending {requests} requests, 4 at a time", flush=True)
        with ThreadPoolExecutor(4) as pool:
            outs = list(pool.map(lambda p: server.generate(p, max_new_tokens=16, stream=True), workload(requests)))
        cached = sum(o["meta_info"]["cached_tokens"] > 0 for o in outs)
        print(f"{len(outs)} requests answered, {cached} with cached prefix tokens", flush=True)
        time.sleep(1)
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
