"""Record example traces (run on the GPU host; works on CPU for a smoke run with --cpu).

    python3 scripts/gpu_examples.py --model DIR --out DIR [--backends triton,flashinfer]
        [--prompt-len 512] [--output-len 128] [--batch 32] [--mem-fraction 0.45] [--cpu]

Per backend, one traced server (started one after another: SGLang sizes its KV pool from the
memory free at start), one streamed request and then a batch of concurrent ones. The client's
own timings go to client-<backend>.json so reports can be checked against them.
"""
from __future__ import annotations

import argparse
import json
import os
import time

from sglang_tracing.serving import CPU_ARGS, Server, wait_for_exporters
from sglang_tracing.workload import describe, single_and_batch


def run_backend(backend: str, args) -> None:
    trace_dir = os.path.join(args.out, backend)
    extra = (CPU_ARGS if args.cpu else ["--attention-backend", backend, "--load-format", "dummy",
                                        "--mem-fraction-static", str(args.mem_fraction), "--log-level", "warning"])
    tracing = ["--profile-steps", args.profile_steps] if args.profile_steps else []
    server = Server(args.model, trace_dir=trace_dir, extra_args=extra + args.extra.split(),
                    tracing_args=tracing, log_path=os.path.join(args.out, f"server-{backend}.log"))
    t = time.time()
    try:
        server.wait_ready(timeout=args.ready_timeout)
        print(f"{backend}: ready in {time.time() - t:.0f} s", flush=True)
        result = single_and_batch(server, args.prompt_len, args.output_len, args.batch, args.vocab)
        result["server_cmd"] = server.cmd
        with open(os.path.join(args.out, f"client-{backend}.json"), "w") as f:
            json.dump(result, f, indent=1)
        print(f"{backend}: {describe(result)}", flush=True)
        time.sleep(1)
    finally:
        server.stop()
        wait_for_exporters(trace_dir, timeout=60)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--backends", default="triton,flashinfer")
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--mem-fraction", type=float, default=0.45)
    ap.add_argument("--extra", default="", help="more SGLang arguments")
    ap.add_argument("--profile-steps", default="1:3", help="Kineto window of served forwards ('' for none)")
    ap.add_argument("--ready-timeout", type=float, default=420)
    ap.add_argument("--cpu", action="store_true", help="smoke run on CPU")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for backend in args.backends.split(","):
        run_backend(backend, args)


if __name__ == "__main__":
    main()
