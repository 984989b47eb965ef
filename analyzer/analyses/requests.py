"""Per-request table and per-token latencies: pure frame -> frame functions over the spans frame."""
from __future__ import annotations

import polars as pl

from sglang_tracing import semconv as sc
from sglang_tracing.analyzer.analyses import profiler_control

REQUEST_PHASES = (sc.REQUEST, sc.REQUEST_TOKENIZE, sc.REQUEST_QUEUED, sc.REQUEST_PREFIX_MATCH,
                  sc.REQUEST_PREFILL, sc.REQUEST_DECODE, sc.REQUEST_DETOKENIZE, sc.REQUEST_HTTP)


def _opt(spans: pl.LazyFrame, name: str, dtype=pl.Int64) -> pl.Expr:
    return pl.col(name) if name in spans.collect_schema() else pl.lit(None, dtype).alias(name)


def _phase(spans: pl.LazyFrame, name: str, prefix: str, extra: dict[str, str] | None = None,
           strings: dict[str, str] | None = None) -> pl.LazyFrame:
    """A phase span's times per rid, with ``extra`` integer and ``strings`` text attributes (attr -> column)."""
    cols = [pl.col(sc.RID).alias("rid"), pl.col("start_ns").alias(f"{prefix}_start_ns"),
            pl.col("end_ns").alias(f"{prefix}_end_ns"), pl.col("dur_ns").alias(f"{prefix}_ns")]
    for attr, alias in (extra or {}).items():
        cols.append(_opt(spans, attr).alias(alias))
    for attr, alias in (strings or {}).items():
        cols.append(_opt(spans, attr, pl.String).alias(alias))
    return spans.filter(pl.col("name") == name).select(cols).unique("rid", keep="first")


# where the user-visible TTFT of a request ends (column ttft_source)
TTFT_FIRST_BYTE = "first byte sent to the client (HTTP layer)"
TTFT_FIRST_OUTPUT = "first output at the tokenizer manager (no HTTP first-byte stamp for this request)"
TTFT_NOT_STREAMED = "not streamed: the client sees no first token, only the whole response"
TTFT_NONE_SENT = "the response ended before its first byte (client gone, or an error): no first token seen"
LEGACY_WARMUP_MAX_PROMPT = 16  # SGLang's warm-up text is 6 words: 6-8 tokens with any tokenizer


def _internal_by_rid() -> pl.Expr:
    """``sc.internal_by_rid`` as an expression."""
    expr = pl.lit(None, pl.String)
    for prefix, kind in reversed(sc.INTERNAL_RID_PREFIXES.items()):
        expr = pl.when(pl.col("rid").str.starts_with(prefix)).then(pl.lit(kind)).otherwise(expr)
    return expr


def _delivered_token_times() -> pl.Expr:
    """The decode span's token times cut to the tokens the request returned (the request span's count).

    The scheduler stamps every token that enters ``req.output_ids``; a speculative step appends its whole
    accepted run, which can go past where the request ends (``max_new_tokens`` or a stop token), and SGLang
    sends only ``output_ids[:finished_len]``: the client never gets the rest, so it is not part of the token
    times or ITL (``decode_tokens`` keeps the scheduler's count)."""
    times, returned = pl.col("token_times_ns"), pl.col("output_tokens")
    return (pl.when(returned.is_not_null() & (times.list.len() > returned))
            .then(times.list.head(returned)).otherwise(times).alias("token_times_ns"))


