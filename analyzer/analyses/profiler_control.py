"""Our own profiler control inside SGLang's scheduler spans, and the one rule every statistic over those
spans' durations follows.

With ``capture_steps`` (nsys) or ``--profile-steps`` (Kineto) the scheduler starts and stops the
profilers itself, inside the forward at the window's edge: nsys starting or flushing its capture and
Kineto writing its trace take from tens of milliseconds to seconds there, and none of it is SGLang's.

The rule: a scheduler span (schedule, forward, result processing) during which a profiler-control
action ran is left out of duration statistics, and the report says how many and why. Left out rather
than shortened by the action's time: after cudaProfilerStart or a torch profiler start the rest of that
forward already runs traced, so what remains is not SGLang's ordinary time either; and for traces
recorded before the actions had spans of their own the forward is known, the action's time is not.

The same actions inflate the latencies of the requests in flight while they ran (TTFT, ITL, end-to-end):
``requests_during`` names, per request, the actions whose time window overlapped its lifetime (received ->
finished), and the request statistics leave those requests out as they leave out SGLang's internal ones.

A detail window (``sglang-trace detail``) counts as one action over its whole span: each forward in it
ran with per-layer ranges and timing.

Where the actions come from: the ``sglang_tracing.profiler_control`` spans the runtime records; for a
trace dir without any, inferred from its manifest (the config's capture_steps / profile_steps name the
served forward, counted per scheduler process, at which the runtime acts) and labelled inferred. A
recorded action's window is its own span; an inferred one's is the forward it ran in.
"""
from __future__ import annotations

from functools import reduce

import polars as pl

from sglang_tracing import semconv as sc
from sglang_tracing.config import CAPTURE_IDLE_END_S

SCHEDULER_SPANS = (sc.SCHEDULE, sc.FORWARD, sc.PROCESS_RESULT)
DETAIL_ACTION = "{}-level detail window"  # a detail window's action, by its level
SCHEMA = {"server": pl.String, "pid": pl.Int64, "span_id": pl.String, "name": pl.String, "action": pl.String,
          "control_ns": pl.Int64, "inferred": pl.String}
WINDOW_SCHEMA = {"server": pl.String, "pid": pl.Int64, "action": pl.String, "start_ns": pl.Int64, "end_ns": pl.Int64,
                 "inferred": pl.String}
REQUEST_SCHEMA = {"rid": pl.String, "profiler_control": pl.String, "profiler_control_inferred": pl.String}
_RECORDED = {"server": pl.String, "pid": pl.Int64, "c_start": pl.Int64, "c_end": pl.Int64, "action": pl.String}
_MARKS = {"server": pl.String, "pid": pl.Int64, "span_id": pl.String, "name": pl.String, "start_ns": pl.Int64,
          "end_ns": pl.Int64, "action": pl.String, "inferred": pl.String}


def spans_with_control(spans: pl.LazyFrame | pl.DataFrame, servers: list[dict]) -> pl.DataFrame:
    """The scheduler spans a profiler-control action ran in, one row per span: server, pid, span_id, name,
    action (the actions, joined), control_ns (their recorded time inside the span; null where inferred),
    inferred (null where recorded, else what the inference rests on)."""
    recorded, inferred = _actions(spans, servers)
    found = [_contained(spans.lazy(), recorded)] if recorded.height else []
    if inferred.height:
        found.append(inferred.group_by("server", "pid", "span_id", "name", maintain_order=True).agg(
            pl.col("action").str.join(" and "), pl.col("inferred").unique(maintain_order=True).str.join(", "),
        ).with_columns(pl.lit(None, pl.Int64).alias("control_ns")).select(list(SCHEMA)))
    found = [f for f in found if f.height]
    return pl.concat(found) if found else pl.DataFrame(schema=SCHEMA)


def action_windows(spans: pl.LazyFrame | pl.DataFrame, servers: list[dict]) -> pl.DataFrame:
    """When each profiler-control action ran, one row per action: server, pid, action, start_ns, end_ns
    (its own span where recorded; where inferred, the forward it ran in), inferred (as in spans_with_control)."""
    recorded, inferred = _actions(spans, servers)
    recorded = recorded.rename({"c_start": "start_ns", "c_end": "end_ns"}).with_columns(
        pl.lit(None, pl.String).alias("inferred"))
    return pl.concat([recorded.select(list(WINDOW_SCHEMA)), inferred.select(list(WINDOW_SCHEMA))]).sort("start_ns")


