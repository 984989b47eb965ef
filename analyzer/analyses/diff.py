"""Two runs or two profiles side by side, as HTA's trace diff does: per kernel, NVTX range, GPU memory
operation, CUDA API function and span name, what got slower or faster and by how much, and what is new
or missing. Built on the nsys-stats tables of each side (computed from events, or read from nsys
stats CSVs), so any pair of inputs the analyzer reads can be compared."""
from __future__ import annotations

import polars as pl

from sglang_tracing.analyzer.analyses import profiler_control, topdown
from sglang_tracing.analyzer.analyses.stats_tables import summaries
from sglang_tracing.analyzer.model import TraceModel
from sglang_tracing.analyzer.report import Report, ms

SAME_PCT = 1.0  # changes smaller than this share of A's total count as unchanged
TOP = 25
# table -> (section title, key column, count column)
TABLES = {
    "cuda_gpu_kern_sum": ("Kernels", "Name", "Instances"),
    "nvtx_sum": ("NVTX ranges", "Range", "Instances"),
    "cuda_gpu_mem_time_sum": ("GPU memory operations", "Operation", "Count"),
    "cuda_api_sum": ("CUDA API", "Name", "Num Calls"),
    "osrt_sum": ("OS runtime", "Name", "Num Calls"),
}


def compare(a: pl.DataFrame, b: pl.DataFrame, key: str, total: str, count: str) -> pl.DataFrame:
    """Per ``key``: totals and counts of both sides, the change (B - A) in ns and %, the change of the
    mean, and a status (slower, faster, same, new, missing). Sorted by the size of the change."""
    def side(t: pl.DataFrame, tag: str) -> pl.DataFrame:
        return t.group_by(key).agg(pl.col(total).sum().alias(f"{tag}_ns"), pl.col(count).sum().alias(f"{tag}_n"))

    j = side(a, "a").join(side(b, "b"), on=key, how="full", coalesce=True)
    j = j.with_columns((pl.col("b_ns").fill_null(0) - pl.col("a_ns").fill_null(0)).alias("delta_ns"),
                       (pl.col("a_ns") / pl.col("a_n")).alias("a_avg"), (pl.col("b_ns") / pl.col("b_n")).alias("b_avg"))
    pct = pl.col("delta_ns") / pl.col("a_ns") * 100
    status = (pl.when(pl.col("a_ns").is_null()).then(pl.lit("new"))
              .when(pl.col("b_ns").is_null()).then(pl.lit("missing"))
              .when(pct.abs() < SAME_PCT).then(pl.lit("same"))
              .when(pl.col("delta_ns") > 0).then(pl.lit("slower")).otherwise(pl.lit("faster")))
    return (j.with_columns(pct.alias("delta_pct"), status.alias("status"),
                           (pl.col("b_avg") - pl.col("a_avg")).alias("avg_delta_ns"))
            .sort(pl.col("delta_ns").abs(), descending=True)
            .select("status", "delta_ns", "delta_pct", "a_ns", "b_ns", "a_n", "b_n", "a_avg", "b_avg", "avg_delta_ns",
                    pl.col(key).alias("name")))


def span_table(spans: pl.DataFrame, left_out: pl.DataFrame | None = None) -> pl.DataFrame:
    """SGLang spans per name (forwards per mode) in the nsys-stats shape compare() reads, without the
    scheduler spans our profiler control ran in (``left_out``: profiler_control.spans_with_control)."""
    if spans.is_empty():
        return pl.DataFrame(schema={"Name": pl.String, "Total Time (ns)": pl.Int64, "Num Calls": pl.Int64})
    from sglang_tracing import semconv as sc

    if left_out is not None:
        spans = profiler_control.kept(spans, left_out).collect()

    name = pl.col("name")
    if sc.FORWARD_MODE in spans.columns:
        name = pl.when(pl.col(sc.FORWARD_MODE).is_not_null()).then(name + " [" + pl.col(sc.FORWARD_MODE) + "]") \
            .otherwise(name)
    return spans.group_by(name.alias("Name")).agg(pl.col("dur_ns").sum().alias("Total Time (ns)"),
                                                  pl.len().alias("Num Calls"))


