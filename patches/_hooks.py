"""Wrapper factories shared by every patch module, after opentelemetry-python-contrib.

Rules every hook follows:
- first line is the fast path: no recorder in this process -> call the original, nothing else;
- the original call's result and exceptions pass through untouched;
- our own work runs guarded: an exception is counted in the trace, logged once, and swallowed.

Registering imports nothing: SGLang runs import-time work we must not trigger (a C++ build, locks),
so a hook on a module SGLang has not imported yet is registered when SGLang imports it.
"""
from __future__ import annotations

import functools
import importlib.abc
import importlib.util
import inspect
import logging
import sys
from collections.abc import Callable
from time import time_ns
from types import ModuleType

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


PRESENT, PENDING, MISSING = "present", "pending", "missing"


def locate(target: str) -> tuple[str, str]:
    """Where a dotted ``module.Class.attr`` target stands on the installed SGLang, importing nothing.

    (PRESENT, target): its module is loaded and has the attribute; (PENDING, module): the module on
    its path that SGLang has not imported yet (it exists); (MISSING, why): this SGLang lacks it.
    Importing a module to look would run its import-time work in every SGLang process (e.g.
    ``radix_cache_cpp`` builds a C++ extension that SGLang itself only loads on request).
    """
    parts = target.split(".")
    i = next((i for i in range(len(parts) - 1, 0, -1) if sys.modules.get(".".join(parts[:i])) is not None), 0)
    if i == 0:
        return (PENDING, parts[0]) if _spec_exists(parts[0]) else (MISSING, f"no module {parts[0]}")
    obj = sys.modules[".".join(parts[:i])]
    for j in range(i, len(parts)):
        try:
            obj = inspect.getattr_static(obj, parts[j])  # no descriptors, no module __getattr__
        except AttributeError:
            name = ".".join(parts[:j + 1])
            if inspect.ismodule(obj) and hasattr(obj, "__path__") and _spec_exists(name):
                return PENDING, name
            return MISSING, f"{'.'.join(parts[:j])} has no attribute {parts[j]}"
    return PRESENT, target


def _spec_exists(module: str) -> bool:
    """Whether ``module`` can be imported; its parent package is already loaded, so nothing runs."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


class _CallbackLoader(importlib.abc.Loader):
    """Runs the real loader, then the callbacks waiting for this module at that moment."""

    def __init__(self, loader: importlib.abc.Loader, callbacks: dict[str, list[Callable[[ModuleType], None]]]):
        self.loader, self.callbacks = loader, callbacks

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        module.__loader__ = module.__spec__.loader = self.loader  # the module keeps its own loader
        self.loader.exec_module(module)
        for callback in self.callbacks.pop(module.__name__, []):
            try:
                callback(module)
            except Exception:
                logger.warning("sglang-tracing: instrumenting %s failed; it runs untraced", module.__name__,
                               exc_info=True)


class _ImportWatcher(importlib.abc.MetaPathFinder):
    """A post-import hook: finds nothing itself, but wraps the loader of a watched module.

    ``find_spec`` also answers probes (``importlib.util.find_spec``), so the callbacks are taken
    only when the module executes.
    """

    def __init__(self):
        self.callbacks: dict[str, list[Callable[[ModuleType], None]]] = {}

    def find_spec(self, fullname, path, target=None):
        if fullname not in self.callbacks:
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None) if finder is not self else None
            spec = find(fullname, path, target) if find else None
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _CallbackLoader(spec.loader, self.callbacks)
                return spec
        return None


_watcher = _ImportWatcher()
waiting: list[str] = []  # targets whose module SGLang has not imported yet in this process


def when_imported(module: str, callback: Callable[[ModuleType], None]) -> None:
    """Call ``callback(module)`` right after SGLang imports ``module`` (now, if it already has)."""
    loaded = sys.modules.get(module)
    if loaded is not None:
        callback(loaded)
        return
    _watcher.callbacks.setdefault(module, []).append(callback)
    if _watcher not in sys.meta_path:
        sys.meta_path.insert(0, _watcher)


def register(hooks: dict[str, Callable], skipped: list[str], hook_type: str = "around") -> int:
    """Register hooks with SGLang's HookRegistry without importing anything; returns how many now.

    A target in a loaded module is registered now (``load_plugins`` applies it); one in a module
    SGLang has not imported yet is registered and applied when SGLang imports it; a target this
    SGLang lacks is collected in ``skipped``.
    """
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    kind = HookType(hook_type)
    applied = 0
    for target, hook in hooks.items():
        state, where = locate(target)
        if state == PRESENT:
            HookRegistry.register(target, hook, kind)
            applied += 1
        elif state == PENDING:
            waiting.append(target)
            late = functools.partial(_register_late, target, hook, kind)
            for module in _unloaded_modules_on_path(target):  # namespace packages never execute
                when_imported(module, late)
        else:
            skipped.append(target)
    return applied


def _unloaded_modules_on_path(target: str) -> list[str]:
    parts = target.split(".")
    names = (".".join(parts[:i]) for i in range(1, len(parts)))
    return [name for name in names if sys.modules.get(name) is None]


def _register_late(target: str, hook: Callable, kind, module: ModuleType) -> None:
    from sglang.srt.plugins.hook_registry import HookRegistry

    if target not in waiting:  # applied or skipped already, on another module of its path
        return
    state, where = locate(target)
    if state == PENDING:  # a package on the way was imported; the module itself is watched too
        return
    waiting.remove(target)
    if state == MISSING:
        logger.warning("sglang-tracing: %s left untraced: %s", target, where)
        return
    HookRegistry.register(target, hook, kind)
    HookRegistry.apply_hooks()  # idempotent: applies this target, skips the ones already applied
    logger.info("sglang-tracing: hooked %s once SGLang imported %s", target, module.__name__)
