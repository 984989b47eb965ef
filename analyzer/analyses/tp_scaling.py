"""Experiment 6 as a report: all cells together (compute) and in words (describe): scaling, the
all-reduces per rank, the projection and advice built only on plausible cells."""
from __future__ import annotations

import dataclasses
import re

import polars as pl

from sglang_tracing.analyzer.analyses.tp_projection import Projection, projection
from sglang_tracing.analyzer.analyses.tp_cells import (AllReduce, allreduce, cell_figures, nvlink_gb_s,
                                                      plausibility, scaling)
from sglang_tracing.analyzer.loaders.tp_experiment import TpInputs
from sglang_tracing.analyzer.report import Plot, Report, Section


ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # nvidia-smi underlines its header row


def topology_table(text: str | None) -> pl.DataFrame | None:
    """``nvidia-smi topo -m``'s matrix as a frame (one row per GPU, the header's columns); None when the
    text holds no matrix (a CPU run's note)."""
    lines = [ln for ln in ANSI_ESCAPE.sub("", text or "").splitlines() if ln.strip()]
    if not lines or not lines[0].startswith("\t"):
        return None
    header = [c.strip() for c in lines[0].strip("\t").split("\t")]
    rows = []
    for ln in lines[1:]:
        cells = [c.strip() for c in ln.split("\t")]
        if not cells[0].startswith(("GPU", "NIC")):
            break
        cells = cells[: len(header) + 1] + [""] * (len(header) + 1 - len(cells))
        rows.append(dict(zip(["device", *header], cells)))
    return pl.DataFrame(rows) if rows else None


def integral(frame: pl.DataFrame) -> pl.DataFrame:
    """Float columns whose every value is a whole number, as integers (a byte count reads 262144, not 262144.0)."""
    whole = [c for c, t in frame.schema.items() if t.is_float() and frame[c].drop_nulls().len()
             and (frame[c].drop_nulls() % 1 == 0).all()]
    return frame.with_columns(pl.col(c).cast(pl.Int64) for c in whole)


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
    topology_rows: pl.DataFrame | None = None  # topology_table of ``topology``

    @property
    def allreduce_us_per_layer(self) -> dict[int, float | None]:
        """TP size -> all-reduce time a decode forward spends per layer on rank 0 (us; None: not profiled)."""
        out = {}
        for tp, a in sorted(self.allreduce.items()):
            row = (a.summary.filter((pl.col("rank") == 0) & (pl.col("mode") == "decode"))
                   if a is not None and "us_per_layer" in a.summary.columns else pl.DataFrame())
            out[tp] = float(row["us_per_layer"].sum()) if row.height else None
        return out

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
    topology = ANSI_ESCAPE.sub("", inputs.topology) if inputs.topology else None
    return TpScaling(topology, figs, table, flags, link_gb_s, link_why, ar,
                     (inputs.model_config or {}).get("num_hidden_layers"),
                     projection(usable, table, ar.get(2), inputs.model_config, link_gb_s), topology_table(topology))


# ---- wording: the analysis as a report ----
def build_report(inputs: TpInputs) -> Report:
    return describe(compute(inputs))


def describe(result: TpScaling | None) -> Report:
    report = Report("tp_scaling", "Tensor-parallel scaling (experiment 6)")
    if result is None:
        report.section("No cells recorded").add("cells", "0")
        return report
    topo = report.section("Topology")
    if result.topology_rows is not None:
        topo.add("nvidia-smi topo -m", f"{result.topology_rows.height} GPUs", "recorded when the cells ran; "
                 "NV# = a bonded set of # NVLinks, X = self")
        topo.table = result.topology_rows
    else:
        topo.add("topology", (result.topology or "").strip()[:2000] or None, "recorded when the cells ran")
    _scaling(report.section("Scaling"), result)
    for tp in sorted(result.allreduce):
        _allreduce(report.section(f"All-reduce at TP={tp}, per rank (SGLang's profiler, pass after the measured one)"),
                   tp, result)
    _projection(report.section("Projection to larger TP sizes (a model, not a measurement)"), result.projection)
    _recommendations(report.section("Recommendations (computed)"), result)
    report.plots.append(throughput_plot(result.table, result.projection.table))
    return report


def _scaling(sec: Section, result: TpScaling) -> None:
    sec.table = integral(result.table)
    per_layer = result.allreduce_us_per_layer
    if per_layer:
        sec.add("all-reduce per layer (decode, rank 0)", ", ".join(
            f"TP={tp}: {us / 1e3:.3f} ms" if us is not None else f"TP={tp}: not profiled"
            for tp, us in per_layer.items()), "SGLang's profiler, pass after the measured one; TP=1 has none")
    for tp, why in result.flags.items():
        for w in why:
            sec.add(f"TP={tp}: implausible", w, "not used for advice or the projection")


def _projection(sec: Section, proj: Projection) -> None:
    sec.table = integral(proj.table) if proj.table is not None else None
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
    sec.table = integral(a.summary.with_columns(pl.col(pl.Float64).round(3)))
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
