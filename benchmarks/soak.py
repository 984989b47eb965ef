"""Soak: a traced server (default level, tail-based keep on) beside an untraced one under a mixed load of
streamed, non-streamed and aborted requests, for a duration you choose; memory sampled over time.

    python3 benchmarks/soak.py --model /tmp/llama2 --duration 240 --concurrency 500 --out soak/
    python3 benchmarks/soak.py --cpu --duration 60 --concurrency 16 --out /tmp/soak-cpu/   # smoke test

Both servers run at once on the one GPU with equal KV pools (``--max-total-tokens``) and take turns:
``--phase`` seconds of load on one, then the other (order alternating), until each had ``--duration``
seconds. Every turn keeps ``--concurrency`` requests in flight: 6 in 10 streamed, 3 non-streamed,
1 aborted (the client hangs up after its second chunk). Every second: the RSS of each server's process
tree and of the traced server's exporter processes. Afterwards, from the trace (json only): every
request the client sent is in it (summary or full detail), and the recorder's queue over time from its
stats spans. Writes ``soak.json`` and, with matplotlib, ``soak-memory.png`` and ``soak-throughput.png`` into
``--out``; the trace and the server logs go to ``--keep`` (a temp dir by default: a soak's trace is large).
"""
from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import shlex
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sglang_tracing import semconv as sc  # noqa: E402
from sglang_tracing.app.serving import CPU_ARGS, Server, wait_for_exporters  # noqa: E402
from sglang_tracing.models.builder import prompt_of_length  # noqa: E402

TAIL_KEEP = ["--trace-level", "batch", "--keep-one-in", "20", "--keep-percentile", "99", "--batch-keep", "kept"]
KINDS = ("stream",) * 6 + ("plain",) * 3 + ("abort",)


# ---- load: asyncio + aiohttp (an SGLang dependency), one event loop in its own thread ----
async def _one(session, url: str, kind: str, prompt: str, output_len: int, rids: dict) -> int:
    rid = f"soak-{kind}-{uuid.uuid4().hex}"
    body = {"text": prompt, "rid": rid, "stream": kind != "plain",
            "sampling_params": {"max_new_tokens": output_len, "ignore_eos": True}}
    tokens = 0
    try:
        async with session.post(url + "/generate", json=body) as resp:
            if kind == "plain":
                tokens = (await resp.json())["meta_info"]["completion_tokens"]
            else:
                chunks = 0
                async for line in resp.content:
                    if line.startswith(b"data:") and b"[DONE]" not in line:
                        chunks += 1
                        tokens = json.loads(line[5:])["meta_info"]["completion_tokens"]
                        if kind == "abort" and chunks == 2:
                            resp.close()  # hang up: SGLang aborts the request
                            break
        rids[rid] = kind
    except Exception as exc:  # noqa: BLE001 (a failed request is counted, never fatal)
        rids[rid] = f"error: {type(exc).__name__}"
    return tokens


async def _load(url: str, seconds: float, concurrency: int, prompts: list[str], output_len: int, rids: dict) -> int:
    import aiohttp

    deadline = time.monotonic() + seconds
    total = 0

    async def worker(w: int) -> None:
        nonlocal total
        i = w
        while time.monotonic() < deadline:
            total += await _one(session, url, KINDS[i % len(KINDS)], prompts[i % len(prompts)], output_len, rids)
            i += concurrency

    conn = aiohttp.TCPConnector(limit=0, force_close=True)  # a connection per request, as bench_serving
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=None)) as session:
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return total


# ---- memory sampling ----
def _tree_rss(pid: int) -> int:
    import psutil

    try:
        root = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
    except psutil.Error:
        return 0


def _exporters_rss(trace_dir: str) -> int:
    import psutil

    total = 0
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(a.startswith(trace_dir + "/spans-") for a in p.info["cmdline"] or ()):
                total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


