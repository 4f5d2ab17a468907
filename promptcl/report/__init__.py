"""Reports of finished (and unfinished) runs, read from their run directories only.

``write_report(paths, out)`` writes into ``out``: the comparison table (``comparison.md``,
``.csv``, ``.tex``), the figures (``figures/*.png`` and ``.svg``) and ``report.html``, one
self-contained page with the table, the figures and every run's protocol and config.
``promptcl report RUN_DIR_OR_STUDY... -o DIR`` is the same from the command line.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

from promptcl.report.runs import RunRecord, find_runs
from promptcl.report.table import Row, rows

__all__ = ["Report", "find_runs", "rows", "write_report"]


@dataclass
class Report:
    out: Path
    records: list[RunRecord]
    table: list[Row]
    figures: list[str] = field(default_factory=list)  # file stems under figures/
    skipped: list[str] = field(default_factory=list)  # figures not drawn, and why

    @property
    def html(self) -> Path:
        return self.out / "report.html"


def write_report(
    paths: list[Path], out: Path, tsne: bool = True, title: str | None = None, echo=None
) -> Report:
    from promptcl.engine.run_dir import _write_text
    from promptcl.report import html, plots, table

    say = echo or (lambda *_: None)
    records = find_runs(list(map(Path, paths)))
    grouped = rows(records)
    out = Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    _write_text(out / "comparison.md", table.markdown(grouped))
    _write_text(out / "comparison.csv", table.to_csv(grouped))
    _write_text(out / "comparison.tex", table.latex(grouped))
    report = Report(out, records, grouped)

    drawn: list[plots.Plot] = []
    for make in (plots.accuracy_curves, plots.accuracy_matrices, plots.old_new):
        drawn += make(grouped)
    drawn += plots.expert_activation(grouped)
    if tsne:
        drawn += _tsne(grouped, report.skipped, say)
    figures = []
    for plot in drawn:
        buffer = io.BytesIO()
        plot.figure.savefig(buffer, format="png", dpi=110)
        png = buffer.getvalue()
        (out / "figures" / f"{plot.name}.png").write_bytes(png)
        plot.figure.savefig(out / "figures" / f"{plot.name}.svg", format="svg")
        figures.append((plot, png))
        report.figures.append(plot.name)
    _forget_old_figures(out, report.figures)
    sources = [str(p) for p in paths]
    page = html.page(title or "promptcl report", sources, grouped, records, figures, report.skipped)
    _write_text(report.html, page)
    return report


def _forget_old_figures(out: Path, now: list[str]) -> None:
    """Remove the figures an earlier report wrote into ``out`` and this one did not (a method
    renamed or gone), so that figures/ holds this report's; other files are left alone."""
    import json

    listing = out / "figures" / "report-figures.json"
    before = json.loads(listing.read_text()) if listing.is_file() else []
    for stem in set(before) - set(now):
        for ext in ("png", "svg"):
            (out / "figures" / f"{stem}.{ext}").unlink(missing_ok=True)
    listing.write_text(json.dumps(sorted(now)) + "\n")


def _tsne(grouped: list[Row], skipped: list[str], say) -> list:
    """One t-SNE per row, of its first complete run; a row without prompts is skipped, with
    the reason."""
    from promptcl.report.tsne import NoPrompts, tsne_plot

    out = []
    for row in grouped:
        if not row.complete:
            continue
        run = row.complete[0]
        say(f"t-SNE of {row.method}'s instance prompts ({run.path.name})")
        try:
            out.append(tsne_plot(row.method, run.path, run.seed))
        except NoPrompts as why:
            skipped.append(f"t-SNE of {row.method}: {why}")
        except ImportError as err:
            skipped.append(f"t-SNE of {row.method}: {err} (pip install 'promptcl[report]')")
        except Exception as err:  # noqa: BLE001 (a figure must not sink the report)
            skipped.append(f"t-SNE of {row.method}: failed ({type(err).__name__}: {err})")
    return out
