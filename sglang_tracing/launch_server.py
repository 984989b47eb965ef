"""``python -m sglang_tracing.launch_server --trace-dir DIR [tracing options] <sglang launch_server args>``.

Tracing options are taken out; every other argument goes to SGLang unchanged.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys

from sglang_tracing.runtime.manifest import MANIFEST
from sglang_tracing.config import (
    BATCH_KEEP_ALL, DEFAULT_KEEP_WINDOW, DEFAULT_MAX_QUEUED, LEVELS, MIN_NVML_INTERVAL_MS, TraceConfig,
    parse_profile_steps, validate_always_on, validate_batch_keep, validate_nvml_interval,
)
from sglang_tracing.errors import UsageError


RUN_FILE_PREFIXES = ("spans-", "nvml-", "gpu-")  # what a recording process writes into its trace dir


class SGLangMissing(UsageError):
    """Serving was asked for where SGLang cannot be imported (an analyzer-only install)."""


def require_sglang() -> None:
    """Raise SGLangMissing, one line, unless SGLang is importable here (checked without importing it)."""
    if importlib.util.find_spec("sglang") is None:
        raise SGLangMissing("SGLang is not installed in this environment: serving needs "
                            "pip install 'sglang-tracing[sglang]' (or sglang-tracing next to an SGLang install)")


def add_tracing_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trace-dir", required=True, help="directory the trace is written to (new, or "
                        "holding no recorded run: see --append)")
    parser.add_argument("--append", action="store_true",
                        help="record into a trace dir that already holds a run: its span files stay beside the "
                             "new ones and the reports merge both runs")
    parser.add_argument("--trace-level", choices=LEVELS, default="batch",
                        help="request: request spans only; batch (default): plus scheduler, forward and "
                             "cache spans; layer: plus per-layer/per-op NVTX ranges")
    parser.add_argument("--otlp-endpoint", help="also export spans to this OTLP/HTTP collector")
    parser.add_argument("--record-prompts", action="store_true",
                        help="record prompt and output text (off by default)")
    parser.add_argument("--nvml-interval-ms", type=int, default=MIN_NVML_INTERVAL_MS,
                        help=f"NVML/GPM sample interval (>= {MIN_NVML_INTERVAL_MS})")
    parser.add_argument("--profile-steps", metavar="START:N",
                        help="record a Kineto trace of N served forwards, starting at forward START")
    identity = parser.add_argument_group("identity (how this server names itself in spans and manifest)")
    identity.add_argument("--service-name", default="sglang", help="OpenTelemetry service.name (default: sglang)")
    identity.add_argument("--service-instance", help="service.instance.id (default: HOST:PORT of the server)")
    identity.add_argument("--server-role", help="e.g. prefill, decode (default: SGLang's --disaggregation-mode, "
                                                "else unified)")
    identity.add_argument("--host-name", help="host.name (default: this machine's hostname)")
    add_always_on_options(parser)


# (flag, type, default, metavar, help) of the numeric bounds; --batch-keep is parsed apart
ALWAYS_ON_NUMBERS = (
    ("--span-file-max-mb", float, 0, "MB", "start a new part of a process's span file at this size (0: never)"),
    ("--span-files-keep", int, 0, "N", "keep the newest N parts per process, deleting older ones (0: all)"),
    ("--keep-one-in", int, 1, "N", "tail-based keep: full detail for 1 in N requests, the others a summary (1: all)"),
    ("--keep-ttft-ms", float, 0, "MS", "... and for every request whose TTFT (at the scheduler) is over MS"),
    ("--keep-itl-ms", float, 0, "MS", "... or whose longest inter-token gap is over MS"),
    ("--keep-e2e-ms", float, 0, "MS", "... or whose end-to-end time (at the scheduler) is over MS"),
    ("--keep-percentile", float, 0, "P", "... or over the P-th percentile of the last --keep-window requests (0: off)"),
    ("--keep-window", int, DEFAULT_KEEP_WINDOW, "N", None),
    ("--max-queued", int, DEFAULT_MAX_QUEUED, "N",
     "records a process holds for its exporter before dropping (counted) more"),
)


def add_always_on_options(parser: argparse.ArgumentParser) -> None:
    """Bounds on what a trace left on writes (docs/always-on.md)."""
    group = parser.add_argument_group("always on: trace volume bounds and tail-based keep")
    for flag, kind, default, metavar, help_text in ALWAYS_ON_NUMBERS:
        group.add_argument(flag, type=kind, default=default, metavar=metavar, help=help_text)
    group.add_argument("--batch-keep", default=BATCH_KEEP_ALL, metavar="all|kept|N",
                       help="batch spans: all, those that ran a kept request, or 1 in N forwards")


def always_on_from_args(args: argparse.Namespace) -> dict:
    fields = {flag[2:].replace("-", "_"): getattr(args, flag[2:].replace("-", "_"))
              for flag, *_ in ALWAYS_ON_NUMBERS}
    fields["batch_keep"] = validate_batch_keep(args.batch_keep)
    return validate_always_on(fields)


def recorded_run(trace_dir: str) -> str | None:
    """The first file in ``trace_dir`` that a recorded run left (manifest, span files), or None."""
    if not os.path.isdir(trace_dir):
        return None
    for name in sorted(os.listdir(trace_dir)):
        if name == MANIFEST or name.startswith(RUN_FILE_PREFIXES):
            return name
    return None


def config_from_args(args: argparse.Namespace) -> TraceConfig:
    """Validated config; raises ValueError with a one-line message (UsageError: a trace dir that already
    holds a run, unless ``--append``)."""
    found = recorded_run(args.trace_dir)
    if found and not getattr(args, "append", False):
        raise UsageError(f"{args.trace_dir} already holds a recorded run ({found}): give a new trace dir, "
                         "or --append to record a second run beside it")
    return TraceConfig(
        trace_dir=os.path.abspath(args.trace_dir), level=args.trace_level,
        otlp_endpoint=args.otlp_endpoint, record_prompts=args.record_prompts,
        nvml_interval_ms=validate_nvml_interval(args.nvml_interval_ms),
        profile_steps=parse_profile_steps(args.profile_steps),
        service_name=getattr(args, "service_name", None) or "sglang",
        service_instance=getattr(args, "service_instance", None),
        server_role=getattr(args, "server_role", None),
        host_name=getattr(args, "host_name", None),
        **always_on_from_args(args),
    )


def _sglang_arg(sglang_args: list[str], name: str) -> str | None:
    for i, arg in enumerate(sglang_args):
        if arg == name and i + 1 < len(sglang_args):
            return sglang_args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def with_identity_defaults(config: TraceConfig, sglang_args: list[str]) -> TraceConfig:
    """Role from SGLang's --disaggregation-mode, instance from its host and port, unless given."""
    import dataclasses
    import socket

    host = config.host_name or socket.gethostname()
    mode = _sglang_arg(sglang_args, "--disaggregation-mode")
    role = config.server_role or (mode if mode and mode != "null" else "unified")
    port = _sglang_arg(sglang_args, "--port") or "30000"
    instance = config.service_instance or f"{host}:{port}"
    return dataclasses.replace(config, host_name=host, server_role=role, service_instance=instance)


def exec_traced_server(config: TraceConfig, sglang_args: list[str]) -> None:
    """Replace this process with SGLang's launch_server, tracing configured through the environment."""
    require_sglang()
    os.makedirs(config.trace_dir, exist_ok=True)
    os.environ.update(with_identity_defaults(config, sglang_args).to_env())
    argv = [sys.executable, "-m", "sglang.launch_server", *sglang_args]
    os.execv(sys.executable, argv)


def main(argv: list[str] | None = None) -> None:
    # no abbreviations: SGLang's own --host must not be taken for our --host-name
    parser = argparse.ArgumentParser(prog="python -m sglang_tracing.launch_server", allow_abbrev=False)
    add_tracing_options(parser)
    args, sglang_args = parser.parse_known_args(argv)
    try:
        config = config_from_args(args)
        exec_traced_server(config, sglang_args)
    except ValueError as exc:
        parser.exit(2, f"sglang-trace: error: {exc}\n")


if __name__ == "__main__":
    main()
