"""Perfetto counter tracks: NVML/GPM samples per GPU and KV-cache occupancy per scheduler process."""
from __future__ import annotations

import polars as pl
from perfetto.protos.perfetto.trace.perfetto_trace_pb2 import TrackEvent

from sglang_tracing import semconv as sc
from sglang_tracing.analyzer.renderers import proto_columns as pc
from sglang_tracing.analyzer.renderers.perfetto_writer import DOUBLE_COUNTER, TRACK_UUID, TYPE, Writer, uuid_of


def _counter_events(w: Writer, samples: pl.DataFrame) -> int:
    """Counter packets from (track, t_ns, value) rows, each track's in time order."""
    def encode(rows: pl.DataFrame) -> pc.Rows:
        return pc.concat(pc.const(TYPE + pc.varint_bytes(TrackEvent.TYPE_COUNTER), rows.height),
                         pc.scalar(TRACK_UUID, pc.varints(rows["track"].to_numpy())),
                         pc.scalar(DOUBLE_COUNTER, pc.fixed64(rows["value"].cast(pl.Float64).to_numpy(), "<f8")))

    w.events(samples.rename({"t_ns": "ts"}).with_columns(pl.lit(0).alias("_one")), ["_one"], encode)
    return samples.height


def write_cache_occupancy(w: Writer, spans: pl.DataFrame, several: bool) -> int:
    """KV tokens used and evictable after each prefix-cache operation, per scheduler process."""
    if sc.CACHE_USED not in spans.columns:
        return 0
    ops = spans.filter(pl.col(sc.CACHE_USED).is_not_null()).sort("end_ns", maintain_order=True)
    metrics = [m for m in (sc.CACHE_USED, sc.CACHE_EVICTABLE) if m in ops.columns]
    frames = []
    for key, pid in ops.select("_proc", "pid").unique("_proc", maintain_order=True).iter_rows():
        for metric in (sc.CACHE_USED, sc.CACHE_EVICTABLE):
            track = w.track(uuid_of(f"cache:{key if several else pid}:{metric}"),
                            f"KV cache {metric.rsplit('.', 1)[-1]}", parent=uuid_of(f"proc:{key}"),
                            counter_unit="tokens")
            if metric in metrics:
                frames.append(ops.filter(pl.col("_proc") == key).select(
                    pl.lit(track, pl.UInt64).alias("track"), pl.col("end_ns").alias("t_ns"),
                    pl.col(metric).alias("value")).drop_nulls("value"))
    return _counter_events(w, pl.concat(frames)) if frames else 0


def write_counters(w: Writer, counters: pl.DataFrame) -> int:
    if counters.is_empty():
        return 0
    several = "server" in counters.columns and counters["server"].n_unique() > 1
    by = ["server", "gpu", "metric"] if several else ["gpu", "metric"]
    keys = counters.select(by).unique(maintain_order=True)
    tracks = []
    for row in keys.iter_rows(named=True):
        gpu, metric = row["gpu"], row["metric"]
        prefix = f"{row['server']}:" if several else ""
        name = f"GPU {gpu} {metric}" + (f" ({row['server']})" if several else "")
        tracks.append(w.track(uuid_of(f"counter:{prefix}{gpu}:{metric}"), name, counter_unit=metric.rsplit("_", 1)[-1]))
    samples = (counters.join(keys.with_columns(pl.Series("track", tracks, pl.UInt64)), on=by, how="left",
                             maintain_order="left")
               .sort("track", "t_ns", maintain_order=True).select("track", "t_ns", "value"))
    return _counter_events(w, samples)
