"""Prefill-decode disaggregation: each request's story across its prefill and decode servers.

The two halves of a request are joined by their bootstrap room (and the prefill server's bootstrap
address), which the router gives both servers. The decode server's clock is the reference: the
prefill server's offset to it is estimated from causality in the joined spans, NTP-style. A prefill
server finishes its handshake only after the decode server began the pass that sent it the
request's KV indices (so offset >= decode pass start - prefill bootstrap done), and a decode server
sees the KV complete only after the prefill server began sending it (offset <= decode KV complete -
prefill send start). Across requests the offset lies in [max of the first, min of the second]; the
estimate is its middle, and the width says how well the data pins it. On one host the clocks are
one (offset about 0, which this verifies).

The waterfall cuts the interval from the request's arrival (the earliest HTTP arrival at either
server, or sglang-router's arrival when its spans are given) to the decode server's first response
bytes into consecutive stages at the recorded boundaries, each boundary held between its neighbours,
so the stages add up to the TTFT the servers saw, exactly. With the client's own stamps (the PD
experiment's ``client`` dir) it runs from the client's send to the first chunk the client read: the
send until the first server-side arrival and the relay of the first bytes back to the client (through
the router; until the client's kernel received them) and the client's wake-up to read them are stages of
their own, so the stages add up to the client's TTFT.
"""
from __future__ import annotations

import dataclasses

import polars as pl

from sglang_tracing import semconv as sc
from sglang_tracing.analyzer.analyses.pd_router import RouterPicks, client_requests, picks_pairs, router_requests

# (stage, the boundary that ends it): (side, span name, start|end|attribute)
STAGES: tuple[tuple[str, tuple[str, str, str]], ...] = (
    ("client: send until arrival", ("client", "arrival", "")),
    ("router: receive and pick", ("router", "pick", "")),
    ("router: forward to the servers", ("router", "forward", "")),
    ("prefill: HTTP, tokenize, intake", ("prefill", sc.PD_BOOTSTRAP, "start")),
    ("prefill: bootstrap handshake", ("prefill", sc.PD_BOOTSTRAP, "end")),
    ("prefill: queue", ("prefill", sc.REQUEST_PREFILL, "start")),
    ("prefill: forward", ("prefill", sc.REQUEST_PREFILL, "end")),
    # until the decode server polled it complete: the prefill server may notice later, off the path
    ("KV transfer and poll", ("decode", sc.PD_KV_RECEIVE, "end")),
    ("decode: first batch", ("decode", sc.PD_FIRST_DECODE, "end")),
    ("decode: output to client", ("decode", "first_byte", "")),
    ("relay of the first bytes to the client", ("client", "kernel", "")),
    ("client: wake-up to read them", ("client", "first", "")),
)
STAGE_NAMES = [name for name, _ in STAGES]
CLIENT_STAGES = {name for name, (side, _, _) in STAGES if side == "client"}
ROUTER_STAGES = {name for name, (side, _, _) in STAGES if side == "router"}
_SIDE_SPANS = (sc.REQUEST, sc.REQUEST_HTTP, sc.PD_BOOTSTRAP, sc.PD_PREFILL_QUEUE, sc.REQUEST_PREFILL,
               sc.PD_KV_SEND, sc.PD_PREALLOC, sc.PD_KV_RECEIVE, sc.PD_FIRST_DECODE, sc.REQUEST_DECODE)


@dataclasses.dataclass(frozen=True)
class ClockOffset:
    """The prefill server's clock against the decode server's: decode time = prefill time + offset_ns.
    On one host the clock is shared and the offset used is 0; the bounds then verify it."""
    offset_ns: float | None  # None: no request gave both bounds (and two hosts)
    lower_ns: float | None
    upper_ns: float | None
    same_host: bool  # both manifests name one host

    @property
    def midpoint_ns(self) -> float | None:
        return None if self.lower_ns is None or self.upper_ns is None else (self.lower_ns + self.upper_ns) / 2

    @property
    def zero_within(self) -> bool | None:
        """One host: whether the causal bounds hold a zero offset (None: no bounds)."""
        if self.lower_ns is None or self.upper_ns is None:
            return None
        return self.lower_ns <= 0 <= self.upper_ns

    @property
    def consistent(self) -> bool:
        return self.lower_ns is not None and self.upper_ns is not None and self.lower_ns <= self.upper_ns


@dataclasses.dataclass(frozen=True)
class PdStory:
    requests: pl.DataFrame  # one row per joined request: rids, room, stage ms, ttft_ms, kv figures
    offset: ClockOffset
    percentiles: pl.DataFrame  # stage, p50_ms, p90_ms, p99_ms, mean_share_pct
    by_load: pl.DataFrame  # in_flight, requests, dominant stage, its mean share, ttft p50
    prefill_servers: list[str]
    decode_servers: list[str]
    unjoined: dict[str, int]  # PD requests seen on one side only, per side
    router_picks: RouterPicks | None = None  # None: no router dir given
    client_joined: int | None = None  # requests the client's stamps were joined to (None: no client dir)


