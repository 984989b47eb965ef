"""The experiments' own reports, one registry for the experiment runners and the CLI: each reads its
folder (a loader), builds a Report (a pure analysis) and is written by the renderers."""
from __future__ import annotations

from pathlib import Path


def _backends():
    from sglang_tracing.analyzer.analyses import backends
    from sglang_tracing.analyzer.loaders import backends_experiment

    return backends_experiment.load, backends.build_report


def _tp_scaling():
    from sglang_tracing.analyzer.analyses import tp_scaling
    from sglang_tracing.analyzer.loaders import tp_experiment

    return tp_experiment.load, tp_scaling.build_report


def _spec():
    from sglang_tracing.analyzer.analyses import spec_experiment
    from sglang_tracing.analyzer.loaders import backends_experiment

    return backends_experiment.load, spec_experiment.build_report


def _radix():
    from sglang_tracing.analyzer.analyses import radix_scenarios
    from sglang_tracing.analyzer.loaders import radix_experiment

    return radix_experiment.load, radix_scenarios.build_report


def _baseline():
    from sglang_tracing.analyzer.analyses import baseline_run
    from sglang_tracing.analyzer.loaders import baseline_experiment

    return baseline_experiment.load, baseline_run.build_report


REPORTS = {"backends": _backends, "tp_scaling": _tp_scaling, "radix": _radix, "baseline": _baseline,
           "spec": _spec}  # name -> (loader, analysis), imported on use


def build(name: str, folder: str | Path):
    load, analyse = REPORTS[name]()
    return analyse(load(folder))


def write(name: str, folder: str | Path, out: str | Path | None = None) -> list[str]:
    """Build experiment report ``name`` from ``folder``; write it (every format, plots beside) into ``out``."""
    from sglang_tracing.analyzer.renderers.files import write_report

    return write_report(Path(out or folder), build(name, folder))
