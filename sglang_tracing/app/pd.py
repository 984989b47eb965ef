"""A prefill-decode pair of (traced) SGLang servers, the router in front where it runs, and a client
that sends each request the way the router does: the same body, with one ``bootstrap_host/port/room``,
to the prefill and the decode server at once; the decode server's response is the user's.

The KV transfer backend is Mooncake over TCP (``mooncake-transfer-engine-non-cuda`` on CPU hosts;
SGLang's ``fake`` backend is refused by a prefill server).
"""
from __future__ import annotations

import contextlib
import gc
import importlib.util
import os
import random
import subprocess
import sys
import time
import uuid
from pathlib import Path

from sglang_tracing.app.serving import Server, ServerError, free_port
from sglang_tracing.app.timed_http import post_json, post_json_to
from sglang_tracing.semconv import READINESS_RID_PREFIX

TRANSFER_ENV = {"MOONCAKE_PROTOCOL": "tcp"}
CLIENT_RID_PREFIX = "pd-client-"
# a prefill server sends a prompt's cached prefix early behind a CUDA event on its forward stream
# ("expected stream to be a torch.Stream" on CPU, crashing its scheduler at the first prefix-cache hit)
CPU_PD_ENV = {"SGLANG_DISAGG_PREFILL_EARLY_SEND_CACHED_PREFIX": "0"}
BACKEND = "mooncake"


def pd_args(mode: str, bootstrap_port: int, on_cpu: bool = False) -> list[str]:
    args = ["--disaggregation-mode", mode, "--disaggregation-transfer-backend", BACKEND]
    if mode == "decode" and on_cpu and _sglang_has_option(RETRACTION_BACKUP):
        args += ["--" + RETRACTION_BACKUP.replace("_", "-"), "cpu_tensor"]
    return args + (["--disaggregation-bootstrap-port", str(bootstrap_port)] if mode == "prefill" else [])


# SGLang 0.5.23's decode server backs up retracted requests' KV in a host pool that it pins with CUDA by
# default (cudaHostRegister: "Found no NVIDIA driver" at start on CPU); a plain tensor does on CPU
RETRACTION_BACKUP = "disaggregation_decode_retraction_backup"


def _sglang_has_option(field: str) -> bool:
    """Whether the installed SGLang declares a server option, read from its source (importing it takes
    seconds and is the server's to do)."""
    spec = importlib.util.find_spec("sglang")
    if spec is None or not spec.submodule_search_locations:
        return False
    srt = Path(next(iter(spec.submodule_search_locations))) / "srt"
    sources = [srt / "server_args.py", *sorted((srt / "arg_groups").glob("*.py"))]
    return any(f'"{field}"' in f.read_text(errors="replace") or f"{field}:" in f.read_text(errors="replace")
               for f in sources if f.is_file())


@contextlib.contextmanager
def _no_gc_pauses():
    """A collection of a big process's heap (a test runner's, an experiment's) takes tens of ms: long
    enough to stamp a response that long after it arrived. None runs while the client times requests."""
    gc.freeze()  # what exists now is never scanned again
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
        gc.unfreeze()


class PdClient:
    """Sends PD requests to a prefill and a decode server (or a router in front of them), timed by one
    thread (``timed_http``): each request's prefill half is sent first, its decode half right after."""

    def __init__(self, prefill_url: str, decode_url: str, bootstrap_port: int, router_url: str | None = None,
                 bootstrap_host: str = "127.0.0.1"):
        self.prefill_url, self.decode_url, self.router_url = prefill_url, decode_url, router_url
        self.bootstrap_host, self.bootstrap_port = bootstrap_host, bootstrap_port

    def generate(self, prompt: str, max_new_tokens: int = 8, stream: bool = True, headers: dict | None = None,
                 rid: str | None = None, timeout: float = 180) -> dict:
        return self.generate_all([prompt], max_new_tokens, 1, stream, headers, [rid], timeout)[0]

    def generate_all(self, prompts: list[str], max_new_tokens: int = 8, concurrency: int = 1,
                     stream: bool = True, headers: dict | None = None, rids: list | None = None,
                     timeout: float = 180, headers_each: list[dict | None] | None = None) -> list[dict]:
        """SGLang's JSON of each request's decode side plus ``client``: rid (ours unless given: the
        router passes it on, so both servers' spans name it), sent_ns (its first byte sent to the router or
        either server), first_ns (the decode response's first chunk read), first_kernel_ns (when the kernel
        received that chunk; None without receive stamps), done_ns, room (None via a router).
        ``headers_each``: a request's own headers (e.g. a caller's traceparent), on both its halves."""
        bodies = []
        for prompt, rid in zip(prompts, rids or [None] * len(prompts)):
            bodies.append({"text": prompt, "stream": stream, "rid": rid or f"{CLIENT_RID_PREFIX}{uuid.uuid4().hex}",
                           "sampling_params": {"max_new_tokens": max_new_tokens, "ignore_eos": True,
                                               "temperature": 0}})
        if self.router_url:
            with _no_gc_pauses():
                outs = post_json(self.router_url + "/generate", bodies, concurrency, timeout, headers=headers)
            for body, out in zip(bodies, outs):
                c = out["client"]
                out["client"] = {"sent_ns": c["sent_ns"], "first_ns": c["chunk_ns"][0], "done_ns": c["done_ns"],
                                 "first_kernel_ns": c["first_kernel_ns"], "room": None, "rid": body["rid"]}
            return outs
        targets = []
        for body, own in zip(bodies, headers_each or [None] * len(bodies)):
            pair = {**body, "bootstrap_host": self.bootstrap_host, "bootstrap_port": self.bootstrap_port,
                    "bootstrap_room": random.getrandbits(62)}
            targets += [(self.prefill_url + "/generate", {**pair, "stream": False}, own),
                        (self.decode_url + "/generate", pair, own)]
        with _no_gc_pauses():
            outs = post_json_to(targets, 2 * max(1, concurrency), timeout, headers=headers, together=2)
        results = []
        for (_, body, _), prefill, decode in zip(targets[1::2], outs[0::2], outs[1::2]):
            decode["client"] = {"sent_ns": min(prefill["client"]["sent_ns"], decode["client"]["sent_ns"]),
                                "first_ns": decode["client"]["chunk_ns"][0], "done_ns": decode["client"]["done_ns"],
                                "first_kernel_ns": decode["client"]["first_kernel_ns"],
                                "room": body["bootstrap_room"], "rid": body["rid"]}
            results.append(decode)
        return results


