"""NVML + GPM sampler for one GPU, run by the exporter process (off the scheduler's GIL).

Writes one JSON line per sample to ``nvml-<process label>.jsonl``:
``{"t_ns": wall ns (same clock as spans), "gpu": index, <metric>: value, ...}``.
GPM metrics are rates over the interval between two samples, so the first line has none.
When NVML fails ``MAX_FAILURES`` times in a row (the GPU lost to NVML, the driver gone), sampling stops
with one last line ``{"t_ns", "gpu", "sampling_stopped": why}`` and one warning; serving never notices.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time

from sglang_tracing import semconv as sc

logger = logging.getLogger(__name__)
MAX_FAILURES = 10  # failed samples in a row before the sampler gives up


def probe(gpu_index: int) -> tuple[bool, str]:
    """Whether NVML (and GPM) can sample this GPU, and why not."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as exc:
        return False, f"NVML unavailable: {exc}"
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(gpu_index)
        gpm = bool(pynvml.nvmlGpmQueryDeviceSupport(handle).isSupportedDevice)
        return True, "NVML and GPM available" if gpm else "NVML available; GPM not supported on this GPU"
    except Exception as exc:
        return False, f"NVML cannot open GPU {gpu_index}: {exc}"


class Sampler:
    def __init__(self, gpu_index: int, interval_ms: int, out_path: str):
        import pynvml

        self._nvml = pynvml
        pynvml.nvmlInit()
        self.gpu_index = gpu_index
        self.interval = interval_ms / 1000
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(gpu_index)
        try:
            self._gpm = bool(pynvml.nvmlGpmQueryDeviceSupport(self._handle).isSupportedDevice)
        except Exception:
            self._gpm = False
        self._fd = os.open(out_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nvml-sampler", daemon=True)
        self._thread.start()

    def _basic(self) -> dict:
        n, h = self._nvml, self._handle
        util = n.nvmlDeviceGetUtilizationRates(h)
        mem = n.nvmlDeviceGetMemoryInfo(h)
        return {
            sc.NVML_GPU_UTIL: util.gpu, sc.NVML_MEM_UTIL: util.memory,
            sc.NVML_POWER: n.nvmlDeviceGetPowerUsage(h) / 1000,
            sc.NVML_SM_CLOCK: n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM),
            sc.NVML_MEM_CLOCK: n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_MEM),
            sc.NVML_MEM_USED: mem.used, sc.NVML_MEM_TOTAL: mem.total,
        }

    def _gpm_values(self, prev, cur) -> dict:
        n = self._nvml
        get = n.c_nvmlGpmMetricsGet_t()
        get.version = n.NVML_GPM_METRICS_GET_VERSION
        get.numMetrics = len(sc.GPM_METRICS)
        get.sample1, get.sample2 = prev, cur
        for i, const in enumerate(sc.GPM_METRICS.values()):
            get.metrics[i].metricId = getattr(n, const)
        n.nvmlGpmMetricsGet(get)
        return {field: get.metrics[i].value for i, field in enumerate(sc.GPM_METRICS)
                if get.metrics[i].nvmlReturn == 0}

    def _run(self) -> None:
        n = self._nvml
        samples = None
        if self._gpm:
            samples = [n.nvmlGpmSampleAlloc(), n.nvmlGpmSampleAlloc()]
            n.nvmlGpmSampleGet(self._handle, samples[0])
        errors = in_a_row = 0
        while not self._stop.wait(self.interval):
            try:
                row = {"t_ns": time.time_ns(), "gpu": self.gpu_index}
                if samples is not None:
                    n.nvmlGpmSampleGet(self._handle, samples[1])
                    row.update(self._gpm_values(samples[0], samples[1]))
                    samples.reverse()
                row.update(self._basic())
                os.write(self._fd, (json.dumps(row) + "\n").encode())
                in_a_row = 0
            except Exception as exc:
                errors += 1
                in_a_row += 1
                if errors == 1:
                    logger.warning("NVML sample failed; sampling goes on", exc_info=True)
                if in_a_row >= MAX_FAILURES:
                    self._give_up(f"{in_a_row} NVML samples failed in a row: {type(exc).__name__}: {exc}")
                    return

    def _give_up(self, why: str) -> None:
        logger.warning("NVML sampling of GPU %d stopped: %s", self.gpu_index, why)
        try:
            os.write(self._fd, (json.dumps({"t_ns": time.time_ns(), "gpu": self.gpu_index,
                                            sc.NVML_SAMPLING_STOPPED: why[:300]}) + "\n").encode())
        except OSError:
            pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        os.close(self._fd)


def start_sampler(settings: dict) -> Sampler | None:
    try:
        return Sampler(settings["gpu_index"], settings["interval_ms"], settings["out_path"])
    except Exception:
        logger.warning("NVML sampler could not start", exc_info=True)
        return None
