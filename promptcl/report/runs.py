"""Reading run directories (``promptcl.engine.run_dir`` documents their files), never a trainer.

A run is *complete* when its accuracy matrix has all T columns and its metrics.json was written
after the last task; anything less is incomplete and is reported as such, never averaged in.
A folder given to the report is a run directory, a study's output (its ``study.json`` lists the
runs, with their labels, started or not), or any folder holding run directories below it.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from promptcl.engine.run_dir import MARKER

MANIFEST = "study.json"


@dataclass
class RunRecord:
    """What the report knows of one run directory."""

    path: Path
    label: str  # the row of the comparison table it belongs to
    benchmark: str
    seed: int | None
    method: str
    config: dict[str, Any] = field(repr=False)
    config_text: str = field(repr=False)
    accuracy: np.ndarray | None = field(repr=False)  # (T, T), NaN where not (yet) measured
    num_tasks: int | None  # T, where known
    tasks_done: int
    metrics: dict[str, Any] = field(repr=False)  # metrics.json as written by the run
    seconds: float | None  # the sum of the per-task time records in log.jsonl
    log: list[dict[str, Any]] = field(repr=False, default_factory=list)
    labelled: bool = False  # the label comes from a study's manifest

    @property
    def complete(self) -> bool:
        return (
            self.num_tasks is not None
            and self.tasks_done == self.num_tasks
            and self.metrics.get("after_task") == self.num_tasks - 1
        )

    @property
    def status(self) -> str:
        if self.complete:
            return "complete"
        if not self.path.is_dir():
            return "not started"
        if not self.tasks_done:
            return "incomplete (no task finished)"
        of = self.num_tasks if self.num_tasks is not None else "?"
        return f"incomplete ({self.tasks_done}/{of} tasks)"

    @property
    def protocol(self) -> str:
        return str(self.metrics.get("protocol", "unknown (no metrics.json yet)"))

    @property
    def task_oracle(self) -> bool:
        return self.protocol.startswith("task-oracle")


def read_matrix(path: Path) -> np.ndarray | None:
    """accuracy_matrix.csv -> (T, T) floats with NaN for blank cells; None if absent."""
    if not path.is_file():
        return None
    rows = list(csv.reader(path.read_text().splitlines()))[1:]
    return np.array([[float(v) if v else np.nan for v in row[1:]] for row in rows], dtype=float)


def tasks_done(accuracy: np.ndarray | None) -> int:
    """Columns t whose entries i <= t are all measured (the tasks evaluated so far)."""
    if accuracy is None:
        return 0
    done = 0
    for t in range(accuracy.shape[1]):
        if np.isnan(accuracy[: t + 1, t]).any():
            break
        done += 1
    return done


def progress(run_dir: Path) -> tuple[int, int | None, bool]:
    """(tasks done, T or None, complete) of a run directory, from its files alone."""
    record = read_run(run_dir)
    return record.tasks_done, record.num_tasks, record.complete


def read_run(
    run_dir: Path, label: str | None = None, seed: int | None = None, benchmark: str | None = None
) -> RunRecord:
    """A run directory's files (any of them may be missing: an unstarted or early-killed run)."""
    run_dir = Path(run_dir)
    config_file = run_dir / "config.yaml"
    text = config_file.read_text() if config_file.is_file() else ""
    config = yaml.safe_load(text) or {} if text else {}
    accuracy = read_matrix(run_dir / "accuracy_matrix.csv")
    metrics_file = run_dir / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    log = _read_log(run_dir / "log.jsonl")
    method = str(config.get("method", {}).get("name", "?"))
    return RunRecord(
        path=run_dir,
        label=label or method,
        benchmark=benchmark or str(config.get("data", {}).get("name", "?")),
        seed=config.get("seed", seed),
        method=method,
        config=config,
        config_text=text,
        accuracy=accuracy,
        num_tasks=accuracy.shape[0] if accuracy is not None else _num_tasks(config),
        tasks_done=tasks_done(accuracy),
        metrics=metrics,
        seconds=task_seconds(log),
        log=log,
        labelled=label is not None,
    )


