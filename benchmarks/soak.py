"""Soak: a traced server (default level, tail-based keep on) beside an untraced one under a mixed load of
streamed, non-streamed and aborted requests, for a duration you choose; memory sampled over time.

    python3 benchmarks/soak.py --model /tmp/llama2 --duration 60 --phase 30 --concurrency 500 --out soak/
    python3 benchmarks/soak.py --cpu --duration 20 --phase 10 --concurrency 8 --out /tmp/soak-cpu/  # smoke test

Both servers get the same ``--max-total-tokens`` and a high ``--mem-fraction`` (SGLang sizes a pool from
the GPU memory free when it starts, less a slack of (1 - mem fraction) of it: at 0.42 one of two servers
on an H100 got 17,157 tokens for 30,000 asked); the pool each one got is read back from /server_info,
and unequal pools stop the run before any load (exit 2). Then they take turns: ``--phase`` seconds of load on one,
then the other (order alternating), until each had ``--duration`` seconds. A turn keeps
``--concurrency`` requests in flight (soak_load.py: 6 in 10 streamed, 3 non-streamed, 1 hung up by the
client after its second chunk, by sending order) and waits for the last ones to finish. Its throughput
is the output tokens of every response it got (a hung-up request counts what it received) over the
turn's wall time; every request's outcome is counted by kind, and the client's own CPU share and
event-loop lag are recorded (a turn where the client may have set the pace says so). Every second:
the RSS of each server's process tree and of the traced server's exporter processes. Afterwards, from
the traced server's span files alone (soak_trace.py): each traced turn's requests found in the trace,
their output tokens by the trace against the client's, keep decisions, and the recorder's queue and
held batch records over time. Writes ``soak.json`` (rewritten after every turn: a run cut short keeps
its turns) and, with matplotlib, ``soak-memory.png`` and ``soak-throughput.png`` into ``--out``; the
trace, the server logs and every request's row (``requests.jsonl.gz``) go to ``--keep``.
"""
from __future__ import annotations

import argparse
import gzip
import json
import shlex
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from sglang_tracing.app.serving import CPU_ARGS, Server, ServerError, wait_for_exporters  # noqa: E402
from sglang_tracing.models.builder import prompt_of_length  # noqa: E402
import soak_load  # noqa: E402
import soak_trace  # noqa: E402
from overhead import kv_pool  # noqa: E402  (the sibling benchmark's pool read-back)

TAIL_KEEP = ["--trace-level", "batch", "--keep-one-in", "20", "--keep-percentile", "99", "--batch-keep", "kept"]


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


def memory_summary(rows: list[dict]) -> dict:
    """Per series: min, max, and the mean of its first and last quarter (flat: the two agree)."""
    out = {}
    for key in ("untraced_rss", "traced_rss", "exporters_rss"):
        v = [r[key] for r in rows if r.get(key)]
        if len(v) < 4:
            continue
        q = len(v) // 4
        out[key] = {"samples": len(v), "min_mib": round(min(v) / 2**20, 1), "max_mib": round(max(v) / 2**20, 1),
                    "first_quarter_mean_mib": round(sum(v[:q]) / q / 2**20, 1),
                    "last_quarter_mean_mib": round(sum(v[-q:]) / q / 2**20, 1)}
    return out


def plot(out: Path, memory: list[dict], phases: list[dict], stats: list[dict]) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plots (soak.json has every figure)")
        return []
    t0 = min([r["t"] for r in memory] + [s["t"] for s in stats] + [p["t"] for p in phases] or [0])
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
    for p in phases:
        b.axvspan(p["t"] - t0, p["t"] - t0 + p["s"], color="C1" if p["server"] == "traced" else "0.8", alpha=0.15)
    b.set_ylabel("records held by the recorder")
    b.set_xlabel("s (shaded: turns, orange = traced)")
    b.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "soak-memory.png", dpi=110)
    fig, ax = plt.subplots(figsize=(10, 4))
    for name in ("untraced", "traced"):
        rows = [p for p in phases if p["server"] == name]
        ax.plot([p["t"] - t0 for p in rows], [p["tok_s"] for p in rows], "o-", label=f"{name} (client)")
    rows = [p for p in phases if "trace" in p]
    ax.plot([p["t"] - t0 for p in rows], [p["trace"]["trace_output_tokens"] / p["s"] for p in rows], "x",
            label="traced (its trace's output tokens)")
    ax.set_ylabel("output tok/s (turn)")
    ax.set_xlabel("s")
    ax.set_ylim(bottom=0)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "soak-throughput.png", dpi=110)
    return ["soak-memory.png", "soak-throughput.png"]


