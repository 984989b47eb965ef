"""NVTX ranges in domain ``sglang`` whose names carry the span id, so nsys rows join our spans.

A range is named ``"<span name> <span id as 16 hex digits>"``. Without nsys attached the
nvtx library's calls are near-free no-ops (~0.2 us a push/pop pair, measured on CPU).

Kineto (the torch profiler) records no NVTX, so while a torch profiler records (``follow_torch_profiler``,
checked once per model forward) each range also opens a ``torch.profiler.record_function`` range of
the same name: Kineto's user annotations then carry the span, layer and op ranges.
"""
from __future__ import annotations

import logging

from sglang_tracing import semconv as sc

logger = logging.getLogger(__name__)

_domain = None
_enabled = False


class _Flags:
    """Read by every layer/op range wrapper at each call: one attribute load, no function call."""

    __slots__ = ("annotate",)

    def __init__(self):
        self.annotate = False  # a torch profiler records: ranges are user annotations too


flags = _Flags()
_record_function = None  # torch.autograd.profiler.record_function, once a profiler was seen
_open: list = []  # the annotation of each range pushed (None where none was opened)


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


def follow_torch_profiler() -> bool:
    """Whether a torch profiler records now (torch is loaded: SGLang's model runner calls this); ranges
    pushed from here on are annotated while it does."""
    global _record_function
    import torch

    flags.annotate = annotate = torch.autograd._profiler_enabled()
    if annotate and _record_function is None:
        _record_function = torch.autograd.profiler.record_function
    return annotate


def annotation(name: str):
    """A ``record_function`` range opened now, or None unless a torch profiler records."""
    if not flags.annotate:
        return None
    note = _record_function(name)
    note.__enter__()
    return note


def close(note) -> None:
    if note is not None:
        note.__exit__(None, None, None)


def push(span_name: str, span_id: int = 0) -> None:
    message = None
    if _enabled or flags.annotate:
        message = range_name(span_name, span_id) if span_id else span_name
        if _enabled:
            _domain.push_range(_domain.get_event_attributes(message=message))
    _open.append(annotation(message) if message else None)  # one entry per push keeps pops paired


def pop() -> None:
    if _enabled:
        _domain.pop_range()
    if _open:
        close(_open.pop())


def attributes(name: str):
    """The event attributes of a range with a fixed name, built once (None while ranges are off): pushing
    them skips registering the name's string and building attributes at every push."""
    return _domain.get_event_attributes(message=name) if _enabled else None


def tool_attached() -> bool:
    """Whether an NVTX tool (nsys) receives the ranges: without one, the nvtx library's domain is a no-op
    (it builds no attributes), decided when the process started and fixed for its life."""
    return _enabled and _domain.get_event_attributes(message=sc.NVTX_DOMAIN) is not None


def domain_push_pop():
    """The domain's own ``push_range`` and ``pop_range`` (bound methods of the nvtx extension), for a wrapper
    that pushes prebuilt attributes with no call of ours in between; None while ranges are off."""
    return (_domain.push_range, _domain.pop_range) if _enabled else None


def push_attributes(attrs) -> None:
    if attrs is not None:
        _domain.push_range(attrs)


def pop_attributes(attrs) -> None:
    """Close a range ``push_attributes(attrs)`` opened."""
    if attrs is not None:
        _domain.pop_range()
