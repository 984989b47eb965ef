"""Issue 20's README: its links lead somewhere, CI's test command is the one it states, and every figure it
states is one a reader finds in the committed report it names."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)")


def test_every_relative_link_resolves():
    for page in PAGES:
        for target in LINK.findall(page.read_text()):
            if "://" in target:
                continue
            assert (page.parent / target).exists(), f"{page.name}: {target}"


def test_ci_runs_the_test_command_the_readme_states():
    readme = (ROOT / "README.md").read_text().splitlines()
    assert any(line.startswith("bash scripts/test.sh ") for line in readme)
    assert "bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text().splitlines()


def test_readme_figures_are_in_the_report_it_names():
    readme = ROOT / "README.md"
    prose = re.sub(r"```.*?```", "", readme.read_text(), flags=re.S)
    figures = set(re.findall(r"\b\d{1,3}(?:,\d{3})+\b|\b\d+%", prose))
    report = (ROOT / "traces" / "examples" / "showcase" / "tp_scaling.txt").read_text()
    table = [line for line in report.splitlines() if re.match(r"^│\s+\|\s+[12] \|", line)]
    cells = {c.strip() for line in table for c in line.split("|")}
    assert figures == {"2,585", "4,238", "82%"}
    for figure in figures:
        assert figure.rstrip("%") in cells or figure.replace(",", "") in {c.split(".")[0].replace(",", "")
                                                                         for c in cells}, figure
