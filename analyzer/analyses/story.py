"""Experiment 1, the execution story of one request, built from pure frame analyses."""
from __future__ import annotations

import dataclasses
import json
import os

import polars as pl

from sglang_tracing import semconv as sc
from sglang_tracing.errors import UsageError
from sglang_tracing.analyzer.analyses.attribution import (forward_members, forwards_inside, forwards_of, is_prefill,
                                                          kernels_of_forwards)
from sglang_tracing.analyzer.analyses.hardware import peak_bandwidth, phase_state
from sglang_tracing.analyzer.analyses.kernels import (by_layer, by_op, describe_layers, forward_gpu_time,
                                                      project_nvtx, request_gpu_time)
from sglang_tracing.analyzer.analyses.profiler_control import describe_requests
from sglang_tracing.analyzer.analyses.requests import (TTFT_NOT_STREAMED, for_statistics, profiler_touched,
                                                       request_table, token_latencies, user_requests)
from sglang_tracing.analyzer.model import TraceModel
from sglang_tracing.analyzer.report import Plot, Report, Section, ms
from sglang_tracing.runtime.manifest import weights_of

DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4, "fp8": 1}


def dtype_bytes(model_config: dict | None) -> int:
    """Bytes per weight or activation element of a model config's ``torch_dtype`` (fp16 when unsaid)."""
    return DTYPE_BYTES.get(str((model_config or {}).get("torch_dtype", "float16")), 2)


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


def model_config(manifest: dict, override: str | None = None) -> dict | None:
    """The served model's config: ``override`` (a shipped architecture name or a config.json path),
    else the copy recorded in the manifest, else the model path's config.json if still there."""
    from sglang_tracing.models.builder import ARCHITECTURES, _config

    if override:
        if override in ARCHITECTURES:
            return _config(ARCHITECTURES[override])
        with open(override) as f:
            return json.load(f)
    if manifest.get("model_config"):
        return manifest["model_config"]
    path = (manifest.get("server_args") or {}).get("model_path")
    cfg_path = os.path.join(path, "config.json") if isinstance(path, str) else None
    if cfg_path and os.path.exists(cfg_path):
        with open(cfg_path) as f:
            return json.load(f)
    return None


def model_weight_bytes(cfg: dict | None) -> int | None:
    """Parameter bytes of a Llama-family config."""
    if not cfg:
        return None
    try:
        h, inter, layers, vocab = (cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"],
                                   cfg["vocab_size"])
        heads, kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    except KeyError:
        return None
    head_dim = h // heads
    per_layer = h * (heads * head_dim) + 2 * h * (kv * head_dim) + (heads * head_dim) * h + 3 * h * inter + 2 * h
    params = layers * per_layer + 2 * vocab * h + h
    return params * dtype_bytes(cfg)


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


def compute(model: TraceModel, which: str = "slowest", model_config_override: str | None = None) -> Story:
    """The request ``which`` selects (select_request) and what its phases ran, where, and on what."""
    spans = model.scan_spans()
    per_fwd = forward_gpu_time(spans, model.kernels)
    requests = request_table(spans, model.manifest, model.servers).join(request_gpu_time(spans, per_fwd), on="rid",
                                                                        how="left")
    story = Story(which, requests, select_request(requests, which), len(model.servers), weights_of(model.manifest))
    req = story.request
    if req is None and which not in ("first", "slowest", "p50"):
        raise UsageError(f"--request {which}: no complete request's rid starts with {which!r} "
                         f"({requests.height} requests seen); give a rid prefix, first, slowest or p50")
    if req is None:
        return story
    counters = model.counters
    if story.servers > 1:  # several trace dirs: this request's server, and only its GPU samples
        counters = counters.filter(pl.col("server") == req["server"])
        spans = spans.filter(pl.col("server") == req["server"])  # the forwards that shared its GPU
    mine = _forwards_of_request(spans, req["rid"])
    story.gpu_source = ", ".join(sorted(set(per_fwd["source"].drop_nulls().to_list()))) or "none"
    story.schedule = _schedule_of(spans, req.get("queued_end_ns"))
    story.prefill = _phase(model, spans, counters, mine.filter(is_prefill()), req, "prefill", with_ops=True)
    story.decode = _phase(model, spans, counters, mine.filter(pl.col("mode") == "decode"), req, "decode")
    story.tokens = token_latencies(requests.filter(pl.col("rid") == req["rid"]))
    story.trend = itl_trend(story.tokens)
    story.cache_inserts = model.scan_spans().filter(pl.col("name") == sc.CACHE_INSERT).select(pl.len()).collect().item()
    _add_setup(story, model, model_config_override)
    return story