class MemorySampler(threading.Thread):
    def __init__(self, servers: dict, trace_dir: str):
        super().__init__(daemon=True)
        self.servers, self.trace_dir, self.rows = servers, trace_dir, []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(1.0):
            row = {"t": time.time(), **{f"{n}_rss": _tree_rss(s.proc.pid) for n, s in self.servers.items()},
                   "exporters_rss": _exporters_rss(self.trace_dir)}
            self.rows.append(row)


# ---- afterwards, from the trace alone ----
def trace_facts(trace_dir: str, sent: dict) -> dict:
    roots, stats = set(), []
    details: dict[str, int] = {}
    for path in sorted(Path(trace_dir).glob("spans-*.jsonl*")):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt") as f:
            for line in f:
                for rs in json.loads(line)["resourceSpans"]:
                    for ss in rs["scopeSpans"]:
                        for s in ss["spans"]:
                            a = {x["key"]: next(iter(x["value"].values())) for x in s.get("attributes", [])}
                            if s["name"] == sc.REQUEST:
                                roots.add(a.get(sc.RID))
                            elif s["name"] == sc.REQUEST_DECODE and sc.KEEP_REASON in a:
                                details[a[sc.KEEP_REASON]] = details.get(a[sc.KEEP_REASON], 0) + 1
                            elif s["name"] == sc.RECORDER_STATS:
                                stats.append({"t": int(s["startTimeUnixNano"]) / 1e9, "file": path.name,
                                              "queued_max": int(a.get(sc.QUEUED_MAX, 0)),
                                              "batch_held": int(a.get(sc.BATCH_HELD, 0)),
                                              "dropped": int(a.get(sc.DROPPED_SPANS, 0))})
    answered = {rid for rid, kind in sent.items() if not kind.startswith("error")}
    return {"requests_sent": len(sent), "requests_answered_or_aborted": len(answered),
            "in_trace": len(answered & roots), "missing_from_trace": sorted(answered - roots)[:20],
            "kept": details, "recorder_stats": stats}


