"""Experiment 6, tensor-parallel scaling: what each TP size achieved, what its all-reduces cost on each
rank (waiting for the slower rank vs moving data), a projection to larger TP sizes, and advice built
only on cells whose figures are plausible."""
from __future__ import annotations

import dataclasses
import re

import polars as pl

from sglang_tracing.analyzer.analyses import collectives
from sglang_tracing.models.facts import dtype_bytes
from sglang_tracing.analyzer.loaders.tp_experiment import TpCell, TpInputs
from sglang_tracing.analyzer.report import Plot, Report, Section

NVLINK_GB_S_PER_LINK = 25  # per direction, NVLink 3 (A100) and 4 (H100/H200): 12 x 25 and 18 x 25 GB/s
PROJECTED_SIZES = (4, 8)


def ring_factor(n: int) -> float:
    """Bytes each rank sends per byte of the buffer in a ring all-reduce (nccl-tests' busbw factor)."""
    return 2 * (n - 1) / n


def nvlink_gb_s(topology: str | None) -> tuple[float | None, str]:
    """Per-direction NVLink bandwidth between the GPUs, from ``nvidia-smi topo -m`` (NV<links>)."""
    links = [int(n) for n in re.findall(r"\bNV(\d+)\b", topology or "")]
    if not links:
        return None, "no NVLink in the recorded topology"
    return min(links) * NVLINK_GB_S_PER_LINK, f"NV{min(links)} x {NVLINK_GB_S_PER_LINK} GB/s per direction"


# ---- per cell ----
def measured_forwards(cell: TpCell) -> pl.DataFrame:
    """Forwards (all ranks) that ran only the measured pass's requests, picked by rid, not by time."""
    rids = [q["rid"] for q in cell.result.get("requests", [])]
    if not rids:
        return cell.forwards.clear()
    return cell.forwards.filter(pl.col("rids").list.eval(pl.element().is_in(rids)).list.all())


def cell_figures(cell: TpCell) -> dict:
    """What a cell achieved, from its own requests (by rid) and rank 0's forwards."""
    r = cell.result
    reqs = r.get("requests", [])
    want_out = r.get("output_len")
    complete = sum(1 for q in reqs if want_out is None or q.get("completion_tokens") == want_out)
    mine = measured_forwards(cell).filter(pl.col("rank") == 0)
    decode = mine.filter(pl.col("mode") == "decode")
    reached = decode["batch"].max() if decode.height else None
    steady = decode.filter((pl.col("batch") == reached) & pl.col("gpu_start_ns").is_not_null())
    step = (steady["gpu_end_ns"] - steady["gpu_start_ns"]).median() if steady.height else None
    timed = mine.filter(pl.col("gpu_start_ns").is_not_null())
    gpu_total = (timed["gpu_end_ns"] - timed["gpu_start_ns"]).sum() if timed.height else None
    window = (timed["gpu_end_ns"].max() - timed["gpu_start_ns"].min()) if timed.height else None
    return {"tp": cell.tp, "requests_complete": complete, "requests_wanted": r.get("requested_requests", len(reqs)),
            "batch_wanted": r.get("concurrency"), "batch_reached": reached, "steady_steps": steady.height,
            "decode_step_gpu_ms": step / 1e6 if step is not None else None,
            "gpu_ms_total": gpu_total / 1e6 if gpu_total else None, "wall_ms": r.get("wall_ns", 0) / 1e6,
            "gpu_busy": gpu_total / window if gpu_total and window else None}


def scaling(table: pl.DataFrame, figures: pl.DataFrame) -> pl.DataFrame:
    base = table.filter(pl.col("tp") == table["tp"].min()).row(0, named=True)
    return table.sort("tp").select(
        "tp", pl.col("ttft_ms").round(3), pl.col("itl_ms").round(3), pl.col("output_tok_per_s").round(1),
        (pl.col("output_tok_per_s") / (base["output_tok_per_s"] * pl.col("tp") / base["tp"]) * 100).round(1)
        .alias("scaling_efficiency_pct"),
        (base["itl_ms"] / pl.col("itl_ms")).round(2).alias("itl_speedup"),
    ).join(figures.select("tp", "batch_wanted", "batch_reached", "decode_step_gpu_ms", "requests_complete",
                          "requests_wanted"), on="tp", how="left")


