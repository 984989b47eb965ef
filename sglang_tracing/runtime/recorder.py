"""Per-process recorder: the hot path appends raw tuples; an exporter process encodes them.

Encoding OTLP-JSON costs ~45 us a span in pure Python. Doing that in the SGLang process
would steal GIL time from the scheduler, so this process only marshals batches of raw
records down a pipe every ``flush_ms``; ``sglang_tracing.runtime.exporter`` turns them
into OpenTelemetry spans and writes them. When this process dies, even by SIGKILL, the
exporter sees end-of-file and writes out everything it already received. What this process still
holds goes out when it exits normally (atexit), when a request finishes (the writer is woken at
once), and, in a process that leaves SIGTERM at its default (SGLang's scheduler and detokenizer,
which a stop of the process group terminates), before it dies of SIGTERM.
"""
from __future__ import annotations

import atexit
import collections
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time

from sglang_tracing import semconv as sc
from sglang_tracing.config import TraceConfig
from sglang_tracing.runtime.ids import new_span_id
from sglang_tracing.runtime.records import MSG_RECORDS, MSG_RESOURCE, MSG_SAMPLER, encode_message
from sglang_tracing.runtime.sink import SpanSink

logger = logging.getLogger(__name__)

MAX_QUEUED = 2_000_000  # beyond this, records are dropped and counted, never blocking a request


class Recorder:
    def __init__(self, config: TraceConfig, role: str, tp_rank: int | None = None):
        self.config = config
        self.role = role
        self.tp_rank = tp_rank
        self.pid = os.getpid()
        self.hook_errors: collections.Counter[str] = collections.Counter()
        self.dropped = 0
        self._reported_health = (0, 0)
        self._queue: collections.deque = collections.deque()
        self._send_lock = threading.RLock()  # the writer thread and a SIGTERM flush share the pipe
        self._wake = threading.Event()
        self._closed = False
        os.makedirs(config.trace_dir, exist_ok=True)
        self.span_file = os.path.join(config.trace_dir, f"spans-{self.process_label}.jsonl")
        self._exporter = subprocess.Popen(
            [sys.executable, "-m", "sglang_tracing.runtime.exporter", "--out", self.span_file]
            + (["--otlp-endpoint", config.otlp_endpoint] if config.otlp_endpoint else []),
            stdin=subprocess.PIPE, start_new_session=True,
        )
        self._pipe = self._exporter.stdin
        self._send(MSG_RESOURCE, self._resource())
        self._thread = threading.Thread(target=self._run, name="sglang-trace-writer", daemon=True)
        self._thread.start()
        atexit.register(self.close)
        self._flush_before_sigterm()

    @property
    def process_label(self) -> str:
        rank = f"-tp{self.tp_rank}" if self.tp_rank is not None else ""
        return f"{self.role}{rank}-pid{self.pid}"

    def _resource(self) -> dict:
        res = {
            sc.RES_SERVICE_NAME: self.config.service_name,
            sc.RES_ROLE: self.role,
            sc.RES_PID: self.pid,
            sc.RES_CLOCK_REALTIME: time.time_ns(),
            sc.RES_CLOCK_MONOTONIC: time.monotonic_ns(),
            sc.RES_TRACE_LEVEL: self.config.level,
        }
        if self.tp_rank is not None:
            res[sc.RES_TP_RANK] = self.tp_rank
        for key, value in ((sc.RES_SERVICE_INSTANCE, self.config.service_instance),
                           (sc.RES_SERVER_ROLE, self.config.server_role), (sc.RES_HOST_NAME, self.config.host_name)):
            if value:
                res[key] = value
        return res

    # ---- hot path ----
    def emit(self, name, start_ns, end_ns, attrs, span_id=0, parent=0, trace_key="", events=()):
        if len(self._queue) >= MAX_QUEUED:
            self.dropped += 1
            return
        self._queue.append((name, start_ns, end_ns, span_id or new_span_id(), parent, trace_key, attrs, events))

    # ---- our own failures ----
    def hook_failed(self, hook: str, exc: BaseException) -> None:
        self.hook_errors[hook] += 1
        if self.hook_errors[hook] == 1:
            logger.warning("sglang-tracing hook %s failed; the request goes on untraced there",
                           hook, exc_info=exc)
            now = time.time_ns()
            self.emit(sc.HOOK_ERROR, now, now, {sc.HOOK_NAME: hook, sc.ERROR_TYPE: type(exc).__name__,
                                               sc.ERROR_MESSAGE: str(exc)[:500]})

    def flush_soon(self) -> None:
        """Ask the writer to flush now (a request finished): a server stopped right after its last
        request then keeps that request's spans, since SGLang SIGKILLs its workers at shutdown."""
        self._wake.set()

    def _flush_before_sigterm(self) -> None:
        """Where SIGTERM would kill this process outright, flush first, then die of it all the same.
        A handler SGLang (or anyone) installed is left alone: its exit runs ``close``."""
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame) -> None:
        try:
            self.flush()
        finally:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    def start_sampler(self, settings: dict) -> None:
        """Ask the exporter process to sample NVML/GPM for a GPU (off this process's GIL)."""
        self._send(MSG_SAMPLER, settings)

    # ---- writer thread ----
    def _run(self) -> None:
        interval = self.config.flush_ms / 1000
        while not self._closed:
            if self._wake.wait(interval):
                self._wake.clear()
            self.flush()

    def flush(self) -> None:
        health = (sum(self.hook_errors.values()), self.dropped)
        if health != self._reported_health:
            self._reported_health = health
            now = time.time_ns()
            attrs = {sc.HOOK_ERRORS: health[0], sc.DROPPED_SPANS: health[1]}
            attrs.update({f"{sc.HOOK_ERRORS}.{k}": v for k, v in self.hook_errors.items()})
            self.emit(sc.RECORDER_STATS, now, now, attrs)
        batch = []
        pop = self._queue.popleft
        try:
            while True:
                batch.append(pop())
        except IndexError:
            pass
        if batch:
            self._send(MSG_RECORDS, batch)

    def _send(self, kind: int, payload) -> None:
        try:
            with self._send_lock:
                self._pipe.write(encode_message(kind, payload))
                self._pipe.flush()
        except (OSError, ValueError) as exc:
            if not self._closed:
                self._closed = True
                logger.warning("sglang-tracing exporter process is gone (%s); tracing stops here", exc)

    def close(self) -> None:
        if self._closed:
            return
        self.flush()
        self._closed = True
        self._wake.set()
        try:
            self._pipe.close()
        except OSError:
            pass


_recorder: SpanSink | None = None  # this process's, once started (read through ``active``)
_lock = threading.Lock()


def start(config: TraceConfig, role: str, tp_rank: int | None = None) -> Recorder:
    """The process's recorder, created on first call (the first SGLang component to start names it)."""
    global _recorder
    with _lock:
        if _recorder is None:
            _recorder = Recorder(config, role, tp_rank)
        return _recorder


def active() -> SpanSink | None:
    """This process's recorder, or None while none has started (hooks then call straight through)."""
    return _recorder


@contextlib.contextmanager
def use(sink: SpanSink | None):
    """Make ``sink`` this process's recorder for a block, then put back the one before (tests: a span
    log, or None for tracing off)."""
    global _recorder
    previous, _recorder = _recorder, sink
    try:
        yield sink
    finally:
        _recorder = previous
