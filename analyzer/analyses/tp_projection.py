"""Experiment 6's projection to larger TP sizes: a model of a decode step fitted through what TP=1 and
TP=2 measured, and the error of the same projection made from TP=1 alone."""
from __future__ import annotations

import dataclasses

import polars as pl

from sglang_tracing.analyzer.analyses.tp_cells import AllReduce, ring_factor

PROJECTED_SIZES = (4, 8)


@dataclasses.dataclass
class Fit:
    """The model behind the projection, through what TP=1 and TP=2 measured: a decode step's compute is
    fixed_ms + split_ms / n, each all-reduce latency_ms + msg_bytes x 2(n-1)/n over the NVLink bandwidth."""
    step1_ms: float  # TP=1's decode step (GPU)
    compute2_ms: float  # TP=2's decode step less its all-reduce transfers and waiting
    fixed_ms: float
    split_ms: float
    calls: float  # all-reduces per forward (TP=2, decode, rank 0)
    msg_bytes: float  # their median message
    latency_ms: float  # per all-reduce, beyond moving its bytes
    link_gb_s: float
    wait_ms: float  # launch-skew wait a forward of TP=2's measured pass (rank 0), kept at every size
    overhead_ms: float  # TP=2's ITL beyond its GPU step: CPU work not hidden by the GPU, kept at every size
    layers: int | None  # the model's hidden layers (for the naive projection)

    @property
    def split_is_negative(self) -> bool:
        """TP=2's compute did not shrink as a split predicts: the projection is unreliable."""
        return self.fixed_ms < 0 or self.split_ms < 0

    def step(self, n: int) -> float:
        bw = self.link_gb_s * 1e9
        return (self.fixed_ms + self.split_ms / n
                + self.calls * (self.latency_ms + self.msg_bytes * ring_factor(n) / bw * 1e3) + self.wait_ms)

    def naive_step(self, n: int) -> float | None:
        """From TP=1 alone: a perfect split and bandwidth-only all-reduces (None without the layer count)."""
        if not self.layers:
            return None
        bw = self.link_gb_s * 1e9
        return self.step1_ms / n + (2 * self.layers + 1) * self.msg_bytes * ring_factor(n) / bw * 1e3


@dataclasses.dataclass
class Projection:
    table: pl.DataFrame | None  # per TP size, measured or projected: decode step, ITL, throughput, naive ITL
    fit: Fit | None  # None: nothing projected
    naive_error_pct: float | None = None  # the naive projection's ITL error against TP=2's measured ITL
    missing: str | None = None  # why nothing was projected


def projection(figs: dict[int, dict], table: pl.DataFrame, ar2: AllReduce | None, model_config: dict | None,
               link_gb_s: float | None) -> Projection:
    """Decode step, ITL and throughput at TP=4 and 8 from what TP=1 and TP=2 measured, and the error of the
    same projection made from TP=1 alone (checked against the measured TP=2)."""
    if 1 not in figs or 2 not in figs or ar2 is None:
        return Projection(None, None, missing="needs measured TP=1 and TP=2 cells with an all-reduce profile")
    s1, s2 = figs[1]["decode_step_gpu_ms"], figs[2]["decode_step_gpu_ms"]
    if not (s1 and s2) or figs[1]["batch_reached"] != figs[2]["batch_reached"] or not link_gb_s:
        return Projection(None, None, missing="needs the same decode batch at TP=1 and TP=2, GPU step times and an "
                                              "NVLink bandwidth")
    dec = ar2.summary.filter((pl.col("mode") == "decode") & (pl.col("rank") == 0))
    if dec.is_empty() or dec["median_msg_bytes"][0] is None:
        return Projection(None, None, missing="no decode all-reduce on rank 0 in the TP=2 profile")
    if dec.height > 1:
        return Projection(None, None, missing="decode all-reduces of TP=2 used several implementations; not modelled")
    row = {r["tp"]: r for r in table.iter_rows(named=True)}
    fit = _fit(s1, s2, dec.row(0, named=True), ar2.skew_measured, row[2]["itl_ms"], model_config, link_gb_s)
    return Projection(_projected(fit, figs, row), fit, _naive_error_pct(fit, row))


def _fit(s1: float, s2: float, dec: dict, skew: pl.DataFrame, itl2: float, model_config: dict | None,
         link_gb_s: float) -> Fit:
    """``dec``: TP=2's decode all-reduces on rank 0 (per_rank_summary row); ``skew``: its measured pass's."""
    calls, msg = dec["calls_per_forward"], dec["median_msg_bytes"]
    per_call_ms = dec["transfer_ms_per_forward"] / calls
    skew = skew.filter((pl.col("mode") == "decode") & (pl.col("rank") == 0)) if skew.height else skew
    wait_ms = skew["median_excess_us"][0] / 1e3 if skew.height else dec["wait_ms_per_forward"]
    latency_ms = max(per_call_ms - msg * ring_factor(2) / (link_gb_s * 1e9) * 1e3, 0.0)
    compute2 = s2 - dec["transfer_ms_per_forward"] - wait_ms
    split = 2 * (s1 - compute2)  # compute(n) = fixed + split / n, through (1, s1) and (2, compute2)
    return Fit(s1, compute2, s1 - split, split, calls, msg, latency_ms, link_gb_s, wait_ms, itl2 - s2,
               (model_config or {}).get("num_hidden_layers"))


def _projected(fit: Fit, figs: dict[int, dict], row: dict[int, dict]) -> pl.DataFrame:
    """Measured sizes as measured, the others from the fit; throughput scales with 1/ITL at the same batch."""
    rows = []
    for n in (1, 2, *PROJECTED_SIZES):
        measured = n in row
        itl = row[n]["itl_ms"] if measured else fit.step(n) + fit.overhead_ms
        naive = fit.naive_step(n)
        rows.append({"tp": n, "kind": "measured" if measured else "projection",
                     "decode_step_gpu_ms": round(figs[n]["decode_step_gpu_ms"] if measured else fit.step(n), 3),
                     "itl_ms": round(itl, 3),
                     "output_tok_per_s": round(row[n]["output_tok_per_s"] if measured
                                               else row[2]["output_tok_per_s"] * row[2]["itl_ms"] / itl, 1),
                     "naive_itl_ms (TP=1 alone)": round(naive + row[1]["itl_ms"] - fit.step1_ms, 3)
                     if naive is not None else None})
    return pl.DataFrame(rows)


def _naive_error_pct(fit: Fit, row: dict[int, dict]) -> float | None:
    naive2 = fit.naive_step(2)
    naive_itl2 = naive2 + (row[1]["itl_ms"] - fit.step1_ms) if naive2 is not None else None
    return (naive_itl2 / row[2]["itl_ms"] - 1) * 100 if naive_itl2 else None


