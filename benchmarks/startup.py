"""Start-up time: a server's start to its first answered request, untraced against traced, each server alone.

    python3 benchmarks/startup.py --model /tmp/llama2 --repeats 2 --out benchmarks/results/startup-h200.json
    python3 benchmarks/startup.py --cpu --repeats 1 --out /tmp/startup-cpu.json     # smoke test

Arms: untraced, traced (default level), traced at layer level. Warm: one untimed untraced start first
(OS page cache, Triton/FlashInfer/inductor caches filled: tracing changes no kernel), then ``--repeats``
timed starts of each arm in rotating order. Cold: before each timed start, the page cache is dropped (``/proc/sys/vm/drop_caches``,
root only; the result says whether it was) and the JIT caches point at a new empty folder. The clock runs
from the launch command to the end of the first /generate round trip (one output token).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sglang_tracing.app.serving import CPU_ARGS, Server, wait_for_exporters  # noqa: E402

ARMS = {"untraced": None, "traced": ["--trace-level", "batch"], "traced-layer": ["--trace-level", "layer"]}
JIT_CACHE_ENV = ("TRITON_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR", "FLASHINFER_WORKSPACE_BASE", "TORCH_EXTENSIONS_DIR")


def drop_page_cache() -> bool:
    try:
        subprocess.run(["sync"], check=True)
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def start_once(model: str, args: list[str], tracing: list[str] | None, work: Path, tag: str,
               env: dict | None) -> float:
    trace_dir = str(work / tag) if tracing is not None else None
    t0 = time.monotonic()
    server = Server(model, trace_dir=trace_dir, extra_args=args, tracing_args=tracing, env=env,
                    log_path=str(work / f"{tag}.log"))
    try:
        server.wait_ready(timeout=1800)
        return time.monotonic() - t0
    finally:
        server.stop()
        if trace_dir:
            wait_for_exporters(trace_dir, 60)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model dir (GPU)")
    ap.add_argument("--cpu", action="store_true")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--modes", default="warm,cold", help="warm, cold or both")
    ap.add_argument("--extra", default="--attention-backend triton --load-format dummy --log-level warning")
    ap.add_argument("--keep", help="keep logs and traces here")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if not (args.cpu or args.model):
        ap.exit(2, "startup.py: error: --model DIR or --cpu\n")
    modes = args.modes.split(",")
    if set(modes) - {"warm", "cold"}:
        ap.exit(2, f"startup.py: error: --modes takes warm and/or cold, not {args.modes!r}\n")
    work = Path(args.keep or tempfile.mkdtemp(prefix="startup-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.cpu:
        from sglang_tracing.models.builder import build_model_dir

        model, sglang_args = str(build_model_dir("tiny-llama", work / "tiny-llama")), list(CPU_ARGS)
    else:
        model, sglang_args = args.model, shlex.split(args.extra)
    result: dict = {"args": vars(args), "host": os.uname().nodename, "runs": []}
    if "warm" in modes:  # fill every cache once, untimed
        start_once(model, sglang_args, None, work, "prime", None)
    for mode in modes:
        for r in range(args.repeats):
            names = list(ARMS)[r % len(ARMS):] + list(ARMS)[:r % len(ARMS)]
            for name in names:
                env, dropped = None, None
                if mode == "cold":
                    fresh = tempfile.mkdtemp(prefix="jit-", dir=work)
                    env = {k: os.path.join(fresh, k.lower()) for k in JIT_CACHE_ENV}
                    dropped = drop_page_cache()
                seconds = start_once(model, sglang_args, ARMS[name], work, f"{name}-{mode}-{r}", env)
                result["runs"].append({"arm": name, "mode": mode, "repeat": r, "seconds": round(seconds, 2),
                                       "page_cache_dropped": dropped})
                print(f"{mode} {name}: {seconds:.1f} s", flush=True)
                Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    summary = {}
    for mode in modes:
        base = statistics.median(r["seconds"] for r in result["runs"] if r["mode"] == mode and r["arm"] == "untraced")
        for name in ARMS:
            med = statistics.median(r["seconds"] for r in result["runs"] if r["mode"] == mode and r["arm"] == name)
            summary[f"{mode} {name}"] = {"median_s": round(med, 2), "minus_untraced_s": round(med - base, 2)}
    result["summary"] = summary
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
