"""The committed showcase reports (traces/examples/showcase) are what scripts/regenerate_examples.py
produces from the committed recordings now: an analyzer change that alters one fails here until the
command is rerun and its output committed."""
from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "traces" / "examples"
SHOWCASE = EXAMPLES / "showcase"
# matplotlib's PNG bytes (and so the HTML that embeds them) change with its version and fonts
EMBEDDED_PNG = re.compile(r"data:image/png;base64,[A-Za-z0-9+/=]+")
FIX = "rerun `python scripts/regenerate_examples.py` and commit traces/examples/showcase"


def _script():
    spec = importlib.util.spec_from_file_location("regenerate_examples", ROOT / "scripts" / "regenerate_examples.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _examples_tree() -> dict[str, tuple[int, int]]:
    """Every path under traces/examples with its size and mtime."""
    return {str(p.relative_to(EXAMPLES)): (p.stat().st_size, p.stat().st_mtime_ns) for p in EXAMPLES.rglob("*")}


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory):
    out = tmp_path_factory.mktemp("showcase")
    before = _examples_tree()
    _script().regenerate(out)
    after = _examples_tree()
    return out, {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}


def test_every_report_kind_has_a_showcase():
    kinds = {case.kind for case in _script().SHOWCASES}
    assert kinds == {"story", "radix", "timeline", "attention", "backends", "tp_scaling", "diff", "requests"}
    committed = {p.name for p in SHOWCASE.iterdir()}
    for kind in kinds - {"requests"}:
        assert {f"{kind}.txt", f"{kind}.md", f"{kind}.html"} <= committed, kind
    assert "requests.csv" in committed


def test_committed_showcases_match_the_command(regenerated):
    regenerated, _ = regenerated
    produced = {p.name for p in regenerated.iterdir()}
    committed = {p.name for p in SHOWCASE.iterdir()}
    assert produced == committed, f"showcase files differ: {sorted(produced ^ committed)}; {FIX}"
    stale = []
    for name in sorted(committed):
        if name.endswith(".png"):
            assert (regenerated / name).stat().st_size > 0  # drawn; its bytes are matplotlib's business
            continue
        new, old = (regenerated / name).read_text(), (SHOWCASE / name).read_text()
        if name.endswith(".html"):
            new, old = (EMBEDDED_PNG.sub("data:image/png;base64,...", t) for t in (new, old))
        if new != old:
            stale.append(name)
    assert not stale, f"stale showcases: {', '.join(stale)}; {FIX}"


def test_regenerating_writes_nothing_into_the_recordings(regenerated):
    # the fixture ran the whole command: no cache dir, no report, nothing changed beside the recordings
    _, touched = regenerated
    assert touched == set()
