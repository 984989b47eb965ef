"""Self-contained HTML renderer: plots embedded as data URIs and captioned with what they show, numbers
right-aligned with thousands separators, links to the reports written beside it, every string escaped."""
from __future__ import annotations

import base64
from html import escape

from sglang_tracing.analyzer.renderers import plots
from sglang_tracing.analyzer.renderers.base import NOT_MEASURED, blank_note, cell, numeric, shown, table_files
from sglang_tracing.analyzer.report import Report, Section

_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
h1{border-bottom:2px solid #444}section{margin-left:1em;border-left:3px solid #ccd;padding-left:1em}
.missing{color:#a33;font-style:italic}.src{color:#667;font-size:.9em}.note{color:#667;font-size:.85em}
nav{margin-bottom:1em}table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
td,th{border:1px solid #ccc;padding:2px 6px}td.n{text-align:right;font-variant-numeric:tabular-nums}
th{background:#eef}img{max-width:100%}figcaption{color:#445}"""


def _table(sec: Section, csv_file: str | None, out: list[str]) -> None:
    table = sec.table
    rows, cut = shown(table, csv_file)
    right = numeric(table)
    out.append("<table><tr>" + "".join(f"<th>{escape(c)}</th>" for c in table.columns) + "</tr>")
    for row in rows.iter_rows():
        out.append("<tr>" + "".join(f"<td class='n'>{escape(cell(v, c))}</td>" if r else f"<td>{escape(cell(v, c))}</td>"
                                    for v, c, r in zip(row, table.columns, right)) + "</tr>")
    out.append("</table>")
    out += [f"<p class='note'>{escape(note)}</p>" for note in (cut, blank_note(table)) if note]


def _section(sec: Section, depth: int, out: list[str], files: dict[int, str]) -> None:
    h = min(depth, 6)
    out.append(f"<section><h{h}>{escape(sec.title)}</h{h}><ul>")
    for f in sec.figures:
        value = (f"<b>{escape(f.value)}</b>" if f.value is not None
                 else f'<span class="missing">{NOT_MEASURED}</span>')
        src = f' <span class="src">{escape(f.source)}</span>' if f.source else ""
        out.append(f"<li>{escape(f.label)}: {value}{src}</li>")
    out.append("</ul>")
    if sec.table is not None and not sec.table.is_empty():
        _table(sec, files.get(id(sec)), out)
    for child in sec.children:
        _section(child, depth + 1, out, files)
    out.append("</section>")


def render(report: Report, pngs: dict[str, bytes] | None = None, others: tuple[str, ...] = ()) -> str:
    """The page; ``pngs`` are the report's plots already drawn (plots.draw_all), drawn here when not given;
    ``others``: the reports written beside it, linked from the top."""
    if pngs is None:
        pngs = plots.draw_all(report)
    out = ["<!DOCTYPE html><html><head><meta charset='utf-8'>",
           f"<title>{escape(report.title)}</title><style>{_STYLE}</style></head><body>"]
    if others:
        out.append("<nav>Other reports: " + " · ".join(f"<a href='{escape(n)}.html'>{escape(n)}</a>"
                                                       for n in others) + "</nav>")
    out.append(f"<h1>{escape(report.title)}</h1>")
    files = table_files(report)
    for sec in report.sections:
        _section(sec, 2, out, files)
    captions = plots.captions(report)
    for name, png in pngs.items():
        data = base64.b64encode(png).decode()
        caption = escape(captions.get(name, name))
        out.append(f"<figure><img alt='{caption}' src='data:image/png;base64,{data}'>"
                   f"<figcaption>{caption}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out)


class HtmlRenderer:
    extension = "html"

    def files(self, report: Report, pngs: dict[str, bytes], others: tuple[str, ...] = ()) -> dict[str, str]:
        return {f"{report.name}.{self.extension}": render(report, pngs, others)}
