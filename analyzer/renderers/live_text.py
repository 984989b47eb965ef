"""A live snapshot as plain text (``sglang-trace top --once``; the terminal view's panels) or JSON.

Every line fits 80 columns. Rows are chosen and ordered by ``select_rows``, which the terminal view's
keys drive too.
"""
from __future__ import annotations

import json
import time

from sglang_tracing.analyzer.analyses.live_types import PHASES, RequestRow, Snapshot

# sort key name -> (row value, descending)
SORTS = {
    "arrival": (lambda r: r.arrived_ns, False),
    "rid": (lambda r: r.rid, False),
    "phase": (lambda r: (PHASES.index(r.phase), r.chunk or 0), False),
    "queue": (lambda r: r.queue_ms, True),
    "ttft": (lambda r: r.ttft_ms if r.ttft_ms is not None else -1.0, True),
    "itl": (lambda r: r.itl_ms if r.itl_ms is not None else -1.0, True),
    "output": (lambda r: r.output_tokens, True),
    "prompt": (lambda r: r.prompt_tokens or 0, True),
}
COLUMNS = (("RID", 12), ("PHASE", 12), ("PROMPT", 6), ("CACHED", 6), ("OUT", 5), ("QUEUE ms", 8),
           ("TTFT ms", 8), ("ITL ms", 7), ("SHARE", 5))  # 77 columns with the spaces between


def select_rows(rows: list[RequestRow], sort: str = "arrival", rid_prefix: str = "",
                phase: str | None = None) -> list[RequestRow]:
    """The rows whose rid starts with ``rid_prefix`` and, if given, in ``phase``, ordered by ``sort``."""
    key, descending = SORTS[sort]
    kept = [r for r in rows if r.rid.startswith(rid_prefix) and (phase is None or r.phase == phase)]
    return sorted(kept, key=key, reverse=descending)


def _num(v, fmt: str = "{:.1f}", none: str = "-") -> str:
    return none if v is None else fmt.format(v)


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.0f}%"


def row_cells(r: RequestRow) -> tuple[str, ...]:
    width = COLUMNS[0][1]
    rid = r.rid if len(r.rid) <= width else r.rid[:width - 1] + "…"
    return (rid, r.phase_text, _num(r.prompt_tokens, "{}", "?"), _num(r.cached_tokens, "{}", "?"),
            str(r.output_tokens), _num(r.queue_ms), _num(r.ttft_ms), _num(r.itl_ms), _pct(r.batch_share))


def panel_lines(s: Snapshot) -> list[str]:
    """The batch, cache, GPU and window panels, as lines of at most 80 columns."""
    b, c, g, w = s.batch, s.cache, s.gpu, s.window
    if b.mode is None:
        batch = ["batch  no forward seen yet"]
    else:
        idle = _pct(b.gpu_idle_share) if b.gpu_idle_share is not None else "n/a"
        batch = [f"batch  {b.mode} x{b.size}, {b.tokens} tok  last GPU {_num(b.gpu_ms, '{:.2f}', 'n/a')} ms  "
                 f"GPU idle {idle}  overlap {'on' if b.overlap else 'off'}",
                 f"       out {b.output_tok_per_s:.0f} tok/s  prefill {b.prefill_tok_per_s:.0f} tok/s  "
                 f"({b.forwards} forwards in {b.over_s:.0f} s)"]
    if c.total is None and c.evictable is None:
        cache = ["cache  no cache span seen yet"]
    else:
        cache = [f"cache  KV used {_num(c.used, '{}', '?')}/{_num(c.total, '{}', '?')}  evictable "
                 f"{_num(c.evictable, '{}', '?')}  protected {_num(c.protected, '{}', '?')}",
                 f"       hit {_pct(c.hit_rate)} of {c.lookups} lookups ({c.over_s:.0f} s)  evictions "
                 f"{c.evictions} ({c.evicted_tokens} tok), {c.evictions_total} since attach"]
    if not g.available:
        gpu = f"gpu    {g.reason}"
    else:
        mem = f"{g.mem_used / 2**30:.1f}/{g.mem_total / 2**30:.0f} GiB" if g.mem_used and g.mem_total else "?"
        gpu = (f"gpu    SM {_num(g.sm_util, '{:.0f}')}%  tensor {_num(g.tensor_util, '{:.0f}')}%  DRAM "
               f"{_num(g.dram_util, '{:.0f}')}%  {_num(g.power_w, '{:.0f}')} W  mem {mem}")
    window = [f"last {w.window_s:.0f} s: {w.finished} finished  TTFT p50 {_num(w.ttft_p50_ms)} p99 "
              f"{_num(w.ttft_p99_ms)} ms",
              f"       ITL p50 {_num(w.itl_p50_ms, '{:.2f}')} p99 {_num(w.itl_p99_ms, '{:.2f}')} ms"]
    detail = []
    if s.detail.last:
        last = s.detail.last
        detail = [f"detail {s.detail.windows} window(s); the last: {last['level']} level over {last['forwards']} "
                  f"forwards, ended {(s.t_ns - last['end_ns']) / 1e9:.0f} s ago"]
    return [*batch, *cache, gpu, *window, *detail]


def header_line(s: Snapshot) -> str:
    age = (s.t_ns - s.newest_record_ns) / 1e9 if s.newest_record_ns else None
    clock = time.strftime("%H:%M:%S", time.localtime(s.t_ns / 1e9))
    fresh = f"newest record {age:.1f} s ago" if age is not None else "no record yet"
    return f"sglang-trace top  {clock}  {len(s.requests)} in flight  {fresh}"


def table_lines(rows: list[RequestRow]) -> list[str]:
    def line(cells):
        return " ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, (_, w)) in
                        enumerate(zip(cells, COLUMNS)))

    return [line([name for name, _ in COLUMNS]), *(line(row_cells(r)) for r in rows)]


def render_text(s: Snapshot, sort: str = "arrival", rid_prefix: str = "", phase: str | None = None) -> str:
    notes = []
    if s.skipped_bytes:
        notes.append(f"note: attached late: the first {s.skipped_bytes / 2**20:.0f} MiB of span files left unread")
    if s.stale_requests:
        notes.append(f"note: {s.stale_requests} request(s) dropped: no record for 5 minutes (server restarted?)")
    rows = select_rows(s.requests, sort, rid_prefix, phase)
    return "\n".join([header_line(s), *panel_lines(s), *notes, *table_lines(rows)]) + "\n"


def render_json(s: Snapshot) -> str:
    return json.dumps(s.to_dict(), separators=(",", ":"))
