"""What our scheduler-process hooks cost one decode step on the CPU, side by side: untraced (hooks
registered, no recorder: the fast path), traced without speculation, and traced with NGRAM speculation.

    python3 benchmarks/spec_step_cost.py [--reqs 8] [--draft-tokens 12] [--steps 3000] [--rounds 5] [--out FILE]

Each step is driven the way SGLang 0.5.17's overlap loop calls the hooked methods, through the registered
hooks themselves (``patches.*.hooks``, the same wrappers SGLang's HookRegistry installs): the scheduling
pass, ``run_batch`` around the NGRAM draft (``_prepare_for_speculative_decoding``) and the verify forward
(``TpModelWorker.forward_batch_generation(is_verify=True)``) around ``ModelRunner.forward``, then
``process_batch_result`` with SGLang's ``stream_output`` inside. SGLang's own objects where they build on a
CPU (``Req``, ``ForwardMode``, ``NgramVerifyInput``, ``SpeculativeAlgorithm``, ``GenerationBatchResult``);
the originals do nothing, so what is timed is our work alone. The recorder is the real one (its exporter
process started, its writer thread parked), so ``emit`` is the hot path SGLang runs; the writer's share
(marshalling the records every ``--flush-every`` steps, GIL held) is timed on its own, per step.

Figures per arm and round: median and p99 of a whole step, and of the **critical path**: in the NGRAM
pipeline (synchronous: ``run_batch`` waits for the previous verify before drafting) only the work between
the draft's start and the verify forward's launch delays the GPU; the rest of a step overlaps the verify
forward on the GPU (~9 ms a step on an H100 with the Llama-2-7B). CUDA events are stand-ins with their calls
counted (``cuda_calls``, ``critical_cuda_calls``: those on the critical path, an event made counted as one) and
the events made (``events_made``: on a GPU each costs a create at its first record and a destroy when freed):
driver calls of a few microseconds each on a GPU host, not timed here.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
import types
from time import perf_counter_ns

from sglang_tracing.config import TraceConfig
from sglang_tracing.patches import model_runner, output_streamer, scheduler, speculative
from sglang_tracing.patches.forward_gpu_times import GpuAnchor
from sglang_tracing.patches.state import SchedulerState
from sglang_tracing.runtime import recorder
from sglang_tracing.runtime.records import MSG_RECORDS, encode_message

ARMS = ("untraced", "traced, no speculation", "traced, NGRAM")


class _Event:
    """torch.cuda.Event's surface: completes at once; every call counted, and every event made (on a GPU,
    a driver call to create it at its first record and one to destroy it when it is freed)."""
    calls = 0
    made = 0

    def __init__(self, enable_timing: bool = False):
        _Event.made += 1

    def record(self, stream=None):
        _Event.calls += 1

    def query(self) -> bool:
        _Event.calls += 1
        return True

    def synchronize(self):
        _Event.calls += 1

    def elapsed_time(self, other) -> float:
        _Event.calls += 1
        return 0.5


class _Cuda:
    Event = _Event


def _reqs(n: int, prompt: int) -> list:
    from sglang.srt.managers.schedule_batch import Req
    from sglang.srt.sampling.sampling_params import SamplingParams

    out = []
    for i in range(n):
        req = Req(f"bench-{i:04d}", "", list(range(prompt)), SamplingParams(max_new_tokens=1 << 30))
        req.output_ids = [1]
        out.append(req)
    return out


def _batch(reqs: list, draft_tokens: int, spec: bool):
    import torch
    from sglang.srt.model_executor.forward_batch_info import ForwardMode
    from sglang.srt.speculative.ngram_info import NgramVerifyInput
    from sglang.srt.speculative.spec_info import SpeculativeAlgorithm

    batch = types.SimpleNamespace(reqs=reqs, forward_mode=ForwardMode.DECODE, extend_num_tokens=0,
                                  batch_size=lambda: len(reqs))
    batch.spec_algorithm = SpeculativeAlgorithm.NGRAM if spec else SpeculativeAlgorithm.NONE
    batch.spec_info = NgramVerifyInput(draft_token_num=draft_tokens, new_seq_lens=torch.full((len(reqs),), 16),
                                       accept_lens=torch.ones(len(reqs), dtype=torch.int32)) if spec else None
    return batch


class _Step:
    """One decode step through the registered hooks; the originals stamp where our work ends and begins."""

    def __init__(self, st: SchedulerState, reqs: list, draft_tokens: int, spec: bool):
        from sglang.srt.managers.utils import GenerationBatchResult
        from sglang.srt.model_executor.forward_batch_info import ForwardMode

        self.st, self.reqs, self.spec, self.draft_tokens = st, reqs, spec, draft_tokens
        self.batch = _batch(reqs, draft_tokens, spec)
        self.sched = types.SimpleNamespace(waiting_queue=[], enable_overlap=True)
        self.plan = types.SimpleNamespace(batch_to_run=self.batch, running_batch=self.batch)
        self.worker = type("NGRAMWorker", (), {"draft_token_num": draft_tokens})()
        self.fwd_batch = types.SimpleNamespace(forward_mode=ForwardMode.TARGET_VERIFY if spec else ForwardMode.DECODE,
                                               batch_size=len(reqs))
        self.streamer = object()
        self.result_type = GenerationBatchResult
        hooks = {}
        for module in (scheduler, model_runner, output_streamer, speculative):
            hooks.update(module.hooks(st))
        self.schedule = hooks["sglang.srt.managers.scheduler.Scheduler.get_next_batch_to_run"]
        self.run_batch = hooks["sglang.srt.managers.scheduler.Scheduler.run_batch"]
        self.process = hooks["sglang.srt.managers.scheduler.Scheduler.process_batch_result"]
        self.forward = hooks["sglang.srt.model_executor.model_runner.ModelRunner.forward"]
        self.stream = hooks[output_streamer._STREAMER + ".stream_output"]
        self.draft = hooks[speculative.DRAFTS[0]]
        self.verify = hooks[speculative._TARGET]
        self.marks = [0, 0, 0, 0]  # draft hook called, draft original entered, returned, model forward entered
        self.calls = [0, 0, 0, 0]  # CUDA event calls and events made so far, at each mark

    # SGLang's originals, doing nothing but stamping
    def _draft_original(self, worker, batch):
        self.marks[1] = perf_counter_ns()
        self.calls[1] = self.calls[2] = _Event.calls + _Event.made
        self.marks[2] = perf_counter_ns()

    def _forward_original(self, runner, forward_batch):
        self.marks[3] = perf_counter_ns()
        self.calls[3] = _Event.calls + _Event.made
        return None

    def _verify_original(self, worker, batch, is_verify=False):
        self.forward(self._forward_original, None, self.fwd_batch)
        return self.result_type(speculative_num_draft_tokens=self.draft_tokens)

    def _run_original(self, sched, batch):
        if not self.spec:
            self.marks[0] = self.marks[1] = self.marks[2] = perf_counter_ns()
            self.calls[0] = self.calls[1] = self.calls[2] = _Event.calls + _Event.made
            self.forward(self._forward_original, None, self.fwd_batch)
            return self.result_type()
        self.calls[0] = _Event.calls + _Event.made
        self.marks[0] = perf_counter_ns()
        self.draft(self._draft_original, self.worker, batch)
        return self.verify(self._verify_original, self.worker, batch, is_verify=True)

    def _process_original(self, sched, batch, result):
        accepted = self.draft_tokens - 1 if self.spec else 0
        for req in self.reqs:
            req.output_ids.extend([1] * (accepted + 1))
        if self.spec:
            result.num_correct_drafts_per_req_cpu = [accepted] * len(self.reqs)
        self.stream(lambda s, reqs, return_logprob, skip_req=None: None, self.streamer, self.reqs, False)

    def run(self) -> tuple[int, int, int]:
        """One step; returns (whole step ns, critical-path ns of our own work, CUDA calls on it)."""
        t0 = perf_counter_ns()
        self.schedule(lambda sched: self.plan, self.sched)
        result = self.run_batch(self._run_original, self.sched, self.batch)
        self.process(self._process_original, self.sched, self.batch, result)
        t1 = perf_counter_ns()
        # draft's before-hook, then its after-hook with the verify's and the model forward's before-hooks
        # (run_batch's own before-hook runs before SGLang waits for the previous verify: not critical)
        m, c = self.marks, self.calls
        critical = (m[1] - m[0]) + (m[3] - m[2])
        critical_calls = (c[1] - c[0]) + (c[3] - c[2])
        for req in self.reqs:  # keep output lists short (long runs would grow them without end)
            if len(req.output_ids) > 4096:
                del req.output_ids[:-1]
                trace = req.__dict__.get("_sgt")
                if trace is not None:
                    trace.tokens.clear()
                    trace.n_out = len(req.output_ids)
        return t1 - t0, critical, critical_calls


def _measure(arm: str, args, rec) -> dict:
    st = SchedulerState(TraceConfig(args.trace_dir, level="batch"))
    st.cuda = _Cuda
    st.gpu_times.anchor = GpuAnchor(_Event(), time.time_ns())
    step = _Step(st, _reqs(args.reqs, args.prompt), args.draft_tokens, spec=arm == "traced, NGRAM")
    sink = None if arm == "untraced" else rec
    whole, critical, writer = [], [], []
    collections = [0]

    def count(phase, info):
        if phase == "start":
            collections[0] += 1

    with recorder.use(sink):
        for _ in range(args.warmup):
            step.run()
        if sink is not None:
            rec._queue.clear()
        _Event.calls = _Event.made = 0
        emitted = critical_calls = 0
        gc.callbacks.append(count)
        for i in range(args.steps):
            w, c, n = step.run()
            whole.append(w)
            critical.append(c)
            critical_calls += n
            if sink is not None and (i + 1) % args.flush_every == 0:  # the writer's pass (every 250 ms)
                batch = list(rec._queue)
                rec._queue.clear()
                emitted += len(batch)
                t = perf_counter_ns()
                encode_message(MSG_RECORDS, batch)
                writer.append((perf_counter_ns() - t) / args.flush_every)
        gc.callbacks.remove(count)
    q = lambda xs, p: sorted(xs)[int(p * (len(xs) - 1))] / 1e3  # noqa: E731
    return {"step_median_us": q(whole, 0.5), "step_p99_us": q(whole, 0.99),
            "critical_median_us": q(critical, 0.5), "critical_p99_us": q(critical, 0.99),
            "writer_median_us": q(writer, 0.5) if writer else 0.0,
            "records_per_step": emitted / args.steps, "cuda_calls_per_step": _Event.calls / args.steps,
            "events_made_per_step": _Event.made / args.steps,
            "critical_cuda_calls_per_step": critical_calls / args.steps,  # events made counted as calls too
            "gc_per_1000_steps": collections[0] * 1000 / args.steps}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reqs", type=int, default=8, help="requests in the decode batch")
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--draft-tokens", type=int, default=12, help="NGRAM's default")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--flush-every", type=int, default=20,
                    help="steps between the writer's passes (its 250 ms at an H100's ~12.8 ms NGRAM step)")
    ap.add_argument("--label", default="", help="what this run measures (e.g. 'before', 'after')")
    ap.add_argument("--out", help="write the figures as JSON here")
    args = ap.parse_args()
    if min(args.reqs, args.steps, args.rounds, args.draft_tokens, args.flush_every) < 1:
        print("spec_step_cost: --reqs, --steps, --rounds, --draft-tokens and --flush-every must be >= 1",
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        args.trace_dir = tmp
        rec = recorder.Recorder(TraceConfig(tmp, level="batch", flush_ms=3_600_000), "scheduler", 0)
        rounds: dict[str, list[dict]] = {arm: [] for arm in ARMS}
        try:
            for r in range(args.rounds):
                for arm in ARMS:  # arms interleave within each round
                    rounds[arm].append(_measure(arm, args, rec))
                    print(f"round {r + 1}/{args.rounds} {arm}: {rounds[arm][-1]}", file=sys.stderr, flush=True)
        finally:
            rec._queue.clear()
            rec.close()
    summary = {arm: {k: statistics.median(x[k] for x in rs) for k in rs[0]} for arm, rs in rounds.items()}
    out = {"label": args.label, "args": {k: v for k, v in vars(args).items() if k != "trace_dir"},
           "python": sys.version.split()[0], "cpu_count": os.cpu_count(), "rounds": rounds, "summary": summary}
    for arm, s in summary.items():
        print(f"{arm:24s} step {s['step_median_us']:7.1f} us (p99 {s['step_p99_us']:7.1f})  critical path "
              f"{s['critical_median_us']:6.1f} us  writer {s['writer_median_us']:6.1f} us  "
              f"records {s['records_per_step']:.1f}  event calls {s['cuda_calls_per_step']:.1f} "
              f"(critical {s['critical_cuda_calls_per_step']:.1f})  events made {s['events_made_per_step']:.1f}  "
              f"gc/1000 {s['gc_per_1000_steps']:.1f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
