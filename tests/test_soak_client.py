"""The soak benchmark's client (benchmarks/soak_load.py) counts every response's tokens and every failure by
kind. Its server here is a stand-in for SGLang's /generate that writes down what it sent: the client's
bookkeeping is under test, not SGLang (the CPU soak run checks the client against a real traced server).
Before, a shared ``total += await ...`` across 500 coroutines kept the last few answers only."""
from __future__ import annotations

import asyncio
import json
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import soak_load  # noqa: E402

aiohttp = pytest.importorskip("aiohttp")
from aiohttp import web  # noqa: E402


class StandIn:
    """/generate: every 7th request answers HTTP 500; the rest ``max_new_tokens`` tokens after a short wait,
    streamed one token a line (SGLang's ``data: {...}`` lines, cumulative completion_tokens) or as one JSON."""

    def __init__(self):
        self.sent: dict[str, int] = {}  # rid -> tokens whose line or answer went out (what the server knows)
        self.n = 0

    async def generate(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.n += 1
        rid, tokens = body["rid"], body["sampling_params"]["max_new_tokens"]
        if self.n % 7 == 0:
            return web.json_response({"error": {"message": "stand-in failure"}}, status=500)
        await asyncio.sleep(0.002 * (self.n % 5))
        if not body["stream"]:
            self.sent[rid] = tokens
            return web.json_response({"text": "", "meta_info": {"completion_tokens": tokens, "finish_reason": {}}})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            for i in range(1, tokens + 1):
                meta = {"completion_tokens": i, "finish_reason": {"type": "length"} if i == tokens else None}
                await resp.write(b"data: " + json.dumps({"text": "", "meta_info": meta}).encode() + b"\n\n")
                self.sent[rid] = i
                await asyncio.sleep(0.001)
            await resp.write(b"data: [DONE]\n\n")
        except (ConnectionResetError, ConnectionError):
            pass  # the client hung up
        return resp


@pytest.fixture
def stand_in():
    server = StandIn()
    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_post("/generate", server.generate)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = site._server.sockets[0].getsockname()[1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield server, f"http://127.0.0.1:{port}"
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.run_until_complete(runner.cleanup())
    loop.close()


def test_every_answer_counted_and_failures_by_kind(stand_in):
    server, url = stand_in
    rows, figures = soak_load.run_phase(url, 1.0, 40, ["p"], output_len=12)
    assert server.n > 40  # the phase outlasted one round of requests
    assert figures["requests"] == len(rows) == server.n
    failed = [r for r in rows if r["outcome"] == "error: HTTP 500"]
    assert len(failed) == server.n // 7 == figures["errors"]
    completed = [r for r in rows if r["outcome"] == soak_load.COMPLETED]
    assert all(r["tokens"] == server.sent[r["rid"]] == 12 for r in completed)
    hung_up = [r for r in rows if r["outcome"] == soak_load.HUNG_UP]
    assert hung_up and all(r["kind"] == "abort" and r["tokens"] == 2 for r in hung_up)
    assert figures["tokens"] == 12 * len(completed) + 2 * len(hung_up)
    assert figures["tokens_completed"] == 12 * len(completed)
    # the mix holds per request sent: kinds in sending order, whichever finishes first
    kinds = [r["kind"] for r in rows]
    assert kinds.count("abort") == len(rows) // 10 and kinds.count("plain") == 3 * (len(rows) // 10) + max(0, len(rows) % 10 - 6)
    assert figures["client"]["in_flight_median_while_sending"] == 40
