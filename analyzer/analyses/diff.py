"""Two runs or two profiles side by side, as HTA's trace diff does: per kernel, NVTX range, GPU memory
operation, CUDA API function and span name, how each call's time changed and how the number of calls
changed (kept apart, as users of ``nsys stats`` compare them), what is new or missing, and whether the
two inputs ran the same workload at all; for traces, the user's TTFT / ITL / end-to-end percentiles.
Built on the nsys-stats tables of each side (computed from events, or read from nsys stats CSVs), so
any pair of inputs the analyzer reads can be compared. ``compute`` gives a typed ``DiffResult``,
``describe`` words it."""
from __future__ import annotations

import dataclasses

import polars as pl

from sglang_tracing import semconv as sc
from sglang_tracing.analyzer.analyses import diff_requests, profiler_control, topdown
from sglang_tracing.analyzer.analyses.stats_tables import summaries
from sglang_tracing.analyzer.model import TraceModel
from sglang_tracing.analyzer.report import Report, ms

SAME_PCT = 1.0  # a per-call mean that moved less than this share of A's counts as unchanged
SPANS = "SGLang spans"
# table -> (section title, key column, count column)
TABLES = {
    "cuda_gpu_kern_sum": ("Kernels", "Name", "Instances"),
    "nvtx_sum": ("NVTX ranges", "Range", "Instances"),
    "cuda_gpu_mem_time_sum": ("GPU memory operations", "Operation", "Count"),
    "cuda_api_sum": ("CUDA API", "Name", "Num Calls"),
    "osrt_sum": ("OS runtime", "Name", "Num Calls"),
}
STATUSES = ("slower", "faster", "same", "new", "missing")


def compare(a: pl.DataFrame, b: pl.DataFrame, key: str, total: str, count: str) -> pl.DataFrame:
    """Per ``key``: totals and calls of both sides; per-call means and their change; ``status`` judged on
    the per-call mean (slower, faster, same, new, missing); ``calls`` (same, more, fewer); the time the
    per-call change accounts for over B's calls (``per_call_effect_ns``) and the time the change in calls
    accounts for at A's mean (``count_effect_ns``). Sorted by the size of the total change, then name."""
    def side(t: pl.DataFrame, tag: str) -> pl.DataFrame:
        return (t.filter(pl.col(key).is_not_null())
                .group_by(key).agg(pl.col(total).fill_null(0).sum().cast(pl.Float64).alias(f"{tag}_ns"),
                                   pl.col(count).fill_null(0).sum().cast(pl.Int64).alias(f"{tag}_n")))

    j = side(a, "a").join(side(b, "b"), on=key, how="full", coalesce=True)
    avg = lambda t: pl.when(pl.col(f"{t}_n") > 0).then(pl.col(f"{t}_ns") / pl.col(f"{t}_n"))  # noqa: E731
    j = j.with_columns(avg("a").alias("a_avg"), avg("b").alias("b_avg"),
                       (pl.col("b_ns").fill_null(0) - pl.col("a_ns").fill_null(0)).alias("delta_ns"))
    change = pl.col("b_avg") - pl.col("a_avg")
    pct = pl.when(pl.col("a_avg") > 0).then(change / pl.col("a_avg") * 100)
    status = (pl.when(pl.col("a_ns").is_null()).then(pl.lit("new"))
              .when(pl.col("b_ns").is_null()).then(pl.lit("missing"))
              .when((change == 0) | change.is_null() | (pct.abs() < SAME_PCT)).then(pl.lit("same"))
              .when(change > 0).then(pl.lit("slower")).otherwise(pl.lit("faster")))
    calls = (pl.when(pl.col("a_n").is_null() | pl.col("b_n").is_null()).then(pl.lit(None, pl.String))
             .when(pl.col("b_n") > pl.col("a_n")).then(pl.lit("more"))
             .when(pl.col("b_n") < pl.col("a_n")).then(pl.lit("fewer")).otherwise(pl.lit("same")))
    return (j.with_columns(status.alias("status"), calls.alias("calls"), pct.alias("per_call_pct"),
                           change.alias("per_call_delta_ns"), (change * pl.col("b_n")).alias("per_call_effect_ns"),
                           ((pl.col("b_n") - pl.col("a_n")) * pl.col("a_avg")).alias("count_effect_ns"))
            .sort([pl.col("delta_ns").abs(), key], descending=[True, False])
            .select("status", "calls", "delta_ns", "a_ns", "b_ns", "a_n", "b_n", "a_avg", "b_avg", "per_call_delta_ns",
                    "per_call_pct", "per_call_effect_ns", "count_effect_ns", pl.col(key).alias("name")))


