"""Tracing overhead, side by side, with equal KV pools: untraced SGLang, our tracing (default level)
and SGLang's own OpenTelemetry tracing (``--enable-trace``, OTLP/HTTP to a local sink).

    python3 benchmarks/overhead.py --model DIR [--rounds 4] [--concurrency 64] [--prompt-len 512]
        [--output-len 128] [--max-total-tokens 45000] [--mem-fraction 0.85]
        [--extra "--attention-backend triton"] [--configs untraced,traced,sglang-trace] [--out overhead.json]

SGLang sizes its KV pool from the memory free when it starts, so servers sharing a GPU get unequal
pools (and a smaller pool caps the batch) unless ``--max-total-tokens`` fixes them: every server gets
the same value, and the pool each one reports (/server_info) is checked and recorded. All servers run
at once on the same device and are driven in interleaved rounds (order rotated each round), so drift
hits every configuration alike. A round per server: ``--batch1-samples`` streamed requests one at a
time, then ``--concurrency`` streamed requests at once (output throughput, median TTFT, median mean
ITL). Prints per configuration the median over rounds, its spread (min-max over rounds) and the ratio
to the untraced server; writes everything (per-round figures, pools, sink counts, the server-vs-client
TTFT agreement of our trace) to ``--out`` after every round, so an interrupted run keeps what it measured.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from sglang_tracing.models.builder import prompt_of_length
from sglang_tracing.app.serving import CPU_ARGS, Server, free_port, wait_for_exporters
from sglang_tracing.app.workload import client_timings, concurrent
from top_attached import ATTACHED, attach, detach

# name -> (our tracing args or None for no trace dir, extra SGLang args, needs the OTLP sink)
CONFIGS = {"untraced": (None, [], False),
           "traced": (["--trace-level", "batch"], [], False),
           "traced-layer": (["--trace-level", "layer"], [], False),
           "traced-top": (["--trace-level", "batch"], [], False),  # with `sglang-trace top` attached (top_attached)
           "sglang-trace": (None, ["--enable-trace"], True)}
DEFAULT_CONFIGS = "untraced,traced,sglang-trace"
# what SGLang's observability/trace.py imports before --enable-trace can start
SGLANG_TRACE_MODULES = ("opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
                        "opentelemetry.exporter.otlp.proto.http.trace_exporter")


# ---- the OTLP/HTTP sink SGLang's tracing exports to (its own process: no GIL shared with the client) ----
def _sink(port: int, counts) -> None:
    from http.server import ThreadingHTTPServer

    from sglang_tracing.app.otlp_receiver import QuietOtlpHandler

    try:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    except ImportError:
        ExportTraceServiceRequest = None

    class Handler(QuietOtlpHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            spans = 0
            if ExportTraceServiceRequest is not None:
                try:
                    req = ExportTraceServiceRequest.FromString(body)
                    spans = sum(len(ss.spans) for rs in req.resource_spans for ss in rs.scope_spans)
                except Exception:  # not protobuf: count the request, not its spans
                    spans = 0
            with counts.get_lock():
                counts[0] += 1
                counts[1] += len(body)
                counts[2] += spans
            self.accepted()

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


class Sink:
    def __init__(self):
        self.port = free_port()
        self.counts = multiprocessing.Array("q", 3)  # export requests, bytes, spans
        self.proc = multiprocessing.Process(target=_sink, args=(self.port, self.counts), daemon=True)
        self.proc.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/traces"

    def received(self) -> dict:
        return dict(zip(("export_requests", "bytes", "spans"), self.counts[:]))

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.join(10)


def missing_modules(modules) -> list[str]:
    """Modules the servers' Python (this one) cannot import."""
    return [m for m in modules if subprocess.run([sys.executable, "-c", f"import {m}"], capture_output=True).returncode]


def kv_pool(server: Server) -> int | None:
    """The server's KV pool in tokens, as its scheduler reports it."""
    try:
        with urllib.request.urlopen(server.url + "/server_info", timeout=30) as r:
            info = json.loads(r.read())
    except (OSError, ValueError):
        return None
    for source in (info, *(info.get("internal_states") or [])):
        if isinstance(source, dict) and source.get("max_total_num_tokens"):
            return int(source["max_total_num_tokens"])
    return None


# ---- workload ----
def prompts(args, seed: int, n: int) -> list[str]:
    return [prompt_of_length(args.prompt_len, seed=seed * 10_000 + i, vocab_size=args.vocab) for i in range(n)]


