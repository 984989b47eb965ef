"""Every span, event and attribute name sglang-tracing writes, defined once.

The recorder (runtime side) and the analyzer (offline side) both import these, so a
rename is one edit. Units are part of the attribute name where they are not obvious.
"""
from __future__ import annotations

SCOPE = "sglang_tracing"

# ---- request lifecycle (one trace per request; trace id derived from the rid) ----
REQUEST = "sglang.request"  # root, tokenizer manager: received -> finished
REQUEST_TOKENIZE = "sglang.request.tokenize"
REQUEST_QUEUED = "sglang.request.queued"  # scheduler: arrival -> first scheduled
REQUEST_PREFIX_MATCH = "sglang.request.prefix_match"
REQUEST_PREFILL = "sglang.request.prefill"  # first chunk start -> first token
REQUEST_PREFILL_CHUNK = "sglang.request.prefill.chunk"
REQUEST_DECODE = "sglang.request.decode"  # first token -> last token
REQUEST_DETOKENIZE = "sglang.request.detokenize"
REQUEST_HTTP = "sglang.request.http"  # HTTP layer: received -> last response byte sent (or the end HTTP_ENDED_BY names)
EVENT_RECEIVED = "received"
EVENT_FINISHED = "finished"

# ---- scheduler iteration ----
SCHEDULE = "sglang.scheduler.schedule"
FORWARD = "sglang.scheduler.forward"
PROCESS_RESULT = "sglang.scheduler.process_result"
MODEL_FORWARD = "sglang.model.forward"  # ModelRunner.forward inside a scheduler forward
DETOKENIZE_BATCH = "sglang.detokenizer.batch"

# ---- prefix cache ----
CACHE_MATCH = "sglang.cache.match_prefix"
CACHE_INSERT = "sglang.cache.insert"
CACHE_EVICT = "sglang.cache.evict"

# ---- our own health ----
HOOK_ERROR = "sglang_tracing.hook_error"
RECORDER_STATS = "sglang_tracing.stats"
# our own profiler control (capture_steps, --profile-steps), timed where it ran: inside a scheduler forward
# (its parent) or, for a capture ended by an idle server, between forwards; never SGLang's time
PROFILER_CONTROL = "sglang_tracing.profiler_control"
PROFILER_ACTION = "sglang_tracing.profiler.action"  # one of:
CAPTURE_START = "nsys capture start"  # cudaProfilerStart: nsys --capture-range=cudaProfilerApi begins
CAPTURE_STOP = "nsys capture stop"  # cudaProfilerStop
TORCH_PROFILER_START = "torch profiler start"  # --profile-steps window opens
KINETO_EXPORT = "Kineto stop and export"  # --profile-steps window closes, chrome trace written

# ---- resource attributes (one set per process) ----
RES_ROLE = "sglang.role"  # tokenizer | scheduler | detokenizer
RES_TP_RANK = "sglang.tp_rank"
RES_PID = "process.pid"
RES_CLOCK_REALTIME = "sglang_tracing.clock.realtime_ns"
RES_CLOCK_MONOTONIC = "sglang_tracing.clock.monotonic_ns"
RES_TRACE_LEVEL = "sglang_tracing.trace_level"

