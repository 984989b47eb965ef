"""HTTP entry: stamp each request's arrival before FastAPI parses it, so a request's root span
starts when the server received it (queueing in the HTTP layer included), not when the
tokenizer manager first saw it."""
from __future__ import annotations

import logging
from time import time_ns

from sglang_tracing.config import TraceConfig
from sglang_tracing.patches import _hooks

logger = logging.getLogger(__name__)
SCOPE_KEY = "sglang_tracing.received_ns"
_HTTP = "sglang.srt.entrypoints.http_server"


class ReceivedAt:
    """Pure ASGI middleware: one clock read per HTTP request."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope.get("type") == "http":
            scope[SCOPE_KEY] = time_ns()
        await self.app(scope, receive, send)


def received_ns(request) -> int | None:
    scope = getattr(request, "scope", None)
    return scope.get(SCOPE_KEY) if isinstance(scope, dict) else None


def _launch_server_hook(original, *args, **kwargs):
    try:
        from sglang.srt.entrypoints import http_server

        http_server.app.add_middleware(ReceivedAt)
    except Exception:  # an app that already started, or a changed module: time from the tokenizer manager
        logger.warning("sglang-tracing: could not add the HTTP arrival stamp", exc_info=True)
    return original(*args, **kwargs)


def instrument(config: TraceConfig, skipped: list[str]) -> int:
    return _hooks.register({f"{_HTTP}.launch_server": _launch_server_hook}, skipped)
