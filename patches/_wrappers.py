"""Wrapper factories shared by every patch module, after opentelemetry-python-contrib.

Every hook function of a patch module has one signature::

    fn(state, call, /, *args, **kwargs)

``state`` is its process's state object (``patches.state``), ``call`` the ``Call`` of this invocation
(the recorder, what ``before`` returned, the original's timing and result), and the rest the
original's own arguments, bound by SGLang's own parameter names. ``before`` returns a token that
``after`` and ``cleanup`` read as ``call.token``; ``cleanup`` runs instead of ``after`` when the
original raises.

Rules every wrapper keeps:
- first line is the fast path: no recorder in this process -> call the original, nothing else;
- the original call's result and exceptions pass through untouched;
- our own work runs guarded: an exception is counted in the trace, logged once, and swallowed.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from time import time_ns

from sglang_tracing.runtime import recorder
from sglang_tracing.runtime.sink import SpanSink

logger = logging.getLogger(__name__)

HookFn = Callable[..., object]  # fn(state, call, /, *args, **kwargs)


class Call:
    """One call of a hooked SGLang function, as our hook functions see it."""

    __slots__ = ("rec", "token", "start_ns", "end_ns", "result")

    def __init__(self, rec: SpanSink | None, token: object = None, start_ns: int = 0, end_ns: int = 0,
                 result: object = None):
        self.rec = rec  # None only in set-up hooks that run before this process has a recorder
        self.token = token
        self.start_ns = start_ns
        self.end_ns = end_ns
        self.result = result


class InjectedFault(RuntimeError):
    """Raised inside our own hook code when SGLANG_TRACE_INJECT_FAULT names the hook (tests)."""


def _guarded(name: str, fn: HookFn | None, state, call: Call, args, kwargs):
    """Run our own ``fn``; an exception is counted and logged once, never raised."""
    if fn is None:
        return None
    try:
        return fn(state, call, *args, **kwargs)
    except Exception as exc:
        call.rec.hook_failed(name, exc)
        return None


def _faulty(name: str) -> HookFn:
    def raising(*args, **kwargs):
        raise InjectedFault(f"fault injected into hook {name}")

    return raising


def _named(hook: Callable, name: str) -> Callable:
    hook.__name__ = f"sglang_tracing_{name}"
    return hook


def _started(rec: SpanSink, name: str, before: HookFn | None, state, args, kwargs) -> Call:
    """The call's record once ``before`` ran: the original starts now."""
    call = Call(rec)
    call.token = _guarded(name, before, state, call, args, kwargs)
    call.start_ns = time_ns()
    return call


def _returned(call: Call, result, name: str, after: HookFn | None, state, args, kwargs) -> None:
    call.end_ns, call.result = time_ns(), result
    _guarded(name, after, state, call, args, kwargs)


def around(name: str, *, state, after: HookFn | None = None, before: HookFn | None = None,
           cleanup: HookFn | None = None, inject_fault: str | None = None) -> Callable:
    """An AROUND hook timing the original call."""
    after = _faulty(name) if inject_fault == name else after

    def hook(original, *args, **kwargs):
        rec = recorder.active()
        if rec is None:
            return original(*args, **kwargs)
        call = _started(rec, name, before, state, args, kwargs)
        try:
            result = original(*args, **kwargs)
        except BaseException:
            _guarded(name, cleanup, state, call, args, kwargs)
            raise
        _returned(call, result, name, after, state, args, kwargs)
        return result

    return _named(hook, name)


def around_async(name: str, *, state, after: HookFn, before: HookFn | None = None,
                 inject_fault: str | None = None) -> Callable:
    """``around`` for coroutine functions: the hook returns the awaited original's result."""
    after = _faulty(name) if inject_fault == name else after

    def hook(original, *args, **kwargs):
        rec = recorder.active()
        if rec is None:
            return original(*args, **kwargs)

        async def timed():
            call = _started(rec, name, before, state, args, kwargs)
            result = await original(*args, **kwargs)
            _returned(call, result, name, after, state, args, kwargs)
            return result

        return timed()

    return _named(hook, name)


def after_setup(name: str, *, state, on_init: HookFn, inject_fault: str | None = None) -> Callable:
    """An AROUND hook for set-up methods (constructors, model loading): ``on_init`` runs guarded once
    the original returns.

    Set-up happens before a process has a recorder (``call.rec`` may be None), so this hook has no
    fast path; failures are logged, and counted once a recorder exists.
    """
    on_init = _faulty(name) if inject_fault == name else on_init

    def hook(original, *args, **kwargs):
        start = time_ns()
        result = original(*args, **kwargs)
        call = Call(recorder.active(), None, start, time_ns(), result)
        try:
            on_init(state, call, *args, **kwargs)
        except Exception as exc:
            rec = recorder.active()
            if rec is not None:
                rec.hook_failed(name, exc)
            else:
                logger.warning("sglang-tracing: %s failed; this process runs untraced", name, exc_info=True)
        return result

    return _named(hook, name)
