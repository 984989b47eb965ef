"""DetokenizerManager instrumentation, and the hook that makes the detokenizer process load plugins.

SGLang's detokenizer process does not call ``load_plugins()``; we hand Engine a
picklable target that does, then runs SGLang's own ``run_detokenizer_process``.
"""
from __future__ import annotations

from sglang_tracing import semconv as sc
from sglang_tracing.runtime import recorder
from sglang_tracing.runtime.ids import request_trace_key
from sglang_tracing.runtime.records import PARENT_IS_REQUEST_ROOT
from sglang_tracing.patches import _targets
from sglang_tracing.patches._wrappers import Call, after_setup, around
from sglang_tracing.patches.state import DetokenizerState, DetokenizeShare

_DETOK = "sglang.srt.managers.detokenizer_manager.DetokenizerManager"
_ENGINE = "sglang.srt.entrypoints.engine.Engine"


def run_detokenizer_process(*args, **kwargs):
    """Process target: load plugins (ours among them), then run SGLang's detokenizer."""
    from sglang.srt.managers import detokenizer_manager
    from sglang.srt.plugins import load_plugins

    load_plugins()
    return detokenizer_manager.run_detokenizer_process(*args, **kwargs)


def _launch_subprocesses_hook(original, *args, **kwargs):
    from sglang.srt.managers.detokenizer_manager import run_detokenizer_process as sglang_default

    if kwargs.get("run_detokenizer_process_func") is sglang_default:
        kwargs["run_detokenizer_process_func"] = run_detokenizer_process
    elif len(args) > 3 and args[3] is sglang_default:  # (server_args, tm_func, sched_func, detok_func)
        args = args[:3] + (run_detokenizer_process,) + args[4:]
    return original(*args, **kwargs)


def _on_init(st: DetokenizerState, call: Call, /, manager, *a, **k) -> None:
    recorder.start(st.config, "detokenizer")


def _on_batch(st: DetokenizerState, call: Call, /, manager, recv_obj, *a, **k):
    rec, start, end = call.rec, call.start_ns, call.end_ns
    rids = recv_obj.rids
    if not rids:
        return
    share = (end - start) // len(rids)
    reasons = getattr(recv_obj, "finished_reasons", None) or [None] * len(rids)
    per_request = st.per_request
    for rid, reason in zip(rids, reasons):
        acc = per_request.get(rid)
        if acc is None:
            acc = per_request[rid] = DetokenizeShare(start, end)
        acc.last_end = end
        acc.calls += 1
        acc.share_ns += share
        if reason is not None:
            rec.flush_soon()
            del per_request[rid]
            rec.emit(sc.REQUEST_DETOKENIZE, acc.first_start, acc.last_end, {
                sc.RID: rid, sc.DETOKENIZE_CALLS: acc.calls, sc.DETOKENIZE_SHARE_NS: acc.share_ns},
                parent=PARENT_IS_REQUEST_ROOT, trace_key=request_trace_key(rid))
    if st.config.batch_spans:
        rec.emit(sc.DETOKENIZE_BATCH, start, end, {sc.BATCH_SIZE: len(rids)})


def hooks(st: DetokenizerState) -> dict:
    common = {"state": st, "inject_fault": st.config.inject_fault}
    return {
        f"{_ENGINE}._launch_subprocesses": _launch_subprocesses_hook,
        f"{_DETOK}.__init__": after_setup("detokenizer_init", on_init=_on_init, **common),
        f"{_DETOK}.handle_batch_token_id_out": around("detokenize", after=_on_batch, **common),
    }


def instrument(st: DetokenizerState, skipped: list[str]) -> int:
    return _targets.register(hooks(st), skipped)
