"""One patch module per SGLang component. Importing them has no side effects;
``instrument_all`` registers their hooks with SGLang's HookRegistry."""
from __future__ import annotations

from sglang_tracing.config import TraceConfig


def instrument_all(config: TraceConfig, skipped: list[str]) -> int:
    from sglang_tracing.patches import (
        detokenizer, http_server, kv_allocation, model_runner, radix_cache, scheduler, tokenizer_manager,
    )

    modules = (http_server, tokenizer_manager, scheduler, kv_allocation, radix_cache, model_runner, detokenizer)
    return sum(m.instrument(config, skipped) for m in modules)
