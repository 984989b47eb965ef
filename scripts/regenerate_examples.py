"""Regenerate every showcase report of traces/examples into traces/examples/showcase/.

    python scripts/regenerate_examples.py            # rewrite traces/examples/showcase/
    python scripts/regenerate_examples.py --out DIR  # write them elsewhere (tests/test_examples.py does)

One report kind, one recorded source, one command: the table below (SHOWCASES). The analyzer runs on
a temporary copy of traces/examples, so whatever an experiment command writes beside its inputs (its
own report files) lands there and the recorded folders are never touched.
Sources are named relative to traces/examples, as the commands in the table would be typed there.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "traces" / "examples"
SHOWCASE = EXAMPLES / "showcase"
NOT_RECORDED = {"showcase", "README.md"}


def _analyze(report: str, source: str, **sources) -> Callable[[Path], list[str]]:
    def build(work: Path) -> list[str]:
        from sglang_tracing.analyzer import api

        # the story's requests.csv is the requests showcase's (same trace), written by its own command
        return [p for p in api.analyze(source, reports=report, out_dir=str(work), **sources)
                if not Path(p).name.startswith("requests.")]
    return build


def _diff(a: str, b: str) -> Callable[[Path], list[str]]:
    def build(work: Path) -> list[str]:
        from sglang_tracing.analyzer import api

        return api.diff(a, b, out_dir=str(work))[1]
    return build


def _requests(source: str) -> Callable[[Path], list[str]]:
    def build(work: Path) -> list[str]:
        from sglang_tracing.analyzer import api

        # the CSV only: Parquet files carry the writer's version, so they change with polars
        return [p for p in api.requests(source, out_dir=str(work)) if p.endswith(".csv")]
    return build


def _experiment(name: str, folder: str) -> Callable[[Path], list[str]]:
    def build(work: Path) -> list[str]:
        from sglang_tracing.analyzer import experiment_reports

        return experiment_reports.write(name, folder, work)
    return build


@dataclass(frozen=True)
class Showcase:
    kind: str
    source: str  # relative to traces/examples
    command: str  # what a user types in traces/examples for the same report
    build: Callable[[Path], list[str]]


LAYER = "h200-nsys-layer/nsys-triton/trace"
NCU = "h200-ncu/ncu-flashinfer/trace"
TRITON = "h200-backends/server-triton/trace"
FLASHINFER = "h200-backends/server-flashinfer/trace"
OVERHEAD = "h200-llama2-7b-triton"

SHOWCASES = (
    Showcase("story", TRITON, f"sglang-trace analyze {TRITON} --report story --out showcase",
             _analyze("story", TRITON)),
    Showcase("radix", OVERHEAD, f"sglang-trace analyze {OVERHEAD} --report radix --out showcase",
             _analyze("radix", OVERHEAD)),
    Showcase("timeline", LAYER, f"sglang-trace analyze {LAYER} --nsys {LAYER}/nsys.sqlite.gz --report timeline "
                                "--out showcase", _analyze("timeline", LAYER, nsys=f"{LAYER}/nsys.sqlite.gz")),
    Showcase("attention", NCU, f"sglang-trace analyze {NCU} --ncu {NCU}/attention-raw.csv.gz --report attention "
                               "--out showcase", _analyze("attention", NCU, ncu=f"{NCU}/attention-raw.csv.gz")),
    Showcase("backends", "h200-backends", "sglang-trace experiment backends --out h200-backends (backends.*)",
             _experiment("backends", "h200-backends")),
    Showcase("tp_scaling", "h200x2-tp", "sglang-trace experiment tp --out h200x2-tp (tp_scaling.*)",
             _experiment("tp_scaling", "h200x2-tp")),
    Showcase("diff", f"{FLASHINFER} vs {TRITON}", f"sglang-trace diff {FLASHINFER} {TRITON} --out showcase",
             _diff(FLASHINFER, TRITON)),
    Showcase("requests", TRITON, f"sglang-trace requests {TRITON} --out showcase (requests.csv, the story's table)",
             _requests(TRITON)),
)


def _not_recorded(folder: str, names: list[str]) -> set[str]:
    return {n for n in names if n in NOT_RECORDED or n.startswith(".")}


def regenerate(out: Path) -> list[Path]:
    """Write every showcase into ``out`` (emptied first); returns the files written."""
    out = Path(out).resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    written = []
    with tempfile.TemporaryDirectory(prefix="sglang-trace-examples-") as tmp:
        shadow = Path(tmp) / "examples"
        shutil.copytree(EXAMPLES, shadow, ignore=_not_recorded)
        cwd = os.getcwd()
        os.chdir(shadow)  # sources, and so the paths the reports print, relative to traces/examples
        try:
            for case in SHOWCASES:
                work = Path(tmp) / "work" / case.kind
                work.mkdir(parents=True)
                for p in map(Path, case.build(work)):
                    shutil.copyfile(p if p.is_absolute() else shadow / p, out / p.name)
                    written.append(out / p.name)
        finally:
            os.chdir(cwd)
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(SHOWCASE), help="where to write (default: traces/examples/showcase)")
    args = parser.parse_args()
    for p in regenerate(Path(args.out).resolve()):
        print(os.path.relpath(p))
    return 0


if __name__ == "__main__":
    sys.exit(main())
