"""``sglang-trace top`` attached to a traced server during a benchmark (``overhead.py --configs ...,traced-top``).

The view runs as a person would leave it, refreshing twice a second, in its own process: ``top DIR --json
--follow 0.5`` (the same tail and snapshot work as the terminal view, without drawing; textual is not on
the GPU host). Each snapshot goes to a file, so the result can show the view kept up.
"""
from __future__ import annotations

import json
import subprocess
import sys

from sglang_tracing.config import TOP_REFRESH_S

ATTACHED = {"traced-top"}  # configs that run with a top attached


def attach(trace_dir: str, out_path: str) -> subprocess.Popen:
    out = open(out_path, "w")
    return subprocess.Popen([sys.executable, "-m", "sglang_tracing", "top", trace_dir, "--json", "--follow",
                             str(TOP_REFRESH_S)], stdout=out, stderr=subprocess.STDOUT)


def detach(proc: subprocess.Popen, out_path: str) -> dict:
    """Stop the view; what it showed: snapshots taken, the last one's age of its newest record and finished count."""
    proc.terminate()
    proc.wait(10)
    snaps = bad = 0
    last = None
    with open(out_path) as f:
        for line in f:
            try:
                last = json.loads(line)
                snaps += 1
            except ValueError:
                bad += 1
    if last is None:
        return {"snapshots": 0, "other_lines": bad}
    return {"snapshots": snaps, "other_lines": bad, "last_finished_in_window": last["window"]["finished"],
            "last_record_age_s": (last["t_ns"] - last["newest_record_ns"]) / 1e9}
