"""Start a (traced) SGLang server as a child process, wait until it serves, stop it.

Used by the demo, the tests, the benchmarks and the experiment runners.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from sglang_tracing.launch_server import require_sglang
from sglang_tracing.semconv import READINESS_RID_PREFIX

DUMMY_WEIGHTS = ["--load-format", "dummy"]  # random weights: the shipped architectures have none
CPU_SERVING_ARGS = ["--device", "cpu", "--attention-backend", "torch_native", "--max-total-tokens", "8192",
                    "--skip-server-warmup", "--log-level", "warning"]
CPU_ARGS = [*CPU_SERVING_ARGS, *DUMMY_WEIGHTS]  # a shipped architecture (tiny-llama) on CPU


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Client:
    """HTTP client of an SGLang server's native /generate API."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")

    def generate(self, prompt: str, max_new_tokens: int = 8, stream: bool = False, timeout: float = 120,
                 rid: str | None = None) -> dict:
        """One /generate call; returns SGLang's JSON plus the client-side times (ns) of each chunk
        (``timed_http.post_json``).
        ``rid``: SGLang's request id (a readiness probe's starts with semconv.READINESS_RID_PREFIX)."""
        from sglang_tracing.app.timed_http import post_json  # h11: a serving dependency, not the analyzer's

        body = self._body(prompt, max_new_tokens, stream)
        if rid is not None:
            body["rid"] = rid
        return post_json(self.url + "/generate", [body], timeout=timeout)[0]

    def generate_all(self, prompts: list[str], max_new_tokens: int = 8, concurrency: int = 1,
                     stream: bool = False, timeout: float = 120, keep_alive: bool = False,
                     on_done=None) -> list[dict]:
        """``generate`` for each prompt, at most ``concurrency`` in flight, from one thread (``keep_alive``:
        over connections that carry one request after another; ``on_done(n)`` as the n-th answer completes)."""
        from sglang_tracing.app.timed_http import post_json

        bodies = [self._body(p, max_new_tokens, stream) for p in prompts]
        return post_json(self.url + "/generate", bodies, concurrency, timeout, keep_alive, on_done)

    @staticmethod
    def _body(prompt: str, max_new_tokens: int, stream: bool) -> dict:
        return {"text": prompt, "stream": stream,
                "sampling_params": {"max_new_tokens": max_new_tokens, "ignore_eos": True, "temperature": 0}}

    def post(self, path: str, body: dict, timeout: float = 60) -> str:
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.read().decode()


class ServerError(RuntimeError):
    """The server exited or never served; the message is one line naming its log."""


class Server(Client):
    """A running SGLang server; ``trace_dir=None`` runs it untraced."""

    def __init__(self, model_path: str, trace_dir: str | None = None, extra_args: list[str] | None = None,
                 tracing_args: list[str] | None = None, env: dict | None = None, log_path: str | None = None,
                 port: int | None = None, wrap: list[str] | None = None):
        require_sglang()
        self.port = port or free_port()
        super().__init__(f"http://127.0.0.1:{self.port}")
        sglang_args = ["--model-path", model_path, "--host", "127.0.0.1", "--port", str(self.port),
                       *(extra_args or [])]
        if trace_dir is not None:
            cmd = [sys.executable, "-m", "sglang_tracing.launch_server", "--trace-dir", trace_dir,
                   *(tracing_args or []), *sglang_args]
        else:
            cmd = [sys.executable, "-m", "sglang.launch_server", *sglang_args]
        cmd = [*(wrap or []), *cmd]
        self.cmd = cmd
        full_env = dict(os.environ, **(env or {}))
        if trace_dir is None:
            full_env.pop("SGLANG_TRACE_DIR", None)
        self.log_path = log_path
        log = open(log_path, "w") if log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(cmd, env=full_env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait_ready(self, timeout: float = 300, round_trip: bool = True) -> None:
        """Return once one real /generate round trip (tokenizer, scheduler, detokenizer) has completed:
        SGLang answers /model_info before its detokenizer serves. The probe, one output token, is
        recorded in a trace like any request; its rid starts with ``READINESS_RID_PREFIX``.
        ``round_trip=False`` waits for /model_info only, for runs whose first request must be the
        workload's (a kernel profiler counting launches from it)."""
        deadline = time.time() + timeout
        while (left := deadline - time.time()) > 0:
            if self.proc.poll() is not None:
                raise ServerError(f"server exited with code {self.proc.returncode} before it served; "
                                  f"log: {self.log_path or '(not kept)'}")
            try:
                if round_trip:
                    self.generate("ready", max_new_tokens=1, timeout=max(left, 1),
                                  rid=f"{READINESS_RID_PREFIX}{uuid.uuid4().hex}")
                else:
                    urllib.request.urlopen(self.url + "/model_info", timeout=2).close()
                return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError, ValueError):
                time.sleep(0.5)  # not listening yet, or not serving yet
        raise ServerError(f"server did not serve a request within {timeout:.0f} s; "
                          f"log: {self.log_path or '(not kept)'}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def wait_for_exporters(trace_dir: str, timeout: float = 30) -> bool:
    """Wait until every exporter process of a trace dir has written its last line."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not list(Path(trace_dir).glob("*.active")):
            return True
        time.sleep(0.1)
    return False
