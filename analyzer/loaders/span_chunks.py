"""Decoding a trace dir's span files in chunks of whole lines, in this process or in worker processes:
each chunk becomes one parquet part per span name (``otlp_columns``); a chunk the fast decoder declines
is reported back, and ``span_store`` reads its file with the reference path."""
from __future__ import annotations

import dataclasses
import os
import pickle
import selectors
import subprocess
import sys
from pathlib import Path

from sglang_tracing.analyzer.loaders import otlp_columns
from sglang_tracing.analyzer.loaders.files import read_bytes
from sglang_tracing.errors import TraceError

CHUNK_BYTES = 32 << 20
PARALLEL_MIN_BYTES = 64 << 20  # below this, decoding in this process beats starting workers
PROGRESS_MIN_BYTES = 256 << 20


@dataclasses.dataclass
class Task:
    index: int
    path: str
    start: int
    end: int  # -1: the whole (gzip) file
    last: bool  # holds the file's end, where a killed writer leaves a cut line

    @property
    def size(self) -> int:
        return self.end - self.start if self.end >= 0 else os.path.getsize(self.path)


def plan(files: list[Path]) -> list[Task]:
    """Chunks of whole lines, about CHUNK_BYTES each (a gzip file is one chunk)."""
    tasks: list[Task] = []
    for path in files:
        if path.suffix == ".gz":
            tasks.append(Task(len(tasks), str(path), 0, -1, True))
            continue
        size = path.stat().st_size
        start = 0
        with open(path, "rb") as f:
            while start < size:
                f.seek(min(start + CHUNK_BYTES, size))
                f.readline()  # to the end of the line the cut fell in
                end = min(f.tell(), size)
                tasks.append(Task(len(tasks), str(path), start, end, end >= size))
                start = end
    return tasks


def decode_task(task: Task, folder: str) -> dict:
    """Decode one chunk and write its parquet parts (runs in a worker process)."""
    import gc

    gc.disable()  # millions of acyclic objects; the collector would only rescan them
    try:
        if task.end < 0:
            try:
                data = read_bytes(Path(task.path))
            except TraceError:  # the reference path reports it
                return {"index": task.index, "fallback": True}
        else:
            with open(task.path, "rb") as f:
                f.seek(task.start)
                data = f.read(task.end - task.start)
        lines = data.split(b"\n")
        del data
        if lines and lines[-1] == b"":
            lines.pop()
        cut = False
        try:
            chunk = otlp_columns.decode_lines(lines)
        except otlp_columns.DecodeError:
            # a killed writer's half line is the file's last one; anything else goes to the reference path
            tail = lines[-1] if lines else b""
            if not (task.last and tail and not tail.endswith(b"}") and _only_last_fails(lines)):
                return {"index": task.index, "fallback": True}
            cut = True
            chunk = otlp_columns.decode_lines(lines[:-1])
        parts = []
        for g, (name, frame) in enumerate(chunk.groups):
            rel = f"spans/{task.index:05d}-{g:03d}.parquet"
            frame.write_parquet(Path(folder) / rel, compression="lz4")
            parts.append({"file": rel, "name": name, "rows": frame.height, "schema": dict(frame.schema)})
        return {"index": task.index, "fallback": False, "parts": parts, "keys": chunk.keys,
                "events": chunk.events, "cut": cut, "spans": chunk.spans}
    finally:
        gc.enable()


def _only_last_fails(lines: list[bytes]) -> bool:
    try:
        otlp_columns.decode_lines(lines[:-1])
    except otlp_columns.DecodeError:
        return False
    return True


def decode_all(tasks: list[Task], folder: Path, workers: int | None):
    """Each task's result, in task order: decoded here when small, else by worker processes."""
    total = sum(t.size for t in tasks)
    from sglang_tracing.analyzer.progress import Progress

    progress = Progress(total, "decoding spans") if total >= PROGRESS_MIN_BYTES else None
    n_cpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = min(workers or n_cpu, len(tasks))
    try:
        if workers <= 1 or total < PARALLEL_MIN_BYTES:
            for task in tasks:
                yield decode_task(task, str(folder))
                if progress:
                    progress.update(task.size)
            return
        with _WorkerPool(workers) as pool:
            for task, result in zip(tasks, pool.map(tasks, str(folder))):
                yield result
                if progress:
                    progress.update(task.size)
    finally:
        if progress:
            progress.close()


class _WorkerPool:
    """Worker processes started as ``python -c`` (not multiprocessing: spawn would re-run the caller's
    main module, fork would copy polars' thread pool); tasks and results are pickled over pipes."""

    def __init__(self, n: int):
        code = "from sglang_tracing.analyzer.loaders.span_chunks import _worker_main; _worker_main()"
        self.procs = [subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
                      for _ in range(n)]

    def map(self, tasks: list[Task], folder: str):
        pending = list(enumerate(tasks))[::-1]
        busy: dict[int, int] = {}  # fd -> task index
        results: dict[int, dict] = {}
        with selectors.DefaultSelector() as sel:
            for proc in self.procs:
                if pending:
                    busy[proc.stdout.fileno()] = self._send(proc, pending.pop(), folder)
                    sel.register(proc.stdout, selectors.EVENT_READ, proc)
            next_out = 0
            while busy:
                for key, _ in sel.select():
                    proc = key.data
                    index = busy.pop(proc.stdout.fileno())
                    try:
                        ok, value = pickle.load(proc.stdout)
                    except EOFError:
                        raise RuntimeError(f"span decoding worker {proc.pid} died "
                                           f"(exit {proc.wait()}); out of memory?") from None
                    if not ok:
                        raise RuntimeError(f"span decoding worker failed:\n{value}")
                    results[index] = value
                    if pending:
                        busy[proc.stdout.fileno()] = self._send(proc, pending.pop(), folder)
                while next_out in results:
                    yield results.pop(next_out)
                    next_out += 1

    @staticmethod
    def _send(proc, item: tuple[int, Task], folder: str) -> int:
        pickle.dump((item[1], folder), proc.stdin)
        proc.stdin.flush()
        return item[0]

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        for proc in self.procs:
            if exc_type is not None:  # interrupted or failed: the other chunks are not wanted
                proc.kill()
            try:
                proc.stdin.close()
            except OSError:
                pass
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _worker_main() -> None:
    """A worker: (task, folder) in on stdin, (ok, result or traceback) out on stdout, until stdin closes."""
    import signal
    import traceback

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it ends the workers
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        try:
            task, folder = pickle.load(stdin)
        except EOFError:
            return
        try:
            reply = (True, decode_task(task, folder))
        except Exception:  # reported to the parent, which raises it
            reply = (False, traceback.format_exc())
        pickle.dump(reply, stdout)
        stdout.flush()
