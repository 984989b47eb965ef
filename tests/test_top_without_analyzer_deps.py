"""``sglang-trace top`` runs on a serving host that has the runtime but not the analyzer's polars (nor textual,
for ``--json``/``--once``): the GPU host of the benchmarks is such a host."""
from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import raw_spans

EXAMPLE = Path(__file__).parent.parent / "traces" / "examples" / "cpu-pd" / "load-1" / "decode"
BLOCKED = ("polars", "textual")
RUN_BLOCKED = f"""
import runpy, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            raise ImportError("blocked " + name)
sys.meta_path.insert(0, Block())
sys.argv = ["sglang_tracing", *sys.argv[1:]]
runpy.run_module("sglang_tracing", run_name="__main__")
"""


def _snapshot(trace_dir: Path, blocked: bool) -> dict:
    head = [sys.executable, "-c", RUN_BLOCKED] if blocked else [sys.executable, "-m", "sglang_tracing"]
    done = subprocess.run([*head, "top", str(trace_dir), "--json"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_top_json_needs_neither_polars_nor_textual(tmp_path):
    live = tmp_path / "trace"
    shutil.copytree(EXAMPLE, live)
    for packed in live.glob("spans-*.jsonl.gz"):  # as a running server leaves them: plain, being appended
        with gzip.open(packed, "rb") as src:
            packed.with_suffix("").write_bytes(src.read())
        packed.unlink()
    without = _snapshot(live, blocked=True)
    assert without["newest_record_ns"] == max(s["end"] for s in raw_spans.spans(live))
    with_all = _snapshot(live, blocked=False)
    for snap in (without, with_all):
        snap.pop("t_ns")
    assert without == with_all