def requests_during(requests: pl.DataFrame, windows: pl.DataFrame) -> pl.DataFrame:
    """The requests (request_table rows: rid, received_ns, finished_ns, server where merged) in flight while an
    action of their server ran, one row each: rid, profiler_control (the actions in time order, "; "-joined),
    profiler_control_inferred (what an inferred window rests on; null where every action was recorded).
    In flight: received before the window ended and finished after it began (never finished: still in flight)."""
    if windows.is_empty() or requests.is_empty():
        return pl.DataFrame(schema=REQUEST_SCHEMA)
    on = ["server"] if "server" in requests.columns else []
    life = requests.select("rid", *on, "received_ns", "finished_ns").drop_nulls("received_ns")
    w = windows.select(*on, pl.col("start_ns").alias("w_start"), pl.col("end_ns").alias("w_end"), "action", "inferred")
    in_flight = (pl.col("received_ns") < pl.col("w_end")) & (pl.col("finished_ns").is_null()
                                                            | (pl.col("finished_ns") > pl.col("w_start")))
    pairs = (life.join(w, on=on) if on else life.join(w, how="cross")).filter(in_flight)
    return pairs.sort("w_start").group_by("rid", maintain_order=True).agg(
        pl.col("action").unique(maintain_order=True).str.join("; ").alias("profiler_control"),
        pl.col("inferred").drop_nulls().unique(maintain_order=True).str.join(", ").alias("profiler_control_inferred"),
    ).with_columns(pl.when(pl.col("profiler_control_inferred") != "").then(pl.col("profiler_control_inferred"))
                   .alias("profiler_control_inferred")).select(list(REQUEST_SCHEMA))


def describe_requests(touched: pl.DataFrame) -> str | None:
    """Why the requests ``touched`` (rows with profiler_control set) are out of the request statistics, e.g.
    "1 left out: in flight while our profiler control ran (nsys capture start), inferred from capture_steps
    0:100000 in the manifest"; None for none."""
    if touched.is_empty():
        return None
    actions = touched["profiler_control"].str.split("; ").explode().unique(maintain_order=True).to_list()
    sources = touched["profiler_control_inferred"].drop_nulls().str.split(", ").explode().unique(maintain_order=True)
    return (f"{touched.height} left out: in flight while our profiler control ran ({'; '.join(actions)})"
            + (f", inferred from {', '.join(sources.to_list())}" if sources.len() else ""))


def kept(spans: pl.LazyFrame | pl.DataFrame, left_out: pl.DataFrame) -> pl.LazyFrame:
    """``spans`` without the ones ``spans_with_control`` found."""
    spans = spans.lazy()
    if left_out.is_empty():
        return spans
    return spans.join(left_out.lazy().select("server", "span_id"), on=["server", "span_id"], how="anti")


def describe(left_out: pl.DataFrame, name: str | None = None) -> str | None:
    """Why spans named ``name`` (None: any) were left out, for a report (None: none were), e.g.
    "1 left out: it contained our nsys capture start (inferred from capture_steps 0:100000 in the manifest)"."""
    mine = left_out if name is None else left_out.filter(pl.col("name") == name)
    if mine.is_empty():
        return None
    n, parts = mine.height, []
    for (action,), g in mine.group_by("action", maintain_order=True):
        took = g["control_ns"].drop_nulls()
        part = f"{action}" + (f" in {g.height}" if n > 1 else "")
        if took.len():
            part += (f", {took.sum() / 1e6:.1f} ms" if took.len() == 1 else
                     f", {took.min() / 1e6:.1f}-{took.max() / 1e6:.1f} ms each")
        parts.append(part)
    sources = mine["inferred"].drop_nulls().unique(maintain_order=True).to_list()
    return (f"{n} left out: {'it' if n == 1 else 'they'} contained our " + "; ".join(parts)
            + (f" (inferred from {', '.join(sources)})" if sources else ""))


