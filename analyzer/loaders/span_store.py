"""A trace dir's spans as parquet parts: decoded once, in parallel, then scanned lazily (out of core).

The OTLP-JSON span files are cut into chunks of whole lines; worker processes decode each chunk
(``span_chunks``) and write one parquet part per span name, so a query for some span names reads
only their parts (each part holds one name: its statistics let the scan skip the others). A file
the fast decoder declines is read by the reference path (``otlp_json``) instead, which also gives
the exact error for bad input. The parts, the events and an index live in the user's cache
(``cache_root()``), never in the trace dir: ``<root>/<trace dir name>-<hash of its resolved path>/<key>/``,
where the key covers the span files' names, sizes and mtimes and this format's version (a temp dir
instead when the trace dir is still being written or the cache cannot be written). A trace dir's
cache goes with its next build, or with any build once the trace dir is gone.
"""
from __future__ import annotations

import atexit
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import polars as pl

from sglang_tracing.analyzer.loaders import span_chunks
from sglang_tracing.analyzer.model import EVENT_SCHEMA, SPAN_BASE
from sglang_tracing.config import ENV_CACHE_DIR

logger = logging.getLogger(__name__)

TRACE_DIR_FILE = "trace_dir.txt"  # in each trace dir's cache folder: the trace dir it holds the parts of
FORMAT = 3  # bump when parts written by an older analyzer must not be read


@dataclasses.dataclass
class Store:
    """Parquet parts of one trace dir's spans, their common schema (reference column order) and events."""

    folder: Path
    parts: list[str]
    schema: pl.Schema
    events: pl.DataFrame
    cut_files: list[str]
    spans: int

    def scan(self) -> pl.LazyFrame:
        """Every span, unsorted, without the derived columns (``model.scan_spans`` adds them)."""
        if not self.parts:
            return pl.LazyFrame(schema=self.schema)
        return pl.scan_parquet([str(self.folder / p) for p in self.parts], schema=self.schema,
                               missing_columns="insert")


