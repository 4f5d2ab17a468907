"""The run directory: one writer owns it (process 0 writes; every process checks).

    run.json              the marker: this directory belongs to a promptcl run (its id, version)
    config.yaml           the resolved config the run was started with
    log.jsonl             one line per epoch of every phase (task, phase, epoch, lr, losses, ...),
                          one per task with where its time went ({"task", "seconds": {train,
                          evaluate, end_task, checkpoint}}), one for damaged files left out
    accuracy_matrix.csv   A[i, t] (%) so far, rows = test task, columns = after task
    val_accuracy_matrix.csv   the same on the held-out validation samples (``data.val_fraction``)
    metrics.json          the metrics of the matrix so far, and the evaluation protocol (and
                          under "validation" the same metrics on the validation samples)
    predictions/          after_task_<t>.safetensors: predicted and true labels of the seen tests
    checkpoint.pt         the last checkpoint (``engine.checkpoint``)
    tensorboard/ wandb/   the optional trackers' files (``output.loggers``, ``engine.loggers``)

Nothing a user wrote is deleted or overwritten: a new run refuses a directory that holds
anything (an earlier run, finished or not, or other files) unless ``output.overwrite`` is set,
and overwriting removes exactly the files above, nothing else. Writability is checked before
any training, on start and on resume.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from promptcl import __version__, collectives
from promptcl.config import RunConfig
from promptcl.engine import checkpoint
from promptcl.errors import ConfigError

CHECKPOINT = "checkpoint.pt"
VAL_MATRIX = "val_accuracy_matrix.csv"
MARKER = "run.json"
RUN_FILES = (
    MARKER,
    "config.yaml",
    "log.jsonl",
    "accuracy_matrix.csv",
    VAL_MATRIX,
    "metrics.json",
    CHECKPOINT,
)
RUN_FOLDERS = ("predictions", "tensorboard", "wandb")


def default_run_dir(config: RunConfig) -> Path:
    return Path("runs") / f"{config.method.name}-{config.data.name}-seed{config.seed}"


def is_run_dir(folder: Path) -> bool:
    return (folder / MARKER).is_file()


class RunWriter:
    def __init__(self, config: RunConfig):
        self.config = config
        self.dir = config.output.dir or default_run_dir(config)
        self.main = collectives.is_main()
        self.loggers = None  # the optional trackers (output.loggers), process 0's alone

    @property
    def checkpoint_path(self) -> Path:
        return self.dir / CHECKPOINT

    def start(self) -> None:
        """A new run: refuse a directory that holds anything unless ``output.overwrite``, then
        clear what an earlier run wrote and write the marker and the config. Every process
        checks (so all raise the same error); process 0 writes."""
        self._check_parent()
        held = sorted(p.name for p in self.dir.iterdir()) if self.dir.is_dir() else []
        if held and not self.config.output.overwrite:
            raise ConfigError(self._refusal(held))
        collectives.barrier()
        if self.main:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.check_writable()
            for name in RUN_FILES:
                (self.dir / name).unlink(missing_ok=True)
            for name in RUN_FOLDERS:
                shutil.rmtree(self.dir / name, ignore_errors=True)
            marker = {"run_id": uuid.uuid4().hex, "promptcl": __version__}
            _write_text(self.dir / MARKER, json.dumps(marker, indent=2) + "\n")
            _write_text(self.dir / "config.yaml", self.config.to_yaml())
            self._start_loggers(resumed=False)
        collectives.barrier()

    def resume(self) -> None:
        """Before a resumed run trains: the directory must be a run's and writable."""
        if not is_run_dir(self.dir) and not (self.dir / "config.yaml").is_file():
            raise ConfigError(f"{self.dir} is not a promptcl run directory: it has no {MARKER}")
        if self.main:
            self.check_writable()
            self._start_loggers(resumed=True)

    def _start_loggers(self, resumed: bool) -> None:
        if self.config.output.loggers:
            from promptcl.engine.loggers import Loggers

            config = self.config.model_dump(mode="json")
            self.loggers = Loggers(self.config.output.loggers, self.dir, config, resumed)

    def check_writable(self) -> None:
        """Fail now, naming the folder, rather than after an epoch of training."""
        probe = self.dir / f".write-test-{os.getpid()}"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise ConfigError(
                f"the run directory {self.dir} is not writable ({err.strerror}): fix its "
                "permissions, or choose another output.dir"
            ) from None

    def _check_parent(self) -> None:
        for parent in (self.dir, *self.dir.parents):
            if parent.exists():
                if not parent.is_dir():
                    raise ConfigError(
                        f"output.dir {self.dir} cannot be created: {parent} is a file, not a "
                        "folder; choose another output.dir"
                    )
                if self.main and parent != self.dir and not os.access(parent, os.W_OK | os.X_OK):
                    raise ConfigError(
                        f"output.dir {self.dir} cannot be created: {parent} is not writable; "
                        "choose another output.dir"
                    )
                return

    def _refusal(self, held: list[str]) -> str:
        if self.checkpoint_path.exists():
            return (
                f"{self.dir} already holds a run: resume it with `promptcl run --resume "
                f"{self.dir}`, or set output.overwrite=true to replace it, or choose another "
                "output.dir"
            )
        what = "an earlier run" if is_run_dir(self.dir) or "config.yaml" in held else "files"
        shown = ", ".join(held[:5]) + (f" and {len(held) - 5} more" if len(held) > 5 else "")
        return (
            f"{self.dir} is not empty: it holds {what} ({shown}). Choose another output.dir, or "
            "set output.overwrite=true to replace a run's files there (other files are kept)"
        )

    def log(self, record: dict[str, Any]) -> None:
        if self.main:
            with open(self.dir / "log.jsonl", "a") as f:
                f.write(json.dumps(_plain(record), allow_nan=False) + "\n")
            if self.loggers is not None:
                self.loggers.log(record)

    def predictions(self, t: int, preds: torch.Tensor, targets: torch.Tensor) -> None:
        if self.main:
            out = self.dir / "predictions"
            out.mkdir(exist_ok=True)
            path = out / f"after_task_{t}.safetensors"
            save_file({"predictions": preds, "targets": targets}, str(path))
            checkpoint.readable(path)

    def results(
        self, accuracy: np.ndarray, summary: dict[str, Any], validation: np.ndarray | None = None
    ) -> None:
        """The accuracy matrix so far (and the validation one) and their metrics (``summary``;
        NaN is written as null)."""
        if not self.main:
            return
        _write_matrix(self.dir / "accuracy_matrix.csv", accuracy)
        if validation is not None:
            _write_matrix(self.dir / VAL_MATRIX, validation)
        text = json.dumps(_plain(summary), indent=2, allow_nan=False)
        _write_text(self.dir / "metrics.json", text + "\n")
        if self.loggers is not None:
            self.loggers.metrics(summary, final=summary.get("after_task") == len(accuracy) - 1)

    def save_checkpoint(self, payload: dict[str, Any]) -> None:
        if self.main and self.config.output.checkpoint:
            checkpoint.save(self.checkpoint_path, payload)


def _write_matrix(path: Path, accuracy: np.ndarray) -> None:
    T = len(accuracy)
    header = "task," + ",".join(f"after_task_{j}" for j in range(T))
    rows = [
        f"{i}," + ",".join("" if np.isnan(a) else f"{a:.4f}" for a in accuracy[i]) for i in range(T)
    ]
    _write_text(path, "\n".join([header, *rows]) + "\n")


def _plain(value: Any) -> Any:
    """JSON-ready: NaN and infinities become null (bare NaN is not JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _write_text(path: Path, text: str) -> None:
    """Write atomically (a temp file renamed over the target), readable like any file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
