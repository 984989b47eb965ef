"""The HTTP middleware's span when the response never ends normally, through Starlette's real
StreamingResponse (what SGLang streams with) under a stand-in ASGI server: a client that hangs up
(ASGI 2.3: ``http.disconnect`` from receive; ASGI 2.4: a send that raises), an app that raises or is
cancelled. The span is written, ended at what ended it; the app's exceptions pass through unchanged.
The real uvicorn path, with SGLang, is tests/test_always_on_server.py's hung-up clients."""
from __future__ import annotations

import asyncio
import types
from time import time_ns

import pytest
from starlette.background import BackgroundTask
from starlette.requests import ClientDisconnect
from starlette.responses import StreamingResponse

from sglang_tracing import semconv as sc
from sglang_tracing.patches import http_server
from sglang_tracing.runtime import recorder

from span_log import SpanLog

CHUNKS = [b"data: %d\n\n" % i for i in range(50)]


class _Server:
    """An ASGI server's side of one request: the client reads ``hang_up_after`` body chunks, then hangs
    up; with ASGI 2.4 its send raises from then on, with 2.3 it drops what it is sent (as uvicorn does)
    and receive says ``http.disconnect``."""

    def __init__(self, spec: str, hang_up_after: int | None):
        self.spec, self.hang_up_after = spec, hang_up_after
        self.delivered: list[bytes] = []
        self.hung_up_ns = 0
        self.gone = asyncio.Event()
        self.scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": spec}, "method": "POST",
                      "path": "/generate", "headers": []}

    async def receive(self):
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message):
        if self.gone.is_set():
            if self.spec == "2.4":
                raise OSError("connection lost")
            return
        if message["type"] == "http.response.body" and message.get("body"):
            self.delivered.append(message["body"])
            if len(self.delivered) == self.hang_up_after:
                self.hung_up_ns = time_ns()
                self.gone.set()


def _streaming_app(done: dict, fail: BaseException | None = None):
    """SGLang's shape: the tokenizer manager notes the rid, a StreamingResponse of chunks with a
    background task (its abort task) that runs after the stream."""

    async def chunks():
        for i, chunk in enumerate(CHUNKS):
            if fail is not None and i == 3:
                raise fail
            yield chunk
            await asyncio.sleep(0.002)

    async def after():
        done["background_ns"] = time_ns()

    async def app(scope, receive, send):
        http_server.note_request(types.SimpleNamespace(scope=scope), [("r", "req:r")], True)
        await StreamingResponse(chunks(), background=BackgroundTask(after))(scope, receive, send)

    return app


def _serve(server: _Server, app) -> None:
    asyncio.run(http_server.ReceivedAt(app)(server.scope, server.receive, server.send))


def test_client_hangs_up_asgi_2_3_span_ends_when_receive_says_so():
    """uvicorn's path: the stream is cancelled, the app returns normally, no last body message comes."""
    rec, server, done = SpanLog(), _Server("2.3", hang_up_after=4), {}
    with recorder.use(rec):
        _serve(server, _streaming_app(done))
    span = rec.one(sc.REQUEST_HTTP, "r")
    assert span.attrs[sc.HTTP_ENDED_BY] == sc.HTTP_END_DISCONNECT
    assert span.attrs[sc.HTTP_BODY_CHUNKS] == len(server.delivered) == 4
    assert span.attrs[sc.HTTP_BODY_BYTES] == sum(map(len, server.delivered))
    assert server.hung_up_ns <= span.end <= done["background_ns"]
    assert span.attrs[sc.FIRST_BYTE_NS] <= server.hung_up_ns and rec.failures == []


def test_client_hangs_up_asgi_2_4_the_error_passes_through_unchanged():
    rec, server = SpanLog(), _Server("2.4", hang_up_after=2)
    with recorder.use(rec), pytest.raises(ClientDisconnect):  # what Starlette makes of the OSError
        _serve(server, _streaming_app({}))
    span = rec.one(sc.REQUEST_HTTP, "r")
    assert span.attrs[sc.HTTP_ENDED_BY] == sc.HTTP_END_SEND_FAILED
    assert (span.attrs[sc.HTTP_BODY_CHUNKS], span.attrs[sc.HTTP_BODY_BYTES]) == (2, sum(map(len, server.delivered)))
    assert span.end >= server.hung_up_ns


def test_whole_response_ends_at_its_last_body_message():
    rec, server, done = SpanLog(), _Server("2.3", hang_up_after=None), {}
    with recorder.use(rec):
        _serve(server, _streaming_app(done))
    span = rec.one(sc.REQUEST_HTTP, "r")
    assert span.attrs[sc.HTTP_ENDED_BY] == sc.HTTP_END_RESPONSE_SENT
    assert (span.attrs[sc.HTTP_BODY_CHUNKS], span.attrs[sc.HTTP_BODY_BYTES]) == (len(CHUNKS), len(b"".join(CHUNKS)))
    assert span.end <= done["background_ns"]


def test_app_raising_or_cancelled_passes_through_with_its_span():
    class Theirs(Exception):
        pass

    theirs = Theirs()
    rec, server = SpanLog(), _Server("2.3", hang_up_after=None)
    with recorder.use(rec), pytest.raises(Theirs) as raised:
        _serve(server, _streaming_app({}, fail=theirs))
    assert raised.value is theirs
    span = rec.one(sc.REQUEST_HTTP, "r")
    assert span.attrs[sc.HTTP_ENDED_BY] == sc.HTTP_END_APP_RAISED and span.attrs[sc.HTTP_BODY_CHUNKS] == 3

    async def cancelled():
        server = _Server("2.3", hang_up_after=None)
        task = asyncio.ensure_future(http_server.ReceivedAt(_streaming_app({}))(server.scope, server.receive,
                                                                                 server.send))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    rec = SpanLog()
    with recorder.use(rec):
        asyncio.run(cancelled())
    assert rec.one(sc.REQUEST_HTTP, "r").attrs[sc.HTTP_ENDED_BY] == sc.HTTP_END_CANCELLED


def test_tracing_off_the_app_gets_the_servers_own_receive_and_send():
    seen = []

    async def app(scope, receive, send):
        seen.append((receive, send))

    server = _Server("2.3", hang_up_after=None)
    with recorder.use(None):
        _serve(server, app)
    assert seen == [(server.receive, server.send)] and http_server.SCOPE_KEY not in server.scope
