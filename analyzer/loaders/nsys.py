"""Nsight Systems exports: sqlite of every schema generation seen (2022.2 ``EXPORT_META_DATA`` with
empty tables exported; 2024.5+ ``META_DATA_EXPORT`` with empty tables left out), or ``.nsys-rep``
exported on the fly when nsys is on PATH.

Names are ids into ``StringIds``. Times are ns from the session start; ``TARGET_INFO_SESSION_START_TIME``
gives the wall clock of that start, the fallback alignment when no NVTX range carries a span id.
"""
from __future__ import annotations

import re
import shutil
import sqlite3
import subprocess
import tempfile
from pathlib import Path

import polars as pl

from sglang_tracing.analyzer.errors import TraceError
from sglang_tracing.analyzer.loaders.files import local_copy
from sglang_tracing.analyzer.model import CPU_OP_SCHEMA, KERNEL_SCHEMA, NVTX_SCHEMA, TraceModel

META_TABLES = ("META_DATA_EXPORT", "EXPORT_META_DATA")
SPAN_ID_IN_TEXT = re.compile(r" ([0-9a-f]{16})$")
NVTX_RANGE_TYPES = (59, 60, 70, 71)  # push/pop and start/end ranges (with and without payload)


def _tables(con) -> set[str]:
    return {r[0] for r in con.execute("select name from sqlite_master where type='table'")}


def _columns(con, table: str) -> set[str]:
    return {r[1] for r in con.execute(f"pragma table_info({table})")}


def open_export(path: str | Path) -> tuple[sqlite3.Connection, Path]:
    path = Path(path)
    if not path.exists():
        raise TraceError(path, "no such file")
    if path.suffix == ".nsys-rep":
        path = export_report(path)
    plain = local_copy(path)
    with open(plain, "rb") as f:
        if f.read(16) != b"SQLite format 3\x00":
            raise TraceError(path, "not an SQLite file (export with: nsys export --type sqlite)")
    con = sqlite3.connect(f"file:{plain}?mode=ro", uri=True)
    try:
        tables = _tables(con)
    except sqlite3.DatabaseError as exc:
        raise TraceError(path, f"corrupt SQLite file ({exc})") from None
    if not tables & set(META_TABLES):
        raise TraceError(path, "not an Nsight Systems export (no META_DATA_EXPORT or EXPORT_META_DATA table)")
    return con, path


def export_report(rep: Path) -> Path:
    nsys = shutil.which("nsys")
    if nsys is None:
        raise TraceError(rep, "is an .nsys-rep and nsys is not on PATH; export it with "
                              "'nsys export --type sqlite' and pass the .sqlite")
    out = Path(tempfile.mkdtemp(prefix="sglang-trace-nsys-")) / (rep.stem + ".sqlite")
    done = subprocess.run([nsys, "export", "--type", "sqlite", "-o", str(out), str(rep)],
                          capture_output=True, text=True)
    if done.returncode != 0 or not out.exists():
        raise TraceError(rep, f"nsys export failed: {done.stderr.strip().splitlines()[-1:] or done.returncode}")
    return out


def metadata(con) -> dict[str, str]:
    table = next(t for t in META_TABLES if t in _tables(con))
    return {k: v for k, v in con.execute(f"select name, value from {table}")}


def session_start_ns(con) -> int | None:
    if "TARGET_INFO_SESSION_START_TIME" not in _tables(con):
        return None
    row = con.execute("select utcEpochNs from TARGET_INFO_SESSION_START_TIME").fetchone()
    return int(row[0]) if row else None


def kernels(con) -> pl.DataFrame:
    """Kernels with names from StringIds; times in ns from session start."""
    if "CUPTI_ACTIVITY_KIND_KERNEL" not in _tables(con):
        return pl.DataFrame(schema=KERNEL_SCHEMA)
    cols = _columns(con, "CUPTI_ACTIVITY_KIND_KERNEL")
    name_col = "demangledName" if "demangledName" in cols else "shortName"
    rows = con.execute(f"""
        select k.start, k.end, k.end - k.start, coalesce(s.value, ''), k.deviceId, k.streamId, k.correlationId,
               k.gridX, k.gridY, k.gridZ, k.blockX, k.blockY, k.blockZ, k.registersPerThread,
               k.staticSharedMemory + k.dynamicSharedMemory, 'nsys'
        from CUPTI_ACTIVITY_KIND_KERNEL k left join StringIds s on k.{name_col} = s.id
        order by k.start""").fetchall()
    return pl.DataFrame(rows, schema=KERNEL_SCHEMA, orient="row")