# ---- request attributes ----
RID = "sglang.rid"
PROMPT_TOKENS = "sglang.request.prompt_tokens"
CACHED_TOKENS = "sglang.request.cached_tokens"
OUTPUT_TOKENS = "sglang.request.output_tokens"
FINISH_REASON = "sglang.request.finish_reason"
PROMPT_TEXT = "sglang.request.prompt_text"  # only with --record-prompts
OUTPUT_TEXT = "sglang.request.output_text"  # only with --record-prompts
FIRST_OUTPUT_NS = "sglang.request.first_output_ns"  # root: when the tokenizer manager delivered the first output
STREAM = "sglang.request.stream"  # root, http: the client asked for a streamed response
FIRST_BYTE_NS = "sglang.request.first_byte_ns"  # http: first response body bytes handed to the socket
RECEIVED_BY = "sglang.request.received_by"  # http: where the arrival was stamped, one of:
RECEIVED_BY_KERNEL = "kernel"  # the kernel received its first bytes (new connection, Linux receive timestamps)
RECEIVED_BY_KERNEL_MS = "kernel, ms"  # kept-alive connection read late: TCP_INFO's data age, kernel-tick resolution
RECEIVED_BY_READ = "http read"  # the HTTP server's protocol got the request's first bytes (uvicorn)
RECEIVED_BY_ASGI = "asgi entry"  # the ASGI app was called (other servers)
INTERNAL = "sglang.request.internal"  # root: why it is not a user's request (absent for user requests)
TOKEN_TIMES = "sglang.request.token_times_ns"  # decode span: when each output token was handed to the detokenizer
CHUNK_INDEX = "sglang.chunk.index"
CHUNK_TOKENS = "sglang.chunk.tokens"
MATCHED_TOKENS = "sglang.prefix.matched_tokens"
# hash chain over the prompt's token ids, one value per PREFIX_BLOCK tokens: two requests share their
# first k*PREFIX_BLOCK tokens iff their k-th values are equal (ids only, never text)
PREFIX_DIGESTS = "sglang.prefix.block_digests"
PREFIX_BLOCK = 16
FORWARD_SPAN_ID = "sglang.forward.span_id"  # links request pieces to the batch that ran them
DETOKENIZE_CALLS = "sglang.detokenize.calls"
DETOKENIZE_SHARE_NS = "sglang.detokenize.share_ns"  # this request's share of batch time

# ---- internal requests: SGLang's own and ours, kept apart from the user's ----
INTERNAL_WARMUP = "warm-up"  # SGLang's startup request (http_server._execute_server_warmup)
INTERNAL_WARMUP_INFERRED = "warm-up (inferred)"  # traces recorded before INTERNAL existed
SGLANG_WARMUP_TEXT = "The capital city of France is"
SGLANG_WARMUP_INPUT_IDS = (10, 11, 12)  # its payload with --skip-tokenizer-init
SGLANG_WARMUP_MAX_NEW_TOKENS = 8
# rid prefix of the one-token request ``serving.Server.wait_ready`` sends before a server counts as
# ready: recorded like any request, but the launcher's, not the workload's
READINESS_RID_PREFIX = "sglang-tracing-ready-"
INTERNAL_RID_PREFIXES = {"HEALTH_CHECK": "health check",  # sglang.srt.constants.HEALTH_CHECK_RID_PREFIX
                         READINESS_RID_PREFIX: "readiness probe"}


def internal_by_rid(rid) -> str | None:
    """What an internal request is, from its rid alone (None: a user's, as far as the rid tells)."""
    if isinstance(rid, str):
        for prefix, kind in INTERNAL_RID_PREFIXES.items():
            if rid.startswith(prefix):
                return kind
    return None


# ---- batch / iteration attributes ----
FORWARD_MODE = "sglang.batch.forward_mode"  # extend | decode | mixed | idle | ...
BATCH_SIZE = "sglang.batch.size"
BATCH_TOKENS = "sglang.batch.tokens"
BATCH_RIDS = "sglang.batch.rids"
BATCH_EXTEND_LENS = "sglang.batch.extend_lens"  # tokens each request computes in an extend
SCHED_POLICY = "sglang.schedule.policy"
SCHED_NEW_SEQS = "sglang.schedule.new_seqs"
SCHED_RUNNING = "sglang.schedule.running"
SCHED_QUEUED = "sglang.schedule.queued"
SCHED_CACHE_LOOKUP_NS = "sglang.schedule.cache_lookup_ns"
SCHED_KV_ALLOC_NS = "sglang.schedule.kv_alloc_ns"
ITERATION = "sglang.iteration"
GPU_DURATION_NS = "sglang.forward.gpu_duration_ns"
GPU_START_NS = "sglang.forward.gpu_start_ns"  # wall clock, from CUDA events against a one-time anchor
GPU_END_NS = "sglang.forward.gpu_end_ns"
OVERLAP = "sglang.scheduler.overlap"
NVTX_LAYER_RANGES = "sglang.nvtx.layer_ranges"  # model forward, --trace-level layer: module ranges installed