def one_round(server: Server, args, seed: int) -> dict:
    """Batch-1 streamed requests, then ``concurrency`` streamed requests at once."""
    single = [client_timings(server.generate(p, max_new_tokens=args.batch1_output_len or args.output_len,
                                             stream=True, timeout=600))
              for p in prompts(args, seed, args.batch1_samples)]
    load = concurrent(server, prompts(args, seed + 5000, args.requests or args.concurrency), args.output_len,
                      args.concurrency, stream=True, keep_alive=args.keep_alive)
    reqs = load["requests"]
    return {"tok_per_s": load["output_tok_per_s"],
            "ttft_ms": statistics.median(r["ttft_ns"] for r in reqs) / 1e6,
            "itl_ms": statistics.median(r["mean_itl_ns"] for r in reqs if r["mean_itl_ns"]) / 1e6,
            "batch1_ttft_ms": statistics.median(r["ttft_ns"] for r in single) / 1e6 if single else None,
            "batch1_itl_ms": statistics.median(r["mean_itl_ns"] for r in single) / 1e6 if single else None,
            "batch1_requests": single, "concurrent_requests": reqs}


def summarize(rounds: dict[str, list[dict]], ref: str) -> dict:
    """Per config and figure: median over rounds, min, max, and the median's ratio to ``ref``."""
    figures = ("tok_per_s", "ttft_ms", "itl_ms", "batch1_ttft_ms", "batch1_itl_ms")
    out = {}
    for name, rs in rounds.items():
        out[name] = {}
        for f in figures:
            vals = [r[f] for r in rs if r.get(f) is not None]
            if vals:
                out[name][f] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}
    for name in out:
        for f, v in out[name].items():
            base = out.get(ref, {}).get(f)
            v["ratio"] = v["median"] / base["median"] if base else None
    return out


def ttft_agreement(trace_dir: str, rounds: list[dict]) -> dict:
    """Our trace's user-visible TTFT over the client's, per streamed request of the traced server, and
    where the difference lies (same host, same clock): client sent -> server received, and server's
    first byte -> client's first chunk, in microseconds."""
    try:
        from sglang_tracing.analyzer.analyses.requests import request_table
        from sglang_tracing.analyzer.loaders.trace_dir import load_trace_dir
    except ImportError as exc:  # a bare GPU host: the trace dir (--keep) can be checked elsewhere
        return {"computed": False, "why": f"analyzer not importable here ({exc.name})"}
    model = load_trace_dir(trace_dir, use_cache=False)
    ours = {r["rid"]: r for r in request_table(model.spans, model.manifest).iter_rows(named=True)}
    spread = lambda xs: {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}  # noqa: E731
    out = {"computed": True}
    for kind in ("batch1", "concurrent"):
        pairs = [(ours[q["rid"]], q) for r in rounds for q in r[f"{kind}_requests"]
                 if ours.get(q["rid"], {}).get("ttft_ns") and q["ttft_ns"]]
        if not pairs:
            continue
        out[kind] = {"requests": len(pairs), **spread([o["ttft_ns"] / q["ttft_ns"] for o, q in pairs])}
        kept = [o["ttft_ns"] / q["ttft_ns"] for o, q in pairs if q.get("kept_alive")]
        if kept:
            out[kind]["kept_alive"] = {"requests": len(kept), **spread(kept)}
        if all(q.get("sent_ns") and o.get("first_byte_ns") for o, q in pairs):
            out[kind]["sent_to_received_us"] = spread([(o["received_ns"] - q["sent_ns"]) / 1e3 for o, q in pairs])
            out[kind]["first_byte_to_chunk_us"] = spread([(q["first_chunk_ns"] - o["first_byte_ns"]) / 1e3
                                                          for o, q in pairs])
            by = [o.get("received_by") or "not recorded" for o, _ in pairs]
            out[kind]["received_by"] = {b: by.count(b) for b in sorted(set(by))}
    return out


def agreement_only(out: str, keep: str | None) -> int:
    with open(out) as f:
        result = json.load(f)
    trace_dir = os.path.join(keep or result["args"]["keep"], "traced")
    result["ttft_agreement"] = {**ttft_agreement(trace_dir, result["rounds"]["traced"]),
                                "computed_where": "off the GPU host, from the kept trace dir (--agreement-only)"}
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print_table(result["summary"], result["pools"], result["sink"], result["ttft_agreement"])
    return 0


