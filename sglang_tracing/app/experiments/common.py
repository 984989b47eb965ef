"""What every experiment shares: options, the output folder, resumable cells, server lifetimes."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

from sglang_tracing import semconv as sc
from sglang_tracing.analyzer.loaders.files import resolve
from sglang_tracing.models.builder import ARCHITECTURES, build_model_dir
from sglang_tracing.app.serving import CPU_SERVING_ARGS, DUMMY_WEIGHTS, Server, wait_for_exporters


def add_common_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help="use this running SGLang server instead of launching one (client timings only)")
    p.add_argument("--model", default="tiny-llama", help="model path, or a shipped architecture: "
                   + ", ".join(ARCHITECTURES))
    p.add_argument("--num-requests", type=int, default=16, help="requests in the measured pass (per cell)")
    p.add_argument("--prompt-len", type=int, default=256, help="prompt tokens per request")
    p.add_argument("--output-len", type=int, default=32, help="output tokens per request")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight at once")
    p.add_argument("--out", help="output folder (default traces/<experiment>-<timestamp>); an existing one "
                   "resumes: recorded cells are kept, an interrupted cell is recorded again from scratch")
    p.add_argument("--cpu", action="store_true", help="serve on CPU (torch_native attention)")
    p.add_argument("--dummy-weights", action="store_true",
                   help="serve random weights (--load-format dummy) for a --model path too; a shipped "
                        "architecture always has them (it ships no weights)")
    p.add_argument("--sglang-args", default="", help="more SGLang arguments, quoted")
    p.add_argument("--trace-args", default="", help="more tracing options for launched servers, quoted "
                   "(e.g. '--trace-level layer --profile-steps 1:3')")
    p.add_argument("--ready-timeout", type=float, default=600, help="seconds a server may take to serve")
    p.add_argument("--no-profiled-pass", action="store_true",
                   help="baseline: skip the short profiled pass (layer ranges, eager forwards, Kineto) "
                        "that fills the story's per-layer and kernel figures")


class Experiment:
    """An output folder of cells; a cell already recorded is skipped when the experiment reruns."""

    def __init__(self, name: str, args: argparse.Namespace):
        self.name, self.args = name, args
        self.out = Path(args.out or f"traces/{name}-{time.strftime('%Y%m%d-%H%M%S')}")
        self.out.mkdir(parents=True, exist_ok=True)
        self.servers: list[Server] = []
        self._t0 = time.monotonic()
        self._log_run()

    def _log_run(self) -> None:
        """experiment.json lists every run over this folder: the recording one and each resume or re-render."""
        f = self.out / "experiment.json"
        runs = json.loads(f.read_text()).get("runs", []) if f.exists() else []
        runs.append({"argv": sys.argv, "args": recorded_args(self.args),
                     "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        f.write_text(json.dumps({"experiment": self.name, "runs": runs}, indent=1, default=str))

    def say(self, message: str) -> None:
        """One progress line on stderr, with the seconds since the experiment started."""
        print(f"[{time.monotonic() - self._t0:5.0f} s] {self.name}: {message}", file=sys.stderr, flush=True)

    def request_progress(self, total: int, what: str):
        """An ``on_done(n)`` for the workload: one line each time another tenth of ``total`` is answered."""
        step = max(1, total // 10)

        def on_done(n: int) -> None:
            if n % step == 0 or n == total:
                self.say(f"{what}: {n}/{total} requests answered")

        return on_done

    def wait_recorded(self, trace_dir: str, rids: list[str], timeout: float = 20) -> None:
        """Before a server is stopped: wait until the scheduler has handed every answered request's record
        to its exporter (it flushes every 250 ms, but a long Kineto export can hold it up); say which
        requests are still missing when ``timeout`` runs out."""
        missing = set(rids)
        deadline = time.monotonic() + timeout
        while missing and time.monotonic() < deadline:
            for f in Path(trace_dir).glob("spans-scheduler-*.jsonl"):
                with open(f, errors="replace") as lines:
                    missing -= {rid for line in lines if sc.REQUEST_DECODE in line for rid in list(missing) if rid in line}
            if missing:
                time.sleep(0.25)
        if missing:
            self.say(f"{len(missing)} of {len(rids)} requests have no scheduler record in {trace_dir} after "
                     f"{timeout:.0f} s; stopping the server anyway (the reports count them as cut off)")

    # ---- model and server ----
    def model_path(self) -> str:
        m = self.args.model
        if m in ARCHITECTURES:
            return str(build_model_dir(m, self.out / "model" / m))
        return m

    @property
    def vocab(self) -> int:
        m = self.args.model
        return ARCHITECTURES[m]["vocab_size"] if m in ARCHITECTURES else 32000

    @property
    def dummy_weights(self) -> bool:
        return self.args.model in ARCHITECTURES or self.args.dummy_weights

    def server_args(self, extra: list[str] | None = None) -> list[str]:
        base = list(CPU_SERVING_ARGS) if self.args.cpu else ["--log-level", "warning"]
        weights = DUMMY_WEIGHTS if self.dummy_weights else []
        return base + weights + shlex.split(self.args.sglang_args) + (extra or [])

    def tracing_args(self, extra: list[str] | None = None) -> list[str]:
        return shlex.split(self.args.trace_args) + (extra or [])

    @contextlib.contextmanager
    def server(self, cell: str, extra: list[str] | None = None, env: dict | None = None,
               tracing_args: list[str] | None = None):
        """A traced server for one cell (stopped on exit, Ctrl-C included); yields (server, trace_dir).
        The trace dir is new: an interrupted run's files are removed first, and a folder whose trace a
        recorded cell reads gives way to ``<cell>-2`` and so on, so one trace dir never holds two runs."""
        trace_dir = self.fresh_folder(cell) / "trace"
        trace_dir.mkdir(parents=True)
        t0 = time.monotonic()
        s = Server(self.model_path(), trace_dir=str(trace_dir), extra_args=self.server_args(extra),
                   env=env, tracing_args=self.tracing_args(tracing_args), log_path=str(trace_dir.parent / "server.log"))
        self.say(f"started a traced server for {trace_dir.parent.name} (log: {trace_dir.parent / 'server.log'})")
        self.servers.append(s)
        try:
            s.wait_ready(timeout=self.args.ready_timeout)
            self.say(f"server ready in {time.monotonic() - t0:.0f} s")
            yield s, str(trace_dir)
        finally:
            s.stop()
            self.servers.remove(s)
            wait_for_exporters(str(trace_dir), timeout=60)

    # ---- resumable cells ----
    def fresh_folder(self, cell: str) -> Path:
        """An empty folder for a new recording of ``cell``: what an interrupted run left there is removed
        (said on stderr); a folder a recorded cell's trace lies in is kept, and ``<cell>-2``... is used."""
        kept = {Path(r["trace_dir"]).resolve() for r in self.recorded().values() if isinstance(r.get("trace_dir"), str)}
        name, n = cell, 1
        while (self.out / name / "trace").resolve() in kept:
            n += 1
            name = f"{cell}-{n}"
        folder = self.out / name
        if folder.exists() and any(folder.iterdir()):
            self.say(f"{folder} holds an interrupted run (no result recorded): removed, recording it again")
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def recorded(self) -> dict[str, dict]:
        """Every recorded cell's result (paths resolved) by cell, in folder order."""
        return {f.parent.name: self.done(f.parent.name) for f in sorted(self.out.glob("*/result.json"))}

    def done(self, cell: str) -> dict | None:
        f = self.out / cell / "result.json"
        if not f.exists():
            return None
        result = json.loads(f.read_text())
        for key in PATH_KEYS:
            if isinstance(result.get(key), str):
                result[key] = str(resolve(self.out, result[key]))
        return result

    def record(self, cell: str, result: dict) -> dict:
        """Store a cell's result; a result.json marks the cell done (written last, atomically)."""
        (self.out / cell).mkdir(parents=True, exist_ok=True)
        stored = dict(result)
        for key in PATH_KEYS:  # relative, so a folder copied off the GPU host still reads back
            value = stored.get(key)
            if isinstance(value, str) and Path(value).is_relative_to(self.out):
                stored[key] = str(Path(value).relative_to(self.out))
        tmp = self.out / cell / "result.json.tmp"
        tmp.write_text(json.dumps(stored, indent=1, default=str))
        os.replace(tmp, self.out / cell / "result.json")
        return result


