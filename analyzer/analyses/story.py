"""Experiment 1, the execution story of one request, built from pure frame analyses."""
from __future__ import annotations

import dataclasses

import polars as pl

from sglang_tracing import semconv as sc
from sglang_tracing.errors import UsageError
from sglang_tracing.analyzer.analyses.attribution import (forward_members, forwards_inside, forwards_of, is_prefill,
                                                          kernels_of_forwards)
from sglang_tracing.analyzer.analyses.hardware import peak_bandwidth, phase_state
from sglang_tracing.analyzer.analyses.layer_annotations import layer_host_time, op_host_time
from sglang_tracing.analyzer.analyses.kernels import by_layer, by_op, forward_gpu_time, project_nvtx, request_gpu_time
from sglang_tracing.analyzer.analyses.requests import (for_statistics, profiler_touched, request_table,
                                                       token_latencies, user_requests)
from sglang_tracing.analyzer.analyses.story_figures import (KernelShares, Milestone, ModelShape, RunFigures,
                                                            itl_at_marks, kernel_shares, milestones, model_shape,
                                                            op_shares, run_figures, trend_verdict)
from sglang_tracing.analyzer.model import TraceModel
from sglang_tracing.analyzer.report import Plot
from sglang_tracing.models.facts import model_config, weight_bytes
from sglang_tracing.runtime.manifest import weights_of

def select_request(requests: pl.DataFrame, which: str) -> dict | None:
    """``first``, ``slowest`` or ``p50`` of the user's complete requests that no profiler control of ours ran
    during (requests.for_statistics), or the request whose rid starts with ``which`` (any: asked for by name)."""
    done = requests.filter(pl.col("complete"))
    if which not in ("first", "slowest", "p50"):
        match = done.filter(pl.col("rid").str.starts_with(which))
        return match.row(0, named=True) if match.height else None
    done = for_statistics(done)
    if done.is_empty():
        return None
    if which == "first":
        return done.sort("received_ns").row(0, named=True)
    if which in ("slowest", "p50"):
        ordered = done.sort("e2e_ns")
        idx = ordered.height - 1 if which == "slowest" else (ordered.height - 1) // 2
        return ordered.row(idx, named=True)
    return None


MIN_TREND_TOKENS = 16  # fewer decode tokens fit a line to noise


def itl_trend(tokens: pl.DataFrame) -> dict | None:
    """Least-squares line ITL = a + b * kv_len over decode tokens; slope in ns per KV token."""
    pts = tokens.drop_nulls("itl_ns")
    if pts.height < MIN_TREND_TOKENS:
        return None
    x = pts["kv_len"].cast(pl.Float64)
    y = pts["itl_ns"].cast(pl.Float64)
    xm, ym = x.mean(), y.mean()
    sxx = ((x - xm) ** 2).sum()
    if sxx == 0:
        return None
    slope = ((x - xm) * (y - ym)).sum() / sxx
    intercept = ym - slope * xm
    ss_res = ((y - (intercept + slope * x)) ** 2).sum()
    ss_tot = ((y - ym) ** 2).sum()
    return {"slope_ns_per_token": slope, "intercept_ns": intercept,
            "r2": 1 - ss_res / ss_tot if ss_tot else 1.0, "points": pts.height}


def _schedule_of(spans: pl.DataFrame | pl.LazyFrame, t_ns: int | None) -> dict | None:
    """The scheduling pass that admitted a request (the schedule span starting at its queue exit)."""
    if t_ns is None:
        return None
    sched = spans.lazy().filter((pl.col("name") == sc.SCHEDULE) & (pl.col("start_ns") == t_ns)).collect()
    return sched.row(0, named=True) if sched.height else None


HW_METRICS = (sc.GPM_SM_UTIL, sc.GPM_SM_OCCUPANCY, sc.GPM_TENSOR_UTIL, sc.GPM_DRAM_BW_UTIL, sc.NVML_POWER,
              sc.NVML_SM_CLOCK, sc.NVML_MEM_USED)
KERNELS_SHOWN = 15