def plausibility(row: dict, fig: dict) -> list[str]:
    """Why a cell's figures cannot be taken at face value (empty: none found)."""
    flags = []
    if row["scaling_efficiency_pct"] is not None and row["scaling_efficiency_pct"] > 100 and row["tp"] > 1:
        flags.append(f"scaling efficiency {row['scaling_efficiency_pct']:.0f}% > 100%: the smaller TP cell was "
                     "slowed by something else (warm-up, KV pool, batch reached)")
    if fig["requests_complete"] < (fig["requests_wanted"] or 0):
        flags.append(f"only {fig['requests_complete']} of {fig['requests_wanted']} requests completed")
    if fig["batch_wanted"] and fig["batch_reached"] is not None and fig["batch_reached"] < fig["batch_wanted"]:
        flags.append(f"decode batch reached {fig['batch_reached']}, not the {fig['batch_wanted']} asked for")
    if fig["batch_reached"] is None:
        flags.append("no decode forward of this cell's requests in its trace")
    if fig["gpu_ms_total"] and fig["wall_ms"] and fig["gpu_ms_total"] > fig["wall_ms"] * 1.01:
        flags.append(f"GPU time {fig['gpu_ms_total']:.0f} ms > wall time {fig['wall_ms']:.0f} ms")
    if fig["decode_step_gpu_ms"] and row["itl_ms"] and fig["decode_step_gpu_ms"] > row["itl_ms"] * 1.05:
        flags.append(f"decode step GPU time {fig['decode_step_gpu_ms']:.2f} ms > client ITL {row['itl_ms']:.2f} ms")
    return flags


# ---- all-reduce per rank ----
@dataclasses.dataclass
class AllReduce:
    """One TP size's all-reduces in SGLang's profile pass (the pass after the measured one), per rank."""
    calls: pl.DataFrame  # every call: rank, family, times, transfer_ns, wait_ns, forward, mode, tokens
    source: str  # where they were found: GPU kernels or CPU ops
    problem: str | None  # why waiting was not split from transfer (None: it was)
    summary: pl.DataFrame  # per rank, mode and implementation (collectives.per_rank_summary), per layer if known
    families: list[str]  # the implementations seen
    first_call: pl.DataFrame  # per rank, its waiting and the share of it in a forward's first call
    lag_profile: pl.DataFrame  # per rank, CPU launch lag behind the earliest rank (launch_lag), profile pass
    lag_measured: pl.DataFrame  # the same over the measured pass
    profile_busy: dict[int, float | None]  # rank -> share of the profile pass with a kernel running
    skew_profile: pl.DataFrame  # per rank and mode, forward time beyond the quickest rank's (forward_skew)
    skew_measured: pl.DataFrame  # the same over the measured pass


def allreduce(cell: TpCell, model_config: dict | None) -> AllReduce | None:
    """Calls of the profile pass per rank, split into waiting and transfer, joined to forwards."""
    calls, source = collectives.per_rank_calls(cell.profile_kernels, cell.profile_ops)
    if calls.is_empty():
        return None
    calls, problem = collectives.split_wait(calls)
    clock = "gpu" if source == "GPU kernels" else "cpu"
    calls = collectives.assign_forwards(calls, cell.forwards, clock)
    per_token = (model_config or {}).get("hidden_size")
    per_token = per_token * dtype_bytes(model_config) if per_token else None
    summary = collectives.per_rank_summary(calls, per_token, cell.tp)
    profiled = cell.forwards.filter(pl.col("forward").is_in(calls["forward"].drop_nulls().unique().implode()))
    return AllReduce(calls, source, problem, _per_layer(summary, (model_config or {}).get("num_hidden_layers")),
                     sorted(set(calls["family"].to_list())), collectives.first_call_wait_share(calls),
                     launch_lag(profiled), launch_lag(measured_forwards(cell)),
                     {r: collectives.busy_share(k) for r, k in sorted(cell.profile_kernels.items())},
                     collectives.forward_skew(profiled), collectives.forward_skew(measured_forwards(cell)))


def _per_layer(summary: pl.DataFrame, layers: int | None) -> pl.DataFrame:
    """The summary's times per forward also per layer (us), where the model's layer count is known."""
    if not layers:
        return summary
    return summary.with_columns((pl.col("ms_per_forward") / layers * 1e3).round(1).alias("us_per_layer"),
                                (pl.col("wait_ms_per_forward") / layers * 1e3).round(1).alias("wait_us_per_layer"),
                                (pl.col("transfer_ms_per_forward") / layers * 1e3).round(1)
                                .alias("transfer_us_per_layer"))