def _add_setup(story: Story, model: TraceModel, model_config_override: str | None) -> None:
    """What the run ran on: model size, GPUs, profiles loaded, hardware sampling."""
    story.weight_bytes = model_weight_bytes(model_config(model.manifest, model_config_override))
    story.gpus = (model.manifest.get("gpu") or {}).get("devices") or []
    story.peak_bandwidth = peak_bandwidth(story.gpus[0]["name"]) if story.gpus else None
    story.loaded_kernels = model.kernels.height
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
    result = Phase(forwards, kernel_time(kernels).head(KERNELS_SHOWN), hardware, window_ms,
                   _others_inside(spans, window, req["rid"]))
    if with_ops:
        projected = project_nvtx(kernels, model.cpu_ops, model.nvtx)
        if projected.height and projected["op"].null_count() < projected.height:
            result.ops, result.layers = by_op(projected), by_layer(projected)
    return result


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


# ---- wording: the story as a report ----
def build_report(model: TraceModel, which: str = "slowest", model_config_override: str | None = None) -> Report:
    return describe(compute(model, which, model_config_override))


def describe(story: Story) -> Report:
    report = Report("story", "Execution story (experiment 1)")
    req = story.request
    if req is None:
        report.section("No complete request in this trace").add("requests seen", str(story.requests.height))
        return report
    _head(report.section(f"Request {req['rid']} (selected: {story.which})"), story)
    _processing(report.section("Request processing"), story)
    _prefill(report.section("Prefill"), story)
    _decode(report.section("Decode"), story)
    _result(report.section("Result processing"), story)
    _summary(report.section("Summary"), story)
    plot = itl_plot(story.tokens, req["rid"])
    if plot:
        report.plots.append(plot)
    return report


def _head(head: Section, story: Story) -> None:
    req = story.request
    if story.servers > 1:
        head.add("server", req["server"], "trace dir it was recorded in")
    if req.get("internal"):
        head.add("internal request", req["internal"], "not a user's request: left out of every statistic")
    if req.get("profiler_control"):
        inferred = req.get("profiler_control_inferred")
        head.add("our profiler control in flight", req["profiler_control"],
                 "ran while this request was in flight, so its latencies include it: left out of every statistic"
                 + (f" (inferred from {inferred})" if inferred else ""))
    head.add("prompt tokens", str(req["prompt_tokens"]), "tokenizer manager")
    head.add("cached tokens", str(req["cached_tokens"]), "SGLang meta_info")
    head.add("output tokens", str(req["output_tokens"]), "SGLang meta_info")
    head.add("weights", story.weights, "SGLang load_format; dummy: random weights, real timings")


def _processing(proc: Section, story: Story) -> None:
    req, sched = story.request, story.schedule
    proc.add("tokenization", ms(req["tokenize_ns"]), "span sglang.request.tokenize")
    policy = sched.get(sc.SCHED_POLICY) if sched else None
    proc.add(f"scheduling wait (policy {policy or '?'})", ms(req["queued_ns"]), "span sglang.request.queued")
    proc.add("cache lookup", ms(req["prefix_match_ns"]),
             f"matched {req['matched_tokens']} of {req['prompt_tokens']} tokens")
    kv = sched.get(sc.SCHED_KV_ALLOC_NS) if sched else None
    proc.add("KV allocation (admitting pass)", ms(kv), "schedule span, whole batch")
    cpu = [x for x in (req["tokenize_ns"], req["prefix_match_ns"], kv) if x is not None]
    proc.add("CPU prep total", ms(sum(cpu)) if cpu else None, "tokenize + lookup + KV allocation")


ARRIVAL_WORDS = {sc.RECEIVED_BY_KERNEL: "its first bytes in the kernel", sc.RECEIVED_BY_READ: "HTTP server's read",
                 sc.RECEIVED_BY_ASGI: "ASGI entry"}  # semconv.RECEIVED_BY values, in a report's words


