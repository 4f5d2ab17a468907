"""The optional trackers (output.loggers): they receive the log and the metrics, and a tracker
that fails (a missing package, no server) warns once and never stops the run."""

from __future__ import annotations

import json
import sys
import time
import warnings

import pytest

import promptcl
from promptcl.engine import loggers

FINETUNE = {"name": "finetune", "epochs": 2, "batch_size": 16, "lr": 1e-3}


def epoch_records(run_dir) -> list[dict]:
    lines = (run_dir / "log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "epoch" in r]


def logger_warnings(record) -> list[str]:
    return [str(w.message) for w in record if "output.loggers" in str(w.message)]


def test_tensorboard_gets_every_epoch_and_the_metrics(tiny_run):
    pytest.importorskip("tensorboard", reason="the tensorboard extra")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = promptcl.run(tiny_run(FINETUNE, output={"loggers": ["tensorboard"]}), quiet=True)
    events = EventAccumulator(str(result.run_dir / "tensorboard"))
    events.Reload()
    losses = events.Scalars("train/loss")
    epochs = epoch_records(result.run_dir)
    assert len(losses) == len(epochs) == 3 * 2
    assert [e.value for e in losses] == pytest.approx([r["loss"] for r in epochs])
    faa = events.Scalars("metrics/faa")
    assert [e.step for e in faa] == [0, 1, 2]
    assert faa[-1].value == pytest.approx(result.metrics["faa"])
    assert events.Scalars("seconds/train")  # the per-task time records


class Unreachable(loggers.Tracker):
    name = "unreachable"

    def __init__(self, *args):
        raise ConnectionError("no server at http://127.0.0.1:9")


class BreaksLater(loggers.Tracker):
    name = "breaks-later"
    calls = 0

    def __init__(self, *args):
        pass

    def log(self, scalars, step):
        BreaksLater.calls += 1
        raise OSError("disk full")

    def metrics(self, scalars, after_task, step):
        raise AssertionError("a tracker that failed is called no more")


def test_failing_loggers_warn_once_each_and_the_run_goes_on(tiny_run, monkeypatch, tmp_path):
    monkeypatch.setitem(loggers.TRACKERS, "tensorboard", BreaksLater)
    monkeypatch.setitem(loggers.TRACKERS, "mlflow", Unreachable)
    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed
    config = tiny_run(FINETUNE, output={"loggers": ["tensorboard", "wandb", "mlflow"]})
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        result = promptcl.run(config, quiet=True)
    said = logger_warnings(record)
    assert len(said) == 3, said
    assert any("wandb" in s and "pip install 'promptcl[wandb]'" in s for s in said)
    assert any("mlflow" in s and "ConnectionError" in s for s in said)
    assert any("tensorboard" not in s and "disk full" in s for s in said)
    assert BreaksLater.calls == 1
    reference = promptcl.run(tiny_run(FINETUNE, output={"dir": str(tmp_path / "ref")}), quiet=True)
    assert result.metrics == reference.metrics


def test_wandb_offline_writes_the_run_into_the_run_directory(tiny_run, monkeypatch):
    pytest.importorskip("wandb", reason="the wandb extra")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        result = promptcl.run(tiny_run(FINETUNE, output={"loggers": ["wandb"]}), quiet=True)
    assert logger_warnings(record) == []
    run_id = json.loads((result.run_dir / "run.json").read_text())["run_id"]
    assert list((result.run_dir / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))


def test_mlflow_local_store_gets_the_metrics(tiny_run, monkeypatch, tmp_path):
    pytest.importorskip("mlflow", reason="the mlflow extra")
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # (MLflow 3 prefers a database)
    config = tiny_run(FINETUNE, output={"loggers": ["mlflow"], "project": "tests"})
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        result = promptcl.run(config, quiet=True)
    assert logger_warnings(record) == []
    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    faa = client.get_metric_history(run.info.run_id, "metrics/faa")
    assert [m.step for m in faa] == [0, 1, 2]
    assert faa[-1].value == pytest.approx(result.metrics["faa"])
    assert run.data.params["method.name"] == "finetune"
    assert client.get_run(run.info.run_id).info.status == "FINISHED"


def test_mlflow_without_a_server_fails_fast_and_the_run_goes_on(tiny_run, monkeypatch):
    pytest.importorskip("mlflow", reason="the mlflow extra")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens there
    began = time.perf_counter()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        result = promptcl.run(tiny_run(FINETUNE, output={"loggers": ["mlflow"]}), quiet=True)
    assert len(logger_warnings(record)) == 1
    assert result.metrics["faa"] > 0
    assert time.perf_counter() - began < 60