def _read_log(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill
            continue
    return out


def task_seconds(log: list[dict[str, Any]]) -> float | None:
    """The run's time: each task's time record ({"task", "seconds": {train, evaluate, end_task,
    checkpoint}}), summed over kinds and tasks (the last record of a task counts); None if the
    log has none."""
    per_task: dict[int, float] = {}
    for record in log:
        if "task" in record and isinstance(record.get("seconds"), dict):
            per_task[record["task"]] = float(sum(record["seconds"].values()))
    return sum(per_task.values()) if per_task else None


def _num_tasks(config: dict[str, Any]) -> int | None:
    data = config.get("data", {})
    if data.get("task_sizes"):
        return len(data["task_sizes"])
    return data.get("num_tasks")


def find_runs(paths: list[Path]) -> list[RunRecord]:
    """The runs of each path: a run directory, a study's output (its manifest's runs, in its
    order, started or not) or a folder with run directories below it (sorted)."""
    records: list[RunRecord] = []
    for path in map(Path, paths):
        if (path / MANIFEST).is_file():
            manifest = json.loads((path / MANIFEST).read_text())
            for run in manifest["runs"]:
                records.append(
                    read_run(path / run["name"], run["label"], run["seed"], run["benchmark"])
                )
        elif is_run(path):
            records.append(read_run(path))
        elif path.is_dir():
            found = sorted({p.parent for p in path.rglob("config.yaml") if is_run(p.parent)})
            if not found:
                raise FileNotFoundError(f"{path} holds no run directory (no {MARKER} below it)")
            records += [read_run(p) for p in found]
        else:
            raise FileNotFoundError(f"{path} is not a run directory or a folder of runs")
    return distinguish(records)


def is_run(path: Path) -> bool:
    return (path / MARKER).is_file() or (path / "config.yaml").is_file()


def distinguish(records: list[RunRecord]) -> list[RunRecord]:
    """Runs that share a label and a benchmark but differ in a setting other than the seed
    (e.g. the Hash ablation rows, all called ``hash``) get the differing settings in their
    labels, so that different configurations are never averaged together. The settings are
    those a checkpoint checks on resume, less those at their defaults (a setting added to
    promptcl after a run was made is no difference). A study's runs keep their labels."""
    groups: dict[tuple[str, str], list[RunRecord]] = {}
    for r in records:
        if r.config and not r.labelled:  # (an unstarted run has no settings yet)
            groups.setdefault((r.label, r.benchmark), []).append(r)
    for group in groups.values():
        settings = [_settings(r) for r in group]
        keys = sorted(
            {k for s, _ in settings for k in s if len({str(x.get(k)) for x, _ in settings}) > 1}
        )
        for r, (_, flat) in zip(group, settings, strict=True):
            if keys:
                r.label += " (" + ", ".join(f"{k}={flat.get(k, 'default')}" for k in keys) + ")"
    return records


def _settings(record: RunRecord) -> tuple[dict[str, Any], dict[str, Any]]:
    """The flattened settings that shape what a run computes (not its seed, paths, devices),
    those at their defaults left out; and every setting's value, for the label."""
    from promptcl.config import load_config
    from promptcl.engine.checkpoint import run_identity

    try:
        config = load_config(record.path / "config.yaml")
        identity, values = run_identity(config), _flat(config.model_dump(mode="json"))
    except Exception:  # noqa: BLE001 (a config of another promptcl version: compare it raw)
        identity = {k: v for k, v in record.config.items() if k != "output"}
        values = _flat(record.config)
    identity.pop("seed", None)
    out: dict[str, Any] = {}

    def walk(node: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            elif f"{prefix}{key}" != "method_name":
                out[f"{prefix}{key}"] = value

    walk(identity, "")
    return out, values


def _flat(node: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out |= _flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out
