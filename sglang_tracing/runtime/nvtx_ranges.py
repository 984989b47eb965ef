"""NVTX ranges in domain ``sglang`` whose names carry the span id, so nsys rows join our spans.

A range is named ``"<span name> <span id as 16 hex digits>"``. Without nsys attached the
nvtx library's calls are near-free no-ops (~0.2 us a push/pop pair, measured on CPU).
"""
from __future__ import annotations

import logging

from sglang_tracing import semconv as sc

logger = logging.getLogger(__name__)

_domain = None
_enabled = False


def enable() -> bool:
    """Turn ranges on if the nvtx package imports; returns whether they are on."""
    global _domain, _enabled
    try:
        import nvtx

        _domain = nvtx.get_domain(sc.NVTX_DOMAIN)
        _enabled = True
    except Exception as exc:  # no nvtx, or no libnvToolsExt on this host
        logger.info("NVTX ranges off: %s", exc)
        _enabled = False
    return _enabled


def range_name(span_name: str, span_id: int) -> str:
    return f"{span_name} {span_id:016x}"


def push(span_name: str, span_id: int = 0) -> None:
    if _enabled:
        message = range_name(span_name, span_id) if span_id else span_name
        _domain.push_range(_domain.get_event_attributes(message=message))


def pop() -> None:
    if _enabled:
        _domain.pop_range()


def attributes(name: str):
    """The event attributes of a range with a fixed name, built once (None while ranges are off): pushing
    them skips registering the name's string and building attributes at every push."""
    return _domain.get_event_attributes(message=name) if _enabled else None


def push_attributes(attrs) -> None:
    if attrs is not None:
        _domain.push_range(attrs)