def cache_key(files: list[Path]) -> str:
    h = hashlib.blake2b(digest_size=12)
    h.update(f"format {FORMAT};".encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()


def cache_root() -> Path:
    """$SGLANG_TRACE_CACHE_DIR, else ``sglang-tracing`` in the XDG user cache dir ($XDG_CACHE_HOME, ~/.cache)."""
    if os.environ.get(ENV_CACHE_DIR):
        return Path(os.environ[ENV_CACHE_DIR])
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache") / "sglang-tracing"


def cache_folder(trace_dir: Path) -> Path:
    """Where one trace dir's parts are cached: its name, for people, and a hash of its resolved path."""
    resolved = trace_dir.resolve()
    digest = hashlib.blake2b(str(resolved).encode(), digest_size=8).hexdigest()
    return cache_root() / f"{resolved.name[:64]}-{digest}"


def open_store(trace_dir: Path, files: list[Path], use_cache: bool = True, workers: int | None = None) -> Store:
    """The trace dir's cached parts when they match its span files, else freshly built ones."""
    key = cache_key(files)
    root = cache_folder(trace_dir)
    writable_cache = use_cache and not any(trace_dir.glob("*.active"))
    if writable_cache:
        store = _read_index(root / key)
        if store is not None:
            for path in store.cut_files:
                _warn_cut(path)
            return store
        try:
            _prune_orphans(root.parent)
            folder = Path(tempfile.mkdtemp(prefix=f"{key}.tmp-", dir=_fresh_root(root, trace_dir)))
        except OSError:
            writable_cache = False
    if not writable_cache:
        folder = Path(tempfile.mkdtemp(prefix="sglang-trace-parts-"))
        atexit.register(shutil.rmtree, folder, True)
    try:
        store = _build(files, folder, workers)
    except BaseException:  # bad input, interrupted: no half-built parts left behind
        shutil.rmtree(folder, ignore_errors=True)
        raise
    if writable_cache:
        final = root / key
        try:
            folder.rename(final)
            store.folder = final
        except OSError:  # another analyzer finished the same cache first
            atexit.register(shutil.rmtree, folder, True)
    return store


def _fresh_root(root: Path, trace_dir: Path) -> Path:
    """The trace dir's cache folder with the entries of other keys (older versions of the span files)
    removed, and unfinished ones left by an analyzer that was killed (an hour old)."""
    if root.exists():
        for old in root.iterdir():
            if old.is_dir() and (".tmp-" not in old.name or time.time() - old.stat().st_mtime > 3600):
                shutil.rmtree(old, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    (root / TRACE_DIR_FILE).write_text(str(trace_dir.resolve()))
    return root


def _prune_orphans(cache: Path) -> None:
    """Remove the cached parts of trace dirs that are gone (they would outlive them). Only folders
    holding our TRACE_DIR_FILE are touched."""
    for folder in cache.iterdir() if cache.is_dir() else ():
        try:
            trace_dir = (folder / TRACE_DIR_FILE).read_text()
        except OSError:
            continue
        if not Path(trace_dir).is_dir():
            shutil.rmtree(folder, ignore_errors=True)


def _read_index(folder: Path) -> Store | None:
    try:
        index = json.loads((folder / "index.json").read_text())
        schema = pl.read_parquet_schema(folder / "schema.parquet")
        events = pl.read_parquet(folder / "events.parquet")
    except (OSError, ValueError, pl.exceptions.PolarsError):
        return None
    return Store(folder, index["parts"], pl.Schema(schema), events, index["cut_files"], index["spans"])


def _build(files: list[Path], folder: Path, workers: int | None) -> Store:
    (folder / "spans").mkdir()
    tasks = span_chunks.plan(files)
    results = list(span_chunks.decode_all(tasks, folder, workers))
    declined = {tasks[r["index"]].path for r in results if r["fallback"]}
    parts, keys, events, cut, n = [], {}, [], [], 0
    for task, r in zip(tasks, results):
        if task.path in declined:
            for p in r.get("parts", ()):
                (folder / p["file"]).unlink()
            if task.last:  # the whole file, once
                r = _reference_file(Path(task.path), task.index, folder)
            else:
                continue
        elif r["cut"]:
            _warn_cut(task.path)  # the reference path warns itself
        parts += r["parts"]
        keys.update(dict.fromkeys(r["keys"]))
        events.append(r["events"])
        n += r["spans"]
        if r["cut"]:
            cut.append(task.path)
    schema = _unify(parts, list(keys))
    for p in parts:
        if any(schema[c] != d for c, d in p["schema"].items()):  # e.g. all-empty lists in this part
            path = folder / p["file"]
            pl.read_parquet(path).cast({c: schema[c] for c in p["schema"]}).write_parquet(path, compression="lz4")
    pl.DataFrame(schema=schema).write_parquet(folder / "schema.parquet")
    ev = pl.concat(events) if events else pl.DataFrame(schema=EVENT_SCHEMA)
    ev.write_parquet(folder / "events.parquet")
    (folder / "index.json").write_text(json.dumps({"format": FORMAT, "parts": [p["file"] for p in parts],
                                                   "cut_files": cut, "spans": n}))
    return Store(folder, [p["file"] for p in parts], schema, ev, cut, n)


def _warn_cut(path: str) -> None:
    logger.warning("%s: last line is cut off (writer killed?); ignoring it", path)


def _reference_file(path: Path, index: int, folder: Path) -> dict:
    """One file through the reference path (exact errors, and inputs the fast decoder declines)."""
    from sglang_tracing.analyzer.loaders.otlp_json import read_span_file
    from sglang_tracing.analyzer.loaders.span_frame import spans_frame

    rows, events, cut = read_span_file(path)
    frame = spans_frame(rows).drop("dur_ns")
    parts = []
    for g, ((name,), group) in enumerate(frame.partition_by("name", as_dict=True, maintain_order=True).items()):
        keep = [c for c in group.columns
                if c in SPAN_BASE or group[c].dtype == pl.Null or group[c].null_count() < group.height]
        rel = f"spans/{index:05d}-{g:03d}.parquet"
        group.select(keep).write_parquet(folder / rel, compression="lz4")
        parts.append({"file": rel, "name": name, "rows": group.height, "schema": dict(group.select(keep).schema)})
    ev = pl.DataFrame(events, schema=EVENT_SCHEMA, orient="row") if events else pl.DataFrame(schema=EVENT_SCHEMA)
    return {"parts": parts, "keys": frame.columns[len(SPAN_BASE):], "events": ev, "cut": cut, "spans": frame.height}


def _unify(parts: list[dict], keys: list[str]) -> pl.Schema:
    """Base columns, then attribute keys in order of first appearance, each with its parts' supertype."""
    empty = [pl.DataFrame(schema=p["schema"]) for p in parts]
    merged = pl.concat([pl.DataFrame(schema=SPAN_BASE), *empty], how="diagonal_relaxed").schema
    return pl.Schema({c: merged[c] for c in [*SPAN_BASE, *keys]})