def is_pd(spans: pl.DataFrame | pl.LazyFrame) -> bool:
    schema = spans.collect_schema() if isinstance(spans, pl.LazyFrame) else spans.schema
    if sc.PD_MODE not in schema:
        return False
    frame = spans.lazy().filter(pl.col(sc.PD_MODE).is_not_null()).select(sc.PD_MODE).unique().collect()
    return set(frame[sc.PD_MODE].to_list()) >= {"prefill", "decode"}


def _side(spans: pl.DataFrame, mode: str) -> pl.DataFrame:
    """One row per request of one side: its room and the boundary times it recorded (own clock)."""
    rooms = (spans.filter(pl.col(sc.PD_MODE) == mode)
             .group_by("server", sc.RID).agg(pl.col(sc.PD_ROOM).first(), pl.col(sc.PD_BOOTSTRAP_ADDR).first()))
    mine = spans.filter(pl.col("name").is_in(_SIDE_SPANS)).join(rooms.select("server", sc.RID), on=["server", sc.RID])
    cols = [pl.col("start_ns").filter(pl.col("name") == n).min().alias(f"{n}|start") for n in _SIDE_SPANS]
    cols += [pl.col("end_ns").filter(pl.col("name") == n).max().alias(f"{n}|end") for n in _SIDE_SPANS]
    extra = []
    if sc.FIRST_BYTE_NS in spans.columns:
        extra.append(pl.col(sc.FIRST_BYTE_NS).filter(pl.col("name") == sc.REQUEST_HTTP).max().alias("http_first_byte"))
    if sc.HTTP_ENDED_BY in spans.columns:
        extra.append(pl.col(sc.HTTP_ENDED_BY).filter(pl.col("name") == sc.REQUEST_HTTP).first().alias("http_ended_by"))
    if sc.FIRST_OUTPUT_NS in spans.columns:
        extra.append(pl.col(sc.FIRST_OUTPUT_NS).filter(pl.col("name") == sc.REQUEST).max().alias("root_first_output"))
    for name in (sc.PD_KV_BYTES, sc.PROMPT_TOKENS, sc.OUTPUT_TOKENS):
        if name in spans.columns:
            source = {sc.PD_KV_BYTES: sc.PD_KV_SEND, sc.PROMPT_TOKENS: sc.REQUEST, sc.OUTPUT_TOKENS: sc.REQUEST}[name]
            extra.append(pl.col(name).filter(pl.col("name") == source).max().alias(name))
    if sc.INTERNAL in spans.columns:  # SGLang's warm-up, our readiness probe: not the workload's
        extra.append(pl.col(sc.INTERNAL).filter(pl.col("name") == sc.REQUEST).max().alias("internal"))
    extra.append(pl.col("trace_id").filter(pl.col("name") == sc.REQUEST).first().alias("trace_id"))
    frame = mine.group_by("server", sc.RID).agg(*cols, *extra).join(rooms, on=["server", sc.RID])
    if "internal" in frame.columns:
        frame = frame.filter(pl.col("internal").is_null()).drop("internal")
    arrival = [c for c in (f"{sc.REQUEST_HTTP}|start", f"{sc.REQUEST}|start")]
    frame = frame.with_columns(pl.coalesce(arrival).alias("arrival"))
    if mode == "decode":
        first = [c for c in ("http_first_byte", "root_first_output") if c in frame.columns]
        frame = frame.with_columns(pl.coalesce(first).alias("first_byte") if first else pl.lit(None).alias("first_byte"))
        if "http_ended_by" in frame.columns:  # a response that ended before its first byte: the client saw none
            unsent = pl.col("http_first_byte").is_null() if "http_first_byte" in frame.columns else True
            none_sent = pl.col("http_ended_by").is_not_null() & (pl.col("http_ended_by") != sc.HTTP_END_RESPONSE_SENT)
            none_sent = none_sent & unsent
            frame = frame.with_columns(pl.when(none_sent).then(None).otherwise(pl.col("first_byte")).alias("first_byte"))
    return frame


def _offset(joined: pl.DataFrame, same_host: bool) -> ClockOffset:
    lower = joined.select((pl.col(f"d.{sc.PD_PREALLOC}|end") - pl.col(f"p.{sc.PD_BOOTSTRAP}|end")).max()).item()
    upper = joined.select((pl.col(f"d.{sc.PD_KV_RECEIVE}|end") - pl.col(f"p.{sc.PD_KV_SEND}|start")).min()).item()
    lower = None if lower is None else float(lower)
    upper = None if upper is None else float(upper)
    estimate = 0.0 if same_host else None if lower is None or upper is None else (lower + upper) / 2
    return ClockOffset(estimate, lower, upper, same_host)