def launch_lag(forwards: pl.DataFrame) -> pl.DataFrame:
    """Per rank, the median time by which its CPU starts a forward after the earliest rank starts the same
    forward (host clock, shared by the ranks of one host)."""
    if forwards.is_empty():
        return pl.DataFrame()
    return (forwards.with_columns(lag=pl.col("cpu_start_ns") - pl.col("cpu_start_ns").min().over("forward"))
            .group_by("rank").agg(cpu_lag_us=pl.col("lag").median() / 1e3).sort("rank"))


# ---- projection ----
@dataclasses.dataclass
class Fit:
    """The model behind the projection, through what TP=1 and TP=2 measured: a decode step's compute is
    fixed_ms + split_ms / n, each all-reduce latency_ms + msg_bytes x 2(n-1)/n over the NVLink bandwidth."""
    step1_ms: float  # TP=1's decode step (GPU)
    compute2_ms: float  # TP=2's decode step less its all-reduce transfers and waiting
    fixed_ms: float
    split_ms: float
    calls: float  # all-reduces per forward (TP=2, decode, rank 0)
    msg_bytes: float  # their median message
    latency_ms: float  # per all-reduce, beyond moving its bytes
    link_gb_s: float
    wait_ms: float  # launch-skew wait a forward of TP=2's measured pass (rank 0), kept at every size
    overhead_ms: float  # TP=2's ITL beyond its GPU step: CPU work not hidden by the GPU, kept at every size
    layers: int | None  # the model's hidden layers (for the naive projection)

    @property
    def split_is_negative(self) -> bool:
        """TP=2's compute did not shrink as a split predicts: the projection is unreliable."""
        return self.fixed_ms < 0 or self.split_ms < 0

    def step(self, n: int) -> float:
        bw = self.link_gb_s * 1e9
        return (self.fixed_ms + self.split_ms / n
                + self.calls * (self.latency_ms + self.msg_bytes * ring_factor(n) / bw * 1e3) + self.wait_ms)

    def naive_step(self, n: int) -> float | None:
        """From TP=1 alone: a perfect split and bandwidth-only all-reduces (None without the layer count)."""
        if not self.layers:
            return None
        bw = self.link_gb_s * 1e9
        return self.step1_ms / n + (2 * self.layers + 1) * self.msg_bytes * ring_factor(n) / bw * 1e3


@dataclasses.dataclass
class Projection:
    table: pl.DataFrame | None  # per TP size, measured or projected: decode step, ITL, throughput, naive ITL
    fit: Fit | None  # None: nothing projected
    naive_error_pct: float | None = None  # the naive projection's ITL error against TP=2's measured ITL
    missing: str | None = None  # why nothing was projected


def projection(figs: dict[int, dict], table: pl.DataFrame, ar2: AllReduce | None, model_config: dict | None,
               link_gb_s: float | None) -> Projection:
    """Decode step, ITL and throughput at TP=4 and 8 from what TP=1 and TP=2 measured, and the error of the
    same projection made from TP=1 alone (checked against the measured TP=2)."""
    if 1 not in figs or 2 not in figs or ar2 is None:
        return Projection(None, None, missing="needs measured TP=1 and TP=2 cells with an all-reduce profile")
    s1, s2 = figs[1]["decode_step_gpu_ms"], figs[2]["decode_step_gpu_ms"]
    if not (s1 and s2) or figs[1]["batch_reached"] != figs[2]["batch_reached"] or not link_gb_s:
        return Projection(None, None, missing="needs the same decode batch at TP=1 and TP=2, GPU step times and an "
                                              "NVLink bandwidth")
    dec = ar2.summary.filter((pl.col("mode") == "decode") & (pl.col("rank") == 0))
    if dec.is_empty() or dec["median_msg_bytes"][0] is None:
        return Projection(None, None, missing="no decode all-reduce on rank 0 in the TP=2 profile")
    if dec.height > 1:
        return Projection(None, None, missing="decode all-reduces of TP=2 used several implementations; not modelled")
    row = {r["tp"]: r for r in table.iter_rows(named=True)}
    fit = _fit(s1, s2, dec.row(0, named=True), ar2.skew_measured, row[2]["itl_ms"], model_config, link_gb_s)
    return Projection(_projected(fit, figs, row), fit, _naive_error_pct(fit, row))


