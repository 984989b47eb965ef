"""The execution story (experiment 1) in words: a run summary first, then the selected request's
milestones and phases, as the plan's "Expected Output Format" reads. Figures from story.compute."""
from __future__ import annotations

import polars as pl

from sglang_tracing import semconv as sc
from sglang_tracing.analyzer.analyses.kernels import describe_layers
from sglang_tracing.analyzer.analyses.profiler_control import describe_requests
from sglang_tracing.analyzer.analyses.requests import TTFT_NOT_STREAMED, for_statistics
from sglang_tracing.analyzer.analyses.story import MIN_TREND_TOKENS, Phase, Story, compute, itl_plot
from sglang_tracing.analyzer.analyses.story_figures import TREND_MIN_R2
from sglang_tracing.analyzer.model import TraceModel
from sglang_tracing.analyzer.report import Report, Section, ms

def build_report(model: TraceModel, which: str = "slowest", model_config_override: str | None = None,
                 profiled: TraceModel | None = None) -> Report:
    return describe(compute(model, which, model_config_override, profiled))


def describe(story: Story) -> Report:
    report = Report("story", "Execution story (experiment 1)")
    req = story.request
    _run(report.section("Run summary"), story)
    if req is None:
        report.section("No complete request in this trace").add("requests seen", str(story.requests.height))
        return report
    _head(report.section(f"Request {req['rid']} (selected: {story.which})"), story)
    _milestones(report.section("Timeline of the request"), story)
    _processing(report.section("Request processing"), story)
    _prefill(report.section("Prefill"), story)
    if story.profiled_dir is not None:
        _profiled(report.section("Prefill, from the profiled pass"), story)
    _decode(report.section("Decode"), story)
    _result(report.section("Result processing"), story)
    _summary(report.section("Summary"), story)
    plot = itl_plot(story.tokens, req["rid"])
    if plot:
        report.plots.append(plot)
    return report


def _run(run: Section, story: Story) -> None:
    """The plan's run summary: requests, TTFT / ITL percentiles, throughput, the model and its shape."""
    r, shape = story.run, story.shape
    run.add("requests (complete, in the statistics)", str(r.requests),
            "the user's requests; internal ones and those our profiler control ran during are left out")
    for what, values in (("TTFT", r.ttft_ns), ("ITL", r.itl_ns)):
        run.add(f"{what} p50 / p90 / p99", " / ".join(ms(v) or "n/a" for v in values.values())
                if any(v is not None for v in values.values()) else None,
                f"received -> {r.ttft_ends_at or 'first output'}" if what == "TTFT"
                else "every gap between output tokens")
    rate = r.output_tok_per_s
    run.add("throughput", f"{rate:.1f} output tokens/s" if rate else None,
            f"{r.output_tokens} output tokens, first request received -> last finished")
    if shape is not None:
        run.add("model", shape.name, "server args")
        dims = (shape.layers, shape.hidden, shape.heads, shape.kv_heads)
        run.add("shape", f"{shape.layers} layers, hidden {shape.hidden}, {shape.heads} heads "
                f"({shape.kv_heads} KV), {shape.dtype}" if all(dims) else None, "model config")
    run.add("per-request table", "requests.csv", "every request of the trace, one row each, beside this report")


def _milestones(section: Section, story: Story) -> None:
    """The plan's phase offsets: each stamp once, on the server's clock, from the request's arrival."""
    for m in story.milestones:
        section.add(m.label, None if m.offset_ns is None else f"+{m.offset_ns / 1e6:.1f} ms",
                    m.what if m.offset_ns is not None else f"{m.what}: not recorded for this request")


def _profiled(section: Section, story: Story) -> None:
    """Per-layer, per-op and kernel figures from the profiled pass (its own server, eager forwards)."""
    phase = story.profiled
    section.add("source", story.profiled_dir, "a profiled pass (experiment baseline's, or --profiled): layer "
                "ranges on eager forwards with a kernel profile; its first request, not the measured ones")
    if phase is None:
        section.add("profiled request", None, "no complete request in the profiled pass")
        return
    _host_time(section, phase)
    if phase.kernels.is_empty() and phase.ops is None:
        section.add("per-layer / per-op GPU time", None, "no GPU kernel in the profiled pass's Kineto trace "
                    "(a CPU run records CPU ops only)" if not story.gpus else
                    "none of the profiled kernels ran in this request's prefill forwards")
        return
    _layer_and_op_time(section, phase)
    _kernel_breakdown(section, phase, phase.kernels.height)
    _shares(section, phase)


