"""The package reads floor -> patches -> plugin and floor -> analyzer -> app: every module imports only
its own layer and the layers below it. Inside the analyzer, the same between its sub-layers (see
``ANALYZER_LAYERS``). Found by parsing each module's imports with ``ast`` (lazy imports inside
functions and ``importlib.import_module("...")`` included), so a new upward import fails here; and
no module imports itself back through others (no cycle)."""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

# the importable roots; pyproject's package-dir maps the last two from the repo's top-level folders
ROOTS = ("sglang_tracing", "sglang_tracing.patches", "sglang_tracing.analyzer")

# which layers each layer may import
MAY_IMPORT = {
    "floor": {"floor"},  # config, semconv, runtime, models, launch_server: what the others build on
    "patches": {"floor", "patches"},  # run inside SGLang's processes
    "plugin": {"floor", "patches"},  # SGLang's entry point: it activates the patches, nothing imports it
    "analyzer": {"floor", "analyzer"},  # loaders -> analyses -> renderers, offline
    "app": {"floor", "analyzer", "app"},  # what a user runs; ``python -m sglang_tracing`` is its door
}
RECORDING = ("floor", "patches", "plugin")  # what SGLang's processes import
NOT_WHILE_RECORDING = ("polars", "perfetto", "matplotlib", "textual")

# the analyzer's sub-layers, bottom to top: each may import those before it. The model (frames and their
# schemas, plain data) sits below the loaders that fill it: data flows loaders -> model -> analyses, while
# imports point down to the model's schemas.
ANALYZER_LAYERS = ("base", "model", "loaders", "analyses", "reports", "renderers", "entry")
_ANALYZER_MODULES = {  # modules of the analyzer's top folder; a folder's modules take the folder's name
    "progress": "base", "model": "model", "report": "analyses",
    "api": "entry", "experiment_reports": "entry",
}
DRAWS = ("matplotlib",)  # only renderers draw


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def layer(name: str) -> str:
    """The layer of a module, or of a name imported from one (``sglang_tracing.app.cli.main``)."""
    if _within(name, "sglang_tracing.plugin"):
        return "plugin"
    if _within(name, "sglang_tracing.app") or _within(name, "sglang_tracing.__main__"):
        return "app"
    for part in ("patches", "analyzer"):
        if _within(name, f"sglang_tracing.{part}"):
            return part
    return "floor"


def modules() -> dict[str, Path]:
    """Every module of the package, found on disk under where the import system finds each root."""
    found = {}
    for root in ROOTS:
        for folder in importlib.import_module(root).__path__:
            for path in Path(folder).rglob("*.py"):
                parts = path.relative_to(folder).with_suffix("").parts
                found[".".join([root, *(p for p in parts if p != "__init__")])] = path
    return found


def imported_names(module: str, source: str, is_package: bool = False) -> list[str]:
    """Absolute names ``module`` imports: ``from a.b import c`` gives ``a.b.c`` (c may be a module)."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module if is_package else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = ".".join(p for p in (package, base) if p)
            names += [f"{base}.{alias.name}" for alias in node.names]
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None))
              == "import_module" and node.args and isinstance(node.args[0], ast.Constant)):
            names.append(str(node.args[0].value))
    return names


def analyzer_layer(name: str) -> str | None:
    """The analyzer sub-layer of a module or of a name imported from one; None outside the analyzer
    (and for the package itself)."""
    prefix = "sglang_tracing.analyzer."
    if not name.startswith(prefix):
        return None
    first = name[len(prefix):].split(".")[0]
    return _ANALYZER_MODULES.get(first, first if first in ANALYZER_LAYERS else None)


def violations(module: str, source: str, is_package: bool = False) -> list[str]:
    mine, sub = layer(module), analyzer_layer(module)
    found = []
    for name in imported_names(module, source, is_package):
        if _within(name, "sglang_tracing") and layer(name) not in MAY_IMPORT[mine] | {mine}:
            found.append(f"{module} ({mine}) imports {name} ({layer(name)})")
        theirs = analyzer_layer(name)
        if sub and theirs and ANALYZER_LAYERS.index(theirs) > ANALYZER_LAYERS.index(sub):
            found.append(f"{module} ({sub}) imports {name} ({theirs}, above it)")
        if mine in RECORDING and name.split(".")[0] in NOT_WHILE_RECORDING:
            found.append(f"{module} ({mine}, imported by SGLang's processes) imports {name}")
        if sub and ANALYZER_LAYERS.index(sub) < ANALYZER_LAYERS.index("renderers") and name.split(".")[0] in DRAWS:
            found.append(f"{module} ({sub}) draws: imports {name}")
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (``from a import b`` is module a.b where there is one, else a)."""
    found = modules()
    graph = {}
    for module, path in found.items():
        names = imported_names(module, path.read_text(), path.name == "__init__.py")
        graph[module] = {n if n in found else n.rpartition(".")[0] for n in names
                         if (n if n in found else n.rpartition(".")[0]) in found} - {module}
    return graph


