"""``sglang-trace nsys``: the traced server under Nsight Systems, capturing served forwards only.

The capture range is cudaProfilerApi: the model-runner patch calls cudaProfilerStart at served
forward START and cudaProfilerStop after N, so model loading and CUDA-graph capture stay out
of the report. When the server exits, the report is exported to sqlite next to the trace.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

# node-level CUDA-graph tracing: each kernel of a decode graph replay shows up (SGLang's own advice)
DEFAULT_NSYS_ARGS = ["--trace=cuda,nvtx,osrt", "--sample=none", "--cpuctxsw=none", "--cuda-graph-trace=node",
                     "--capture-range=cudaProfilerApi", "--capture-range-end=stop",
                     "--trace-fork-before-exec=true", "--force-overwrite=true"]


ATTENTION_KERNELS = "regex:(fwd_kernel|[Pp]refill|[Dd]ecode|[Aa]ttention)"
# the last two prefill-attention launches and the first two decode ones of a 32-layer model
NCU_ARGS = ["--target-processes", "all", "--clock-control", "none", "--set", "full", "-k", ATTENTION_KERNELS,
            "--launch-skip", "30", "--launch-count", "4", "-f"]
NCU_SERVER_ARGS = ["--disable-cuda-graph", "--skip-server-warmup"]  # every launch visible, none before requests


def find_ncu(explicit: str | None = None) -> str:
    for c in ([explicit] if explicit else [shutil.which("ncu"), "/usr/local/cuda/bin/ncu"]):
        if c and os.path.exists(c):
            return c
    raise ValueError("ncu not found: put Nsight Compute on PATH or pass --ncu-path")


def export_ncu_csv(ncu: str, rep: str) -> list[str]:
    out = []
    for page in ("details", "raw"):
        path = rep.replace(".ncu-rep", f"-{page}.csv")
        with open(path, "w") as f:
            subprocess.run([ncu, "--import", rep, "--csv", "--page", page], stdout=f, check=False)
        out.append(path)
    return out


def find_nsys(explicit: str | None = None) -> str:
    candidates = [explicit] if explicit else [shutil.which("nsys"),
                                              "/opt/nvidia/nsight-compute/2025.3.1/host/target-linux-x64/nsys"]
    for c in candidates:
        if c and os.path.exists(c):
            return c
    raise ValueError("nsys not found: put Nsight Systems on PATH or pass --nsys-path")


def profile_command(nsys: str, trace_dir: str, extra: list[str]) -> list[str]:
    return [nsys, "profile", *DEFAULT_NSYS_ARGS, *extra, "-o", os.path.join(trace_dir, "nsys")]


def export_failure(done: subprocess.CompletedProcess, out: str) -> str | None:
    """Why an ``nsys export`` run did not produce ``out`` (None when it did), in nsys's own words:
    its last lines of output (nsys prints some errors on stdout), else its exit status."""
    if done.returncode == 0 and os.path.exists(out):
        return None
    said = [ln.strip() for ln in f"{done.stdout or ''}\n{done.stderr or ''}".splitlines() if ln.strip()]
    status = f"exit status {done.returncode}" if done.returncode else f"exit status 0 but no {out} written"
    return f"nsys export failed ({status}): " + (" | ".join(said[-2:]) if said else "it printed nothing")


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


def run(config, sglang_args: list[str], nsys_path: str | None, nsys_extra: list[str]) -> int:
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
