"""Trace volume: bytes a trace takes per request and per forward, at each trace level and with tail-based keep.

    # committed traces (no server): what each recorded, split by span kind
    python benchmarks/volume.py committed traces/examples/h200-llama2-7b-triton traces/examples/h200-ttft-agreement \
        --out benchmarks/results/volume-committed.json
    # live: one server per arm, each alone, the same workload (CPU: --cpu serves the tiny Llama)
    python benchmarks/volume.py live --cpu --requests 64 --concurrency 8 --out benchmarks/results/volume-cpu.json
    python benchmarks/volume.py live --model /tmp/llama2 --requests 512 --concurrency 64 --out volume-h200.json

A span's bytes are its share of the OTLP-JSON line it was written in (its own JSON size over the line's
spans, the line's resource and framing spread the same way), so the shares add up to the files' sizes.
Per request: bytes of request spans (``sglang.request*``) over root spans; per forward: bytes of batch
spans (schedule, forward, result processing, model forward, cache, detokenizer batch) over forward spans
written. ``all_bytes_per_request`` is every span file byte over the requests (what a disk holds per request).
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sglang_tracing import semconv as sc  # noqa: E402
from sglang_tracing.runtime.tail_keep import BATCH_RECORDS  # noqa: E402

ARMS = {  # name -> tracing args
    "request": ["--trace-level", "request"],
    "batch": ["--trace-level", "batch"],
    "layer": ["--trace-level", "layer"],
    "batch, tail keep 1/10 + slow p99, batch spans of kept": [
        "--trace-level", "batch", "--keep-one-in", "10", "--keep-percentile", "99", "--batch-keep", "kept"],
    "batch, tail keep 1/10 + slow p99, batch spans 1/10": [
        "--trace-level", "batch", "--keep-one-in", "10", "--keep-percentile", "99", "--batch-keep", "10"],
}


def _kind(name: str) -> str:
    if name.startswith(sc.REQUEST):
        return "request"
    if name in BATCH_RECORDS:
        return "batch"
    return "own"


def measure(trace_dir: str) -> dict:
    """Bytes by span name and kind, requests, forwards: read with json alone (no analyzer)."""
    by_name: Counter[str] = Counter()
    count: Counter[str] = Counter()
    total = 0
    for path in sorted(Path(trace_dir).glob("spans-*.jsonl*")):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            for line in f:
                if not line.strip():
                    continue
                total += len(line)
                spans = [s for rs in json.loads(line)["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]]
                sizes = [len(json.dumps(s, separators=(",", ":"))) for s in spans]
                whole = sum(sizes) or 1
                for s, size in zip(spans, sizes):
                    by_name[s["name"]] += size * len(line) / whole
                    count[s["name"]] += 1
    kinds: Counter[str] = Counter()
    for name, b in by_name.items():
        kinds[_kind(name)] += b
    requests, forwards = count[sc.REQUEST], count[sc.FORWARD]
    return {
        "trace_dir": trace_dir, "span_file_bytes": total, "requests": requests, "forwards_written": forwards,
        "request_bytes_per_request": round(kinds["request"] / requests) if requests else None,
        "batch_bytes_per_forward": round(kinds["batch"] / forwards) if forwards else None,
        "all_bytes_per_request": round(total / requests) if requests else None,
        "bytes_by_kind": {k: round(v) for k, v in kinds.items()},
        "bytes_per_span": {n: round(by_name[n] / count[n]) for n in sorted(by_name)},
        "spans": dict(sorted(count.items())),
    }


def committed(args) -> dict:
    out = {}
    for d in args.trace_dirs:
        manifest = json.loads((Path(d) / "manifest.json").read_text())
        out[d] = {"level": (manifest.get("config") or {}).get("level"),
                  **measure(d)}
    return out


def live(args) -> dict:
    from sglang_tracing.app.serving import CPU_ARGS, Server, wait_for_exporters
    from sglang_tracing.models.builder import build_model_dir, prompt_of_length

    keep = Path(args.keep or tempfile.mkdtemp(prefix="volume-"))
    if args.cpu:
        model, sglang_args = str(build_model_dir("tiny-llama", keep / "tiny-llama")), CPU_ARGS
    else:
        model, sglang_args = args.model, args.extra.split()
    prompts = [prompt_of_length(args.prompt_len, seed=i) for i in range(args.requests)]
    results = {}
    for i, (arm, tracing) in enumerate(ARMS.items()):
        if args.arms and arm.split(",")[0] not in args.arms.split(",") and str(i) not in args.arms.split(","):
            continue
        trace_dir = str(keep / f"arm{i}")
        server = Server(model, trace_dir=trace_dir, extra_args=sglang_args, tracing_args=tracing,
                        log_path=str(keep / f"arm{i}.log"))
        try:
            server.wait_ready(timeout=900)
            start = time.monotonic()
            server.generate_all(prompts, args.output_len, args.concurrency, stream=True)
            elapsed = time.monotonic() - start
        finally:
            server.stop()
            wait_for_exporters(trace_dir, 60)
        results[arm] = {"tracing_args": tracing, "workload_s": round(elapsed, 2), **measure(trace_dir)}
        print(f"{arm}: {results[arm]['all_bytes_per_request']} B/request on disk, "
              f"{results[arm]['request_bytes_per_request']} B/request of request spans, "
              f"{results[arm]['batch_bytes_per_forward']} B/forward of batch spans", flush=True)
    return {"model": model, "requests": args.requests, "concurrency": args.concurrency,
            "prompt_len": args.prompt_len, "output_len": args.output_len, "arms": results}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode", required=True)
    c = sub.add_parser("committed", help="measure trace dirs already recorded")
    c.add_argument("trace_dirs", nargs="+")
    c.add_argument("--out")
    v = sub.add_parser("live", help="one traced server per arm, the same workload")
    v.add_argument("--model", help="model path (GPU); --cpu serves the tiny Llama instead")
    v.add_argument("--cpu", action="store_true")
    v.add_argument("--requests", type=int, default=64)
    v.add_argument("--concurrency", type=int, default=8)
    v.add_argument("--prompt-len", type=int, default=128)
    v.add_argument("--output-len", type=int, default=32)
    v.add_argument("--extra", default="--attention-backend triton --load-format dummy",
                   help="SGLang args for a GPU run")
    v.add_argument("--arms", help="comma-separated arm numbers or levels to run (default: all)")
    v.add_argument("--keep", help="keep trace dirs and logs here")
    v.add_argument("--out")
    args = ap.parse_args()
    for d in getattr(args, "trace_dirs", []):
        if not (Path(d) / "manifest.json").is_file():
            ap.exit(2, f"volume.py: error: {d} is not a trace dir (no manifest.json)\n")
    if args.mode == "live" and not (args.cpu or args.model):
        ap.exit(2, "volume.py: error: live needs --model PATH or --cpu\n")
    result = committed(args) if args.mode == "committed" else live(args)
    text = json.dumps(result, indent=1)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        Path(args.out).write_text(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