def plot(out: Path, memory: list[dict], phases: list[dict], stats: list[dict]) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plots (soak.json has every figure)")
        return []
    t0 = min([r["t"] for r in memory] + [s["t"] for s in stats] or [0])
    fig, (a, b) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for key in ("untraced_rss", "traced_rss", "exporters_rss"):
        a.plot([r["t"] - t0 for r in memory], [r[key] / 2**30 for r in memory], label=key.replace("_rss", ""))
    a.set_ylabel("RSS (GiB)")
    a.legend()
    a.set_title("server process trees and exporter processes")
    for name in sorted({s["file"] for s in stats}):
        rows = [s for s in stats if s["file"] == name]
        b.plot([r["t"] - t0 for r in rows], [r["queued_max"] for r in rows], label=f"{name}: queue max")
        b.plot([r["t"] - t0 for r in rows], [r["batch_held"] for r in rows], "--", label=f"{name}: batch held")
    b.set_ylabel("records held by the recorder")
    b.set_xlabel("s")
    b.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "soak-memory.png", dpi=110)
    fig, ax = plt.subplots(figsize=(10, 4))
    for name in ("untraced", "traced"):
        rows = [p for p in phases if p["server"] == name]
        ax.plot([p["t"] - t0 for p in rows], [p["tok_s"] for p in rows], "o-", label=name)
    ax.set_ylabel("output tok/s (phase)")
    ax.set_xlabel("s")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "soak-throughput.png", dpi=110)
    return ["soak-memory.png", "soak-throughput.png"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model dir (GPU)")
    ap.add_argument("--cpu", action="store_true", help="the tiny Llama on CPU (a smoke test, not a soak)")
    ap.add_argument("--duration", type=float, default=240, help="seconds of load on each server")
    ap.add_argument("--phase", type=float, default=30, help="seconds of one turn")
    ap.add_argument("--concurrency", type=int, default=500)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--max-total-tokens", type=int, default=80000, help="the same KV pool for both servers")
    ap.add_argument("--mem-fraction", type=float, default=0.42)
    ap.add_argument("--extra", default="--attention-backend triton", help="more SGLang args for both")
    ap.add_argument("--tracing", default=" ".join(TAIL_KEEP), help="the traced server's tracing args")
    ap.add_argument("--out", required=True, help="folder for soak.json and the plots")
    ap.add_argument("--keep", help="folder for the trace and the server logs (default: a new temp dir)")
    ap.add_argument("--plot-only", action="store_true",
                    help="draw the plots from --out's soak.json (a GPU host without matplotlib ran it)")
    args = ap.parse_args()
    out = Path(args.out)
    if args.plot_only:
        try:
            done = json.loads((out / "soak.json").read_text())
        except (OSError, ValueError) as exc:
            ap.exit(2, f"soak.py: error: cannot read {out / 'soak.json'}: {exc}\n")
        print(plot(out, done["memory"], done["phases"], done["recorder_stats"]))
        return 0
    if not (args.cpu or args.model):
        ap.exit(2, "soak.py: error: --model DIR or --cpu\n")
    out.mkdir(parents=True, exist_ok=True)
    if args.cpu:
        from sglang_tracing.models.builder import build_model_dir

        model = str(build_model_dir("tiny-llama", Path(tempfile.mkdtemp()) / "tiny-llama"))
        base = [a for a in CPU_ARGS]
    else:
        model = args.model
        base = ["--load-format", "dummy", "--mem-fraction-static", str(args.mem_fraction), "--log-level", "warning",
                "--max-total-tokens", str(args.max_total_tokens), *shlex.split(args.extra)]
    keep = Path(args.keep or tempfile.mkdtemp(prefix="soak-"))
    keep.mkdir(parents=True, exist_ok=True)
    trace_dir = str(keep / "trace")
    servers = {
        "untraced": Server(model, extra_args=base, log_path=str(keep / "untraced.log")),
        "traced": Server(model, trace_dir=trace_dir, extra_args=base, tracing_args=shlex.split(args.tracing),
                         log_path=str(keep / "traced.log")),
    }
    sampler = MemorySampler(servers, trace_dir)
    sent: dict[str, str] = {}
    phases: list[dict] = []
    try:
        for s in servers.values():
            s.wait_ready(timeout=1200)
        prompts = [prompt_of_length(args.prompt_len, seed=i) for i in range(1000)]
        for s in servers.values():  # warm-up, untimed
            asyncio.run(_load(s.url, 10, min(args.concurrency, 64), prompts, args.output_len, {}))
        sampler.start()
        done = {n: 0.0 for n in servers}
        turn = 0
        while min(done.values()) < args.duration:
            order = ["untraced", "traced"] if turn % 2 == 0 else ["traced", "untraced"]
            for name in order:
                seconds = min(args.phase, args.duration - done[name])
                if seconds <= 0:
                    continue
                rids = sent if name == "traced" else {}
                start = time.time()
                tokens = asyncio.run(_load(servers[name].url, seconds, args.concurrency, prompts, args.output_len, rids))
                wall = time.time() - start
                done[name] += seconds
                phases.append({"server": name, "t": start, "s": round(wall, 2), "tokens": tokens,
                               "tok_s": round(tokens / wall, 1)})
                print(f"{name}: {tokens / wall:.0f} tok/s over {wall:.0f} s", flush=True)
            turn += 1
    finally:
        sampler.stop.set()
        for s in servers.values():
            s.stop()
        wait_for_exporters(trace_dir, 120)
    totals = {n: sum(p["tokens"] for p in phases if p["server"] == n) / max(1e-9, sum(p["s"] for p in phases
                                                                                       if p["server"] == n))
              for n in servers}
    result = {"args": vars(args), "trace_dir": trace_dir, "throughput_tok_s": {n: round(v, 1) for n, v in totals.items()},
              "traced_over_untraced": round(totals["traced"] / totals["untraced"], 4) if totals["untraced"] else None,
              "phases": phases, "memory": sampler.rows, **trace_facts(trace_dir, sent)}
    result["plots"] = plot(out, sampler.rows, phases, result["recorder_stats"])
    (out / "soak.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("throughput_tok_s", "traced_over_untraced", "requests_sent",
                                              "requests_answered_or_aborted", "in_trace", "kept")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
