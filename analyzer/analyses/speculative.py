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
REQUEST_COLUMNS = ("spec_steps", "sglang_verify_ct", "accepted_per_step_mean", "accepted_per_step",
                   "tokens_per_forward", "steps_after_finish", "tokens_not_returned", "zero_gaps", "step_itl_mean_ns")


def _col(spans: pl.DataFrame, name: str, dtype=pl.Int64) -> pl.Expr:
    return pl.col(name) if name in spans.columns else pl.lit(None, dtype).alias(name)


def used(spans: pl.DataFrame) -> bool:
    return spans.height > 0 and spans["name"].is_in([sc.SPEC_DRAFT, sc.SPEC_VERIFY, sc.SPEC_ACCEPT]).any()


def entries(spans: pl.DataFrame) -> pl.DataFrame:
    """One row per request of each accept span: forward, t_ns (when the step's result was processed), rid,
    correct (drafts accepted, bonus excluded), draft_tokens, delivered (the step's result reached the request).

    Not delivered: the step after a request's last one. With overlap scheduling the scheduler launches step
    N+1 before it has processed step N, so a request that step N finishes is still in step N+1's batch;
    SGLang processes that result for a request already finished and drops it (no tokens, not in its
    ``spec_verify_ct`` or correct-draft counts: ``_resolve_spec_v2_tokens``). The request's decode span ends
    when its last tokens were stamped, at the end of processing its finishing step, on the same scheduler
    clock as the accept span, so a step whose processing began after that delivered nothing. (The request
    span's end is not that line: it ends later, in the tokenizer process, and lets some such steps through.)
    On the H100 example (traces/examples/h100-features) this rule gives SGLang's own verify and correct-draft
    counts for every request. A request without a decode span keeps all its steps (nothing says otherwise)."""
    accept = spans.filter(pl.col("name") == sc.SPEC_ACCEPT)
    if accept.is_empty():
        return pl.DataFrame(schema={"forward": pl.String, "t_ns": pl.Int64, "rid": pl.String, "correct": pl.Int64,
                                    "draft_tokens": pl.Int64, "delivered": pl.Boolean})
    decode_end = spans.filter(pl.col("name") == sc.REQUEST_DECODE).group_by(pl.col(sc.RID).alias("rid")).agg(
        pl.col("end_ns").max().alias("decode_end_ns"))
    return (accept.select(pl.col(sc.FORWARD_SPAN_ID).alias("forward"), pl.col("start_ns").alias("t_ns"),
                          pl.col(sc.BATCH_RIDS).alias("rid"), pl.col(sc.SPEC_CORRECT_DRAFTS).alias("correct"),
                          pl.col(sc.SPEC_DRAFT_TOKENS).alias("draft_tokens"))
            .explode("rid", "correct").drop_nulls("rid").join(decode_end, on="rid", how="left")
            .with_columns(pl.col("decode_end_ns").is_null().or_(pl.col("t_ns") <= pl.col("decode_end_ns"))
                          .alias("delivered"))
            .drop("decode_end_ns").sort("t_ns", maintain_order=True))


def steps(spans: pl.DataFrame) -> pl.DataFrame:
    """One row per verified decode step (by the scheduler forward that ran it): batch_size (requests verified),
    lanes (of them, those the step delivered to: ``entries``), draft_tokens (verified per request, bonus
    included), proposed (drafts offered to the delivered lanes: lanes x (draft_tokens - 1)), accepted (their
    drafts accepted), after_finish_lanes / after_finish_tokens (requests already finished and the tokens
    accepted for them, dropped by SGLang), draft_ns / verify_ns (scheduler wall time), draft_gpu_ns /
    verify_gpu_ns (CUDA events)."""
    def phase(name: str, prefix: str) -> pl.DataFrame:
        return spans.filter(pl.col("name") == name).select(
            pl.col("parent_id").alias("forward"), (pl.col("end_ns") - pl.col("start_ns")).alias(f"{prefix}_ns"),
            _col(spans, sc.GPU_DURATION_NS).alias(f"{prefix}_gpu_ns"))
    accept = spans.filter(pl.col("name") == sc.SPEC_ACCEPT).select(
        pl.col(sc.FORWARD_SPAN_ID).alias("forward"), pl.col("start_ns").alias("t_ns"),
        pl.col(sc.SPEC_CORRECT_DRAFTS).list.len().alias("batch_size"), pl.col(sc.SPEC_DRAFT_TOKENS).alias("draft_tokens"))
    if accept.is_empty():
        return pl.DataFrame(schema={"forward": pl.String, "t_ns": pl.Int64, "batch_size": pl.Int64,
                                    "draft_tokens": pl.Int64, "lanes": pl.Int64, "proposed": pl.Int64,
                                    "accepted": pl.Int64, "after_finish_lanes": pl.Int64,
                                    "after_finish_tokens": pl.Int64, "draft_ns": pl.Int64, "draft_gpu_ns": pl.Int64,
                                    "verify_ns": pl.Int64, "verify_gpu_ns": pl.Int64})
    delivered, dropped = pl.col("delivered"), ~pl.col("delivered")
    per_step = entries(spans).group_by("forward", "t_ns").agg(
        delivered.sum().cast(pl.Int64).alias("lanes"),
        pl.col("correct").filter(delivered).sum().cast(pl.Int64).alias("accepted"),
        dropped.sum().cast(pl.Int64).alias("after_finish_lanes"),
        (pl.col("correct") + 1).filter(dropped).sum().cast(pl.Int64).alias("after_finish_tokens"))
    return (accept.join(per_step, on=["forward", "t_ns"], how="left")
            .with_columns(pl.col("lanes", "accepted", "after_finish_lanes", "after_finish_tokens").fill_null(0))
            .with_columns((pl.col("lanes") * (pl.col("draft_tokens") - 1)).alias("proposed"))
            .join(phase(sc.SPEC_DRAFT, "draft"), on="forward", how="left")
            .join(phase(sc.SPEC_VERIFY, "verify"), on="forward", how="left").sort("t_ns"))


