"""ncu's warp-stall breakdown per kernel: from the raw stall metrics where the profile has them, else
from ncu's own CPIStall rule text, with what each stall reason means."""
from __future__ import annotations

import re

import polars as pl

STALL_RAW = re.compile(r"^smsp__average_warp_latency_issue_stalled_(\w+)\.ratio$|"
                       r"^smsp__average_warps_issue_stalled_(\w+)_per_issue_active\.ratio$")
STALL_MEANING = {
    "long_scoreboard": "waiting on global/local memory (L1TEX) results: memory-latency bound",
    "short_scoreboard": "waiting on shared memory or MUFU results: shared-memory or special-function bound",
    "barrier": "waiting at __syncthreads: unbalanced work between warps of a block",
    "mio_throttle": "memory-input/output queue full: too many shared-memory or special instructions",
    "lg_throttle": "local/global memory queue full: too many small memory instructions",
    "math_pipe_throttle": "math pipe busy: compute bound on that pipe",
    "wait": "fixed-latency dependency: short instruction chains, little ILP",
    "not_selected": "eligible but another warp was picked: enough parallelism",
    "selected": "issuing: the warp did useful work",
    "dispatch_stall": "dispatcher stall: pipeline conflicts",
    "drain": "waiting for memory stores to drain at exit",
    "imc_miss": "immediate constant cache miss",
    "branch_resolving": "waiting for branch target computation",
    "no_instruction": "instruction cache miss or no instruction fetched",
    "membar": "waiting on a memory barrier",
    "sleeping": "warp sleeping (nanosleep or yield)",
    "tex_throttle": "texture queue full",
    "misc": "miscellaneous hardware reasons",
}
# how ncu's CPIStall rule describes each stall reason in its text, most specific first
_STALL_WORDS = (("scoreboard dependency on a MIO", "short_scoreboard"), ("L1TEX", "long_scoreboard"),
                ("memory barrier", "membar"), ("MIO", "mio_throttle"), ("barrier", "barrier"),
                ("(LG)", "lg_throttle"), ("local and global", "lg_throttle"), ("math pipe", "math_pipe_throttle"),
                ("fixed latency", "wait"), ("branch target", "branch_resolving"), ("dispatch", "dispatch_stall"),
                ("immediate constant", "imc_miss"), ("instruction cache", "no_instruction"),
                ("not selected", "not_selected"), ("sleeping", "sleeping"), ("texture", "tex_throttle"),
                ("drain", "drain"))
_RULE_STALL = re.compile(r"spends ([\d.]+) cycles being stalled (.*?)\..*?represents about ([\d.]+)% of the total "
                         r"average of ([\d.]+) cycles", re.S)



def _stall_reason(text: str) -> str | None:
    return next((reason for words, reason in _STALL_WORDS if words in text), None)


def warp_stalls(long: pl.DataFrame, rules: pl.DataFrame | None = None) -> pl.DataFrame:
    """Per kernel and stall reason: cycles per issued instruction spent stalled, share, meaning, source.
    From the raw stall metrics where the profile has them; else from ncu's own CPIStall rule text
    (console or details page), which names the dominant reason and its share."""
    schema = {"kernel_id": pl.Int64, "kernel_name": pl.String, "reason": pl.String, "cycles": pl.Float64,
              "share_pct": pl.Float64, "meaning": pl.String, "source": pl.String}
    rows = []
    for kid, name, metric, value in long.select("kernel_id", "kernel_name", "metric", "value").iter_rows():
        m = STALL_RAW.match(metric or "")
        if m and value is not None:
            rows.append((kid, name, m.group(1) or m.group(2), value))
    out = pl.DataFrame(schema=schema)
    if rows:
        df = pl.DataFrame(rows, schema=["kernel_id", "kernel_name", "reason", "cycles"], orient="row")
        df = df.group_by("kernel_id", "kernel_name", "reason").agg(pl.col("cycles").max())
        out = df.with_columns((pl.col("cycles") / pl.col("cycles").sum().over("kernel_id") * 100).alias("share_pct"),
                              pl.col("reason").replace_strict(STALL_MEANING, default="").alias("meaning"),
                              pl.lit("raw stall metrics").alias("source")).select(list(schema))
    if rules is not None and not rules.is_empty():
        have = set(out["kernel_id"].to_list())
        extra = []
        for kid, name, text in rules.select("kernel_id", "kernel_name", "text").iter_rows():
            m = _RULE_STALL.search(text or "")
            if kid in have or not m:
                continue
            reason = _stall_reason(m.group(2)) or m.group(2)
            extra.append((kid, name, reason, float(m.group(1)), float(m.group(3)), STALL_MEANING.get(reason, ""),
                          f"ncu rule: of {m.group(4)} cycles between two issued instructions"))
        if extra:
            out = pl.concat([out, pl.DataFrame(extra, schema=schema, orient="row")])
    return out.sort(["kernel_id", "cycles"], descending=[False, True])