class PdPair:
    """A traced prefill server and decode server on this host (``trace_dirs`` None: untraced)."""

    def __init__(self, model_path: str, trace_dirs: tuple[str, str] | None, extra_args: list[str],
                 log_dir: str, tracing_args: list[str] | None = None, env: dict | None = None,
                 wrap: list[str] | None = None):
        self.bootstrap_port = free_port()
        on_cpu = any(a == "--device" and b == "cpu" for a, b in zip(extra_args, extra_args[1:]))
        env = {**TRANSFER_ENV, **(CPU_PD_ENV if on_cpu else {}), **(env or {})}
        self.servers: list[Server] = []
        for i, mode in enumerate(("prefill", "decode")):
            ident = ["--server-role", mode, "--service-name", f"sglang-{mode}"]
            self.servers.append(Server(model_path, trace_dir=trace_dirs[i] if trace_dirs else None,
                                       extra_args=[*extra_args, *pd_args(mode, self.bootstrap_port, on_cpu)],
                                       tracing_args=[*(tracing_args or []), *ident], env=env, wrap=wrap,
                                       log_path=os.path.join(log_dir, f"{mode}.log")))
        self.prefill, self.decode = self.servers
        self.client = PdClient(self.prefill.url, self.decode.url, self.bootstrap_port)

    def wait_ready(self, timeout: float = 600) -> None:
        """Both serve /model_info, then one PD round trip (a readiness probe, recorded as such) completes."""
        deadline = time.time() + timeout
        for server in self.servers:
            server.wait_ready(timeout=max(deadline - time.time(), 1), round_trip=False)
        while True:
            try:
                self.client.generate("ready", 1, stream=False, rid=f"{READINESS_RID_PREFIX}{uuid.uuid4().hex}",
                                     timeout=max(deadline - time.time(), 1))
                return
            except (OSError, ValueError):
                if time.time() > deadline:
                    raise ServerError(f"the PD pair did not serve a request within {timeout:.0f} s; "
                                      f"logs: {self.prefill.log_path}, {self.decode.log_path}") from None
                time.sleep(1)

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


ROUTER_REQUEST_SPAN = "http_request"  # sglang-router's span of each request it serves


def served_by_router(spans: list[dict]) -> list[dict]:
    """The router's spans (as an OTLP receiver got them) of requests it answered with 200."""
    return [s for s in spans if s["name"] == ROUTER_REQUEST_SPAN and any(
        a["key"] == "status_code" and a["value"].get("stringValue") == "200" for a in s.get("attributes", []))]


def scheduled_ms(pid: int) -> dict | None:
    """Summed over a process's threads: ms on a CPU and ms runnable but waiting for one (schedstat)."""
    cpu = wait = 0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                on_cpu, waiting, _ = f.read().split()
            cpu, wait = cpu + int(on_cpu), wait + int(waiting)
    except (OSError, ValueError):
        return None
    return {"cpu_ms": cpu / 1e6, "runqueue_wait_ms": wait / 1e6}


class Router:
    """``sglang-router`` in PD mode in front of a pair, exporting its own spans over OTLP when asked."""

    def __init__(self, pair: PdPair, log_path: str, otlp_endpoint: str | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "sglang_router.launch_router", "--pd-disaggregation",
               "--prefill", pair.prefill.url, str(pair.bootstrap_port), "--decode", pair.decode.url,
               "--host", "127.0.0.1", "--port", str(self.port), "--policy", "round_robin"]
        if otlp_endpoint:
            cmd += ["--enable-trace", "--otlp-traces-endpoint", otlp_endpoint]
        self.log_path, self.cmd = log_path, cmd
        with open(log_path, "w") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, client: PdClient, timeout: float = 180) -> None:
        """Until one request went through it: it answers /health before it has registered its workers."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(f"router exited with code {self.proc.returncode}; log: {self.log_path}")
            try:
                client.generate("ready", 1, stream=False, rid=f"{READINESS_RID_PREFIX}{uuid.uuid4().hex}",
                                timeout=max(deadline - time.time(), 1))
                return
            except (OSError, ValueError):
                time.sleep(1)
        raise ServerError(f"router did not serve a request within {timeout:.0f} s; log: {self.log_path}")

    def scheduled(self) -> dict | None:
        """The router's threads' time on a CPU and waiting for one so far (Linux schedstat, ms), None
        elsewhere: on a busy host a relay that waits for a CPU shows here."""
        return scheduled_ms(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(5)
