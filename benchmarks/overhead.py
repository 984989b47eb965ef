"""Tracing overhead, side by side: untraced vs default tracing vs layer-level NVTX.

All servers run at once with the same arguments on the same device and are driven in
interleaved rounds (order rotated each round), so drift hits every configuration alike.

    python3 benchmarks/overhead.py --model DIR [--rounds 3] [--prompt-len 512] [--output-len 128]
        [--concurrency 32] [--mem-fraction 0.25] [--extra "--attention-backend triton"] [--cpu]

Prints, per configuration: batch-1 TTFT and mean ITL, and output throughput at the given
concurrency, each as a ratio to the untraced server (medians over rounds).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import tempfile
import time

from sglang_tracing.models.builder import prompt_of_length
from sglang_tracing.serving import CPU_ARGS, Server, wait_for_exporters
from sglang_tracing.workload import concurrent

CONFIGS = {"untraced": None, "traced": ["--trace-level", "batch"], "traced-layer": ["--trace-level", "layer"]}


def batch1(server: Server, args, seed: int) -> tuple[float, float]:
    r = server.generate(prompt_of_length(args.prompt_len, seed=seed, vocab_size=args.vocab),
                        max_new_tokens=args.output_len, stream=True, timeout=600)
    c = r["client"]["chunk_ns"]
    ttft = c[0] - r["client"]["sent_ns"]
    itl = (c[-1] - c[0]) / max(1, len(c) - 1)
    return ttft, itl


def throughput(server: Server, args, seed: int) -> float:
    prompts = [prompt_of_length(args.prompt_len, seed=seed * 1000 + i, vocab_size=args.vocab)
               for i in range(args.concurrency)]
    return concurrent(server, prompts, args.output_len, args.concurrency, stream=False)["output_tok_per_s"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch1-samples", type=int, default=5, help="batch-1 requests per server per round")
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--mem-fraction", type=float, default=0.35)
    ap.add_argument("--max-total-tokens", type=int, default=24576, help="same KV pool for every server")
    ap.add_argument("--extra", default="--attention-backend triton")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--keep", help="keep the traced servers' trace dirs under this dir")
    ap.add_argument("--cpu", action="store_true")
    args = ap.parse_args()
    base = CPU_ARGS if args.cpu else ["--load-format", "dummy", "--mem-fraction-static", str(args.mem_fraction),
                                      "--max-total-tokens", str(args.max_total_tokens), "--log-level", "warning",
                                      *shlex.split(args.extra)]
    work = args.keep or tempfile.mkdtemp(prefix="overhead-")
    os.makedirs(work, exist_ok=True)
    servers = {}
    names = args.configs.split(",")
    results = {name: {"ttft": [], "itl": [], "tput": []} for name in names}
    try:
        # One after another: SGLang sizes its KV pool from the memory free when it starts.
        for name in names:
            tracing = CONFIGS[name]
            servers[name] = Server(args.model, trace_dir=os.path.join(work, name) if tracing is not None else None,
                                   extra_args=base, tracing_args=tracing, log_path=os.path.join(work, f"{name}.log"))
            t = time.time()
            servers[name].wait_ready(timeout=600)
            print(f"{name}: ready in {time.time() - t:.0f} s", flush=True)
        for name in names:  # warm every server with the shapes it will see
            batch1(servers[name], args, seed=0)
            throughput(servers[name], args, seed=0)
        for rnd in range(args.rounds):
            order = names[rnd % len(names):] + names[:rnd % len(names)]
            for i in range(args.batch1_samples):
                for name in order:
                    ttft, itl = batch1(servers[name], args, seed=(rnd + 1) * 100 + i)
                    results[name]["ttft"].append(ttft)
                    results[name]["itl"].append(itl)
            for name in order:
                results[name]["tput"].append(throughput(servers[name], args, seed=rnd + 1))
    finally:
        for s in servers.values():
            s.stop()
        for name in names:
            if CONFIGS[name] is not None:
                wait_for_exporters(os.path.join(work, name), timeout=60)
    med = {n: {k: statistics.median(v) for k, v in r.items()} for n, r in results.items()}
    ref = med[names[0]]
    print(f"{'config':<14}{'TTFT ms':>10}{'ratio':>8}{'ITL ms':>10}{'ratio':>8}{'tok/s':>10}{'ratio':>8}")
    for n, m in med.items():
        print(f"{n:<14}{m['ttft'] / 1e6:>10.2f}{m['ttft'] / ref['ttft']:>8.3f}{m['itl'] / 1e6:>10.3f}"
              f"{m['itl'] / ref['itl']:>8.3f}{m['tput']:>10.0f}{m['tput'] / ref['tput']:>8.3f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "rounds": results, "medians": med}, f, indent=1)


if __name__ == "__main__":
    main()
