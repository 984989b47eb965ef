"""The top-down view of a profile: how busy each GPU was, where it sat idle and what the host was doing
then, and a ranked list of what to look at first (time at stake, largest first).

Works on profiler files alone (nsys export, Kineto) as well as on a traced SGLang run. GPU activity is
kernels plus memcpy/memset; host activity is the CUDA runtime/driver calls the profiler recorded.
"""
from __future__ import annotations

import polars as pl

from sglang_tracing.analyzer.analyses.kernels import intersection_ns, merge_intervals, total_ns
from sglang_tracing.analyzer.analyses.stats_tables import API_CATEGORIES

BUBBLE_NS = 50_000  # a gap between GPU operations longer than this is a bubble, shorter ones are launch gaps
# CUDA calls that block the host until GPU work finishes (synchronous copies included)
SYNC_CALLS = (r"Synchronize|^cu(da)?Memcpy(?:[23]D)?(?:_v\d+)?$|^cuMemcpy[HDA]to[HDA](?:_v\d+)?$|^cudaMemset(?:_v\d+)?$"
              r"|^hipMemcpy(?:[23]D)?$|^hipMemcpyWithStream$|^hipMemset$")  # HIP's blocking copies, named as ROCm does


def gpu_activity(kernels: pl.DataFrame, memops: pl.DataFrame) -> pl.DataFrame:
    """Every GPU operation: start_ns, end_ns, device, kind ('kernel' or 'memop')."""
    cols = ["start_ns", "end_ns", "device"]
    parts = [f.select(*cols).with_columns(pl.lit(kind).alias("kind")) for f, kind in ((kernels, "kernel"),
                                                                                     (memops, "memop")) if f.height]
    if not parts:
        return pl.DataFrame(schema={"start_ns": pl.Int64, "end_ns": pl.Int64, "device": pl.Int64, "kind": pl.String})
    return pl.concat(parts).with_columns(pl.col("device").fill_null(-1))


def device_names(model) -> dict[int, str]:
    """Device id -> GPU model: from the profiler files, else from the trace's manifest (NVML)."""
    devices = model.devices.drop_nulls("name")
    names = {d: n for d, n in devices.select("device", "name").iter_rows() if d is not None}
    if not names:
        gpu = model.manifest.get("gpu") or {}
        names = {d["index"]: d["name"] for d in gpu.get("devices", []) if d.get("name") is not None}
    return names


def gpu_overview(activity: pl.DataFrame, bubble_ns: int = BUBBLE_NS) -> pl.DataFrame:
    """Per device: window (first to last GPU operation), busy (union of operations), kernel busy, idle,
    bubbles over ``bubble_ns`` (count, total, longest) and the launch gaps under it."""
    rows = []
    for (device,), ops in activity.partition_by(["device"], as_dict=True).items():
        busy_iv = merge_intervals(ops)
        kernel_iv = merge_intervals(ops.filter(pl.col("kind") == "kernel"))
        window = int(busy_iv["end_ns"].max() - busy_iv["start_ns"].min())
        gaps = (busy_iv["start_ns"].shift(-1) - busy_iv["end_ns"]).drop_nulls()
        big = gaps.filter(gaps > bubble_ns)
        busy = total_ns(busy_iv)
        rows.append({"device": device, "window_ns": window, "busy_ns": busy, "kernel_busy_ns": total_ns(kernel_iv),
                     "idle_ns": window - busy, "busy_pct": busy / window * 100 if window else None,
                     "bubbles": big.len(), "bubble_ns": int(big.sum() or 0), "longest_bubble_ns": int(big.max() or 0),
                     "launch_gap_ns": int(gaps.filter(gaps <= bubble_ns).sum() or 0)})
    return pl.DataFrame(rows, schema={"device": pl.Int64, "window_ns": pl.Int64, "busy_ns": pl.Int64,
                                      "kernel_busy_ns": pl.Int64, "idle_ns": pl.Int64, "busy_pct": pl.Float64,
                                      "bubbles": pl.Int64, "bubble_ns": pl.Int64, "longest_bubble_ns": pl.Int64,
                                      "launch_gap_ns": pl.Int64}).sort("device")


