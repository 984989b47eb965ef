"""Detail on demand: layer-level NVTX ranges and per-layer timing for the next N forwards of a running
server, then back to the configured level.

``sglang-trace detail`` (or the plugin's HTTP route) writes ``runtime.detail_control``'s request file;
each scheduler rank stats it at most every ``DETAIL_POLL_S`` from its scheduling pass (a monotonic-clock
compare on every other pass). A new request opens a window: the layer/op ranges are wrapped in (unless
the configured level has them already) and every decoder layer is timed, on the CPU clock and, on a GPU,
by CUDA events read once they completed, never synchronizing. Each timed layer is a ``LAYER`` span under
its model forward; the window is one ``DETAIL_WINDOW`` span. Forwards replayed as CUDA graphs run no
Python per layer: they count toward N but carry no layer spans (the window's span names those phases).
"""
from __future__ import annotations

import logging
import os
import time
from time import time_ns

from sglang_tracing import semconv as sc
from sglang_tracing.config import DETAIL_POLL_S
from sglang_tracing.patches import layer_ranges
from sglang_tracing.runtime import detail_control, nvtx_ranges
from sglang_tracing.runtime.ids import new_span_id

logger = logging.getLogger(__name__)


class _Window:
    __slots__ = ("request", "span_id", "start_ns", "served", "installed")

    def __init__(self, request: dict, installed: layer_ranges.Installed):
        self.request, self.installed = request, installed
        self.span_id, self.start_ns, self.served = new_span_id(), time_ns(), 0


class LayerTimer:
    """Times each decoder layer of the forward in progress; emits a span per layer under that forward."""

    __slots__ = ("cuda", "current", "_open", "_pending")

    def __init__(self):
        self.cuda = None  # torch.cuda on a GPU
        self.current: list = []  # (index, start_ns, end_ns, start event, end event) of the forward running
        self._open: dict[int, tuple] = {}
        self._pending: list[tuple[int, list]] = []  # (model forward span id, its layers) awaiting GPU events

    def begin(self, index: int) -> None:
        event = None
        if self.cuda is not None:
            event = self.cuda.Event(enable_timing=True)
            event.record()
        self._open[index] = (time_ns(), event)

    def end(self, index: int) -> None:
        start, start_event = self._open.pop(index, (0, None))
        end_event = None
        if start_event is not None:
            end_event = self.cuda.Event(enable_timing=True)
            end_event.record()
        self.current.append((index, start, time_ns(), start_event, end_event))

    def timed(self, forward, index: int):
        begin, end = self.begin, self.end

        def layer_timed(*args, **kwargs):
            begin(index)
            try:
                return forward(*args, **kwargs)
            finally:
                end(index)

        return layer_timed

    def forward_done(self, rec, forward_span_id: int) -> None:
        layers, self.current = self.current, []
        self._open.clear()
        if layers:
            self._pending.append((forward_span_id, layers))
        self.flush(rec)

    def flush(self, rec) -> None:
        """Emit the layers whose end events completed (all of them off a GPU); never blocks on the GPU."""
        while self._pending:
            parent, layers = self._pending[0]
            last = layers[-1][4]
            if last is not None and not last.query():
                return
            self._pending.pop(0)
            for index, start, end, ev0, ev1 in layers:
                attrs = {sc.LAYER_INDEX: index}
                if ev0 is not None:
                    attrs[sc.GPU_DURATION_NS] = int(ev0.elapsed_time(ev1) * 1e6)
                rec.emit(sc.LAYER, start, end, attrs, parent=parent)


class DetailControl:
    """A scheduler process's detail windows (part of its ``SchedulerState``)."""

    __slots__ = ("path", "next_check", "mtime", "seen", "window", "model", "configured_ranges", "graph_phases",
                 "timer")

    def __init__(self):
        self.path = ""
        self.next_check = 0.0
        self.mtime = None
        self.seen: set[str] = set()
        self.window: _Window | None = None
        self.model = None  # the served model, once loaded
        self.configured_ranges = False  # --trace-level layer: ranges stay on between windows
        self.graph_phases: list[str] = []
        self.timer = LayerTimer()

    def on_model_loaded(self, trace_dir: str, model, cuda, graph_phases: list[str], configured_ranges: bool) -> None:
        self.path = detail_control.control_path(trace_dir)
        self.model, self.timer.cuda = model, cuda
        self.graph_phases, self.configured_ranges = graph_phases, configured_ranges
        request = detail_control.read_request(self.path)  # one left by an earlier server in this dir
        if request is not None:
            self.seen.add(request["id"])
        try:
            self.mtime = os.stat(self.path).st_mtime_ns
        except OSError:
            self.mtime = None

    def poll(self, rec) -> None:
        """Between scheduling passes: open a window if a new request arrived (at most one stat a poll period)."""
        now = time.monotonic()
        if now < self.next_check or not self.path:
            return
        self.next_check = now + DETAIL_POLL_S
        try:
            mtime = os.stat(self.path).st_mtime_ns
        except OSError:
            return
        if mtime == self.mtime:
            return
        self.mtime = mtime
        request = detail_control.read_request(self.path)
        if request is None or request["id"] in self.seen or self.window is not None:
            return
        self.seen.add(request["id"])
        self._open(request)

    def _open(self, request: dict) -> None:
        installed = layer_ranges.Installed()
        try:
            if not self.configured_ranges:
                nvtx_ranges.enable()
                for module, name in layer_ranges.range_names(self.model):
                    attrs = nvtx_ranges.attributes(name)
                    installed.wrap(module, lambda forward, a=attrs, n=name: layer_ranges.ranged(forward, a, n))
            for index, module in layer_ranges.decoder_layers(self.model).items():
                installed.wrap(module, lambda forward, i=index: self.timer.timed(forward, i))
        except BaseException:
            installed.remove()  # the model runs as configured
            raise
        self.window = _Window(request, installed)
        logger.info("sglang-tracing: detail window %s: %s level for %d forwards", request["id"], request["level"],
                    request["forwards"])

    def after_forward(self, rec, model_forward_span_id: int) -> None:
        window = self.window
        if window is None:
            self.timer.flush(rec)
            return
        self.timer.forward_done(rec, model_forward_span_id)
        window.served += 1
        if window.served >= window.request["forwards"]:
            self.close(rec)

    def close(self, rec) -> None:
        window, self.window = self.window, None
        window.installed.remove()
        request = window.request
        rec.emit(sc.DETAIL_WINDOW, window.start_ns, time_ns(), {
            sc.DETAIL_ID: request["id"], sc.DETAIL_LEVEL: request["level"], sc.DETAIL_FORWARDS: request["forwards"],
            sc.DETAIL_SERVED: window.served, sc.DETAIL_GRAPH_PHASES: list(self.graph_phases)},
            span_id=window.span_id)
        self.timer.flush(rec)
