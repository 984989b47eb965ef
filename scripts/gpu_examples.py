"""Record the example traces of traces/examples/ (run on the GPU host; works on CPU for a smoke run).

    python3 scripts/gpu_examples.py --model DIR --out DIR [--backends triton,flashinfer]
        [--prompt-len 512] [--output-len 128] [--batch 32] [--mem-fraction 0.4] [--cpu]

For each backend, one traced server (all started together, then driven one at a time): one
request (stream) and then a batch of concurrent requests. The client's own timings go to
client-<backend>.json beside each trace dir so reports can be checked against them.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

from sglang_tracing.models.builder import prompt_of_length
from sglang_tracing.serving import CPU_ARGS, Server, wait_for_exporters


def client_timings(resp: dict) -> dict:
    c = resp["client"]
    chunks = c["chunk_ns"]
    itls = [b - a for a, b in zip(chunks, chunks[1:])]
    return {"rid": resp["meta_info"]["id"], "ttft_ns": chunks[0] - c["sent_ns"] if chunks else None,
            "mean_itl_ns": sum(itls) / len(itls) if itls else None, "e2e_ns": c["done_ns"] - c["sent_ns"],
            "completion_tokens": resp["meta_info"]["completion_tokens"],
            "cached_tokens": resp["meta_info"]["cached_tokens"]}


def drive(server: Server, args) -> dict:
    single = server.generate(prompt_of_length(args.prompt_len, seed=1, vocab_size=args.vocab),
                             max_new_tokens=args.output_len, stream=True, timeout=600)
    prompts = [prompt_of_length(args.prompt_len, seed=100 + i, vocab_size=args.vocab) for i in range(args.batch)]
    t0 = time.time_ns()
    with ThreadPoolExecutor(args.batch) as pool:
        batch = list(pool.map(lambda p: server.generate(p, max_new_tokens=args.output_len, stream=True,
                                                          timeout=600), prompts))
    wall = time.time_ns() - t0
    out_tokens = sum(r["meta_info"]["completion_tokens"] for r in batch)
    return {"single": client_timings(single), "batch": [client_timings(r) for r in batch],
            "batch_wall_ns": wall, "batch_output_tok_per_s": out_tokens / (wall / 1e9)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--backends", default="triton,flashinfer")
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--mem-fraction", type=float, default=0.4)
    ap.add_argument("--profile-steps", default="1:3", help="Kineto window of served forwards ('' for none)")
    ap.add_argument("--cpu", action="store_true", help="smoke run on CPU")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    servers = {}
    for backend in args.backends.split(","):
        trace_dir = os.path.join(args.out, f"{backend}")
        extra = (CPU_ARGS if args.cpu else ["--attention-backend", backend, "--load-format", "dummy",
                                            "--mem-fraction-static", str(args.mem_fraction), "--log-level", "warning"])
        tracing = ["--profile-steps", args.profile_steps] if args.profile_steps else []
        servers[backend] = Server(args.model, trace_dir=trace_dir, extra_args=extra, tracing_args=tracing,
                                  log_path=os.path.join(args.out, f"server-{backend}.log"))
    try:
        for backend, server in servers.items():
            t = time.time()
            server.wait_ready(timeout=900)
            print(f"{backend}: ready after {time.time() - t:.0f} s more", flush=True)
        for backend, server in servers.items():
            result = drive(server, args)
            result["server_cmd"] = server.cmd
            with open(os.path.join(args.out, f"client-{backend}.json"), "w") as f:
                json.dump(result, f, indent=1)
            s = result["single"]
            print(f"{backend}: single TTFT {s['ttft_ns'] / 1e6:.1f} ms, ITL {s['mean_itl_ns'] / 1e6:.2f} ms; "
                  f"batch {result['batch_output_tok_per_s']:.0f} tok/s", flush=True)
            time.sleep(1)
    finally:
        for server in servers.values():
            server.stop()
        for backend in servers:
            wait_for_exporters(os.path.join(args.out, backend), timeout=60)


if __name__ == "__main__":
    main()
