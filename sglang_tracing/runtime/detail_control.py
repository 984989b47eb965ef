"""The detail request a running server's schedulers poll: ``<trace dir>/detail-request.json``.

Written whole and renamed into place (``write_request``), so a scheduler never reads half a request;
each request has a new id, and a scheduler acts on an id once.
"""
from __future__ import annotations

import json
import os
import time
import uuid

from sglang_tracing import semconv as sc
from sglang_tracing.config import DETAIL_CONTROL_FILE, MAX_DETAIL_FORWARDS
from sglang_tracing.errors import UsageError


def control_path(trace_dir: str) -> str:
    return os.path.join(trace_dir, DETAIL_CONTROL_FILE)


def validate(level: str, forwards: int) -> None:
    if level not in sc.DETAIL_LEVELS:
        raise UsageError(f"--level takes one of {', '.join(sc.DETAIL_LEVELS)}, not {level!r}")
    if not 0 < forwards <= MAX_DETAIL_FORWARDS:
        raise UsageError(f"--forwards takes 1 to {MAX_DETAIL_FORWARDS}, not {forwards}")


def write_request(trace_dir: str, level: str, forwards: int) -> dict:
    """Ask every scheduler tracing into ``trace_dir`` for ``level`` detail over its next ``forwards`` forwards."""
    validate(level, forwards)
    request = {"id": uuid.uuid4().hex[:12], "level": level, "forwards": forwards, "requested_ns": time.time_ns()}
    path = control_path(trace_dir)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(request, f)
    os.replace(tmp, path)
    return request


def read_request(path: str) -> dict | None:
    """The request in the control file, or None when it is missing or not one."""
    try:
        with open(path) as f:
            request = json.load(f)
        validate(request["level"], int(request["forwards"]))
        return request
    except (OSError, ValueError, KeyError, TypeError):
        return None
