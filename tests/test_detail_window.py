"""A detail window on a torch module tree with a Llama's module names, without a server: the request file
opens it between passes, N forwards get layer spans, then the model's own forwards come back. The
CPU server test (test_live.py) does the same through SGLang."""
from __future__ import annotations

import torch

from sglang_tracing import semconv as sc
from sglang_tracing.patches.detail import DetailControl
from sglang_tracing.runtime import detail_control

from span_log import SpanLog


class _Layer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.input_layernorm = torch.nn.Identity()

    def forward(self, x):
        return self.input_layernorm(x) + 1


class _Model(torch.nn.Module):
    def __init__(self, layers: int):
        super().__init__()
        self.layers = torch.nn.ModuleList(_Layer() for _ in range(layers))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class _Events:
    """torch.cuda's Event API as the timer uses it, completing when the test says so."""
    done = False

    class Event:
        def __init__(self, enable_timing: bool):
            self.t = 0.0

        def record(self):
            self.t = float(len(_Events.recorded))
            _Events.recorded.append(self)

        def query(self) -> bool:
            return _Events.done

        def elapsed_time(self, other) -> float:
            return other.t - self.t  # ms

    recorded: list = []


def _control(tmp_path, model, cuda=None) -> DetailControl:
    control = DetailControl()
    control.on_model_loaded(str(tmp_path), model, cuda, [], configured_ranges=False)
    return control


def test_window_covers_n_forwards_then_the_model_runs_as_before(tmp_path):
    model, log = _Model(3), SpanLog()
    control = _control(tmp_path, model)
    request = detail_control.write_request(str(tmp_path), "layer", 2)
    control.poll(log)
    assert control.window is not None and "forward" in model.layers[0].__dict__
    for sid in (11, 12, 13):
        assert model(torch.zeros(1)).item() == 3  # results untouched
        control.after_forward(log, sid)
    layers = log.named(sc.LAYER)
    assert [(s.parent, s.attrs[sc.LAYER_INDEX]) for s in layers] == [(p, i) for p in (11, 12) for i in range(3)]
    window = log.one(sc.DETAIL_WINDOW)
    assert window.attrs[sc.DETAIL_ID] == request["id"] and window.attrs[sc.DETAIL_SERVED] == 2
    assert all("forward" not in m.__dict__ for m in model.modules())  # wrappers gone: the class's forward again
    control.next_check = 0
    control.poll(log)  # the same request again: acted on once
    assert control.window is None


def test_gpu_layer_times_wait_for_their_events(tmp_path):
    model, log = _Model(2), SpanLog()
    control = _control(tmp_path, model, cuda=_Events)
    detail_control.write_request(str(tmp_path), "layer", 1)
    control.poll(log)
    model(torch.zeros(1))
    control.after_forward(log, 7)
    assert log.named(sc.LAYER) == []  # end events not complete: nothing read, nothing blocked
    _Events.done = True
    control.timer.flush(log)
    assert [s.attrs[sc.GPU_DURATION_NS] for s in log.named(sc.LAYER)] == [1_000_000, 1_000_000]


def test_a_request_left_by_an_earlier_server_is_ignored(tmp_path):
    detail_control.write_request(str(tmp_path), "layer", 5)
    model, log = _Model(1), SpanLog()
    control = _control(tmp_path, model)
    control.poll(log)
    assert control.window is None


def test_detail_on_a_trace_dir_writes_the_request_and_names_the_graph_phases(tmp_path):
    import json
    import subprocess
    import sys

    args = {"device": "cuda", "disable_cuda_graph": False}
    (tmp_path / "manifest.json").write_text(json.dumps({"server_args": args}))
    done = subprocess.run([sys.executable, "-m", "sglang_tracing", "detail", str(tmp_path), "--forwards", "7",
                           "--json"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["graph_phases"] == ["decode"]  # graphs on, and an SGLang without prefill graphs
    assert detail_control.read_request(detail_control.control_path(str(tmp_path)))["id"] == answer["id"]