def _prefill(prefill: Section, story: Story) -> None:
    req = story.request
    prefill.add("total", ms(req["prefill_ns"]), "first chunk launch -> first token")
    if req.get("ttft_source") == TTFT_NOT_STREAMED:
        prefill.add("TTFT (user-visible)", None, TTFT_NOT_STREAMED + f"; the response arrived after "
                    f"{ms(req['e2e_ns'])}")
    else:
        by = req.get("received_by")
        start = f"received ({ARRIVAL_WORDS.get(by, by)})" if by else (
            "received (HTTP layer)" if req.get("first_byte_ns") else "received")
        prefill.add("TTFT", ms(req["ttft_ns"]), f"{start} -> {req['ttft_source']}")
    prefill.add("time to first token computed", ms(req["ttft_compute_ns"]), "received -> first token in the scheduler")
    prefill.add("GPU time (this request's share)", ms(req.get("prefill_gpu_ns")),
                f"forward GPU time ({story.gpu_source}) split by tokens in each batch"
                + _longer_than_wall(req.get("prefill_gpu_ns"), req["prefill_ns"]))
    _layer_and_op_time(prefill, story.prefill)
    _kernel_breakdown(prefill, story.prefill, story.loaded_kernels)
    _hardware(prefill, story, story.prefill, "prefill")


def _decode(decode: Section, story: Story) -> None:
    req, trend = story.request, story.trend
    decode.add("total", ms(req["decode_ns"]), "first token -> last token")
    decode.add("average ITL", ms(req["mean_itl_ns"]), "span sglang.request.decode token times")
    decode.add("GPU time (this request's share)", ms(req.get("decode_gpu_ns")),
               f"forward GPU time ({story.gpu_source}) split evenly across each decode batch"
               + _longer_than_wall(req.get("decode_gpu_ns"), req["decode_ns"]))
    if trend:
        decode.add("ITL trend vs KV length", f"{trend['slope_ns_per_token'] / 1e3:+.3f} us per KV token",
                   f"linear fit over {trend['points']} tokens, r2={trend['r2']:.2f}")
    else:
        decode.add("ITL trend vs KV length", None, f"fewer than {MIN_TREND_TOKENS} decode tokens")
    _kernel_breakdown(decode, story.decode, story.loaded_kernels)
    _hardware(decode, story, story.decode, "decode")
    pre, dec = story.prefill.hardware_means, story.decode.hardware_means
    for metric in sorted(set(pre) & set(dec)):
        decode.add(f"shift prefill -> decode: {metric}", f"{pre[metric]:.1f} -> {dec[metric]:.1f}", "GPM/NVML means")


def _result(result: Section, story: Story) -> None:
    req = story.request
    result.add("detokenize (this request's share)", ms(req.get("detokenize_share_ns")),
               "detokenizer batches, split by batch size")
    result.add("detokenize window", ms(req["detokenize_ns"]), "first -> last detokenize call")
    result.add("cache inserts (whole trace)", str(story.cache_inserts), "span sglang.cache.insert")


def _summary(summary: Section, story: Story) -> None:
    req = story.request
    summary.add("end-to-end", ms(req["e2e_ns"]), "root span sglang.request")
    if req["decode_ns"] and req["output_tokens"] and req["output_tokens"] > 1:
        summary.add("decode tokens/s", f"{(req['output_tokens'] - 1) / (req['decode_ns'] / 1e9):.1f}", "")
    _decode_floor(summary, story)
    users, internal, touched = story.users, story.internal, story.touched
    all_done = users.filter(pl.col("complete"))
    summary.add("user requests in trace (complete / seen)", f"{all_done.height} / {users.height}",
                "internal requests (SGLang's warm-up, health checks, readiness probes) listed apart")
    summary.add("internal requests", str(internal.height), ", ".join(
        f"{n} {kind}" for kind, n in internal.group_by("internal").len().sort("internal").iter_rows()) or "none")
    summary.add("left out of statistics: our profiler control", str(touched.height),
                describe_requests(touched) or "no user request was in flight while our profiler control ran")
    cut = users.filter(~pl.col("complete"))
    if cut.height:
        summary.child("requests cut off (no complete record)").table = cut.select(
            "rid", *[c for c in ("received_ns", "prefill_ns", "decode_ns") if c in cut.columns])
    summary.child("user requests in the statistics").table = _request_rows(for_statistics(all_done), story.servers > 1)
    if touched.height:
        summary.child("user requests our profiler control ran during (not in any statistic)").table = (
            _request_rows(touched, story.servers > 1).insert_column(1, touched["profiler_control"]))
    if internal.height:
        summary.child("internal requests (not in any statistic)").table = _request_rows(internal).insert_column(
            1, internal["internal"])