def _boundaries(joined: pl.DataFrame, offset_ns: float) -> pl.DataFrame:
    """Each stage's end on the decode clock, each held between the one before and the first byte."""
    shift = int(round(offset_ns))
    servers_arrival = pl.min_horizontal(pl.col("d.arrival"), pl.col("p.arrival") + shift)
    arrival = pl.coalesce(pl.col("r.start"), servers_arrival)  # the router's, when it was traced
    end = pl.coalesce(pl.col("c.first"), pl.col("d.first_byte"))  # the client's first chunk, where it was given
    # the client's send starts it where given: a server's arrival stamp before it is held at it (and counted)
    out = joined.with_columns(pl.coalesce(pl.col("c.sent"), arrival).alias("t_arrival"),
                              ((pl.col("c.sent") - arrival) / 1e6).alias("arrival_before_send_ms"))
    prev = pl.col("t_arrival")
    for i, (name, (side, span, edge)) in enumerate(STAGES):
        if side == "client":
            raw = {"arrival": arrival, "kernel": pl.col("c.kernel"), "first": pl.col("c.first")}[span]
        elif side == "router":
            raw = pl.col("r.pick") if span == "pick" else servers_arrival
        else:
            raw = pl.col("d.first_byte") if span == "first_byte" else pl.col(f"{side[0]}.{span}|{edge}")
        if side == "prefill":
            raw = raw + shift
        bound = pl.min_horizontal(pl.max_horizontal(raw.fill_null(prev), prev), end)
        out = out.with_columns(bound.alias(f"b{i}"))
        prev = pl.col(f"b{i}")
    stage_cols = [((pl.col(f"b{i}") - (pl.col(f"b{i - 1}") if i else pl.col("t_arrival"))) / 1e6).alias(name)
                  for i, name in enumerate(STAGE_NAMES)]
    return out.with_columns(*stage_cols, ((end - pl.col("t_arrival")) / 1e6).alias("ttft_ms"),
                            ((pl.col("d.first_byte") - arrival) / 1e6).alias("server_ttft_ms"))


def _in_flight(requests: pl.DataFrame) -> pl.Series:
    """Requests on the decode server (arrival to first byte) when each arrived, itself included."""
    starts = requests["t_arrival"].to_list()
    ends = requests["d.first_byte"].to_list()
    return pl.Series("in_flight", [sum(1 for s, e in zip(starts, ends) if s <= t < e) or 1 for t in starts])


