"""Follow a live trace dir: the span and NVML lines its exporters appended since the last poll.

The exporter processes append whole lines (one ``os.write`` each) every flush interval, so a reader
keeps a byte offset per file and parses only what was appended; a line still being written (no
newline yet) waits for the next poll. On attach, a span file longer than ``tail_bytes`` is read from
its last ``tail_bytes`` only (``skipped_bytes`` says how much was left out).
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from sglang_tracing.analyzer.loaders.otlp_json import read_line
from sglang_tracing.config import TOP_TAIL_BYTES

logger = logging.getLogger(__name__)


@dataclass
class Appended:
    """What one poll found: span tuples (``otlp_json.SPAN_FIELDS`` + attribute pairs), NVML rows, GPU notes."""
    spans: list = field(default_factory=list)
    events: list = field(default_factory=list)
    nvml: list[dict] = field(default_factory=list)
    gpu_notes: dict[str, dict] = field(default_factory=dict)  # process label -> gpu-<label>.json
    bad_lines: int = 0


class _FileTail:
    __slots__ = ("path", "offset", "partial")

    def __init__(self, path: Path, offset: int):
        self.path, self.offset, self.partial = path, offset, b""

    def read_lines(self) -> list[bytes]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return []
        self.offset += len(data)
        data = self.partial + data
        lines = data.split(b"\n")
        self.partial = lines.pop()  # b"" after a newline, else the part of a line still being written
        return [line for line in lines if line]


class TraceTail:
    """Incremental reader of one trace dir; ``poll()`` returns what was appended since the last call."""

    def __init__(self, trace_dir: str | Path, tail_bytes: int = TOP_TAIL_BYTES):
        self.trace_dir = Path(trace_dir)
        self.tail_bytes = tail_bytes
        self.skipped_bytes = 0
        self._files: dict[Path, _FileTail] = {}
        self._gpu_notes: dict[Path, int] = {}  # path -> mtime_ns read

    def _tail_of(self, path: Path, is_spans: bool) -> _FileTail:
        tail = self._files.get(path)
        if tail is None:
            size = path.stat().st_size if path.exists() else 0
            start = max(0, size - self.tail_bytes) if is_spans else max(0, size - (1 << 20))
            tail = self._files[path] = _FileTail(path, start)
            if start:
                self.skipped_bytes += start
                with open(path, "rb") as f:  # resume at a line boundary
                    f.seek(start)
                    tail.offset += len(f.readline())
        return tail

    def poll(self) -> Appended:
        out = Appended()
        for path in sorted(self.trace_dir.glob("spans-*.jsonl")):
            for line in self._tail_of(path, True).read_lines():
                try:
                    read_line(line, out.spans, out.events)
                except ValueError:
                    out.bad_lines += 1
        for path in sorted(self.trace_dir.glob("nvml-*.jsonl")):
            for line in self._tail_of(path, False).read_lines():
                try:
                    out.nvml.append(json.loads(line))
                except ValueError:
                    out.bad_lines += 1
        for path in self.trace_dir.glob("gpu-*.json"):
            try:
                mtime = path.stat().st_mtime_ns
                if self._gpu_notes.get(path) != mtime:
                    out.gpu_notes[path.stem.removeprefix("gpu-")] = json.loads(path.read_text())
                    self._gpu_notes[path] = mtime
            except (OSError, ValueError):
                continue
        if out.bad_lines:
            logger.warning("%d line(s) of %s were not spans or samples; skipped", out.bad_lines, self.trace_dir)
        return out


def is_trace_dir(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.is_dir() and (any(p.glob("spans-*.jsonl")) or (p / "manifest.json").exists())