def span_table(spans: pl.DataFrame, left_out: pl.DataFrame | None = None) -> pl.DataFrame:
    """SGLang spans per name (forwards per mode) in the nsys-stats shape compare() reads, without the
    scheduler spans our profiler control ran in (``left_out``: profiler_control.spans_with_control)."""
    if spans.is_empty():
        return pl.DataFrame(schema={"Name": pl.String, "Total Time (ns)": pl.Int64, "Num Calls": pl.Int64})
    if left_out is not None:
        spans = profiler_control.kept(spans, left_out).collect()
    name = pl.col("name")
    if sc.FORWARD_MODE in spans.columns:
        name = pl.when(pl.col(sc.FORWARD_MODE).is_not_null()).then(name + " [" + pl.col(sc.FORWARD_MODE) + "]") \
            .otherwise(name)
    return spans.group_by(name.alias("Name")).agg(pl.col("dur_ns").sum().alias("Total Time (ns)"),
                                                  pl.len().alias("Num Calls"))


@dataclasses.dataclass
class TableDiff:
    title: str
    rows: pl.DataFrame | None  # compare(); None when only one side has this table
    only: str | None = None  # "A" or "B": the side that has it, when rows is None
    notes: dict[str, str] = dataclasses.field(default_factory=dict)  # side -> spans left out and why
    internal: dict[str, int] = dataclasses.field(default_factory=dict)  # side -> internal requests left out

    def counts(self) -> dict[str, int]:
        return dict(self.rows.group_by("status").len().iter_rows()) if self.rows is not None else {}


@dataclasses.dataclass
class DiffResult:
    label_a: str
    label_b: str
    gpus: tuple[list[str], list[str]]
    totals: list[tuple[str, int, int]]  # (what, A ns, B ns): the sum over each table
    busy: dict[str, dict]  # side -> topdown.gpu_overview summed: busy_ns, window_ns, bubbles, bubble_ns
    requests: pl.DataFrame  # diff_requests.compare_requests
    workload: diff_requests.Workload
    tables: list[TableDiff]


def _busy(model: TraceModel) -> dict | None:
    ov = topdown.gpu_overview(topdown.gpu_activity(model.kernels, model.memops))
    if ov.is_empty():
        return None
    return {"busy_ns": int(ov["busy_ns"].sum()), "window_ns": int(ov["window_ns"].max()),
            "bubbles": int(ov["bubbles"].sum()), "bubble_ns": int(ov["bubble_ns"].sum())}


def compute(a: TraceModel, b: TraceModel, label_a: str = "A", label_b: str = "B") -> DiffResult:
    ta, tb = summaries(a), summaries(b)
    reqs = {"A": diff_requests.requests_of(a), "B": diff_requests.requests_of(b)}
    internal = {tag: diff_requests.internal_rids(r) for tag, r in reqs.items()}
    tables = []
    for name, (title, key, count) in TABLES.items():
        tables.append((title, ta[name][0], tb[name][0], key, count, {}))
    left = {tag: profiler_control.spans_with_control(m.scan_spans(), m.servers) for tag, m in (("A", a), ("B", b))}
    span_tables = [span_table(diff_requests.without_internal(m.spans, internal[tag]), left[tag])
                   for tag, m in (("A", a), ("B", b))]
    notes = {tag: why for tag, why in ((t, profiler_control.describe(f)) for t, f in left.items()) if why}
    tables.insert(2, (SPANS, *span_tables, "Name", "Num Calls", notes))
    diffs = []
    for title, x, y, key, count, note in tables:
        if x.is_empty() and y.is_empty():
            continue
        if x.is_empty() or y.is_empty():
            diffs.append(TableDiff(title, None, "B" if x.is_empty() else "A"))
            continue
        diffs.append(TableDiff(title, compare(x, y, key, "Total Time (ns)", count), notes=note,
                               internal={t: len(r) for t, r in internal.items() if r} if title == SPANS else {}))
    totals = []
    for label, name in (("kernel time", "cuda_gpu_kern_sum"), ("GPU memory operation time", "cuda_gpu_mem_time_sum"),
                        ("CUDA API time", "cuda_api_sum")):
        x, y = ta[name][0], tb[name][0]
        if not (x.is_empty() and y.is_empty()):
            totals.append((label, int(x["Total Time (ns)"].sum() or 0), int(y["Total Time (ns)"].sum() or 0)))
    requests = diff_requests.compare_requests(reqs["A"], reqs["B"])
    work = diff_requests.workload([(d.title, d.rows) for d in diffs if d.rows is not None], requests)
    busy = {tag: bz for tag, bz in (("A", _busy(a)), ("B", _busy(b))) if bz}
    gpus = (sorted(set(topdown.device_names(a).values())), sorted(set(topdown.device_names(b).values())))
    return DiffResult(label_a, label_b, gpus, totals, busy, requests, work, diffs)


# ---- wording ----
def duration(ns: float | None) -> str | None:
    """A time in the unit that keeps it readable (ns, us, ms, s), four significant digits."""
    if ns is None:
        return None
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("us", 1e3)):
        if abs(ns) >= scale:
            return f"{ns / scale:.4g} {unit}"
    return f"{ns:.4g} ns"


