"""``sglang-trace``: launch a traced SGLang server, analyze a trace, export it to Perfetto, run the demo."""
from __future__ import annotations

import argparse
import logging
import sys

from sglang_tracing.errors import TraceError, UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        self.exit(2, f"sglang-trace: error: {message}\n")


def _launch(args, rest: list[str]) -> int:
    from sglang_tracing.launch_server import config_from_args, exec_traced_server

    if not rest:
        raise SystemExit("sglang-trace: error: give SGLang's arguments after --, e.g. -- --model-path M")
    exec_traced_server(config_from_args(args), rest)
    return 0


def _nsys(args, rest) -> int:
    import dataclasses

    from sglang_tracing.app import profilers
    from sglang_tracing.config import parse_profile_steps
    from sglang_tracing.launch_server import config_from_args

    if not rest:
        raise SystemExit("sglang-trace: error: give SGLang's arguments after --, e.g. -- --model-path M")
    config = dataclasses.replace(config_from_args(args), capture_steps=parse_profile_steps(args.capture_steps))
    return profilers.run_under_nsys(config, rest, args.nsys_path, args.nsys_arg or [])


def _analyze(args, rest) -> int:
    from sglang_tracing.analyzer import api

    paths = api.analyze(args.trace_dir, reports=args.report, request=args.request, out_dir=args.out,
                        formats=args.format, nsys=args.nsys, kineto=args.kineto,
                        model_config=args.model_config, ncu=args.ncu, profiled=args.profiled)
    for p in paths:
        print(p)
    return 0


