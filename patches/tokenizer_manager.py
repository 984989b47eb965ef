"""TokenizerManager instrumentation: each request's root span (received -> finished) with
SGLang's own token accounting, whether it streams and whether it is an internal request (SGLang's
warm-up, a health check, our readiness probe), and its tokenize span."""
from __future__ import annotations

from time import time_ns

from sglang_tracing import semconv as sc
from sglang_tracing.runtime import manifest, recorder, trace_context
from sglang_tracing.runtime.ids import request_root_span_id, request_trace_key
from sglang_tracing.runtime.records import PARENT_IS_REQUEST_ROOT
from sglang_tracing.patches import _targets, http_server
from sglang_tracing.patches._wrappers import Call, after_setup, around, around_async
from sglang_tracing.patches.state import Arrival, TokenizerState

_TM = "sglang.srt.managers.tokenizer_manager.TokenizerManager"


def _on_init(st: TokenizerState, call: Call, /, tm, *a, **k) -> None:
    recorder.start(st.config, "tokenizer")
    manifest.write(st.config, tm.server_args)


def _rids_and_texts(obj):
    rids = obj.rid if isinstance(obj.rid, list) else [obj.rid]
    texts = obj.text if isinstance(getattr(obj, "text", None), list) else [getattr(obj, "text", None)]
    return rids, texts + [None] * (len(rids) - len(texts))


def _is_sglang_warmup(tm, obj) -> bool:
    """SGLang's own start-up request: sent while the server is still Starting, with its fixed payload
    (http_server._execute_server_warmup); a user's request sent that early carries other text."""
    if getattr(getattr(tm, "server_status", None), "name", None) != "Starting":
        return False
    params = getattr(obj, "sampling_params", None)
    params = params[0] if isinstance(params, list) and params else params
    if not isinstance(params, dict) or params.get("max_new_tokens") != sc.SGLANG_WARMUP_MAX_NEW_TOKENS:
        return False
    text, ids = getattr(obj, "text", None), getattr(obj, "input_ids", None)
    texts = text if isinstance(text, list) else [text]
    id_lists = ids if isinstance(ids, list) and ids and isinstance(ids[0], list) else [ids]
    return (all(t == sc.SGLANG_WARMUP_TEXT for t in texts)
            or all(isinstance(i, list) and tuple(i) == sc.SGLANG_WARMUP_INPUT_IDS for i in id_lists))


def _per_rid(value, n: int) -> list:
    return list(value) + [None] * (n - len(value)) if isinstance(value, list) else [value] * n


def _on_init_req_state(st: TokenizerState, call: Call, /, tm, obj, request=None, *a, **k):
    t = http_server.received_ns(request) or call.start_ns
    rids, texts = _rids_and_texts(obj)
    stream = bool(getattr(obj, "stream", False))
    warmup = sc.INTERNAL_WARMUP if _is_sglang_warmup(tm, obj) else None
    headers = getattr(request, "headers", None) or getattr(obj, "external_trace_header", None)
    rooms = _per_rid(getattr(obj, "bootstrap_room", None), len(rids))
    host, port = getattr(obj, "bootstrap_host", None), getattr(obj, "bootstrap_port", None)
    for i, (rid, text) in enumerate(zip(rids, texts)):
        if rid is not None:
            st.received[rid] = Arrival(t, text if st.config.record_prompts and isinstance(text, str) else None,
                                       stream, sc.internal_by_rid(rid) or warmup)
            origin = trace_context.origin_of(headers, _per_rid(host, len(rids))[i],
                                             _per_rid(port, len(rids))[i], rooms[i])
            if origin.trace_id is not None:
                st.origins[rid] = origin
                trace_context.note(st.config.trace_dir, rid, origin)
    http_server.note_request(request, [(rid, st.trace_key(rid)) for rid in rids if rid is not None], stream)


def _on_tokenize(st: TokenizerState, call: Call, /, tm, obj, *a, **k):
    call.rec.emit(sc.REQUEST_TOKENIZE, call.start_ns, call.end_ns,
                  {sc.RID: obj.rid, sc.PROMPT_TOKENS: len(call.result.input_ids)},
                  parent=PARENT_IS_REQUEST_ROOT, trace_key=st.trace_key(obj.rid))


def _before_output(st: TokenizerState, call: Call, /, tm, recv_obj, *a, **k):
    """Note first outputs; return the states of requests finishing in this batch (the original removes them)."""
    now = time_ns()
    first_output = st.first_output
    for rid in recv_obj.rids:
        if rid not in first_output:
            first_output[rid] = now
    reasons = getattr(recv_obj, "finished_reasons", None) or ()
    return {rid: tm.rid_to_state.get(rid) for rid, r in zip(recv_obj.rids, reasons) if r is not None}


def _on_output(st: TokenizerState, call: Call, /, tm, recv_obj, *a, **k):
    finishing, end = call.token, call.end_ns
    if not finishing:
        return
    for i, rid in enumerate(recv_obj.rids):
        if rid not in finishing:
            continue
        arrival = st.received.pop(rid, None) or Arrival(call.start_ns, None, None, sc.internal_by_rid(rid))
        first_output = st.first_output.pop(rid, end)
        reason = recv_obj.finished_reasons[i]
        attrs = {
            sc.RID: rid,
            sc.PROMPT_TOKENS: _at(recv_obj, "prompt_tokens", i),
            sc.CACHED_TOKENS: _at(recv_obj, "cached_tokens", i),
            sc.OUTPUT_TOKENS: _at(recv_obj, "completion_tokens", i),
            sc.FINISH_REASON: str(reason.get("type", "")) if isinstance(reason, dict) else str(reason),
            sc.FIRST_OUTPUT_NS: first_output,
        }
        if arrival.stream is not None:
            attrs[sc.STREAM] = arrival.stream
        if arrival.internal:
            attrs[sc.INTERNAL] = arrival.internal
        origin = st.origins.pop(rid, trace_context.RID_ORIGIN)
        attrs[sc.TRACE_ORIGIN] = origin.origin
        if arrival.prompt is not None:
            attrs[sc.PROMPT_TEXT] = arrival.prompt
            state = finishing[rid]
            if state is not None and hasattr(state, "get_text"):
                attrs[sc.OUTPUT_TEXT] = state.get_text()
        call.rec.emit(sc.REQUEST, arrival.received_ns, end, attrs, span_id=request_root_span_id(rid),
                      parent=origin.parent_span_id, trace_key=request_trace_key(rid, origin.trace_id),
                      events=((sc.EVENT_RECEIVED, arrival.received_ns, {}), (sc.EVENT_FINISHED, end, {})))
    call.rec.flush_soon()


def _at(obj, field: str, i: int) -> int:
    values = getattr(obj, field, None)
    return int(values[i]) if values is not None and i < len(values) and values[i] is not None else -1


def hooks(st: TokenizerState) -> dict:
    common = {"state": st, "inject_fault": st.config.inject_fault}
    return {
        f"{_TM}.__init__": after_setup("tokenizer_manager_init", on_init=_on_init, **common),
        f"{_TM}._init_req_state": around("init_req_state", after=_on_init_req_state, **common),
        f"{_TM}._tokenize_one_request": around_async("tokenize", after=_on_tokenize, **common),
        f"{_TM}._handle_batch_output": around_async("handle_batch_output", before=_before_output, after=_on_output,
                                                    **common),
    }


def instrument(st: TokenizerState, skipped: list[str]) -> int:
    return _targets.register(hooks(st), skipped)
