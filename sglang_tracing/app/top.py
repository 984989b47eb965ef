"""``sglang-trace top DIR|URL``: a live view of a running traced server.

It tails the span files the server's exporters already write (``span_tail``) and recomputes a
``Snapshot`` (``live_state``) at each refresh: the server does no work for the view. ``--once`` /
``--json`` print one snapshot (``--follow S``: one every S seconds) for scripts and ``watch``; otherwise
a textual App shows it, redrawn twice a second (textual is the ``live`` extra; only this view needs it).
"""
from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from sglang_tracing.analyzer.analyses.live_state import LiveState
from sglang_tracing.analyzer.analyses.live_types import PHASES, Snapshot
from sglang_tracing.analyzer.loaders.span_tail import TraceTail, is_trace_dir
from sglang_tracing.analyzer.renderers import live_text
from sglang_tracing.config import TOP_REFRESH_S, TOP_WINDOW_S
from sglang_tracing.errors import UsageError

STATUS_ROUTE = "/sglang_tracing/status"


def server_status(url: str, timeout: float = 10) -> dict:
    """What the plugin's status route of a traced server says (its trace dir, level, CUDA-graph phases)."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + STATUS_ROUTE, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as exc:
        raise UsageError(f"{url} answered {exc.code} on {STATUS_ROUTE}: not a server traced by "
                         "sglang-tracing (or tracing is off there)") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise UsageError(f"cannot reach {url}: {getattr(exc, 'reason', exc)}") from None


def resolve_trace_dir(target: str) -> str:
    """A trace dir from ``DIR`` or a traced server's ``URL`` (on this host: the view reads its files)."""
    if target.startswith(("http://", "https://")):
        trace_dir = server_status(target)["trace_dir"]
        if not Path(trace_dir).is_dir():
            raise UsageError(f"{target} traces into {trace_dir}, which is not on this host: run top there")
        return trace_dir
    if not is_trace_dir(target):
        raise UsageError(f"{target} is not a trace dir (no spans-*.jsonl or manifest.json) nor an http(s) URL")
    if not any(Path(target).glob("spans-*.jsonl")) and any(Path(target).glob("spans-*.jsonl.gz")):
        print(f"sglang-trace: note: {target} holds compressed span files only (a finished trace); top follows "
              "the live spans-*.jsonl files, so it shows no spans here (sglang-trace analyze reads them)",
              file=sys.stderr)
    return target


class LiveSource:
    """A trace dir followed live: each ``snapshot()`` first reads what was appended since the last."""

    def __init__(self, trace_dir: str, window_s: float = TOP_WINDOW_S):
        self.trace_dir = trace_dir
        self.tail = TraceTail(trace_dir)
        self.state = LiveState(window_s=window_s)

    def snapshot(self, now_ns: int | None = None) -> Snapshot:
        self.state.feed(self.tail.poll())
        self.state.skipped_bytes = self.tail.skipped_bytes
        return self.state.snapshot(now_ns or time.time_ns(), self.trace_dir)


def print_snapshots(source: LiveSource, as_json: bool, follow_s: float | None, sort: str, rid_prefix: str,
                    phase: str | None) -> int:
    """One snapshot, or one every ``follow_s`` until interrupted or the reader goes away (``| head``)."""
    try:
        while True:
            snap = source.snapshot()
            if as_json:
                print(live_text.render_json(snap), flush=True)
            else:
                print(live_text.render_text(snap, sort, rid_prefix, phase), flush=True)
            if follow_s is None:
                return 0
            time.sleep(follow_s)
    except KeyboardInterrupt:
        return 0 if follow_s is not None else 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 0


def run(args) -> int:
    if args.sort not in live_text.SORTS:
        raise UsageError(f"--sort takes one of {', '.join(live_text.SORTS)}, not {args.sort!r}")
    if args.phase is not None and args.phase not in PHASES:
        raise UsageError(f"--phase takes one of {', '.join(PHASES)}, not {args.phase!r}")
    if args.window <= 0:
        raise UsageError(f"--window takes a positive number of seconds, not {args.window}")
    if args.follow is not None and args.follow <= 0:
        raise UsageError(f"--follow takes a positive number of seconds, not {args.follow}")
    source = LiveSource(resolve_trace_dir(args.target), window_s=args.window)
    if args.once or args.json or args.follow is not None:
        return print_snapshots(source, args.json, args.follow, args.sort, args.rid or "", args.phase)
    try:
        from sglang_tracing.app.top_view import TopApp
    except ImportError as exc:
        raise UsageError(f"the live view needs textual ({exc.name} is missing): pip install "
                         "'sglang-tracing[live]', or use --once / --json") from None
    if not sys.stdout.isatty():
        raise UsageError("the live view needs a terminal; use --once or --json when piping")
    TopApp(source, refresh_s=TOP_REFRESH_S, sort=args.sort, rid_prefix=args.rid or "", phase=args.phase).run()
    return 0


def add_arguments(p) -> None:
    p.add_argument("target", metavar="DIR|URL", help="a live trace dir, or a traced server's URL on this host")
    p.add_argument("--once", action="store_true", help="print one snapshot as text and exit")
    p.add_argument("--json", action="store_true", help="print one snapshot as JSON and exit")
    p.add_argument("--follow", type=float, metavar="S", help="with --once/--json: print a snapshot every S seconds")
    p.add_argument("--window", type=float, default=TOP_WINDOW_S,
                   help=f"seconds of the sliding window of TTFT/ITL percentiles (default {TOP_WINDOW_S:.0f})")
    p.add_argument("--sort", default="arrival", help=f"row order: {', '.join(live_text.SORTS)}")
    p.add_argument("--rid", help="show only requests whose rid starts with this")
    p.add_argument("--phase", help=f"show only requests in this phase: {', '.join(PHASES)}")