def test_each_layer_imports_only_itself_and_the_layers_below():
    found = modules()
    assert {layer(m) for m in found} == set(MAY_IMPORT)  # the scan reached every layer
    analyzer = {m for m in found if _within(m, "sglang_tracing.analyzer") and m != "sglang_tracing.analyzer"}
    assert {analyzer_layer(m) for m in analyzer} == set(ANALYZER_LAYERS) - {"reports"}
    assert [v for m, path in sorted(found.items())
            for v in violations(m, path.read_text(), path.name == "__init__.py")] == []


@pytest.mark.parametrize("module, source", [
    ("sglang_tracing.analyzer.api", "from sglang_tracing.app import cli"),
    ("sglang_tracing.analyzer.loaders.nsys", "def f():\n    from sglang_tracing.app.profilers import find_nsys"),
    ("sglang_tracing.analyzer.renderers.text", "from ...app import cli"),
    ("sglang_tracing.analyzer.renderers", "from ...app.cli import main"),
    ("sglang_tracing.config", "import sglang_tracing.analyzer.api"),
    ("sglang_tracing.runtime.recorder", "from sglang_tracing.patches import _targets"),
    ("sglang_tracing.runtime.recorder", "import polars as pl"),
    ("sglang_tracing.patches.scheduler", "from sglang_tracing import plugin"),
    ("sglang_tracing.patches.scheduler", "from sglang_tracing.analyzer.model import TraceModel"),
    ("sglang_tracing.app.cli", "from sglang_tracing.patches import scheduler"),
    ("sglang_tracing.models.builder", "importlib.import_module('sglang_tracing.app.demo')"),
    ("sglang_tracing.analyzer.model", "def f():\n    from sglang_tracing.analyzer.loaders.trace_dir import x"),
    ("sglang_tracing.analyzer.loaders.nsys", "from sglang_tracing.analyzer.analyses import kernels"),
    ("sglang_tracing.analyzer.loaders.kineto", "from ..analyses.kernels import merge_intervals"),
    ("sglang_tracing.analyzer.analyses.kernels", "def f():\n    from sglang_tracing.analyzer.renderers import text"),
    ("sglang_tracing.analyzer.analyses.requests", "import sglang_tracing.analyzer.api"),
    ("sglang_tracing.analyzer.renderers.text", "from sglang_tracing.analyzer import experiment_reports"),
    ("sglang_tracing.analyzer.progress", "from sglang_tracing.analyzer.model import TraceModel"),
    ("sglang_tracing.analyzer.analyses.kernels", "import matplotlib.pyplot as plt"),
])
def test_an_upward_import_is_caught(module, source):
    assert len(violations(module, source, is_package=module.endswith("renderers"))) == 1


@pytest.mark.parametrize("module, source", [
    ("sglang_tracing.plugin", "from sglang_tracing.patches import _targets, instrument_all"),
    ("sglang_tracing.app.cli", "from sglang_tracing.analyzer import api"),
    ("sglang_tracing.__main__", "from sglang_tracing.app.cli import main"),
    ("sglang_tracing.analyzer.analyses.story", "from sglang_tracing.models.builder import ARCHITECTURES"),
    ("sglang_tracing.patches.http_server", "from sglang_tracing.runtime import recorder"),
    ("sglang_tracing.analyzer.renderers.perfetto", "from perfetto.trace_builder.proto_builder import X"),
    ("sglang_tracing.analyzer.loaders.nsys", "from sglang_tracing.analyzer.model import KERNEL_SCHEMA"),
    ("sglang_tracing.analyzer.analyses.kernels", "def f():\n    from sglang_tracing.analyzer.loaders import nsys"),
    ("sglang_tracing.analyzer.renderers.plots", "import matplotlib"),
    ("sglang_tracing.analyzer.api", "from sglang_tracing.analyzer.renderers.files import write_report"),
])
def test_a_downward_import_is_allowed(module, source):
    assert violations(module, source) == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected group of modules that import each other (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_module_imports_itself_back_through_others():
    graph = import_graph()
    assert "sglang_tracing.analyzer.loaders.span_store" in graph["sglang_tracing.analyzer.loaders.trace_dir"]
    assert _cycles(graph) == []


def test_a_cycle_is_found():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