def display(d: pl.DataFrame) -> pl.DataFrame:
    """The comparison as a report prints it: totals in ms, each per-call mean in its own unit."""
    per_call = lambda c: pl.col(c).map_elements(duration, return_dtype=pl.String)  # noqa: E731
    return d.select("status", "calls", (pl.col("delta_ns") / 1e6).round(3).alias("delta_ms"),
                    (pl.col("a_ns") / 1e6).round(3).alias("A_ms"), (pl.col("b_ns") / 1e6).round(3).alias("B_ms"),
                    pl.col("a_n").alias("A_calls"), pl.col("b_n").alias("B_calls"),
                    per_call("a_avg").alias("A_per_call"), per_call("b_avg").alias("B_per_call"),
                    pl.col("per_call_pct").round(1), "name")


def _worst(d: pl.DataFrame, column: str, status: list[str] | None = None) -> dict | None:
    rows = d.filter(pl.col(column) > 0)
    if status:
        rows = rows.filter(pl.col("status").is_in(status))
    return rows.sort(column, descending=True).row(0, named=True) if rows.height else None


def _describe_table(report: Report, t: TableDiff) -> None:
    sec = report.section(t.title)
    for tag, why in t.notes.items():
        sec.add(f"side {tag}", why, "scheduler spans our profiler control ran in: not in this table")
    for tag, n in t.internal.items():
        sec.add(f"side {tag}", f"{n} internal requests left out", "warm-up, health checks, readiness probe")
    if t.rows is None:
        sec.add("comparison", None, f"only {t.only} has {t.title.lower()}")
        return
    n = t.counts()
    sec.add("per-call changes", ", ".join(f"{n[s]} {s}" for s in STATUSES if n.get(s)),
            f"each name's mean time per call, B vs A; under {SAME_PCT:.0f}% of A's mean is 'same'")
    moved = t.rows.filter(pl.col("calls").is_in(["more", "fewer"])).height
    sec.add("count changes", f"{moved} of {t.rows.height} names ran a different number of times",
            "calls B vs A: a total can grow with the calls while each call got faster")
    worst = _worst(t.rows, "per_call_effect_ns", ["slower"])
    if worst:
        sec.add("largest per-call regression", f"{duration(worst['a_avg'])} -> {duration(worst['b_avg'])} a call "
                f"({worst['per_call_pct']:+.1f}%), +{duration(worst['per_call_effect_ns'])} over B's "
                f"{worst['b_n']:,} calls", worst["name"])
    grew = _worst(t.rows, "count_effect_ns")
    if grew:
        sec.add("largest growth from more calls", f"+{duration(grew['count_effect_ns'])} ({grew['a_n']:,} -> "
                f"{grew['b_n']:,} calls at A's {duration(grew['a_avg'])} a call)", grew["name"])
    new = _worst(t.rows, "b_ns", ["new"])
    if new:
        sec.add("largest new", f"{duration(new['b_ns'])} in {new['b_n']:,} calls", new["name"])
    sec.table = display(t.rows)


def describe(r: DiffResult) -> Report:
    report = Report("diff", f"Diff: {r.label_a} (A) vs {r.label_b} (B)")
    src = report.section("Inputs")
    src.add("A", r.label_a, "the baseline")
    src.add("B", r.label_b, "compared against A: delta = B - A, positive is slower")
    sec = report.section("Overview")
    if r.gpus[0] or r.gpus[1]:
        same = r.gpus[0] == r.gpus[1]
        sec.add("GPU", ", ".join(r.gpus[0]) if same else " vs ".join(", ".join(g) or "unknown" for g in r.gpus),
                "" if same else "different GPUs: compare with care")
    sec.add("workload", "the same" if r.workload.same else "different: " + "; ".join(r.workload.reasons),
            ("the user's requests and output tokens" if r.requests.height else "names and calls of every table")
            + ("" if r.workload.same else
                                                                    ": totals compare different work, "
                                                                    "per-call times still compare"))
    for label, x, y in r.totals:
        sec.add(label, f"{ms(x)} -> {ms(y)}" + (f" ({(y - x) / x * 100:+.1f}%)" if x else ""),
                "sum over the table; B - A")
    for tag, b in r.busy.items():
        sec.add(f"GPU busy {tag}", f"{ms(b['busy_ns'])} of {ms(b['window_ns'])}, {b['bubbles']} bubbles totalling "
                                   f"{ms(b['bubble_ns'])}", "first to last GPU operation")
    if r.requests.height:
        req = report.section("Requests (the user's; internal ones and those our profiler ran during left out)")
        req.table = r.requests.with_columns(pl.col("A", "B").round(3), pl.col("change_pct").round(1))
    for t in r.tables:
        _describe_table(report, t)
    return report


def build_report(a: TraceModel, b: TraceModel, label_a: str = "A", label_b: str = "B") -> Report:
    return describe(compute(a, b, label_a, label_b))
