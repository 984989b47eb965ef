"""Per-request table and per-token latencies: pure frame -> frame functions over the spans frame."""
from __future__ import annotations

import polars as pl

from sglang_tracing import semconv as sc

REQUEST_PHASES = (sc.REQUEST, sc.REQUEST_TOKENIZE, sc.REQUEST_QUEUED, sc.REQUEST_PREFIX_MATCH,
                  sc.REQUEST_PREFILL, sc.REQUEST_DECODE, sc.REQUEST_DETOKENIZE)


def _opt(spans: pl.LazyFrame, name: str, dtype=pl.Int64) -> pl.Expr:
    return pl.col(name) if name in spans.collect_schema() else pl.lit(None, dtype).alias(name)


def _phase(spans: pl.LazyFrame, name: str, prefix: str, extra: dict[str, str] | None = None) -> pl.LazyFrame:
    cols = [pl.col(sc.RID).alias("rid"), pl.col("start_ns").alias(f"{prefix}_start_ns"),
            pl.col("end_ns").alias(f"{prefix}_end_ns"), pl.col("dur_ns").alias(f"{prefix}_ns")]
    for attr, alias in (extra or {}).items():
        cols.append(_opt(spans, attr).alias(alias))
    return spans.filter(pl.col("name") == name).select(cols).unique("rid", keep="first")


def request_table(spans: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    """One row per request id seen in any request span (from a spans frame or a lazy scan of one).

    Columns (ns unless named): rid, server (when the spans have it), received_ns, finished_ns, e2e_ns, prompt_tokens, cached_tokens,
    output_tokens, finish_reason, tokenize_ns, queued_ns, prefix_match_ns, matched_tokens,
    prefill_start_ns, prefill_ns, first_token_ns, first_output_ns, ttft_ns (received -> first output
    delivered), ttft_compute_ns (received -> first token computed), decode_ns, token_times_ns (list),
    mean_itl_ns, detokenize_ns, complete (root, prefill and decode all recorded).
    """
    spans = spans.lazy()
    if sc.RID not in spans.collect_schema():
        return pl.DataFrame(schema={"rid": pl.String, "complete": pl.Boolean})
    req_spans = (spans.filter(pl.col("name").is_in(REQUEST_PHASES) & pl.col(sc.RID).is_not_null())
                 .sort("start_ns", maintain_order=True))  # "first" below means earliest, as in the spans frame
    server = ["server"] if "server" in spans.collect_schema() else []  # which trace dir (model.load_trace_dirs)
    rids = req_spans.select(pl.col(sc.RID).alias("rid"), *server).unique("rid", keep="first")
    root = _phase(req_spans, sc.REQUEST, "root", {
        sc.PROMPT_TOKENS: "prompt_tokens", sc.CACHED_TOKENS: "cached_tokens",
        sc.OUTPUT_TOKENS: "output_tokens", sc.FIRST_OUTPUT_NS: "first_output_ns"})
    if sc.FINISH_REASON in req_spans.collect_schema():
        root = root.join(req_spans.filter(pl.col("name") == sc.REQUEST).select(
            pl.col(sc.RID).alias("rid"), pl.col(sc.FINISH_REASON).alias("finish_reason")).unique("rid"),
            on="rid", how="left")
    decode = _phase(req_spans, sc.REQUEST_DECODE, "decode")
    if sc.TOKEN_TIMES in req_spans.collect_schema():
        decode = decode.join(req_spans.filter(pl.col("name") == sc.REQUEST_DECODE).select(
            pl.col(sc.RID).alias("rid"), pl.col(sc.TOKEN_TIMES).alias("token_times_ns")).unique("rid"),
            on="rid", how="left")
    parts = [
        root,
        _phase(req_spans, sc.REQUEST_TOKENIZE, "tokenize"),
        _phase(req_spans, sc.REQUEST_QUEUED, "queued"),
        _phase(req_spans, sc.REQUEST_PREFIX_MATCH, "prefix_match", {sc.MATCHED_TOKENS: "matched_tokens"}),
        req_spans.filter(pl.col("name") == sc.REQUEST_PREFIX_MATCH).select(
            pl.col(sc.RID).alias("rid"), _opt(spans, sc.PREFIX_DIGESTS, pl.List(pl.Int64)).alias("prefix_digests"))
        .unique("rid", keep="first"),
        _phase(req_spans, sc.REQUEST_PREFILL, "prefill"),
        decode,
        _phase(req_spans, sc.REQUEST_DETOKENIZE, "detokenize", {sc.DETOKENIZE_SHARE_NS: "detokenize_share_ns"}),
    ]
    table = rids
    for part in parts:
        table = table.join(part, on="rid", how="left")
    if "token_times_ns" not in table.collect_schema():
        table = table.with_columns(pl.lit(None, pl.List(pl.Int64)).alias("token_times_ns"))
    n_tok = pl.col("token_times_ns").list.len()
    table = table.with_columns(
        pl.col("root_start_ns").alias("received_ns"),
        pl.col("root_end_ns").alias("finished_ns"),
        pl.col("root_ns").alias("e2e_ns"),
        pl.col("token_times_ns").list.first().alias("first_token_ns"),
        pl.when(n_tok > 1).then((pl.col("token_times_ns").list.last() - pl.col("token_times_ns").list.first())
                                / (n_tok - 1)).otherwise(None).alias("mean_itl_ns"),
    ).with_columns(
        # user-visible TTFT: received -> first output handed to the client; recordings without
        # that attribute fall back to the first token computed by the scheduler
        (pl.coalesce("first_output_ns", "first_token_ns") - pl.col("received_ns")).alias("ttft_ns"),
        (pl.col("first_token_ns") - pl.col("received_ns")).alias("ttft_compute_ns"),
        (pl.col("root_ns").is_not_null() & pl.col("prefill_ns").is_not_null()
         & pl.col("decode_ns").is_not_null()).alias("complete"),
    )
    return table.sort("received_ns", nulls_last=True).collect()


def token_latencies(requests: pl.DataFrame) -> pl.DataFrame:
    """One row per output token: rid, token_index, t_ns, itl_ns (gap to the previous token), kv_len
    (prompt tokens + tokens generated so far, the KV length the token attended to)."""
    if "token_times_ns" not in requests.columns or requests.is_empty():
        return pl.DataFrame(schema={"rid": pl.String, "token_index": pl.Int64, "t_ns": pl.Int64,
                                    "itl_ns": pl.Int64, "kv_len": pl.Int64})
    return (requests.select("rid", "prompt_tokens", pl.col("token_times_ns").alias("t_ns"))
            .drop_nulls("t_ns").explode("t_ns")
            .with_columns(pl.int_range(pl.len()).over("rid").alias("token_index"))
            .with_columns((pl.col("t_ns") - pl.col("t_ns").shift(1).over("rid")).alias("itl_ns"),
                          (pl.col("prompt_tokens") + pl.col("token_index")).alias("kv_len"))
            .select("rid", "token_index", "t_ns", "itl_ns", "kv_len"))