def print_table(summary: dict, pools: dict, sink: dict | None, agreement: dict | None) -> None:
    print(f"{'config':<14}{'KV pool':>9}{'tok/s':>9}{'ratio':>7}{'spread':>15}{'TTFT ms':>9}{'ratio':>7}"
          f"{'ITL ms':>8}{'ratio':>7}{'b1 TTFT':>9}{'ratio':>7}")
    for name, s in summary.items():
        t, f, i, b = (s.get(k, {}) for k in ("tok_per_s", "ttft_ms", "itl_ms", "batch1_ttft_ms"))
        spread = f"{t['min']:.0f}-{t['max']:.0f}" if t else "-"
        fmt = lambda v, k, p: f"{v[k]:.{p}f}" if v and v.get(k) is not None else "-"  # noqa: E731
        print(f"{name:<14}{pools.get(name) or '?':>9}{fmt(t, 'median', 0):>9}{fmt(t, 'ratio', 3):>7}{spread:>15}"
              f"{fmt(f, 'median', 1):>9}{fmt(f, 'ratio', 3):>7}{fmt(i, 'median', 3):>8}{fmt(i, 'ratio', 3):>7}"
              f"{fmt(b, 'median', 2):>9}{fmt(b, 'ratio', 3):>7}")
    if sink is not None:
        print(f"SGLang --enable-trace exported {sink['spans']} spans in {sink['export_requests']} OTLP requests "
              f"({sink['bytes']} bytes)" + ("" if sink["spans"] or sink["export_requests"] else
                                            ": NOTHING, so that arm measured no tracing"))
    if agreement and agreement.get("computed"):
        for kind in ("batch1", "concurrent"):
            a = agreement.get(kind)
            if a:
                print(f"our TTFT / client TTFT ({kind}, {a['requests']} streamed requests): median {a['median']:.3f} "
                      f"(min {a['min']:.3f}, max {a['max']:.3f})")
                if "kept_alive" in a:
                    k = a["kept_alive"]
                    print(f"  on kept-alive connections ({k['requests']}): median {k['median']:.3f} "
                          f"(min {k['min']:.3f}, max {k['max']:.3f})")
                if "received_by" in a:
                    print("  arrival stamped by: " + ", ".join(f"{b} {n}" for b, n in a["received_by"].items()))
                for part, what in (("sent_to_received_us", "client sent -> server received"),
                                   ("first_byte_to_chunk_us", "server first byte -> client chunk")):
                    if part in a:
                        print(f"  {what}: median {a[part]['median']:.0f} us (min {a[part]['min']:.0f}, "
                              f"max {a[part]['max']:.0f})")
    elif agreement:
        print(f"TTFT agreement not computed: {agreement['why']}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--requests", type=int, help="concurrent requests a round (default: --concurrency)")
    ap.add_argument("--keep-alive", action="store_true",
                    help="connections carry one request after another (pooling clients), not one each")
    ap.add_argument("--batch1-samples", type=int, default=4, help="streamed requests one at a time per round")
    ap.add_argument("--batch1-output-len", type=int,
                    help="output tokens of a batch-1 request (default: --output-len; its TTFT needs one, so "
                         "fewer buy more TTFT samples a minute)")
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--mem-fraction", type=float, default=0.85)
    ap.add_argument("--max-total-tokens", type=int, default=45000, help="the same KV pool for every server")
    ap.add_argument("--extra", default="--attention-backend triton", help="more SGLang args for every server")
    ap.add_argument("--configs", default=DEFAULT_CONFIGS, help=f"comma-separated, of {', '.join(CONFIGS)}")
    ap.add_argument("--sequential-start", action="store_true", help="start servers one after another")
    ap.add_argument("--out", default="overhead.json", help="JSON result, rewritten after every round")
    ap.add_argument("--keep", help="keep trace dirs and server logs under this dir")
    ap.add_argument("--cpu", action="store_true", help="tiny CPU run (contention, not overhead: a smoke test)")
    ap.add_argument("--agreement-only", action="store_true",
                    help="only (re)compute the TTFT agreement of an earlier --out from its --keep trace dir "
                         "(the GPU host has no analyzer)")
    args = ap.parse_args()
    if args.agreement_only:
        try:
            return agreement_only(args.out, args.keep)
        except (OSError, ValueError, KeyError) as exc:
            ap.exit(2, f"overhead.py: error: cannot recompute the TTFT agreement of {args.out}: {exc!r}\n")
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    bad = [n for n in names if n not in CONFIGS]
    if bad or not names:
        ap.exit(2, f"overhead.py: error: unknown config {', '.join(bad) or args.configs!r}; choose from {', '.join(CONFIGS)}\n")
    if any(CONFIGS[n][2] for n in names) and (missing := missing_modules(SGLANG_TRACE_MODULES)):
        ap.exit(2, f"overhead.py: error: SGLang's --enable-trace needs {', '.join(missing)} (pip install "
                   "opentelemetry-exporter-otlp-proto-grpc opentelemetry-exporter-otlp-proto-http grpcio), "
                   "or leave sglang-trace out of --configs\n")
    cpu = list(CPU_ARGS)
    if "--max-total-tokens" in cpu:
        del cpu[cpu.index("--max-total-tokens"):cpu.index("--max-total-tokens") + 2]
    base = (cpu if args.cpu else
            ["--load-format", "dummy", "--mem-fraction-static", str(args.mem_fraction), "--log-level", "warning",
             *shlex.split(args.extra)])
    base += ["--max-total-tokens", str(args.max_total_tokens)]
    work = args.keep or tempfile.mkdtemp(prefix="overhead-")
    os.makedirs(work, exist_ok=True)
    sink = Sink() if any(CONFIGS[n][2] for n in names) else None
    servers: dict[str, Server] = {}
    tops: dict = {}  # config -> its attached `sglang-trace top` process
    rounds: dict[str, list[dict]] = {n: [] for n in names}
    result = {"args": vars(args), "configs": {n: CONFIGS[n][:2] for n in names}, "pools": {}, "rounds": rounds}

    def save():
        result["summary"] = summarize(rounds, names[0])
        result["sink"] = sink.received() if sink else None
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)

    try:
        for name in names:
            tracing, extra, otlp = CONFIGS[name]
            env = {"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"} if otlp else None
            extra = [*extra, "--otlp-traces-endpoint", sink.endpoint] if otlp else extra
            servers[name] = Server(args.model, trace_dir=os.path.join(work, name) if tracing else None,
                                   extra_args=[*base, *extra], tracing_args=tracing, env=env,
                                   log_path=os.path.join(work, f"{name}.log"))
            if args.sequential_start:
                servers[name].wait_ready(timeout=900)
        t0 = time.time()
        for name in names:
            servers[name].wait_ready(timeout=900)
        print(f"{len(names)} servers ready after {time.time() - t0:.0f} s", flush=True)
        result["pools"] = {n: kv_pool(s) for n, s in servers.items()}
        tops.update({n: attach(os.path.join(work, n), os.path.join(work, f"top-{n}.jsonl"))
                     for n in names if n in ATTACHED})
        if len(set(result["pools"].values())) != 1:
            print(f"WARNING: unequal KV pools {result['pools']}: the batch a server reaches differs", flush=True)
        with ThreadPoolExecutor(len(names)) as pool:  # warm every server with the shapes it will see
            list(pool.map(lambda n: one_round(servers[n], args, seed=0), names))
        for rnd in range(args.rounds):
            order = names[rnd % len(names):] + names[:rnd % len(names)]
            for name in order:
                r = one_round(servers[name], args, seed=rnd + 1)
                rounds[name].append(r)
                print(f"round {rnd + 1}/{args.rounds} {name}: {r['tok_per_s']:.0f} tok/s, TTFT {r['ttft_ms']:.1f} ms, "
                      f"ITL {r['itl_ms']:.3f} ms", flush=True)
            save()
    finally:
        for name, proc in tops.items():
            result.setdefault("top_attached", {})[name] = detach(proc, os.path.join(work, f"top-{name}.jsonl"))
        for s in servers.values():
            s.stop()
        for name in names:
            if CONFIGS[name][0] is not None:
                wait_for_exporters(os.path.join(work, name), timeout=60)
        if sink:
            result["sink"] = sink.received()
            sink.stop()
    if "traced" in names and rounds["traced"]:
        result["ttft_agreement"] = ttft_agreement(os.path.join(work, "traced"), rounds["traced"])
    save()
    print_table(result["summary"], result["pools"], result["sink"], result.get("ttft_agreement"))
    for name, seen in result.get("top_attached", {}).items():
        print(f"sglang-trace top attached to {name}: {seen}")
    print(f"result: {args.out}; servers' logs and traces: {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
