"""Speculative decoding: per decode step, the draft and verify phases and what was accepted; per request,
accepted length per step, tokens per forward and the ITL the user sees.

From the raw spans of ``patches/speculative.py`` (draft / verify / accept, one set per step) and each
request's token times. Several tokens accepted in one step reach the user at one time: their gaps are 0 in
``itl_ns``. Here a step's tokens count once: ``step_itl_ns`` are the gaps between steps that delivered
tokens (no zeros), and ``zero_gaps`` counts the tokens that arrived with the one before them.
"""
from __future__ import annotations

import dataclasses

import polars as pl

from sglang_tracing import semconv as sc
from sglang_tracing.analyzer.report import Report, Section, ms

NOT_USED = "not used: no draft/verify step in this trace (--speculative-algorithm was off)"
REQUEST_COLUMNS = ("spec_steps", "accepted_per_step_mean", "accepted_per_step", "tokens_per_forward",
                   "zero_gaps", "step_itl_mean_ns")


def _col(spans: pl.DataFrame, name: str, dtype=pl.Int64) -> pl.Expr:
    return pl.col(name) if name in spans.columns else pl.lit(None, dtype).alias(name)


def used(spans: pl.DataFrame) -> bool:
    return spans.height > 0 and spans["name"].is_in([sc.SPEC_DRAFT, sc.SPEC_VERIFY, sc.SPEC_ACCEPT]).any()


def steps(spans: pl.DataFrame) -> pl.DataFrame:
    """One row per verified decode step (by the scheduler forward that ran it): batch_size, draft_tokens
    (verified per request, bonus included), proposed (drafts offered: batch x (draft_tokens - 1)), accepted
    (drafts accepted), draft_ns / verify_ns (scheduler wall time), draft_gpu_ns / verify_gpu_ns (CUDA events)."""
    def phase(name: str, prefix: str) -> pl.DataFrame:
        return spans.filter(pl.col("name") == name).select(
            pl.col("parent_id").alias("forward"), (pl.col("end_ns") - pl.col("start_ns")).alias(f"{prefix}_ns"),
            _col(spans, sc.GPU_DURATION_NS).alias(f"{prefix}_gpu_ns"))
    accept = spans.filter(pl.col("name") == sc.SPEC_ACCEPT).select(
        pl.col(sc.FORWARD_SPAN_ID).alias("forward"), pl.col("start_ns").alias("t_ns"),
        pl.col(sc.SPEC_CORRECT_DRAFTS).list.len().alias("batch_size"), pl.col(sc.SPEC_DRAFT_TOKENS).alias("draft_tokens"),
        pl.col(sc.SPEC_CORRECT_DRAFTS).list.sum().alias("accepted"))
    if accept.is_empty():
        return pl.DataFrame(schema={"forward": pl.String, "t_ns": pl.Int64, "batch_size": pl.Int64,
                                    "draft_tokens": pl.Int64, "proposed": pl.Int64, "accepted": pl.Int64,
                                    "draft_ns": pl.Int64, "draft_gpu_ns": pl.Int64, "verify_ns": pl.Int64,
                                    "verify_gpu_ns": pl.Int64})
    return (accept.with_columns((pl.col("batch_size") * (pl.col("draft_tokens") - 1)).alias("proposed"))
            .join(phase(sc.SPEC_DRAFT, "draft"), on="forward", how="left")
            .join(phase(sc.SPEC_VERIFY, "verify"), on="forward", how="left").sort("t_ns"))


def request_steps(spans: pl.DataFrame) -> pl.DataFrame:
    """Per request: the tokens each of its verified steps delivered (accepted drafts + the bonus token)."""
    rows = spans.filter(pl.col("name") == sc.SPEC_ACCEPT).select(
        "start_ns", pl.col(sc.BATCH_RIDS).alias("rid"), pl.col(sc.SPEC_CORRECT_DRAFTS).alias("correct"))
    if rows.is_empty():
        return pl.DataFrame(schema={"rid": pl.String, "accepted_per_step": pl.List(pl.Int64)})
    return (rows.explode("rid", "correct").sort("start_ns")
            .group_by("rid", maintain_order=True).agg((pl.col("correct") + 1).alias("accepted_per_step")))


