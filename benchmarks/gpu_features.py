"""The GPU run (one H100 or H200) of the hierarchical cache and speculative decoding, unattended, ~9 minutes.

    pip install --no-deps --no-build-isolation -e .   # the plugin's entry point: traced servers need it
    python3 benchmarks/gpu_features.py --model /tmp/llama2 --out /tmp/features
    # -> /tmp/features/results.json, progress.log, gpu-features.tar.gz (traces + server logs), and a
    #    copy of the three under $OUT when that is set (the device tool's output folder)

Two phases, each starting its servers at once on the one GPU with equal KV pools (``--max-total-tokens``
for every server, read back from /server_info and recorded), then driving them in interleaved rounds
(order rotated each round) with the same prompts, as ``benchmarks/overhead.py`` does:

1. hicache: ``--enable-hierarchical-cache --hicache-size 20`` traced and untraced, a device pool of
   ``--hicache-pool`` tokens, and ``--groups`` shared prefixes of ``--prefix-len`` tokens (each asked by two
   requests a round, with unique suffixes): more prefix than the device pool holds, so prefixes are
   backed up to host, evicted from the device and loaded back on the next round. Round 1 computes every
   prefix (misses); the second request of a group hits the device; later rounds hit host or device.
2. spec: ``--speculative-algorithm NGRAM`` traced and untraced, and the same workload traced without
   speculation, on prompts NGRAM can predict: each prompt repeats a short word pattern. Dummy weights
   mean the target's output is not language; acceptance depends on whether the dummy model's greedy
   output repeats what it has seen, so the figures show the mechanism, measured, not a real model's
   acceptance rate.

Overhead is the traced server's median round over the untraced one's, per feature (throughput, TTFT, ITL,
and ``step_ms``: the median gap between streamed chunks, one decode step), and the median of the per-round
ratios (``paired_ratio_to_*``). ``--spec-servers spec-traced,spec-untraced`` leaves the server without
speculation out; ``--pin`` gives each server its own physical cores (an idle SGLang scheduler polls).
Needs only SGLang and this project on PYTHONPATH (no analyzer): the traces are read elsewhere.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from overhead import kv_pool  # noqa: E402  (the sibling benchmark's pool read-back)
from host_cpu import core_sets, delta, server_cpu, throttling  # noqa: E402

from sglang_tracing.app.serving import Server, ServerError, wait_for_exporters  # noqa: E402
from sglang_tracing.app.workload import concurrent  # noqa: E402
from sglang_tracing.models.builder import build_model_dir, prompt_of_length  # noqa: E402

FIRST_WORD = 3  # the WordLevel vocabulary's first ordinary word is w3


def hicache_prompts(args, rnd: int) -> list[str]:
    """Two requests per group, groups in order: a shared prefix, then a suffix unique to the request."""
    out = []
    for g in range(args.groups):
        prefix = prompt_of_length(args.prefix_len, seed=1000 + g, vocab_size=args.vocab)
        for v in range(2):
            out.append(prefix + " " + prompt_of_length(args.suffix_len, seed=50_000 + rnd * 100 + g * 2 + v,
                                                       vocab_size=args.vocab))
    return out


def spec_prompts(args, rnd: int) -> list[str]:
    """Each prompt repeats a pattern of 4 to 11 words, which an n-gram lookup predicts from the prompt."""
    out = []
    for i in range(args.spec_requests):
        period = 4 + (i + rnd) % 8
        words = [f"w{FIRST_WORD + 100 + 37 * i + j}" for j in range(period)]
        out.append(" ".join(words[k % period] for k in range(args.spec_prompt_len)))
    return out


def one_round(server: Server, prompts: list[str], output_len: int, concurrency: int) -> dict:
    load = concurrent(server, prompts, output_len, concurrency, stream=True)
    reqs = load["requests"]
    itls = [r["mean_itl_ns"] for r in reqs if r["mean_itl_ns"]]
    gaps = [g for r in reqs for g in r.get("itls_ns") or ()]
    return {"tok_per_s": load["output_tok_per_s"], "wall_s": load["wall_ns"] / 1e9,
            "ttft_ms": statistics.median(r["ttft_ns"] for r in reqs) / 1e6,
            "itl_ms": statistics.median(itls) / 1e6 if itls else None,
            # the median gap between streamed chunks: one decode step (with speculation, several tokens), the
            # gaps that span another request's prefill being the minority
            "step_ms": statistics.median(gaps) / 1e6 if gaps else None,
            "cached_tokens": sum(r["cached_tokens"] or 0 for r in reqs),
            "completion_tokens": sum(r["completion_tokens"] for r in reqs), "requests": reqs}


def summarize(rounds: dict[str, list[dict]], ref: str) -> dict:
    """Per server and figure: median over rounds, min, max, the median's ratio to ``ref``'s, and the median
    of the per-round ratios (each round's figure over ``ref``'s in the same round: drift between rounds,
    which hits both servers of a round alike, cancels)."""
    out = {}
    for name, rs in rounds.items():
        out[name] = {}
        for f in ("tok_per_s", "ttft_ms", "itl_ms", "step_ms"):
            vals = [r[f] for r in rs if r.get(f) is not None]
            if vals:
                out[name][f] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}
    for name, figures in out.items():
        for f, v in figures.items():
            base = out.get(ref, {}).get(f)
            v["ratio_to_" + ref] = v["median"] / base["median"] if base else None
            paired = [r[f] / b[f] for r, b in zip(rounds[name], rounds.get(ref, ())) if r.get(f) and b.get(f)]
            v["paired_ratio_to_" + ref] = statistics.median(paired) if paired else None
    return out


def log(args, msg: str) -> None:
    line = f"{time.strftime('%H:%M:%S')} {msg}"
    print(line, flush=True)
    with open(os.path.join(args.out, "progress.log"), "a") as f:
        f.write(line + "\n")


def phase(args, name: str, servers_spec: dict, prompts_of, output_len: int, concurrency: int, result: dict,
          deadline: float, ref: str, sequential: bool = False) -> None:
    """Start the servers (at once, or each after the last is ready: SGLang's memory check counts the weights
    of servers loading beside it), warm them, then interleaved timed rounds until done or the deadline."""
    work = os.path.join(args.out, "work")
    servers: dict[str, Server] = {}
    rounds: dict[str, list[dict]] = {n: [] for n in servers_spec}
    entry = result[name] = {"servers": {n: {"traced": t, "args": a} for n, (t, a) in servers_spec.items()},
                            "rounds": rounds}
    pins = core_sets(len(servers_spec)) if args.pin and shutil.which("taskset") else []
    if args.pin:
        entry["cpus"] = dict(zip(servers_spec, pins)) or "not pinned (taskset missing or too few cores)"
        log(args, f"{name}: CPUs {entry['cpus']}")
    try:
        t0 = time.time()
        for i, (n, (traced, extra)) in enumerate(servers_spec.items()):
            servers[n] = Server(args.model, trace_dir=os.path.join(work, n) if traced else None,
                                extra_args=extra, tracing_args=["--trace-level", "batch"] if traced else None,
                                log_path=os.path.join(work, f"{n}.log"),
                                wrap=["taskset", "-c", pins[i]] if pins else None)
            if sequential:
                servers[n].wait_ready(timeout=max(240.0, deadline - time.time() - 60))
        for n, s in servers.items():
            s.wait_ready(timeout=max(240.0, deadline - time.time() - 60))
        entry["start_s"] = round(time.time() - t0, 1)
        entry["pools"] = {n: kv_pool(s) for n, s in servers.items()}
        log(args, f"{name}: servers ready after {entry['start_s']} s, pools {entry['pools']}")
        names = list(servers)
        for rnd in range(args.rounds):
            if time.time() > deadline - args.round_reserve_s:
                entry["stopped_early"] = f"time budget: {rnd} of {args.rounds} rounds"
                log(args, f"{name}: {entry['stopped_early']}")
                break
            prompts = prompts_of(args, rnd)
            pgids = {m: s.proc.pid for m, s in servers.items()}  # each server's launch leads its process group
            for n in names[rnd % len(names):] + names[:rnd % len(names)]:
                cpu, throttled = server_cpu(pgids), throttling()
                r = one_round(servers[n], prompts, output_len, concurrency)
                r["host"] = {"cpu_s": delta(cpu, server_cpu(pgids)), "throttling": delta(throttled, throttling())}
                rounds[n].append(r)
                log(args, f"{name} round {rnd + 1} {n}: {r['tok_per_s']:.0f} tok/s, TTFT {r['ttft_ms']:.1f} ms, "
                          f"step {r['step_ms'] or 0:.2f} ms, cached {r['cached_tokens']}, "
                          f"{r['completion_tokens']} tokens out; CPU s {r['host']['cpu_s']}, "
                          f"throttled {r['host']['throttling']}")
        entry["summary"] = summarize({n: rs[1:] or rs for n, rs in rounds.items()}, ref)
        entry["cpu_while_driven"] = {  # medians over rounds 2..: the driven server's processes, its exporters
            n: {k: statistics.median(r["host"]["cpu_s"][n][k] for r in rs[1:] or rs) for k in ("server_s", "children_s")}
            for n, rs in rounds.items() if rs}
        entry["summary_note"] = "medians over rounds 2.. (round 1 fills the caches); ratios to the untraced server"
    except ServerError as exc:
        entry["error"] = str(exc)
        log(args, f"{name}: {exc}")
    finally:
        with ThreadPoolExecutor(max(1, len(servers))) as pool:
            list(pool.map(lambda s: s.stop(), servers.values()))
        for n, (traced, _) in servers_spec.items():
            if traced:
                wait_for_exporters(os.path.join(work, n), timeout=30)
                spans = sorted(Path(work, n).glob("spans-*.jsonl*"))
                entry.setdefault("span_bytes", {})[n] = sum(f.stat().st_size for f in spans)
                if not spans:
                    log(args, f"{name}: {n} recorded NO spans (is the plugin active?)")
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump(result, f, indent=1)


def pack(args) -> None:
    """Traces and logs in one tarball (the device tool brings back at most 8 files of 16 MiB each)."""
    path = os.path.join(args.out, "gpu-features.tar.gz")
    with tarfile.open(path, "w:gz") as tar:
        tar.add(os.path.join(args.out, "work"), arcname="gpu-features")
    log(args, f"packed {os.path.getsize(path) / 2**20:.1f} MiB into {path}")
    dest = os.environ.get("OUT")
    if dest:
        for f in ("results.json", "progress.log", "gpu-features.tar.gz"):
            shutil.copy(os.path.join(args.out, f), dest)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="/tmp/llama2", help="model dir (built from the shipped Llama-2-7B "
                                                            "config and tokenizer if absent)")
    ap.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "gpu-features"))
    ap.add_argument("--budget-s", type=float, default=540, help="wall time for both phases")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--round-reserve-s", type=float, default=30, help="no new round this close to a deadline")
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--base-args", default="--load-format dummy --attention-backend triton --log-level warning "
                    "--disable-piecewise-cuda-graph")  # its torch.compile start outlasts a phase when servers share a GPU
    ap.add_argument("--hicache-pool", type=int, default=8192, help="device KV pool (tokens) of the hicache servers")
    ap.add_argument("--hicache-args", default="--enable-hierarchical-cache --hicache-size 20")
    ap.add_argument("--groups", type=int, default=12)
    ap.add_argument("--prefix-len", type=int, default=1024)
    ap.add_argument("--suffix-len", type=int, default=32)
    ap.add_argument("--hicache-output-len", type=int, default=64)
    ap.add_argument("--hicache-concurrency", type=int, default=4)
    ap.add_argument("--spec-pool", type=int, default=10000)
    ap.add_argument("--spec-args", default="--speculative-algorithm NGRAM")
    ap.add_argument("--spec-requests", type=int, default=32)
    ap.add_argument("--spec-prompt-len", type=int, default=256)
    ap.add_argument("--spec-output-len", type=int, default=128)
    ap.add_argument("--spec-concurrency", type=int, default=8)
    ap.add_argument("--spec-servers", default="spec-traced,spec-untraced,nospec-traced",
                    help="the spec phase's servers (spec-untraced is the reference of every ratio)")
    ap.add_argument("--pin", action="store_true",
                    help="run each server of a phase on its own physical cores (taskset): a server the rounds "
                         "are not driving (SGLang's idle scheduler polls) then never shares a core with the one "
                         "they are")
    ap.add_argument("--phases", default="hicache,spec")
    args = ap.parse_args()
    spec_servers = [n.strip() for n in args.spec_servers.split(",") if n.strip()]
    known = ("spec-traced", "spec-untraced", "nospec-traced")
    if "spec-untraced" not in spec_servers or any(n not in known for n in spec_servers):
        ap.exit(2, f"gpu_features.py: error: --spec-servers takes some of {', '.join(known)}, "
                   f"spec-untraced among them, not {args.spec_servers!r}\n")
    if not _plugin_registered():
        ap.exit(2, "gpu_features.py: error: sglang-tracing's SGLang plugin is not registered in this Python "
                   "(install the project: pip install --no-deps --no-build-isolation -e .); traced servers "
                   "would record nothing\n")
    os.makedirs(os.path.join(args.out, "work"), exist_ok=True)
    if not os.path.exists(os.path.join(args.model, "config.json")):
        build_model_dir("llama-2-7b", args.model)
    t_start = time.time()
    base = shlex.split(args.base_args)
    result = {"args": vars(args), "gpu": _gpu_name()}
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    for i, name in enumerate(phases):
        left = args.budget_s - (time.time() - t_start)
        deadline = time.time() + left / (len(phases) - i)  # an even share of what is left
        if name == "hicache":
            extra = [*base, *shlex.split(args.hicache_args), "--mem-fraction-static", "0.4",
                     "--max-total-tokens", str(args.hicache_pool)]
            phase(args, "hicache", {"hicache-traced": (True, extra), "hicache-untraced": (False, extra)},
                  hicache_prompts, args.hicache_output_len, args.hicache_concurrency, result, deadline,
                  "hicache-untraced")
        elif name == "spec":
            plain = [*base, "--mem-fraction-static", "0.6", "--max-total-tokens", str(args.spec_pool)]
            spec = [*plain, *shlex.split(args.spec_args)]
            configs = {"spec-traced": (True, spec), "spec-untraced": (False, spec), "nospec-traced": (True, plain)}
            phase(args, "spec", {n: configs[n] for n in spec_servers}, spec_prompts, args.spec_output_len,
                  args.spec_concurrency, result, deadline, "spec-untraced", sequential=True)
        else:
            log(args, f"unknown phase {name!r} skipped")
    result["wall_s"] = round(time.time() - t_start, 1)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(result, f, indent=1)
    log(args, f"all done in {result['wall_s']} s")
    pack(args)
    return 0


def _plugin_registered() -> bool:
    from importlib.metadata import entry_points

    return any(ep.value.startswith("sglang_tracing.") for ep in entry_points(group="sglang.srt.plugins"))


def _gpu_name() -> str:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


if __name__ == "__main__":
    sys.exit(main())
