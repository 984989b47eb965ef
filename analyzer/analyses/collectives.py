"""Collective communication in per-rank profiles: which kernels (or CPU ops) are collectives, what
each rank spent in them, and how much of that was waiting for the slowest rank.

A collective ends on every rank at about the same moment, once the last rank has arrived and the
data has moved. So for one call, the shortest duration over the ranks is the transfer itself (the
last rank to arrive does not wait), and each rank's excess over it is time spent waiting for the
others: launch skew, not bandwidth. This needs no clock shared between the ranks' traces.
"""
from __future__ import annotations

import polars as pl

# (family, pattern) over lower-cased names, most specific first. The op is read from the name
# separately (all_reduce, all_gather, ...). Kernel names seen: ncclDevKernel_AllReduce_Sum_bf16_RING_LL,
# ncclKernel_AllGather_RING_LL_Sum_int8_t, cross_device_reduce_1stage<...> (SGLang/vLLM custom
# all-reduce), void (anonymous namespace)::all_reduce_kernel<...> (SGLang custom all-reduce v2),
# one_shot_all_reduce_kernel / two_shot_all_reduce_kernel / multimem_all_reduce (torch symmetric
# memory), quickreduce (quick all-reduce), allreduce_fusion_kernel (FlashInfer / TRT-LLM fused);
# CPU ops: gloo:all_reduce, nccl:all_reduce, c10d::allreduce_.
FAMILIES = (
    ("NCCL", r"nccl"),
    ("symmetric memory", r"one_shot_all_?reduce|two_shot_all_?reduce|multimem"),
    ("quick all-reduce", r"quick_?(all_?)?reduce|quickreduce"),
    ("fused all-reduce", r"allreduce_?fusion|all_reduce_?fusion|trtllm.*all_?reduce"),
    ("custom all-reduce", r"cross_device_reduce|custom_?all_?reduce|all_reduce_kernel|allreduce_kernel"),
    ("gloo", r"^gloo:"),
    ("c10d", r"^c10d::"),
)
OPS = (
    ("all_reduce", r"all_?reduce|cross_device_reduce|quickreduce"),
    ("all_gather", r"all_?gather"),
    ("reduce_scatter", r"reduce_?scatter"),
    ("all_to_all", r"all_?to_?all|alltoall"),
    ("broadcast", r"broadcast"),
    ("send_recv", r"send_?recv|sendrecv|^nccl:(send|recv)|p2p"),
)


def _first_match(name: pl.Expr, table) -> pl.Expr:
    expr = pl.lit(None, pl.String)
    for label, pattern in reversed(table):
        expr = pl.when(name.str.contains(pattern)).then(pl.lit(label)).otherwise(expr)
    return expr


def classify(frame: pl.DataFrame, column: str = "name") -> pl.DataFrame:
    """``frame`` with ``family`` and ``op`` columns; rows that are not collectives dropped."""
    name = pl.col(column).str.to_lowercase()
    family = _first_match(name, FAMILIES)
    op = _first_match(name, OPS)
    # "broadcast" or "gather" alone also name compute kernels: those count only in a known family
    return (frame.with_columns(family=family, op=op)
            .filter(pl.col("family").is_not_null() | (pl.col("op") == "all_reduce"))
            .filter(pl.col("op").is_not_null())
            .with_columns(pl.col("family").fill_null("other")))


def per_rank_calls(kernels_by_rank: dict[int, pl.DataFrame], cpu_ops_by_rank: dict[int, pl.DataFrame]
                   ) -> tuple[pl.DataFrame, str]:
    """All-reduce calls of every rank (rank, call, start_ns, end_ns, dur_ns, family), and where they were
    found: GPU kernels where any rank has them, else CPU ops (a CPU backend such as gloo)."""
    def collect(frames: dict[int, pl.DataFrame]) -> pl.DataFrame:
        parts = []
        for rank, f in sorted(frames.items()):
            hits = classify(f).filter(pl.col("op") == "all_reduce").sort("start_ns")
            if hits.height:
                parts.append(hits.select(pl.lit(rank, pl.Int64).alias("rank"), "start_ns", "end_ns", "family",
                                         "name").with_row_index("call"))
        return pl.concat(parts) if parts else pl.DataFrame()

    calls = collect(kernels_by_rank)
    source = "GPU kernels"
    if calls.is_empty():
        calls, source = collect(_outermost(cpu_ops_by_rank)), "CPU ops"
    if calls.is_empty():
        return calls, "none"
    return calls.with_columns(dur_ns=pl.col("end_ns") - pl.col("start_ns")), source


def _outermost(frames: dict[int, pl.DataFrame]) -> dict[int, pl.DataFrame]:
    """CPU ops nest (c10d::allreduce_ > gloo:all_reduce): keep the process-group backend's op where
    there is one, so a call counts once."""
    out = {}
    for rank, f in frames.items():
        f = classify(f)
        backend = f.filter(pl.col("family") != "c10d")
        out[rank] = backend if backend.height else f
    return out


def split_wait(calls: pl.DataFrame) -> tuple[pl.DataFrame, str | None]:
    """Per call and rank: ``transfer_ns`` (the shortest duration of that call over the ranks) and
    ``wait_ns`` (this rank's excess). Calls match across ranks by their order; returns (frame, problem)
    where problem says why no split was made (ranks with different call counts)."""
    counts = calls.group_by("rank").len()
    if counts["len"].n_unique() != 1:
        return calls.with_columns(transfer_ns=pl.lit(None, pl.Int64), wait_ns=pl.lit(None, pl.Int64)), (
            "ranks recorded different numbers of calls ("
            + ", ".join(f"rank {r}: {n}" for r, n in counts.sort("rank").iter_rows()) + "): not split")
    return calls.with_columns(transfer_ns=pl.col("dur_ns").min().over("call")).with_columns(
        wait_ns=pl.col("dur_ns") - pl.col("transfer_ns")), None


