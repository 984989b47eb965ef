"""Writing a report to disk: each requested format (renderers.base.Renderer) beside its PNG plots."""
from __future__ import annotations

from pathlib import Path

from sglang_tracing.analyzer.renderers import plots
from sglang_tracing.analyzer.renderers.base import Renderer
from sglang_tracing.analyzer.renderers.csv_tables import CsvRenderer
from sglang_tracing.analyzer.renderers.html import HtmlRenderer
from sglang_tracing.analyzer.renderers.markdown import MarkdownRenderer
from sglang_tracing.analyzer.renderers.text import TextRenderer
from sglang_tracing.analyzer.report import Report

FORMATS: dict[str, Renderer] = {"text": TextRenderer(), "md": MarkdownRenderer(), "html": HtmlRenderer(),
                                "csv": CsvRenderer()}
DEFAULT_FORMATS = ("text", "md", "html")


def write_report(out: Path, report: Report, formats=DEFAULT_FORMATS, others: tuple[str, ...] = ()) -> list[str]:
    """Render ``report`` in each format into ``out``, its plots drawn beside; returns the paths written.
    ``others``: names of the reports written beside it (documents link to them)."""
    pngs = plots.draw_all(report)
    paths = []
    for fmt in formats:
        for name, content in FORMATS[fmt].files(report, pngs, tuple(o for o in others if o != report.name)).items():
            (Path(out) / name).write_text(content)
            paths.append(str(Path(out) / name))
    for name, png in pngs.items():
        (Path(out) / name).write_bytes(png)
        paths.append(str(Path(out) / name))
    return paths
