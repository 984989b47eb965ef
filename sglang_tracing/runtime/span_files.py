"""The exporter's span file: whole lines only, cut into parts at a size cap, old parts deleted, and a
clean stop when the disk fills or the trace dir goes away.

Parts of ``spans-<process>.jsonl`` are ``spans-<process>.p0001.jsonl``, ``.p0002`` ... (the analyzer's
``spans-*.jsonl`` reads them all). Retention deletes the oldest parts beyond ``keep`` and never the part
being written. When a write fails (disk full, read-only, gone), the part is cut back to its last whole
line, a reserve file kept for the purpose is freed, and one last line says where and why writing
stopped; the process's records from then on are counted, not written.
"""
from __future__ import annotations

import errno
import logging
import os
import re
import time
from collections.abc import Callable

logger = logging.getLogger("sglang_tracing.exporter")

RESERVE_BYTES = 16 << 10  # room for the stop line on a full disk
CHECK_PATH_S = 1.0  # how often the writer checks that its file is still where it was


def part_path(base: str, index: int) -> str:
    """``spans-x.jsonl`` for part 0, ``spans-x.p0001.jsonl`` after."""
    return base if index == 0 else f"{base[:-len('.jsonl')]}.p{index:04d}.jsonl"


def parts_of(base: str) -> list[tuple[int, str]]:
    """The parts of ``base`` on disk, oldest first."""
    folder, name = os.path.split(base)
    stem = re.escape(name[:-len(".jsonl")])
    pattern = re.compile(rf"{stem}(?:\.p(\d{{4,}}))?\.jsonl$")
    found = []
    for entry in os.listdir(folder or "."):
        m = pattern.fullmatch(entry)
        if m:
            found.append((int(m.group(1) or 0), os.path.join(folder, entry)))
    return sorted(found)


class SpanFile:
    """A text stream for ``FileSpanExporter``: each write() one whole line, or nothing."""

    def __init__(self, base: str, max_bytes: int = 0, keep: int = 0,
                 stop_line: Callable[[str, dict], str] | None = None):
        self.base = base
        self.max_bytes = max_bytes
        self.keep = keep
        self.stop_line = stop_line  # (reason, attributes) -> one encoded line
        self.index = 0
        self.closed = False
        self.stopped: str | None = None  # why writing stopped
        self.unwritten_lines = 0
        self.deleted: list[str] = []  # parts retention removed, not yet told in the trace
        self._reserve = os.path.join(os.path.dirname(base), "." + os.path.basename(base) + ".reserve")
        self._fd = self._open(base)
        self._size = os.fstat(self._fd).st_size
        self._checked = time.monotonic()
        self._make_reserve()

    @staticmethod
    def _open(path: str) -> int:
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _make_reserve(self) -> None:
        try:
            with open(self._reserve, "wb") as f:
                f.write(b"\0" * RESERVE_BYTES)
        except OSError:
            pass  # a disk already full: the stop line may not fit, the log still says it

    # ---- stream protocol ----
    def write(self, text: str) -> int:
        if self.stopped:
            self.unwritten_lines += 1
            return len(text)
        data = text.encode()
        if self.max_bytes and self._size and self._size + len(data) > self.max_bytes:
            self._rotate()
        if time.monotonic() - self._checked > CHECK_PATH_S and not self._still_there():
            self._stop("trace dir removed", None)
            self.unwritten_lines += 1
            return len(text)
        self._write_line(data)
        return len(text)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self._fd)
            _unlink(self._reserve)

    # ---- internals ----
    def _write_line(self, data: bytes) -> None:
        before = self._size
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view):]
        except OSError as exc:
            self._stop(errno.errorcode.get(exc.errno, "error") + f" ({exc.strerror})", before)
            self.unwritten_lines += 1
            return
        self._size += len(data)

    def _still_there(self) -> bool:
        self._checked = time.monotonic()
        try:
            return os.stat(part_path(self.base, self.index)).st_ino == os.fstat(self._fd).st_ino
        except OSError:
            return False

    def _rotate(self) -> None:
        try:
            fd = self._open(part_path(self.base, self.index + 1))
        except OSError as exc:  # a read-only dir: the part grows past the cap rather than losing lines
            logger.warning("cannot begin span file part %d (%s); %s grows past its cap", self.index + 1, exc,
                           part_path(self.base, self.index))
            self.max_bytes = 0
            return
        os.close(self._fd)
        self._fd, self._size = fd, 0
        self.index += 1
        if self.keep:
            for _, path in parts_of(self.base)[:-self.keep]:
                if path != part_path(self.base, self.index):
                    _unlink(path)
                    self.deleted.append(os.path.basename(path))

    def _stop(self, reason: str, cut_to: int | None) -> None:
        """Cut the part back to its last whole line, free the reserve, write one stop line, then stop."""
        self.stopped = reason
        if cut_to is not None:
            try:
                os.ftruncate(self._fd, cut_to)
            except OSError:
                pass
        _unlink(self._reserve)
        logger.warning("writing %s stopped: %s; this process's spans from now on are not written",
                       part_path(self.base, self.index), reason)
        if self.stop_line is not None and cut_to is not None:
            try:
                line = self.stop_line(reason, {}).encode()
                if os.write(self._fd, line) != len(line):
                    os.ftruncate(self._fd, cut_to)
            except OSError:
                pass


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
