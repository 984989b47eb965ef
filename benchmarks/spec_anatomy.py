"""Where an NGRAM run's traced and untraced servers differ, from ``gpu_features.py``'s output: the client's
per-request records (both servers) and the traced server's raw spans (stdlib only: runs on the GPU host).

    python3 benchmarks/spec_anatomy.py RESULTS_JSON TRACED_TRACE_DIR [--traced spec-traced] [--untraced spec-untraced]

Per round from 2 on (round 1 compiles kernels): throughput, streamed chunks per request (the same work on
both servers?), prefill batches (requests whose first chunk came together), the median gap between chunks
(one decode step) and the median of gaps over 20 ms (a step that waited for another request's prefill).
From the spans, a traced decode step of the full batch: verify launches apart, the verify's GPU time, and
the GPU's wait for the CPU split at the draft (previous verify's end -> draft starts -> draft ends -> verify
launches); only our draft/verify/model-forward before-hooks run inside that wait.
"""
from __future__ import annotations

import argparse
import bisect
import collections
import gzip
import json
import statistics
import sys
from pathlib import Path

import span_json  # the sibling reader (a script's own folder is on its path)

GPU_START, GPU_END = "sglang.forward.gpu_start_ns", "sglang.forward.gpu_end_ns"


def load_spans(trace_dir: Path, role: str = "scheduler") -> list[dict]:
    return list(span_json.spans(trace_dir, f"spans-{role}-*.jsonl*"))


def rounds_table(rounds: list[dict]) -> list[dict]:
    out = []
    for i, rd in enumerate(rounds[1:], start=2):
        reqs = rd["requests"]
        gaps = [g / 1e6 for q in reqs for g in q.get("itls_ns") or ()]
        firsts = sorted(q["first_chunk_ns"] for q in reqs if q.get("first_chunk_ns"))
        stalls = [g for g in gaps if g > 20]
        out.append({"round": i, "tok_per_s": round(rd["tok_per_s"]),
                    "chunks_per_req": round(statistics.mean(len(q.get("itls_ns") or ()) + 1 for q in reqs), 2),
                    "prefill_batches": 1 + sum(b - a > 2e6 for a, b in zip(firsts, firsts[1:])),
                    "step_ms": round(statistics.median(gaps), 2) if gaps else None,
                    "stall_ms": round(statistics.median(stalls), 1) if stalls else None, "stalls": len(stalls)})
    return out


def step_anatomy(spans: list[dict], nvml: list[int]) -> dict:
    """Medians over consecutive decode steps of the largest batch, in microseconds."""
    kids: dict[str, dict[str, dict]] = collections.defaultdict(dict)
    for s in spans:
        kids[s["parent"]][s["name"]] = s
    forwards = sorted((s for s in spans if s["name"] == "sglang.scheduler.forward"), key=lambda s: s["start"])
    decode = [f for f in forwards if "sglang.spec.verify" in kids[f["id"]] and "sglang.spec.draft" in kids[f["id"]]]
    if not decode:
        return {}
    full = max(f["attrs"].get("sglang.batch.size", 0) for f in decode)
    parts = collections.defaultdict(list)
    for a, b in zip(forwards, forwards[1:]):
        if a not in decode or b not in decode or {a["attrs"].get("sglang.batch.size"), b["attrs"].get("sglang.batch.size")} != {full}:
            continue
        va, vb, db = kids[a["id"]]["sglang.spec.verify"], kids[b["id"]]["sglang.spec.verify"], kids[b["id"]]["sglang.spec.draft"]
        if GPU_START not in va["attrs"] or GPU_START not in vb["attrs"] or b["start"] > va["attrs"][GPU_END]:
            continue  # no GPU times, or the next step did not wait for this one
        period = vb["attrs"][GPU_START] - va["attrs"][GPU_START]
        i = bisect.bisect_left(nvml, va["attrs"][GPU_START])
        parts["period, with an NVML sample" if i < len(nvml) and nvml[i] < vb["attrs"][GPU_START] else
              "period, without"].append(period)
        parts["verify launches apart"].append(period)
        parts["verify on the GPU"].append(va["attrs"]["sglang.forward.gpu_duration_ns"])
        parts["previous verify's end -> draft starts"].append(db["start"] - va["attrs"][GPU_END])
        parts["draft (CPU)"].append(db["end"] - db["start"])
        parts["draft ends -> verify launches (GPU)"].append(vb["attrs"][GPU_START] - db["end"])
    return {"batch": full, "steps": len(parts["verify launches apart"]),
            **{k: {"median_us": round(statistics.median(v) / 1e3), "n": len(v)} for k, v in parts.items()}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", type=Path)
    ap.add_argument("trace_dir", type=Path)
    ap.add_argument("--traced", default="spec-traced")
    ap.add_argument("--untraced", default="spec-untraced")
    args = ap.parse_args()
    try:
        opener = gzip.open if args.results.suffix == ".gz" else open
        with opener(args.results, "rt") as f:
            rounds = json.load(f)["spec"]["rounds"]
        table = {n: rounds_table(rounds[n]) for n in (args.traced, args.untraced)}
    except (OSError, ValueError, KeyError) as exc:
        print(f"spec_anatomy: cannot read the spec phase of {args.results}: {exc}", file=sys.stderr)
        return 2
    if not args.trace_dir.is_dir():
        print(f"spec_anatomy: no trace dir {args.trace_dir}", file=sys.stderr)
        return 2
    nvml = []
    for path in args.trace_dir.glob("nvml-*.jsonl*"):
        with (gzip.open(path, "rt") if path.suffix == ".gz" else open(path)) as f:
            nvml += [json.loads(line)["t_ns"] for line in f if line.strip()]
    out = {"rounds": table, "traced_step": step_anatomy(load_spans(args.trace_dir), sorted(nvml))}
    json.dump(out, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
