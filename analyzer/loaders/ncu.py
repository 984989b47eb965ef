"""Nsight Compute results in every form users have: details-page CSV (old layout: Kernel Time,
Context, Stream...; new layout: Block Size, Grid Size, Device, CC, Estimated Speedup), raw-page CSV
(one row per kernel, a units row), console text (``ncu`` default output), and ``.ncu-rep`` through
Nsight Compute's python report module where it is installed.

Metrics become one long frame: kernel_id, kernel_name, section, metric, unit, value (float, null
for "n/a" or text), text (the value as written), block, grid, device, cc. The same metric name can
appear in several sections with different units ('Memory Throughput' is a % in GPU Speed Of Light and
bytes/s in Memory Workload Analysis), so a metric is known by (section, metric, unit).

ncu's own rule results (the OPT / INF / WRN hints of the details page and console output, with their
estimated speedup where ncu gives one) become a second frame (RULE_SCHEMA).
"""
from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import NamedTuple

import polars as pl

from sglang_tracing.errors import TraceError
from sglang_tracing.analyzer.loaders.files import read_bytes

SCHEMA = {"kernel_id": pl.Int64, "kernel_name": pl.String, "section": pl.String, "metric": pl.String,
          "unit": pl.String, "value": pl.Float64, "text": pl.String, "block": pl.String, "grid": pl.String,
          "device": pl.String, "cc": pl.String}
RULE_SCHEMA = {"kernel_id": pl.Int64, "kernel_name": pl.String, "section": pl.String, "rule": pl.String,
               "type": pl.String, "speedup_pct": pl.Float64, "speedup_type": pl.String, "text": pl.String}
_TEXT_KERNEL = re.compile(r"^\s{2}(\S.*?) \((\d+, \d+, \d+)\)x\((\d+, \d+, \d+)\), Context (\d+), Stream (\d+)"
                          r"(?:, Device (\d+), CC ([\d.]+))?")
_TEXT_SECTION = re.compile(r"^\s+Section: (.+?)\s*$")
_TEXT_ROW = re.compile(r"^\s{4}(\S.*?)\s{2,}(\S+)?\s+(\S+)\s*$")
_TEXT_RULE = re.compile(r"^\s{4}(OPT|INF|WRN|ERR)\s+(.*?)\s*$")
_TEXT_RULE_MORE = re.compile(r"^\s{6,}(\S.*?)\s*$")
_SPEEDUP = re.compile(r"^Est(?:imated|\.)\s+(Local\s+|Global\s+)?Speedup:\s*([\d.]+)%\s*(.*)$", re.I)


class Profile(NamedTuple):
    metrics: pl.DataFrame
    rules: pl.DataFrame


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


def _frame(rows: list[tuple], schema: dict = SCHEMA) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=schema, orient="row") if rows else pl.DataFrame(schema=schema)


def _details(reader: list[dict]) -> Profile:
    rows, rules = [], []
    for r in reader:
        kid, name, section = int(number(r["ID"]) or 0), r["Kernel Name"], r.get("Section Name", "")
        if r["Metric Name"]:
            rows.append((kid, name, section, r["Metric Name"], r.get("Metric Unit", ""),
                         number(r.get("Metric Value")), r.get("Metric Value"), r.get("Block Size"),
                         r.get("Grid Size"), r.get("Device"), r.get("CC")))
        if r.get("Rule Description") or r.get("Rule Name"):
            rules.append((kid, name, section, r.get("Rule Name") or "", r.get("Rule Type") or "",
                          number(r.get("Estimated Speedup")), r.get("Estimated Speedup Type") or None,
                          (r.get("Rule Description") or "").strip()))
    return Profile(_frame(rows), _frame(rules, RULE_SCHEMA))


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