def bubbles(activity: pl.DataFrame, bubble_ns: int = BUBBLE_NS) -> pl.DataFrame:
    """The idle gaps longer than ``bubble_ns`` on each device: device, start_ns, end_ns."""
    out = []
    for (device,), ops in activity.partition_by(["device"], as_dict=True).items():
        iv = merge_intervals(ops)
        gaps = iv.select(pl.col("end_ns").alias("start_ns"), pl.col("start_ns").shift(-1).alias("end_ns")).drop_nulls()
        out.append(gaps.filter(pl.col("end_ns") - pl.col("start_ns") > bubble_ns).with_columns(
            pl.lit(device, pl.Int64).alias("device")))
    if not out:
        return pl.DataFrame(schema={"start_ns": pl.Int64, "end_ns": pl.Int64, "device": pl.Int64})
    return pl.concat(out)


def host_during_bubbles(gaps: pl.DataFrame, cpu_ops: pl.DataFrame) -> dict | None:
    """How the GPU's idle bubbles split by what the host was doing: blocked in a synchronizing CUDA call,
    in another CUDA call (launching), or in no CUDA call the profiler saw (CPU work, Python, I/O, idle).
    None when the profile has no CUDA API calls; all zero when the GPU had no bubbles."""
    calls = cpu_ops.filter(pl.col("category").is_in(list(API_CATEGORIES)))
    if calls.is_empty():
        return None
    if gaps.is_empty():
        return {"bubble_ns": 0, "in_sync_ns": 0, "in_other_api_ns": 0, "no_api_ns": 0}
    gap_iv = merge_intervals(gaps)
    sync_iv = merge_intervals(calls.filter(pl.col("name").str.contains(SYNC_CALLS)))
    any_iv = merge_intervals(calls)
    total = total_ns(gap_iv)
    in_sync = intersection_ns(gap_iv, sync_iv) if sync_iv.height else 0
    in_any = intersection_ns(gap_iv, any_iv)
    return {"bubble_ns": total, "in_sync_ns": in_sync, "in_other_api_ns": in_any - in_sync,
            "no_api_ns": total - in_any}


def bubbles_after_sync(gaps: pl.DataFrame, cpu_ops: pl.DataFrame) -> dict | None:
    """Bubbles that a synchronizing call drained the GPU into: the call returned inside the bubble
    (it waited for the last operation before it), so the GPU idled until the host queued more work.
    Returns bubbles, idle_ns and the call most often responsible; None without such bubbles."""
    calls = cpu_ops.filter(pl.col("category").is_in(list(API_CATEGORIES)) & pl.col("name").str.contains(SYNC_CALLS))
    if calls.is_empty() or gaps.is_empty():
        return None
    ends = calls.select(pl.col("end_ns").alias("sync_end"), pl.col("name").str.replace(r"_v\d+$", "")).sort("sync_end")
    hit = (gaps.sort("end_ns").join_asof(ends, left_on="end_ns", right_on="sync_end", strategy="backward")
           .filter(pl.col("sync_end") >= pl.col("start_ns")))
    if hit.is_empty():
        return None
    return {"bubbles": hit.height, "idle_ns": int((hit["end_ns"] - hit["start_ns"]).sum()),
            "call": hit["name"].mode().sort()[0]}


def sync_calls(cpu_ops: pl.DataFrame) -> pl.DataFrame:
    """Synchronizing CUDA calls per function: calls, total_ns (host time blocked)."""
    calls = cpu_ops.filter(pl.col("category").is_in(list(API_CATEGORIES)) & pl.col("name").str.contains(SYNC_CALLS))
    return (calls.group_by(pl.col("name").str.replace(r"_v\d+$", "").alias("name"))
            .agg(pl.len().alias("calls"), (pl.col("end_ns") - pl.col("start_ns")).sum().alias("total_ns"))
            .sort("total_ns", descending=True))