# ---- cache attributes ----
CACHE_CLASS = "sglang.cache.class"
CACHE_KEY_TOKENS = "sglang.cache.key_tokens"
CACHE_MATCHED_TOKENS = "sglang.cache.matched_tokens"
CACHE_NEW_TOKENS = "sglang.cache.new_tokens"
CACHE_REQUESTED_TOKENS = "sglang.cache.requested_tokens"
CACHE_FREED_TOKENS = "sglang.cache.freed_tokens"
CACHE_TRIGGER = "sglang.cache.trigger"
CACHE_TOTAL = "sglang.cache.total_tokens"
CACHE_USED = "sglang.cache.used_tokens"
CACHE_EVICTABLE = "sglang.cache.evictable_tokens"
CACHE_PROTECTED = "sglang.cache.protected_tokens"

# ---- hierarchical cache (--enable-hierarchical-cache: HiRadixCache's device, host and storage tiers) ----
# CACHE_MATCH / CACHE_INSERT / CACHE_EVICT are written for HiRadixCache too (device tier), with the host
# tier's occupancy added; the spans below are its transfers between tiers. Bytes = tokens x the host
# pool's bytes per token (every layer, K and V).
HICACHE_BACKUP = "sglang.hicache.backup"  # device -> host copy queued (write_backup)
HICACHE_BACKUP_STORAGE = "sglang.hicache.backup_storage"  # host -> storage copy queued
HICACHE_LOAD_BACK = "sglang.hicache.load_back"  # host -> device copy queued for one request (init_load_back)
HICACHE_LOAD_ISSUE = "sglang.hicache.load_issue"  # queued load-backs handed to the load stream (start_loading)
HICACHE_LOAD_DONE = "sglang.hicache.load_done"  # a load-back the scheduler saw complete, with its GPU time
HICACHE_EVICT_HOST = "sglang.hicache.evict_host"  # host slots freed (nodes leave the tree)
HICACHE_PREFETCH = "sglang.hicache.prefetch"  # storage -> host prefetch started for a request
HICACHE_STORAGE_HIT = "sglang.hicache.storage_hit"  # tokens a request's prefetch brought from storage
HICACHE_TOKENS = "sglang.hicache.tokens"
HICACHE_BYTES = "sglang.hicache.bytes"
HICACHE_REQUESTED_TOKENS = "sglang.hicache.requested_tokens"
HICACHE_WRITE_BACK = "sglang.hicache.write_back"  # backup: made by an eviction (write-back policy)
HICACHE_NODE_IDS = "sglang.hicache.node_ids"  # radix nodes a transfer serves (links load_back to load_done)
HICACHE_PRODUCER = "sglang.hicache.producer_index"  # load_issue: the layer-done counter the forward waits on
HICACHE_GPU_NS = "sglang.hicache.gpu_duration_ns"  # load_done: CUDA events around the copy, where timed
HICACHE_HOST_MATCHED = "sglang.hicache.host_matched_tokens"  # match: prefix tokens found on host only
HICACHE_HOST_TOTAL = "sglang.hicache.host_total_tokens"  # host tier occupancy after the operation
HICACHE_HOST_USED = "sglang.hicache.host_used_tokens"
HICACHE_EVICTED_AGES_NS = "sglang.hicache.evicted_ages_ns"  # per node removed: time since its last access
HICACHE_EVICTED_NODE_TOKENS = "sglang.hicache.evicted_node_tokens"  # per node removed: its tokens
# prefill span of a request served by HiRadixCache: SGLang's own split of its cached tokens
CACHED_DEVICE = "sglang.request.cached_tokens_device"
CACHED_HOST = "sglang.request.cached_tokens_host"
CACHED_STORAGE = "sglang.request.cached_tokens_storage"

