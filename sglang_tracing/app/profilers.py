"""The traced server under Nsight Systems or Nsight Compute: finding the tool, its command line,
exporting what it recorded.

``sglang-trace nsys`` (and ``experiment nsys``) capture served forwards only: the capture range is
cudaProfilerApi, the model-runner patch calls cudaProfilerStart at served forward START and
cudaProfilerStop after N, so model loading and CUDA-graph capture stay out of the report. When the
server exits, the report is exported to sqlite next to the trace. ``experiment ncu`` profiles a few
attention launches of a server without CUDA graphs and exports the report's pages to CSV.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

from sglang_tracing.analyzer.loaders.nsys_export import export_failure
from sglang_tracing.errors import UsageError

# Nsight Systems
# node-level CUDA-graph tracing: each kernel of a decode graph replay shows up (SGLang's own advice)
DEFAULT_NSYS_ARGS = ["--trace=cuda,nvtx,osrt", "--sample=none", "--cpuctxsw=none", "--cuda-graph-trace=node",
                     "--capture-range=cudaProfilerApi", "--capture-range-end=stop",
                     "--trace-fork-before-exec=true", "--force-overwrite=true"]
# the nsys that Nsight Compute 2025.3.1 ships, looked for when none is on PATH
DEFAULT_NSYS_PATH = "/opt/nvidia/nsight-compute/2025.3.1/host/target-linux-x64/nsys"


def find_nsys(explicit: str | None = None) -> str:
    candidates = [explicit] if explicit else [shutil.which("nsys"), DEFAULT_NSYS_PATH]
    for c in candidates:
        if c and os.path.exists(c):
            return c
    raise UsageError("nsys not found: put Nsight Systems on PATH or pass --nsys-path")


def profile_command(nsys: str, trace_dir: str, extra: list[str]) -> list[str]:
    return [nsys, "profile", *DEFAULT_NSYS_ARGS, *extra, "-o", os.path.join(trace_dir, "nsys")]


def export_sqlite(nsys: str, trace_dir: str) -> str | None:
    """The capture exported to ``nsys.sqlite`` next to it; None (and one line on stderr) when that failed."""
    rep = os.path.join(trace_dir, "nsys.nsys-rep")
    if not os.path.exists(rep):
        return None
    out = os.path.join(trace_dir, "nsys.sqlite")
    done = subprocess.run([nsys, "export", "--type", "sqlite", "--force-overwrite=true", "-o", out, rep],
                          capture_output=True, text=True)
    problem = export_failure(done, out)
    if problem:
        print(f"sglang-trace: {rep}: {problem}", file=sys.stderr)
        return None
    return out


def run_under_nsys(config, sglang_args: list[str], nsys_path: str | None, nsys_extra: list[str]) -> int:
    from sglang_tracing.launch_server import require_sglang

    require_sglang()
    nsys = find_nsys(nsys_path)
    os.makedirs(config.trace_dir, exist_ok=True)
    env = dict(os.environ, **config.to_env())
    cmd = profile_command(nsys, config.trace_dir, nsys_extra) + [
        sys.executable, "-m", "sglang.launch_server", *sglang_args]
    proc = subprocess.Popen(cmd, env=env)
    previous = signal.signal(signal.SIGINT, lambda *_: proc.send_signal(signal.SIGINT))
    try:
        code = proc.wait()
    finally:
        signal.signal(signal.SIGINT, previous)
    out = export_sqlite(nsys, config.trace_dir)
    print(f"nsys report: {out or 'none written'}")
    return code


# Nsight Compute
ATTENTION_KERNELS = "regex:(fwd_kernel|[Pp]refill|[Dd]ecode|[Aa]ttention)"
# the last two prefill-attention launches and the first two decode ones of a 32-layer model
NCU_ARGS = ["--target-processes", "all", "--clock-control", "none", "--set", "full", "-k", ATTENTION_KERNELS,
            "--launch-skip", "30", "--launch-count", "4", "-f"]
NCU_SERVER_ARGS = ["--disable-cuda-graph", "--skip-server-warmup"]  # every launch visible, none before requests


def find_ncu(explicit: str | None = None) -> str:
    for c in ([explicit] if explicit else [shutil.which("ncu"), "/usr/local/cuda/bin/ncu"]):
        if c and os.path.exists(c):
            return c
    raise UsageError("ncu not found: put Nsight Compute on PATH or pass --ncu-path")


def export_ncu_csv(ncu: str, rep: str) -> list[str]:
    out = []
    for page in ("details", "raw"):
        path = rep.replace(".ncu-rep", f"-{page}.csv")
        with open(path, "w") as f:
            subprocess.run([ncu, "--import", rep, "--csv", "--page", page], stdout=f, check=False)
        out.append(path)
    return out
