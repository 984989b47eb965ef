"""What the CLI calls: load a trace with its extra sources, build reports, render them."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from sglang_tracing.analyzer.loaders.trace_dir import load_trace_dirs
from sglang_tracing.analyzer.model import Loaded, Source, TraceModel, profiles_only
from sglang_tracing.analyzer.report import Section
from sglang_tracing.errors import TraceError, UsageError

REPORTS = ("story", "radix", "timeline", "attention")


def _dirs(trace_dir: str | list[str] | None) -> list[str]:
    return [trace_dir_of(d) for d in ([trace_dir] if isinstance(trace_dir, str) else list(trace_dir or []))]


def trace_dir_of(path: str) -> str:
    """``path`` itself, or the one trace dir inside an experiment folder (``sglang-trace experiment --out``);
    an experiment of several cells is a UsageError that lists the trace dirs to choose from."""
    p = Path(path)
    if (p / "manifest.json").exists() or not (p / "experiment.json").exists():
        return path
    found = sorted(str(m.parent) for m in p.glob("*/trace/manifest.json") if not _profiled_pass(m.parent.parent))
    if len(found) == 1:
        return found[0]
    if not found:
        raise UsageError(f"{path} is an experiment folder with no recorded trace yet")
    raise UsageError(f"{path} is an experiment folder of {len(found)} trace dirs; give one of them "
                     f"(or several, with --out, to merge): {' '.join(found)}")


def _profiled_pass(cell: Path) -> bool:
    """A baseline experiment's profiled pass: its figures reach the story through the measured cell."""
    result = cell / "result.json"
    return result.exists() and "profiled_steps" in json.loads(result.read_text())


def load(trace_dir: str | list[str] | None, nsys: str | None = None, kineto: str | None = None,
         ncu: str | None = None) -> TraceModel:
    """One trace dir, several (merged, a ``server`` column tells them apart), or profiler files alone."""
    dirs = _dirs(trace_dir)
    if not dirs and not (nsys or kineto or ncu):
        raise UsageError("give a trace dir, or at least one of --nsys, --kineto, --ncu")
    if len(dirs) > 1 and (nsys or kineto or ncu):
        raise UsageError("--nsys, --kineto and --ncu go with one trace dir, not several merged")
    model = load_trace_dirs(dirs) if dirs else profiles_only()
    trace_dir = dirs[0] if len(dirs) == 1 else None
    if kineto is None and nsys is None and trace_dir and any(Path(trace_dir).glob("kineto-*.json*")):
        kineto = trace_dir  # what --profile-steps wrote next to the spans (nsys, when given, has the kernels)
    if ncu:
        from sglang_tracing.analyzer.loaders import ncu as ncu_loader

        metrics, rules = ncu_loader.read_profile(ncu)
        model = model.with_loaded(Loaded({"ncu": metrics, "ncu_rules": rules}, None))
    if nsys:
        from sglang_tracing.analyzer.loaders import nsys as nsys_loader
        from sglang_tracing.analyzer.loaders import nsys_stats

        if nsys_stats.looks_like_stats(nsys):
            tables = nsys_stats.read_all(nsys)
            source = Source("nsys_stats", nsys, "none (totals only)", counts={"tables": len(tables)})
            model = model.with_loaded(Loaded({}, source), nsys_stats=tables)
        else:
            model = model.with_loaded(nsys_loader.load(nsys, model.spans))
    if kineto:
        from sglang_tracing.analyzer.loaders import kineto as kineto_loader

        model = model.with_loaded(*kineto_loader.load(kineto))
    return model


def build_reports(model: TraceModel, names: list[str], request: str = "slowest", model_config: str | None = None,
                  profiled: TraceModel | None = None):
    from sglang_tracing.analyzer.analyses import attention, radix, recording, servers, story_report, timeline

    builders = {"story": lambda: story_report.build_report(model, request, model_config, profiled),
                "radix": lambda: radix.build_report(model),
                "timeline": lambda: timeline.build_report(model),
                "attention": lambda: attention.build_report(model)}
    reports = [builders[n]() for n in names]
    if servers.merged(model):
        servers.add_to(reports, servers.compute(model, set(names)))
    recording.add_to_reports(reports, model)
    if model.cut_files:
        for report in reports:
            report.sections.insert(0, cut_lines_section(model.cut_files))
    return reports


