"""HTTP entry: stamp each request's arrival before FastAPI parses it, so a request's root span
starts when the server received it (queueing in the HTTP layer included), not when the
tokenizer manager first saw it; and stamp the first response bytes handed to the socket, the
moment a streaming client sees its first token (one ``sglang.request.http`` span per rid)."""
from __future__ import annotations

import logging
from time import time_ns

from sglang_tracing import semconv as sc
from sglang_tracing.config import TraceConfig
from sglang_tracing.patches import _hooks
from sglang_tracing.runtime import recorder as _rec
from sglang_tracing.runtime.ids import request_trace_key
from sglang_tracing.runtime.records import PARENT_IS_REQUEST_ROOT

logger = logging.getLogger(__name__)
SCOPE_KEY = "sglang_tracing.received_ns"
REQUESTS_KEY = "sglang_tracing.requests"  # ([rids], stream), noted by the tokenizer manager hook
_HTTP = "sglang.srt.entrypoints.http_server"


class ReceivedAt:
    """Pure ASGI middleware: a clock read at arrival, one at the first body bytes sent, one at the end."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope.get("type") != "http" or _rec._recorder is None:
            return await self.app(scope, receive, send)
        scope[SCOPE_KEY] = time_ns()
        first_byte = 0

        async def timed_send(message):
            nonlocal first_byte
            body = message.get("type") == "http.response.body"
            if body and not first_byte and message.get("body"):
                first_byte = time_ns()  # as the bytes are handed to the transport: the client may read them at once
            await send(message)
            if body and not message.get("more_body", False):
                _response_sent(scope, first_byte, time_ns())

        await self.app(scope, receive, timed_send)


def received_ns(request) -> int | None:
    scope = getattr(request, "scope", None)
    return scope.get(SCOPE_KEY) if isinstance(scope, dict) else None


def note_request(request, rids: list[str], stream: bool) -> None:
    """Called by the tokenizer manager hook: which rids this HTTP request carries."""
    scope = getattr(request, "scope", None)
    if isinstance(scope, dict) and SCOPE_KEY in scope:
        scope.setdefault(REQUESTS_KEY, ([], stream))[0].extend(rids)


def _response_sent(scope: dict, first_byte: int, end: int) -> None:
    rec = _rec._recorder
    noted = scope.get(REQUESTS_KEY)
    if rec is None or not noted:
        return  # not a generation request (health, model info, ...)
    try:
        rids, stream = noted
        for rid in rids:
            attrs = {sc.RID: rid, sc.STREAM: stream}
            if first_byte:
                attrs[sc.FIRST_BYTE_NS] = first_byte
            rec.emit(sc.REQUEST_HTTP, scope[SCOPE_KEY], end, attrs, parent=PARENT_IS_REQUEST_ROOT,
                     trace_key=request_trace_key(rid))
    except Exception as exc:  # our own bookkeeping never fails a response
        rec.hook_failed("http_response", exc)


def _add_middleware_hook(original, *args, **kwargs):
    """Around the function that starts uvicorn (plugins are loaded inside launch_server, so hooks on
    launch_server itself never run): add our middleware once, before the app builds its stack."""
    try:
        from sglang.srt.entrypoints import http_server

        if not any(m.cls is ReceivedAt for m in http_server.app.user_middleware):
            http_server.app.add_middleware(ReceivedAt)
    except Exception:  # an app that already started, or a changed module: time from the tokenizer manager
        logger.warning("sglang-tracing: could not add the HTTP arrival stamp", exc_info=True)
    return original(*args, **kwargs)


def instrument(config: TraceConfig, skipped: list[str]) -> int:
    return _hooks.register({f"{_HTTP}._setup_and_run_http_server": _add_middleware_hook}, skipped)