# ---- speculative decoding (--speculative-algorithm) ----
SPEC_DRAFT = "sglang.spec.draft"  # a decode step's draft phase (child of its scheduler forward)
SPEC_VERIFY = "sglang.spec.verify"  # the target model's verify forward (child of its scheduler forward)
SPEC_ACCEPT = "sglang.spec.accept"  # a step's acceptance, once its result is processed
SPEC_ALGORITHM = "sglang.spec.algorithm"  # the worker class (NGRAMWorker, EAGLEWorkerV2, ...)
SPEC_DRAFT_TOKENS = "sglang.spec.draft_tokens"  # tokens verified per request per step, bonus included
SPEC_CORRECT_DRAFTS = "sglang.spec.correct_drafts"  # accept: per request (BATCH_RIDS order), bonus excluded
SPEC_VERIFY_CT = "sglang.request.spec_verify_ct"  # decode span: SGLang's count of verify steps
SPEC_REQ_CORRECT = "sglang.request.spec_correct_drafts"  # decode span: SGLang's count of accepted drafts

# ---- health attributes ----
HOOK_NAME = "sglang_tracing.hook"
ERROR_TYPE = "error.type"
ERROR_MESSAGE = "sglang_tracing.error.message"
HOOK_ERRORS = "sglang_tracing.hook_errors"  # total across hooks
DROPPED_SPANS = "sglang_tracing.dropped_spans"

# ---- GPU counters: keys of the sampler's nvml-<process>.jsonl lines, the analyzer's counter metrics ----
NVML_GPU_UTIL = "gpu_util_pct"
NVML_MEM_UTIL = "mem_util_pct"
NVML_POWER = "power_w"
NVML_SM_CLOCK = "sm_clock_mhz"
NVML_MEM_CLOCK = "mem_clock_mhz"
NVML_MEM_USED = "mem_used_bytes"
NVML_MEM_TOTAL = "mem_total_bytes"
# GPM (GPU performance monitoring, Hopper+): rates over a sampling interval, percent
GPM_SM_UTIL = "sm_util_pct"
GPM_SM_OCCUPANCY = "sm_occupancy_pct"
GPM_TENSOR_UTIL = "tensor_util_pct"
GPM_DRAM_BW_UTIL = "dram_bw_util_pct"
GPM_FP16_UTIL = "fp16_util_pct"
GPM_FP32_UTIL = "fp32_util_pct"
GPM_METRICS = {  # name -> the pynvml constant of its GPM metric id
    GPM_SM_UTIL: "NVML_GPM_METRIC_SM_UTIL",
    GPM_SM_OCCUPANCY: "NVML_GPM_METRIC_SM_OCCUPANCY",
    GPM_TENSOR_UTIL: "NVML_GPM_METRIC_ANY_TENSOR_UTIL",
    GPM_DRAM_BW_UTIL: "NVML_GPM_METRIC_DRAM_BW_UTIL",
    GPM_FP16_UTIL: "NVML_GPM_METRIC_FP16_UTIL",
    GPM_FP32_UTIL: "NVML_GPM_METRIC_FP32_UTIL",
}

# ---- NVTX ----
NVTX_DOMAIN = "sglang"
# --trace-level layer: unnamed-id ranges per decoder layer ("layer.<i>") and per op inside it
NVTX_LAYER_PREFIX = "layer."
NVTX_OPS = ("embedding", "rms_norm", "qkv_proj", "attention", "o_proj", "gate_up_proj", "down_proj", "lm_head")

