"""Record the example nsys capture and ncu attention profiles (run on the GPU host).

    python3 scripts/gpu_profiles.py --model DIR --out DIR [--nsys PATH] [--ncu PATH]
        [--ncu-backends triton,flashinfer] [--skip-nsys]

One after another: a traced triton server under Nsight Systems (capture range = served
forwards, layer-level NVTX) and, per backend, a traced server under Nsight Compute (`--set full
--clock-control none`, attention kernels only), each driven with a few 512-token requests.
ncu profiles the last two prefill-attention launches and the first two decode-attention
launches (--launch-skip 30 --launch-count 4 over the matching kernels of a 32-layer model).
"""
from __future__ import annotations

import argparse
import os
import signal
import time

from sglang_tracing.models.builder import prompt_of_length
from sglang_tracing.nsys import DEFAULT_NSYS_ARGS, NCU_ARGS, NCU_SERVER_ARGS, export_ncu_csv, export_sqlite
from sglang_tracing.serving import Server, wait_for_exporters


def drive(server: Server, n: int, prompt_len: int, out_len: int) -> None:
    for i in range(n):
        server.generate(prompt_of_length(prompt_len, seed=7 + i, vocab_size=32000), max_new_tokens=out_len,
                        stream=True, timeout=900)


def _finish(name: str, d: str, args) -> None:
    wait_for_exporters(d, timeout=60)
    if name == "nsys":
        print("nsys sqlite:", export_sqlite(args.nsys, d), flush=True)
        return
    rep = os.path.join(d, "attention.ncu-rep")
    if os.path.exists(rep):
        export_ncu_csv(args.ncu, rep)
        print(f"{name}: ncu report and CSVs written", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--nsys", default="/opt/nvidia/nsight-compute/2025.3.1/host/target-linux-x64/nsys")
    ap.add_argument("--ncu", default="/usr/local/cuda/bin/ncu")
    ap.add_argument("--ncu-backends", default="triton")
    ap.add_argument("--skip-nsys", action="store_true")
    ap.add_argument("--mem-fraction", type=float, default=0.5)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    common = ["--load-format", "dummy", "--mem-fraction-static", str(args.mem_fraction), "--log-level", "warning"]
    plans = []
    if not args.skip_nsys:
        d = os.path.join(args.out, "nsys-triton")
        plans.append(("nsys", d, dict(extra_args=["--attention-backend", "triton", *common],
                                      tracing_args=["--trace-level", "layer"],
                                      env={"SGLANG_TRACE_CAPTURE_STEPS": "0:100000"},
                                      wrap=[args.nsys, "profile", *DEFAULT_NSYS_ARGS, "-o", os.path.join(d, "nsys")])))
    for backend in [b for b in args.ncu_backends.split(",") if b]:
        d = os.path.join(args.out, f"ncu-{backend}")
        plans.append((f"ncu-{backend}", d, dict(
            extra_args=["--attention-backend", backend, *NCU_SERVER_ARGS, *common],
            wrap=[args.ncu, *NCU_ARGS, "-o", os.path.join(d, "attention")])))
    t0 = time.time()
    for name, d, kwargs in plans:  # one at a time: SGLang sizes its KV pool from the free memory
        os.makedirs(d, exist_ok=True)
        server = Server(args.model, trace_dir=d, log_path=os.path.join(args.out, f"server-{name}.log"), **kwargs)
        try:
            server.wait_ready(timeout=400)
            print(f"{name}: ready at {time.time() - t0:.0f} s", flush=True)
            if name == "nsys":
                drive(server, 4, 512, 32)
            else:
                drive(server, 1, 512, 4)
            time.sleep(1)
        finally:
            server.stop(sig=signal.SIGINT, timeout=180)
        print(f"{name}: stopped at {time.time() - t0:.0f} s", flush=True)
        _finish(name, d, args)


if __name__ == "__main__":
    main()
