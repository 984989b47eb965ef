"""``nsys stats`` CSV output (``--format csv``, one file per report with ``-o``, or several reports in one
captured stdout): cuda_gpu_kern_sum, cuda_gpu_mem_time_sum, cuda_gpu_mem_size_sum, cuda_api_sum,
nvtx_sum, osrt_sum, and the older names of the same reports (gpukernsum, cudaapisum, ...).

Every table is read into the columns below: times in ns and sizes in MB (10^6 bytes, nsys's unit)
whatever ``--timeunit`` the file was written with. These are also the columns the analyzer's own
summaries produce (``analyses/stats_tables.py``), so a CSV and a profile compare like for like.
"""
from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import polars as pl

from sglang_tracing.errors import TraceError
from sglang_tracing.analyzer.loaders.files import read_bytes

_STATS = ["Avg (ns)", "Med (ns)", "Min (ns)", "Max (ns)", "StdDev (ns)"]
COLUMNS = {
    "cuda_gpu_kern_sum": ["Time (%)", "Total Time (ns)", "Instances", *_STATS, "Name"],
    "cuda_gpu_mem_time_sum": ["Time (%)", "Total Time (ns)", "Count", *_STATS, "Operation"],
    "cuda_gpu_mem_size_sum": ["Total (MB)", "Count", "Avg (MB)", "Med (MB)", "Min (MB)", "Max (MB)", "StdDev (MB)",
                              "Operation"],
    "cuda_api_sum": ["Time (%)", "Total Time (ns)", "Num Calls", *_STATS, "Name"],
    "nvtx_sum": ["Time (%)", "Total Time (ns)", "Instances", *_STATS, "Style", "Range"],
    "osrt_sum": ["Time (%)", "Total Time (ns)", "Num Calls", *_STATS, "Name"],
}
TEXT_COLUMNS = {"Name", "Operation", "Style", "Range"}
COUNT_COLUMNS = {"Instances", "Count", "Num Calls"}

_TIME_UNITS = {"ns": 1, "us": 1e3, "usec": 1e3, "ms": 1e6, "msec": 1e6, "s": 1e9, "sec": 1e9}
_SIZE_UNITS = {"B": 1e-6, "KB": 1e-3, "MB": 1.0, "GB": 1e3, "KiB": 1024 / 1e6, "MiB": 1024 ** 2 / 1e6,
               "GiB": 1024 ** 3 / 1e6}
# the names nsys 2021-2022 printed for the same figures
_ALIASES = {"Time(%)": "Time (%)", "Average": "Avg", "Median": "Med", "Minimum": "Min", "Maximum": "Max",
            "Calls": "Num Calls", "Total Time": "Total Time"}
_UNIT = re.compile(r"^(.*?)\s*\(([^)]+)\)$")


def _canonical(header: list[str]) -> list[tuple[str, float]]:
    """Each column as (canonical name, factor to its canonical unit)."""
    out = []
    for raw in header:
        name = _ALIASES.get(raw.strip(), raw.strip())
        m = _UNIT.match(name)
        base, unit = (m.group(1), m.group(2)) if m and m.group(2) != "%" else (name, None)
        base = _ALIASES.get(base, base)
        if unit in _TIME_UNITS:
            out.append((f"{base} (ns)", _TIME_UNITS[unit]))
        elif unit in _SIZE_UNITS:
            out.append((f"{base} (MB)", _SIZE_UNITS[unit]))
        elif base in ("Avg", "Med", "Min", "Max", "StdDev"):  # old reports: unit-less columns in ns
            out.append((f"{base} (ns)", 1.0))
        else:
            out.append((name, 1.0))
    return out


def _kind(columns: set[str], names: list[str], path: Path) -> str | None:
    if "Operation" in columns:
        return "cuda_gpu_mem_size_sum" if "Total (MB)" in columns else "cuda_gpu_mem_time_sum"
    if "Range" in columns:
        return "nvtx_sum"
    if "Name" in columns and "Instances" in columns:
        return "cuda_gpu_kern_sum"
    if "Name" in columns and "Num Calls" in columns:  # cuda_api_sum and osrt_sum share their columns
        stem = path.name.lower()
        if "osrt" in stem:
            return "osrt_sum"
        if "api" in stem:
            return "cuda_api_sum"
        return "cuda_api_sum" if names and all(n.startswith("cu") for n in names) else "osrt_sum"
    return None


def _number(text: str) -> float | None:
    t = text.strip().replace(",", "")
    try:
        return float(t) if t else None
    except ValueError:
        return None


def _table(kind: str, columns: list[tuple[str, float]], rows: list[list[str]]) -> pl.DataFrame:
    index = {name: i for i, (name, _) in enumerate(columns)}
    data: dict[str, list] = {}
    for col in COLUMNS[kind]:
        i = index.get(col)
        if col in TEXT_COLUMNS:
            data[col] = [r[i] if i is not None and i < len(r) else None for r in rows]
        else:
            factor = columns[i][1] if i is not None else 1.0
            values = [_number(r[i]) if i is not None and i < len(r) else None for r in rows]
            data[col] = [None if v is None else v * factor for v in values]
    frame = pl.DataFrame(data, schema={c: pl.String if c in TEXT_COLUMNS else pl.Float64 for c in COLUMNS[kind]})
    counts = [c for c in COLUMNS[kind] if c in COUNT_COLUMNS or c in ("Total Time (ns)", "Min (ns)", "Max (ns)")]
    return frame.with_columns(pl.col(counts).round(0).cast(pl.Int64))


def read(path: str | Path) -> dict[str, pl.DataFrame]:
    """Every report table in the file, by report name."""
    path = Path(path)
    if not path.exists():
        raise TraceError(path, "no such file")
    text = read_bytes(path).decode("utf-8", errors="replace")
    tables: dict[str, pl.DataFrame] = {}
    # reports captured from stdout are separated by blank lines and preceded by "Processing ..." lines
    for block in re.split(r"\n\s*\n", text):
        rows = [r for r in csv.reader(io.StringIO(block)) if r]
        for start, header in enumerate(rows):
            columns = _canonical(header)
            names = {c for c, _ in columns}
            data = rows[start + 1:]
            name_col = next((i for i, (c, _) in enumerate(columns) if c == "Name"), None)
            kind = _kind(names, [r[name_col] for r in data if name_col is not None and name_col < len(r)], path)
            if kind is not None:
                tables[kind] = _table(kind, columns, data)
                break
    if not tables:
        raise TraceError(path, "not an nsys stats CSV (no cuda_gpu_kern_sum, cuda_gpu_mem_time_sum, "
                               "cuda_gpu_mem_size_sum, cuda_api_sum, nvtx_sum or osrt_sum header)")
    return tables


def looks_like_stats(path: str | Path) -> bool:
    """A CSV (or a folder of CSVs) rather than an nsys export."""
    p = Path(path)
    return p.is_dir() or p.name.lower().endswith((".csv", ".csv.gz"))


def read_all(path: str | Path) -> dict[str, pl.DataFrame]:
    """One stats CSV, or every stats CSV in a folder (files that are not ``nsys stats`` output are skipped)."""
    p = Path(path)
    if not p.is_dir():
        return read(p)
    tables: dict[str, pl.DataFrame] = {}
    for f in sorted(p.glob("*.csv")) + sorted(p.glob("*.csv.gz")):
        try:
            tables.update(read(f))
        except TraceError:
            continue
    if not tables:
        raise TraceError(p, "no nsys stats CSV in this folder")
    return tables