def _host_time(section: Section, phase: Phase) -> None:
    """Host (CPU wall) time per layer and op from the profiled pass's layer ranges as its profile recorded
    them (Kineto user annotations, or NVTX ranges in an nsys export)."""
    if phase.host_layers is None or phase.host_layers.is_empty():
        section.add("per-layer host time", None, "no layer ranges inside this request's prefill forwards in the "
                    "profile (its window covered other forwards)")
        return
    section.add("per-layer host time", describe_layers(phase.host_layers),
                f"layer ranges as the profile recorded them (Kineto user annotations / NVTX), of "
                f"{_batch_note(phase.forwards)}")
    section.child("host time by op (layer ranges in the profile)").table = phase.host_ops


def _shares(section: Section, phase: Phase) -> None:
    s = phase.shares
    if s is None:
        return
    how = "op ranges" if phase.ops is not None else "kernel names"
    section.add("attention share of kernel time", f"{s.attention_pct:.1f}%", f"by {how}")
    section.add("GEMM share of kernel time", f"{s.gemm_pct:.1f}%", f"by {how} (projections)")


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
    prefill.add("time to first token computed", ms(req["ttft_compute_ns"]),
                "received -> the scheduler hands the first token to the detokenizer (TTFT ends after this)")
    prefill.add("GPU time (this request's share)", ms(req.get("prefill_gpu_ns")),
                f"forward GPU time ({story.gpu_source}) split by tokens in each batch"
                + _longer_than_wall(req.get("prefill_gpu_ns"), req["prefill_ns"]))
    _layer_and_op_time(prefill, story.prefill, story.profiled_dir)
    _kernel_breakdown(prefill, story.prefill, story.loaded_kernels)
    _shares(prefill, story.prefill)
    _hardware(prefill, story, story.prefill, "prefill")


def _decode(decode: Section, story: Story) -> None:
    req, trend = story.request, story.trend
    decode.add("total", ms(req["decode_ns"]), "first token -> last token handed to the detokenizer by the scheduler")
    if req.get("ttft_ns") is not None and req.get("e2e_ns") is not None:
        decode.add("as the client receives it", ms(req["e2e_ns"] - req["ttft_ns"]),
                   "TTFT's end -> complete: TTFT + this = end-to-end")
    decode.add("average ITL", ms(req["mean_itl_ns"]), "span sglang.request.decode token times")
    decode.add("GPU time (this request's share)", ms(req.get("decode_gpu_ns")),
               f"forward GPU time ({story.gpu_source}) split evenly across each decode batch"
               + _longer_than_wall(req.get("decode_gpu_ns"), req["decode_ns"]))
    if story.itl_marks is not None and story.itl_marks.height:
        decode.child("ITL at output tokens (KV length attended to)").table = story.itl_marks
    if trend:
        decode.add("ITL trend vs KV length", story.verdict,
                   f"linear fit over {trend['points']} tokens: {trend['slope_ns_per_token'] / 1e3:+.3f} us per KV "
                   f"token, r2={trend['r2']:.2f} (a trend needs r2 >= {TREND_MIN_R2})")
    else:
        decode.add("ITL trend vs KV length", None, f"fewer than {MIN_TREND_TOKENS} decode tokens")
    _kernel_breakdown(decode, story.decode, story.loaded_kernels)
    _shares(decode, story.decode)
    _hardware(decode, story, story.decode, "decode")
    pre, dec = story.prefill.hardware_means, story.decode.hardware_means
    for metric in sorted(set(pre) & set(dec), key=lambda m: HARDWARE_ORDER.get(m, 99)):
        label, fmt = HARDWARE_ROWS.get(metric, (metric, "{:.1f}"))
        decode.add(f"shift prefill -> decode: {label}", f"{fmt.format(_scaled(metric, pre[metric]))} -> "
                   f"{fmt.format(_scaled(metric, dec[metric]))}", "GPM/NVML means")


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
    summary.add("requests cut off (no complete record)", str(cut.height), "listed in requests.csv (complete = false)")
    summary.add("user requests in the statistics", str(for_statistics(all_done).height),
                "one row each in requests.csv")


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