# ---- always on: what a bounded, tail-sampled trace says about itself (docs/always-on.md) ----
# decode span: why this request kept its full detail (token times, chunk spans, prefix digests), or
# KEPT_SUMMARY when it kept its summary only (its ITL figures below stand for the token times)
KEEP_REASON = "sglang_tracing.keep_reason"
KEPT_ALL = "all"  # tail-based keep off: every request keeps everything
KEPT_FAILED = "failed"  # aborted or errored
KEPT_SLOW = "slow"  # over a threshold the user set
KEPT_SLOW_PERCENTILE = "slow (percentile)"  # over the recent window's percentile
KEPT_SAMPLED = "sampled"  # 1 in N
KEPT_SUMMARY = "summary"
ITL_MAX_NS = "sglang.request.itl_max_ns"  # decode span of a summary-only request
ITL_P50_NS = "sglang.request.itl_p50_ns"
ITL_P99_NS = "sglang.request.itl_p99_ns"
CHUNK_COUNT = "sglang.request.prefill_chunks"  # prefill span: chunks (their spans only with full detail)
KEEP_SETTINGS = "sglang_tracing.keep"  # resource: the keep settings this process recorded under
BATCH_KEEP = "sglang_tracing.batch_keep"  # resource: all | kept | N
# the recorder lost its exporter process: what it had sent and what it could not hand over
EXPORTER_LOST = "sglang_tracing.exporter_lost"
RECORDS_SENT = "sglang_tracing.records_sent"  # records handed to exporters so far (this process)
RECORDS_UNSENT = "sglang_tracing.records_unsent"  # records that never reached an exporter
EXPORTER_RESTARTS = "sglang_tracing.exporter_restarts"
QUEUED_MAX = "sglang_tracing.queued_max"  # stats: most records held at once since the last stats span
QUEUED = "sglang_tracing.queued"  # stats: records held now
BATCH_HELD = "sglang_tracing.batch_held"  # stats: batch records held until their requests are decided
BATCH_LEFT_OUT = "sglang_tracing.batch_left_out"  # stats: batch records left out by BATCH_KEEP so far
# the exporter stopped writing (disk full, trace dir gone): last line of a span file part
WRITING_STOPPED = "sglang_tracing.writing_stopped"
STOP_REASON = "sglang_tracing.stop_reason"
# a new part of a rotated span file: the parts retention deleted before it
PARTS_DELETED = "sglang_tracing.parts_deleted"
PART_INDEX = "sglang_tracing.part_index"
NVML_SAMPLING_STOPPED = "sampling_stopped"  # last line of an nvml-*.jsonl whose sampler gave up: why

# ---- HTTP exchange end (issue 23): how a request's HTTP span ended and what its response had sent ----
# A client that hangs up mid-stream never gets the response's last body message: its HTTP span ends when
# the middleware sees the hang-up, not at a last byte.
HTTP_ENDED_BY = "sglang.http.ended_by"  # http span: what ended it, one of:
HTTP_END_RESPONSE_SENT = "response sent"  # the response's last body message was handed to the server
HTTP_END_DISCONNECT = "client disconnected"  # the server said so (ASGI http.disconnect from receive)
HTTP_END_SEND_FAILED = "send failed"  # the server's send raised OSError: the connection broke (ASGI spec 2.4)
HTTP_END_CANCELLED = "cancelled"  # a send or the app was cancelled before the response ended
HTTP_END_APP_RAISED = "app raised"  # the app raised before the response ended (the error page is not ours to time)
HTTP_END_UNFINISHED = "response unfinished"  # the app returned without the response's last body message
HTTP_CLIENT_GONE = (HTTP_END_DISCONNECT, HTTP_END_SEND_FAILED)  # endings that mean the client went away
HTTP_BODY_CHUNKS = "sglang.http.body_chunks"  # non-empty response body messages handed to the server before the end
HTTP_BODY_BYTES = "sglang.http.body_bytes"  # their bytes

# ---- detail on demand (sglang-trace detail): layer-level detail for N forwards of a running server ----
DETAIL_WINDOW = "sglang_tracing.detail"  # span: the window, from the forward it opened before to the last one
DETAIL_ID = "sglang_tracing.detail.id"  # the request's id, as the control file and the route gave it
DETAIL_LEVEL = "sglang_tracing.detail.level"  # what was turned on: one of DETAIL_LEVELS
DETAIL_FORWARDS = "sglang_tracing.detail.forwards"  # forwards asked for
DETAIL_SERVED = "sglang_tracing.detail.forwards_served"  # forwards the window covered
DETAIL_GRAPH_PHASES = "sglang_tracing.detail.graph_phases"  # phases replayed as CUDA graphs: no layers there
DETAIL_LEVELS = ("layer",)
LAYER = "sglang.model.layer"  # one decoder layer inside a model forward (its parent), detail windows only
LAYER_INDEX = "sglang.layer.index"

