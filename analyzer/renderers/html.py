"""Self-contained HTML renderer: plots embedded as data URIs, every string escaped."""
from __future__ import annotations

import base64
from html import escape

from sglang_tracing.analyzer.renderers import plots
from sglang_tracing.analyzer.report import Report, Section

_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
h1{border-bottom:2px solid #444}section{margin-left:1em;border-left:3px solid #ccd;padding-left:1em}
.missing{color:#a33;font-style:italic}.src{color:#667;font-size:.9em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 6px}
th{background:#eef}img{max-width:100%}"""


def _section(sec: Section, depth: int, out: list[str]) -> None:
    h = min(depth, 6)
    out.append(f"<section><h{h}>{escape(sec.title)}</h{h}><ul>")
    for f in sec.figures:
        value = (f"<b>{escape(f.value)}</b>" if f.value is not None
                 else '<span class="missing">not measured</span>')
        src = f' <span class="src">{escape(f.source)}</span>' if f.source else ""
        out.append(f"<li>{escape(f.label)}: {value}{src}</li>")
    out.append("</ul>")
    if sec.table is not None and not sec.table.is_empty():
        out.append("<table><tr>" + "".join(f"<th>{escape(c)}</th>" for c in sec.table.columns) + "</tr>")
        for row in sec.table.head(500).iter_rows():
            out.append("<tr>" + "".join(f"<td>{escape('' if v is None else str(v))}</td>" for v in row) + "</tr>")
        out.append("</table>")
    for child in sec.children:
        _section(child, depth + 1, out)
    out.append("</section>")


def render(report: Report, pngs: dict[str, bytes] | None = None) -> str:
    """The page; ``pngs`` are the report's plots already drawn (plots.draw_all), drawn here when not given."""
    if pngs is None:
        pngs = plots.draw_all(report)
    out = ["<!DOCTYPE html><html><head><meta charset='utf-8'>",
           f"<title>{escape(report.title)}</title><style>{_STYLE}</style></head><body>",
           f"<h1>{escape(report.title)}</h1>"]
    for sec in report.sections:
        _section(sec, 2, out)
    for name, png in pngs.items():
        data = base64.b64encode(png).decode()
        out.append(f"<figure><img alt='{escape(name)}' src='data:image/png;base64,{data}'>"
                   f"<figcaption>{escape(name)}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out)
