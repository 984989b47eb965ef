"""What the trace holds of what was served: tail-based keep (requests with full detail or a summary),
batch spans left out on purpose, and our own losses (an exporter that died, writing that stopped, parts
deleted by retention, records dropped). Reports carry it so a sampled set is never taken for the whole.
"""
from __future__ import annotations

import dataclasses

import polars as pl

from sglang_tracing import semconv as sc
from sglang_tracing.analyzer.model import TraceModel
from sglang_tracing.analyzer.report import Section

_OWN = (sc.RECORDER_STATS, sc.EXPORTER_LOST, sc.WRITING_STOPPED, sc.PARTS_DELETED)


@dataclasses.dataclass
class Recording:
    requests: int  # user requests in the trace
    kept: dict[str, int]  # semconv.KEPT_* -> requests (null detail counted as KEPT_ALL)
    batch_keep: dict[str, str]  # process -> its batch keep mode, where not "all"
    batch_left_out: int  # batch records left out by those modes
    dropped: int  # records dropped by recorders (queue full or no exporter)
    unsent: int  # records an exporter never received (its death)
    exporter_lost: list[dict]  # process, t_ns, records sent before
    writing_stopped: list[dict]  # process, t_ns, reason
    parts_deleted: list[str]

    @property
    def summary_only(self) -> int:
        return self.kept.get(sc.KEPT_SUMMARY, 0)

    @property
    def sampled(self) -> bool:
        return bool(self.summary_only or self.batch_keep)

    @property
    def lossy(self) -> bool:
        return bool(self.dropped or self.unsent or self.exporter_lost or self.writing_stopped or self.parts_deleted)


def compute(model: TraceModel, requests: pl.DataFrame) -> Recording:
    """``requests``: requests.user_requests of the request table."""
    own = model.scan_spans().filter(pl.col("name").is_in(_OWN)).collect()
    cols = own.columns
    process = (pl.concat_str(pl.col("role").fill_null("?"), pl.lit(" pid "), pl.col("pid").cast(pl.String))
               if "role" in cols else pl.lit("?"))
    own = own.with_columns(process.alias("process"))

    def attr(name: str, dtype=pl.Int64) -> pl.Expr:
        return pl.col(name) if name in cols else pl.lit(None, dtype).alias(name)

    stats = own.filter(pl.col("name") == sc.RECORDER_STATS).sort("start_ns").group_by("process").last()
    stats = stats.select("process", attr(sc.BATCH_KEEP, pl.String), attr(sc.BATCH_LEFT_OUT),
                         attr(sc.DROPPED_SPANS), attr(sc.RECORDS_UNSENT))
    kept = (requests["kept"].fill_null(sc.KEPT_ALL).value_counts().iter_rows()
              if "kept" in requests.columns else [(sc.KEPT_ALL, requests.height)])
    lost = own.filter(pl.col("name") == sc.EXPORTER_LOST).sort("start_ns")
    stopped = own.filter(pl.col("name") == sc.WRITING_STOPPED).sort("start_ns")
    deleted = own.filter(pl.col("name") == sc.PARTS_DELETED)
    return Recording(
        requests=requests.height,
        kept={k: int(v) for k, v in kept},
        batch_keep={p: m for p, m in stats.select("process", sc.BATCH_KEEP).iter_rows() if m and m != "all"},
        batch_left_out=int(stats[sc.BATCH_LEFT_OUT].sum() or 0),
        dropped=int(stats[sc.DROPPED_SPANS].sum() or 0),
        unsent=int(stats[sc.RECORDS_UNSENT].sum() or 0),
        exporter_lost=lost.select("process", pl.col("start_ns").alias("t_ns"),
                                  attr(sc.RECORDS_SENT).alias("records_sent")).to_dicts(),
        writing_stopped=stopped.select("process", pl.col("start_ns").alias("t_ns"),
                                       attr(sc.STOP_REASON, pl.String).alias("reason")).to_dicts(),
        parts_deleted=(deleted[sc.PARTS_DELETED].explode().drop_nulls().unique().sort().to_list()
                       if deleted.height and sc.PARTS_DELETED in cols else []),
    )


def add_to_reports(reports: list, model: TraceModel) -> None:
    """Open each report with ``describe`` where the trace holds less than everything served."""
    from sglang_tracing.analyzer.analyses.requests import request_table, user_requests

    if model.manifest.get("profiles_only") or not reports:
        return
    rec = compute(model, user_requests(request_table(model.scan_spans(), model.manifest, model.servers)))
    if rec.sampled or rec.lossy:
        for report in reports:
            report.sections.insert(0, describe(rec))


def describe(rec: Recording) -> Section:
    """The section every report carries when the trace holds less than everything served."""
    sec = Section("What was recorded")
    if rec.summary_only:
        kept = rec.requests - rec.summary_only
        why = ", ".join(f"{n} {d}" for d, n in sorted(rec.kept.items()) if d != sc.KEPT_SUMMARY)
        sec.add("requests with full detail", f"{kept} of {rec.requests}", why or "none")
        sec.add("requests with a summary only", str(rec.summary_only),
                "tail-based keep: counts, TTFT, end-to-end and mean-ITL percentiles cover every request; "
                "per-token figures (token times, ITL distribution, prefill chunks, prefix digests) cover "
                "only the requests with full detail")
    if rec.batch_keep:
        modes = ", ".join(sorted({m if m == "kept" else f"1 in {m}" for m in rec.batch_keep.values()}))
        sec.add("batch spans", f"sampled ({modes})",
                f"{rec.batch_left_out} batch records left out on purpose: batch counts and GPU time by request "
                "cover the forwards kept, not every forward")
    for lost in rec.exporter_lost:
        sec.add("exporter died", lost["process"],
                f"a new one took over; records sent before its death: {lost['records_sent']} (what the file "
                "holds of them is what it wrote)")
    for stop in rec.writing_stopped:
        sec.add("writing stopped", stop["process"], f"{stop['reason']}: nothing of this process after it")
    if rec.parts_deleted:
        sec.add("span file parts deleted by retention", str(len(rec.parts_deleted)),
                ", ".join(rec.parts_deleted[:5]) + (" ..." if len(rec.parts_deleted) > 5 else ""))
    if rec.dropped or rec.unsent:
        sec.add("records lost", str(rec.dropped + rec.unsent),
                f"{rec.dropped} dropped by recorders (queue full or no exporter), {rec.unsent} never reached one")
    return sec
