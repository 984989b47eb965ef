"""Layer/op ranges as ``--trace-level layer`` installs them, on a torch module tree with a Llama's module
names: what an NVTX tool attached to the process would receive (a stand-in domain records the pushes and
pops the nvtx library would pass on), what Kineto receives while a torch profiler records, and that an
exception or an uninstall leaves no range open."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from sglang_tracing.patches import layer_ranges
from sglang_tracing.runtime import nvtx_ranges

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from layer_cost import DecoderStack  # noqa: E402  (the benchmark's module tree with a Llama's names)


class _Leaf(torch.nn.Module):
    def forward(self, x):
        return x + 1


class _Raising(torch.nn.Module):
    def forward(self, x):
        raise KeyError("boom")


LAYERS = 2


def _model() -> DecoderStack:
    return DecoderStack(LAYERS, leaf=_Leaf)


# one forward's ranges in call order, written out from benchmarks/layer_cost.py's tree
EXPECTED = ["embedding"] + [name for i in range(LAYERS) for name in (
    f"layer.{i}", "rms_norm", "qkv_proj", "attention", "o_proj", "rms_norm", "gate_up_proj", "down_proj")] + ["rms_norm"]
LEAF_CALLS = 1 + 7 * LAYERS + 1  # each _Leaf adds 1


class _ToolDomain:
    """An nvtx domain as the library hands it out while a tool (nsys) is attached: named attributes,
    pushes and pops, here recorded instead of passed to the tool."""

    def __init__(self):
        self.pushed: list[str] = []
        self.depth = 0

    def get_event_attributes(self, message=None):
        return ("attributes", message)

    def push_range(self, attributes=None):
        self.pushed.append(attributes[1])
        self.depth += 1

    def pop_range(self):
        self.depth -= 1


@pytest.fixture
def tool(monkeypatch):
    domain = _ToolDomain()
    monkeypatch.setattr(nvtx_ranges, "_domain", domain)
    monkeypatch.setattr(nvtx_ranges, "_enabled", True)
    return domain


def test_an_attached_tool_gets_each_range_once_in_call_order(tool):
    assert nvtx_ranges.tool_attached()
    model = _model()
    installed = layer_ranges.install(model)
    assert len(installed) == len(EXPECTED)
    assert model(torch.zeros(1)).item() == LEAF_CALLS  # the forward's result passes through
    assert tool.pushed == EXPECTED and tool.depth == 0
    installed.remove()
    model(torch.zeros(1))
    assert tool.pushed == EXPECTED  # uninstalled: nothing more pushed
    assert all("forward" not in vars(m) for m in model.modules())


def test_an_exception_passes_through_and_closes_its_ranges(tool):
    model = _model()
    model.layers[1].mlp.down_proj = _Raising()
    layer_ranges.install(model)
    with pytest.raises(KeyError, match="boom"):
        model(torch.zeros(1))
    assert tool.depth == 0
    assert tool.pushed == EXPECTED[:len(EXPECTED) - 1]  # everything up to the failing down_proj, which was pushed


def test_while_a_profiler_records_ranges_are_nvtx_and_kineto_annotations(tool):
    model = _model()
    layer_ranges.install(model)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        assert nvtx_ranges.follow_torch_profiler()
        model(torch.zeros(1))
    assert not nvtx_ranges.follow_torch_profiler()
    annotated = [e.name for e in prof.events() if e.name in set(EXPECTED)]
    assert sorted(annotated) == sorted(EXPECTED) and tool.pushed == EXPECTED and tool.depth == 0
    model(torch.zeros(1))  # after the profiler: NVTX only
    assert tool.pushed == EXPECTED * 2


class _NoToolDomain(_ToolDomain):
    """The nvtx library's domain without a tool: no attributes (its pushes would go nowhere)."""

    def get_event_attributes(self, message=None):
        return None


def test_without_a_tool_ranges_call_no_domain_until_a_profiler_records(monkeypatch):
    monkeypatch.setattr(nvtx_ranges, "_domain", None)  # both restored after the test (enable() sets them)
    monkeypatch.setattr(nvtx_ranges, "_enabled", False)
    assert nvtx_ranges.enable() and not nvtx_ranges.tool_attached()  # the real nvtx library; no nsys here
    domain = _NoToolDomain()
    monkeypatch.setattr(nvtx_ranges, "_domain", domain)
    monkeypatch.setattr(nvtx_ranges, "_enabled", True)
    assert not nvtx_ranges.tool_attached()
    model = _model()
    assert len(layer_ranges.install(model)) == len(EXPECTED)
    assert model(torch.zeros(1)).item() == LEAF_CALLS
    assert domain.pushed == [] and domain.depth == 0
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        nvtx_ranges.follow_torch_profiler()
        model(torch.zeros(1))
    nvtx_ranges.follow_torch_profiler()
    assert sorted(e.name for e in prof.events() if e.name in set(EXPECTED)) == sorted(EXPECTED)
    assert domain.pushed == []
