"""Wrapper factories shared by every patch module, after opentelemetry-python-contrib.

Rules every hook follows:
- first line is the fast path: no recorder in this process -> call the original, nothing else;
- the original call's result and exceptions pass through untouched;
- our own work runs guarded: an exception is counted in the trace, logged once, and swallowed.
"""
from __future__ import annotations

import functools
import logging
import pkgutil
from collections.abc import Callable
from time import time_ns

from sglang_tracing.runtime import recorder as _rec

logger = logging.getLogger(__name__)

# after(rec, token, start_ns, end_ns, result, *args, **kwargs); before(rec, *args, **kwargs) -> token
After = Callable[..., None]
Before = Callable[..., object]


class InjectedFault(RuntimeError):
    """Raised inside our own hook code when SGLANG_TRACE_INJECT_FAULT names the hook (tests)."""


def _guarded(rec, name: str, fn: Callable | None, *args, **kwargs):
    """Run our own ``fn``; an exception is counted and logged once, never raised."""
    if fn is None:
        return None
    try:
        return fn(rec, *args, **kwargs)
    except Exception as exc:
        rec.hook_failed(name, exc)
        return None


def _faulty(name: str, fn: Callable) -> Callable:
    @functools.wraps(fn)
    def raising(*args, **kwargs):
        raise InjectedFault(f"fault injected into hook {name}")

    return raising


def around(name: str, after: After | None = None, before: Before | None = None,
           cleanup: Callable | None = None, inject_fault: str | None = None):
    """An AROUND hook timing the original call; ``cleanup(rec, token)`` runs if it raises."""
    if inject_fault == name:
        after = _faulty(name, after or (lambda *a, **k: None))

    def hook(original, *args, **kwargs):
        rec = _rec._recorder
        if rec is None:
            return original(*args, **kwargs)
        token = _guarded(rec, name, before, *args, **kwargs)
        start = time_ns()
        try:
            result = original(*args, **kwargs)
        except BaseException:
            _guarded(rec, name, cleanup, token)
            raise
        end = time_ns()
        _guarded(rec, name, after, token, start, end, result, *args, **kwargs)
        return result

    hook.__name__ = f"sglang_tracing_{name}"
    return hook


def around_async(name: str, after: After, before: Before | None = None, inject_fault: str | None = None):
    """``around`` for coroutine functions: the hook returns the awaited original's result."""
    if inject_fault == name:
        after = _faulty(name, after)

    def hook(original, *args, **kwargs):
        rec = _rec._recorder
        if rec is None:
            return original(*args, **kwargs)

        async def timed():
            token = _guarded(rec, name, before, *args, **kwargs)
            start = time_ns()
            result = await original(*args, **kwargs)
            end = time_ns()
            _guarded(rec, name, after, token, start, end, result, *args, **kwargs)
            return result

        return timed()

    hook.__name__ = f"sglang_tracing_{name}"
    return hook


def after_setup(name: str, on_init: Callable, inject_fault: str | None = None):
    """An AROUND hook for set-up methods: ``on_init(self)`` runs guarded once the original returns.

    Set-up (constructors, model loading) happens before a process has a recorder, so this
    hook has no fast path; failures are logged, and counted once a recorder exists.
    """
    def hook(original, self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        try:
            if inject_fault == name:
                raise InjectedFault(f"fault injected into hook {name}")
            on_init(self)
        except Exception as exc:
            rec = _rec._recorder
            if rec is not None:
                rec.hook_failed(name, exc)
            else:
                logger.warning("sglang-tracing: %s failed; this process runs untraced", name, exc_info=True)
        return result

    hook.__name__ = f"sglang_tracing_{name}"
    return hook


def target_exists(target: str) -> bool:
    """Whether a dotted ``module.Class.attr`` path resolves on the installed SGLang."""
    try:
        pkgutil.resolve_name(target)
        return True
    except (ImportError, AttributeError, ValueError):
        return False


def register(hooks: dict[str, Callable], skipped: list[str]) -> int:
    """Register AROUND hooks with SGLang's HookRegistry; collect targets this SGLang lacks."""
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    applied = 0
    for target, hook in hooks.items():
        if target_exists(target):
            HookRegistry.register(target, hook, HookType.AROUND)
            applied += 1
        else:
            skipped.append(target)
    return applied