def look_first(overview: pl.DataFrame, kern_sum: pl.DataFrame, mem_time: pl.DataFrame, mem_size: pl.DataFrame,
               after_sync: dict | None, host: dict | None, rules: pl.DataFrame | None) -> pl.DataFrame:
    """Candidates for attention, ranked by the time at stake: the largest kernel, the GPU's idle bubbles
    (and those a synchronizing call drained it into), host<->device copies, and ncu's estimated (global)
    speedups applied to the time their kernels took in this capture. Host time blocked in a
    synchronizing call is not ranked by itself: while the GPU works, waiting costs nothing.
    Columns: rank, what, at_stake_ns, detail."""
    items = []
    if kern_sum.height:
        top = kern_sum.row(0, named=True)
        items.append(("largest kernel", top["Total Time (ns)"],
                      f"{top['Name']}: {top['Time (%)']:.1f}% of kernel time over {top['Instances']} launches"))
    if overview.height and overview["bubble_ns"].sum():
        b = int(overview["bubble_ns"].sum())
        split = ""
        if host:
            split = (f"; host meanwhile: {host['in_sync_ns'] / b * 100:.0f}% in synchronizing calls, "
                     f"{host['in_other_api_ns'] / b * 100:.0f}% in other CUDA calls, {host['no_api_ns'] / b * 100:.0f}%"
                     " in no CUDA call (host-side work the GPU waited for)")
        items.append(("GPU idle in bubbles", b, f"{int(overview['bubbles'].sum())} gaps > {BUBBLE_NS / 1e3:.0f} us, "
                                                f"longest {int(overview['longest_bubble_ns'].max()) / 1e6:.3f} ms{split}"))
    copies = mem_time.filter(pl.col("Operation").str.contains("memcpy")) if mem_time.height else mem_time
    if copies.height and copies["Total Time (ns)"].sum():
        sizes = dict(zip(mem_size["Operation"], mem_size["Total (MB)"])) if mem_size.height else {}
        parts = ", ".join(f"{r['Operation'].removeprefix('[CUDA memcpy ').removesuffix(']')} "
                          f"{r['Total Time (ns)'] / 1e6:.3f} ms"
                          + (f" for {sizes[r['Operation']]:.1f} MB" if r["Operation"] in sizes else "")
                          for r in copies.iter_rows(named=True))
        items.append(("memcpy", int(copies["Total Time (ns)"].sum()), parts))
    if after_sync:
        items.append(("GPU idle after synchronizing calls", after_sync["idle_ns"],
                      f"{after_sync['bubbles']} bubbles began while the host waited in a synchronizing call (most "
                      f"{after_sync['call']}): the queue ran dry until the host launched again"))
    if rules is not None and rules.height and kern_sum.height:
        totals = dict(zip(kern_sum["Name"], kern_sum["Total Time (ns)"]))
        hints = rules.filter((pl.col("speedup_type").fill_null("global") == "global")
                             & pl.col("speedup_pct").is_not_null() & pl.col("kernel_name").is_in(list(totals)))
        for h in hints.sort("speedup_pct", descending=True).unique("kernel_name", keep="first",
                                                                  maintain_order=True).iter_rows(named=True):
            items.append((f"ncu hint ({h['section']})", int(totals[h["kernel_name"]] * h["speedup_pct"] / 100),
                          f"{h['speedup_pct']:.1f}% of {h['kernel_name']} (its time in this capture): {h['text'][:160]}"))
    items.sort(key=lambda x: -x[1])
    return pl.DataFrame([(i + 1, w, s, d) for i, (w, s, d) in enumerate(items)],
                        schema={"rank": pl.Int64, "what": pl.String, "at_stake_ns": pl.Int64, "detail": pl.String},
                        orient="row")
