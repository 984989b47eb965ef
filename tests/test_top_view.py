"""The live view's key bindings, driven by textual's pilot on a snapshot source of our own (no server)."""
from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("textual")

from textual.widgets import DataTable  # noqa: E402

from sglang_tracing.analyzer.analyses.live_state import LiveState  # noqa: E402
from sglang_tracing.analyzer.analyses.live_types import RequestRow  # noqa: E402
from sglang_tracing.app.top_view import TopApp  # noqa: E402


def _row(rid: str, phase: str, arrived: int, queue_ms: float) -> RequestRow:
    return RequestRow(rid=rid, phase=phase, chunk=1 if phase == "prefill" else None, chunks=4 if phase == "prefill"
                      else None, prompt_tokens=200, cached_tokens=0, output_tokens=3 if phase == "decode" else 0,
                      arrived_ns=arrived, queue_ms=queue_ms, ttft_ms=None, itl_ms=None, batch_share=None)


ROWS = [_row("c-3", "decode", 1, 5.0), _row("a-1", "queued", 2, 50.0), _row("b-2", "prefill", 3, 20.0),
        _row("a-4", "decode", 4, 1.0)]


class Source:
    """Snapshots of an empty state with our rows in flight; counts how often the view asked."""

    def __init__(self):
        self.calls = 0

    def snapshot(self):
        self.calls += 1
        snap = LiveState().snapshot(10**18)
        return type(snap)(**{**snap.__dict__, "requests": list(ROWS)})


def _shown(app) -> list[str]:
    table = app.query_one(DataTable)
    return [str(table.get_row_at(i)[0]) for i in range(table.row_count)]


def test_keys_sort_filter_freeze_and_quit():
    async def drive():
        source = Source()
        app = TopApp(source, refresh_s=0.05)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause()
            assert _shown(app) == ["c-3", "a-1", "b-2", "a-4"]  # by arrival
            await pilot.press("s")  # rid
            assert _shown(app) == ["a-1", "a-4", "b-2", "c-3"]
            await pilot.press("s", "s")  # phase, then queue (longest first)
            assert app.sort == "queue" and _shown(app) == ["a-1", "b-2", "c-3", "a-4"]
            await pilot.press("p", "p", "p")  # all -> queued -> prefill -> decode
            assert app.phase == "decode" and _shown(app) == ["c-3", "a-4"]
            await pilot.press("p")
            await pilot.press("slash", "a", "enter")
            assert app.rid_prefix == "a" and _shown(app) == ["a-1", "a-4"]
            await pilot.press("space")
            frozen_at = source.calls
            await pilot.pause(0.3)
            assert app.frozen and source.calls > frozen_at  # still reading, not redrawing
            await pilot.press("q")
        assert app.return_code == 0

    asyncio.run(drive())
