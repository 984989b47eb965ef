"""Analyzer speed and memory on a large trace: a real recorded trace replicated to about N spans and events.

    python3 benchmarks/analyzer.py [--target 1000000] [--before 0df77ed] [--repeat 3] [--json out.json]

Each copy of ``--source`` gets fresh trace/span ids and rids and is shifted in time after the previous
one, so requests, batches and flows stay distinct. Times ``sglang-trace analyze --report all`` (cold:
parsed-span cache removed first; then cached) and ``sglang-trace perfetto`` as separate processes,
``--repeat`` times each, and reports the median wall time with its range, CPU time, and peak RSS of
the whole process tree (the analyzer and its decoding workers together, sampled every 20 ms).
``--before REF`` runs the same steps with the analyzer of git revision REF too, interleaved run by
run, so both see the same machine load. Prints a table and writes the figures as JSON.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson
import psutil

from sglang_tracing.config import ENV_CACHE_DIR

REPO = Path(__file__).resolve().parent.parent
STEPS = ("cold", "cached", "perfetto")


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def replicate(source: Path, dest: Path, target: int) -> int:
    files = sorted(source.glob("spans-*.jsonl*"))
    docs = {f: [orjson.loads(line) for line in _open(f)] for f in files}
    spans = [s for lines in docs.values() for d in lines for rs in d["resourceSpans"] for sp in rs["scopeSpans"]
             for s in sp["spans"]]
    per_copy = len(spans) + sum(len(s.get("events", [])) for s in spans)
    copies = max(1, target // per_copy)
    starts = [int(s["startTimeUnixNano"]) for s in spans]
    width = max(starts) - min(starts) + 1_000_000_000
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(source / "manifest.json", dest / "manifest.json")
    for f, lines in docs.items():
        out_name = f.name[:-3] if f.suffix == ".gz" else f.name
        with open(dest / out_name, "wb") as out:
            for c in range(copies):
                for d in lines:
                    out.write(_retag(d, f"{c:04x}", c * width) + b"\n")
    return copies * per_copy


def _retag(doc: dict, tag: str, shift: int) -> bytes:
    d = orjson.loads(orjson.dumps(doc))  # a deep copy
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
    return orjson.dumps(d)


def old_checkout(ref: str, into: Path) -> dict:
    """The analyzer of git revision ``ref`` importable as ``sglang_tracing``: its env for PYTHONPATH."""
    tree = into / "tree"
    tree.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    pkg = into / "path"
    shutil.copytree(tree / "sglang_tracing", pkg / "sglang_tracing")
    shutil.copytree(tree / "analyzer", pkg / "sglang_tracing" / "analyzer")
    shutil.copytree(tree / "patches", pkg / "sglang_tracing" / "patches")
    return {**os.environ, "PYTHONPATH": str(pkg)}


def measure(cmd: list[str], env: dict | None = None, cwd: Path | None = None) -> dict:
    """Wall time, CPU time of the process tree, and peak RSS of the tree (sum) and of one process."""
    t = time.perf_counter()
    # run outside the checkout: its sglang_tracing/ would shadow the PYTHONPATH of --before
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=cwd)
    peak = {"tree": 0, "one": 0}
    done = threading.Event()

    def sample():
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
                rss = []
                for p in procs:
                    try:
                        rss.append(p.memory_info().rss)
                    except psutil.Error:
                        pass
                peak["tree"] = max(peak["tree"], sum(rss))
                peak["one"] = max(peak["one"], max(rss, default=0))
            except psutil.Error:
                pass
            done.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    done.set()
    sampler.join()
    stderr = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(cmd)} failed: {stderr.strip()[-2000:]}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
            "peak_rss_tree_mib": peak["tree"] / 2**20, "peak_rss_one_mib": peak["one"] / 2**20}


def run_steps(trace: Path, work: Path, label: str, env: dict | None, steps: list[str]) -> dict:
    py = [sys.executable, "-m", "sglang_tracing"]
    analyze = py + ["analyze", str(trace), "--report", "all", "--out", str(work / f"reports-{label}"),
                    "--model-config", "llama-2-7b"]
    cache = work / "span-cache"
    env = {**(env or os.environ), ENV_CACHE_DIR: str(cache)}
    out = {}
    for step in steps:
        if step == "cold":
            _clear_caches(trace, cache)
            out[step] = measure(analyze, env, work)
        elif step == "cached":
            out[step] = measure(analyze, env, work)
        else:
            pftrace = work / f"{label}.pftrace"
            out[step] = measure(py + ["perfetto", str(trace), "-o", str(pftrace)], env, work)
            out[step]["pftrace_mib"] = pftrace.stat().st_size / 2**20
            pftrace.unlink()
    _clear_caches(trace, cache)  # the two versions' caches differ
    return out


def _clear_caches(trace: Path, cache: Path) -> None:
    shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(trace / ".sglang-trace-cache", ignore_errors=True)  # where older revisions kept theirs


def _summary(runs: list[dict]) -> dict:
    wall = [r["wall_s"] for r in runs]
    return {"wall_s_median": statistics.median(wall), "wall_s_min": min(wall), "wall_s_max": max(wall),
            "cpu_s_median": statistics.median(r["cpu_s"] for r in runs),
            "peak_rss_tree_mib_max": max(r["peak_rss_tree_mib"] for r in runs),
            "peak_rss_one_mib_max": max(r["peak_rss_one_mib"] for r in runs), "runs": runs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default=str(REPO / "traces/examples/h200-llama2-7b-triton"))
    ap.add_argument("--target", type=int, default=1_000_000)
    ap.add_argument("--before", help="git revision whose analyzer runs the same steps, side by side")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--steps", default=",".join(STEPS), help="cold, cached, perfetto (comma-separated)")
    ap.add_argument("--trace", help="reuse a replicated trace dir (made by an earlier run) instead of building one")
    ap.add_argument("--json", help="write the figures here (default: a temp file, printed)")
    ap.add_argument("--keep", action="store_true", help="keep the replicated trace")
    args = ap.parse_args()
    steps = [s for s in args.steps.split(",") if s]
    work = Path(tempfile.mkdtemp(prefix="analyzer-bench-"))
    if args.trace:
        trace, n = Path(args.trace), None
    else:
        t = time.perf_counter()
        trace = work / "trace"
        n = replicate(Path(args.source), trace, args.target)
        print(f"built {n:,} spans+events ({sum(f.stat().st_size for f in trace.glob('spans-*')) / 2**20:.0f} MiB "
              f"OTLP-JSON) in {time.perf_counter() - t:.0f} s at {trace}", flush=True)
    variants = {"after": None}
    if args.before:
        variants = {"before": old_checkout(args.before, work / "before"), **variants}
    runs: dict[str, dict[str, list]] = {v: {s: [] for s in steps} for v in variants}
    for i in range(args.repeat):
        for label, env in variants.items():
            for step, r in run_steps(trace, work, label, env, steps).items():
                runs[label][step].append(r)
                print(f"run {i + 1} {label:6} {step:8} {r['wall_s']:6.1f} s wall {r['cpu_s']:6.1f} s cpu "
                      f"{r['peak_rss_tree_mib']:6.0f} MiB tree", flush=True)
    result = {"target": args.target, "spans_and_events": n, "source": args.source, "before": args.before,
              "cpus": len(os.sched_getaffinity(0)), "load_avg_at_end": os.getloadavg(),
              "steps": {v: {s: _summary(r) for s, r in by.items()} for v, by in runs.items()}}
    print(f"\n{'variant':8} {'step':9} {'wall median (min-max)':>24} {'cpu':>7} {'peak RSS tree':>14} {'one proc':>9}")
    for label, by in result["steps"].items():
        for step, s in by.items():
            span = f"{s['wall_s_median']:.1f} s ({s['wall_s_min']:.1f}-{s['wall_s_max']:.1f})"
            print(f"{label:8} {step:9} {span:>24} {s['cpu_s_median']:6.1f}s {s['peak_rss_tree_mib_max']:10.0f} MiB "
                  f"{s['peak_rss_one_mib_max']:6.0f} MiB")
    path = Path(args.json) if args.json else work / "analyzer-bench.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"\nfigures: {path}; load average at the end {os.getloadavg()[0]:.1f} on {result['cpus']} CPUs")
    if not args.keep and not args.trace:
        shutil.rmtree(trace)


if __name__ == "__main__":
    main()
