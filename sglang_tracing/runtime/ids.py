"""Trace and span ids derived from request ids, so every process agrees without passing context."""
from __future__ import annotations

import hashlib
import random

_rng = random.Random()


def new_span_id() -> int:
    """A random non-zero 64-bit span id (hot path: no hashing, no os.urandom)."""
    return _rng.getrandbits(64) or 1


def trace_id_for(key: str) -> int:
    """128-bit trace id of a trace key (``request_trace_key(rid)``, or "process:<pid>" for a process's own spans)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=16).digest(), "big") or 1


def request_root_span_id(rid: str) -> int:
    """Span id of a request's root span, computable in any process from the rid alone."""
    return int.from_bytes(hashlib.blake2b(b"root:" + rid.encode(), digest_size=8).digest(), "big") or 1


REQUEST_TRACE_KEY_PREFIX = "req:"
_EXPLICIT = "\x1f"  # separates a rid from the trace id it was given (a caller's, or a PD pair's)


def request_trace_key(rid: str, trace_id: int | None = None) -> str:
    """The trace key of a request's spans, in every process: its trace id is derived from it, or is
    ``trace_id`` when the request was given one (a caller's ``traceparent``, a PD pair's)."""
    key = REQUEST_TRACE_KEY_PREFIX + rid
    return key if trace_id is None else f"{key}{_EXPLICIT}{trace_id:032x}"


def rid_of_trace_key(key: str) -> str:
    return key.removeprefix(REQUEST_TRACE_KEY_PREFIX).partition(_EXPLICIT)[0]


def trace_id_of_key(key: str) -> int:
    """The trace id a trace key stands for."""
    _, sep, explicit = key.partition(_EXPLICIT)
    return int(explicit, 16) if sep else trace_id_for(key)


def pd_trace_id(bootstrap_host, bootstrap_port, bootstrap_room) -> int:
    """One trace id for a request's prefill and decode halves, from what the router gives both servers."""
    return trace_id_for(f"pd:{bootstrap_host}:{bootstrap_port}:{bootstrap_room}")