def request_table(spans: pl.DataFrame | pl.LazyFrame, manifest: dict | None = None,
                  servers: list[dict] | None = None) -> pl.DataFrame:
    """One row per request id seen in any request span (from a spans frame or a lazy scan of one).

    Columns (ns unless named): rid, server (when the spans have it), internal (why it is not a user's request: warm-up, health check,
    readiness probe; null for the user's), stream (null: not recorded), received_ns, finished_ns,
    e2e_ns, prompt_tokens, cached_tokens, output_tokens, finish_reason, tokenize_ns, queued_ns,
    prefix_match_ns, matched_tokens, prefill_start_ns, prefill_ns, first_token_ns, first_output_ns,
    first_byte_ns, received_by (where the HTTP layer stamped the arrival: semconv.RECEIVED_BY_*; null:
    before the HTTP stamp or not recorded), http_ended_by (what ended the HTTP span: semconv.HTTP_END_*),
    client_disconnected (the client hung up before the response's end; null: not recorded), response_chunks and
    response_bytes (body sent before that end), ttft_ns (user-visible: received -> first byte sent for a streamed
    request; null when not streamed, or when the response ended before its first byte), ttft_source (what
    ttft_ns ends at), ttft_compute_ns (received -> first token computed), decode_ns, decode_tokens (tokens the
    scheduler produced, which a speculative step can carry past the tokens returned), token_times_ns (list, of
    the tokens returned: output_tokens), itl_ns (list: every gap between output tokens; null for a
    summary-only request, whose itl_p50_ns, itl_p99_ns, itl_max_ns and kept come from its decode span),
    mean_itl_ns, detokenize_ns, complete (root, prefill and decode all recorded), profiler_control (our
    profiler-control actions that ran while the request was in flight; null: none) and
    profiler_control_inferred (what an inferred action rests on): profiler_control.requests_during.

    ``manifest`` lets traces recorded before the internal marker existed have SGLang's warm-up
    request recognized by its shape (see ``infer_legacy_warmup``); ``servers`` (TraceModel.servers) lets
    profiler-control actions be inferred from each trace dir's manifest where none was recorded.
    """
    spans = spans.lazy()
    schema = spans.collect_schema()
    if sc.RID not in schema:
        return pl.DataFrame(schema={"rid": pl.String, "internal": pl.String, "complete": pl.Boolean,
                                    **profiler_control.REQUEST_SCHEMA})
    req_spans = (spans.filter(pl.col("name").is_in(REQUEST_PHASES) & pl.col(sc.RID).is_not_null())
                 .sort("start_ns", maintain_order=True))  # "first" below means earliest, as in the spans frame
    server = ["server"] if "server" in schema else []  # which trace dir (loaders.trace_dir.load_trace_dirs)
    rids = req_spans.select(pl.col(sc.RID).alias("rid"), *server).unique("rid", keep="first")
    root = _phase(req_spans, sc.REQUEST, "root", {
        sc.PROMPT_TOKENS: "prompt_tokens", sc.CACHED_TOKENS: "cached_tokens",
        sc.OUTPUT_TOKENS: "output_tokens", sc.FIRST_OUTPUT_NS: "first_output_ns"})
    root = root.join(req_spans.filter(pl.col("name") == sc.REQUEST).select(
        pl.col(sc.RID).alias("rid"), _opt(spans, sc.STREAM, pl.Boolean).cast(pl.Boolean).alias("stream"),
        _opt(spans, sc.INTERNAL, pl.String).alias("recorded_internal")).unique("rid"), on="rid", how="left")
    if sc.FINISH_REASON in schema:
        root = root.join(req_spans.filter(pl.col("name") == sc.REQUEST).select(
            pl.col(sc.RID).alias("rid"), pl.col(sc.FINISH_REASON).alias("finish_reason")).unique("rid"),
            on="rid", how="left")
    # a summary-only request (tail-based keep) has no token times: its decode span's figures stand in
    decode = _phase(req_spans, sc.REQUEST_DECODE, "decode", {
        sc.OUTPUT_TOKENS: "decode_tokens", sc.ITL_P50_NS: "itl_p50_ns", sc.ITL_P99_NS: "itl_p99_ns",
        sc.ITL_MAX_NS: "itl_max_ns"}, {sc.KEEP_REASON: "decode_kept"})
    if sc.TOKEN_TIMES in schema:
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
        _phase(req_spans, sc.REQUEST_PREFILL, "prefill", strings={sc.KEEP_REASON: "prefill_kept"}),
        decode,
        _phase(req_spans, sc.REQUEST_DETOKENIZE, "detokenize", {sc.DETOKENIZE_SHARE_NS: "detokenize_share_ns"}),
        _phase(req_spans, sc.REQUEST_HTTP, "http", {
            sc.FIRST_BYTE_NS: "first_byte_ns", sc.HTTP_BODY_CHUNKS: "response_chunks",
            sc.HTTP_BODY_BYTES: "response_bytes"}, {sc.RECEIVED_BY: "received_by", sc.HTTP_ENDED_BY: "http_ended_by"}),
    ]
    table = rids
    for part in parts:
        table = table.join(part, on="rid", how="left")
    if "token_times_ns" not in table.collect_schema():
        table = table.with_columns(pl.lit(None, pl.List(pl.Int64)).alias("token_times_ns"))
    table = table.with_columns(_delivered_token_times())
    n_tok = pl.col("token_times_ns").list.len()
    returned_decode_tokens = pl.min_horizontal("decode_tokens", "output_tokens")
    table = table.with_columns(
        pl.col("root_start_ns").alias("received_ns"),
        pl.col("root_end_ns").alias("finished_ns"),
        pl.col("root_ns").alias("e2e_ns"),
        pl.coalesce(pl.col("token_times_ns").list.first(), "decode_start_ns").alias("first_token_ns"),
        pl.when(n_tok > 1).then((pl.col("token_times_ns").list.last() - pl.col("token_times_ns").list.first())
                                / (n_tok - 1))
        .when(pl.col("token_times_ns").is_null() & (returned_decode_tokens > 1))
        .then((pl.col("decode_end_ns") - pl.col("decode_start_ns")) / (returned_decode_tokens - 1))
        .otherwise(None).alias("mean_itl_ns"),
        # why it kept its full detail (semconv.KEPT_*), "summary" when it kept figures only; null: recorded
        # before tail-based keep existed (everything kept)
        pl.coalesce("decode_kept", "prefill_kept").alias("kept"),
        pl.col("token_times_ns").list.diff().list.slice(1).alias("itl_ns"),
        pl.coalesce("recorded_internal", _internal_by_rid()).alias("internal"),
        # null: recorded before the HTTP span said how it ended (or no HTTP span)
        pl.col("http_ended_by").is_in(sc.HTTP_CLIENT_GONE).alias("client_disconnected"),
        (pl.col("http_ended_by").is_not_null() & (pl.col("http_ended_by") != sc.HTTP_END_RESPONSE_SENT)
         & pl.col("first_byte_ns").is_null()).alias("_none_sent"),
    ).with_columns(
        # user-visible TTFT: what the client sees first. A streamed request's first body bytes; a
        # non-streamed one has none before the whole response. Recordings without the HTTP stamp
        # (older traces, the Engine API) end at the first output the tokenizer manager delivered.
        # a request that ended without a token (aborted first) has no TTFT: its end is not a first token;
        # nor has one whose response ended before a byte of it was sent (the client hung up first)
        pl.when((pl.col("output_tokens") == 0) | pl.col("_none_sent")).then(None)
        .when(pl.col("stream") & pl.col("first_byte_ns").is_not_null())
        .then(pl.col("first_byte_ns") - pl.col("received_ns"))
        .when(~pl.col("stream")).then(None)
        .otherwise(pl.coalesce("first_output_ns", "first_token_ns") - pl.col("received_ns")).alias("ttft_ns"),
        pl.when(pl.col("stream") & pl.col("first_byte_ns").is_not_null()).then(pl.lit(TTFT_FIRST_BYTE))
        .when(pl.col("_none_sent")).then(pl.lit(TTFT_NONE_SENT))
        .when(~pl.col("stream")).then(pl.lit(TTFT_NOT_STREAMED))
        .otherwise(pl.lit(TTFT_FIRST_OUTPUT)).alias("ttft_source"),
        (pl.col("first_token_ns") - pl.col("received_ns")).alias("ttft_compute_ns"),
        (pl.col("root_ns").is_not_null() & pl.col("prefill_ns").is_not_null()
         & pl.col("decode_ns").is_not_null()).alias("complete"),
    ).drop("recorded_internal", "decode_kept", "prefill_kept", "_none_sent").collect()
    if manifest is not None and sc.STREAM not in schema:
        # one warm-up per server when several trace dirs are merged
        table = pl.concat([infer_legacy_warmup(part, manifest) for part in table.partition_by(server)]
                          if server and table.height else [infer_legacy_warmup(table, manifest)])
    touched = profiler_control.requests_during(table, profiler_control.action_windows(spans, servers or []))
    return table.join(touched, on="rid", how="left").sort("received_ns", nulls_last=True)


