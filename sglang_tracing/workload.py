"""Client workloads shared by the GPU example, profile and benchmark drivers."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from sglang_tracing.models.builder import prompt_of_length
from sglang_tracing.serving import Server


def client_timings(resp: dict) -> dict:
    """TTFT, mean ITL and end-to-end time as the client saw them (streamed responses)."""
    c = resp["client"]
    chunks = c["chunk_ns"]
    itls = [b - a for a, b in zip(chunks, chunks[1:])]
    return {"rid": resp["meta_info"]["id"], "ttft_ns": chunks[0] - c["sent_ns"] if chunks else None,
            "mean_itl_ns": sum(itls) / len(itls) if itls else None, "e2e_ns": c["done_ns"] - c["sent_ns"],
            "completion_tokens": resp["meta_info"]["completion_tokens"],
            "cached_tokens": resp["meta_info"]["cached_tokens"],
            "finish_reason": (resp["meta_info"].get("finish_reason") or {}).get("type")}


def concurrent(client, prompts: list[str], output_len: int, concurrency: int, stream: bool = True,
               timeout: float = 600) -> dict:
    """Send ``prompts`` with at most ``concurrency`` in flight; client timings and output throughput."""
    t0 = time.time_ns()
    with ThreadPoolExecutor(concurrency) as pool:
        outs = list(pool.map(lambda p: client.generate(p, max_new_tokens=output_len, stream=stream,
                                                       timeout=timeout), prompts))
    wall = time.time_ns() - t0
    timings = [client_timings(o) for o in outs]
    tokens = sum(t["completion_tokens"] for t in timings)
    return {"requests": timings, "wall_ns": wall, "output_tok_per_s": tokens / (wall / 1e9),
            "start_ns": t0, "end_ns": t0 + wall}


def single_and_batch(server: Server, prompt_len: int, output_len: int, batch: int, vocab: int,
                     seed: int = 1) -> dict:
    """One streamed request, then ``batch`` concurrent streamed requests of distinct prompts."""
    single = server.generate(prompt_of_length(prompt_len, seed=seed, vocab_size=vocab),
                             max_new_tokens=output_len, stream=True, timeout=600)
    prompts = [prompt_of_length(prompt_len, seed=seed * 1000 + i, vocab_size=vocab) for i in range(batch)]
    res = concurrent(server, prompts, output_len, batch)
    return {"single": client_timings(single), "batch": res["requests"],
            "batch_wall_ns": res["wall_ns"], "batch_output_tok_per_s": res["output_tok_per_s"]}


def describe(result: dict) -> str:
    s = result["single"]
    itl = f"{s['mean_itl_ns'] / 1e6:.2f} ms" if s["mean_itl_ns"] else "n/a"
    return (f"single TTFT {s['ttft_ns'] / 1e6:.1f} ms, ITL {itl}, {s['completion_tokens']} tokens "
            f"({s['finish_reason']}); batch {result['batch_output_tok_per_s']:.0f} tok/s")