def nvtx(con) -> pl.DataFrame:
    """Closed NVTX ranges; text resolved through StringIds when the message was registered."""
    if "NVTX_EVENTS" not in _tables(con):
        return pl.DataFrame(schema=NVTX_SCHEMA)
    domains = dict(con.execute(
        "select domainId, coalesce(n.text, s.value) from NVTX_EVENTS n left join StringIds s on n.textId = s.id "
        "where eventType = 75").fetchall())
    rows = con.execute(f"""
        select n.start, n.end, coalesce(n.text, s.value), n.domainId, n.globalTid
        from NVTX_EVENTS n left join StringIds s on n.textId = s.id
        where n.end is not null and n.eventType in ({','.join(map(str, NVTX_RANGE_TYPES))})
        order by n.start""").fetchall()
    out = []
    for start, end, text, domain_id, tid in rows:
        m = SPAN_ID_IN_TEXT.search(text or "")
        out.append((start, end, text, domains.get(domain_id, ""), m.group(1) if m else None, tid))
    return pl.DataFrame(out, schema=NVTX_SCHEMA, orient="row")


def runtime_calls(con) -> pl.DataFrame:
    """CUDA runtime API calls (launches included) with the correlation id their kernels carry."""
    if "CUPTI_ACTIVITY_KIND_RUNTIME" not in _tables(con):
        return pl.DataFrame(schema=CPU_OP_SCHEMA)
    rows = con.execute("""
        select r.start, r.end, coalesce(s.value, ''), r.globalTid, r.correlationId
        from CUPTI_ACTIVITY_KIND_RUNTIME r left join StringIds s on r.nameId = s.id
        order by r.start""").fetchall()
    return pl.DataFrame(rows, schema=CPU_OP_SCHEMA, orient="row")


def gpus(con) -> pl.DataFrame:
    """TARGET_INFO_GPU: every GPU of the node (not only the profiled one)."""
    if "TARGET_INFO_GPU" not in _tables(con):
        return pl.DataFrame()
    cols = [c for c in ("id", "name", "memoryBandwidth", "smCount", "totalMemory", "clockRate", "l2CacheSize")
            if c in _columns(con, "TARGET_INFO_GPU")]
    return pl.DataFrame(con.execute(f"select {', '.join(cols)} from TARGET_INFO_GPU").fetchall(),
                        schema=cols, orient="row")


def alignment_offset(nvtx_frame: pl.DataFrame, spans: pl.DataFrame, session_start: int | None) -> tuple[int, str]:
    """ns to add to nsys times to land on the span clock, and how it was found."""
    if not nvtx_frame.is_empty() and not spans.is_empty():
        joined = nvtx_frame.drop_nulls("span_id").join(spans.select("span_id", pl.col("start_ns").alias("span_start")),
                                                       on="span_id")
        if joined.height:
            offset = int((joined["span_start"] - joined["start_ns"]).median())
            return offset, f"median offset of {joined.height} NVTX ranges carrying span ids"
    if session_start is not None:
        return session_start, "nsys session start time (no NVTX range matched a span)"
    return 0, "no alignment available"


def attach(model: TraceModel, path: str) -> dict:
    """Load an nsys export into ``model`` (kernels, nvtx), aligned to the span clock."""
    con, path = open_export(path)
    try:
        try:
            k, n, start, gpu_info = kernels(con), nvtx(con), session_start_ns(con), gpus(con)
            calls = runtime_calls(con)
        except sqlite3.DatabaseError as exc:
            raise TraceError(path, f"corrupt or truncated SQLite file ({exc})") from None
        offset, how = alignment_offset(n, model.spans, start)
        shift = [pl.col("start_ns") + offset, pl.col("end_ns") + offset]
        model.kernels = pl.concat([model.kernels, k.with_columns(shift)]) if k.height else model.kernels
        model.nvtx = pl.concat([model.nvtx, n.with_columns(shift)]) if n.height else model.nvtx
        model.cpu_ops = pl.concat([model.cpu_ops, calls.with_columns(shift)]) if calls.height else model.cpu_ops
        model.manifest.setdefault("sources", []).append(
            {"nsys": str(path), "alignment": how, "offset_ns": offset, "kernels": k.height, "nvtx": n.height,
             "cuda_api_calls": calls.height,
             "gpus": gpu_info.to_dicts()})
        return model.manifest["sources"][-1]
    finally:
        con.close()