def request_columns(spans: pl.DataFrame, requests: pl.DataFrame) -> pl.DataFrame:
    """The request table's speculative columns: spec_steps (SGLang's verify count, else our steps),
    accepted_per_step (list) and its mean, tokens_per_forward (output tokens / decode forwards, the prefill's
    first token left out), zero_gaps (tokens that arrived in the same step as the one before), step_itl_mean_ns
    (mean gap between token-delivering steps: the ITL as the user sees it, a step's tokens counted once)."""
    per_req = request_steps(spans)
    decode = spans.filter(pl.col("name") == sc.REQUEST_DECODE).select(
        pl.col(sc.RID).alias("rid"), _col(spans, sc.SPEC_VERIFY_CT).alias("verify_ct")).unique("rid")
    itl = pl.col("itl_ns")
    step_gaps = itl.list.eval(pl.element().filter(pl.element() > 0))
    out = (requests.select("rid", "output_tokens", "itl_ns").join(decode, on="rid", how="left")
           .join(per_req, on="rid", how="left")
           .with_columns(pl.coalesce("verify_ct", pl.col("accepted_per_step").list.len()).alias("spec_steps"),
                         itl.list.eval((pl.element() == 0).cast(pl.Int64)).list.sum().alias("zero_gaps"),
                         step_gaps.list.mean().alias("step_itl_mean_ns")))
    return out.select(
        "rid", "spec_steps", pl.col("accepted_per_step").list.mean().alias("accepted_per_step_mean"),
        "accepted_per_step",
        pl.when(pl.col("spec_steps") > 0).then((pl.col("output_tokens") - 1) / pl.col("spec_steps"))
        .alias("tokens_per_forward"), "zero_gaps", "step_itl_mean_ns")


@dataclasses.dataclass
class Speculation:
    used: bool
    steps: pl.DataFrame
    requests: pl.DataFrame  # request_columns
    algorithm: str = ""

    def total(self, col: str) -> int:
        return int(self.steps[col].fill_null(0).sum()) if self.steps.height else 0

    @property
    def acceptance_rate(self) -> float | None:
        proposed = self.total("proposed")
        return self.total("accepted") / proposed if proposed else None

    @property
    def tokens_per_step(self) -> float | None:
        """Tokens a request gains per verified step: accepted drafts plus the bonus token."""
        lanes = self.total("batch_size")
        return (self.total("accepted") + lanes) / lanes if lanes else None

    def accept_distribution(self) -> pl.DataFrame:
        """How many request-steps delivered 1, 2, ... tokens: tokens, count."""
        if self.requests.is_empty():
            return pl.DataFrame(schema={"tokens": pl.Int64, "count": pl.UInt32})
        return (self.requests.select(pl.col("accepted_per_step").alias("tokens")).explode("tokens").drop_nulls()
                .group_by("tokens").len("count").sort("tokens"))


def compute(spans: pl.DataFrame, requests: pl.DataFrame) -> Speculation:
    if not used(spans):
        return Speculation(False, pl.DataFrame(), pl.DataFrame())
    algos = spans.filter(pl.col("name") == sc.SPEC_DRAFT)
    algorithm = algos[sc.SPEC_ALGORITHM][0] if algos.height and sc.SPEC_ALGORITHM in algos.columns else ""
    return Speculation(True, steps(spans), request_columns(spans, requests), algorithm)


def add_to_report(report: Report, spans: pl.DataFrame, requests: pl.DataFrame) -> None:
    """The story's section on speculative decoding ("not used" when the feature was off)."""
    describe(report.section("Speculative decoding"), compute(spans, requests))


def describe(section: Section, spec: Speculation) -> None:
    """The story's section: draft overhead against tokens gained, acceptance, and how ITL counts 0 gaps."""
    if not spec.used:
        section.add("speculative decoding", NOT_USED)
        return
    s = spec.steps
    section.add("algorithm", spec.algorithm or "(not recorded)")
    section.add("verified decode steps", f"{s.height:,}", "one per scheduler forward that verified drafts")
    section.add("drafts accepted / proposed", f"{spec.total('accepted'):,} / {spec.total('proposed'):,}" + (
        f" ({spec.acceptance_rate:.1%})" if spec.acceptance_rate is not None else ""),
        "proposed = batch x (draft tokens per step - 1); SGLang's per-request correct-draft counts")
    section.add("tokens per request per step (mean)", f"{spec.tokens_per_step:.2f}" if spec.tokens_per_step else None,
                "accepted drafts + 1 bonus token; 1.00 = no gain over plain decoding")
    gained = spec.total("accepted")
    draft_ns, verify_ns = spec.total("draft_ns"), spec.total("verify_ns")
    section.add("draft time (scheduler wall / GPU)", f"{ms(draft_ns)} / {ms(spec.total('draft_gpu_ns'))}")
    section.add("verify time (scheduler wall / GPU)", f"{ms(verify_ns)} / {ms(spec.total('verify_gpu_ns'))}")
    section.add("draft overhead per token gained", ms(draft_ns / gained) if gained else None,
                "draft wall time over the drafts accepted (tokens a plain decode would have needed a step each)")
    dist = spec.accept_distribution()
    if dist.height:
        section.add("tokens delivered per step: distribution",
                    ", ".join(f"{r['tokens']}: {r['count']}" for r in dist.iter_rows(named=True)))
    r = spec.requests
    if r.height:
        section.add("ITL gaps of 0 (tokens that arrived with the previous one)", f"{int(r['zero_gaps'].sum()):,}",
                    "several tokens accepted in one step reach the client together; the per-step ITL below "
                    "counts a step's tokens once (gaps > 0 only)")
        section.add("per-step ITL (mean over requests)", ms(r["step_itl_mean_ns"].mean()))
