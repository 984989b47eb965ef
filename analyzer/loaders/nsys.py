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

from sglang_tracing import semconv as sc
from sglang_tracing.errors import TraceError
from sglang_tracing.analyzer.loaders.files import local_copy
from sglang_tracing.analyzer.model import (
    CPU_OP_SCHEMA, DEVICE_SCHEMA, KERNEL_SCHEMA, MEMOP_SCHEMA, NVTX_SCHEMA, Loaded, Source, rows_frame,
)

META_TABLES = ("META_DATA_EXPORT", "EXPORT_META_DATA")
SPAN_ID_IN_TEXT = re.compile(r" ([0-9a-f]{16})$")
# NVTX eventType -> nvtx_sum's Style (NvtxPushPopRange, NvtxStartEndRange and their NVTXT-file twins)
NVTX_RANGE_STYLES = {59: "PushPop", 60: "StartEnd", 70: "PushPop", 71: "StartEnd"}
NVTX_DOMAIN_CREATE = 75
# CUpti_ActivityMemcpyKind -> the labels of ENUM_CUDA_MEMCPY_OPER (used where an export lacks that table)
MEMCPY_KINDS = {0: "Unknown", 1: "Host-to-Device", 2: "Device-to-Host", 3: "Host-to-Array", 4: "Array-to-Host",
                5: "Array-to-Array", 6: "Array-to-Device", 7: "Device-to-Array", 8: "Device-to-Device",
                9: "Host-to-Host", 10: "Peer-to-Peer", 11: "Unified Host-to-Device", 12: "Unified Device-to-Host",
                13: "Unified Device-to-Device"}


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
    from sglang_tracing.analyzer.loaders.nsys_export import export_failure

    nsys = shutil.which("nsys")
    if nsys is None:
        raise TraceError(rep, "is an .nsys-rep and nsys is not on PATH; export it with "
                              "'nsys export --type sqlite' and pass the .sqlite")
    out = Path(tempfile.mkdtemp(prefix="sglang-trace-nsys-")) / (rep.stem + ".sqlite")
    done = subprocess.run([nsys, "export", "--type", "sqlite", "-o", str(out), str(rep)],
                          capture_output=True, text=True)
    problem = export_failure(done, str(out))
    if problem:
        raise TraceError(rep, problem)
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


def _process(global_tid: int | None) -> int | None:
    """The process part of a serialized globalTid (what nsys stats joins NVTX domains on)."""
    return None if global_tid is None else global_tid & 0x0000FFFFFF000000


def nvtx(con) -> pl.DataFrame:
    """NVTX push/pop and start/end ranges as ``nsys stats nvtx_sum`` counts them: names resolved through
    StringIds, domains per process, a range never closed ending at the last NVTX timestamp."""
    if "NVTX_EVENTS" not in _tables(con):
        return pl.DataFrame(schema=NVTX_SCHEMA)
    cols = _columns(con, "NVTX_EVENTS")
    text = "coalesce(s.value, n.text)" if "textId" in cols else "n.text"
    join = "left join StringIds s on n.textId = s.id" if "textId" in cols else ""
    domain = "n.domainId" if "domainId" in cols else "null"
    domains: dict[tuple, str] = {}
    for domain_id, tid, name in con.execute(
            f"select {domain}, n.globalTid, {text} from NVTX_EVENTS n {join} "
            f"where n.eventType = {NVTX_DOMAIN_CREATE} order by n.start"):
        domains.setdefault((domain_id, _process(tid)), name)
    last = con.execute("select max(coalesce(max(start), 0), coalesce(max(end), 0)) from NVTX_EVENTS").fetchone()[0]
    rows = con.execute(f"""
        select n.start, coalesce(n.end, ?), {text}, {domain}, n.globalTid, n.eventType
        from NVTX_EVENTS n {join}
        where n.eventType in ({','.join(map(str, NVTX_RANGE_STYLES))})
        order by n.start""", (last,)).fetchall()
    out = []
    for start, end, text, domain_id, tid, event_type in rows:
        domain = domains.get((domain_id, _process(tid)), "")
        m = SPAN_ID_IN_TEXT.search(text or "") if domain == sc.NVTX_DOMAIN else None
        out.append((start, end, text, domain, m.group(1) if m else None, tid, NVTX_RANGE_STYLES[event_type]))
    return pl.DataFrame(out, schema=NVTX_SCHEMA, orient="row")


def _api_classes(con) -> tuple[set[int], set[int]]:
    """(driver, backtrace) eventClass ids: from ENUM_NSYS_EVENT_CLASS where the export has it, else the
    ids that enum has always held (1 CUDA driver, 67-69 CUDA backtrace)."""
    if "ENUM_NSYS_EVENT_CLASS" not in _tables(con):
        return {1}, {67, 68, 69}
    enum = con.execute("select id, name from ENUM_NSYS_EVENT_CLASS").fetchall()
    return ({i for i, n in enum if "CUDA" in n and "DRIVER" in n}, {i for i, n in enum if "BACKTRACE" in n})


