"""The story's figures around the selected request: the run it belongs to, its milestones, its ITL at
the plan's token marks and whether the ITL trend is one, and what share of its GPU time was attention
or GEMM. Pure frame -> typed result functions."""
from __future__ import annotations

import dataclasses
import re

import polars as pl

from sglang_tracing.analyzer.analyses.requests import for_statistics

PERCENTILES = (50, 90, 99)
ITL_MARKS = (1, 32, 64, 128)  # output tokens the plan's ITL trend reads at
TREND_MIN_R2 = 0.5  # below it a fitted slope explains too little of the ITL to call it a trend


@dataclasses.dataclass
class RunFigures:
    """The run's user requests (requests.for_statistics), server-side times."""
    requests: int  # complete requests in the statistics
    ttft_ns: dict[int, float | None]  # percentile -> TTFT
    itl_ns: dict[int, float | None]  # percentile -> ITL, over every gap of every request
    output_tokens: int
    span_ns: int | None  # first request received -> last one finished
    ttft_ends_at: str = ""  # what the TTFTs end at (requests.ttft_source), each kind once

    @property
    def output_tok_per_s(self) -> float | None:
        return self.output_tokens / (self.span_ns / 1e9) if self.span_ns else None


def run_figures(requests: pl.DataFrame) -> RunFigures:
    done = for_statistics(requests.filter(pl.col("complete")))
    itls = done.select(pl.col("itl_ns").explode().drop_nulls()) if "itl_ns" in done.columns else pl.DataFrame()

    def q(series: pl.Series) -> dict[int, float | None]:
        return {p: (series.quantile(p / 100, "linear") if series.len() else None) for p in PERCENTILES}

    span = (done["finished_ns"].max() - done["received_ns"].min()) if done.height else None
    ends = done["ttft_source"].drop_nulls().unique(maintain_order=True).to_list() if "ttft_source" in done.columns else []
    return RunFigures(done.height, q(done["ttft_ns"].drop_nulls()), q(itls.to_series() if itls.width else
                                                                        pl.Series([], dtype=pl.Int64)),
                      int(done["output_tokens"].fill_null(0).sum()), span, "; ".join(ends))


@dataclasses.dataclass
class Milestone:
    label: str
    offset_ns: int | None  # after the request was received
    what: str  # the stamp it is read from


def milestones(req: dict) -> list[Milestone]:
    """The plan's phase time offsets of one request, on the server's clock, in the order they happen."""
    t0 = req.get("received_ns")

    def off(col: str) -> int | None:
        return None if t0 is None or req.get(col) is None else int(req[col] - t0)

    found = [Milestone("received", 0 if t0 is not None else None, "request received (HTTP layer)"),
             Milestone("GPU begins (prefill launched)", off("prefill_start_ns"), "first prefill chunk launched"),
             Milestone("decode begins (first token computed)", off("first_token_ns"),
                       "the scheduler hands the first token to the detokenizer (before the first byte can leave)"),
             Milestone("first byte sent (TTFT)", off("first_byte_ns"), "first streamed byte handed to the socket"),
             Milestone("complete", off("finished_ns"), "last byte sent, request span ends")]
    # one clock (the host's wall clock) for every stamp: listed in the order they happened
    return sorted(found, key=lambda m: (m.offset_ns is None, m.offset_ns or 0))


def itl_at_marks(tokens: pl.DataFrame) -> pl.DataFrame:
    """The ITL of the output tokens at ITL_MARKS (the last token stands in for a mark past it):
    token_index, kv_len, itl_ms."""
    pts = tokens.drop_nulls("itl_ns")
    if pts.is_empty():
        return pl.DataFrame(schema={"token_index": pl.Int64, "kv_len": pl.Int64, "itl_ms": pl.Float64})
    last = pts["token_index"].max()
    marks = sorted({min(m, last) for m in ITL_MARKS})
    return (pts.filter(pl.col("token_index").is_in(marks))
            .select("token_index", "kv_len", (pl.col("itl_ns") / 1e6).round(3).alias("itl_ms")))


def trend_verdict(trend: dict | None) -> str | None:
    """What a fitted ITL-vs-KV line says: a trend only where it explains the ITL (r2 >= TREND_MIN_R2)."""
    if trend is None:
        return None
    if trend["r2"] < TREND_MIN_R2:
        return "flat within noise"
    return "grows with KV length" if trend["slope_ns_per_token"] > 0 else "falls with KV length"


KERNEL_CLASSES = {  # kernel or CPU-op name -> class, first match wins
    "attention": re.compile(r"attn|attention|flash|fmha|sdpa|paged|decode_kernel|extend_kernel|^_fwd_kernel", re.I),
    "GEMM": re.compile(r"gemm|matmul|cutlass|xmma|nvjet|cublas|aten::(mm|addmm|bmm|linear)\b|\bmm\b", re.I),
}


@dataclasses.dataclass
class KernelShares:
    total_ns: int  # GPU time the shares are of
    attention_pct: float
    gemm_pct: float


def kernel_shares(kernels: pl.DataFrame) -> KernelShares | None:
    """Attention and GEMM shares of the time of ``kernels`` (name, total_ns); None without kernels."""
    if kernels.is_empty():
        return None
    total = int(kernels["total_ns"].sum())
    by = {c: 0 for c in KERNEL_CLASSES}
    for name, ns in kernels.select("name", "total_ns").iter_rows():
        for cls, pattern in KERNEL_CLASSES.items():
            if pattern.search(name):
                by[cls] += ns
                break
    return KernelShares(total, 100 * by["attention"] / total if total else 0.0,
                        100 * by["GEMM"] / total if total else 0.0)


GEMM_OPS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj", "lm_head")  # of semconv.NVTX_OPS


def op_shares(ops: pl.DataFrame) -> KernelShares | None:
    """Attention and GEMM shares of GPU time by op range (kernels.by_op: op, total_ns): the ranges say
    what each kernel computed, whatever its name."""
    if ops.is_empty():
        return None
    total = int(ops["total_ns"].sum())
    of = lambda names: int(ops.filter(pl.col("op").is_in(names))["total_ns"].sum())  # noqa: E731
    return KernelShares(total, 100 * of(["attention"]) / total if total else 0.0,
                        100 * of(list(GEMM_OPS)) / total if total else 0.0)


@dataclasses.dataclass
class ModelShape:
    name: str | None  # the model path as served
    layers: int | None
    hidden: int | None
    heads: int | None
    kv_heads: int | None
    dtype: str | None


def model_shape(manifest: dict, cfg: dict | None) -> ModelShape:
    cfg = cfg or {}
    return ModelShape((manifest.get("server_args") or {}).get("model_path"), cfg.get("num_hidden_layers"),
                      cfg.get("hidden_size"), cfg.get("num_attention_heads"),
                      cfg.get("num_key_value_heads", cfg.get("num_attention_heads")), cfg.get("torch_dtype"))
