"""Optional experiment trackers fed by the run writer: TensorBoard, Weights & Biases, MLflow.

Off by default; ``output.loggers: [tensorboard, wandb, mlflow]`` turns them on (each needs its
extra: ``pip install 'promptcl[tensorboard]'``, ``[wandb]``, ``[mlflow]``). They receive what the
run directory receives: every log.jsonl record (numbers flattened to ``phase/key`` scalars, at
the record's line number in log.jsonl, so a resumed run continues the same axis) and the metrics
after every task (``metrics/faa``, ... at step ``after_task``; ``validation/...``).

- TensorBoard writes event files into ``<run dir>/tensorboard``.
- W&B logs into ``<run dir>/wandb`` under the run's id (a resumed run continues the same W&B
  run); without a login or network, set ``WANDB_MODE=offline`` and ``wandb sync`` later.
- MLflow logs to its own tracking store (``MLFLOW_TRACKING_URI``, else MLflow's local default),
  experiment ``output.project``, the run tagged with promptcl's run id; its HTTP client is told
  not to retry for minutes when no server answers (unless you set those variables yourself).

A tracker that fails (its package missing, no server, no network, a refused login) is switched
off with one warning, and the run goes on: a tracker never stops or slows a run for long.
Only process 0 logs, as only it writes the run directory.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

TENSORBOARD_DIR = "tensorboard"
WANDB_DIR = "wandb"


def _scalars(record: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The record's numbers as flat scalars: {"task": 0, "seconds": {"train": 2}} ->
    {"task": 0, "seconds/train": 2}; strings and lists are left out."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out |= _scalars(value, f"{prefix}{key}/")
        elif isinstance(value, bool):
            out[prefix + key] = float(value)
        elif isinstance(value, int | float) and value == value:  # (not NaN)
            out[prefix + key] = float(value)
    return out


class Tracker:
    name = ""

    def __init__(self, run_dir: Path, run_id: str, config: dict[str, Any], resumed: bool):
        raise NotImplementedError

    def log(self, scalars: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def metrics(self, scalars: dict[str, float], after_task: int, step: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class TensorBoard(Tracker):
    name = "tensorboard"

    def __init__(self, run_dir, run_id, config, resumed):
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

        self.writer = SummaryWriter(log_dir=str(run_dir / TENSORBOARD_DIR))
        if not resumed:
            self.writer.add_text("config", "```\n" + json.dumps(config, indent=2) + "\n```")

    def log(self, scalars, step):
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def metrics(self, scalars, after_task, step):
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, after_task)
        self.writer.flush()

    def close(self):
        self.writer.close()


class WandB(Tracker):
    name = "wandb"

    def __init__(self, run_dir, run_id, config, resumed):
        import wandb

        (run_dir / WANDB_DIR).mkdir(exist_ok=True)
        self.run = wandb.init(
            project=config["output"]["project"],
            name=run_dir.name,
            id=run_id,
            resume="allow",
            dir=str(run_dir),
            config=config,
            reinit="create_new",
            settings=wandb.Settings(init_timeout=30, silent=True),
        )

    def log(self, scalars, step):
        self.run.log(scalars, step=step)

    def metrics(self, scalars, after_task, step):
        self.run.log({**scalars, "after_task": after_task}, step=step)

    def close(self):
        self.run.finish()


class MLflow(Tracker):
    name = "mlflow"

    def __init__(self, run_dir, run_id, config, resumed):
        # No server answering: fail in seconds, not after minutes of retries.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = client = MlflowClient()
        project = config["output"]["project"]
        experiment = client.get_experiment_by_name(project)
        exp_id = experiment.experiment_id if experiment else client.create_experiment(project)
        found = client.search_runs([exp_id], f"tags.promptcl_run_id = '{run_id}'", max_results=1)
        if found:
            self.run_id = found[0].info.run_id
        else:
            run = client.create_run(exp_id, run_name=run_dir.name, tags={"promptcl_run_id": run_id})
            self.run_id = run.info.run_id
            flat = _flat_params(config)
            params = [Param(k, str(v)[:500]) for k, v in flat.items()]
            for i in range(0, len(params), 100):
                client.log_batch(self.run_id, params=params[i : i + 100])

    def log(self, scalars, step):
        from mlflow.entities import Metric

        now = _millis()
        metrics = [Metric(_mlflow_key(k), v, now, step) for k, v in scalars.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def metrics(self, scalars, after_task, step):
        self.log(scalars, after_task)

    def close(self):
        self.client.set_terminated(self.run_id)


def _millis() -> int:
    import time

    return int(time.time() * 1000)


def _mlflow_key(key: str) -> str:
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in key)


def _flat_params(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out |= _flat_params(value, f"{prefix}{key}.")
        else:
            out[prefix + key] = value
    return out


TRACKERS: dict[str, type[Tracker]] = {"tensorboard": TensorBoard, "wandb": WandB, "mlflow": MLflow}
EXTRA = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


class Loggers:
    """The trackers of one run; every call is guarded, a failing tracker is dropped with one
    warning."""

    def __init__(self, names: list[str], run_dir: Path, config: dict[str, Any], resumed: bool):
        self.trackers: list[Tracker] = []
        self.step = _lines(run_dir / "log.jsonl") if resumed else 0
        if not names:
            return
        run_id = _run_id(run_dir)
        for name in names:
            try:
                self.trackers.append(TRACKERS[name](run_dir, run_id, config, resumed))
            except ImportError as err:
                _warn(name, f"{err}; install it with pip install 'promptcl[{EXTRA[name]}]'")
            except Exception as err:  # noqa: BLE001 (no server, no network, a refused login, ...)
                _warn(name, f"{type(err).__name__}: {err}")

    def log(self, record: dict[str, Any]) -> None:
        step, self.step = self.step, self.step + 1
        if not self.trackers:
            return
        scalars = _scalars(record, f"{record['phase']}/" if "phase" in record else "")
        self._each("log", scalars, step)

    def metrics(self, summary: dict[str, Any], final: bool) -> None:
        if not self.trackers:
            return
        scalars = {
            f"metrics/{k}": v for k, v in _scalars(summary).items() if not k.startswith("valid")
        }
        scalars |= {f"{k}": v for k, v in _scalars(summary).items() if k.startswith("validation/")}
        scalars.pop("metrics/after_task", None)
        self._each("metrics", scalars, int(summary.get("after_task", 0)), self.step)
        if final:
            self._each("close")
            self.trackers = []

    def _each(self, call: str, *args: Any) -> None:
        for tracker in list(self.trackers):
            try:
                getattr(tracker, call)(*args)
            except Exception as err:  # noqa: BLE001
                self.trackers.remove(tracker)
                _warn(tracker.name, f"{type(err).__name__}: {err}")


def _warn(name: str, why: str) -> None:
    warnings.warn(
        f"output.loggers: {name} is off for this run ({why}); the run goes on",
        RuntimeWarning,
        stacklevel=3,
    )


def _lines(path: Path) -> int:
    if not path.is_file():
        return 0
    with open(path) as f:
        return sum(1 for _ in f)


def _run_id(run_dir: Path) -> str:
    try:
        return json.loads((run_dir / "run.json").read_text())["run_id"]
    except (OSError, ValueError, KeyError):
        return run_dir.name