def _actions(spans: pl.LazyFrame | pl.DataFrame, servers: list[dict]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The recorded actions (server, pid, c_start, c_end, action) and, for every server without any, the
    inferred ones (_MARKS: the forward each ran in, with the action and what the inference rests on)."""
    spans = spans.lazy()
    schema = spans.collect_schema()
    if not {"server", "pid", "span_id"} <= set(schema.names()):
        return pl.DataFrame(schema=_RECORDED), pl.DataFrame(schema=_MARKS)
    recorded = _recorded(spans, schema)
    with_spans = set(recorded["server"].to_list())
    inferred = [_inferred(spans, s["server"], (s.get("manifest") or {}).get("config") or {})
                for s in servers if s["server"] not in with_spans]
    return recorded, pl.concat([pl.DataFrame(schema=_MARKS), *inferred])


def _recorded(spans: pl.LazyFrame, schema) -> pl.DataFrame:
    """Recorded actions: profiler-control spans, and detail windows (``sglang-trace detail``), whose whole
    span counts: every forward in it ran with per-layer ranges and timing."""
    parts = []
    if sc.PROFILER_ACTION in schema:
        parts.append(spans.filter(pl.col("name") == sc.PROFILER_CONTROL).select(
            "server", "pid", pl.col("start_ns").alias("c_start"), pl.col("end_ns").alias("c_end"),
            pl.col(sc.PROFILER_ACTION).alias("action")))
    if sc.DETAIL_LEVEL in schema:
        parts.append(spans.filter(pl.col("name") == sc.DETAIL_WINDOW).select(
            "server", "pid", pl.col("start_ns").alias("c_start"), pl.col("end_ns").alias("c_end"),
            pl.format(DETAIL_ACTION, pl.col(sc.DETAIL_LEVEL)).alias("action")))
    return pl.concat(parts).collect() if parts else pl.DataFrame(schema=_RECORDED)


def _contained(spans: pl.LazyFrame, control: pl.DataFrame) -> pl.DataFrame:
    """Scheduler spans of the same process that overlap a recorded action (a few actions per process:
    one filter term each, so the spans are read once)."""
    overlaps = [(pl.col("server") == c["server"]) & (pl.col("pid") == c["pid"]) & (pl.col("start_ns") < c["c_end"])
                & (pl.col("end_ns") > c["c_start"]) for c in control.iter_rows(named=True)]
    hit = spans.filter(pl.col("name").is_in(SCHEDULER_SPANS) & reduce(lambda a, b: a | b, overlaps)).select(
        "server", "pid", "span_id", "name", "start_ns", "end_ns").collect()
    pairs = hit.join(control, on=["server", "pid"]).filter(
        (pl.col("start_ns") < pl.col("c_end")) & (pl.col("end_ns") > pl.col("c_start")))
    inside = pl.min_horizontal("end_ns", "c_end") - pl.max_horizontal("start_ns", "c_start")
    return pairs.sort("c_start").group_by("server", "pid", "span_id", "name", maintain_order=True).agg(
        pl.col("action").unique(maintain_order=True).str.join(" and "), inside.sum().alias("control_ns"),
    ).with_columns(pl.lit(None, pl.String).alias("inferred")).select(list(SCHEMA))


def _inferred(spans: pl.LazyFrame, server: str, config: dict) -> pl.DataFrame:
    """Where the runtime acts, by served-forward index on each scheduler process (profile_steps.ForwardWindows):
    a window START:N opens before forward START and closes after forward START+N-1; an nsys capture
    also closes, outside any forward, once the server idles (CAPTURE_IDLE_END_S), so its stop is inferred
    only where no such pause came first."""
    capture, profile = config.get("capture_steps"), config.get("profile_steps")
    if not (capture or profile):
        return pl.DataFrame(schema=_MARKS)
    fwd = (spans.filter((pl.col("server") == server) & (pl.col("name") == sc.FORWARD))
           .select("server", "pid", "span_id", "name", "start_ns", "end_ns").collect()
           .sort("pid", "start_ns").with_columns(pl.int_range(pl.len()).over("pid").alias("index"),
                                                 (pl.col("start_ns") - pl.col("end_ns").shift(1).over("pid"))
                                                 .alias("pause_ns")))
    at = lambda i: pl.col("index") == i  # noqa: E731
    marks = []  # (which forwards, action, what the inference rests on)
    if profile:
        source = "profile_steps %d:%d in the manifest" % tuple(profile)
        marks += [(at(profile[0]), sc.TORCH_PROFILER_START, source), (at(sum(profile) - 1), sc.KINETO_EXPORT, source)]
    if capture:
        source = "capture_steps %d:%d in the manifest" % tuple(capture)
        end = sum(capture) - 1
        idled = fwd.filter((pl.col("index") > capture[0]) & (pl.col("index") <= end)
                           & (pl.col("pause_ns") > CAPTURE_IDLE_END_S * 1e9))["pid"].unique()
        marks += [(at(capture[0]), sc.CAPTURE_START, source),
                  (at(end) & ~pl.col("pid").is_in(idled.implode()), sc.CAPTURE_STOP, source)]
    rows = [fwd.filter(which).with_columns(pl.lit(action).alias("action"), pl.lit(source).alias("inferred"))
            for which, action, source in marks]
    return pl.concat(rows).select(list(_MARKS))