# ---- computing: what happened to one request ----
@dataclasses.dataclass
class Phase:
    """The GPU side of one phase (prefill or decode) of the selected request."""
    forwards: pl.DataFrame  # the forwards whose batch held the request (attribution.forwards_of)
    kernels: pl.DataFrame  # time by name of the kernels they launched: name, total_ns, calls, share_pct
    hardware: pl.DataFrame  # GPM/NVML means over the phase's window: metric, source, mean, samples
    window_ms: float | None  # the phase's wall time (None without hardware samples)
    others: int  # forwards of other requests inside the window: the GPU-wide samples include them
    ops: pl.DataFrame | None = None  # GPU time by NVTX op range (None: no op ranges, or not asked for)
    layers: pl.DataFrame | None = None  # GPU time by layer range
    shares: KernelShares | None = None  # attention and GEMM shares of its kernel time
    hardware_over: str = "this request's phase"  # the windows the hardware means are over
    host_ops: pl.DataFrame | None = None  # host time by op from Kineto user annotations (layer_annotations)
    host_layers: pl.DataFrame | None = None  # host time by layer from Kineto user annotations

    @property
    def hardware_means(self) -> dict[str, float]:
        return dict(zip(self.hardware["metric"].to_list(), self.hardware["mean"].to_list()))


@dataclasses.dataclass
class Story:
    """Every figure of the execution story; ``request`` is None when the trace has no complete request."""
    which: str  # how the request was selected: first, slowest, p50 or a rid prefix
    requests: pl.DataFrame  # every request of the trace (request_table) with its GPU time (request_gpu_time)
    request: dict | None  # the selected request's row of ``requests``
    servers: int  # trace dirs merged into the model
    weights: str  # SGLang load_format of the run
    gpu_source: str = "none"  # what timed the forwards on the GPU
    schedule: dict | None = None  # the scheduling pass that admitted the request
    prefill: Phase | None = None
    decode: Phase | None = None
    tokens: pl.DataFrame | None = None  # one row per output token (requests.token_latencies)
    trend: dict | None = None  # itl_trend of its tokens
    cache_inserts: int = 0  # in the whole trace
    weight_bytes: int | None = None  # of the served model's config
    gpus: list[dict] = dataclasses.field(default_factory=list)  # the manifest's GPUs
    peak_bandwidth: float | None = None  # bytes/s of the first GPU
    loaded_kernels: int = 0  # kernels loaded from any profile
    sample_interval_ms: int = 100  # NVML/GPM sampling interval
    no_samples_why: str = ""  # why no hardware sample is in the trace, where none is
    samples: int = 0  # hardware samples in the trace
    run: RunFigures | None = None  # the whole run's user requests
    shape: ModelShape | None = None
    milestones: list[Milestone] = dataclasses.field(default_factory=list)
    itl_marks: pl.DataFrame | None = None  # itl_at_marks of its tokens
    verdict: str | None = None  # trend_verdict of ``trend``
    profiled: Phase | None = None  # prefill of a request of the profiled pass (layer ranges, Kineto), if given
    profiled_dir: str | None = None

    @property
    def users(self) -> pl.DataFrame:
        return user_requests(self.requests)

    @property
    def internal(self) -> pl.DataFrame:
        return self.requests.filter(pl.col("internal").is_not_null())

    @property
    def touched(self) -> pl.DataFrame:
        """The user's requests our profiler control ran during: out of every statistic, listed apart."""
        return profiler_touched(self.requests)