def totals(phases: list[dict], pools: dict) -> dict:
    """Throughput per server over all its turns, the ratio, and why it may not stand."""
    tok_s = {}
    for name in ("untraced", "traced"):
        rows = [p for p in phases if p["server"] == name]
        wall = sum(p["s"] for p in rows)
        tok_s[name] = round(sum(p["tokens"] for p in rows) / wall, 1) if wall else None
    caveats = []
    if len(set(pools.values())) != 1 or None in pools.values():
        caveats.append(f"KV pools not shown equal: {pools}")
    if any(p["client"]["client_bound"] for p in phases):
        caveats.append("the client may have set the pace in some turn (see each turn's 'client')")
    if any(p["errors"] for p in phases):
        caveats.append("some requests failed (see each turn's 'outcomes')")
    if any(p.get("trace", {}).get("missing_from_trace") for p in phases):
        caveats.append("some requests sent to the traced server are not in its trace")
    ratio = round(tok_s["traced"] / tok_s["untraced"], 4) if tok_s["traced"] and tok_s["untraced"] else None
    return {"throughput_tok_s": tok_s, "traced_over_untraced": ratio, "caveats": caveats}


def _save(out: Path, result: dict) -> None:
    tmp = out / "soak.json.tmp"
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(out / "soak.json")


def _start(args, model: str, base: list[str], keep: Path, trace_dir: str) -> dict:
    """Both servers, at once or (``--sequential-start``) one after another."""
    servers = {}
    for name, traced in (("untraced", False), ("traced", True)):
        print(f"starting the {name} server", flush=True)
        servers[name] = Server(model, trace_dir=trace_dir if traced else None, extra_args=base,
                               tracing_args=shlex.split(args.tracing) if traced else None,
                               log_path=str(keep / f"{name}.log"))
        if args.sequential_start:
            servers[name].wait_ready(timeout=1200)
    for s in servers.values():
        s.wait_ready(timeout=1200)
    return servers


