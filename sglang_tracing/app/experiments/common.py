"""What every experiment shares: options, the output folder, resumable cells, server lifetimes."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import sys
import time
from pathlib import Path

from sglang_tracing.analyzer.loaders.files import resolve
from sglang_tracing.models.builder import ARCHITECTURES, build_model_dir
from sglang_tracing.app.serving import CPU_SERVING_ARGS, DUMMY_WEIGHTS, Server, wait_for_exporters


def add_common_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help="use this running SGLang server instead of launching one (client timings only)")
    p.add_argument("--model", default="tiny-llama", help="model path, or a shipped architecture: "
                   + ", ".join(ARCHITECTURES))
    p.add_argument("--num-requests", type=int, default=16)
    p.add_argument("--prompt-len", type=int, default=256)
    p.add_argument("--output-len", type=int, default=32)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--out", help="output folder (default traces/<experiment>-<timestamp>); an existing one resumes")
    p.add_argument("--cpu", action="store_true", help="serve on CPU (torch_native attention)")
    p.add_argument("--dummy-weights", action="store_true",
                   help="serve random weights (--load-format dummy) for a --model path too; a shipped "
                        "architecture always has them (it ships no weights)")
    p.add_argument("--sglang-args", default="", help="more SGLang arguments, quoted")
    p.add_argument("--trace-args", default="", help="more tracing options for launched servers, quoted "
                   "(e.g. '--trace-level layer --profile-steps 1:3')")
    p.add_argument("--ready-timeout", type=float, default=600)


class Experiment:
    """An output folder of cells; a cell already recorded is skipped when the experiment reruns."""

    def __init__(self, name: str, args: argparse.Namespace):
        self.name, self.args = name, args
        self.out = Path(args.out or f"traces/{name}-{time.strftime('%Y%m%d-%H%M%S')}")
        self.out.mkdir(parents=True, exist_ok=True)
        self.servers: list[Server] = []
        self._log_run()

    def _log_run(self) -> None:
        """experiment.json lists every run over this folder: the recording one and each resume or re-render."""
        f = self.out / "experiment.json"
        runs = json.loads(f.read_text()).get("runs", []) if f.exists() else []
        runs.append({"argv": sys.argv, "args": vars(self.args), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        f.write_text(json.dumps({"experiment": self.name, "runs": runs}, indent=1, default=str))

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
        """A traced server for one cell (stopped on exit, Ctrl-C included); yields (server, trace_dir)."""
        trace_dir = self.out / cell / "trace"
        trace_dir.parent.mkdir(parents=True, exist_ok=True)
        s = Server(self.model_path(), trace_dir=str(trace_dir), extra_args=self.server_args(extra),
                   env=env, tracing_args=self.tracing_args(tracing_args), log_path=str(self.out / cell / "server.log"))
        self.servers.append(s)
        try:
            s.wait_ready(timeout=self.args.ready_timeout)
            yield s, str(trace_dir)
        finally:
            s.stop()
            self.servers.remove(s)
            wait_for_exporters(str(trace_dir), timeout=60)

    # ---- resumable cells ----
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


def progress(items, desc: str):
    """A progress bar on a terminal (tqdm, an SGLang dependency), plain lines otherwise."""
    try:
        from tqdm import tqdm

        return tqdm(items, desc=desc, disable=not sys.stderr.isatty())
    except ImportError:
        return items