def _decode_floor(summary: Section, story: Story) -> None:
    """Reading every weight once per decode step from HBM: the least time a step can take."""
    weights, bw, gpus = story.weight_bytes, story.peak_bandwidth, story.gpus
    if not (weights and bw):
        summary.add("decode floor (weights / HBM bandwidth)", None,
                    "no GPU in the manifest" if not gpus else "model config or GPU bandwidth unknown")
        return
    floor = weights / bw * 1e9
    summary.add("decode floor (weights / HBM bandwidth)", ms(floor),
                f"{weights / 1e9:.2f} GB over {bw / 1e12:.2f} TB/s ({gpus[0]['name']})")
    if story.request["mean_itl_ns"]:
        summary.add("measured ITL vs floor", f"{story.request['mean_itl_ns'] / floor:.2f}x", "")


def _hardware(section: Section, story: Story, phase: Phase, label: str) -> None:
    if phase.hardware.is_empty():
        section.add(f"hardware state ({label})", None, story.no_samples_why)
        return
    interval = story.sample_interval_ms
    caveat = (f"; the phase ({phase.window_ms:.0f} ms) is shorter than one sample interval, so the figure "
              f"also covers neighbouring work" if phase.window_ms < interval else "")
    if phase.others:
        caveat += (f"; GPU-wide samples: {phase.others} forward(s) of other requests ran inside this phase "
                   "and are in the figure")
    for row in phase.hardware.iter_rows(named=True):
        section.add(f"{label}: {row['metric']}", f"{row['mean']:.1f}",
                    f"{row['source'].upper()} mean of {row['samples']} samples at {interval} ms{caveat}")


def _longer_than_wall(gpu_ns, wall_ns) -> str:
    """A GPU share above the phase's wall time: forwards outside the phase are in it (seen on the H200:
    16 decode forwards for 16 tokens, the first launched 4.5 ms before the first token was recorded)."""
    if gpu_ns and wall_ns and gpu_ns > 1.1 * wall_ns:
        return ("; longer than the phase's wall time: every forward the request was batched in counts whole, "
                "and with overlap scheduling one starts before the phase's first token and one more runs "
                "after its last (a kernel-replaying profiler such as ncu lengthens each forward too)")
    return ""


def _request_rows(requests: pl.DataFrame, with_server: bool = False) -> pl.DataFrame:
    return requests.select(
        "rid", *(["server"] if with_server else []), "prompt_tokens", "cached_tokens", "output_tokens",
        (pl.col("ttft_ns") / 1e6).round(3).alias("ttft_ms"),
        (pl.col("mean_itl_ns") / 1e6).round(3).alias("mean_itl_ms"),
        (pl.col("e2e_ns") / 1e6).round(3).alias("e2e_ms"),
        (pl.col("gpu_ns") / 1e6).round(3).alias("gpu_ms"))


def _batch_note(forwards: pl.DataFrame) -> str:
    """Whose work a whole-forward figure holds: this request's alone, or its batch's."""
    shared = forwards.filter(pl.col("outsiders") > 0)
    if forwards.is_empty() or shared.is_empty():
        return f"{forwards.height} forward(s) that ran this request alone"
    return (f"{forwards.height} forward(s) that ran this request, {shared.height} of them batched with up to "
            f"{shared['outsiders'].max()} other request(s): whole-batch figures, not this request's share")


def _layer_and_op_time(section: Section, phase: Phase) -> None:
    """GPU time of the phase's kernels by NVTX op range and by layer (``--trace-level layer`` + nsys)."""
    if phase.ops is None:
        section.add("per-layer / per-op GPU time", None, "needs --trace-level layer ranges of eager forwards "
                    "and an nsys capture (kernels joined to the ranges they were launched in)")
        return
    section.child("GPU time by op (NVTX projection)").table = phase.ops
    if phase.layers.height:
        section.add("GPU time per layer", describe_layers(phase.layers),
                    f"kernels launched inside each layer range, of {_batch_note(phase.forwards)}")


def _kernel_breakdown(section: Section, phase: Phase, loaded: int) -> None:
    """Kernel time by name over the kernels the phase's forwards launched."""
    if phase.kernels.is_empty():
        why = ("no forward of this request recorded" if phase.forwards.is_empty()
               else "no kernels loaded (--nsys or --kineto)" if not loaded
               else f"none of the {loaded} loaded kernels ran in this request's forwards "
                    "(the profile covered other forwards)")
        section.add("kernel breakdown", None, why)
        return
    child = section.child("kernel breakdown")
    child.add("kernels of", _batch_note(phase.forwards), "launch -> forward span (NVTX span ids), else CUDA-event window")
    child.table = phase.kernels