def compute(spans: pl.DataFrame, servers: list[dict] | None = None, events: pl.DataFrame | None = None
            ) -> PdStory | None:
    """The PD story of a model's spans (with the router's, when its dir is among ``servers``), or None
    when they hold no prefill and decode halves."""
    if not is_pd(spans):
        return None
    prefill, decode = _side(spans, "prefill"), _side(spans, "decode")
    key = [sc.PD_ROOM, sc.PD_BOOTSTRAP_ADDR]
    joined = (decode.rename({c: f"d.{c}" for c in decode.columns if c not in key})
              .join(prefill.rename({c: f"p.{c}" for c in prefill.columns if c not in key}), on=key, how="inner"))
    joined = joined.filter(pl.col("d.first_byte").is_not_null() & pl.col("d.arrival").is_not_null())
    router = router_requests(spans, servers, events)
    if router is not None:
        joined = joined.join(router, left_on="d.trace_id", right_on="trace_id", how="left")
    else:
        joined = joined.with_columns(*(pl.lit(None, pl.Int64).alias(c) for c in ("r.start", "r.end", "r.pick")),
                                     *(pl.lit(None, pl.String).alias(c) for c in ("r.prefill_url", "r.decode_url")))
    client = client_requests(spans, servers)
    if client is not None:
        joined = joined.join(client, left_on=f"d.{sc.RID}", right_on="c.rid", how="left")
    else:
        joined = joined.with_columns(*(pl.lit(None, pl.Int64).alias(c) for c in ("c.sent", "c.first", "c.kernel")))
    unjoined = {"prefill": prefill.height - joined.height, "decode": decode.height - joined.height}
    hosts = {((s.get("manifest") or {}).get("identity") or {}).get("host_name")
             or ((s.get("manifest") or {}).get("host") or {}).get("hostname") for s in servers or []}
    offset = _offset(joined, len(hosts) == 1)
    table = _boundaries(joined, offset.offset_ns or 0.0).sort("t_arrival")
    kv_ms = (pl.col(f"p.{sc.PD_KV_SEND}|end") - pl.col(f"p.{sc.PD_KV_SEND}|start")) / 1e6
    table = table.with_columns(
        kv_ms.alias("kv_send_ms"),
        pl.when(kv_ms > 0).then(pl.col(f"p.{sc.PD_KV_BYTES}") / kv_ms / 1e6).alias("kv_gb_s"),
        ((pl.col(f"d.{sc.PD_PREALLOC}|end") - pl.col(f"d.{sc.PD_PREALLOC}|start")) / 1e6).alias("prealloc_ms"),
        ((pl.col(f"d.{sc.REQUEST_DECODE}|end") - pl.col(f"d.{sc.REQUEST_DECODE}|start")) / 1e6).alias("decode_ms"),
    )
    table = table.with_columns(_in_flight(table))
    requests = table.select(
        pl.col(sc.PD_ROOM).alias("room"), pl.col(f"p.{sc.RID}").alias("prefill_rid"),
        pl.col(f"d.{sc.RID}").alias("decode_rid"), pl.col("p.server").alias("prefill_server"),
        pl.col("d.server").alias("decode_server"), pl.col("t_arrival").alias("arrival_ns"), "in_flight",
        pl.col(f"p.{sc.PROMPT_TOKENS}").alias("prompt_tokens") if f"p.{sc.PROMPT_TOKENS}" in table.columns
        else pl.lit(None).alias("prompt_tokens"),
        pl.col(f"d.{sc.OUTPUT_TOKENS}").alias("output_tokens") if f"d.{sc.OUTPUT_TOKENS}" in table.columns
        else pl.lit(None).alias("output_tokens"),
        *STAGE_NAMES, "ttft_ms", "server_ttft_ms", ((pl.col("r.end") - pl.col("r.start")) / 1e6).alias("router_ms"),
        pl.col("r.prefill_url").alias("router_prefill_url"), pl.col("r.decode_url").alias("router_decode_url"),
        pl.col("c.sent").is_not_null().alias("client_stamped"), "arrival_before_send_ms",
        "prealloc_ms", "kv_send_ms",
        pl.col(f"p.{sc.PD_KV_BYTES}").alias("kv_bytes"), "kv_gb_s", "decode_ms")
    client_joined = None if client is None else int(requests["client_stamped"].sum())
    router_picks = None
    if router is not None:
        picked = requests.filter(pl.col("router_decode_url").is_not_null()).select(
            "decode_rid", "arrival_ns", pl.col("router_prefill_url").alias("prefill_url"),
            pl.col("router_decode_url").alias("decode_url"))
        router_picks = RouterPicks(picked, picks_pairs(picked))
    stages = [n for n in STAGE_NAMES if (n not in ROUTER_STAGES or router is not None)
              and (n not in CLIENT_STAGES or client_joined)]
    return PdStory(requests, offset, _percentiles(requests, stages), _by_load(requests, stages),
                   sorted(set(requests["prefill_server"].to_list())), sorted(set(requests["decode_server"].to_list())),
                   unjoined, router_picks, client_joined)


def _percentiles(requests: pl.DataFrame, stages: list[str]) -> pl.DataFrame:
    rows = []
    for name in [*stages, "ttft_ms"]:
        col = requests[name].drop_nulls()
        share = (requests[name] / requests["ttft_ms"]).mean() * 100 if requests.height else None
        rows.append({"stage": name, "p50_ms": col.quantile(0.5), "p90_ms": col.quantile(0.9),
                     "p99_ms": col.quantile(0.99), "mean_share_pct": share})
    return pl.DataFrame(rows, schema={"stage": pl.String, "p50_ms": pl.Float64, "p90_ms": pl.Float64,
                                      "p99_ms": pl.Float64, "mean_share_pct": pl.Float64})


def _load_bucket(n: int) -> str:
    return "1" if n <= 1 else "2-3" if n <= 3 else "4-7" if n <= 7 else "8+"


def _by_load(requests: pl.DataFrame, stages: list[str]) -> pl.DataFrame:
    """Which stage takes the largest mean share of TTFT, by requests in flight at arrival."""
    schema = {"in_flight": pl.String, "requests": pl.Int64, "dominant_stage": pl.String,
              "dominant_share_pct": pl.Float64, "ttft_p50_ms": pl.Float64}
    if requests.height == 0:
        return pl.DataFrame(schema=schema)
    rows = []
    frame = requests.with_columns(pl.col("in_flight").map_elements(_load_bucket, pl.String).alias("bucket"))
    for bucket, group in sorted(frame.group_by("bucket"), key=lambda g: int(str(g[0][0]).split("-")[0].rstrip("+"))):
        shares = {name: (group[name] / group["ttft_ms"]).mean() * 100 for name in stages}
        top = max(shares, key=lambda k: shares[k] or 0)
        rows.append({"in_flight": bucket[0], "requests": group.height, "dominant_stage": top,
                     "dominant_share_pct": shares[top], "ttft_p50_ms": group["ttft_ms"].quantile(0.5)})
    return pl.DataFrame(rows, schema=schema)