PATH_KEYS = ("trace_dir", "profile")  # result fields holding paths inside the experiment folder


def finish(exp: Experiment, written: list[str]) -> list[str]:
    """What the experiment prints at the end: the reports written, the trace dirs (what ``sglang-trace
    analyze`` and ``perfetto`` take), and a five-line summary of its measured passes."""
    from sglang_tracing.analyzer.analyses.run_summary import lines, summarize

    cells = exp.recorded()
    out = [f"experiment folder: {exp.out}", "reports:"] + [f"  {p}" for p in written or ["(none written)"]]
    trace_dirs = [r["trace_dir"] for r in cells.values() if isinstance(r.get("trace_dir"), str)]
    trace_dirs += [d for r in cells.values() for d in r.get("trace_dirs") or []]  # a PD cell's servers, router, client
    out += ["trace dirs:"] + [f"  {t}" for t in dict.fromkeys(trace_dirs)]
    measured = [r for r in cells.values() if not r.get("profiled_steps")]
    out += ["", f"summary of the measured pass{'es' if len(measured) > 1 else ''} "
            f"({len(measured)} cell{'s' if len(measured) > 1 else ''}, client-side timings):"]
    return out + ["  " + line for line in lines(summarize(measured))]


def recorded_args(args: argparse.Namespace) -> dict:
    """The options as given, without argparse's handler function (not a value anyone can rerun)."""
    return {k: v for k, v in vars(args).items() if not callable(v)}


def progress(items, desc: str):
    """A progress bar on a terminal (tqdm, an SGLang dependency); otherwise one plain line per item
    on stderr as it starts, so a log or a pipe shows where a long experiment is."""
    items = list(items)
    if sys.stderr.isatty():
        try:
            from tqdm import tqdm
        except ImportError:
            pass
        else:
            return tqdm(items, desc=desc)
    return _progress_lines(items, desc)


def _progress_lines(items: list, desc: str):
    t0 = time.monotonic()
    for i, item in enumerate(items):
        print(f"{desc}: {i + 1}/{len(items)} ({item}), {time.monotonic() - t0:.0f} s so far",
              file=sys.stderr, flush=True)
        yield item
    print(f"{desc}: {len(items)}/{len(items)} done in {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
