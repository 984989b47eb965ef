"""Start GPU sampling for a scheduler rank's GPU, or say in the trace why there is none."""
from __future__ import annotations

import json
import os

from sglang_tracing.patches import _compat
from sglang_tracing.runtime.gpu_sampler import probe


def nvml_index(cuda_index: int) -> int:
    """NVML numbers GPUs physically; CUDA numbers them within CUDA_VISIBLE_DEVICES."""
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if cuda_index < len(visible) and visible[cuda_index].isdigit():
        return int(visible[cuda_index])
    return cuda_index


def start_for_scheduler(rec, scheduler) -> None:
    device = str(getattr(getattr(scheduler, "server_args", None), "device", "cuda"))
    gpu_id = nvml_index(_compat.scheduler_rank(scheduler, "gpu_id") or 0)
    if not device.startswith("cuda"):
        ok, why = False, f"device is {device!r}: no GPU to sample"
    else:
        ok, why = probe(gpu_id)
    note = {"process": rec.process_label, "gpu_index": gpu_id, "sampling": ok, "reason": why,
            "interval_ms": rec.config.nvml_interval_ms}
    with open(os.path.join(rec.config.trace_dir, f"gpu-{rec.process_label}.json"), "w") as f:
        json.dump(note, f, indent=1)
    if ok:
        rec.start_sampler({"gpu_index": gpu_id, "interval_ms": rec.config.nvml_interval_ms,
                           "out_path": os.path.join(rec.config.trace_dir, f"nvml-{rec.process_label}.jsonl")})