HARDWARE_ROWS = {  # metric -> the plan's wording and format (percent, W, MHz, GB)
    sc.GPM_SM_UTIL: ("SM active", "{:.0f}%"), sc.GPM_SM_OCCUPANCY: ("SM occupancy", "{:.0f}%"),
    sc.GPM_TENSOR_UTIL: ("tensor cores active", "{:.0f}%"), sc.GPM_DRAM_BW_UTIL: ("HBM bandwidth", "{:.0f}%"),
    sc.NVML_POWER: ("power", "{:.0f} W"), sc.NVML_SM_CLOCK: ("SM clock", "{:.0f} MHz"),
    sc.NVML_MEM_USED: ("GPU memory used", "{:.1f} GB")}
HARDWARE_ORDER = {m: i for i, m in enumerate(HARDWARE_ROWS)}


def _scaled(metric: str, value: float) -> float:
    return value / 1e9 if metric == sc.NVML_MEM_USED else value


def _hardware(section: Section, story: Story, phase: Phase, label: str) -> None:
    if phase.hardware.is_empty():
        section.add(f"hardware state ({label})", None, story.no_samples_why if not story.samples else
                    f"none of the run's {story.samples} samples (one per {story.sample_interval_ms} ms) fell "
                    f"inside {phase.hardware_over}")
        return
    interval = story.sample_interval_ms
    caveat = (f"; the phase ({phase.window_ms:.0f} ms) is shorter than one sample interval, so the figure "
              f"also covers neighbouring work" if phase.window_ms is not None and phase.window_ms < interval else "")
    if phase.others:
        caveat += (f"; GPU-wide samples: {phase.others} forward(s) of other requests ran inside this phase "
                   "and are in the figure")
    over = "" if phase.hardware_over == "this request's phase" else f", over {phase.hardware_over}"
    rows = phase.hardware.sort(pl.col("metric").replace_strict(HARDWARE_ORDER, default=99))
    section.add(f"hardware state ({label})", f"{rows['samples'].max()} sample(s)",
                f"GPM / NVML means, one sample per {interval} ms{over}{caveat}")
    for row in rows.iter_rows(named=True):
        name, fmt = HARDWARE_ROWS.get(row["metric"], (row["metric"], "{:.1f}"))
        section.add(f"{label}: {name}", fmt.format(_scaled(row["metric"], row["mean"])),
                    f"{row['source'].upper()}, {row['samples']} samples")


def _longer_than_wall(gpu_ns, wall_ns) -> str:
    """A GPU share above the phase's wall time: forwards outside the phase are in it (seen on the H200:
    16 decode forwards for 16 tokens, the first launched 4.5 ms before the first token was recorded)."""
    if gpu_ns and wall_ns and gpu_ns > 1.1 * wall_ns:
        return ("; longer than the phase's wall time: every forward the request was batched in counts whole, "
                "and with overlap scheduling one starts before the phase's first token and one more runs "
                "after its last (a kernel-replaying profiler such as ncu lengthens each forward too)")
    return ""


def _batch_note(forwards: pl.DataFrame) -> str:
    """Whose work a whole-forward figure holds: this request's alone, or its batch's."""
    shared = forwards.filter(pl.col("outsiders") > 0)
    if forwards.is_empty() or shared.is_empty():
        return f"{forwards.height} forward(s) that ran this request alone"
    return (f"{forwards.height} forward(s) that ran this request, {shared.height} of them batched with up to "
            f"{shared['outsiders'].max()} other request(s): whole-batch figures, not this request's share")


def _layer_and_op_time(section: Section, phase: Phase, profiled_dir: str | None = None) -> None:
    """GPU time of the phase's kernels by NVTX op range and by layer (``--trace-level layer`` + nsys), the
    op with the most time marked as the hotspot."""
    if phase.ops is None:
        section.add("per-layer / per-op GPU time", None, "see the profiled pass below" if profiled_dir else
                    "needs --trace-level layer ranges of eager forwards and an nsys capture (kernels joined to "
                    "the ranges they were launched in); `experiment baseline`'s profiled pass adds the kernel "
                    "breakdown (Kineto)")
        return
    ops = phase.ops.with_columns(pl.when(pl.int_range(pl.len()) == 0).then(pl.lit("<- hotspot"))
                                 .otherwise(pl.lit("")).alias("hotspot"))  # by_op sorts longest first
    section.child("GPU time by op (NVTX projection)").table = ops
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
