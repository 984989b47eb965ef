"""Where each batch-1 TTFT of an ``overhead.py`` run went, sample by sample, from the kept trace dirs.

    python3 benchmarks/batch1_breakdown.py RESULT.json KEEP_DIR [--slow-ms 20]

RESULT.json is ``overhead.py --out``, KEEP_DIR its ``--keep`` (one trace dir per traced configuration).
Per batch-1 request: client TTFT; client send -> queued in the scheduler; the scheduling pass before its
prefill; the prefill's scheduler-forward wall and its model forward's GPU time (CUDA events); the GPU's end
after the model forward returned; forward end -> first chunk at the client; the request's own mean ITL.
Then per configuration the medians over prefills whose GPU time is under / over ``--slow-ms``: a cost of
ours added on the host shows up in every prefill, a state of the machine only in some. Configurations
without a trace dir (untraced) get their client figures only. Reads the JSONL span files with the standard
library, so it runs where the analyzer's polars is not installed (the GPU host).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import span_json  # the sibling reader (a script's own folder is on its path)


def _rows(requests: list[dict], trace_dir: str | None) -> list[dict]:
    rows = [{"ttft": r["ttft_ns"] / 1e6, "itl": r["mean_itl_ns"] / 1e6, "rid": r["rid"]} for r in requests]
    spans = list(span_json.spans(trace_dir, "spans-scheduler-*.jsonl*")) if trace_dir else []
    if not spans:
        return rows
    by_id = {s["id"]: s for s in spans}
    model = {s["parent"]: s for s in spans if s["name"] == "sglang.model.forward"}
    prefill = {s["attrs"].get("sglang.rid"): s for s in spans if s["name"] == "sglang.request.prefill"}
    queued = {s["attrs"].get("sglang.rid"): s for s in spans if s["name"] == "sglang.request.queued"}
    schedules = sorted((s for s in spans if s["name"] == "sglang.scheduler.schedule"), key=lambda s: s["end"])
    for row, r in zip(rows, requests):
        p, q = prefill.get(r["rid"]), queued.get(r["rid"])
        fwd = by_id.get(p["attrs"].get("sglang.forward.span_id")) if p else None
        if fwd is None or q is None or "sglang.forward.gpu_duration_ns" not in fwd["attrs"]:
            continue
        sched = [s for s in schedules if s["end"] <= fwd["start"]][-1:]
        m = model.get(fwd["id"])
        row.update({"sent_queued": (q["start"] - r["sent_ns"]) / 1e6,
                    "schedule": (sched[0]["end"] - sched[0]["start"]) / 1e6 if sched else None,
                    "forward": (fwd["end"] - fwd["start"]) / 1e6,
                    "gpu": int(fwd["attrs"]["sglang.forward.gpu_duration_ns"]) / 1e6,
                    "gpu_after": (int(fwd["attrs"]["sglang.forward.gpu_end_ns"]) - m["end"]) / 1e6 if m else None,
                    "tail": (r["first_chunk_ns"] - fwd["end"]) / 1e6,
                    "ranges": int(m["attrs"].get("sglang.nvtx.layer_ranges", 0)) if m else 0})
    return rows


COLUMNS = ("ttft", "sent_queued", "schedule", "forward", "gpu", "gpu_after", "tail", "itl")


def _median(rows: list[dict], key: str) -> str:
    values = [r[key] for r in rows if r.get(key) is not None]
    return f"{statistics.median(values):8.2f}" if values else f"{'-':>8}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("result")
    ap.add_argument("keep")
    ap.add_argument("--slow-ms", type=float, default=20.0, help="GPU ms of a prefill counted as slow")
    args = ap.parse_args()
    try:
        with open(args.result) as f:
            rounds = json.load(f)["rounds"]
    except (OSError, ValueError, KeyError) as exc:
        print(f"batch1_breakdown: cannot read {args.result}: {exc}", file=sys.stderr)
        return 2
    print("ms per sample: " + " ".join(f"{c:>11}" for c in COLUMNS) + "  ranges")
    for config, config_rounds in rounds.items():
        trace_dir = os.path.join(args.keep, config)
        rows = []
        for i, rnd in enumerate(config_rounds):
            for j, row in enumerate(_rows(rnd.get("batch1_requests", []), trace_dir if os.path.isdir(trace_dir) else None)):
                rows.append(row)
                print(f"{config:>13} r{i}s{j}" + " ".join(
                    f"{row[c]:11.2f}" if row.get(c) is not None else f"{'-':>11}" for c in COLUMNS)
                    + f"  {row.get('ranges', '')}")
        key = "gpu" if any("gpu" in r for r in rows) else "ttft"
        cut = args.slow_ms if key == "gpu" else args.slow_ms + 8  # TTFT adds ~8 ms around the forward
        for label, part in (("fast", [r for r in rows if r.get(key, 0) < cut]),
                            ("slow", [r for r in rows if r.get(key, 0) >= cut])):
            print(f"{config:>13} {label} n={len(part):<3} medians " + " ".join(_median(part, c) for c in COLUMNS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
