"""What sglang-router and the PD client recorded of each request, for the PD story.

sglang-router (Rust) is traced by its own OpenTelemetry export: one ``http_request`` span per request,
with an event once it picked the pair, naming the prefill and decode URLs. The router passes its trace
context on, so the servers' spans carry its trace id. The experiment's client writes one span per
request (``semconv.CLIENT_REQUEST``) named by the rid it sent, which the router passes on to both servers.
"""
from __future__ import annotations

import dataclasses
import json

import polars as pl

from sglang_tracing import semconv as sc

ROUTER_SEND_EVENT = "Sending concurrent requests"  # sglang-router's event once it picked the pair
PICK_URLS = ("prefill_url", "decode_url")  # that event's attributes


@dataclasses.dataclass(frozen=True)
class RouterPicks:
    """The workers sglang-router picked: one row per request (in the PD story: decode_rid, arrival_ns; from
    the events alone: span_id, trace_id, pick_ns) with prefill_url and decode_url, and per pair of URLs how
    many requests went there."""
    requests: pl.DataFrame
    pairs: pl.DataFrame  # prefill_url, decode_url, requests


def _labels(servers: list[dict] | None, role: str) -> list[str]:
    return [s["server"] for s in servers or []
            if ((s.get("manifest") or {}).get("identity") or {}).get("server_role") == role]


def _url(attributes: str | None, key: str) -> str | None:
    return (json.loads(attributes) if attributes else {}).get(key)


def picks(events: pl.DataFrame | None) -> RouterPicks:
    """The router's picks, from the attributes of its pick events."""
    schema = {"span_id": pl.String, "trace_id": pl.String, "pick_ns": pl.Int64, "prefill_url": pl.String,
              "decode_url": pl.String}
    rows = [] if events is None or "attributes" not in events.columns else [
        (span, trace, t, *(_url(attrs, key) for key in PICK_URLS))
        for span, trace, t, attrs in events.filter(pl.col("name") == ROUTER_SEND_EVENT)
        .select("span_id", "trace_id", "time_ns", "attributes").iter_rows()]
    requests = pl.DataFrame(rows, schema=schema, orient="row").sort("pick_ns").unique("span_id", keep="first",
                                                                                      maintain_order=True)
    return RouterPicks(requests, picks_pairs(requests))


def router_requests(spans: pl.DataFrame, servers: list[dict] | None, events: pl.DataFrame | None
                    ) -> pl.DataFrame | None:
    """sglang-router's request spans (trace_id, r.start, r.end, r.pick, r.prefill_url, r.decode_url), or
    None without a router dir."""
    labels = _labels(servers, sc.ROUTER_ROLE)
    if not labels:
        return None
    roots = spans.filter(pl.col("server").is_in(labels) & pl.col("parent_id").is_null())
    roots = roots.select("trace_id", "span_id", pl.col("start_ns").alias("r.start"), pl.col("end_ns").alias("r.end"))
    chosen = picks(events)
    roots = roots.join(chosen.requests.select("span_id", pl.col("pick_ns").alias("r.pick"),
                                              pl.col("prefill_url").alias("r.prefill_url"),
                                              pl.col("decode_url").alias("r.decode_url")), on="span_id", how="left")
    return roots.drop("span_id").unique("trace_id", keep="first")


def picks_pairs(requests: pl.DataFrame) -> pl.DataFrame:
    return (requests.group_by("prefill_url", "decode_url", maintain_order=True)
            .agg(pl.len().cast(pl.Int64).alias("requests")))


def client_requests(spans: pl.DataFrame, servers: list[dict] | None) -> pl.DataFrame | None:
    """The client's stamps of each request (rid, c.sent, c.first, c.kernel), or None without a client dir."""
    labels = _labels(servers, sc.CLIENT_ROLE)
    if not labels:
        return None
    mine = spans.filter(pl.col("server").is_in(labels) & (pl.col("name") == sc.CLIENT_REQUEST))
    kernel = (pl.col(sc.CLIENT_FIRST_KERNEL_NS) if sc.CLIENT_FIRST_KERNEL_NS in mine.columns
              else pl.lit(None, pl.Int64))
    return mine.select(pl.col(sc.RID).alias("c.rid"), pl.col("start_ns").alias("c.sent"),
                       pl.col(sc.CLIENT_FIRST_CHUNK_NS).cast(pl.Int64).alias("c.first"),
                       kernel.cast(pl.Int64).alias("c.kernel")).unique("c.rid", keep="first")