def _requests(model: TraceModel, spans: pl.LazyFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Every request with its GPU time, and the GPU time of each forward."""
    per_fwd = forward_gpu_time(spans, model.kernels)
    requests = request_table(spans, model.manifest, model.servers).join(request_gpu_time(spans, per_fwd), on="rid",
                                                                        how="left")
    return requests, per_fwd


def compute(model: TraceModel, which: str = "slowest", model_config_override: str | None = None,
            profiled: TraceModel | None = None) -> Story:
    """The request ``which`` selects (select_request) and what its phases ran, where, and on what;
    ``profiled``: a profiled pass of the same server setup (layer ranges, Kineto) whose first complete
    request's prefill gives the per-layer, per-op and kernel figures the measured run lacks."""
    spans = model.scan_spans()
    requests, per_fwd = _requests(model, spans)
    story = Story(which, requests, select_request(requests, which), len(model.servers), weights_of(model.manifest))
    story.run = run_figures(requests)
    req = story.request
    if req is None and which not in ("first", "slowest", "p50"):
        raise UsageError(f"--request {which}: no complete request's rid starts with {which!r} "
                         f"({requests.height} requests seen); give a rid prefix, first, slowest or p50")
    if req is None:
        return story
    story.milestones = milestones(req)
    counters = model.counters
    if story.servers > 1:  # several trace dirs: this request's server, and only its GPU samples
        counters = counters.filter(pl.col("server") == req["server"])
        spans = spans.filter(pl.col("server") == req["server"])  # the forwards that shared its GPU
    mine = _forwards_of_request(spans, req["rid"])
    story.gpu_source = ", ".join(sorted(set(per_fwd["source"].drop_nulls().to_list()))) or "none"
    story.schedule = _schedule_of(spans, req.get("queued_end_ns"))
    story.prefill = _phase(model, spans, counters, mine.filter(is_prefill()), req, "prefill", with_ops=True)
    story.decode = _phase(model, spans, counters, mine.filter(pl.col("mode") == "decode"), req, "decode")
    if story.prefill.hardware.is_empty():  # the run's prefill forwards, when none sampled inside this one's
        story.prefill.hardware, story.prefill.hardware_over = _prefill_forwards_state(spans, counters)
    story.tokens = token_latencies(requests.filter(pl.col("rid") == req["rid"]))
    story.trend = itl_trend(story.tokens)
    story.itl_marks, story.verdict = itl_at_marks(story.tokens), trend_verdict(story.trend)
    if profiled is not None:
        story.profiled, story.profiled_dir = _profiled_prefill(profiled), (profiled.servers or [{}])[0].get("dir")
    story.cache_inserts = model.scan_spans().filter(pl.col("name") == sc.CACHE_INSERT).select(pl.len()).collect().item()
    _add_setup(story, model, model_config_override)
    return story


def _add_setup(story: Story, model: TraceModel, model_config_override: str | None) -> None:
    """What the run ran on: model size, GPUs, profiles loaded, hardware sampling."""
    cfg = model_config(model.manifest, model_config_override)
    story.weight_bytes, story.shape = weight_bytes(cfg), model_shape(model.manifest, cfg)
    story.gpus = (model.manifest.get("gpu") or {}).get("devices") or []
    story.peak_bandwidth = peak_bandwidth(story.gpus[0]["name"]) if story.gpus else None
    story.loaded_kernels, story.samples = model.kernels.height, model.counters.height
    story.sample_interval_ms = (model.manifest.get("config") or {}).get("nvml_interval_ms") or 100
    story.no_samples_why = "; ".join(n.get("reason", "") for n in model.gpu_notes) or "no NVML samples in the trace"


def _forwards_of_request(spans: pl.LazyFrame, rid: str) -> pl.DataFrame:
    """The forwards whose batch held ``rid``: the rows forwards_of keeps, without exploding every
    forward's batch of the trace."""
    if sc.BATCH_RIDS not in spans.collect_schema():
        return forwards_of(forward_members(spans.clear().collect()), [rid])
    held = spans.filter((pl.col("name") == sc.FORWARD) & pl.col(sc.BATCH_RIDS).list.contains(rid)).collect()
    return forwards_of(forward_members(held), [rid])


def _phase(model: TraceModel, spans: pl.LazyFrame, counters: pl.DataFrame, forwards: pl.DataFrame, req: dict,
           phase: str, with_ops: bool = False) -> Phase:
    window = pl.DataFrame({"start_ns": [req[f"{phase}_start_ns"]], "end_ns": [req[f"{phase}_end_ns"]]})
    kernels = _kernels(model, forwards, spans)
    hardware = phase_state(counters, window).filter(pl.col("metric").is_in(HW_METRICS))
    window_ms = int((window["end_ns"] - window["start_ns"]).sum()) / 1e6 if hardware.height else None
    by_name = kernel_time(kernels)
    result = Phase(forwards, by_name.head(KERNELS_SHOWN), hardware, window_ms, _others_inside(spans, window, req["rid"]),
                   shares=kernel_shares(by_name))
    if with_ops:
        projected = project_nvtx(kernels, model.cpu_ops, model.nvtx)
        if projected.height and projected["op"].null_count() < projected.height:
            result.ops, result.layers = by_op(projected), by_layer(projected)
            result.shares = op_shares(result.ops)  # the op ranges say what each kernel computed
    return result


def _prefill_forwards_state(spans: pl.LazyFrame, counters: pl.DataFrame) -> tuple[pl.DataFrame, str]:
    """Hardware means over every prefill forward of the run, and what they are over."""
    fwd = (spans.filter((pl.col("name") == sc.FORWARD) & is_prefill(pl.col(sc.FORWARD_MODE)))
           .select("start_ns", "end_ns").collect() if sc.FORWARD_MODE in spans.collect_schema() else pl.DataFrame())
    if fwd.is_empty():
        return phase_state(counters, fwd), "no prefill forward recorded"
    state = phase_state(counters, fwd).filter(pl.col("metric").is_in(HW_METRICS))
    wall = int((fwd["end_ns"] - fwd["start_ns"]).sum())
    return state, f"all {fwd.height} prefill forwards of the run ({wall / 1e6:.1f} ms of forward time)"


def _profiled_prefill(profiled: TraceModel) -> Phase | None:
    """The prefill of the profiled pass's first complete request, with its op and layer times."""
    spans = profiled.scan_spans()
    requests, _ = _requests(profiled, spans)
    # every request of the pass ran under the Kineto window (our profiler control): take the first user's
    done = user_requests(requests).filter(pl.col("complete")).sort("received_ns")
    if done.is_empty():
        return None
    req = done.row(0, named=True)
    forwards = _forwards_of_request(spans, req["rid"]).filter(is_prefill())
    phase = _phase(profiled, spans, profiled.counters, forwards, req, "prefill", with_ops=True)
    if not profiled.nvtx.is_empty():
        mine = pl.col("parent_id").is_in(forwards["span_id"].to_list())
        ids = spans.filter((pl.col("name") == sc.MODEL_FORWARD) & mine).select("span_id").collect()["span_id"].to_list()
        phase.host_layers, phase.host_ops = layer_host_time(profiled.nvtx, ids), op_host_time(profiled.nvtx, ids)
    return phase


def _others_inside(spans: pl.LazyFrame, window: pl.DataFrame, rid: str) -> int:
    """Forwards inside a phase's window that did not run this request (they share the GPU-wide samples)."""
    start, end = window["start_ns"][0], window["end_ns"][0]
    if start is None or end is None:
        return 0
    inside = forwards_inside(spans.lazy().filter(pl.col("start_ns").is_between(start, end)).collect(), start, end)
    return inside.filter(~pl.col("rids").list.contains(rid).fill_null(False)).height


def _kernels(model: TraceModel, forwards: pl.DataFrame, spans: pl.LazyFrame) -> pl.DataFrame:
    """The kernels the given forwards launched (attributed by forward, not by time window)."""
    if model.kernels.is_empty():
        return model.kernels.clear()
    fwd_spans = spans.lazy().filter(pl.col("name").is_in([sc.FORWARD, sc.MODEL_FORWARD])).collect()
    return kernels_of_forwards(model.kernels, model.cpu_ops, model.nvtx, fwd_spans, forwards["span_id"])


def kernel_time(kernels: pl.DataFrame) -> pl.DataFrame:
    """Kernel time by name: name, total_ns, calls, share_pct (of these kernels' time), longest first."""
    total = kernels["dur_ns"].sum()
    return (kernels.group_by("name").agg(pl.col("dur_ns").sum().alias("total_ns"), pl.len().alias("calls"))
            .with_columns((pl.col("total_ns") / total * 100).round(1).alias("share_pct"))
            .sort("total_ns", descending=True))


def itl_plot(tokens: pl.DataFrame, rid: str) -> Plot | None:
    """Each output token's gap to the previous one (ms) by token index; None without two tokens."""
    points = tokens.drop_nulls("itl_ns")
    if points.is_empty():
        return None
    return Plot("story_itl.png", "itl", {"points": points.select("token_index", (pl.col("itl_ns") / 1e6)
                                                                  .alias("itl_ms"))},
                {"title": f"Inter-token latency, request {rid[:12]}", "x": "output token index", "y": "ITL (ms)"})