def _display(d: pl.DataFrame) -> pl.DataFrame:
    return d.head(TOP).select("status", (pl.col("delta_ns") / 1e6).round(3).alias("delta_ms"),
                              pl.col("delta_pct").round(1), (pl.col("a_ns") / 1e6).round(3).alias("A_ms"),
                              (pl.col("b_ns") / 1e6).round(3).alias("B_ms"), pl.col("a_n").alias("A_n"),
                              pl.col("b_n").alias("B_n"), (pl.col("a_avg") / 1e3).round(2).alias("A_avg_us"),
                              (pl.col("b_avg") / 1e3).round(2).alias("B_avg_us"), "name")


def _counts(d: pl.DataFrame) -> str:
    n = dict(d.group_by("status").len().iter_rows())
    return ", ".join(f"{n[s]} {s}" for s in ("slower", "faster", "same", "new", "missing") if n.get(s))


def _totals(report: Report, a: TraceModel, b: TraceModel, ta: dict, tb: dict) -> None:
    sec = report.section("Overview")
    names_a, names_b = set(topdown.device_names(a).values()), set(topdown.device_names(b).values())
    if names_a or names_b:
        same = names_a == names_b
        sec.add("GPU", " vs ".join(", ".join(sorted(n)) or "unknown" for n in (names_a, names_b)) if not same
                else ", ".join(sorted(names_a)), "" if same else "different GPUs: compare with care")
    for label, table in (("kernel time", "cuda_gpu_kern_sum"), ("GPU memory operation time", "cuda_gpu_mem_time_sum"),
                         ("CUDA API time", "cuda_api_sum")):
        x, y = ta[table][0], tb[table][0]
        if x.is_empty() and y.is_empty():
            continue
        xa, yb = int(x["Total Time (ns)"].sum() or 0), int(y["Total Time (ns)"].sum() or 0)
        change = f" ({(yb - xa) / xa * 100:+.1f}%)" if xa else ""
        sec.add(label, f"{ms(xa)} -> {ms(yb)}{change}", "sum over the table; B - A")
    for tag, model in (("A", a), ("B", b)):
        ov = topdown.gpu_overview(topdown.gpu_activity(model.kernels, model.memops))
        if ov.height:
            sec.add(f"GPU busy {tag}", f"{ms(int(ov['busy_ns'].sum()))} of {ms(int(ov['window_ns'].max()))}, "
                                       f"{int(ov['bubbles'].sum())} bubbles totalling {ms(int(ov['bubble_ns'].sum()))}",
                    "first to last GPU operation")


def build_report(a: TraceModel, b: TraceModel, label_a: str = "A", label_b: str = "B") -> Report:
    report = Report("diff", f"Diff: {label_a} (A) vs {label_b} (B)")
    src = report.section("Inputs")
    src.add("A", label_a, "the baseline")
    src.add("B", label_b, "compared against A: delta = B - A, positive is slower")
    ta, tb = summaries(a), summaries(b)
    _totals(report, a, b, ta, tb)
    tables = [(title, ta[name][0], tb[name][0], key, count) for name, (title, key, count) in TABLES.items()]
    left = {tag: profiler_control.spans_with_control(m.scan_spans(), m.servers) for tag, m in (("A", a), ("B", b))}
    tables.insert(2, ("SGLang spans", span_table(a.spans, left["A"]), span_table(b.spans, left["B"]), "Name",
                      "Num Calls"))
    for title, x, y, key, count in tables:
        if x.is_empty() and y.is_empty():
            continue
        sec = report.section(title)
        if title == "SGLang spans":
            for tag, why in ((tag, profiler_control.describe(f)) for tag, f in left.items()):
                if why:
                    sec.add(f"side {tag}", why, "scheduler spans our profiler control ran in: not in this table")
        if x.is_empty() or y.is_empty():
            sec.add("comparison", None, f"only {'B' if x.is_empty() else 'A'} has {title.lower()}")
            continue
        d = compare(x, y, key, "Total Time (ns)", count)
        sec.add("changes", _counts(d), f"|change| under {SAME_PCT:.0f}% of A's total is 'same'")
        worst = d.filter(pl.col("status").is_in(["slower", "new"])).head(1)
        if worst.height:
            w = worst.row(0, named=True)
            sec.add("largest regression", f"+{ms(w['delta_ns'])}"
                    + (f" ({w['delta_pct']:+.1f}%)" if w["delta_pct"] is not None else " (new)"), w["name"])
        sec.table = _display(d)
    return report