def _recount(ap, out: Path, trace_dir: str) -> int:
    try:
        done = json.loads((out / "soak.json").read_text())
    except (OSError, ValueError) as exc:
        ap.exit(2, f"soak.py: error: cannot read {out / 'soak.json'}: {exc}\n")
    if not list(Path(trace_dir).glob("spans-*.jsonl*")):
        ap.exit(2, f"soak.py: error: no span files in {trace_dir}\n")
    trace = soak_trace.read(trace_dir)
    recount = {"trace_dir": trace_dir, "turns": soak_trace.by_window(trace["requests"], done["phases"]),
               "recorder": soak_trace.held_over_time(trace["stats"]),
               "all_in_trace": soak_trace.unmeasured(trace["requests"], set(), "user request (warm-up load included)")}
    (out / "soak-recount.json").write_text(json.dumps(recount, indent=1) + "\n")
    for t in recount["turns"]:
        print(f"{t['server']}: {t['requests_started']} requests started, {t['output_tokens']} output tokens "
              f"({t['tok_s']} tok/s) by the trace")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model dir (GPU)")
    ap.add_argument("--cpu", action="store_true", help="the tiny Llama on CPU (a smoke test, not a soak)")
    ap.add_argument("--duration", type=float, default=60, help="seconds of load on each server")
    ap.add_argument("--phase", type=float, default=30, help="seconds of one turn")
    ap.add_argument("--warmup", type=float, default=10, help="seconds of untimed load on each server first")
    ap.add_argument("--concurrency", type=int, default=500)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--max-total-tokens", type=int, default=30000, help="the same KV pool for both servers")
    ap.add_argument("--mem-fraction", type=float, default=0.85,
                    help="SGLang's --mem-fraction-static (the second server's pool is sized from what the first "
                         "left free: too low and it gets less than --max-total-tokens)")
    ap.add_argument("--sequential-start", action="store_true",
                    help="start the second server once the first serves (slower; the pools are checked either way)")
    ap.add_argument("--extra", default="--attention-backend triton", help="more SGLang args for both")
    ap.add_argument("--tracing", default=" ".join(TAIL_KEEP), help="the traced server's tracing args")
    ap.add_argument("--out", required=True, help="folder for soak.json and the plots")
    ap.add_argument("--keep", help="folder for the trace, the server logs and the request rows (default: a temp dir)")
    ap.add_argument("--plot-only", action="store_true",
                    help="draw the plots from --out's soak.json (a GPU host without matplotlib ran it)")
    ap.add_argument("--recount", metavar="TRACE_DIR",
                    help="no run: each turn of --out's soak.json recounted from this trace (turns matched by "
                         "time) into soak-recount.json, for runs whose client count is not to be trusted")
    args = ap.parse_args()
    out = Path(args.out)
    if args.recount:
        return _recount(ap, out, args.recount)
    if args.plot_only:
        try:
            done = json.loads((out / "soak.json").read_text())
        except (OSError, ValueError) as exc:
            ap.exit(2, f"soak.py: error: cannot read {out / 'soak.json'}: {exc}\n")
        print(plot(out, done["memory"], done["phases"], done.get("recorder_stats", [])))
        return 0
    if not (args.cpu or args.model):
        ap.exit(2, "soak.py: error: --model DIR or --cpu\n")
    if args.concurrency < 1 or args.phase <= 0 or args.duration <= 0:
        ap.exit(2, "soak.py: error: --concurrency, --phase and --duration must be positive\n")
    out.mkdir(parents=True, exist_ok=True)
    if args.cpu:
        from sglang_tracing.models.builder import build_model_dir

        model = str(build_model_dir("tiny-llama", Path(tempfile.mkdtemp()) / "tiny-llama"))
        base = list(CPU_ARGS)
    else:
        model = args.model
        base = ["--load-format", "dummy", "--mem-fraction-static", str(args.mem_fraction), "--log-level", "warning",
                "--max-total-tokens", str(args.max_total_tokens), *shlex.split(args.extra)]
    keep = Path(args.keep or tempfile.mkdtemp(prefix="soak-"))
    keep.mkdir(parents=True, exist_ok=True)
    trace_dir = str(keep / "trace")
    limits = soak_load.raise_open_files(args.concurrency)
    result = {"args": vars(args), "trace_dir": trace_dir, "status": "starting", "client_limits": {
        **limits, "client": "one Python process, one asyncio event loop (aiohttp), a connection per request",
        "busy_if": f"CPU share > {soak_load.CLIENT_BUSY_CPU} or loop lag p99 > {soak_load.CLIENT_LAG_P99_MS} ms"}}
    servers: dict[str, Server] = {}
    sampler = None
    phases: list[dict] = []
    rows_out = gzip.open(keep / "requests.jsonl.gz", "wt")
    try:
        try:
            servers = _start(args, model, base, keep, trace_dir)
        except ServerError as exc:
            print(f"soak.py: error: {exc}", file=sys.stderr)
            return 2
        result["kv_pools"] = pools = {n: kv_pool(s) for n, s in servers.items()}
        print(f"KV pools (tokens): {pools}", flush=True)
        if len(set(pools.values())) != 1:
            print(f"soak.py: error: the servers' KV pools differ ({pools}): raise --mem-fraction or lower "
                  "--max-total-tokens", file=sys.stderr)
            _save(out, {**result, "status": "stopped: unequal KV pools"})
            return 2
        prompts = [prompt_of_length(args.prompt_len, seed=i) for i in range(1000)]
        for s in servers.values():  # warm-up, untimed (its requests are in the trace, apart from the turns')
            soak_load.run_phase(s.url, args.warmup, min(args.concurrency, 64), prompts, args.output_len)
        sampler = MemorySampler(servers, trace_dir)
        sampler.start()
        done = {n: 0.0 for n in servers}
        turn = 0
        while min(done.values()) < args.duration:
            order = ["untraced", "traced"] if turn % 2 == 0 else ["traced", "untraced"]
            for name in order:
                seconds = min(args.phase, args.duration - done[name])
                if seconds <= 0:
                    continue
                start = time.time()
                rows, figures = soak_load.run_phase(servers[name].url, seconds, args.concurrency, prompts,
                                                    args.output_len)
                done[name] += seconds
                phase = {"server": name, "t": start, **figures}
                phases.append(phase)
                for r in rows:
                    rows_out.write(json.dumps({"phase": len(phases) - 1, "server": name, **r}) + "\n")
                c = figures["client"]
                print(f"{name}: {figures['tok_s']:.0f} tok/s over {figures['s']:.0f} s, {figures['requests']} "
                      f"requests {figures['outcomes']}, client CPU {c['cpu_share']:.0%} loop lag p99 "
                      f"{c['loop_lag_ms_p99']} ms{' (CLIENT-BOUND?)' if c['client_bound'] else ''}", flush=True)
                _save(out, {**result, "status": f"running: {len(phases)} turns done", "phases": phases,
                            **totals(phases, pools), "memory": sampler.rows})
            turn += 1
    finally:
        rows_out.close()
        if sampler is not None:
            sampler.stop.set()
        for s in servers.values():
            s.stop()
        if servers:
            wait_for_exporters(trace_dir, 120)
    trace = soak_trace.read(trace_dir)
    measured: set[str] = set()
    with gzip.open(keep / "requests.jsonl.gz", "rt") as f:
        by_phase: dict[int, list[dict]] = {}
        for line in f:
            row = json.loads(line)
            by_phase.setdefault(row["phase"], []).append(row)
    for i, phase in enumerate(phases):
        if phase["server"] == "traced":
            phase["trace"] = soak_trace.check_phase(by_phase.get(i, []), trace["requests"])
            measured.update(r["rid"] for r in by_phase.get(i, []))
    result.update(status="done", phases=phases, **totals(phases, pools), memory=sampler.rows,
                  memory_summary=memory_summary(sampler.rows), recorder=soak_trace.held_over_time(trace["stats"]),
                  trace_other_requests=soak_trace.unmeasured(trace["requests"], measured),
                  recorder_stats=trace["stats"])
    result["plots"] = plot(out, sampler.rows, phases, trace["stats"])
    _save(out, result)
    print(json.dumps({k: result[k] for k in ("kv_pools", "throughput_tok_s", "traced_over_untraced", "caveats",
                                              "memory_summary", "recorder")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