def assign_forwards(calls: pl.DataFrame, forwards: pl.DataFrame, clock: str = "gpu") -> pl.DataFrame:
    """Each call joined to the forward running on that rank when it started (``forwards``: rank, forward,
    mode, tokens and ``<clock>_start_ns``/``<clock>_end_ns``: GPU windows for kernels, CPU windows for CPU
    ops); calls outside every forward get nulls."""
    start, end = f"{clock}_start_ns", f"{clock}_end_ns"
    fw = forwards.filter(pl.col(start).is_not_null()).select("rank", "forward", "mode", "tokens", start, end)
    if fw.is_empty():
        return calls.with_columns(forward=pl.lit(None, pl.Int64), mode=pl.lit(None, pl.String),
                                  tokens=pl.lit(None, pl.Int64))
    joined = calls.sort("start_ns").join_asof(
        fw.sort(start).rename({start: "_fw_start", end: "_fw_end"}), left_on="start_ns", right_on="_fw_start",
        by="rank", strategy="backward", check_sortedness=False)
    inside = pl.col("start_ns") < pl.col("_fw_end")
    return joined.with_columns([pl.when(inside).then(pl.col(c)).otherwise(None).alias(c)
                                for c in ("forward", "mode", "tokens")]).drop("_fw_start", "_fw_end")


def per_rank_summary(calls: pl.DataFrame, bytes_per_token: int | None, ranks: int) -> pl.DataFrame:
    """Per rank, forward mode and implementation (SGLang picks one by message size): calls per forward, time per forward split into wait and transfer,
    message size and the achieved bus bandwidth (nccl-tests' busbw: size / transfer x 2(n-1)/n)."""
    ring = 2 * (ranks - 1) / ranks
    msg = (pl.col("tokens") * bytes_per_token) if bytes_per_token else pl.lit(None, pl.Float64)
    with_fwd = calls.filter(pl.col("forward").is_not_null()).with_columns(msg_bytes=msg)
    return (with_fwd.group_by("rank", "mode", "family").agg(
        forwards=pl.col("forward").n_unique(),
        calls=pl.len(),
        total_ms=pl.col("dur_ns").sum() / 1e6,
        wait_ms=pl.col("wait_ns").sum() / 1e6,
        transfer_ms=pl.col("transfer_ns").sum() / 1e6,
        median_msg_bytes=pl.col("msg_bytes").median(),
        bus_gb_s=(pl.col("msg_bytes") * ring).sum() / pl.col("transfer_ns").sum(),
    ).with_columns(
        calls_per_forward=pl.col("calls") / pl.col("forwards"),
        ms_per_forward=pl.col("total_ms") / pl.col("forwards"),
        wait_ms_per_forward=pl.col("wait_ms") / pl.col("forwards"),
        transfer_ms_per_forward=pl.col("transfer_ms") / pl.col("forwards"),
    ).sort("mode", "family", "rank"))


def first_call_wait_share(calls: pl.DataFrame) -> pl.DataFrame:
    """Per rank: the share of its waiting spent in the first call of each forward. Near 100% means the
    ranks start their forwards at different times (launch skew) and are in step after that call."""
    with_fwd = calls.filter(pl.col("forward").is_not_null() & pl.col("wait_ns").is_not_null())
    first = pl.col("start_ns") == pl.col("start_ns").min().over("rank", "forward")
    return with_fwd.group_by("rank").agg(
        wait_ms=pl.col("wait_ns").sum() / 1e6,
        first_call_wait_ms=pl.col("wait_ns").filter(first).sum() / 1e6,
    ).with_columns(first_call_share_pct=(pl.col("first_call_wait_ms") / pl.col("wait_ms") * 100)).sort("rank")


def busy_share(kernels: pl.DataFrame) -> float | None:
    """Share of a profile's window (first kernel start to last kernel end) with a kernel running."""
    from sglang_tracing.analyzer.analyses.kernels import merge_intervals

    if kernels.is_empty():
        return None
    merged = merge_intervals(kernels.select("start_ns", "end_ns"))
    window = kernels["end_ns"].max() - kernels["start_ns"].min()
    return float((merged["end_ns"] - merged["start_ns"]).sum() / window) if window else None


def forward_skew(forwards: pl.DataFrame) -> pl.DataFrame:
    """Per rank, clock-free: how much longer its forwards ran than the same forward on the quickest rank
    (CUDA-event durations; forwards matched by their order on each rank, same mode and tokens). Ranks
    leave a forward together, bound by its collectives, so the excess is time spent waiting for a rank
    that started later."""
    fw = forwards.filter(pl.col("gpu_start_ns").is_not_null()).with_columns(
        gpu_ns=pl.col("gpu_end_ns") - pl.col("gpu_start_ns"))
    same = fw.group_by("forward").agg(pl.col("tokens").n_unique().alias("shapes"), pl.len().alias("ranks"))
    full = same.filter((pl.col("shapes") == 1) & (pl.col("ranks") == fw["rank"].n_unique()))["forward"]
    fw = fw.filter(pl.col("forward").is_in(full.implode()))
    if fw.is_empty():
        return pl.DataFrame()
    return (fw.with_columns(excess_ns=pl.col("gpu_ns") - pl.col("gpu_ns").min().over("forward"))
            .group_by("rank", "mode").agg(forwards=pl.len(), median_excess_us=pl.col("excess_ns").median() / 1e3,
                                          mean_excess_us=pl.col("excess_ns").mean() / 1e3,
                                          median_forward_ms=pl.col("gpu_ns").median() / 1e6)
            .sort("mode", "rank"))