def request_steps(spans: pl.DataFrame) -> pl.DataFrame:
    """Per request: the tokens each verified step delivered to it (accepted drafts + the bonus token; the
    finishing step's whole accepted run, even past the request's end) and steps_after_finish (steps that
    still listed it after it finished: ``entries``)."""
    rows = entries(spans)
    if rows.is_empty():
        return pl.DataFrame(schema={"rid": pl.String, "accepted_per_step": pl.List(pl.Int64),
                                    "steps_after_finish": pl.Int64})
    return rows.group_by("rid", maintain_order=True).agg(
        (pl.col("correct") + 1).filter(pl.col("delivered")).alias("accepted_per_step"),
        (~pl.col("delivered")).sum().cast(pl.Int64).alias("steps_after_finish"))


def request_columns(spans: pl.DataFrame, requests: pl.DataFrame) -> pl.DataFrame:
    """The request table's speculative columns: spec_steps (SGLang's verify count, else our steps),
    sglang_verify_ct (SGLang's count alone; null where not recorded), accepted_per_step (list, delivered steps
    only) and its mean, tokens_per_forward (tokens returned / decode forwards, the prefill's first token left
    out), steps_after_finish, tokens_not_returned (accepted by the finishing step past the request's end:
    the scheduler's decode tokens - the tokens returned), zero_gaps (returned tokens that arrived in the same
    step as the one before), step_itl_mean_ns (mean gap between token-delivering steps: the ITL as the user
    sees it, a step's tokens counted once). Token times are those of the returned tokens (requests.request_table)."""
    per_req = request_steps(spans)
    decode = spans.filter(pl.col("name") == sc.REQUEST_DECODE).select(
        pl.col(sc.RID).alias("rid"), _col(spans, sc.SPEC_VERIFY_CT).alias("sglang_verify_ct")).unique("rid")
    itl = pl.col("itl_ns")
    step_gaps = itl.list.eval(pl.element().filter(pl.element() > 0))
    decode_tokens = pl.col("decode_tokens") if "decode_tokens" in requests.columns else pl.lit(None, pl.Int64)
    out = (requests.select("rid", "output_tokens", "itl_ns", decode_tokens.alias("decode_tokens"))
           .join(decode, on="rid", how="left").join(per_req, on="rid", how="left")
           .with_columns(pl.coalesce("sglang_verify_ct", pl.col("accepted_per_step").list.len()).alias("spec_steps"),
                         itl.list.eval((pl.element() == 0).cast(pl.Int64)).list.sum().alias("zero_gaps"),
                         step_gaps.list.mean().alias("step_itl_mean_ns")))
    return out.select(
        "rid", "spec_steps", "sglang_verify_ct", pl.col("accepted_per_step").list.mean().alias("accepted_per_step_mean"),
        "accepted_per_step",
        pl.when(pl.col("spec_steps") > 0).then((pl.col("output_tokens") - 1) / pl.col("spec_steps"))
        .alias("tokens_per_forward"), "steps_after_finish",
        pl.when(pl.col("accepted_per_step").is_not_null())
        .then((pl.col("decode_tokens") - pl.col("output_tokens")).clip(lower_bound=0)).alias("tokens_not_returned"),
        "zero_gaps", "step_itl_mean_ns")


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
        """Tokens a request gains per verified step that reached it: accepted drafts plus the bonus token."""
        lanes = self.total("lanes")
        return (self.total("accepted") + lanes) / lanes if lanes else None

    @property
    def tokens_returned_per_step(self) -> float | None:
        """Tokens returned per request per verify step, over all requests: sum(output_tokens - 1) / sum(spec_steps)."""
        with_steps = self.requests.filter(pl.col("tokens_per_forward").is_not_null()) if self.requests.height else None
        if with_steps is None or with_steps.is_empty():
            return None
        return float((with_steps["tokens_per_forward"] * with_steps["spec_steps"]).sum() / with_steps["spec_steps"].sum())

    def request_total(self, col: str) -> int:
        return int(self.requests[col].fill_null(0).sum()) if self.requests.height else 0

    def verify_ct_agreement(self) -> tuple[int, int]:
        """Requests whose delivered steps in our accept spans equal SGLang's spec_verify_ct, of those with both."""
        both = self.requests.filter(pl.col("sglang_verify_ct").is_not_null() & pl.col("accepted_per_step").is_not_null())
        return int((both["accepted_per_step"].list.len() == both["sglang_verify_ct"]).sum()), both.height

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
    s, r = spec.steps, spec.requests
    section.add("algorithm", spec.algorithm or "(not recorded)")
    section.add("verified decode steps", f"{s.height:,}", "one per scheduler forward that verified drafts")
    section.add("drafts accepted / proposed", f"{spec.total('accepted'):,} / {spec.total('proposed'):,}" + (
        f" ({spec.acceptance_rate:.1%})" if spec.acceptance_rate is not None else ""),
        "proposed = requests the step reached x (draft tokens per step - 1); SGLang's per-request correct-draft counts")
    section.add("tokens per request per step (mean)", f"{spec.tokens_per_step:.2f}" if spec.tokens_per_step else None,
                "accepted drafts + 1 bonus token; 1.00 = no gain over plain decoding")
    after = spec.steps.filter(pl.col("after_finish_lanes") > 0).height
    section.add("request-steps after the request finished (left out)",
                f"{spec.total('after_finish_lanes'):,} in {after:,} steps ({spec.total('after_finish_tokens'):,} "
                "tokens accepted for them)", "overlap scheduling launches the next step before the last one's result "
                "shows the request finished; SGLang drops that result, and every figure here leaves it out")
    agree, both = spec.verify_ct_agreement()
    if both:
        section.add("verify steps per request = SGLang's spec_verify_ct", f"{agree:,} of {both:,} requests")
    if r.height:
        not_returned = r.filter(pl.col("tokens_not_returned") > 0)
        section.add("tokens accepted past the request's end (not returned)",
                    f"{spec.request_total('tokens_not_returned'):,} in {not_returned.height:,} requests",
                    "the finishing step's accepted run goes past max_new_tokens (or a stop); SGLang returns none "
                    "of them, so token times and ITL leave them out; acceptance above counts them")
    gained = spec.total("accepted")
    draft_ns, verify_ns = spec.total("draft_ns"), spec.total("verify_ns")
    section.add("draft time (scheduler wall / GPU)", f"{ms(draft_ns)} / {ms(spec.total('draft_gpu_ns'))}")
    section.add("verify time (scheduler wall / GPU)", f"{ms(verify_ns)} / {ms(spec.total('verify_gpu_ns'))}")
    section.add("draft overhead per token gained", ms(draft_ns / gained) if gained else None,
                "draft wall time over the drafts accepted (tokens a plain decode would have needed a step each)")
    dist = spec.accept_distribution()
    if dist.height:
        section.add("tokens accepted per request-step: distribution",
                    ", ".join(f"{row['tokens']}: {row['count']}" for row in dist.iter_rows(named=True)))
    if r.height:
        section.add("ITL gaps of 0 (tokens that arrived with the previous one)", f"{int(r['zero_gaps'].sum()):,}",
                    "several tokens accepted in one step reach the client together; the per-step ITL below "
                    "counts a step's tokens once (gaps > 0 only)")
        section.add("per-step ITL (mean over requests)", ms(r["step_itl_mean_ns"].mean()))
        per_forward = spec.tokens_returned_per_step
        section.add("tokens returned per request per step", f"{per_forward:.2f}" if per_forward else None,
                    "tokens the requests returned (less each prefill's first) over their verify steps: the gain "
                    "the client got, without the tokens past each request's end")