def cut_lines_section(cut_files: list[str]) -> Section:
    """Span files whose last line was cut off (a writer killed mid-line): what the reports do not hold."""
    sec = Section("Sources: span lines not read")
    for path in cut_files:
        sec.add("last line cut off", path, "its writer was killed mid-line; the spans of that line are not "
                                           "in this report")
    return sec


def output_dir(path: str | os.PathLike, given: bool) -> Path:
    """``path`` created and proven writable before any work; a UsageError names it and what to do.
    ``given``: the user named it with --out (else it is the default beside the trace)."""
    out = Path(path)
    fix = "pass another --out" if given else "pass --out DIR somewhere you can write"
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except (FileExistsError, NotADirectoryError):
        raise UsageError(f"{out}: exists and is not a folder; {fix}") from None
    except OSError as exc:
        raise UsageError(f"{out}: cannot write there ({exc.strerror}); {fix}") from None
    return out


def _parse_list(text: str, allowed, what: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    if items == ["all"]:
        return list(allowed)
    bad = [x for x in items if x not in allowed]
    if bad or not items:
        raise UsageError(f"unknown {what} {', '.join(bad) or text!r}; choose from {', '.join(allowed)}")
    return items


def analyze(trace_dir: str | list[str] | None, reports: str = "all", request: str = "slowest",
            out_dir: str | None = None, formats: str = "text,md,html", nsys: str | None = None,
            kineto: str | None = None, model_config: str | None = None, ncu: str | None = None,
            profiled: str | None = None) -> list[str]:
    """Write the reports; the story's per-request table goes to requests.csv beside it. ``profiled``: a
    profiled pass's trace dir (``experiment baseline``) whose layer and kernel figures the story adds."""
    from sglang_tracing.analyzer.renderers.files import FORMATS, write_report

    names = _parse_list(reports, REPORTS, "report")
    fmts = _parse_list(formats, tuple(FORMATS), "format")
    dirs = _dirs(trace_dir)
    if len(dirs) > 1 and out_dir is None:
        raise UsageError("--out is needed when several trace dirs are analyzed together")
    if not dirs and out_dir is None and (nsys or kineto or ncu):
        raise UsageError("--out is needed when no trace dir is given")
    for d in dirs:
        if not Path(d).is_dir():
            raise TraceError(d, "not a directory" if Path(d).exists() else "no such trace dir")
    out = output_dir(out_dir or os.path.join(dirs[0], "reports"), given=out_dir is not None) if dirs or out_dir else None
    model = load(dirs, nsys, kineto, ncu)
    if not dirs:
        names = [n for n in names if n in ("timeline", "attention")] or ["timeline"]
    written = []
    reports = build_reports(model, names, request, model_config, load_input(profiled) if profiled else None)
    for report in reports:
        written += write_report(out, report, fmts, others=tuple(r.name for r in reports))
    if "story" in names and len(dirs) == 1:
        written += _write_requests(model, out)
    if len(dirs) > 1:
        written += _pd_outputs(model, out, fmts)
    return written


def _pd_outputs(model: TraceModel, out: Path, fmts: list[str]) -> list[str]:
    """A prefill and a decode server's dirs: their joined story too (nothing when the dirs are not PD)."""
    from sglang_tracing.analyzer.analyses import pd, pd_report
    from sglang_tracing.analyzer.renderers.files import write_report
    from sglang_tracing.analyzer.renderers.tables import write_table

    story = pd.compute(model.spans, model.servers, model.events)
    if story is None:
        return []
    return write_report(out, pd_report.build_report(story), fmts) + write_table(story.requests, out, "pd-requests")


def _write_requests(model: TraceModel, out: Path) -> list[str]:
    from sglang_tracing.analyzer.analyses.kernels import forward_gpu_time, request_gpu_time
    from sglang_tracing.analyzer.analyses.requests import export_table, request_table
    from sglang_tracing.analyzer.renderers.tables import write_table

    gpu = request_gpu_time(model.spans, forward_gpu_time(model.spans, model.kernels))
    table = request_table(model.spans, model.manifest, model.servers)
    return write_table(feature_columns(export_table(table, gpu), model.spans, table), out, "requests")


def requests(trace_dir: str, out_dir: str | None = None, nsys: str | None = None, kineto: str | None = None) -> list[str]:
    """Write the per-request table (analyses.requests.export_table) as CSV and Parquet; returns the paths."""
    trace_dir = trace_dir_of(trace_dir)
    out = output_dir(out_dir or os.path.join(trace_dir, "reports"), given=out_dir is not None)
    return _write_requests(load(trace_dir, nsys, kineto), out)


def feature_columns(frame, spans, table):
    """The hierarchical-cache and speculative-decoding columns, where the trace used the feature."""
    from sglang_tracing.analyzer.analyses import hicache, speculative

    if hicache.used(spans):
        frame = frame.join(hicache.request_tiers(spans, table), on="rid", how="left")
    if speculative.used(spans):
        frame = frame.join(speculative.request_columns(spans, table), on="rid", how="left")
    return frame


def load_input(path: str) -> TraceModel:
    """One run or profile, whatever it is: a trace dir (with the nsys export or Kineto traces recorded
    next to its spans), an nsys export (.sqlite, .nsys-rep), a Kineto JSON, or nsys stats CSVs."""
    from sglang_tracing.analyzer.loaders.files import glob_inputs

    p = Path(path)
    if not p.exists():
        raise TraceError(p, "no such file or directory")
    p = Path(trace_dir_of(path))
    if p.is_dir() and (p / "manifest.json").exists():
        exports = glob_inputs(p, "*.sqlite") or sorted(p.glob("*.nsys-rep"))
        return load(str(p), nsys=str(exports[0]) if exports else None)
    name = p.name.lower()
    if p.is_dir() or name.endswith((".csv", ".csv.gz")):
        return load(None, nsys=str(p))
    if name.endswith((".sqlite", ".sqlite.gz", ".nsys-rep")):
        return load(None, nsys=str(p))
    if name.endswith((".json", ".json.gz")):
        return load(None, kineto=str(p))
    raise TraceError(p, "not a trace dir, nsys export (.sqlite, .nsys-rep), Kineto JSON or nsys stats CSV")


def diff(a: str, b: str, out_dir: str | None = None, formats: str = "text,md,html") -> tuple[str, list[str]]:
    """Compare two runs or profiles; (the report as text, files written when ``out_dir`` is given)."""
    from sglang_tracing.analyzer.analyses import diff as diff_analysis
    from sglang_tracing.analyzer.renderers import text
    from sglang_tracing.analyzer.renderers.files import FORMATS, write_report

    fmts = _parse_list(formats, tuple(FORMATS), "format")
    out = output_dir(out_dir, given=True) if out_dir else None
    report = diff_analysis.build_report(load_input(a), load_input(b), a, b)
    written = write_report(out, report, fmts) if out else []
    return text.render(report), written


def to_perfetto(trace_dir: str | list[str] | None, output: str, nsys: str | None = None,
                kineto: str | None = None) -> dict:
    from sglang_tracing.analyzer.renderers import perfetto

    if os.path.isdir(output):
        raise UsageError(f"{output}: is a folder; -o takes the .pftrace file to write")
    model = load(trace_dir, nsys, kineto)
    tmp = output + ".tmp"
    try:
        with open(tmp, "wb") as f:
            counts = perfetto.render(model, f)
        os.replace(tmp, output)
    except OSError as exc:
        raise TraceError(output, f"cannot write ({exc.strerror}); pass another -o") from None
    return counts


def pd_loads(runs: dict[str, list[str]], out_dir: str, formats: str = "text,md") -> list[str]:
    """Which stage dominates TTFT in each run (label -> its prefill and decode dirs): ``pd-loads``."""
    from sglang_tracing.analyzer.analyses import pd, pd_report
    from sglang_tracing.analyzer.renderers.files import FORMATS, write_report

    fmts = _parse_list(formats, tuple(FORMATS), "format")
    stories = {}
    for label, dirs in runs.items():
        model = load(dirs)
        story = pd.compute(model.spans, model.servers, model.events)
        if story is None:
            raise UsageError(f"{label}: {', '.join(dirs)} hold no prefill and decode halves of PD requests")
        stories[label] = story
    return write_report(Path(out_dir), pd_report.build_loads_report(stories), fmts)
