"""Entry points in SGLang's plugin group ``sglang.srt.plugins``; ``load_plugins()`` calls them in each process.

Without ``SGLANG_TRACE_DIR`` the tracing plugin registers nothing: SGLang runs untouched. With it,
activation imports no SGLang module SGLang has not imported itself (see ``patches._hooks.register``).
"""
from __future__ import annotations

import logging

from sglang_tracing.config import TraceConfig

logger = logging.getLogger(__name__)
_instruments = ("sglang >= 0.5.17",)

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
    _activated = True
    from sglang_tracing.patches import _hooks, instrument_all

    applied = instrument_all(config, skipped_targets)
    if skipped_targets:
        logger.warning("sglang-tracing: this SGLang lacks %d hook target(s), left untraced: %s",
                       len(skipped_targets), ", ".join(skipped_targets))
    logger.info("sglang-tracing: %d hooks registered, tracing into %s; %d wait until SGLang imports "
                "their module: %s", applied, config.trace_dir, len(_hooks.waiting), ", ".join(_hooks.waiting))


def activate_cpu_compat() -> None:
    from sglang_tracing.patches import cpu_compat

    cpu_compat.apply()
