"""Experiments 01-06. Each cell records a result.json; the reports read the cells back."""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time

from sglang_tracing.config import CAPTURE_IDLE_END_S, DEFAULT_CAPTURE_STEPS, ENV_CAPTURE_STEPS, MULTICAST_OFF_ENV
from sglang_tracing.app.experiments.common import Experiment, progress
from sglang_tracing.models.builder import prompt_of_length
from sglang_tracing.app.serving import Client
from sglang_tracing.app.workload import concurrent


def drive(client: Client, prompts: list[str], output_len: int, concurrency: int, exp: Experiment | None = None,
          what: str = "requests") -> dict:
    """The workload; with ``exp``, a progress line at every tenth of the requests answered."""
    return concurrent(client, prompts, output_len, concurrency, timeout=900,
                      on_done=exp.request_progress(len(prompts), what) if exp else None)


@contextlib.contextmanager
def target(exp: Experiment, cell: str, extra: list[str] | None = None, env: dict | None = None):
    """A running server for a cell: --url's, or a traced one launched for it."""
    if exp.args.url:
        yield Client(exp.args.url), None
    else:
        with exp.server(cell, extra, env) as (server, trace_dir):
            yield server, trace_dir


def render(exp: Experiment, make, *args, **kwargs) -> list[str]:
    """Render a report. A host without the analyzer's dependencies (a bare GPU host) keeps the
    recordings and says how to render them elsewhere: rerunning an experiment only re-renders."""
    try:
        return make(*args, **kwargs)
    except ModuleNotFoundError as exc:
        print(f"sglang-trace: report skipped ({exc.name} is not installed here); everything is recorded: "
              f"rerun with --out {exp.out} where it is", file=sys.stderr)
        return []


def _experiment_report(exp: Experiment, name: str) -> list[str]:
    """The experiment's own report, from its recorded cells (``analyzer.experiment_reports``)."""
    def make():
        from sglang_tracing.analyzer import experiment_reports

        return experiment_reports.write(name, exp.out)

    return render(exp, make)


def _analyze(exp: Experiment, trace_dir: str | None, reports: str, **sources) -> list[str]:
    if not trace_dir:
        return []

    def make():
        from sglang_tracing.analyzer import api

        exp.say(f"writing reports for {trace_dir}")
        return api.analyze(trace_dir, reports=reports, out_dir=os.path.join(os.path.dirname(trace_dir), "reports"),
                           **sources)

    return render(exp, make)


# ---- 01 baseline ----
PROFILED_REQUESTS = 4  # the profiled pass: a few requests, enough forwards to close the Kineto window
PROFILED_STEPS = "0:8"  # the readiness probe's forward, then the pass's prefill and first decode steps
# layer ranges and per-op kernels need eager forwards; no SGLang warm-up, so the window starts where we know
EAGER_ARGS = ["--disable-cuda-graph", "--skip-server-warmup"]


def baseline(exp: Experiment) -> list[str]:
    """The measured pass (the plan's experiment 1), then a short profiled pass on a second server:
    layer ranges on eager forwards and a Kineto trace, whose figures the story labels as its own."""
    a = exp.args
    if exp.done("baseline") is None:
        prompts = [prompt_of_length(a.prompt_len, seed=i, vocab_size=exp.vocab) for i in range(a.num_requests)]
        with target(exp, "baseline") as (client, trace_dir):
            result = drive(client, prompts, a.output_len, a.concurrency, exp, "measured pass")
            if trace_dir:
                exp.wait_recorded(trace_dir, [r["rid"] for r in result["requests"]])
        result["trace_dir"] = trace_dir
        exp.record("baseline", result)
    profiled = None
    if not (a.url or a.no_profiled_pass):
        if exp.done("profiled") is None:
            exp.record("profiled", _profiled_pass(exp))
        profiled = exp.done("profiled")["trace_dir"]
    written = _analyze(exp, exp.done("baseline")["trace_dir"], "story,radix,timeline", profiled=profiled)
    return written + _experiment_report(exp, "baseline")


def _profiled_pass(exp: Experiment) -> dict:
    a = exp.args
    prompts = [prompt_of_length(a.prompt_len, seed=80_000 + i, vocab_size=exp.vocab) for i in range(PROFILED_REQUESTS)]
    exp.say(f"profiled pass: {PROFILED_REQUESTS} requests, --trace-level layer, eager forwards, Kineto over "
            f"forwards {PROFILED_STEPS} (kept out of the measured numbers)")
    with exp.server("profiled", EAGER_ARGS, tracing_args=["--trace-level", "layer", "--profile-steps",
                                                          PROFILED_STEPS]) as (client, trace_dir):
        result = drive(client, prompts, min(a.output_len, 16), PROFILED_REQUESTS, exp, "profiled pass")
        exp.wait_recorded(trace_dir, [r["rid"] for r in result["requests"]])
    result.update(trace_dir=trace_dir, profiled_steps=PROFILED_STEPS)
    return result


# ---- 02 RadixCache ----
RADIX_SCENARIOS = ("cold_start", "shared_system_prompt", "exact_repeat", "cache_pressure")


