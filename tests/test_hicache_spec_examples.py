"""The committed H200 example of the hierarchical cache and speculative decoding
(``traces/examples/h200-features``, made by ``benchmarks/gpu_features.py``): every figure its README
states is the analyzer's, and each is recomputed here from the raw spans (``check_*_figures``)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from test_hicache_spec_analysis import check_hicache_figures, check_spec_figures

EXAMPLE = Path(__file__).resolve().parent.parent / "traces" / "examples" / "h200-features"
pytestmark = pytest.mark.skipif(not (EXAMPLE / "results.json").exists(),
                                reason="the H200 run of benchmarks/gpu_features.py is not committed yet")


def test_hicache_example_moves_prefixes_between_tiers_and_its_figures_match_the_raw_spans():
    hc = check_hicache_figures(EXAMPLE / "hicache-traced")
    t = hc.requests
    assert t["host_matched_tokens"].sum() > 0 and t["load_back_tokens"].drop_nulls().len() > 0  # the workload overflowed
    assert {"backup device->host", "eviction from device", "load-back done host->device"} <= set(hc.totals["op"])


def test_spec_example_verifies_drafts_and_its_figures_match_the_raw_spans():
    spec = check_spec_figures(EXAMPLE / "spec-traced")
    assert spec.steps.height > 0 and spec.total("proposed") > 0
    results = json.loads((EXAMPLE / "results.json").read_text())
    assert {"hicache", "spec"} <= set(results)
