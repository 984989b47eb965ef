"""Where a hook's target stands on the installed SGLang, and registering hooks with SGLang's HookRegistry
without importing anything.

SGLang runs import-time work we must not trigger (a C++ build, locks), so a hook on a module SGLang
has not imported yet is registered when SGLang imports it (a post-import hook on ``sys.meta_path``).
``reset`` forgets the hooks still waiting and takes the import watcher out (tests; like
OpenTelemetry's ``BaseInstrumentor.uninstrument``).
"""
from __future__ import annotations

import functools
import importlib.abc
import importlib.util
import inspect
import logging
import sys
from collections.abc import Callable
from types import ModuleType

logger = logging.getLogger(__name__)

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


def reset() -> None:
    """Forget the hooks still waiting for their module and stop watching imports (tests)."""
    waiting.clear()
    _watcher.callbacks.clear()
    if _watcher in sys.meta_path:
        sys.meta_path.remove(_watcher)
