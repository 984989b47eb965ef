"""``sglang-trace top`` and ``sglang-trace detail`` on one real traced CPU server under load.

The server chunks prefills at 64 tokens, so 200-token prompts show ``prefill i/4`` between forwards.
Figures the view prints are checked against the trace read afterwards by the analyzer
(``requests.request_table``) and against the server's own /server_info.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from sglang_tracing import semconv as sc
from sglang_tracing.analyzer.analyses import layer_detail
from sglang_tracing.analyzer.analyses.live_types import PHASES
from sglang_tracing.analyzer.analyses.requests import request_table, user_requests
from sglang_tracing.analyzer.loaders.trace_dir import load_trace_dir
from sglang_tracing.app.serving import CPU_ARGS
from sglang_tracing.models.builder import prompt_of_length
from conftest import start_server, stop_and_drain

pytestmark = pytest.mark.server
CLI = [sys.executable, "-m", "sglang_tracing"]
CHUNK = 64
PROMPT = 200  # 4 chunks of at most 64 tokens


@pytest.fixture(scope="module")
def live_server(tiny_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("live")
    server, trace_dir = start_server(tiny_model, tmp, sglang_args=[*CPU_ARGS, "--chunked-prefill-size", str(CHUNK)])
    try:
        yield server, trace_dir
    finally:
        stop_and_drain(server, trace_dir)


class Load:
    """Streamed requests from a background thread while a test looks at the server."""

    def __init__(self, server, n: int, seed: int, output: int = 48, concurrency: int = 8):
        prompts = [prompt_of_length(PROMPT, seed=seed * 1000 + i) for i in range(n)]
        self.outs: list[dict] = []
        self.thread = threading.Thread(
            target=lambda: self.outs.extend(server.generate_all(prompts, output, concurrency, stream=True)))
        self.thread.start()

    def wait(self) -> list[dict]:
        self.thread.join(600)
        return self.outs


def _snapshot_json(target: str, *extra: str) -> dict:
    done = subprocess.run([*CLI, "top", target, "--json", *extra], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _kv_pool(server) -> int:
    with urllib.request.urlopen(server.url + "/server_info", timeout=30) as r:
        info = json.loads(r.read())
    return next(int(s["max_total_num_tokens"]) for s in (info, *(info.get("internal_states") or []))
                if isinstance(s, dict) and s.get("max_total_num_tokens"))


def test_once_and_json_show_requests_in_flight(live_server):
    server, trace_dir = live_server
    # 48 requests, 8 at a time: new prefills keep arriving while the load lasts, however slowly each snapshot's
    # fresh interpreter starts (16 could be past their last prefill by the first snapshot on a busy host)
    load = Load(server, 48, seed=1)
    seen: dict[str, set] = {}
    try:
        deadline = time.time() + 120
        while time.time() < deadline and load.thread.is_alive():
            snap = _snapshot_json(trace_dir)
            for row in snap["requests"]:
                seen.setdefault(row["phase"], set()).add(row["phase_text"])
            if {"queued", "prefill", "decode"} <= set(seen) and snap["cache"]["total"]:
                break
            time.sleep(0.3)
        text = subprocess.run([*CLI, "top", server.url, "--once", "--sort", "queue"], capture_output=True,
                              text=True, timeout=120)
    finally:
        load.wait()
    assert set(seen) <= set(PHASES) and {"prefill", "decode"} <= set(seen), seen
    chunked = [t for t in seen["prefill"] if re.fullmatch(r"prefill [1-3]/4", t)]
    assert chunked, seen["prefill"]  # 200 - 0 cached tokens in chunks of 64: 4 chunks
    assert snap["cache"]["total"] == _kv_pool(server)
    note = json.loads(next(Path(trace_dir).glob("gpu-scheduler*.json")).read_text())  # the scheduler's own word
    assert not note["sampling"] and not snap["gpu"]["available"] and note["reason"] in snap["gpu"]["reason"]
    assert text.returncode == 0 and len(text.stdout.splitlines()) >= 8, text.stderr
    assert max(len(line) for line in text.stdout.splitlines()) <= 80


def test_bad_targets_are_one_line_and_exit_2(live_server, tmp_path):
    server, _ = live_server
    for args in (["top", str(tmp_path / "nothing"), "--once"], ["top", server.url, "--once", "--sort", "size"],
                 ["detail", server.url, "--forwards", "0"], ["detail", server.url, "--level", "kernel"],
                 ["top", "http://127.0.0.1:9/", "--once"]):
        done = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, (args, done.stderr)


def test_detail_records_layer_spans_only_inside_its_window(live_server, tiny_model):
    server, trace_dir = live_server
    forwards = 4
    # long enough to still be decoding once the detail CLI (a fresh interpreter) has asked, ~1.5 s in: 48
    # tokens a request were all done in 0.55 s on the CPU server, before the window could see a forward
    load = Load(server, 8, seed=2, output=400)
    try:
        time.sleep(1.0)
        done = subprocess.run([*CLI, "detail", server.url, "--forwards", str(forwards), "--json"],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        answer = json.loads(done.stdout)
    finally:
        load.wait()
    assert answer["forwards"] == forwards and answer["graph_phases"] == []  # CPU: every forward eager
    time.sleep(1.5)  # the exporters' next flush
    spans = load_trace_dir(trace_dir, use_cache=False).spans
    window = spans.filter((pl.col("name") == sc.DETAIL_WINDOW) & (pl.col(sc.DETAIL_ID) == answer["id"]))
    assert window.height == 1 and window[sc.DETAIL_SERVED][0] == forwards
    w0, w1 = window["start_ns"][0], window["end_ns"][0]
    layers = json.loads((Path(tiny_model) / "config.json").read_text())["num_hidden_layers"]
    layer_spans = spans.filter(pl.col("name") == sc.LAYER)
    model_fwd = spans.filter(pl.col("name") == sc.MODEL_FORWARD).select("span_id", "start_ns", "end_ns")
    parents = layer_spans.join(model_fwd, left_on="parent_id", right_on="span_id", suffix="_fwd")
    assert parents.height == layer_spans.height == forwards * layers  # every layer of each forward, no more
    assert parents.filter((pl.col("start_ns_fwd") >= w0) & (pl.col("end_ns_fwd") <= w1)).height == parents.height
    assert sorted(parents[sc.LAYER_INDEX].value_counts()["count"].to_list()) == [forwards] * layers
    inside = model_fwd.filter((pl.col("start_ns") >= w0) & (pl.col("end_ns") <= w1))
    assert inside.height == forwards  # the window is exactly the forwards that were detailed
    # the reports: per-layer times over those forwards; the requests in flight then out of the statistics
    detail = layer_detail.compute(spans)
    assert detail.forwards_with_layers == forwards
    assert detail.per_layer.group_by("layer").agg(pl.col("forwards").sum())["forwards"].to_list() == [forwards] * layers
    table = request_table(spans)
    during = table.filter((pl.col("received_ns") < w1) & (pl.col("finished_ns") > w0))["rid"].sort().to_list()
    flagged = table.filter(pl.col("profiler_control").is_not_null())["rid"].sort().to_list()
    assert during and flagged == during


def _pane(session: str) -> str:
    return subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout


def _wait_pane(session: str, ok, timeout: float = 60) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        text = _pane(session)
        if ok(text):
            return text
        time.sleep(0.3)
    raise AssertionError(f"the view never showed what was waited for; last screen:\n{_pane(session)}")


_ROW = re.compile(r"^\s*([0-9a-f]{6,}…?)\s+(queued|prefill \d+/[\d?]+|decode)\s", re.M)  # rids: uuid hex
_WINDOW = re.compile(r"last (\d+) s: (\d+) finished\s+TTFT p50 ([\d.]+) p99 ([\d.]+) ms\n"
                     r"\s+ITL p50 ([\d.]+) p99 ([\d.]+)")


def _rows(text: str) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in _ROW.finditer(text)]


_OUT = re.compile(r"^\s*([0-9a-f]{6,}…?)\s+(?:queued|prefill \d+/[\d?]+|decode)\s+\S+\s+\S+\s+(\d+)\s", re.M)


def _freshest(text: str) -> str:
    """The rid of the row with the fewest output tokens: the one furthest from finishing."""
    return min(((int(m.group(2)), m.group(1)) for m in _OUT.finditer(text)))[1]


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (scripts/setup_env.sh installs it)")
def test_top_in_a_terminal_under_load(live_server, repo_root):
    """As a person would: an 80x24 terminal, keys to filter by phase, sort and filter by rid, then the
    panels once the load is over, against the trace read afterwards."""
    server, trace_dir = live_server
    session = f"sgt-top-{uuid.uuid4().hex[:8]}"
    cmd = f"cd {repo_root} && {sys.executable} -m sglang_tracing top {server.url} --window 3600"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "80", "-y", "24", cmd], check=True)
    load = Load(server, 32, seed=3, output=256)
    try:
        first = _wait_pane(session, lambda t: any(p.startswith("prefill") for _, p in _rows(t))
                           and any(p == "decode" for _, p in _rows(t)))
        assert max(len(line) for line in first.splitlines()) <= 80
        for _ in range(3):  # phase filter: all -> queued -> prefill -> decode
            subprocess.run(["tmux", "send-keys", "-t", session, "p"], check=True)
        decode = _wait_pane(session, lambda t: "phase decode" in t and _rows(t))
        assert {p for _, p in _rows(decode)} == {"decode"}
        subprocess.run(["tmux", "send-keys", "-t", session, "p"], check=True)  # back to all phases
        subprocess.run(["tmux", "send-keys", "-t", session, "s"], check=True)  # arrival -> rid
        by_rid = _wait_pane(session, lambda t: "sort rid" in t and "phase all" in t and len(_rows(t)) > 1)
        rids = [r for r, _ in _rows(by_rid)]
        assert rids == sorted(rids)
        # a request still far from its end: one that finishes before the filter applies leaves no row to show
        prefix = _freshest(by_rid)[:2]
        subprocess.run(["tmux", "send-keys", "-t", session, "/"], check=True)
        _wait_pane(session, lambda t: "rid prefix" in t)  # the filter box is open
        subprocess.run(["tmux", "send-keys", "-t", session, prefix, "Enter"], check=True)
        filtered = _wait_pane(session, lambda t: f"rid {prefix} " in t)
        assert _rows(filtered) and all(r.startswith(prefix) for r, _ in _rows(filtered))
        outs = load.wait()
        assert len(outs) == 32
        time.sleep(1.5)  # the exporters' next flush, then the view's next redraw
        table = user_requests(request_table(load_trace_dir(trace_dir, use_cache=False).spans))
        final = _wait_pane(session, lambda t: (m := _WINDOW.search(t)) is not None
                           and int(m.group(2)) == table.height, timeout=30)
    finally:
        load.wait()
        subprocess.run(["tmux", "send-keys", "-t", session, "q"])
        time.sleep(0.5)
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    _, finished, ttft50, ttft99, itl50, itl99 = (float(x) for x in _WINDOW.search(final).groups())
    ttft = table["ttft_ns"].drop_nulls().to_numpy() / 1e6
    itl = np.concatenate([np.asarray(x, dtype=float) for x in table["itl_ns"].to_list() if x]) / 1e6
    assert finished == table.height == table["ttft_ns"].drop_nulls().len()
    assert abs(ttft50 - np.percentile(ttft, 50)) <= 0.051 and abs(ttft99 - np.percentile(ttft, 99)) <= 0.051
    assert abs(itl50 - np.percentile(itl, 50)) <= 0.0051 and abs(itl99 - np.percentile(itl, 99)) <= 0.0051
    pool = re.search(r"KV used (\d+)/(\d+)", final)
    assert pool and int(pool.group(2)) == _kv_pool(server)
