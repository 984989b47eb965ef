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


def request_trace_key(rid: str) -> str:
    """The trace key of a request's spans, in every process: its trace id is derived from it."""
    return REQUEST_TRACE_KEY_PREFIX + rid


def rid_of_trace_key(key: str) -> str:
    return key.removeprefix(REQUEST_TRACE_KEY_PREFIX)
