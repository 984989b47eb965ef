"""HTTP entry: stamp each request's arrival as early as the HTTP layer allows, so a request's root
span starts when the server received it (queueing in the HTTP layer included), not when the
tokenizer manager first saw it; and stamp the first response bytes handed to the socket, the
moment a streaming client can see its first token (one ``sglang.request.http`` span per rid). The span
ends at the response's last body message or, when that never comes, at the first sign it will not
(``semconv.HTTP_ENDED_BY``): with uvicorn (ASGI 2.3) a client that hangs up mid-stream is seen as
``http.disconnect`` by the receive Starlette's StreamingResponse listens on, which then cancels the stream
(SGLang's tokenizer manager aborts the request on that cancellation) and runs SGLang's background abort
task: no last body message is ever sent.

Arrival, best first (the span says which, ``semconv.RECEIVED_BY``): for a request on a new
connection, when the kernel received its first bytes (read back at accept: the event loop may accept
and read long after, busy with other requests); else when uvicorn's protocol got its first bytes
from the event loop (before parsing, routing and the middleware stack), moved back by the kernel's
age of that data, less a tick, when it waited that long (so it never precedes the arrival); under
another server (granian), the ASGI entry."""
from __future__ import annotations

import asyncio
import functools
import logging
from time import time_ns

from sglang_tracing import semconv as sc
from sglang_tracing.patches import _targets, control_routes
from sglang_tracing.patches._wrappers import Call, around
from sglang_tracing.patches.state import TokenizerState
from sglang_tracing.runtime import recorder
from sglang_tracing.runtime import socket_arrival
from sglang_tracing.runtime.records import PARENT_IS_REQUEST_ROOT

logger = logging.getLogger(__name__)
SCOPE_KEY = "sglang_tracing.received_ns"
REQUESTS_KEY = "sglang_tracing.requests"  # ([(rid, trace key)], stream), noted by the tokenizer manager hook
_HTTP = "sglang.srt.entrypoints.http_server"
_UVICORN_PROTOCOLS = ("uvicorn.protocols.http.h11_impl.H11Protocol",
                      "uvicorn.protocols.http.httptools_impl.HttpToolsProtocol")
KERNEL_TICK_MAX_MS = 4  # TCP_INFO's ages count kernel ticks: 4 ms at HZ=250, 1 ms at HZ=1000
KERNEL_AGE_MIN_MS = KERNEL_TICK_MAX_MS + 1  # a wait the ticks can tell from none
_FIRST_READ = "_sglang_tracing_first_read"  # on a protocol: (ns, RECEIVED_BY) of a request not yet parsed


def _fd(transport) -> int | None:
    sock = transport.get_extra_info("socket") if transport is not None else None
    return sock.fileno() if sock is not None else None


def _after_connection_made(st: TokenizerState, call: Call, /, protocol, transport, *args) -> None:
    """A new connection's first bytes may have waited in the kernel before the loop accepted it."""
    fd = _fd(transport)
    received = socket_arrival.first_queued_ns(fd) if fd is not None else None
    if received is not None:
        protocol.__dict__[_FIRST_READ] = (received, sc.RECEIVED_BY_KERNEL)


def _before_read(st: TokenizerState, call: Call, /, protocol, *args) -> object:
    """The request cycle before this read; when it brings a new request's first bytes, their arrival."""
    cycle = protocol.cycle
    if protocol.__dict__.get(_FIRST_READ) is None and (cycle is None or not cycle.more_body):
        protocol.__dict__[_FIRST_READ] = _arrival_at_read(protocol, time_ns())  # no earlier body still arriving
    return cycle


def _arrival_at_read(protocol, now: int) -> tuple[int, str]:
    """The read's time, or earlier when the kernel says the bytes waited (a busy loop read them late):
    by the wait less one tick, so never before they arrived."""
    fd = _fd(protocol.transport)
    age = socket_arrival.last_data_age_ms(fd) if fd is not None else None
    if age is not None and age >= KERNEL_AGE_MIN_MS:
        return now - (age - KERNEL_TICK_MAX_MS) * 1_000_000, sc.RECEIVED_BY_KERNEL_MS
    return now, sc.RECEIVED_BY_READ


def _after_read(st: TokenizerState, call: Call, /, protocol, *args) -> None:
    """A read that parsed a request's head created its cycle and scope (its app task has not run):
    the scope gets the time of the request's first read."""
    new = protocol.cycle
    if new is not None and new is not call.token:
        new.scope[SCOPE_KEY] = protocol.__dict__.pop(_FIRST_READ, None) or (call.start_ns, sc.RECEIVED_BY_READ)


