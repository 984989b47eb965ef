"""Fixtures that run real SGLang on CPU with a tiny Llama built here (no downloads, dummy weights)."""
from __future__ import annotations

import os
import subprocess

import pytest

from sglang_tracing.config import ENV_CACHE_DIR
from sglang_tracing.models.builder import build_model_dir, prompt_of_length
from sglang_tracing.app.serving import CPU_ARGS, Server, wait_for_exporters

REALDATA = os.path.join(os.path.dirname(__file__), "data", "realdata")  # copied from ../shared/realdata


@pytest.fixture(scope="session", autouse=True)
def span_cache(tmp_path_factory):
    """The analyzer's span cache in a temp dir, for this process and the CLIs it starts: tests never
    write into ~/.cache or the repo."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ENV_CACHE_DIR, str(tmp_path_factory.mktemp("span-cache")))
        yield


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    return str(build_model_dir("tiny-llama", tmp_path_factory.mktemp("model") / "tiny-llama"))


def start_server(model: str, tmp_path, trace: bool = True, env: dict | None = None,
                 tracing_args: list[str] | None = None, sglang_args: list[str] | None = None) -> tuple[Server, str]:
    trace_dir = str(tmp_path / "trace")
    server = Server(model, trace_dir=trace_dir if trace else None, extra_args=sglang_args or CPU_ARGS, env=env,
                    tracing_args=tracing_args, log_path=str(tmp_path / "server.log"))
    try:
        server.wait_ready(timeout=300)
    except BaseException:
        server.stop()  # a server that never came up is not left running
        raise
    return server, trace_dir


def stop_and_drain(server: Server, trace_dir: str) -> None:
    server.stop()
    assert wait_for_exporters(trace_dir, timeout=30), "exporter processes did not finish"


def mixed_workload(n: int = 20) -> list[str]:
    """Shared 64-token system prefix, exact repeats and unrelated prompts."""
    system = prompt_of_length(64, seed=1)
    prompts = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            prompts.append(system + " " + prompt_of_length(16, seed=100 + i))
        elif kind == 1:
            prompts.append(prompt_of_length(48, seed=7))  # exact repeat
        else:
            prompts.append(prompt_of_length(40, seed=1000 + i))  # unrelated
    return prompts


def run_concurrently(server: Server, prompts: list[str], concurrency: int, max_new_tokens: int = 6,
                     stream: bool = True) -> list[dict]:
    return server.generate_all(prompts, max_new_tokens, concurrency, stream)


@pytest.fixture(scope="session")
def repo_root() -> str:
    return os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 300 kB tmpfs at tmp_path/trace, for a trace dir whose disk fills (a server's log stays outside it)."""
    mount = tmp_path / "trace"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(mount)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)])
