"""The textual App of ``sglang-trace top``: panels and a request table, redrawn from a timer.

Keys: s sort (cycles), / filter by rid prefix, p phase filter (cycles), space freeze, q quit.
Only this module imports textual (the ``live`` extra).
"""
from __future__ import annotations

from textual.app import App, ComposeResult
from textual.reactive import reactive
from textual.widgets import DataTable, Footer, Input, Static

from sglang_tracing.analyzer.analyses.live_types import PHASES, Snapshot
from sglang_tracing.analyzer.renderers import live_text

SORT_ORDER = tuple(live_text.SORTS)
PHASE_ORDER = (None, *PHASES)


class TopApp(App):
    CSS = """
    Screen { layout: vertical; }
    #panels { height: auto; }
    #status { height: 1; background: $boost; }
    DataTable { height: 1fr; }
    Input { display: none; height: 3; }
    Input.shown { display: block; }
    """
    BINDINGS = [("s", "next_sort", "Sort"), ("slash", "filter", "Filter rid"), ("p", "next_phase", "Phase"),
                ("space", "freeze", "Freeze"), ("q", "quit", "Quit")]

    sort = reactive("arrival")
    rid_prefix = reactive("")
    phase: reactive[str | None] = reactive(None)
    frozen = reactive(False)

    def __init__(self, source, refresh_s: float, sort: str = "arrival", rid_prefix: str = "",
                 phase: str | None = None):
        super().__init__()
        self.source, self.refresh_s = source, refresh_s
        self.snapshot: Snapshot | None = None
        self.set_reactive(TopApp.sort, sort)
        self.set_reactive(TopApp.rid_prefix, rid_prefix)
        self.set_reactive(TopApp.phase, phase)

    def compose(self) -> ComposeResult:
        yield Static(id="panels")
        yield Static(id="status")
        yield DataTable(id="requests", cursor_type="row", zebra_stripes=True)
        yield Input(placeholder="rid prefix (enter to apply, empty for all)", id="filter")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for name, width in live_text.COLUMNS:
            table.add_column(name, width=width, key=name)
        self.tick()
        self.set_interval(self.refresh_s, self.tick)

    def tick(self) -> None:
        """Read what the server wrote since the last tick; redraw unless frozen."""
        snap = self.source.snapshot()
        if not self.frozen:
            self.snapshot = snap
            self.redraw()

    def redraw(self) -> None:
        snap = self.snapshot
        if snap is None:
            return
        self.query_one("#panels", Static).update("\n".join([live_text.header_line(snap),
                                                            *live_text.panel_lines(snap)]))
        rows = live_text.select_rows(snap.requests, self.sort, self.rid_prefix, self.phase)
        table = self.query_one(DataTable)
        table.clear()
        for row in rows:
            table.add_row(*live_text.row_cells(row), key=row.rid)
        shown = f"{len(rows)} of {len(snap.requests)} requests"
        self.query_one("#status", Static).update(
            f"sort {self.sort}  rid {self.rid_prefix or '*'}  phase {self.phase or 'all'}  {shown}"
            + ("  FROZEN" if self.frozen else ""))

    def watch_sort(self) -> None:
        self.redraw()

    def watch_rid_prefix(self) -> None:
        self.redraw()

    def watch_phase(self) -> None:
        self.redraw()

    def watch_frozen(self) -> None:
        self.redraw()

    def action_next_sort(self) -> None:
        self.sort = SORT_ORDER[(SORT_ORDER.index(self.sort) + 1) % len(SORT_ORDER)]

    def action_next_phase(self) -> None:
        self.phase = PHASE_ORDER[(PHASE_ORDER.index(self.phase) + 1) % len(PHASE_ORDER)]

    def action_freeze(self) -> None:
        self.frozen = not self.frozen

    def action_filter(self) -> None:
        box = self.query_one(Input)
        box.value = self.rid_prefix
        box.add_class("shown")
        box.focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.rid_prefix = event.value.strip()
        event.input.remove_class("shown")
        self.query_one(DataTable).focus()
