"""The soak's client: ``concurrency`` requests kept in flight against one server for a phase, every request's
outcome returned (never a shared running total), and how busy the client itself was.

One asyncio event loop (aiohttp, an SGLang dependency) in this process. Requests take their kind in
sending order (6 in 10 streamed, 3 non-streamed, 1 hung up by the client after its second chunk), so the
mix holds per request sent, whichever kind finishes faster. A streamed response's lines are counted, and
only its last is parsed (its ``completion_tokens`` is the running total): the client stays cheap per token.
"""
from __future__ import annotations

import asyncio
import collections
import json
import resource
import statistics
import time
import uuid

KINDS = ("stream",) * 6 + ("plain",) * 3 + ("abort",)
COMPLETED = "completed"
HUNG_UP = "hung up by the client"  # the 1 in 10 the workload aborts on purpose: not a failure
TICK_S = 0.05  # the loop-lag probe's period
# beyond these, the client (not the server) may have set the pace: the phase says so
CLIENT_BUSY_CPU = 0.85
CLIENT_LAG_P99_MS = 100.0


def raise_open_files(concurrency: int) -> dict:
    """A connection per request in flight needs a file each: raise the soft limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    return {"open_files_limit": soft, "enough": soft >= 2 * concurrency + 64}


async def _one(session, url: str, kind: str, prompt: str, output_len: int) -> dict:
    rid = f"soak-{kind}-{uuid.uuid4().hex}"
    body = {"text": prompt, "rid": rid, "stream": kind != "plain",
            "sampling_params": {"max_new_tokens": output_len, "ignore_eos": True}}
    row = {"rid": rid, "kind": kind, "sent": time.time(), "first": None, "tokens": 0}
    try:
        async with session.post(url + "/generate", json=body) as resp:
            if resp.status != 200:
                row["outcome"] = f"error: HTTP {resp.status}"
                await resp.read()
            elif kind == "plain":
                row["tokens"], row["outcome"] = _tokens_of(await resp.json())
            else:
                row["outcome"] = await _read_stream(resp, kind, row)
    except asyncio.TimeoutError:
        row["outcome"] = "error: client timeout"
    except Exception as exc:  # noqa: BLE001 (a failed request is counted by kind, never fatal)
        row["outcome"] = f"error: {type(exc).__name__}"
    row["done"] = time.time()
    return row


def _tokens_of(answer) -> tuple[int, str]:
    if isinstance(answer, dict) and isinstance(answer.get("meta_info"), dict):
        return int(answer["meta_info"].get("completion_tokens", 0)), COMPLETED
    if isinstance(answer, dict) and "error" in answer:
        return 0, "error: server error in response"
    return 0, "error: unexpected response"


async def _read_stream(resp, kind: str, row: dict) -> str:
    chunks, last = 0, b""
    async for line in resp.content:
        if not line.startswith(b"data:"):
            continue
        if b"[DONE]" in line:
            break
        chunks += 1
        last = line
        if chunks == 1:
            row["first"] = time.time()
        if kind == "abort" and chunks == 2:
            resp.close()  # hang up: SGLang aborts the request
            break
    if not chunks:
        return "error: stream without data"
    answer = json.loads(last[5:])
    tokens, outcome = _tokens_of(answer)
    row["tokens"], row["chunks"] = tokens, chunks
    if outcome == COMPLETED and kind == "abort" and chunks == 2 and not answer["meta_info"].get("finish_reason"):
        return HUNG_UP
    return outcome


class _ClientProbe:
    """How late the client's event loop runs a timer (its lag), requests in flight, and its CPU share."""

    def __init__(self):
        self.lags_ms: list[float] = []
        self.in_flight: list[int] = []
        self.running = 0

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            due = time.perf_counter() + TICK_S
            await asyncio.sleep(TICK_S)
            self.lags_ms.append(max(0.0, (time.perf_counter() - due) * 1e3))
            self.in_flight.append(self.running)


async def _load(url: str, seconds: float, concurrency: int, prompts: list[str], output_len: int) -> tuple:
    import aiohttp

    deadline = time.monotonic() + seconds
    counter = iter(range(1 << 62))
    rows: list[dict] = []
    probe, stop = _ClientProbe(), asyncio.Event()

    async def worker() -> None:
        while time.monotonic() < deadline:
            i = next(counter)
            probe.running += 1
            try:
                rows.append(await _one(session, url, KINDS[i % len(KINDS)], prompts[i % len(prompts)], output_len))
            finally:
                probe.running -= 1

    conn = aiohttp.TCPConnector(limit=0, force_close=True)  # a connection per request, as bench_serving
    timeout = aiohttp.ClientTimeout(total=None, sock_read=600)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:
        ticker = asyncio.create_task(probe.run(stop))
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        stop.set()
        await ticker
    return rows, probe


def run_phase(url: str, seconds: float, concurrency: int, prompts: list[str], output_len: int) -> tuple:
    """Load one server for ``seconds`` (requests in flight at the end are waited for). Returns every
    request's row and the phase's figures: tokens from every response, outcomes by kind, client limits."""
    cpu0, wall0 = time.process_time(), time.time()
    rows, probe = asyncio.run(_load(url, seconds, concurrency, prompts, output_len))
    wall, cpu = time.time() - wall0, time.process_time() - cpu0
    return rows, summarize(rows, wall, cpu, probe, seconds)


def summarize(rows: list[dict], wall: float, cpu: float, probe: _ClientProbe, seconds: float) -> dict:
    outcomes = collections.Counter(r["outcome"] for r in rows)
    by_kind = {k: dict(collections.Counter(r["outcome"] for r in rows if r["kind"] == k)) for k in sorted(set(KINDS))}
    tokens = sum(r["tokens"] for r in rows)
    ttft = sorted(r["first"] - r["sent"] for r in rows if r["first"] is not None)  # streamed only
    lags = sorted(probe.lags_ms) or [0.0]
    steady = probe.in_flight[: max(1, int(seconds / TICK_S))] or [0]
    client = {"cpu_share": round(cpu / wall, 3) if wall else None,
              "loop_lag_ms_p50": round(statistics.median(lags), 1),
              "loop_lag_ms_p99": round(lags[min(len(lags) - 1, int(0.99 * len(lags)))], 1),
              "loop_lag_ms_max": round(lags[-1], 1),
              "in_flight_median_while_sending": statistics.median(steady)}
    client["client_bound"] = bool((client["cpu_share"] or 0) > CLIENT_BUSY_CPU
                                  or client["loop_lag_ms_p99"] > CLIENT_LAG_P99_MS)
    return {"s": round(wall, 2), "load_s": seconds, "requests": len(rows), "outcomes": dict(outcomes),
            "outcomes_by_kind": by_kind, "tokens": tokens, "tok_s": round(tokens / wall, 1) if wall else None,
            "tokens_completed": sum(r["tokens"] for r in rows if r["outcome"] == COMPLETED),
            "errors": sum(n for o, n in outcomes.items() if o.startswith("error")),
            "client_ttft_s_p50": round(statistics.median(ttft), 3) if ttft else None,
            "client_ttft_s_p99": round(ttft[min(len(ttft) - 1, int(0.99 * len(ttft)))], 3) if ttft else None,
            "client": client}
