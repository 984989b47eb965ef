"""Issue 11, first contact: an analyzer-only install, serving without SGLang, the demo run twice,
readiness, and which weights a run served."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from sglang_tracing import semconv as sc

ROOT = Path(__file__).resolve().parent.parent
TRITON = ROOT / "traces" / "examples" / "h200-llama2-7b-triton"


def _blocked(module: str, *argv: str, **kwargs) -> subprocess.CompletedProcess:
    """``sglang-trace ARGV`` in a fresh interpreter where ``module`` cannot be imported."""
    code = (f"import sys; sys.modules[{module!r}] = None\n"
            "from sglang_tracing.app.cli import main\nsys.exit(main(sys.argv[1:]))")
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=300,
                          **kwargs)


def test_analyze_without_matplotlib_skips_pngs_with_one_note(tmp_path):
    done = _blocked("matplotlib", "analyze", str(TRITON), "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr.strip().splitlines() == [
        "sglang-trace: PNG plots skipped: matplotlib is not installed (pip install 'sglang-tracing[plots]')"]
    written = {p.name for p in tmp_path.iterdir()}
    assert {"story.txt", "radix.txt", "timeline.txt", "attention.txt", "story.html"} <= written
    assert not [n for n in written if n.endswith(".png")]


def _closure(requirements: list[str]) -> set[str]:
    """Every distribution a plain install of ``requirements`` pulls in, from the installed metadata."""
    seen: set[str] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        seen.add(name)
        todo += [Requirement(r) for r in metadata.requires(req.name) or []]  # PackageNotFoundError: not walked
    return seen


def test_base_install_needs_neither_torch_nor_sglang():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pulled = _closure(project["dependencies"])
    assert {"polars", "perfetto", "opentelemetry-sdk", "nvidia-ml-py"} <= pulled
    assert not pulled & {"torch", "sglang", "flashinfer-python", "matplotlib"}, pulled
    assert [canonicalize_name(Requirement(r).name) for r in project["optional-dependencies"]["sglang"]] == ["sglang"]


@pytest.mark.parametrize("argv", [
    ["launch", "--trace-dir", "{tmp}/t", "--", "--model-path", "m"],
    ["nsys", "--trace-dir", "{tmp}/t", "--", "--model-path", "m"],
    ["experiment", "baseline", "--cpu", "--num-requests", "1", "--out", "{tmp}/exp"],
    ["demo", "--trace-dir", "{tmp}/demo"],
])
def test_serving_without_sglang_says_so_in_one_line(tmp_path, argv):
    done = _blocked("sglang", *[a.format(tmp=tmp_path) for a in argv])
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "sglang-trace: error: SGLang is not installed in this environment: serving needs pip install "
        "'sglang-tracing[sglang]' (or sglang-tracing next to an SGLang install)"]


def test_demo_refuses_a_non_empty_trace_dir(tmp_path):
    (tmp_path / "spans-old.jsonl").write_text("{}\n")
    done = subprocess.run([sys.executable, "-m", "sglang_tracing", "demo", "--trace-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "is not empty" in done.stderr and os.listdir(tmp_path) == ["spans-old.jsonl"]


def test_experiments_use_dummy_weights_only_for_shipped_architectures(tmp_path):
    from sglang_tracing.app.cli import build_parser
    from sglang_tracing.app.experiments.common import Experiment

    def args_for(*extra):
        ns = build_parser().parse_args(["experiment", "baseline", "--out", str(tmp_path / "e"), *extra])
        return Experiment("baseline", ns).server_args()

    assert "dummy" in args_for("--model", "tiny-llama")
    assert "--load-format" not in args_for("--model", "/models/Llama-2-7b-hf")
    assert args_for("--model", "/models/Llama-2-7b-hf", "--dummy-weights")[-2:] == ["--load-format", "dummy"]
    assert "--load-format" not in args_for("--model", "/models/Llama-2-7b-hf", "--cpu")


def test_story_names_the_weights_served(tmp_path):
    from sglang_tracing.analyzer import api
    from sglang_tracing.runtime.manifest import weights_of

    # recorded before the manifest had "weights": read from SGLang's own load_format
    assert json.loads((TRITON / "manifest.json").read_text())["server_args"]["load_format"] == "dummy"
    api.analyze(str(TRITON), reports="story", out_dir=str(tmp_path), formats="text")
    assert "weights: dummy  [" in (tmp_path / "story.txt").read_text()
    assert weights_of({"server_args": {"load_format": "auto"}}) == "real"
    assert weights_of({"server_args": {}}) is None


def _root_rids(trace_dir: Path) -> list[str]:
    """rids of the request root spans, read with json from the raw span files."""
    rids = []
    for f in trace_dir.glob("spans-tokenizer-*.jsonl"):
        for line in f.read_text().splitlines():
            for rs in json.loads(line)["resourceSpans"]:
                for ss in rs["scopeSpans"]:
                    for span in ss["spans"]:
                        if span["name"] == sc.REQUEST:
                            attrs = {a["key"]: a["value"].get("stringValue") for a in span["attributes"]}
                            rids.append(attrs[sc.RID])
    return rids


@pytest.mark.server
def test_demo_twice_each_run_its_own_trace(tmp_path):
    """Two demo runs in one folder, with a fresh torch-extensions dir: each records into its own
    traces/demo/<timestamp>, its story counts its own requests and measures the ITL trend."""
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=str(tmp_path / "torch_extensions"))
    (tmp_path / "torch_extensions").mkdir()
    dirs = []
    for _ in range(2):
        done = subprocess.run([sys.executable, "-m", "sglang_tracing", "demo"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        dirs.append(Path(re.search(r"^trace dir: +(\S+)$", done.stdout, re.M).group(1)))
    assert dirs[0] != dirs[1] and all(d.parent == tmp_path / "traces" / "demo" for d in dirs)
    rids = _root_rids(dirs[1])
    workload = [r for r in rids if not r.startswith(sc.READINESS_RID_PREFIX)]
    assert len(workload) == 12 and len(rids) - len(workload) == 1  # plus the readiness probe
    # the story's typed result: every user request complete, and the ITL trend fitted over 31 decode gaps
    from sglang_tracing.analyzer.analyses import story
    from sglang_tracing.analyzer.loaders.trace_dir import load_trace_dir
    told = story.compute(load_trace_dir(dirs[1]), "slowest")
    user = told.requests.filter(told.requests["internal"].is_null())
    assert user.height == len(workload) and user["complete"].all()
    assert told.trend is not None and told.trend["points"] == 31  # 32 output tokens
    assert os.listdir(tmp_path / "torch_extensions") == []


@pytest.mark.server
def test_wait_ready_failure_is_one_line_naming_the_log(tmp_path):
    from sglang_tracing.app.serving import CPU_ARGS, Server, ServerError

    log = tmp_path / "server.log"
    server = Server(str(tmp_path / "no-such-model"), extra_args=CPU_ARGS, log_path=str(log))
    try:
        with pytest.raises(ServerError) as err:
            server.wait_ready(timeout=300)
    finally:
        server.stop()
    assert "\n" not in str(err.value) and str(log) in str(err.value) and log.stat().st_size > 0


@pytest.mark.parametrize("argv", [["--help"], ["requests", str(TRITON), "--out", "{tmp}"],
                                  ["diff", str(TRITON), str(TRITON)]], ids=["help", "requests", "diff"])
def test_analyzer_commands_run_without_serving_dependencies(tmp_path, argv):
    """h11 (the timed client's HTTP parser) comes with SGLang, not with the analyzer-only install."""
    done = _blocked("h11", *[a.format(tmp=tmp_path) for a in argv])
    assert done.returncode == 0, done.stderr[-2000:]