class ReceivedAt:
    """Pure ASGI middleware: a clock read at arrival, one at the first body bytes sent, one at the end:
    the response's last body message, or the first sign that it will not come (the client hung up, a send
    raised or was cancelled, the app raised or returned without it)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope.get("type") != "http" or recorder.active() is None:
            return await self.app(scope, receive, send)
        scope.setdefault(SCOPE_KEY, (time_ns(), sc.RECEIVED_BY_ASGI))
        exchange = _Exchange(scope, receive, send)
        try:
            await self.app(scope, exchange.receive, exchange.send)
        except BaseException as exc:
            exchange.end(_ended_by(exc))
            raise
        exchange.end(sc.HTTP_END_UNFINISHED)  # a no-op after the last body message; writes a span noted late


def _ended_by(exc: BaseException) -> str:
    if isinstance(exc, OSError):  # what an ASGI 2.4 server's send raises on a broken connection
        return sc.HTTP_END_SEND_FAILED
    if isinstance(exc, asyncio.CancelledError):
        return sc.HTTP_END_CANCELLED
    return sc.HTTP_END_APP_RAISED


class _Exchange:
    """One request's response as the middleware sees it. Its span ends at the first end seen; it is written
    then, or at the app's exit when the tokenizer manager noted the request's rids after that end."""

    __slots__ = ("scope", "_receive", "_send", "first_byte", "chunks", "bytes", "last_handed", "end_ns",
                 "ended_by", "written")

    def __init__(self, scope: dict, receive, send):
        self.scope, self._receive, self._send = scope, receive, send
        self.first_byte = self.chunks = self.bytes = self.end_ns = 0
        self.last_handed = self.written = False
        self.ended_by = ""

    async def receive(self):
        message = await self._receive()
        if not self.last_handed and message.get("type") == "http.disconnect":
            self.end(sc.HTTP_END_DISCONNECT)
        return message

    async def send(self, message):
        body = message.get("type") == "http.response.body"
        data = message.get("body") if body else None
        last = body and not message.get("more_body", False)
        if data and not self.first_byte and not self.end_ns:
            self.first_byte = time_ns()  # handed to the transport, which writes at once: never after the client's read
        if last:
            self.last_handed = True  # a disconnect reported from here on came after the response
        try:
            await self._send(message)
        except BaseException as exc:
            self.end(_ended_by(exc))
            raise
        if data and not self.end_ns:  # a server that saw the hang-up drops what it is sent after
            self.chunks += 1
            self.bytes += len(data)
        if last:
            self.end(sc.HTTP_END_RESPONSE_SENT)

    def end(self, ended_by: str) -> None:
        if not self.end_ns:
            self.end_ns, self.ended_by = time_ns(), ended_by
        if not self.written:
            self.written = _write_span(self)


def received_ns(request) -> int | None:
    scope = getattr(request, "scope", None)
    received = scope.get(SCOPE_KEY) if isinstance(scope, dict) else None
    return received[0] if received else None


def note_request(request, rids: list[tuple[str, str]], stream: bool) -> None:
    """Called by the tokenizer manager hook: which rids this HTTP request carries, with their trace keys."""
    scope = getattr(request, "scope", None)
    if isinstance(scope, dict) and SCOPE_KEY in scope:
        scope.setdefault(REQUESTS_KEY, ([], stream))[0].extend(rids)


def _write_span(ex: _Exchange) -> bool:
    """Each noted rid's HTTP span; False while none is noted (not a generation request, or not yet)."""
    rec = recorder.active()
    noted = ex.scope.get(REQUESTS_KEY)
    if rec is None or not noted:
        return False
    try:
        rids, stream = noted
        received, received_by = ex.scope[SCOPE_KEY]
        for rid, trace_key in rids:
            attrs = {sc.RID: rid, sc.STREAM: stream, sc.RECEIVED_BY: received_by, sc.HTTP_ENDED_BY: ex.ended_by,
                     sc.HTTP_BODY_CHUNKS: ex.chunks, sc.HTTP_BODY_BYTES: ex.bytes}
            if ex.first_byte:
                attrs[sc.FIRST_BYTE_NS] = ex.first_byte
            rec.emit(sc.REQUEST_HTTP, received, ex.end_ns, attrs, parent=PARENT_IS_REQUEST_ROOT,
                     trace_key=trace_key)
    except Exception as exc:  # our own bookkeeping never fails a response
        rec.hook_failed("http_response", exc)
    return True


def _add_middleware_hook(st: TokenizerState, original, *args, **kwargs):
    """Around the function that starts uvicorn (plugins are loaded inside launch_server, so hooks on
    launch_server itself never run): add our middleware once, before the app builds its stack."""
    if st.timestamp_holder is None:  # this is the HTTP server's process: have the kernel stamp arrivals
        st.timestamp_holder = socket_arrival.keep_timestamps_on()
    try:
        from sglang.srt.entrypoints import http_server

        if not any(m.cls is ReceivedAt for m in http_server.app.user_middleware):
            http_server.app.add_middleware(ReceivedAt)
    except Exception:  # an app that already started, or a changed module: time from the tokenizer manager
        logger.warning("sglang-tracing: could not add the HTTP arrival stamp", exc_info=True)
    try:
        from sglang.srt.entrypoints import http_server

        control_routes.add_routes(http_server.app, st.config, args[0] if args else kwargs.get("server_args"))
    except Exception:
        logger.warning("sglang-tracing: could not add the status and detail routes", exc_info=True)
    return original(*args, **kwargs)


def instrument(st: TokenizerState, skipped: list[str]) -> int:
    """The HTTP server runs in the tokenizer manager's process: its hooks share that state."""
    common = {"state": st, "inject_fault": st.config.inject_fault}
    read = around("http_read", before=_before_read, after=_after_read, **common)
    accept = around("http_accept", after=_after_connection_made, **common)
    hooks = {f"{_HTTP}._setup_and_run_http_server": functools.partial(_add_middleware_hook, st)}
    for protocol in _UVICORN_PROTOCOLS:
        hooks.update({f"{protocol}.data_received": read, f"{protocol}.connection_made": accept})
    return _targets.register(hooks, skipped)