def api_calls(con) -> pl.DataFrame:
    """CUDA runtime and driver API calls, with the correlation id their GPU work carries. nsys keeps both
    in CUPTI_ACTIVITY_KIND_RUNTIME (eventClass tells them apart); CUDA backtrace records, which repeat
    the call they wrap, are left out."""
    tables = _tables(con)
    driver, backtrace = _api_classes(con)
    rows = []
    for table in ("CUPTI_ACTIVITY_KIND_RUNTIME", "CUPTI_ACTIVITY_KIND_DRIVER"):
        if table not in tables or "nameId" not in _columns(con, table):
            continue
        has_class = "eventClass" in _columns(con, table)
        for start, end, name, tid, corr, cls in con.execute(f"""
                select r.start, r.end, coalesce(s.value, ''), r.globalTid, r.correlationId,
                       {'r.eventClass' if has_class else 'null'}
                from {table} r left join StringIds s on r.nameId = s.id"""):
            if cls in backtrace:
                continue
            if table.endswith("DRIVER"):
                is_driver = True
            elif cls is not None:
                is_driver = cls in driver
            else:
                is_driver = not name.startswith("cuda")
            rows.append((start, end, name, tid, corr, "cuda_driver" if is_driver else "cuda_runtime"))
    return rows_frame(rows, CPU_OP_SCHEMA)


def osrt_calls(con) -> pl.DataFrame:
    """OS runtime library calls (``--trace=osrt``)."""
    if "OSRT_API" not in _tables(con):
        return pl.DataFrame(schema=CPU_OP_SCHEMA)
    rows = con.execute("""
        select o.start, o.end, coalesce(s.value, ''), o.globalTid, null, 'osrt'
        from OSRT_API o left join StringIds s on o.nameId = s.id order by o.start""").fetchall()
    return pl.DataFrame(rows, schema=CPU_OP_SCHEMA, orient="row")


def memops(con) -> pl.DataFrame:
    """GPU memcpy and memset, named as ``nsys stats`` names them: ``[CUDA memcpy <kind>]``, ``[CUDA memset]``."""
    tables = _tables(con)
    kinds = dict(MEMCPY_KINDS)
    if "ENUM_CUDA_MEMCPY_OPER" in tables:
        kinds.update(con.execute("select id, label from ENUM_CUDA_MEMCPY_OPER").fetchall())
    rows = []
    if "CUPTI_ACTIVITY_KIND_MEMCPY" in tables:
        for start, end, kind, size, dev, stream, corr in con.execute(
                "select start, end, copyKind, bytes, deviceId, streamId, correlationId from CUPTI_ACTIVITY_KIND_MEMCPY"):
            rows.append((start, end, end - start, f"[CUDA memcpy {kinds.get(kind, 'Unknown')}]", size, dev, stream,
                         corr, "nsys"))
    if "CUPTI_ACTIVITY_KIND_MEMSET" in tables:
        rows += con.execute("""select start, end, end - start, '[CUDA memset]', bytes, deviceId, streamId,
                                      correlationId, 'nsys' from CUPTI_ACTIVITY_KIND_MEMSET""").fetchall()
    return rows_frame(rows, MEMOP_SCHEMA)


def devices(con) -> pl.DataFrame:
    """TARGET_INFO_GPU: every GPU of the node (not only the profiled one)."""
    if "TARGET_INFO_GPU" not in _tables(con):
        return pl.DataFrame(schema=DEVICE_SCHEMA)
    cols = _columns(con, "TARGET_INFO_GPU")
    pick = lambda c: c if c in cols else "null"  # noqa: E731
    rows = con.execute(f"""select {pick('id')}, {pick('name')}, {pick('smCount')}, {pick('totalMemory')},
                                  {pick('computeMajor')}, {pick('computeMinor')}
                           from TARGET_INFO_GPU""").fetchall()
    return pl.DataFrame([(i, n, sm, mem, f"{a}.{b}" if a is not None else None, "nsys")
                         for i, n, sm, mem, a, b in rows], schema=DEVICE_SCHEMA, orient="row")


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


def load(path: str, spans: pl.DataFrame) -> Loaded:
    """An nsys export's kernels, memory operations, NVTX ranges, CUDA API and OS runtime calls and GPUs,
    put on the clock of ``spans`` (the trace's spans, which its NVTX ranges name)."""
    con, path = open_export(path)
    try:
        try:
            k, n, start, dev = kernels(con), nvtx(con), session_start_ns(con), devices(con)
            calls, osrt, mem = api_calls(con), osrt_calls(con), memops(con)
        except sqlite3.DatabaseError as exc:
            raise TraceError(path, f"corrupt or truncated SQLite file ({exc})") from None
        offset, how = alignment_offset(n, spans, start)
        shift = [pl.col("start_ns") + offset, pl.col("end_ns") + offset]
        cpu_ops = pl.concat([calls, osrt])
        frames = {name: frame.with_columns(shift) for name, frame in
                  (("kernels", k), ("nvtx", n), ("cpu_ops", cpu_ops), ("memops", mem)) if frame.height}
        frames["devices"] = dev
        source = Source("nsys", str(path), how, offset_ns=offset,
                        counts={"kernels": k.height, "nvtx": n.height, "cuda_api_calls": calls.height,
                                "osrt_calls": osrt.height, "memops": mem.height},
                        devices=dev.to_dicts(), version=metadata(con).get("EXPORT_PRODUCT_VERSION"))
        return Loaded(frames, source)
    finally:
        con.close()