def _fit(s1: float, s2: float, dec: dict, skew: pl.DataFrame, itl2: float, model_config: dict | None,
         link_gb_s: float) -> Fit:
    """``dec``: TP=2's decode all-reduces on rank 0 (per_rank_summary row); ``skew``: its measured pass's."""
    calls, msg = dec["calls_per_forward"], dec["median_msg_bytes"]
    per_call_ms = dec["transfer_ms_per_forward"] / calls
    skew = skew.filter((pl.col("mode") == "decode") & (pl.col("rank") == 0)) if skew.height else skew
    wait_ms = skew["median_excess_us"][0] / 1e3 if skew.height else dec["wait_ms_per_forward"]
    latency_ms = max(per_call_ms - msg * ring_factor(2) / (link_gb_s * 1e9) * 1e3, 0.0)
    compute2 = s2 - dec["transfer_ms_per_forward"] - wait_ms
    split = 2 * (s1 - compute2)  # compute(n) = fixed + split / n, through (1, s1) and (2, compute2)
    return Fit(s1, compute2, s1 - split, split, calls, msg, latency_ms, link_gb_s, wait_ms, itl2 - s2,
               (model_config or {}).get("num_hidden_layers"))


def _projected(fit: Fit, figs: dict[int, dict], row: dict[int, dict]) -> pl.DataFrame:
    """Measured sizes as measured, the others from the fit; throughput scales with 1/ITL at the same batch."""
    rows = []
    for n in (1, 2, *PROJECTED_SIZES):
        measured = n in row
        itl = row[n]["itl_ms"] if measured else fit.step(n) + fit.overhead_ms
        naive = fit.naive_step(n)
        rows.append({"tp": n, "kind": "measured" if measured else "projection",
                     "decode_step_gpu_ms": round(figs[n]["decode_step_gpu_ms"] if measured else fit.step(n), 3),
                     "itl_ms": round(itl, 3),
                     "output_tok_per_s": round(row[n]["output_tok_per_s"] if measured
                                               else row[2]["output_tok_per_s"] * row[2]["itl_ms"] / itl, 1),
                     "naive_itl_ms (TP=1 alone)": round(naive + row[1]["itl_ms"] - fit.step1_ms, 3)
                     if naive is not None else None})
    return pl.DataFrame(rows)


def _naive_error_pct(fit: Fit, row: dict[int, dict]) -> float | None:
    naive2 = fit.naive_step(2)
    naive_itl2 = naive2 + (row[1]["itl_ms"] - fit.step1_ms) if naive2 is not None else None
    return (naive_itl2 / row[2]["itl_ms"] - 1) * 100 if naive_itl2 else None


# ---- computing: all cells together ----
@dataclasses.dataclass
class TpScaling:
    """Every figure of the TP-scaling analysis."""
    topology: str | None  # nvidia-smi topo -m, recorded when the cells ran
    figures: dict[int, dict]  # TP size -> what its cell achieved (cell_figures)
    table: pl.DataFrame  # one row per TP size (scaling)
    flags: dict[int, list[str]]  # TP size -> why its figures cannot be taken at face value (plausibility)
    link_gb_s: float | None  # NVLink bandwidth per direction (nvlink_gb_s)
    link_why: str  # where it comes from, or why it is unknown
    allreduce: dict[int, AllReduce | None]  # TP size > 1 -> its all-reduces (None: no collective profiled)
    layers: int | None  # the model's hidden layers
    projection: Projection

    @property
    def plausible(self) -> pl.DataFrame:
        """The rows of ``table`` no flag was raised for: the only ones advice is built on."""
        return self.table.filter(pl.col("tp").is_in([tp for tp in self.figures if not self.flags[tp]]))

    def profile_slowed(self, tp: int) -> bool:
        """The profile pass kept a GPU clearly less busy than the measured pass did: the profiler made the
        CPU launch forwards late, so its waits are launch delays, not the measured pass's."""
        measured = self.figures[tp]["gpu_busy"]
        return any(b is not None and measured and b < measured - 0.15 for b in self.allreduce[tp].profile_busy.values())