def radix_prompts(scenario: str, n: int, prompt_len: int, vocab: int) -> list[str]:
    if scenario == "cold_start":
        return [prompt_of_length(prompt_len, seed=10_000 + i, vocab_size=vocab) for i in range(n)]
    if scenario == "shared_system_prompt":
        system = prompt_of_length(prompt_len // 2, seed=1, vocab_size=vocab)
        return [system + " " + prompt_of_length(prompt_len - prompt_len // 2, seed=20_000 + i, vocab_size=vocab)
                for i in range(n)]
    if scenario == "exact_repeat":
        return [prompt_of_length(prompt_len, seed=3, vocab_size=vocab)] * n
    # cache pressure: distinct prompts revisited after the pool has had to evict them
    firsts = [prompt_of_length(prompt_len, seed=30_000 + i, vocab_size=vocab) for i in range(n // 2)]
    return firsts + firsts[: n - len(firsts)]


def radix(exp: Experiment) -> list[str]:
    a = exp.args
    # room for about two requests: revisiting a prompt finds it evicted by the ones in between
    pressure_tokens = max(a.prompt_len * 2 + a.output_len * 4 + 64, 1024)
    for scenario in progress(RADIX_SCENARIOS, "radix scenarios"):
        if exp.done(scenario) is not None:
            continue
        extra = ["--max-total-tokens", str(pressure_tokens)] if scenario == "cache_pressure" else []
        prompts = radix_prompts(scenario, a.num_requests, a.prompt_len, exp.vocab)
        with target(exp, scenario, extra) as (client, trace_dir):
            # sequential: each request can find what the previous ones left in the cache
            result = drive(client, prompts, a.output_len, 1, exp, scenario)
        result.update(trace_dir=trace_dir, scenario=scenario, max_total_tokens=pressure_tokens if extra else None)
        exp.record(scenario, result)
        _analyze(exp, trace_dir, "radix,story")
    return _experiment_report(exp, "radix")


# ---- 03 FlashInfer vs Triton ----
WARMUP_OUTPUT_LEN = 8


def backends(exp: Experiment) -> list[str]:
    a = exp.args
    cells = [(b, bs, n) for b in a.backends.split(",") for bs in a.batch_sizes for n in a.seq_lens]
    by_backend: dict[str, list] = {}
    for cell in cells:
        by_backend.setdefault(cell[0], []).append(cell)
    for backend, group in by_backend.items():
        todo = [c for c in group if exp.done(f"{c[0]}-bs{c[1]}-len{c[2]}") is None]
        if not todo:
            continue
        extra = ["--attention-backend", backend] if not a.url else []
        with target(exp, f"server-{backend}", extra) as (client, trace_dir):
            for _, bs, n in progress(todo, f"{backend} cells"):
                # distinct seeds: no prefix-cache hits across cells or between warm-up and measurement
                warm, prompts = ([prompt_of_length(n, seed=n * 100_000 + bs * 1000 + offset + i, vocab_size=exp.vocab)
                                  for i in range(bs)] for offset in (500, 0))
                # the shape's first run pays JIT compiles and allocator growth: keep it out of the numbers
                warmup = drive(client, warm, min(WARMUP_OUTPUT_LEN, a.output_len), bs)
                result = drive(client, prompts, a.output_len, bs)
                result.update(backend=backend, batch_size=bs, seq_len=n, trace_dir=trace_dir,
                              warmup_start_ns=warmup["start_ns"], warmup_end_ns=warmup["end_ns"])
                exp.record(f"{backend}-bs{bs}-len{n}", result)
    for backend in by_backend:  # each server's own story (absent with --url)
        for trace in sorted(exp.out.glob(f"server-{backend}*/trace")):
            if trace.parent.name == f"server-{backend}" or trace.parent.name.startswith(f"server-{backend}-"):
                _analyze(exp, str(trace), "story,radix,timeline")  # -2...: a server of a resumed run
    return _experiment_report(exp, "backends")


# ---- 06 TP scaling ----
PROFILE_STEPS = 10  # forwards SGLang's profiler records per rank, after the measured pass


def sglang_profile(client, out_dir, prompts: list[str], cpu: bool, timeout: float = 120) -> dict:
    """SGLang's own profiler (/start_profile) over a short extra pass after the measured one, so it
    never perturbs the numbers: one Kineto trace per TP rank, with its all-reduce ops or kernels."""
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        client.post("/start_profile", {"output_dir": str(out_dir.resolve()), "num_steps": PROFILE_STEPS,
                                       "profile_id": "tp", "activities": ["CPU"] if cpu else ["CPU", "GPU"]})
        drive(client, prompts, PROFILE_STEPS + 6, len(prompts))
    except OSError as exc:  # a server (or --url) without the profiler endpoint: the cell still counts
        return {"profile_error": str(exc)}
    deadline = time.time() + timeout
    while time.time() < deadline and not list(out_dir.glob("*.trace.json.gz")):
        time.sleep(1)
    time.sleep(2)  # the other ranks export at the same barrier
    return {"profile_steps": PROFILE_STEPS, "profile_ranks": len(list(out_dir.glob("*.trace.json.gz")))}


def topology() -> str:
    if shutil.which("nvidia-smi"):
        done = subprocess.run(["nvidia-smi", "topo", "-m"], capture_output=True, text=True)
        return done.stdout or done.stderr
    return "no nvidia-smi on this host (CPU run: TP ranks talk through gloo in shared memory)"


def tp(exp: Experiment) -> list[str]:
    a = exp.args
    gpu_sets = a.gpus.split(";") if a.gpus else []
    for i, size in enumerate(progress(a.tp_sizes, "TP sizes")):
        cell = f"tp{size}"
        if exp.done(cell) is not None:
            continue
        env = dict(MULTICAST_OFF_ENV)
        if gpu_sets:
            env["CUDA_VISIBLE_DEVICES"] = gpu_sets[i]
        if a.cpu:
            env["SGLANG_CPU_OMP_THREADS_BIND"] = "|".join(str(r % (os.cpu_count() or 1)) for r in range(size))
        # distinct prompts for warm-up, measured pass and profile pass: no prefix-cache hits between them
        warm, prompts, profiled = ([prompt_of_length(a.prompt_len, seed=seed + j, vocab_size=exp.vocab)
                                    for j in range(n)]
                                   for seed, n in ((70_000, a.concurrency), (50_000, a.num_requests),
                                                   (90_000, a.concurrency)))
        with target(exp, cell, ["--tp", str(size)], env) as (client, trace_dir):
            # first use of each shape compiles kernels and captures graphs: keep it out of the numbers
            warmup = drive(client, warm, min(WARMUP_OUTPUT_LEN * 2, a.output_len), a.concurrency)
            result = drive(client, prompts, a.output_len, a.concurrency, exp, f"TP={size} measured pass")
            profile = (sglang_profile(client, exp.out / cell / "profile", profiled, a.cpu)
                       if size > 1 else {})  # one rank: no all-reduce to profile
        result.update(tp=size, trace_dir=trace_dir, gpus=env.get("CUDA_VISIBLE_DEVICES"), topology=topology(),
                      requested_requests=a.num_requests, output_len=a.output_len, concurrency=a.concurrency,
                      warmup_start_ns=warmup["start_ns"], warmup_end_ns=warmup["end_ns"], **profile)
        exp.record(cell, result)
    return _experiment_report(exp, "tp_scaling")


# ---- 04 nsys timeline / 05 ncu attention ----
def profiled(exp: Experiment, tool: str) -> list[str]:
    """The traced server under nsys (timeline report) or ncu (attention report), a few requests."""
    a = exp.args
    cell = f"{tool}-{a.backend}"
    if exp.done(cell) is None:
        exp.record(cell, _profile_run(exp, tool, cell))
    result = exp.done(cell)
    reports = "timeline,story" if tool == "nsys" else "attention,story"
    source = {"nsys": result.get("profile")} if tool == "nsys" else {"ncu": result.get("profile")}
    return _analyze(exp, result["trace_dir"], reports, **source)


def _profile_run(exp: Experiment, tool: str, cell: str) -> dict:
    import signal

    from sglang_tracing.app import profilers as tools
    from sglang_tracing.app.serving import Server, wait_for_exporters

    a = exp.args
    trace_dir = exp.fresh_folder(cell) / "trace"
    trace_dir.mkdir(parents=True)
    if tool == "nsys":
        binary = tools.find_nsys(a.tool_path)
        wrap = tools.profile_command(binary, str(trace_dir), [])
        env, extra = {ENV_CAPTURE_STEPS: DEFAULT_CAPTURE_STEPS}, ["--attention-backend", a.backend]
    else:
        binary = tools.find_ncu(a.tool_path)
        wrap = [binary, *tools.NCU_ARGS, "-o", str(trace_dir / "attention")]
        env, extra = {}, ["--attention-backend", a.backend, *tools.NCU_SERVER_ARGS]
    server = Server(exp.model_path(), trace_dir=str(trace_dir), extra_args=exp.server_args(extra), env=env,
                    tracing_args=exp.tracing_args(), wrap=wrap, log_path=str(trace_dir.parent / "server.log"))
    try:
        # ncu counts kernel launches from the first request and nsys captures from the first forward:
        # the workload's request must come first, so no generate probe before it
        server.wait_ready(timeout=a.ready_timeout, round_trip=False)
        prompts = [prompt_of_length(a.prompt_len, seed=60_000 + i, vocab_size=exp.vocab)
                   for i in range(a.num_requests)]
        result = drive(server, prompts, a.output_len, 1, exp, f"requests under {tool}")
        time.sleep(2 * CAPTURE_IDLE_END_S)  # the idle scheduler ends the nsys capture window
    finally:
        server.stop(sig=signal.SIGINT, timeout=300)
        wait_for_exporters(str(trace_dir), timeout=60)
    if tool == "nsys":
        profile = tools.export_sqlite(binary, str(trace_dir))
    else:
        profile = tools.export_ncu_csv(binary, str(trace_dir / "attention.ncu-rep"))[1]
    result.update(trace_dir=str(trace_dir), profile=profile, backend=a.backend, tool=tool)
    return result
