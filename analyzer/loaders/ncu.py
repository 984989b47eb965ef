"""Nsight Compute results in every form users have: details-page CSV (old layout: Kernel Time,
Context, Stream...; new layout: Block Size, Grid Size, Device, CC, Estimated Speedup), raw-page CSV
(one row per kernel, a units row), console text (``ncu`` default output), and ``.ncu-rep`` through
Nsight Compute's python report module where it is installed.

Everything becomes one long frame: kernel_id, kernel_name, section, metric, unit, value (float, null
for "n/a" or text), text (the value as written), block, grid, device, cc.
"""
from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import polars as pl

from sglang_tracing.analyzer.errors import TraceError
from sglang_tracing.analyzer.loaders.files import read_bytes

SCHEMA = {"kernel_id": pl.Int64, "kernel_name": pl.String, "section": pl.String, "metric": pl.String,
          "unit": pl.String, "value": pl.Float64, "text": pl.String, "block": pl.String, "grid": pl.String,
          "device": pl.String, "cc": pl.String}
_TEXT_KERNEL = re.compile(r"^\s{2}(\S.*?) \((\d+, \d+, \d+)\)x\((\d+, \d+, \d+)\), Context (\d+), Stream (\d+)"
                          r"(?:, Device (\d+), CC ([\d.]+))?")
_TEXT_SECTION = re.compile(r"^\s+Section: (.+?)\s*$")
_TEXT_ROW = re.compile(r"^\s{4}(\S.*?)\s{2,}(\S+)?\s+(\S+)\s*$")


def number(text: str | None) -> float | None:
    if text is None:
        return None
    t = text.strip().replace(",", "")
    if t in ("", "n/a", "N/A", "nan"):
        return None
    try:
        return float(t)
    except ValueError:
        return None


def _frame(rows: list[tuple]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=SCHEMA, orient="row") if rows else pl.DataFrame(schema=SCHEMA)


def _details(reader: list[dict]) -> pl.DataFrame:
    rows = []
    for r in reader:
        block = r.get("Block Size")
        grid = r.get("Grid Size")
        rows.append((int(number(r["ID"]) or 0), r["Kernel Name"], r.get("Section Name", ""), r["Metric Name"],
                     r.get("Metric Unit", ""), number(r.get("Metric Value")), r.get("Metric Value"),
                     block, grid, r.get("Device"), r.get("CC")))
    return _frame(rows)


def _raw(header: list[str], units: list[str], data: list[list[str]]) -> pl.DataFrame:
    fixed = {"ID", "Process ID", "Process Name", "Host Name", "Kernel Name", "Context", "Stream", "Block Size",
             "Grid Size", "Device", "CC", "Kernel Time"}
    rows = []
    for r in data:
        rec = dict(zip(header, r))
        kid = int(number(rec.get("ID")) or 0)
        for name, unit, value in zip(header, units, r):
            if name in fixed:
                continue
            rows.append((kid, rec.get("Kernel Name", ""), "raw", name, unit, number(value), value,
                         rec.get("Block Size"), rec.get("Grid Size"), rec.get("Device"), rec.get("CC")))
    return _frame(rows)


def _csv(path: Path, text: str) -> pl.DataFrame:
    # ncu prints "==PROF==" lines before the CSV when its output is captured from the console
    lines = [ln for ln in text.splitlines() if not ln.startswith("==")]
    rows = list(csv.reader(io.StringIO("\n".join(lines))))
    if not rows:
        raise TraceError(path, "empty CSV")
    header = rows[0]
    if "Metric Name" in header and "Metric Value" in header and "Kernel Name" in header:
        need = header.index("Metric Value") + 1  # trailing empty columns are often left out
        return _details([dict(zip(header, r)) for r in rows[1:] if len(r) >= need])
    if "Kernel Name" in header and "ID" in header and len(rows) >= 2:
        return _raw(header, rows[1], [r for r in rows[2:] if len(r) >= len(header) - 5])
    raise TraceError(path, "not an Nsight Compute CSV (no 'Kernel Name' with 'Metric Name' or raw metric columns)")


def _console(path: Path, text: str) -> pl.DataFrame:
    rows, kid, kernel, section = [], -1, None, ""
    for line in text.splitlines():
        m = _TEXT_KERNEL.match(line)
        if m:
            kid += 1
            kernel = m.groups()
            section = ""
            continue
        m = _TEXT_SECTION.match(line)
        if m:
            section = m.group(1)
            continue
        if kernel is None or not section or line.strip().startswith(("-", "Metric Name")):
            continue
        m = _TEXT_ROW.match(line)
        if m and m.group(3) is not None and not line.strip().startswith(("INF", "OPT", "WRN")):
            name, unit, value = m.group(1).strip(), m.group(2) or "", m.group(3)
            if number(value) is None and unit and number(unit) is not None:
                continue
            rows.append((kid, kernel[0], section, name, unit, number(value), value,
                         f"({kernel[2]})", f"({kernel[1]})", kernel[5], kernel[6]))
    if not rows:
        raise TraceError(path, "no kernel sections found (not ncu console output?)")
    return _frame(rows)


def _report(path: Path) -> pl.DataFrame:
    try:
        import ncu_report  # shipped with Nsight Compute (extras/python)
    except ImportError:
        raise TraceError(path, "is an .ncu-rep and Nsight Compute's python module ncu_report is not importable; "
                               "export it with 'ncu --import FILE --csv --page raw'") from None
    ctx = ncu_report.load_report(str(path))
    rows, kid = [], 0
    for r in range(ctx.num_ranges()):
        rng = ctx.range_by_idx(r)
        for a in range(rng.num_actions()):
            action = rng.action_by_idx(a)
            for name in action.metric_names():
                metric = action.metric_by_name(name)
                try:
                    value = float(metric.as_double())
                except Exception:
                    value = None
                rows.append((kid, action.name(), "raw", name, metric.unit() or "", value, str(value),
                             None, None, None, None))
            kid += 1
    return _frame(rows)


def read(path: str | Path) -> pl.DataFrame:
    path = Path(path)
    if not path.exists():
        raise TraceError(path, "no such file")
    if path.suffix == ".ncu-rep":
        return _report(path)
    text = read_bytes(path).decode("utf-8", errors="replace")
    if not text.strip():
        raise TraceError(path, "empty file")
    first = text.lstrip().splitlines()[0]
    if first.startswith(('"ID"', "ID,", '"Kernel Name"', "==PROF==")):
        return _csv(path, text)
    return _console(path, text)