def compute(inputs: TpInputs) -> TpScaling | None:
    """None when no cell was recorded."""
    if inputs.table.is_empty() or not inputs.cells:
        return None
    figs = {tp: cell_figures(c) for tp, c in inputs.cells.items()}
    table = scaling(inputs.table, pl.DataFrame(list(figs.values())))
    flags = {r["tp"]: plausibility(r, figs[r["tp"]]) for r in table.iter_rows(named=True)}
    link_gb_s, link_why = nvlink_gb_s(inputs.topology)
    ar = {tp: allreduce(c, inputs.model_config) for tp, c in inputs.cells.items() if tp > 1}
    usable = {tp: f for tp, f in figs.items() if not flags[tp]}
    return TpScaling(inputs.topology, figs, table, flags, link_gb_s, link_why, ar,
                     (inputs.model_config or {}).get("num_hidden_layers"),
                     projection(usable, table, ar.get(2), inputs.model_config, link_gb_s))


# ---- wording: the analysis as a report ----
def build_report(inputs: TpInputs) -> Report:
    return describe(compute(inputs))


def describe(result: TpScaling | None) -> Report:
    report = Report("tp_scaling", "Tensor-parallel scaling (experiment 6)")
    if result is None:
        report.section("No cells recorded").add("cells", "0")
        return report
    report.section("Topology").add("nvidia-smi topo -m", (result.topology or "").strip()[:2000] or None,
                                   "recorded when the cells ran")
    _scaling(report.section("Scaling"), result)
    for tp in sorted(result.allreduce):
        _allreduce(report.section(f"All-reduce at TP={tp}, per rank (SGLang's profiler, pass after the measured one)"),
                   tp, result)
    _projection(report.section("Projection to larger TP sizes (a model, not a measurement)"), result.projection)
    _recommendations(report.section("Recommendations (computed)"), result)
    report.plots.append(throughput_plot(result.table, result.projection.table))
    return report


def _scaling(sec: Section, result: TpScaling) -> None:
    sec.table = result.table
    for tp, why in result.flags.items():
        for w in why:
            sec.add(f"TP={tp}: implausible", w, "not used for advice or the projection")


def _projection(sec: Section, proj: Projection) -> None:
    sec.table = proj.table
    for note in _projection_notes(proj):
        sec.add("projection", note)


def _projection_notes(proj: Projection) -> list[str]:
    f = proj.fit
    if f is None:
        return [proj.missing]
    notes = [f"model: compute = {f.fixed_ms:.3f} ms fixed + {f.split_ms:.3f} ms / TP (through TP=1's {f.step1_ms:.3f} "
             f"ms step and TP=2's {f.compute2_ms:.3f} ms of compute); each all-reduce = {f.latency_ms * 1e3:.1f} us "
             f"latency + {f.msg_bytes / 1e3:.0f} kB x 2(n-1)/n over {f.link_gb_s:.0f} GB/s, {f.calls:.0f} per forward; "
             f"the launch-skew wait of TP=2's measured pass ({f.wait_ms:.3f} ms a forward on rank 0) kept; CPU time "
             f"beyond the GPU step ({f.overhead_ms:.3f} ms) kept; throughput scales with 1/ITL at the same batch"]
    if proj.naive_error_pct is not None:
        notes.append(f"error of the naive projection (TP=1 alone: perfect split, bandwidth-only all-reduces) "
                     f"against the measured TP=2 ITL: {proj.naive_error_pct:+.1f}%")
    if f.split_is_negative:
        notes.append("the fitted compute split is negative: TP=2 compute did not shrink as a split predicts; "
                     "treat the projection as unreliable")
    return notes


def _recommendations(rec: Section, result: TpScaling) -> None:
    good = result.plausible
    if good.is_empty():
        rec.add("advice", None, "no cell passed the plausibility checks")
    for label, text in recommendations(good):
        rec.add(label, text)
    if len(good) < len(result.table):
        rec.add("left out", ", ".join(f"TP={tp}" for tp, why in result.flags.items() if why),
                "implausible cells (see Scaling)")


def throughput_plot(table: pl.DataFrame, projection: pl.DataFrame | None) -> Plot:
    """Output throughput per TP size: measured, linear from the smallest size, and projected sizes."""
    base = table.row(0, named=True)
    sizes = sorted(set(table["tp"].to_list()) | set(projection["tp"].to_list() if projection is not None else []))
    frames = {"measured": table.select("tp", "output_tok_per_s"),
              "linear": pl.DataFrame({"tp": sizes, "output_tok_per_s": [base["output_tok_per_s"] * t / base["tp"]
                                                                        for t in sizes]})}
    if projection is not None:
        frames["projection"] = projection.filter(pl.col("kind") == "projection").select("tp", "output_tok_per_s")
    return Plot("tp_scaling.png", "tp_scaling", frames, {"x": "TP size", "y": "output tok/s"})


