"""Writing a report to disk: each requested format beside its PNG plots."""
from __future__ import annotations

from pathlib import Path

from sglang_tracing.analyzer.renderers import html, markdown, plots, text
from sglang_tracing.analyzer.report import Report

# format name -> (file extension, renderer of the report and its drawn plots: file name -> PNG bytes)
FORMATS = {"text": ("txt", lambda report, pngs: text.render(report)), "md": ("md", markdown.render),
           "html": ("html", html.render)}


def write_report(out: Path, report: Report, formats=tuple(FORMATS)) -> list[str]:
    """Render ``report`` in each format into ``out``, its plots drawn beside; returns the paths written."""
    pngs = plots.draw_all(report)
    paths = []
    for fmt in formats:
        ext, render = FORMATS[fmt]
        p = Path(out) / f"{report.name}.{ext}"
        p.write_text(render(report, pngs))
        paths.append(str(p))
    for name, png in pngs.items():
        (Path(out) / name).write_bytes(png)
        paths.append(str(Path(out) / name))
    return paths
