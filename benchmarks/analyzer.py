"""Analyzer speed on a large trace: a real recorded trace replicated to about N spans and events.

    python3 benchmarks/analyzer.py [--source traces/examples/h200-llama2-7b-triton] [--target 1000000]

Each copy gets fresh trace/span ids and rids and is shifted in time after the previous one, so
requests, batches and flows stay distinct. Times `sglang-trace analyze --report all` and
`sglang-trace perfetto` as separate processes and reports wall time and peak RSS.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _open(path: Path):
    return gzip.open(path, "rt") if path.suffix == ".gz" else open(path)


def replicate(source: Path, dest: Path, target: int) -> int:
    files = sorted(source.glob("spans-*.jsonl*"))
    docs = {f: [json.loads(line) for line in _open(f)] for f in files}
    per_copy = sum(len(sp["spans"]) for lines in docs.values() for d in lines
                   for rs in d["resourceSpans"] for sp in rs["scopeSpans"])
    events = sum(len(s.get("events", [])) for lines in docs.values() for d in lines
                 for rs in d["resourceSpans"] for sp in rs["scopeSpans"] for s in sp["spans"])
    copies = max(1, target // (per_copy + events))
    starts = [int(s["startTimeUnixNano"]) for lines in docs.values() for d in lines
              for rs in d["resourceSpans"] for sp in rs["scopeSpans"] for s in sp["spans"]]
    width = max(starts) - min(starts) + 1_000_000_000
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("manifest.json",):
        (dest / name).write_text((source / name).read_text())
    for f, lines in docs.items():
        out_name = f.name[:-3] if f.suffix == ".gz" else f.name
        with open(dest / out_name, "w") as out:
            for c in range(copies):
                shift, tag = c * width, f"{c:04x}"
                for d in lines:
                    out.write(_retag(json.dumps(d), tag, shift) + "\n")
    return copies * (per_copy + events)


def _retag(text: str, tag: str, shift: int) -> str:
    d = json.loads(text)
    for rs in d["resourceSpans"]:
        for sp in rs["scopeSpans"]:
            for s in sp["spans"]:
                s["traceId"] = tag + s["traceId"][4:]
                s["spanId"] = tag + s["spanId"][4:]
                if s.get("parentSpanId"):
                    s["parentSpanId"] = tag + s["parentSpanId"][4:]
                s["startTimeUnixNano"] = str(int(s["startTimeUnixNano"]) + shift)
                s["endTimeUnixNano"] = str(int(s["endTimeUnixNano"]) + shift)
                for ev in s.get("events", []):
                    ev["timeUnixNano"] = str(int(ev["timeUnixNano"]) + shift)
                for a in s.get("attributes", []):
                    v = a["value"]
                    if a["key"] in ("sglang.rid",) and "stringValue" in v:
                        v["stringValue"] = tag + v["stringValue"]
                    elif a["key"] == "sglang.batch.rids":
                        for x in v["arrayValue"].get("values", []):
                            x["stringValue"] = tag + x["stringValue"]
                    elif a["key"] == "sglang.forward.span_id" and "stringValue" in v:
                        v["stringValue"] = tag + v["stringValue"][4:]
                    elif a["key"] in ("sglang.request.token_times_ns",):
                        for x in v["arrayValue"].get("values", []):
                            x["intValue"] = str(int(x["intValue"]) + shift)
                    elif a["key"] == "sglang.request.first_output_ns":
                        v["intValue"] = str(int(v["intValue"]) + shift)
    return json.dumps(d, separators=(",", ":"))


def timed(cmd: list[str]) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed: {done.stderr.strip()}")
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return wall, max(rss, before) / 1024  # MiB (ru_maxrss is KiB on Linux; the max over children so far)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", default="traces/examples/h200-llama2-7b-triton")
    ap.add_argument("--target", type=int, default=1_000_000)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="analyzer-bench-"))
    t = time.perf_counter()
    n = replicate(Path(args.source), work / "trace", args.target)
    print(f"built {n:,} spans+events in {time.perf_counter() - t:.0f} s at {work / 'trace'}", flush=True)
    py = [sys.executable, "-m", "sglang_tracing"]
    analyze = py + ["analyze", str(work / "trace"), "--report", "all", "--out", str(work / "reports"),
                    "--model-config", "llama-2-7b"]
    for label in ("analyze --report all (first run: parses JSON, writes the parquet cache)",
                  "analyze --report all (cached)"):
        wall, rss = timed(analyze)
        print(f"{label}: {wall:.1f} s, peak RSS so far {rss:.0f} MiB", flush=True)
    wall, rss = timed(py + ["perfetto", str(work / "trace"), "-o", str(work / "t.pftrace")])
    print(f"perfetto (cached): {wall:.1f} s, peak RSS so far {rss:.0f} MiB "
          f"({os.path.getsize(work / 't.pftrace') / 2**20:.0f} MiB written)")


if __name__ == "__main__":
    main()
