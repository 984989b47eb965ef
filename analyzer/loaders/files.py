"""Opening input files that may be gzip-compressed (committed example traces are)."""
from __future__ import annotations

import gzip
import shutil
import tempfile
from pathlib import Path

from sglang_tracing.errors import TraceError


def resolve(base: Path, value: str) -> Path:
    """A recorded path read against ``base`` (absolute ones stay); a gzip-compressed copy also counts."""
    path = Path(base) / value
    if not path.exists() and Path(str(path) + ".gz").exists():
        return Path(str(path) + ".gz")
    return path


def read_bytes(path: Path) -> bytes:
    """The file's bytes, decompressed when it ends in .gz; a truncated gzip keeps what it has."""
    if path.suffix != ".gz":
        return path.read_bytes()
    out = bytearray()
    try:
        with gzip.open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                out += chunk
    except EOFError:
        pass  # cut-off gzip stream: keep what decompressed
    except (OSError, gzip.BadGzipFile) as exc:
        raise TraceError(path, f"not a readable gzip file ({exc})") from None
    return bytes(out)


def local_copy(path: Path) -> Path:
    """A plain-file path for tools that need one (sqlite): ``path`` itself, or a decompressed temp copy."""
    if path.suffix != ".gz":
        return path
    tmp = Path(tempfile.mkdtemp(prefix="sglang-trace-")) / path.stem
    try:
        with gzip.open(path, "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
    except (OSError, EOFError) as exc:
        raise TraceError(path, f"not a readable gzip file ({exc})") from None
    return tmp


def glob_inputs(folder: Path, pattern: str) -> list[Path]:
    """Files matching ``pattern`` or ``pattern + '.gz'``, sorted."""
    return sorted(set(folder.glob(pattern)) | set(folder.glob(pattern + ".gz")))