def infer_legacy_warmup(requests: pl.DataFrame, manifest: dict) -> pl.DataFrame:
    """Label SGLang's startup warm-up in a trace recorded before requests carried ``sc.INTERNAL``.

    SGLang sends one /generate of a 6-word prompt and at most ``SGLANG_WARMUP_MAX_NEW_TOKENS``
    tokens after start-up unless --skip-server-warmup: the earliest request of that shape is it
    (labelled ``INTERNAL_WARMUP_INFERRED``, since it is recognized by shape, not by a marker).
    """
    args = manifest.get("server_args") or {}
    if not args or args.get("skip_server_warmup", True) or requests.is_empty():
        return requests
    shaped = requests.filter(pl.col("internal").is_null()
                             & (pl.col("prompt_tokens") <= LEGACY_WARMUP_MAX_PROMPT)
                             & (pl.col("output_tokens") <= sc.SGLANG_WARMUP_MAX_NEW_TOKENS))
    if shaped.is_empty():
        return requests
    rid = shaped.sort("received_ns", nulls_last=True)["rid"][0]
    return requests.with_columns(pl.when(pl.col("rid") == rid).then(pl.lit(sc.INTERNAL_WARMUP_INFERRED))
                                 .otherwise(pl.col("internal")).alias("internal"))


