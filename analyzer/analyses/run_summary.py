"""What a run's client saw, from the experiment cells' recorded client timings (workload.client_timings):
requests, TTFT and ITL percentiles, throughput, cache hits. Plain Python, so a GPU host without the
analyzer's dependencies still prints it at the end of an experiment."""
from __future__ import annotations

import dataclasses
import math


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) with linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclasses.dataclass
class RunSummary:
    requests: int
    complete: int  # requests that returned every token asked for (or stopped on their own)
    ttft_p50_ns: float | None
    ttft_p99_ns: float | None
    itl_p50_ns: float | None  # over every gap between streamed chunks of every request
    itl_p99_ns: float | None
    output_tokens: int
    wall_ns: int  # summed over the cells' measured passes
    cache_hit_requests: int  # requests with at least one prompt token from the prefix cache
    cached_tokens: int
    prompt_tokens: int | None  # None: cells recorded before prompt tokens were kept

    @property
    def output_tok_per_s(self) -> float | None:
        return self.output_tokens / (self.wall_ns / 1e9) if self.wall_ns else None


def summarize(results: list[dict]) -> RunSummary:
    """One summary over the measured passes of ``results`` (each cell's result.json)."""
    reqs = [r for res in results for r in res.get("requests", [])]
    ttfts = [r["ttft_ns"] for r in reqs if r.get("ttft_ns") is not None]
    itls = [gap for r in reqs for gap in r.get("itls_ns") or []]
    prompt = [r.get("prompt_tokens") for r in reqs]
    return RunSummary(
        requests=len(reqs), complete=sum(r.get("finish_reason") in ("length", "stop") for r in reqs),
        ttft_p50_ns=percentile(ttfts, 50), ttft_p99_ns=percentile(ttfts, 99),
        itl_p50_ns=percentile(itls, 50), itl_p99_ns=percentile(itls, 99),
        output_tokens=sum(r.get("completion_tokens") or 0 for r in reqs),
        wall_ns=sum(res.get("wall_ns") or 0 for res in results),
        cache_hit_requests=sum((r.get("cached_tokens") or 0) > 0 for r in reqs),
        cached_tokens=sum(r.get("cached_tokens") or 0 for r in reqs),
        prompt_tokens=sum(prompt) if prompt and None not in prompt else None)


def _ms(ns: float | None) -> str:
    return "n/a" if ns is None else f"{ns / 1e6:.1f} ms"


def lines(s: RunSummary) -> list[str]:
    """The summary in five lines, as the experiment prints it at the end."""
    itl = (f"ITL         p50 {_ms(s.itl_p50_ns)}, p99 {_ms(s.itl_p99_ns)} (gaps between streamed chunks)"
           if s.itl_p50_ns is not None else "ITL         n/a (no request streamed two chunks)")
    rate = s.output_tok_per_s
    cached = f", {s.cached_tokens} of {s.prompt_tokens} prompt tokens" if s.prompt_tokens else \
        f", {s.cached_tokens} prompt tokens"
    return [f"requests    {s.requests} ({s.complete} complete)",
            f"TTFT        p50 {_ms(s.ttft_p50_ns)}, p99 {_ms(s.ttft_p99_ns)} (client: request sent -> first chunk)",
            itl,
            f"throughput  {rate:.1f} output tokens/s ({s.output_tokens} tokens in {s.wall_ns / 1e9:.1f} s)"
            if rate is not None else "throughput  n/a",
            f"cache hits  {s.cache_hit_requests} of {s.requests} requests{cached} from the prefix cache"]