# ---- prefill-decode disaggregation (issue 25): one request's story across both servers ----
# prefill server (scheduler)
PD_BOOTSTRAP = "sglang.pd.bootstrap"  # entered the bootstrap queue -> handshake with its decode server done
PD_PREFILL_QUEUE = "sglang.pd.prefill_queue"  # left the bootstrap queue -> first prefill forward launched
PD_KV_SEND = "sglang.pd.kv_send"  # first KV chunk handed to the transfer backend -> transfer polled done
PD_METADATA_SEND = "sglang.pd.metadata_send"  # last chunk: first token and metadata written for the decode side
# decode server (scheduler)
PD_PREALLOC = "sglang.pd.prealloc"  # entered the pre-allocation queue -> KV allocated, metadata sent to prefill
PD_KV_RECEIVE = "sglang.pd.kv_receive"  # pre-allocated -> KV polled complete
PD_FIRST_DECODE = "sglang.pd.first_decode"  # KV complete -> prefill's token out in the first decode batch
# attributes
PD_MODE = "sglang.pd.mode"  # prefill | decode (SGLang's --disaggregation-mode)
PD_ROOM = "sglang.pd.bootstrap_room"
PD_BOOTSTRAP_ADDR = "sglang.pd.bootstrap_addr"  # host:port of the prefill server's bootstrap
PD_KV_BYTES = "sglang.pd.kv_bytes"  # what SGLang's sender counted for this request
PD_KV_TOKENS = "sglang.pd.kv_tokens"
PD_KV_CHUNKS = "sglang.pd.kv_chunks"
PD_SGLANG_LATENCY_S = "sglang.pd.sglang_transfer_latency_s"  # SGLang's own figure, when its backend measures one
PD_BACKEND = "sglang.pd.transfer_backend"
PD_OUTSTANDING = "sglang.pd.queue_len"  # requests in that queue when this one entered it

# ---- server identity (resource attributes and manifest; set by flags so servers and hosts are told apart) ----
RES_SERVICE_NAME = "service.name"
RES_SERVICE_INSTANCE = "service.instance.id"
RES_HOST_NAME = "host.name"
RES_SERVER_ROLE = "sglang.server.role"  # prefill | decode | unified, or what --server-role says
# trace context: W3C traceparent honoured on the incoming HTTP request
TRACEPARENT = "traceparent"
TRACE_ORIGIN = "sglang_tracing.trace_origin"  # root: where its trace id came from, one of:
TRACE_ORIGIN_CALLER = "traceparent"
TRACE_ORIGIN_PD = "bootstrap room"
TRACE_ORIGIN_RID = "rid"
PD_SPANS = (PD_BOOTSTRAP, PD_PREFILL_QUEUE, PD_KV_SEND, PD_METADATA_SEND, PD_PREALLOC, PD_KV_RECEIVE, PD_FIRST_DECODE)
PD_FLOW = (PD_KV_SEND, PD_FIRST_DECODE)  # Perfetto: one flow per request, prefill's send -> decode's first batch

# ---- the PD client's own stamps (issue 25): one span per request, written by the experiment ----
CLIENT_ROLE = "client"  # server_role of the trace dir holding them
ROUTER_ROLE = "router"  # server_role of a trace dir of sglang-router's own spans (its OTLP export, received)
CLIENT_REQUEST = "sglang_tracing.client.request"  # its first byte sent -> response complete (client's clock)
CLIENT_FIRST_CHUNK_NS = "sglang_tracing.client.first_chunk_ns"  # the first streamed chunk read by the client
CLIENT_FIRST_KERNEL_NS = "sglang_tracing.client.first_chunk_kernel_ns"  # its bytes received by the client's kernel
