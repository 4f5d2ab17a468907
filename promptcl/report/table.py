"""The comparison table: one row per method (label) and benchmark, the mean and standard
deviation over its complete runs' seeds of FAA, CAA, FM, BWF and seconds, as Markdown, CSV and
LaTeX.

The standard deviation is the sample one (ddof = 1, as numpy's ``std(ddof=1)``); with one seed
there is none. Metrics are the runs' own, from metrics.json (``faa``, ``caa``, ``fm``, and
``vclimb_bwf`` for BWF: vCLIMB's class-count-weighted backward forgetting); seconds are the sum
of a run's per-task time records in log.jsonl. Incomplete runs are listed in the row's note and
never averaged in; a row with no complete run shows "incomplete". Runs whose protocol is a task
oracle (batch-wise prompt voting at test time) are marked in the method column.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field

import numpy as np

from promptcl.report.runs import RunRecord

# (column, metrics.json key or "seconds")
METRICS = [
    ("FAA", "faa"),
    ("CAA", "caa"),
    ("FM", "fm"),
    ("BWF", "vclimb_bwf"),
    ("seconds", "seconds"),
]
ORACLE = "task-oracle"


@dataclass
class Row:
    label: str
    benchmark: str
    runs: list[RunRecord] = field(default_factory=list)

    @property
    def complete(self) -> list[RunRecord]:
        return [r for r in self.runs if r.complete]

    @property
    def incomplete(self) -> list[RunRecord]:
        return [r for r in self.runs if not r.complete]

    @property
    def task_oracle(self) -> bool:
        return any(r.task_oracle for r in self.runs)

    @property
    def method(self) -> str:
        """The label, marked when a run of the row used a task oracle."""
        return f"{self.label} ({ORACLE})" if self.task_oracle else self.label

    def values(self, key: str) -> list[float]:
        """``key`` of each complete run (runs without the value are left out)."""
        out = []
        for r in self.complete:
            value = r.seconds if key == "seconds" else r.metrics.get(key)
            if value is not None:
                out.append(float(value))
        return out

    def stat(self, key: str) -> tuple[float, float]:
        """(mean, sample std) over the complete runs; NaN where undefined."""
        v = self.values(key)
        mean = float(np.mean(v)) if v else math.nan
        std = float(np.std(v, ddof=1)) if len(v) > 1 else math.nan
        return mean, std

    @property
    def note(self) -> str:
        parts = [f"seed {r.seed} {r.status}" for r in self.incomplete]
        protocols = sorted({r.protocol for r in self.complete} - {_plain_protocol()})
        return "; ".join(parts + protocols)


def _plain_protocol() -> str:
    return "class-incremental (no task identity at test time)"


def rows(records: list[RunRecord]) -> list[Row]:
    """Runs grouped by (label, benchmark), in the order they first appear."""
    out: dict[tuple[str, str], Row] = {}
    for r in records:
        out.setdefault((r.label, r.benchmark), Row(r.label, r.benchmark)).runs.append(r)
    return list(out.values())


def _cell(mean: float, std: float, digits: int, pm: str = " ± ") -> str:
    if math.isnan(mean):
        return "incomplete"
    text = f"{mean:.{digits}f}"
    return text if math.isnan(std) else f"{text}{pm}{std:.{digits}f}"


def _digits(key: str) -> int:
    return 1 if key == "seconds" else 2


def _seeds(row: Row) -> str:
    n, total = len(row.complete), len(row.runs)
    return str(n) if n == total else f"{n} of {total}"


def markdown(table: list[Row]) -> str:
    head = ["method", "benchmark", "seeds", *(name for name, _ in METRICS), "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table:
        cells = [row.method, row.benchmark, _seeds(row)]
        cells += [_cell(*row.stat(key), _digits(key)) for _, key in METRICS]
        lines.append("| " + " | ".join([*cells, row.note]) + " |")
    return "\n".join(lines) + "\n"


def to_csv(table: list[Row]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    head = ["method", "benchmark", "task_oracle", "seeds_complete", "seeds_total"]
    for _, key in METRICS:
        head += [f"{key}_mean", f"{key}_std"]
    writer.writerow([*head, "note"])
    for row in table:
        cells: list[object] = [
            row.label,
            row.benchmark,
            row.task_oracle,
            len(row.complete),
            len(row.runs),
        ]
        for _, key in METRICS:
            cells += ["" if math.isnan(x) else repr(round(x, 6)) for x in row.stat(key)]
        writer.writerow([*cells, row.note])
    return out.getvalue()


def latex(table: list[Row]) -> str:
    """A booktabs tabular (``\\usepackage{booktabs}``)."""
    names = [name for name, _ in METRICS]
    lines = [
        "\\begin{tabular}{ll" + "r" * (len(names) + 1) + "}",
        "\\toprule",
        " & ".join(["Method", "Benchmark", "Seeds", *names]) + " \\\\",
        "\\midrule",
    ]
    for row in table:
        cells = [_tex(row.method), _tex(row.benchmark), _tex(_seeds(row))]
        for _, key in METRICS:
            mean, std = row.stat(key)
            text = _cell(mean, std, _digits(key), pm=" \\pm ")
            cells.append(f"${text}$" if not math.isnan(mean) else "incomplete")
        lines.append(" & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    notes = [f"% {row.method} on {row.benchmark}: {row.note}" for row in table if row.note]
    return "\n".join(lines + notes) + "\n"


def _tex(text: str) -> str:
    for a, b in (
        ("\\", "\\textbackslash{}"),
        ("_", "\\_"),
        ("&", "\\&"),
        ("%", "\\%"),
        ("#", "\\#"),
    ):
        text = text.replace(a, b)
    return text