def user_requests(requests: pl.DataFrame) -> pl.DataFrame:
    """The requests a user sent: internal ones (warm-up, health checks, readiness probes) left out."""
    return requests.filter(pl.col("internal").is_null()) if "internal" in requests.columns else requests


def for_statistics(requests: pl.DataFrame) -> pl.DataFrame:
    """The requests every request statistic (percentiles, means, slowest) is over: the user's, without the
    ones our profiler control ran during (its time is in their latencies; ``profiler_touched`` lists them)."""
    users = user_requests(requests)
    return users.filter(pl.col("profiler_control").is_null()) if "profiler_control" in users.columns else users


def profiler_touched(requests: pl.DataFrame) -> pl.DataFrame:
    """The user's requests our profiler control ran during (profiler_control.describe_requests says why they
    are out of the statistics)."""
    users = user_requests(requests)
    if "profiler_control" not in users.columns:
        return users.clear()
    return users.filter(pl.col("profiler_control").is_not_null())


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


def export_table(requests: pl.DataFrame, gpu: pl.DataFrame) -> pl.DataFrame:
    """The per-request table ``sglang-trace requests`` writes, one row per request, times in ms.

    ``requests`` from ``request_table``, ``gpu`` from ``kernels.request_gpu_time`` (rid, prefill_gpu_ns,
    decode_gpu_ns, gpu_ns). Columns: rid, internal (bool), internal_kind, streamed (null: not
    recorded), prompt_tokens, cached_tokens, output_tokens, finish_reason, received_ns, received_by, queue_ms,
    ttft_ms (user-visible; null when not streamed), ttft_source, first_token_computed_ms, itl_ms
    (list: every inter-token gap; null for a summary-only request), mean_itl_ms, e2e_ms, itl_p50_ms / itl_p99_ms /
    itl_max_ms (a summary-only request's gaps, as recorded), prefill_gpu_ms, decode_gpu_ms, gpu_ms,
    client_disconnected (the client hung up before the response's end; null: not recorded), http_ended_by,
    response_bytes (response body sent before that end), complete,
    kept (tail-based keep: why the request kept its full detail, "summary" if it kept figures only, null when
    recorded without it), profiler_control (our profiler control that ran while it was in flight: its latencies include that time),
    profiler_control_inferred.
    """
    to_ms = lambda c: (pl.col(c) / 1e6).round(6).alias(c.removesuffix("_ns") + "_ms")  # noqa: E731 (ns exact)
    table = requests.join(gpu, on="rid", how="left") if gpu.height else requests.with_columns(
        *[pl.lit(None, pl.Float64).alias(c) for c in ("prefill_gpu_ns", "decode_gpu_ns", "gpu_ns")])
    for col in ("finish_reason", "kept", *profiler_control.REQUEST_SCHEMA):
        if col not in table.columns:
            table = table.with_columns(pl.lit(None, pl.String).alias(col))
    return table.select(
        "rid", pl.col("internal").is_not_null().alias("internal"), pl.col("internal").alias("internal_kind"),
        pl.col("stream").alias("streamed"), "prompt_tokens", "cached_tokens", "output_tokens", "finish_reason",
        "received_ns", "received_by", to_ms("queued_ns").alias("queue_ms"), to_ms("ttft_ns"), "ttft_source",
        to_ms("ttft_compute_ns").alias("first_token_computed_ms"),
        pl.col("itl_ns").list.eval((pl.element() / 1e6).round(6)).alias("itl_ms"), to_ms("mean_itl_ns"), to_ms("e2e_ns"),
        to_ms("itl_p50_ns"), to_ms("itl_p99_ns"), to_ms("itl_max_ns"),
        to_ms("prefill_gpu_ns"), to_ms("decode_gpu_ns"), to_ms("gpu_ns"), "client_disconnected", "http_ended_by",
        "response_bytes", "complete", "kept", "profiler_control",
        "profiler_control_inferred",
    ).sort("received_ns", nulls_last=True)
