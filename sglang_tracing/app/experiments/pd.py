"""``sglang-trace experiment pd``: a prefill-decode pair (and ``sglang-router`` in PD mode where it
is installed), the plan's workload at two loads (one request at a time, then ``--concurrency``),
one PD report per load and a summary of which stage dominates TTFT at each."""
from __future__ import annotations

import importlib.util
import json
import os
import sys
import time

from sglang_tracing import semconv as sc
from sglang_tracing.app.experiments.common import Experiment
from sglang_tracing.app.client_spans import write_client_dir
from sglang_tracing.app.otlp_receiver import ReceiverProcess, write_manifest
from sglang_tracing.app.pd import PdClient, PdPair, Router, scheduled_ms, served_by_router
from sglang_tracing.app.serving import ServerError, wait_for_exporters
from sglang_tracing.models.builder import prompt_of_length



def _timings(out: dict) -> dict:
    """The client's stamps of one request (wall clock, the spans' clock) and what it was served."""
    c, meta = out["client"], out["meta_info"]
    return {"rid": c["rid"], "sent_ns": c["sent_ns"], "first_chunk_ns": c["first_ns"],
            "first_kernel_ns": c["first_kernel_ns"], "done_ns": c["done_ns"], "ttft_ns": c["first_ns"] - c["sent_ns"],
            "e2e_ns": c["done_ns"] - c["sent_ns"], "prompt_tokens": meta.get("prompt_tokens"),
            "completion_tokens": meta.get("completion_tokens"), "cached_tokens": meta.get("cached_tokens"),
            "finish_reason": (meta.get("finish_reason") or {}).get("type")}


def router_available() -> bool:
    return importlib.util.find_spec("sglang_router") is not None


def _cell(exp: Experiment, load: int, prompts: list[str]) -> dict:
    cell = f"load-{load}"
    done = exp.done(cell)
    if done is not None:
        return done
    folder = exp.out / cell
    folder.mkdir(parents=True, exist_ok=True)
    dirs = (str(folder / "prefill"), str(folder / "decode"))
    pair = PdPair(exp.model_path(), dirs, exp.server_args(), str(folder), tracing_args=exp.tracing_args())
    exp.servers += pair.servers
    receiver = router = None
    try:
        pair.wait_ready(timeout=exp.args.ready_timeout)
        client = pair.client
        if router_available():
            receiver = ReceiverProcess(str(folder / "router"), label="router")
            router = Router(pair, str(folder / "router.log"), receiver.grpc_endpoint)  # None: untraced router
            try:
                client = PdClient(pair.prefill.url, pair.decode.url, pair.bootstrap_port, router.url)
                router.wait_ready(client)
                write_manifest(str(folder / "router"), sc.ROUTER_ROLE, router.cmd)
            except ServerError as exc:  # the pair is still served directly, the way the router would
                print(f"sglang-trace: {cell}: sglang-router did not start ({exc}); sending to the pair directly",
                      file=sys.stderr)
                router.stop()
                router, client = None, pair.client
        print(f"sglang-trace: {cell}: {len(prompts)} requests, {load} in flight"
              + (" through sglang-router" if router else ""), file=sys.stderr)
        before = (router.scheduled() if router else None, scheduled_ms(os.getpid()))
        t0 = time.time_ns()
        outs = client.generate_all(prompts, exp.args.output_len, load)
        wall = time.time_ns() - t0
        after = (router.scheduled() if router else None, scheduled_ms(os.getpid()))
        scheduled = {who: {k: a[k] - b[k] for k in a} for who, b, a in zip(("router", "client"), before, after)
                     if a and b}
        write_client_dir(str(folder / "client"), [o["client"] for o in outs], sys.argv)
        if router is not None:  # it exports in batches: its spans of this cell's requests first
            receiver.wait_for(lambda spans: len(served_by_router(spans)) > len(prompts), timeout=30)  # + its readiness
    finally:
        if router is not None:
            router.stop()
        pair.stop()
        for server in pair.servers:
            exp.servers.remove(server)
        if receiver is not None:
            receiver.stop()
        for d in dirs:
            wait_for_exporters(d, timeout=60)
    ttft = sorted((o["client"]["first_ns"] - o["client"]["sent_ns"]) / 1e6 for o in outs)
    return exp.record(cell, {"load": load, "requests": [_timings(o) for o in outs], "client_ttft_ms": ttft,
                             "wall_ns": wall, "trace_dirs": [*dirs, *(str(folder / side) for side in ("router", "client")
                                                           if (folder / side).is_dir())],
                             "router": bool(router), "scheduled_during_workload": scheduled})


def run(exp: Experiment) -> list[str]:
    args = exp.args
    prompts = [prompt_of_length(args.prompt_len, seed=i, vocab_size=exp.vocab) for i in range(args.num_requests)]
    results = [_cell(exp, load, prompts) for load in sorted({1, max(1, args.concurrency)})]
    from sglang_tracing.analyzer import api

    written = []
    runs = {}
    for result in results:
        cell = exp.out / f"load-{result['load']}"
        dirs = [str(cell / side) for side in ("prefill", "decode", "router", "client")
                if side in ("prefill", "decode") or list((cell / side).glob("spans-*.jsonl*"))]
        written += api.analyze(dirs, reports="timeline", out_dir=str(cell / "reports"), formats="text,md")
        runs[f"{result['load']} in flight"] = dirs
    written += api.pd_loads(runs, str(exp.out))
    (exp.out / "written.json").write_text(json.dumps(written, indent=1))
    return written