def _csv(path: Path, text: str) -> Profile:
    # ncu prints "==PROF==" lines before the CSV when its output is captured from the console
    lines = [ln for ln in text.splitlines() if not ln.startswith("==")]
    rows = [r for r in csv.reader(io.StringIO("\n".join(lines))) if r]
    if not rows:
        raise TraceError(path, "empty CSV")
    header = rows[0]
    if "Metric Name" in header and "Metric Value" in header and "Kernel Name" in header:
        need = header.index("Metric Value") + 1  # trailing empty columns are often left out
        profile = _details([dict(zip(header, r)) for r in rows[1:] if len(r) >= need])
    elif "Kernel Name" in header and "ID" in header:
        # the raw page's second row holds the units
        profile = Profile(_raw(header, rows[1] if len(rows) > 1 else [],
                               [r for r in rows[2:] if len(r) >= len(header) - 5]), _frame([], RULE_SCHEMA))
    else:
        raise TraceError(path, "not an Nsight Compute CSV (no 'Kernel Name' with 'Metric Name' or raw metric columns)")
    if profile.metrics.is_empty():
        raise TraceError(path, "Nsight Compute CSV with a header and no kernel rows (did ncu profile any kernel?)")
    return profile


def _console(path: Path, text: str) -> Profile:
    rows, rules, kid, kernel, section = [], [], -1, None, ""
    rule: list | None = None  # the rule being read: [type, first line, continuation lines]

    def close_rule():
        nonlocal rule
        if rule is not None and kernel is not None:
            rules.append(_text_rule(kid, kernel[0], section, rule[0], [rule[1], *rule[2]]))
        rule = None

    for line in text.splitlines():
        m = _TEXT_KERNEL.match(line)
        if m:
            close_rule()
            kid += 1
            kernel = m.groups()
            section = ""
            continue
        m = _TEXT_SECTION.match(line)
        if m:
            close_rule()
            section = m.group(1)
            continue
        if kernel is None or not section:
            continue
        m = _TEXT_RULE.match(line)
        if m:
            close_rule()
            rule = [m.group(1), m.group(2), []]
            continue
        if rule is not None:
            more = _TEXT_RULE_MORE.match(line)
            if more and not line.strip().startswith("---"):
                rule[2].append(more.group(1))
                continue
            close_rule()
        if line.strip().startswith(("-", "Metric Name")):
            continue
        m = _TEXT_ROW.match(line)
        if m and m.group(3) is not None:
            name, unit, value = m.group(1).strip(), m.group(2) or "", m.group(3)
            if number(value) is None and unit and number(unit) is not None:
                continue
            rows.append((kid, kernel[0], section, name, unit, number(value), value,
                         f"({kernel[2]})", f"({kernel[1]})", kernel[5], kernel[6]))
    close_rule()
    if not rows:
        raise TraceError(path, "no kernel sections found (not ncu console output?)")
    return Profile(_frame(rows), _frame(rules, RULE_SCHEMA))


def _text_rule(kid: int, kernel: str, section: str, kind: str, lines: list[str]) -> tuple:
    """A console rule: 'OPT   Est. Speedup: 31.65%' (or 'Est. Local Speedup') then its description."""
    speedup = speedup_type = None
    m = _SPEEDUP.match(lines[0])
    if m:
        speedup = float(m.group(2))
        speedup_type = "local" if (m.group(1) or "").strip().lower() == "local" else "global"
        lines = [m.group(3), *lines[1:]] if m.group(3) else lines[1:]
    return (kid, kernel, section, "", kind, speedup, speedup_type, " ".join(x.strip() for x in lines).strip())


def _report(path: Path) -> Profile:
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
    if not rows:
        raise TraceError(path, "no profiled kernel in this report")
    return Profile(_frame(rows), _frame([], RULE_SCHEMA))


def read_profile(path: str | Path) -> Profile:
    """Metrics and ncu's rule results from any ncu form."""
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


def read(path: str | Path) -> pl.DataFrame:
    """The long metric frame."""
    return read_profile(path).metrics
