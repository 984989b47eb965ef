"""``manifest.json``: what produced a trace dir (versions, server args, host, GPUs, clock anchor)."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import socket
import sys
import time
from importlib import metadata

from sglang_tracing import __version__
from sglang_tracing.config import TraceConfig

logger = logging.getLogger(__name__)
MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _gpus() -> dict:
    try:
        import pynvml

        pynvml.nvmlInit()
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            gpus.append({"index": i, "name": name.decode() if isinstance(name, bytes) else name,
                         "memory_bytes": pynvml.nvmlDeviceGetMemoryInfo(h).total,
                         "max_sm_clock_mhz": pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_SM),
                         "max_mem_clock_mhz": pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_MEM),
                         "memory_bus_width_bits": _safe(pynvml.nvmlDeviceGetMemoryBusWidth, h)})
        driver = pynvml.nvmlSystemGetDriverVersion()
        return {"available": True, "driver": driver.decode() if isinstance(driver, bytes) else driver,
                "devices": gpus}
    except Exception as exc:
        return {"available": False, "reason": f"NVML unavailable: {exc}", "devices": []}


def _safe(fn, *args):
    try:
        return fn(*args)
    except Exception:
        return None


def _jsonable(value):
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)


def _model_config(args: dict) -> dict | None:
    path = args.get("model_path")
    cfg = os.path.join(path, "config.json") if isinstance(path, str) else None
    if cfg and os.path.isfile(cfg):
        try:
            with open(cfg) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None
    return None


def weights_of(manifest: dict) -> str | None:
    """Which weights the server served: "dummy" (random, ``--load-format dummy``) or "real"; None
    when the manifest has no server args. Read from SGLang's load_format for older recordings."""
    if manifest.get("weights"):
        return manifest["weights"]
    load_format = (manifest.get("server_args") or {}).get("load_format")
    if load_format is None:
        return None
    return "dummy" if load_format == "dummy" else "real"


def _role_of(args: dict) -> str:
    mode = args.get("disaggregation_mode")
    return mode if isinstance(mode, str) and mode not in ("", "null") else "unified"


def build(config: TraceConfig, server_args=None) -> dict:
    args = {}
    if server_args is not None and dataclasses.is_dataclass(server_args):
        args = {f.name: _jsonable(getattr(server_args, f.name, None)) for f in dataclasses.fields(server_args)}
    elif server_args is not None and hasattr(server_args, "__struct_fields__"):  # msgspec (SGLang >= 0.5.23)
        args = {k: _jsonable(getattr(server_args, k, None)) for k in server_args.__struct_fields__}
    elif server_args is not None and hasattr(server_args, "__dict__"):
        args = {k: _jsonable(v) for k, v in vars(server_args).items() if not k.startswith("_")}
    return {
        "format": "sglang-tracing",
        "format_version": FORMAT_VERSION,
        "versions": {"sglang": _version("sglang"), "torch": _version("torch"),
                     "sglang_tracing": __version__, "python": platform.python_version()},
        "config": dataclasses.asdict(config),
        "command": sys.argv,
        "server_args": args,
        "weights": weights_of({"server_args": args}),
        "model_config": _model_config(args),
        "host": {"hostname": socket.gethostname(), "platform": platform.platform(),
                 "cpu_count": os.cpu_count()},
        "identity": {"service_name": config.service_name, "service_instance": config.service_instance,
                     "server_role": config.server_role or _role_of(args), "host_name": config.host_name
                     or socket.gethostname()},
        "gpu": _gpus(),
        "clock": {"realtime_ns": time.time_ns(), "monotonic_ns": time.monotonic_ns(),
                  "perf_counter_ns": time.perf_counter_ns(),
                  "note": "spans and NVML samples use realtime (time.time_ns); this pair maps monotonic clocks onto it"},
    }


def write(config: TraceConfig, server_args=None) -> str:
    path = os.path.join(config.trace_dir, MANIFEST)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(build(config, server_args), f, indent=1)
    os.replace(tmp, path)
    return path
