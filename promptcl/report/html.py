"""One self-contained HTML page: the comparison table, the figures (PNG, inlined as data URLs),
every run's status, protocol and config. No server, no network, no script."""

from __future__ import annotations

import base64
import html
import math
import time

from promptcl import __version__
from promptcl.report.plots import Plot
from promptcl.report.runs import RunRecord
from promptcl.report.table import METRICS, Row, _cell, _digits, _seeds

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 1180px; padding: 0 1.5rem; color: #1d1d1f; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; } h2 { margin-top: 2.2rem; font-size: 1.25rem;
     border-bottom: 1px solid #ddd; padding-bottom: .2rem; }
.meta { color: #666; font-size: .9rem; }
table { border-collapse: collapse; margin: .8rem 0; font-size: .92rem; }
th, td { padding: .32rem .7rem; border-bottom: 1px solid #e3e3e3; text-align: right;
         white-space: nowrap; }
th { background: #f4f5f7; font-weight: 600; }
td:first-child, th:first-child, td.text, th.text { text-align: left; }
tr.incomplete td { color: #a15c00; }
td.note { color: #666; font-size: .85rem; text-align: left; white-space: normal; }
td.partial { color: #a15c00; }
.oracle { color: #b00020; font-weight: 600; }
figure { margin: 1.4rem 0; } figure img { max-width: 100%; height: auto;
         border: 1px solid #eee; } figcaption { color: #555; font-size: .88rem; }
details { margin: .3rem 0; } summary { cursor: pointer; }
pre { background: #f6f8fa; padding: .6rem; overflow-x: auto; font-size: .8rem; }
"""


def _e(text: object) -> str:
    return html.escape(str(text))


def comparison(table: list[Row]) -> str:
    names = [name for name, _ in METRICS]
    head = "".join(f"<th>{_e(n)}</th>" for n in names)
    out = [
        '<table class="comparison"><thead><tr><th>method</th><th class="text">benchmark</th>'
        f'<th>seeds</th>{head}<th class="text">note</th></tr></thead><tbody>'
    ]
    for row in table:
        method = _e(row.label) + (
            ' <span class="oracle">(task-oracle)</span>' if row.task_oracle else ""
        )
        cells = "".join(f"<td>{_e(_cell(*row.stat(k), _digits(k)))}</td>" for _, k in METRICS)
        css = ' class="incomplete"' if not row.complete else ""
        note_css = "note partial" if row.incomplete else "note"
        out.append(
            f'<tr{css} data-method="{_e(row.label)}"><td>{method}</td>'
            f'<td class="text">{_e(row.benchmark)}</td><td>{_e(_seeds(row))}</td>{cells}'
            f'<td class="{note_css}">{_e(row.note)}</td></tr>'
        )
    out.append("</tbody></table>")
    return "\n".join(out)


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.{digits}f}"


def runs_table(records: list[RunRecord]) -> str:
    out = [
        '<table class="runs"><thead><tr><th>run</th><th class="text">method</th><th>seed</th>'
        '<th class="text">status</th><th>FAA</th><th>FM</th><th>seconds</th>'
        '<th class="text">protocol</th></tr></thead><tbody>'
    ]
    for r in records:
        # (an incomplete run's metrics are those of the tasks so far: not shown)
        faa, fm = (r.metrics.get(k) if r.complete else None for k in ("faa", "fm"))
        css = "" if r.complete else ' class="incomplete"'
        # (the plain protocol is said once above the table; only departures are spelled out)
        protocol = _e(r.protocol.replace(" (no task identity at test time)", ""))
        if r.task_oracle:
            protocol = f'<span class="oracle">{protocol}</span>'
        out.append(
            f"<tr{css}><td>{_e(r.path.name)}</td><td class='text'>{_e(r.label)}</td>"
            f"<td>{_e(r.seed)}</td><td class='text'>{_e(r.status)}</td><td>{_fmt(faa)}</td>"
            f"<td>{_fmt(fm)}</td><td>{_fmt(r.seconds, 1)}</td>"
            f"<td class='text note'>{protocol}</td></tr>"
        )
    out.append("</tbody></table>")
    return "\n".join(out)


def figure(plot: Plot, png: bytes) -> str:
    data = base64.b64encode(png).decode()
    return (
        f'<figure id="{_e(plot.name)}"><img alt="{_e(plot.title)}" '
        f'src="data:image/png;base64,{data}"><figcaption><b>{_e(plot.title)}.</b> '
        f"{_e(plot.caption)}</figcaption></figure>"
    )


def configs(records: list[RunRecord]) -> str:
    out = []
    for r in records:
        out.append(
            f"<details><summary>{_e(r.path.name)} ({_e(r.status)})</summary>"
            f"<p class='meta'>{_e(r.path)}<br>protocol: {_e(r.protocol)}</p>"
            f"<pre>{_e(r.config_text or '(no config.yaml)')}</pre></details>"
        )
    return "\n".join(out)


def page(
    title: str,
    sources: list[str],
    table: list[Row],
    records: list[RunRecord],
    figures: list[tuple[Plot, bytes]],
    skipped: list[str],
) -> str:
    incomplete = sum(not r.complete for r in records)
    meta = (
        f"{len(records)} runs ({incomplete} incomplete) from {', '.join(map(_e, sources))}; "
        f"promptcl {__version__}, {time.strftime('%Y-%m-%d %H:%M')}"
    )
    sections = [
        f"<h1>{_e(title)}</h1><p class='meta'>{meta}</p>",
        "<h2>Comparison</h2>",
        "<p>Mean ± sample standard deviation over the seeds of complete runs; incomplete runs "
        "are named in the note and never averaged in. FAA: final average accuracy; CAA: "
        "cumulative average accuracy; FM: forgetting; BWF: vCLIMB's backward forgetting; "
        "seconds: the run's per-task time records summed. Protocol: class-incremental, no task "
        "identity at test time, unless marked <span class='oracle'>task-oracle</span>.</p>",
        comparison(table),
        "<h2>Figures</h2>",
        *(figure(p, png) for p, png in figures),
    ]
    if skipped:
        items = "".join(f"<li>{_e(s)}</li>" for s in skipped)
        sections.append(f"<p>Figures not drawn:</p><ul class='skipped'>{items}</ul>")
    sections += ["<h2>Runs</h2>", runs_table(records), "<h2>Configs</h2>", configs(records)]
    body = "\n".join(sections)
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{_e(title)}</title><style>{STYLE}</style></head><body>\n{body}\n</body></html>\n"
    )
