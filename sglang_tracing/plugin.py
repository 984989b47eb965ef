"""Entry points in SGLang's plugin group ``sglang.srt.plugins``; ``load_plugins()`` calls them in each process.

Without ``SGLANG_TRACE_DIR`` the tracing plugin registers nothing: SGLang runs untouched. Nor does it
on an SGLang outside ``_instruments`` (it logs why). Otherwise activation imports no SGLang module
SGLang has not imported itself (see ``patches._targets.register``).
"""
from __future__ import annotations

import logging

from sglang_tracing.config import TraceConfig

logger = logging.getLogger(__name__)
_instruments = ("sglang >= 0.5.17",)  # the releases whose hook targets the patches are written against

_activated = False
skipped_targets: list[str] = []


def activate() -> None:
    """Register our hooks with SGLang's HookRegistry if a trace dir is configured."""
    global _activated
    try:
        config = TraceConfig.from_env()
    except ValueError as exc:
        logger.error("sglang-tracing: bad tracing settings (%s); tracing is off", exc)
        return
    if config is None or _activated:
        return
    conflict = dependency_conflict()
    if conflict:
        logger.error("sglang-tracing: %s; tracing is off", conflict)
        return
    _activated = True
    from sglang_tracing.patches import _targets, instrument_all

    applied = instrument_all(config, skipped_targets)
    if skipped_targets:
        logger.warning("sglang-tracing: this SGLang lacks %d hook target(s), left untraced: %s",
                       len(skipped_targets), ", ".join(skipped_targets))
    logger.info("sglang-tracing: %d hooks registered, tracing into %s; %d wait until SGLang imports "
                "their module: %s", applied, config.trace_dir, len(_targets.waiting), ", ".join(_targets.waiting))


def dependency_conflict() -> str | None:
    """Why the installed SGLang is older than ``_instruments`` asks, or None (development builds count)."""
    from importlib import metadata

    from packaging.version import InvalidVersion, Version  # SGLang imports it in each process before plugins

    for spec in _instruments:
        name, minimum = (part.strip() for part in spec.split(">="))
        try:
            found = metadata.version(name)
        except metadata.PackageNotFoundError:
            return f"{name} is not installed (tracing needs {spec})"
        try:
            older = Version(found) < Version(minimum)
        except InvalidVersion:  # a build that names itself oddly: its hook targets decide, one by one
            continue
        if older:
            return f"{name} {found} is installed; tracing needs {spec}"
    return None


def activate_cpu_compat() -> None:
    """Entry point of the fixes that let SGLang serve on a host without CUDA (its name is what installed
    environments know it by)."""
    from sglang_tracing.patches import no_cuda_fixes

    no_cuda_fixes.apply()
