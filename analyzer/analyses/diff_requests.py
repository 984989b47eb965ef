"""The request side of a diff: the user's latencies A vs B (p50 / p99 and the change), and whether the
two inputs ran the same workload at all (else totals compare different work, and only per-call
figures mean something)."""
from __future__ import annotations

import dataclasses

import polars as pl

from sglang_tracing import semconv as sc
from sglang_tracing.analyzer.analyses.requests import for_statistics, request_table
from sglang_tracing.analyzer.model import TraceModel

CALLS_DIFFER_PCT = 10.0  # total calls of a table further apart than this: not the same work
NAMES_DIFFER_PCT = 10.0  # more names than this share on one side only: not the same work

REQUEST_METRICS_SCHEMA = {"metric": pl.String, "unit": pl.String, "A": pl.Float64, "B": pl.Float64,
                          "change_pct": pl.Float64}


def requests_of(model: TraceModel) -> pl.DataFrame:
    """The request table (requests.request_table) of a model with spans; empty without."""
    if model.spans.is_empty():
        return pl.DataFrame(schema={"rid": pl.String, "internal": pl.String})
    return request_table(model.scan_spans(), model.manifest, model.servers)


def internal_rids(requests: pl.DataFrame) -> list[str]:
    """SGLang's warm-up and health checks, our readiness probe: never counted in a diff."""
    if "internal" not in requests.columns:
        return []
    return requests.filter(pl.col("internal").is_not_null())["rid"].to_list()


def without_internal(spans: pl.DataFrame, rids: list[str]) -> pl.DataFrame:
    """``spans`` without those of internal requests: their request spans, and forwards that ran nothing else."""
    if not rids or spans.is_empty():
        return spans
    keep = pl.lit(True)
    if sc.RID in spans.columns:
        keep = keep & ~pl.col(sc.RID).is_in(rids).fill_null(False)
    if sc.BATCH_RIDS in spans.columns:
        only_internal = pl.col(sc.BATCH_RIDS).list.eval(pl.element().is_in(rids)).list.all()
        keep = keep & ~(pl.col(sc.BATCH_RIDS).is_not_null() & only_internal).fill_null(False)
    return spans.filter(keep)


def _stats(requests: pl.DataFrame) -> dict[str, tuple[str, float | None]]:
    """metric -> (unit, value) over the requests statistics are over (requests.for_statistics)."""
    users = for_statistics(requests)
    out: dict[str, tuple[str, float | None]] = {"requests": ("count", float(users.height))}
    if users.is_empty():
        return out
    gaps = users["itl_ns"].explode().drop_nulls() if "itl_ns" in users.columns else pl.Series([], dtype=pl.Int64)

    def q(series: pl.Series, p: float) -> float | None:
        s = series.drop_nulls()
        return None if s.is_empty() else float(s.quantile(p, "nearest")) / 1e6

    for label, series in (("TTFT", users["ttft_ns"] if "ttft_ns" in users.columns else pl.Series([], dtype=pl.Int64)),
                          ("ITL (every gap)", gaps), ("end-to-end", users["e2e_ns"])):
        out[f"{label} p50"] = ("ms", q(series, 0.5))
        out[f"{label} p99"] = ("ms", q(series, 0.99))
    tokens = float(users["output_tokens"].fill_null(0).sum())
    span_s = (users["finished_ns"].max() - users["received_ns"].min()) / 1e9
    out["output tokens"] = ("count", tokens)
    out["throughput"] = ("tok/s", tokens / span_s if span_s else None)
    return out


def compare_requests(a: pl.DataFrame, b: pl.DataFrame) -> pl.DataFrame:
    """Per metric (requests, TTFT / ITL / end-to-end p50 and p99, output tokens, throughput): A, B and
    the change in % of A. Empty when neither side has requests."""
    sa, sb = _stats(a), _stats(b)
    if not (sa["requests"][1] or sb["requests"][1]):
        return pl.DataFrame(schema=REQUEST_METRICS_SCHEMA)
    rows = []
    for metric in dict.fromkeys([*sa, *sb]):
        unit, x = sa.get(metric, sb.get(metric))[0], sa.get(metric, ("", None))[1]
        y = sb.get(metric, ("", None))[1]
        rows.append((metric, unit, x, y, (y - x) / x * 100 if x and y is not None else None))
    return pl.DataFrame(rows, schema=REQUEST_METRICS_SCHEMA, orient="row")


@dataclasses.dataclass
class Workload:
    same: bool
    reasons: list[str]  # what differs (empty when the same)


def workload(tables: list[tuple[str, pl.DataFrame]], requests: pl.DataFrame) -> Workload:
    """Whether A and B ran the same work. For traces, the user's requests and output tokens (kernel and
    span names may change with the code under test: a new attention backend is the same workload);
    for profiles alone, per compared table (title, diff.compare frame), names found on one side only
    and total calls."""
    reasons = []
    if requests.height:
        for metric in ("requests", "output tokens"):
            row = requests.filter(pl.col("metric") == metric)
            if row.height and row["A"][0] != row["B"][0]:
                reasons.append(f"{metric}: {row['A'][0]:,.0f} vs {row['B'][0]:,.0f}")
        return Workload(not reasons, reasons)
    for title, d in tables:
        if d.is_empty():
            continue
        one_side = d.filter(pl.col("status").is_in(["new", "missing"])).height
        if one_side / d.height * 100 > NAMES_DIFFER_PCT:
            reasons.append(f"{title.lower()}: {one_side} of {d.height} names on one side only")
        calls_a, calls_b = int(d["a_n"].sum() or 0), int(d["b_n"].sum() or 0)
        if calls_a and abs(calls_b - calls_a) / calls_a * 100 > CALLS_DIFFER_PCT:
            reasons.append(f"{title.lower()}: {calls_a:,} vs {calls_b:,} calls")
    return Workload(not reasons, reasons)