def _perfetto(args, rest) -> int:
    from sglang_tracing.analyzer import api

    counts = api.to_perfetto(args.trace_dir, args.output, nsys=args.nsys, kineto=args.kineto)
    print(f"{args.output}: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    return 0


def _requests(args, rest) -> int:
    from sglang_tracing.analyzer import api

    for p in api.requests(args.trace_dir, out_dir=args.out, nsys=args.nsys, kineto=args.kineto):
        print(p)
    return 0


def _diff(args, rest) -> int:
    from sglang_tracing.analyzer import api

    report, written = api.diff(args.a, args.b, out_dir=args.out, formats=args.format)
    if written:
        print("\n".join(written))
    else:
        print(report, end="")
    return 0


def _experiment(args, rest) -> int:
    from sglang_tracing.app.experiments import pd as pd_experiment
    from sglang_tracing.app.experiments import runners
    from sglang_tracing.app.experiments.common import Experiment, finish
    from sglang_tracing.app.serving import ServerError

    exp = Experiment(args.name, args)
    run = {"baseline": runners.baseline, "radix": runners.radix, "backends": runners.backends,
           "tp": runners.tp, "pd": pd_experiment.run, "spec": runners.spec, "nsys": lambda e: runners.profiled(e, "nsys"),
           "ncu": lambda e: runners.profiled(e, "ncu")}[args.name]
    try:
        written = run(exp)
    except ServerError as exc:
        print(f"sglang-trace: error: {exc}; what was recorded is in {exp.out}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"sglang-trace: interrupted; servers stopped, what was recorded is in {exp.out} "
              f"(rerun with --out {exp.out} to resume)", file=sys.stderr)
        return 130
    print("\n".join(finish(exp, written)))
    return 0


def _demo(args, rest) -> int:
    from sglang_tracing.app import demo

    return demo.run(args.trace_dir, requests=args.requests)


def _top(args, rest) -> int:
    from sglang_tracing.app import top

    return top.run(args)


def _detail(args, rest) -> int:
    from sglang_tracing.app import detail

    return detail.run(args)


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"comma-separated integers, not {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    from sglang_tracing.config import DEFAULT_CAPTURE_STEPS
    from sglang_tracing.launch_server import add_tracing_options

    parser = _Parser(prog="sglang-trace", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("launch", help="start SGLang with tracing: sglang-trace launch --trace-dir D -- <sglang args>")
    add_tracing_options(p)
    p.set_defaults(func=_launch)
    p = sub.add_parser("nsys", help="the traced server under Nsight Systems: sglang-trace nsys --trace-dir D -- <sglang args>")
    add_tracing_options(p)
    p.add_argument("--capture-steps", default=DEFAULT_CAPTURE_STEPS, metavar="START:N",
                   help="served forwards inside the nsys capture range; it also ends when the server "
                        "first goes idle (default: the first burst of traffic)")
    p.add_argument("--nsys-path", help="the nsys binary (default: on PATH)")
    p.add_argument("--nsys-arg", action="append", help="extra nsys profile option (repeatable)")
    p.set_defaults(func=_nsys)
    for name, helptext in (("analyze", "write reports for a trace dir"),
                           ("perfetto", "export a trace dir as a native Perfetto trace")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("trace_dir", nargs="*", help="trace dir; several are merged, each one a server in the "
                                                    "reports (none when only profiler files are analyzed); a "
                                                    "prefill and a decode server's dirs also give the PD report")
        p.add_argument("--nsys", help="Nsight Systems export (.sqlite, or .nsys-rep with nsys on PATH)")
        p.add_argument("--kineto", help="Kineto / Chrome-trace JSON (.json or .json.gz)")
        if name == "analyze":
            p.add_argument("--report", default="all", help="story, radix, timeline, attention or all (comma-separated)")
            p.add_argument("--ncu", help="Nsight Compute result: details or raw CSV, console text, or .ncu-rep")
            p.add_argument("--request", default="slowest", help="rid prefix, first, slowest or p50")
            p.add_argument("--out", help="output dir (default: DIR/reports)")
            p.add_argument("--format", default="text,md,html",
                           help="text, md, html, csv (comma-separated); csv: every table whole, one file each")
            p.add_argument("--model-config", help="served model's config.json, or a shipped architecture "
                                                  "(llama-2-7b), when the manifest has none")
            p.add_argument("--profiled", help="story: a profiled pass's trace dir (layer ranges with its nsys "
                                              "export or Kineto trace) whose per-layer and kernel figures it adds")
            p.set_defaults(func=_analyze)
        else:
            p.add_argument("-o", "--output", required=True, help="output .pftrace file")
            p.set_defaults(func=_perfetto)
    p = sub.add_parser("requests", help="one row per request (internal or not, streamed, tokens, queue, TTFT, "
                                        "every ITL, e2e, GPU ms by phase) as CSV and Parquet")
    p.add_argument("trace_dir")
    p.add_argument("--out", help="output dir (default: DIR/reports)")
    p.add_argument("--nsys", help="Nsight Systems export: GPU time from its kernels where spans have no CUDA events")
    p.add_argument("--kineto", help="Kineto / Chrome-trace JSON, likewise")
    p.set_defaults(func=_requests)
    p = sub.add_parser("diff", help="compare two runs or profiles kernel by kernel and range by range")
    p.add_argument("a", help="baseline: trace dir, nsys export, Kineto JSON or nsys stats CSV(s)")
    p.add_argument("b", help="compared against the baseline (delta = B - A)")
    p.add_argument("--out", help="write diff.{txt,md,html} here (default: print the text report)")
    p.add_argument("--format", default="text,md,html",
                   help="text, md, html, csv (comma-separated), with --out; csv: every table whole, one file each")
    p.set_defaults(func=_diff)
    p = sub.add_parser("experiment", help="run one of the plan's experiments end to end",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("name", choices=["baseline", "radix", "backends", "nsys", "ncu", "tp", "pd", "spec"])
    from sglang_tracing.app.experiments.common import add_common_options

    add_common_options(p)
    p.add_argument("--backends", default="flashinfer,triton", help="backends experiment: attention backends")
    p.add_argument("--batch-sizes", type=_ints, default="1,8,32", help="backends experiment: batch sizes")
    p.add_argument("--seq-lens", type=_ints, default="512,2048,8192", help="backends experiment: prompt lengths")
    p.add_argument("--backend", default="triton", help="nsys / ncu experiments: attention backend")
    p.add_argument("--tool-path", help="nsys / ncu experiments: the profiler binary")
    p.add_argument("--tp-sizes", type=_ints, default="1,2", help="tp experiment: tensor-parallel sizes")
    p.add_argument("--gpus", help="tp experiment: CUDA_VISIBLE_DEVICES per TP size, ';'-separated (0;0,1;0,1,2,3)")
    p.add_argument("--host-tier", action="store_true", help="radix experiment: add the hierarchical-cache scenario "
                   "(a small device pool, prefixes evicted to host and loaded back; needs a GPU)")
    p.add_argument("--hicache-size", type=int, default=20, help="radix --host-tier: host tier size in GB")
    p.add_argument("--spec-args", default="--speculative-algorithm NGRAM",
                   help="spec experiment: SGLang's speculative-decoding arguments for the 'spec' cell")
    p.set_defaults(func=_experiment)
    from sglang_tracing.app import detail, top

    p = sub.add_parser("top", help="live view of a running traced server: requests in flight, batch, cache, "
                                   "GPU, sliding-window TTFT/ITL (--once / --json for scripts)")
    top.add_arguments(p)
    p.set_defaults(func=_top)
    p = sub.add_parser("detail", help="layer-level detail for the next N forwards of a running traced server")
    detail.add_arguments(p)
    p.set_defaults(func=_detail)
    p = sub.add_parser("demo", help="serve a tiny Llama on CPU with tracing, send requests, write reports")
    p.add_argument("--trace-dir", help="a new or empty dir (default: traces/demo/<timestamp>)")
    p.add_argument("--requests", type=int, default=12)
    p.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    rest: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, rest = argv[:i], argv[i + 1:]
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="sglang-trace: %(message)s")
    try:
        return args.func(args, rest)
    except TraceError as exc:
        print(f"sglang-trace: error: {exc}", file=sys.stderr)
        return 2
    except UsageError as exc:
        print(f"sglang-trace: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sglang-trace: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
