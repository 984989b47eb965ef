"""Per-process recorder: the hot path appends raw tuples; an exporter process encodes them.

Encoding OTLP-JSON costs ~45 us a span in pure Python. Doing that in the SGLang process
would steal GIL time from the scheduler, so this process only marshals batches of raw
records down a pipe every ``flush_ms``; ``sglang_tracing.runtime.exporter`` turns them
into OpenTelemetry spans and writes them. When this process dies, even by SIGKILL, the
exporter sees end-of-file and writes out everything it already received. What this process still
holds goes out when it exits normally (atexit), when a request finishes (the writer is woken at
once), and, in a process that leaves SIGTERM at its default (SGLang's scheduler and detokenizer,
which a stop of the process group terminates), before it dies of SIGTERM; a SIGTERM that lands
inside one of our hooks (the client may already hold the response whose spans that hook is about to
record) waits until the hook returns.

If the exporter process dies, the recorder starts another (``MAX_RESTARTS`` times), says in the trace
what it could not hand over (``EXPORTER_LOST``) and in the log once; past that, or while it has no
exporter, records are dropped and counted, never queued: its memory stays bounded by ``max_queued``.
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
from sglang_tracing.runtime.tail_keep import BatchKeep, RequestKeep
from sglang_tracing.runtime.sink import SpanSink

logger = logging.getLogger(__name__)

MAX_RESTARTS = 3  # exporter processes started after the first one died
STATS_INTERVAL_S = 10.0  # a stats span this often (queue high-water mark: the recorder's memory over time)
STOP_DEFER_MAX_S = 2.0  # a SIGTERM deferred while a hook runs waits at most this long
_PATCHES = "sglang_tracing.patches"


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
        self.max_queued = config.max_queued  # 0 while no exporter can take records
        self.sent = 0  # records handed to exporter processes
        self.unsent = 0  # records that never reached one (a batch cut by the exporter's death, or none running)
        self.restarts = 0
        self._queued_max = 0
        self._next_stats = time.monotonic() + STATS_INTERVAL_S
        self._sent_at_stats = 0
        self.keep = RequestKeep(config)
        self.batch_keep = BatchKeep(config.batch_keep)
        self._send_lock = threading.RLock()  # the writer thread and a SIGTERM flush share the pipe
        self._wake = threading.Event()
        self._closed = False
        self._stopping: int | None = None  # a SIGTERM deferred until our hook returns
        if self.batch_keep.filtering or config.test_slow_emit:
            self.emit = self._emit_filtered
        os.makedirs(config.trace_dir, exist_ok=True)
        self.span_file = os.path.join(config.trace_dir, f"spans-{self.process_label}.jsonl")
        self._pipe = None
        self._start_exporter()
        self._thread = threading.Thread(target=self._run, name="sglang-trace-writer", daemon=True)
        self._thread.start()
        atexit.register(self.close)
        self._flush_before_sigterm()

    @property
    def process_label(self) -> str:
        rank = f"-tp{self.tp_rank}" if self.tp_rank is not None else ""
        return f"{self.role}{rank}-pid{self.pid}"

    def _start_exporter(self) -> bool:
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "sglang_tracing.runtime.exporter", "--out", self.span_file,
                 "--max-mb", str(self.config.span_file_max_mb), "--keep-parts", str(self.config.span_files_keep)]
                + (["--otlp-endpoint", self.config.otlp_endpoint] if self.config.otlp_endpoint else []),
                stdin=subprocess.PIPE, start_new_session=True,
            )
        except OSError as exc:
            logger.warning("sglang-tracing could not start an exporter process (%s)", exc)
            return False
        self._pipe = proc.stdin
        return self._write(MSG_RESOURCE, self._resource())

    def _resource(self) -> dict:
        res = {
            sc.RES_SERVICE_NAME: self.config.service_name,
            sc.RES_ROLE: self.role,
            sc.RES_PID: self.pid,
            sc.RES_CLOCK_REALTIME: time.time_ns(),
            sc.RES_CLOCK_MONOTONIC: time.monotonic_ns(),
            sc.RES_TRACE_LEVEL: self.config.level,
            sc.BATCH_KEEP: self.config.batch_keep,
        }
        if self.config.tail_keep:
            c = self.config
            res[sc.KEEP_SETTINGS] = (f"1 in {c.keep_one_in}; ttft>{c.keep_ttft_ms:g}ms itl>{c.keep_itl_ms:g}ms "
                                     f"e2e>{c.keep_e2e_ms:g}ms (0: off); over p{c.keep_percentile:g} "
                                     f"of the last {c.keep_window} (0: off); failed")
        if self.tp_rank is not None:
            res[sc.RES_TP_RANK] = self.tp_rank
        for key, value in ((sc.RES_SERVICE_INSTANCE, self.config.service_instance),
                           (sc.RES_SERVER_ROLE, self.config.server_role), (sc.RES_HOST_NAME, self.config.host_name)):
            if value:
                res[key] = value
        return res

    # ---- hot path ----
    def emit(self, name, start_ns, end_ns, attrs, span_id=0, parent=0, trace_key="", events=()):
        if len(self._queue) >= self.max_queued:
            self.dropped += 1
            return
        self._queue.append((name, start_ns, end_ns, span_id or new_span_id(), parent, trace_key, attrs, events))

    def _emit_filtered(self, name, start_ns, end_ns, attrs, span_id=0, parent=0, trace_key="", events=()):
        """``emit`` when batch records are filtered (or a test slows one span down)."""
        slow = self.config.test_slow_emit
        if slow and slow.rpartition(":")[0] == name:
            time.sleep(float(slow.rpartition(":")[2]))
        record = (name, start_ns, end_ns, span_id or new_span_id(), parent, trace_key, attrs, events)
        for rec in self.batch_keep.offer(record):
            self._append(rec)

    def _append(self, record: tuple) -> None:
        if len(self._queue) >= self.max_queued:
            self.dropped += 1
            return
        self._queue.append(record)

    def request_ended(self, rid: str, failed: bool, ttft_ns: int | None, max_itl_ns: int | None,
                      e2e_ns: int) -> str:
        detail = self.keep.decide(rid, failed, ttft_ns, max_itl_ns, e2e_ns)
        for record in self.batch_keep.decided(rid, detail != sc.KEPT_SUMMARY):
            self._append(record)
        return detail

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
        hook = None if self._stopping else _outermost_hook_frame(frame)
        if hook is not None:
            self._stopping = signum
            self._die_when_returned(hook, signum)
            return
        try:
            self._next_stats = 0
            self.flush()
        finally:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    def _die_when_returned(self, hook_frame, signum: int) -> None:
        """Let the hook that SIGTERM interrupted finish recording, then flush and die of the signal."""
        def on_return(frame, event, arg):
            if event == "return" and frame is hook_frame:
                sys.settrace(None)
                self._on_sigterm(signum, None)
            return on_return

        hook_frame.f_trace_lines = False
        hook_frame.f_trace = on_return
        sys.settrace(lambda *a: None)  # frame tracing only runs while a trace function is set
        deadline = threading.Timer(STOP_DEFER_MAX_S, self._die_now, (signum,))
        deadline.daemon = True
        deadline.start()

    def _die_now(self, signum: int) -> None:
        """A hook that never returned: flush what there is and end the process (from another thread)."""
        try:
            self.flush()
        finally:
            os.kill(os.getpid(), signal.SIGKILL)

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
        self._queued_max = max(self._queued_max, len(self._queue))
        health = (sum(self.hook_errors.values()), self.dropped)
        periodic = time.monotonic() >= self._next_stats and self.sent != self._sent_at_stats  # idle: none
        if health != self._reported_health or periodic or not self._next_stats:
            self._reported_health = health
            self._next_stats = time.monotonic() + STATS_INTERVAL_S
            now = time.time_ns()
            attrs = {sc.HOOK_ERRORS: health[0], sc.DROPPED_SPANS: health[1], sc.QUEUED: len(self._queue),
                     sc.QUEUED_MAX: self._queued_max, sc.RECORDS_SENT: self.sent,
                     sc.RECORDS_UNSENT: self.unsent, sc.BATCH_HELD: self.batch_keep.held,
                     sc.BATCH_KEEP: self.config.batch_keep, sc.BATCH_LEFT_OUT: self.batch_keep.dropped}
            attrs.update({f"{sc.HOOK_ERRORS}.{k}": v for k, v in self.hook_errors.items()})
            self._queued_max = 0
            self._sent_at_stats = self.sent
            self._append((sc.RECORDER_STATS, now, now, new_span_id(), 0, "", attrs, ()))
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
        with self._send_lock:
            if self._write(kind, payload):
                self.sent += len(payload) if kind == MSG_RECORDS else 0
                return
            if self._closed:
                return
            lost = len(payload) if kind == MSG_RECORDS else 0
            self.unsent += lost
            self._replace_exporter(lost)

    def _write(self, kind: int, payload) -> bool:
        if self._pipe is None:
            return False
        try:
            self._pipe.write(encode_message(kind, payload))
            self._pipe.flush()
            return True
        except (OSError, ValueError):
            return False

    def _replace_exporter(self, lost: int) -> None:
        """The exporter died: start another and record what this one could not take, or stop recording."""
        try:
            self._pipe.close()
        except (OSError, ValueError):
            pass
        self._pipe = None
        started = False
        while self.restarts < MAX_RESTARTS and not started:
            self.restarts += 1
            started = self._start_exporter()
        now = time.time_ns()
        if started:
            logger.warning("sglang-tracing: the exporter process of %s died; started another (%d of %d); "
                           "%d records could not be handed over (the trace says so)", self.process_label,
                           self.restarts, MAX_RESTARTS, lost)
            note = (sc.EXPORTER_LOST, now, now, new_span_id(), 0, "", {
                sc.RECORDS_SENT: self.sent, sc.RECORDS_UNSENT: self.unsent, sc.EXPORTER_RESTARTS: self.restarts,
                sc.DROPPED_SPANS: self.dropped}, ())
            if self._write(MSG_RECORDS, [note]):
                return
        self.max_queued = 0  # nothing more is queued: every record from here is dropped and counted
        self.dropped += len(self._queue)
        self._queue.clear()
        logger.warning("sglang-tracing: the exporter process of %s died and no other could be started; "
                       "tracing stops here, what this process records from now on is dropped", self.process_label)

    def close(self) -> None:
        if self._closed:
            return
        self._next_stats = 0  # the last stats span: final counts
        self.flush()
        self._closed = True
        self._wake.set()
        try:
            if self._pipe is not None:
                self._pipe.close()
        except (OSError, ValueError):
            pass


def _outermost_hook_frame(frame):
    """The outermost frame of our patches' code on this stack (a hook in progress), or None."""
    found = None
    while frame is not None:
        if frame.f_globals.get("__name__", "").startswith(_PATCHES) and not frame.f_code.co_flags & 0x80:
            found = frame  # 0x80: CO_COROUTINE, whose frames return at every await
        frame = frame.f_back
    return found


_recorder: SpanSink | None = None  # this process's, once started (read through ``active``)
_lock = threading.Lock()


def start(config: TraceConfig, role: str, tp_rank: int | None = None) -> Recorder:
    """The process's recorder, created on first call (the first SGLang component to start names it)."""
    global _recorder
    with _lock:
        if _recorder is None:
            _recorder = Recorder(config, role, tp_rank)
        return _recorder


def _forget_in_child() -> None:
    """A forked child holds a copy of its parent's recorder: its counts stop at the fork, and its writer
    thread is gone. The copy must never write into the parent's exporter pipe (at exit it would append a
    stats span with the counts of the fork's moment after the parent's own); the child starts its own."""
    global _recorder
    rec, _recorder = _recorder, None
    if isinstance(rec, Recorder):
        rec._closed = True  # its atexit ``close`` does nothing
        rec._pipe = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)


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
