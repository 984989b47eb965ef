"""Client workloads shared by the experiments and the overhead benchmark."""
from __future__ import annotations

import time


def client_timings(resp: dict) -> dict:
    """TTFT, mean ITL and end-to-end time as the client saw them (streamed responses)."""
    c = resp["client"]
    chunks = c["chunk_ns"]
    itls = [b - a for a, b in zip(chunks, chunks[1:])]
    return {"rid": resp["meta_info"]["id"], "ttft_ns": chunks[0] - c["sent_ns"] if chunks else None,
            "sent_ns": c["sent_ns"], "first_chunk_ns": chunks[0] if chunks else None,
            "kept_alive": c["kept_alive"],
            "mean_itl_ns": sum(itls) / len(itls) if itls else None, "e2e_ns": c["done_ns"] - c["sent_ns"],
            "itls_ns": itls, "prompt_tokens": resp["meta_info"].get("prompt_tokens"),
            "completion_tokens": resp["meta_info"]["completion_tokens"],
            "cached_tokens": resp["meta_info"]["cached_tokens"],
            "finish_reason": (resp["meta_info"].get("finish_reason") or {}).get("type")}


def concurrent(client, prompts: list[str], output_len: int, concurrency: int, stream: bool = True,
               timeout: float = 600, keep_alive: bool = False, on_done=None) -> dict:
    """Send ``prompts`` with at most ``concurrency`` in flight; client timings and output throughput
    (``on_done(n)``: called as the n-th answer completes)."""
    t0 = time.time_ns()
    outs = client.generate_all(prompts, output_len, concurrency, stream, timeout, keep_alive, on_done)
    wall = time.time_ns() - t0
    timings = [client_timings(o) for o in outs]
    tokens = sum(t["completion_tokens"] for t in timings)
    return {"requests": timings, "wall_ns": wall, "output_tok_per_s": tokens / (wall / 1e9),
            "start_ns": t0, "end_ns": t0 + wall}
