"""One patch module per SGLang component. Importing them has no side effects;
``instrument_all`` registers their hooks with SGLang's HookRegistry."""
from __future__ import annotations

from sglang_tracing.config import TraceConfig


def instrument_all(config: TraceConfig, skipped: list[str]) -> int:
    """Register every patch; each process's patches share that process's state object (``patches.state``)."""
    from sglang_tracing.patches import (
        detokenizer, disaggregation, http_server, kv_allocation, model_runner, output_streamer, radix_cache,
        scheduler,
        tokenizer_manager,
    )
    from sglang_tracing.patches.state import DetokenizerState, SchedulerState, TokenizerState

    tokenizer, sched, detok = TokenizerState(config), SchedulerState(config), DetokenizerState(config)
    return (http_server.instrument(tokenizer, skipped)
            + tokenizer_manager.instrument(tokenizer, skipped)
            + sum(m.instrument(sched, skipped) for m in (scheduler, output_streamer, kv_allocation, radix_cache,
                                                      model_runner, disaggregation))
            + detokenizer.instrument(detok, skipped))