def _allreduce(sec: Section, tp: int, result: TpScaling) -> None:
    a = result.allreduce[tp]
    if a is None:
        sec.add("all-reduce", None, "no collective in the rank profiles (no profile recorded, or profiler "
                                    "unavailable)")
        return
    sec.add("found in", f"{a.source}: {', '.join(a.families)}")
    if a.problem:
        sec.add("wait vs transfer", None, a.problem)
    sec.table = a.summary.with_columns(pl.col(pl.Float64).round(3))
    sec.add("bus bandwidth reference", f"{result.link_gb_s:.0f} GB/s" if result.link_gb_s else None, result.link_why)
    if result.layers:
        sec.add("per layer", f"{result.layers} layers: time per forward / layers (2 all-reduces a layer plus the "
                             "embedding's once a forward)")
    _busy(sec, a.profile_busy, result.figures[tp]["gpu_busy"])
    _waits(sec, a)
    if result.profile_slowed(tp):
        busy, measured_busy = a.profile_busy, result.figures[tp]["gpu_busy"]
        sec.add("reading the waits", f"the profile pass kept the GPUs busy {min(busy.values()) * 100:.0f}-"
                f"{max(busy.values()) * 100:.0f}% of the time against {measured_busy * 100:.0f}% in the "
                "measured pass: under the profiler the CPU launches forwards late, so each rank's launch "
                "delay becomes the other's wait. Take transfer times from the profile and waiting from the "
                "measured pass (CUDA events, no profiler).")


def _busy(sec: Section, busy: dict[int, float | None], measured_busy: float | None) -> None:
    sec.add("GPU busy during the profile pass", ", ".join(f"rank {r}: {b * 100:.0f}%" for r, b in busy.items()
                                                          if b is not None) or None,
            "kernel time over the pass's window; the measured pass (rank 0, CUDA events): "
            + (f"{measured_busy * 100:.0f}%" if measured_busy else "not measured"))


def _waits(sec: Section, a: AllReduce) -> None:
    for r in a.first_call.iter_rows(named=True):
        sec.add(f"rank {r['rank']}: waiting in the profile pass",
                f"{r['wait_ms']:.2f} ms, {r['first_call_share_pct'] or 0:.0f}% of it in the first all-reduce "
                "of a forward", "a rank waits when another reaches the collective later")
    for label, lag in (("profile", a.lag_profile), ("measured", a.lag_measured)):
        for r in lag.iter_rows(named=True):
            sec.add(f"rank {r['rank']}: CPU starts a forward after the earliest rank ({label} pass, median)",
                    f"{r['cpu_lag_us']:.0f} us", "host clock")
    _skew_figures(sec, "profile pass", a.skew_profile)
    _skew_figures(sec, "measured pass", a.skew_measured)


def _skew_figures(sec: Section, label: str, skew: pl.DataFrame) -> None:
    for r in skew.iter_rows(named=True):
        sec.add(f"rank {r['rank']}, {r['mode']}: forward longer than the quickest rank's ({label})",
                f"median {r['median_excess_us']:.1f} us, mean {r['mean_excess_us']:.1f} us over {r['forwards']} "
                f"forwards of {r['median_forward_ms']:.3f} ms", "CUDA-event durations, no clock shared between ranks")


def recommendations(table: pl.DataFrame) -> list[tuple[str, str]]:
    if table.is_empty():
        return []
    best_tput = table.sort("output_tok_per_s", descending=True).row(0, named=True)
    best_itl = table.sort("itl_ms").row(0, named=True)
    out = [("throughput", f"highest output throughput at TP={best_tput['tp']} ({best_tput['output_tok_per_s']:.0f} tok/s)"),
           ("latency", f"lowest inter-token latency at TP={best_itl['tp']} ({best_itl['itl_ms']:.2f} ms)")]
    poor = table.filter((pl.col("tp") > 1) & (pl.col("scaling_efficiency_pct") < 70))
    if poor.height:
        tps = ", ".join(map(str, poor["tp"].to_list()))
        out.append(("efficiency", f"TP={tps} below 70% scaling efficiency: communication or too little work per "
                                  "rank; prefer data parallelism (more replicas) for throughput there"))
    elif table.height > 1:
        out.append(("efficiency", "every TP size keeps >= 70% scaling efficiency"))
    return out
