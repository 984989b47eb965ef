"""One-off, for the lead once every branch is merged: move the report modules out of analyzer/analyses/ into
analyzer/reports/ and rewrite every import, so that analyses (building blocks) sit below the reports layer.

A report module is one that builds the ``Report`` document (imports ``sglang_tracing.analyzer.report``);
``kernels.describe_layers`` (wording) moves to ``reports/wording.py``. Then ``tests/test_layering.py`` puts
``report.py`` in the reports layer, so an analysis that builds a Report again fails there. Run from the repo
root on a clean tree, then run tests/test_layering.py and the analyzer tests; delete this file after.
"""
from __future__ import annotations

import pathlib
import re
import subprocess

ROOT = pathlib.Path(".")
A, R = "sglang_tracing.analyzer.analyses", "sglang_tracing.analyzer.reports"
REPORT_IMPORT = re.compile(r"^\s*from sglang_tracing\.analyzer\.report import", re.M)


def report_modules() -> list[str]:
    return sorted(p.stem for p in (ROOT / "analyzer/analyses").glob("*.py")
                  if p.stem not in ("__init__", "kernels") and REPORT_IMPORT.search(p.read_text()))


def split_import(moved: list[str]):
    def rewrite(m: re.Match) -> str:
        indent, names, tail = m.group(1), [n.strip() for n in m.group(2).split(",")], m.group(3)
        out = [f"{indent}from {pkg} import {', '.join(group)}{tail}" for pkg, group in
               ((A, [n for n in names if n.split(" as ")[0] not in moved]),
                (R, [n for n in names if n.split(" as ")[0] in moved])) if group]
        return "\n".join(out)
    return rewrite


def move_describe_layers() -> None:
    kern = ROOT / "analyzer/analyses/kernels.py"
    s = kern.read_text()
    start = s.index("def describe_layers(")
    end = s.find("\ndef ", start + 1)
    body = s[start:] if end < 0 else s[start:end + 1]
    kern.write_text(s.replace(body, "").rstrip() + "\n")
    body = body.replace("    from sglang_tracing.analyzer.report import ms\n\n", "")
    (ROOT / "analyzer/reports/wording.py").write_text(
        '"""Wording shared by several reports."""\nfrom __future__ import annotations\n\nimport polars as pl\n\n'
        "from sglang_tracing.analyzer.report import ms\n\n\n" + body.rstrip() + "\n")


def main() -> None:
    moved = report_modules()
    (ROOT / "analyzer/reports").mkdir(exist_ok=True)
    (ROOT / "analyzer/reports/__init__.py").write_text("")
    for m in moved:
        subprocess.run(["git", "mv", f"analyzer/analyses/{m}.py", f"analyzer/reports/{m}.py"], check=True)
    move_describe_layers()
    rewrite = split_import(moved)
    for p in ROOT.rglob("*.py"):
        if {".venv", ".git"} & set(p.parts) or p.name == pathlib.Path(__file__).name:
            continue
        s = o = p.read_text()
        s = re.sub(rf"^([ \t]*)from {re.escape(A)} import ([^\n(]+?)([ \t]*(?:#[^\n]*)?)$", rewrite, s, flags=re.M)
        for m in moved:
            s = s.replace(f"{A}.{m} import", f"{R}.{m} import").replace(f'"{A}.{m}"', f'"{R}.{m}"')
        if "import describe_layers" in s or re.search(r"kernels import \([^)]*describe_layers", s):
            s = re.sub(r"describe_layers,\s*", "", s, count=1)
            s = s.replace(f"from {A}.kernels import describe_layers\n", "")
            s = re.sub(r"^(from sglang_tracing\.analyzer\.report import)", f"from {R}.wording import describe_layers\n\\1",
                       s, count=1, flags=re.M)
        if s != o:
            p.write_text(s)
    pp = ROOT / "pyproject.toml"
    s = pp.read_text()
    if f'"{R}"' not in s:
        pp.write_text(s.replace(f'"{A}",', f'"{A}", "{R}",', 1))
    lay = ROOT / "tests/test_layering.py"
    s = lay.read_text().replace('"report": "analyses"', '"report": "reports"')
    lay.write_text(s.replace('== set(ANALYZER_LAYERS) - {"reports"}', "== set(ANALYZER_LAYERS)"))
    subprocess.run(["git", "add", "-A", "analyzer", "pyproject.toml", "tests/test_layering.py"], check=True)
    print("moved to analyzer/reports/:", ", ".join(moved))


if __name__ == "__main__":
    main()
